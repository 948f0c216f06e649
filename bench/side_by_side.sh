#!/usr/bin/env bash
# The report's four studies (studies/exp1..exp4.toml), trained by two checkouts of hpo on one CPU
# thread each, one after the other, on a CIFAR-10 subset; then every trial compared exactly
# (bench/side_by_side_compare.py). A refactor must leave them identical.
#
#   bench/side_by_side.sh OLD_CHECKOUT NEW_CHECKOUT OUT_FOLDER   (SUBSET=400 by default)
#
# Each side runs `python -m hpo` from its own checkout with PYTHONPATH (from OUT_FOLDER, so that
# neither checkout's working directory shadows it); HPO_DATA must name the CIFAR-10 copy.
set -euo pipefail
old=$(cd "$1" && pwd) new=$(cd "$2" && pwd)
mkdir -p "$3"
out=$(cd "$3" && pwd)
python=${PYTHON:-python}
subset=${SUBSET:-400}
here=$(cd "$(dirname "$0")" && pwd)
cd "$out"
for side in old new; do
  root=$([ "$side" = old ] && echo "$old" || echo "$new")
  rm -rf "$out/$side.db" "$out/$side-artifacts"
  PYTHONPATH=$root "$python" -c "import hpo; assert hpo.__file__.startswith('$root'), hpo.__file__"
  for e in exp1 exp2 exp3 exp4; do
    start=$(date +%s)
    PYTHONPATH=$root "$python" -m hpo --storage "sqlite:///$out/$side.db" worker "$root/studies/$e.toml" \
      --subset "$subset" --threads 1 --artifacts "$out/$side-artifacts" > "$out/$side-$e.log" 2>&1
    echo "$side $e: $(( $(date +%s) - start )) s"
  done
done
"$python" "$here/side_by_side_compare.py" "sqlite:///$out/old.db" "sqlite:///$out/new.db"
