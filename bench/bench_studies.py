"""Benchmark: the report's four studies in one launch against four launches one after another.

``hpo launch studies/exp1.toml studies/exp2.toml studies/exp3.toml studies/exp4.toml -n W``
(one pool of workers) against ``hpo launch studies/expK.toml -n W`` for K = 1..4 in a row,
each side on fresh SQLite files, on ``--subset`` images, alternated together, apart, apart,
together, ... With three trials of 10 epochs in exp1, exp2 and exp4, two workers idle-wait one
trial's length at the end of each study when they run apart; in one pool they move on.

    python bench/bench_studies.py --subset 2000 --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from launches import run_launch  # bench/ is on sys.path when run as a script
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
STUDIES = [ROOT / "studies" / f"exp{k}.toml" for k in (1, 2, 3, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=2000, help="images per trial")
    parser.add_argument("--workers", type=int, default=2, help="hpo launch -n, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated")
    parser.add_argument("--data", default=os.environ.get("HPO_DATA"), help="[env HPO_DATA]")
    args = parser.parse_args()

    describe_machine("start")
    print(f"exp1-exp4, subset {args.subset}, -n {args.workers}: one launch vs four in a row, "
          f"{args.repeats} repeats", flush=True)
    walls: dict[str, list[float]] = {"together": [], "apart": []}
    with tempfile.TemporaryDirectory(prefix="bench-studies-") as tmp:
        for i in range(args.repeats):
            for side in ("together", "apart") if i % 2 == 0 else ("apart", "together"):
                folder = Path(tmp) / f"{side}-{i}"
                groups = [STUDIES] if side == "together" else [[s] for s in STUDIES]
                launches = [run_launch(g, folder / g[0].stem, workers=args.workers, subset=args.subset,
                                       data=args.data) for g in groups]
                wall = sum(r.wall for r in launches)
                complete = sum(len(r.complete) for r in launches)
                walls[side].append(wall)
                print(f"  repeat {i} {side:8s}: {complete} trials complete, {wall:.1f} s wall "
                      f"({', '.join(f'{r.wall:.0f}' for r in launches)}), load {os.getloadavg()[0]:.2f}",
                      flush=True)
    ratios = [a / t for t, a in zip(walls["together"], walls["apart"], strict=True)]
    for side, values in walls.items():
        print(f"{side:8s}: wall median {statistics.median(values):.1f} s")
    print(f"wall time, four launches / one launch: median {statistics.median(ratios):.2f}x "
          f"(each: {', '.join(f'{x:.2f}' for x in ratios)})")
    describe_machine("end")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
