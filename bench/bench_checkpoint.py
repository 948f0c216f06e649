"""Benchmark (j): what a checkpoint costs per epoch, on the report's full-size models.

Trains each architecture an epoch at a time (hpo.training.train.Training, as a worker does) on
``--subset`` images (default: all 50,000), saving a checkpoint (hpo.training.checkpoints) after
every epoch, and times both: the epoch (its fit, validation included) and the save (the state
taken off the model, written beside, fsync'ed and renamed). Prints the save's time as a share of
the epoch's, per architecture, and the checkpoint's size on disk: the disk a running trial needs.
The first epoch (its graph trace) is left out of the epoch times.

    python bench/bench_checkpoint.py --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from machine import describe_machine  # bench/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=None, help="Training images (default: all).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--architectures", nargs="+", default=["base", "deeper_dropout", "batchnorm"])
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"))
    args = parser.parse_args()
    from hpo.workers import device

    device.apply(args.threads)
    from hpo.training.checkpoints import Checkpoints, Identity
    from hpo.training.data import load_dataset
    from hpo.training.train import Params, Training

    describe_machine("start")
    data = load_dataset(args.data, subset=args.subset)
    print(f"{len(data.x_train)} training images (validation: the last 20%), batch 32, {args.epochs} epochs, "
          f"{args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        for architecture in args.architectures:
            augmentation = "standard" if architecture == "batchnorm" else "none"
            training = Training(Params(architecture, augmentation, 0.001, 32, args.epochs), data, seed=0)
            store = Checkpoints(Path(tmp), "bench")
            identity = Identity("bench", "", 0, {"architecture": architecture}, 0, data.fingerprint, "bench")
            epochs, saves = [], []
            started = time.perf_counter()
            for epoch in training.epochs():
                epochs.append(time.perf_counter() - started)
                saving = time.perf_counter()
                store.save(identity, training.state(), epoch)
                saves.append(time.perf_counter() - saving)
                started = time.perf_counter()
            size = store.path(0).stat().st_size
            epoch_s, save_s = statistics.fmean(epochs[1:] or epochs), statistics.fmean(saves)
            print(f"{architecture}/{augmentation}: epoch {epoch_s:.2f} s, checkpoint {save_s:.3f} s "
                  f"({save_s / epoch_s:.2%} of an epoch; saves {', '.join(f'{s:.3f}' for s in saves)}), "
                  f"{size / 2**20:.1f} MiB on disk", flush=True)
    describe_machine("end")


if __name__ == "__main__":
    main()
