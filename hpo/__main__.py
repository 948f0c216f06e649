"""``python -m hpo``: the same as the ``hpo`` command."""

from hpo.cli import run

if __name__ == "__main__":
    run()
