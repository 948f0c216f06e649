"""Compare two runs of the report's studies (bench/side_by_side.sh): per trial, exactly (``==``)
its parameters, state, value, every epoch's validation accuracy, seed, and test and validation
loss and accuracy. Exits 1 if any trial differs.

    python bench/side_by_side_compare.py sqlite:///old.db sqlite:///new.db
"""

from __future__ import annotations

import sys

import optuna

KEYS = ("seed", "test_loss", "test_accuracy", "val_accuracy", "val_loss")
STUDIES = ("exp1", "exp2", "exp3", "exp4")


def differences(old: optuna.trial.FrozenTrial, new: optuna.trial.FrozenTrial | None) -> list[str]:
    if new is None:
        return ["missing from the new run"]
    found = [f"{what}: {a!r} != {b!r}" for what, a, b in (
        ("params", old.params, new.params), ("state", old.state, new.state), ("value", old.values, new.values),
        ("intermediate values", old.intermediate_values, new.intermediate_values)) if a != b]
    found += [f"{key}: {old.user_attrs.get(key)!r} != {new.user_attrs.get(key)!r}" for key in KEYS
              if old.user_attrs.get(key) != new.user_attrs.get(key)]
    return found


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    old_url, new_url = sys.argv[1:3]
    same = total = 0
    for name in STUDIES:
        old = {t.number: t for t in optuna.load_study(study_name=name, storage=old_url).get_trials()}
        new = {t.number: t for t in optuna.load_study(study_name=name, storage=new_url).get_trials()}
        alike = 0
        for number, trial in sorted(old.items()):
            found = differences(trial, new.get(number))
            if found:
                print(f"{name} trial {number}: " + "; ".join(found))
            else:
                alike += 1
        accuracies = [old[n].user_attrs.get("test_accuracy") for n in sorted(old)]
        print(f"{name}: {alike}/{len(old)} trials identical ({len(new)} in the new run); "
              f"test accuracies {accuracies[:3]}{' ...' if len(accuracies) > 3 else ''}")
        same, total = same + alike, total + len(old)
    print(f"all: {same}/{total} identical")
    sys.exit(0 if same == total else 1)


if __name__ == "__main__":
    main()
