"""Benchmark (c), part 1: the base model's training speed on the CPU under different settings.

Compared: XLA (``compile_model(jit_compile=True | False | "auto")``), TensorFlow's thread pools
(intra-op 1 or 2, inter-op 1 or 2, through ``TF_NUM_INTRAOP_THREADS`` /
``TF_NUM_INTEROP_THREADS`` as :func:`hpo.workers.device.worker_environment` sets them), and TensorFlow
op determinism (``tf.config.experimental.enable_op_determinism()``, which makes Keras drop XLA:
``model_supports_jit`` returns False while it is on; Keras 3.15 has no
``keras.config.enable_unsafe_deterministic_mode``).

Each configuration runs in a fresh subprocess, because TensorFlow sizes its thread pools once,
at start-up. A child builds the base model with :func:`hpo.training.models.build_model` and
:func:`hpo.training.models.compile_model` and fits it as :func:`hpo.training.train.train` does (uint8 images,
batch 32, validation on the last 20%), with a callback that records epoch boundaries. Rounds
run every configuration once, in an order rotated each round; each configuration's time is
divided by the baseline's time IN THE SAME ROUND, and the median of those ratios is reported,
so a machine whose load drifts between rounds still gives fair ratios.

The baseline, ``auto t2/2``, is what ``hpo launch -n 1`` runs on a 2-core machine today.

    python bench/bench_cpu.py --subset 3000 --epochs 3 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clock import Marks, epoch_clock, steady  # bench/ is on sys.path when run as a script
from machine import describe_machine
from subproc import emit, read_result

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    name: str
    jit: str  # "auto", "on" or "off"
    intra: int
    inter: int
    deterministic: bool = False

    def jit_compile(self) -> bool | str:
        settings: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}
        return settings[self.jit]


CONFIGS = (
    Config("auto t2/2", "auto", 2, 2),  # the baseline: hpo launch -n 1 on 2 cores
    Config("xla-off t2/2", "off", 2, 2),
    Config("xla-on t2/2", "on", 2, 2),
    Config("auto t1/1", "auto", 1, 1),  # hpo launch -n 2 on 2 cores: one thread per worker
    Config("xla-on t1/1", "on", 1, 1),
    Config("auto t2/1", "auto", 2, 1),
    Config("auto t1/2", "auto", 1, 2),
    Config("determinism+xla-asked t2/2", "on", 2, 2, deterministic=True),
)
BASELINE = CONFIGS[0].name






# --- child: one configuration --------------------------------------------------------------------


def child(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    import keras

    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    from hpo.training.data import load_dataset, validation_split
    from hpo.training.models import build_model, compile_model

    data = load_dataset(args.data, subset=args.subset)
    (x_fit, y_fit), validation = validation_split(data.x_train, data.y_train, 0.2)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model("base"), 0.001, jit_compile=config.jit_compile())

    marks = Marks()
    history = model.fit(x_fit, y_fit, batch_size=32, epochs=args.epochs, validation_data=validation,
                        callbacks=[epoch_clock(marks)], verbose=0).history
    return {
        **marks.summary(),
        "images": len(x_fit),
        "jit_effective": bool(model.jit_compile),
        "os_threads": len(os.listdir("/proc/self/task")),
        "val_accuracy": float(history["val_accuracy"][-1]),
    }


# --- parent ------------------------------------------------------------------------------------


def run_child(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    from hpo.workers.device import worker_environment

    env = {**os.environ, **worker_environment(config.intra)}
    env.update(TF_NUM_INTRAOP_THREADS=str(config.intra), TF_NUM_INTEROP_THREADS=str(config.inter),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", config.name,
               "--subset", str(args.subset), "--epochs", str(args.epochs)]
    if args.data:
        command += ["--data", args.data]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    result = read_result(proc, f"{config.name}: child")
    result["per_epoch"] = steady(result["epochs"])
    result["cpu_per_epoch"] = steady(result["cpu_epochs"])
    result["first_extra"] = result["epochs"][0] - result["per_epoch"]
    result["images_per_second"] = result["images"] / result["per_epoch"]
    return result


def summarise(configs: list[Config], runs: dict[str, list[dict[str, Any]]]) -> None:
    base = runs[BASELINE]
    print(f"\n{'config':30s} {'XLA':>4s} {'s/epoch':>8s} {'img/s':>7s} {'vs base':>8s} "
          f"{'cpu s/ep':>8s} {'cpu vs':>7s} {'1st-epoch extra':>15s} {'threads':>7s} {'val acc':>7s}"
          "  per-round ratios")
    for config in configs:
        rs = runs[config.name]
        ratios = [r["per_epoch"] / b["per_epoch"] for r, b in zip(rs, base, strict=True)]
        cpu_ratios = [r["cpu_per_epoch"] / b["cpu_per_epoch"] for r, b in zip(rs, base, strict=True)]
        print(f"{config.name:30s} {'on' if rs[0]['jit_effective'] else 'off':>4s} "
              f"{statistics.median(r['per_epoch'] for r in rs):8.2f} "
              f"{statistics.median(r['images_per_second'] for r in rs):7.0f} "
              f"{statistics.median(ratios):8.3f} "
              f"{statistics.median(r['cpu_per_epoch'] for r in rs):8.2f} "
              f"{statistics.median(cpu_ratios):7.3f} "
              f"{statistics.median(r['first_extra'] for r in rs):15.2f} "
              f"{rs[0]['os_threads']:7d} "
              f"{statistics.median(r['val_accuracy'] for r in rs):7.3f}  "
              + " ".join(f"{x:.3f}" for x in ratios))
    print("\n'vs base' is the median over rounds of (config's s/epoch / baseline's s/epoch in the same"
          " round); below 1 is faster. 'cpu' columns use the child's process CPU time (all threads),"
          " which other jobs on the machine disturb less than wall time. 'threads' counts the"
          " child's OS threads after fit.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=3000, help="training images (80%% fit, 20%% validation)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; epoch 1 is the warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration")
    parser.add_argument("--only", help="comma-separated config names to run (the baseline always runs)")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    by_name = {c.name: c for c in CONFIGS}
    if args.child:
        emit(child(args, by_name[args.child]))
        return

    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 holds the graph trace / XLA compile")
    configs = list(CONFIGS)
    if args.only:
        wanted = {BASELINE, *(n.strip() for n in args.only.split(","))}
        unknown = wanted - set(by_name)
        if unknown:
            parser.error(f"unknown config(s) {sorted(unknown)}; known: {list(by_name)}")
        configs = [c for c in CONFIGS if c.name in wanted]

    describe_machine("start")
    print(f"base model, batch 32, subset {args.subset} ({int(args.subset * 0.8)} fit images), "
          f"{args.epochs} epochs, {args.rounds} rounds of {len(configs)} configs", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    for round_ in range(args.rounds):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            result = run_child(config, args)
            runs[config.name].append(result)
            print(f"  round {round_} {config.name:30s} {result['per_epoch']:6.2f} s/epoch "
                  f"(first +{result['first_extra']:.2f} s), load {os.getloadavg()[0]:.2f}", flush=True)
    summarise(configs, runs)
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
