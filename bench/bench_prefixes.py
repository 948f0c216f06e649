"""Benchmark: the exp3 grid with shared epoch prefixes against without, same workers, one run.

``studies/exp3.toml`` as it is (shared prefixes on: 9 training runs of 15 epochs complete the
27 points, 135 epochs) against the same file with ``share_prefixes = false`` (27 runs, 270
epochs), each a real ``hpo launch -n W --subset S`` on a fresh SQLite file, alternated
shared, separate, separate, shared, ... The ratio of wall times is taken per pair, then the
median. Also printed: epochs trained per side, read from the stored trials.

    python bench/bench_prefixes.py --subset 5000 --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from launches import Launch, run_launch  # bench/ is on sys.path when run as a script
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def study_files(folder: Path) -> dict[str, Path]:
    text = (ROOT / "studies" / "exp3.toml").read_text(encoding="utf-8")
    files = {"shared": folder / "exp3-shared.toml", "separate": folder / "exp3-separate.toml"}
    files["shared"].write_text(text, encoding="utf-8")
    files["separate"].write_text(text.replace("[study]\n", "[study]\nshare_prefixes = false\n", 1), encoding="utf-8")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=5000, help="images per trial (4/5 train, 1/5 validation)")
    parser.add_argument("--workers", type=int, default=2, help="hpo launch -n, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="launches of each side, alternated")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    args = parser.parse_args()

    describe_machine("start")
    print(f"exp3 grid (27 points), subset {args.subset}, -n {args.workers}, shared vs separate, "
          f"{args.repeats} repeats", flush=True)
    runs: dict[str, list[Launch]] = {"shared": [], "separate": []}
    with tempfile.TemporaryDirectory(prefix="bench-prefixes-") as tmp:
        files = study_files(Path(tmp))
        for i in range(args.repeats):
            for side in ("shared", "separate") if i % 2 == 0 else ("separate", "shared"):
                r = run_launch([files[side]], Path(tmp) / f"{side}-{i}", workers=args.workers,
                               subset=args.subset, data=args.data)
                runs[side].append(r)
                print(f"  repeat {i} {side:8s}: {len(r.complete)}/27 complete, {r.epochs_trained} epochs trained, "
                      f"{r.wall:.1f} s wall, load {os.getloadavg()[0]:.2f}", flush=True)
    for side, rs in runs.items():
        print(f"{side:8s}: epochs trained {statistics.median(r.epochs_trained for r in rs):.0f}, "
              f"wall median {statistics.median(r.wall for r in rs):.1f} s")
    epochs = statistics.median(s.epochs_trained for s in runs["separate"]) / statistics.median(
        s.epochs_trained for s in runs["shared"])
    ratios = [s.wall / h.wall for h, s in zip(runs["shared"], runs["separate"], strict=True)]
    print(f"epochs trained, separate / shared: {epochs:.2f}x")
    print(f"wall time, separate / shared: median {statistics.median(ratios):.2f}x "
          f"(each: {', '.join(f'{x:.2f}' for x in ratios)}); target >= 1.8")
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
