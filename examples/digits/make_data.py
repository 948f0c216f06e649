"""Write scikit-learn's digits as an .npz hpo trains on: 1,797 8x8 grayscale images, 10 classes.

    python examples/digits/make_data.py          # writes examples/digits/digits.npz

The images come with scikit-learn (no download). Their pixels, 0..16, are scaled to 0..255 as
uint8, hpo's pixel format; a fifth of each class, drawn with a fixed seed, is the test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("digits.npz"))
    args = parser.parse_args()
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (to say what to install where it is missing)
    except ImportError:
        raise SystemExit("make_data.py: scikit-learn is missing: pip install -e '.[examples]'") from None

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8): hpo adds the channel
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test[members[: len(members) // 5]] = True
    np.savez_compressed(args.output, x_train=images[~test], y_train=labels[~test], x_test=images[test],
                        y_test=labels[test], class_names=np.array([str(n) for n in digits.target_names]))
    print(f"{args.output}: {int((~test).sum())} training and {int(test.sum())} test images, 8x8x1, 10 classes")


if __name__ == "__main__":
    main()
