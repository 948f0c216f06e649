"""``python -m hpo``: the same as the ``hpo`` command."""

from hpo.cli import main

if __name__ == "__main__":
    main()
