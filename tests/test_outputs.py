"""What ``-o`` names is written as what it is: a file is replaced whole, a symlink is followed,
a pipe or a device is written into, ``-`` is standard output; nothing but a regular file is
ever replaced, and a reader that goes away ends the command quietly.

Real ``hpo export`` processes; devices made with mknod in the test's own folder (root, as in
CI), so that a mistake could never replace the machine's own /dev/null.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import TWO_LR_GRID, missing, ok, run_hpo, user_error, write_study


@pytest.fixture
def study(tmp_path: Path) -> str:
    """A created study: its export is a table of header and no rows yet, the same every time."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(write_study(tmp_path, "out", TWO_LR_GRID)), storage=db))
    return db


def _table(db: str) -> str:
    shown = run_hpo("export", "out", "--format", "csv", storage=db)
    ok(shown)
    assert shown.stdout.startswith("rank,trial,")
    return shown.stdout


def _device(folder: Path, name: str, minor: int) -> Path:
    """A character device of the memory driver (major 1): 3 is null, 7 is full."""
    path = folder / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        missing("mknod needs root")
    return path


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(study: str, tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    out.write_text("old contents, much longer than the table that replaces them\n" * 50)
    out.chmod(0o640)
    ok(run_hpo("export", "out", "--format", "csv", "-o", str(out), storage=study))
    assert out.read_text() == _table(study)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_a_symlink_is_followed_and_stays_a_symlink(study: str, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "table.csv"
    target.write_text("stale\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    ok(run_hpo("export", "out", "--format", "csv", "-o", str(link), storage=study))
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == _table(study)


def test_a_fifo_is_written_into_and_its_reader_gets_the_table(study: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    ok(run_hpo("export", "out", "--format", "csv", "-o", str(fifo), storage=study))
    reader.join(timeout=60)
    assert received == [_table(study)]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_devices_are_written_into_never_replaced(study: str, tmp_path: Path) -> None:
    null, full = _device(tmp_path, "null", 3), _device(tmp_path, "full", 7)
    ok(run_hpo("export", "out", "-o", str(null), storage=study))
    user_error(run_hpo("export", "out", "-o", str(full), storage=study), "--output", "No space left on device")
    assert stat.S_ISCHR(null.stat().st_mode) and stat.S_ISCHR(full.stat().st_mode)
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_standard_output_by_dash_by_dev_stdout_and_by_process_substitution(study: str, tmp_path: Path) -> None:
    table = _table(study)
    dash = run_hpo("export", "out", "--format", "csv", "-o", "-", storage=study)
    ok(dash)
    assert dash.stdout == table
    stdout = run_hpo("export", "out", "--format", "csv", "-o", "/dev/stdout", storage=study)
    ok(stdout)
    assert stdout.stdout == table
    assert Path("/dev/stdout").is_symlink()
    # Process substitution hands hpo a /dev/fd/N path: a pipe to another program.
    copy = tmp_path / "copy.csv"
    shell = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m hpo --storage "{study}" export out --format csv -o >(cat > "{copy}"); '
                       "wait"], capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stderr
    assert copy.read_text() == table


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`hpo status --format json | head -c 10`: the pipe closes long before the 3,000 points'
    coverage is written; no traceback, and success or the status SIGPIPE gives (`yes | head`).
    Which one depends on whether the write that met the closed pipe was the last."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    rates = ", ".join(f"{0.0001 * (i + 1):.4f}" for i in range(1000))
    body = TWO_LR_GRID.replace("[0.01, 0.001]", f"[{rates}]").replace("[64]", "[32, 64, 128]")
    ok(run_hpo("create", str(write_study(tmp_path, "wide", body)), storage=db))
    shell = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m hpo --storage "{db}" status wide --format json | head -c 10; '
                       'echo " ${PIPESTATUS[0]}"'], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr
    assert shell.stdout.split()[-1] in ("0", "141"), shell.stdout
