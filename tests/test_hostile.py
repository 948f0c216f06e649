"""Hostile data and builders (issue 26): each is one clear line (exit 2 from a command, an
``HpoError`` from Python) within seconds, with memory bounded before the refusal, and nothing lost."""

from __future__ import annotations

import io
import math
import os
import shlex
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
import pytest
import sqlalchemy

from hpo.storage import records
from hpo.storage.lock import lock_key

from conftest import ok, own_model_study, run_hpo, study_body, user_error, wait_for, write_npz, write_study


def no_study(storage_url: str) -> None:
    """A refused command wrote nothing: no SQLite file, no study in PostgreSQL."""
    if storage_url.startswith("sqlite:///"):
        assert not Path(storage_url.removeprefix("sqlite:///")).exists()
    else:
        assert optuna.get_all_study_summaries(storage_url) == []

# A builder that looks at its parameters every way a dict can be looked at.
ITERATING_BUILDER = '''
import keras
from keras import layers


def build(params, *, input_shape, num_classes):
    names = sorted(name for name in params)
    assert names == sorted(dict(params.items())) == sorted({**params}) == sorted(params.copy()) == sorted(params.keys())
    own = params.copy()
    inputs = keras.Input(shape=input_shape)
    width = own["units"] if own["family"] == "mlp" else own["filters"]
    x = layers.Dense(width, activation="relu")(layers.Flatten()(inputs))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''


def test_a_builder_that_iterates_its_params_is_accepted(storage_url: str, tmp_path: Path) -> None:
    """``for k in params``, ``.items()``, ``{**params}``, ``.copy()``: the dry build notes each
    as reading every parameter, with no endless recursion."""
    study_file = own_model_study(tmp_path, trials=1, module=ITERATING_BUILDER)
    created = run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300)
    ok(created)
    assert "study own created" in created.stderr
    study = optuna.load_study(study_name="own", storage=storage_url)
    assert records.record_of(study)[records.BUILDER]["builder"] == "my_models:build"


# --- data files that claim more than they hold ---------------------------------------------------

def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """The header of a .npy file holding an array of ``shape`` (what np.save writes before the data)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _labels() -> dict[str, bytes]:
    """Valid label members, two classes."""
    members = {}
    for name in ("y_train", "y_test"):
        out = io.BytesIO()
        np.save(out, np.arange(40) % 2)
        members[f"{name}.npy"] = out.getvalue()
    return members


def _small_x_test() -> bytes:
    out = io.BytesIO()
    np.save(out, np.zeros((40, 8, 8, 1), dtype=np.uint8))
    return out.getvalue()


def huge_header_npz(path: Path) -> Path:
    """x_train's header says (10**9, 32, 32, 3) uint8, 2.79 TiB; the member holds 100 bytes of it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", _npy_header((10**9, 32, 32, 3)) + bytes(100))
        archive.writestr("x_test.npy", _small_x_test())
        for name, content in _labels().items():
            archive.writestr(name, content)
    return path


def sparse_npz(path: Path, claimed: int = 3 * 10**9) -> Path:
    """A stored (uncompressed) .npz whose x_train member is ``claimed`` bytes of holes: the file is
    that long, but a few KiB on disk."""
    header = _npy_header((claimed // 3072, 32, 32, 3))
    size = len(header) + claimed // 3072 * 3072
    members = [("x_train.npy", header, size), *((n, c, len(c)) for n, c in (("x_test.npy", _small_x_test()),
                                                                             *_labels().items()))]
    central = b""
    with path.open("wb") as f:
        for name, content, length in members:
            offset = f.tell()
            local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(content) if
                                len(content) == length else 0, length, length, len(name), 0)
            f.write(local + name.encode() + content)
            f.seek(length - len(content), os.SEEK_CUR)  # a hole, not data
            central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, length, length,
                                   len(name), 0, 0, 0, 0, 0, offset) + name.encode()
        start = f.tell()
        f.write(central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                      start, 0))
    return path


def zeros_bomb_npz(path: Path, claimed: int = 2 << 30) -> Path:
    """x_train a deflated member of ``claimed`` bytes of zeros (about 9 MiB in the file): honest
    about its sizes, and more than the memory hpo is given here."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((claimed // 3072, 32, 32, 3)))
            chunk = bytes(64 << 20)
            for _ in range(claimed // len(chunk)):
                member.write(chunk)
        archive.writestr("x_test.npy", _small_x_test())
        for name, content in _labels().items():
            archive.writestr(name, content)
    return path


# Run between pytest and the measured command. Linux keeps the peak of the memory a process had
# before it exec'd: a child spawned straight from pytest reports pytest's own peak (1.9 GiB after
# the suite's in-process training), not its own. This small parent's peak is what its child starts
# from, and it reports the child's, through wait4, on its stdout.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss * 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _create_measured(study_file: Path, storage: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, float, int]:
    """``hpo create STUDY_FILE`` in a child process: its exit code, stderr, wall seconds and peak
    resident memory in bytes (the kernel's account of that process alone, through wait4)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "hpo", "--storage", storage,
                           "create", str(study_file)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env})
    return proc.returncode, proc.stderr, time.monotonic() - started, int(proc.stdout)


HOSTILE_DATA = {
    # case: (make the file, environment, what the one line says)
    "a header claiming 2.8 TiB": (huge_header_npz, {}, "member x_train.npy claims an array of shape "
                                  "(1000000000, 32, 32, 3) and dtype uint8 (2.8 TiB) but holds 100 B"),
    "a sparse file claiming 3 GB": (sparse_npz, {},
                                    "on disk (a sparse file: what it claims to hold is holes, not data)"),
    "deflated zeros past the bound": (zeros_bomb_npz, {"HPO_DATA_MEMORY": "512M"},
                                      "member x_train.npy claims 2.0 GiB; with the rest, 2.0 GiB is more than hpo "
                                      "reads into memory (512.0 MiB: HPO_DATA_MEMORY"),
}


@pytest.mark.parametrize("case", list(HOSTILE_DATA))
def test_a_data_file_that_claims_more_than_it_holds_is_refused_before_it_is_read(
        case: str, storage_url: str, tmp_path: Path) -> None:
    make, env, message = HOSTILE_DATA[case]
    make(tmp_path / "d.npz")
    study_file = write_study(tmp_path, "hostile", study_body(data={"source": "d.npz"}))
    code, stderr, seconds, peak = _create_measured(study_file, storage_url, tmp_path,
                                                   {**env, "HPO_CACHE": str(tmp_path / "cache")})
    user_error(subprocess.CompletedProcess([], code, "", stderr), str(tmp_path / "d.npz"), message)
    no_study(storage_url)
    assert seconds < 30, seconds
    # hpo's own imports and the storage take a few hundred MiB; the file's claim, none of it.
    assert peak < 400 << 20, f"peak RSS {peak / 2**20:.0f} MiB"


def test_an_image_archive_larger_than_the_memory_bound_is_refused_at_the_member_that_passes_it(
        tmp_path: Path) -> None:
    """A tar's members are held until its images are decoded: each one's size is counted, from its
    header, before it is read."""
    from PIL import Image

    from hpo.errors import DataError
    from hpo.training.data import load_dataset

    tree = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tree / label).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tree / label / f"{i:02}.png")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="tree")
    os.environ["HPO_DATA_MEMORY"] = "100K"
    try:
        with pytest.raises(DataError, match=r"d\.tar\.gz: member tree/cat/\d\d\.png claims 3\.\d KiB; with the "
                                            r"rest, 10\d\.\d KiB is more than hpo reads into memory \(100\.0 KiB"):
            load_dataset(tmp_path / "d.tar.gz", cache_dir=tmp_path / "cache")
        os.environ["HPO_DATA_MEMORY"] = "1M"  # the same archive within the bound
        assert load_dataset(tmp_path / "d.tar.gz", cache_dir=tmp_path / "cache").class_names == ("cat", "dog")
    finally:
        del os.environ["HPO_DATA_MEMORY"]


# --- builders that would end the process ---------------------------------------------------------

def _builder(ending: str, when: str = "True") -> str:
    """A builder module that does ``ending`` where ``when`` holds, else builds a small model."""
    return f'''
import os
import shlex
import signal
import sys
import threading
import time

import keras
from keras import layers


def build(params, *, input_shape, num_classes):
    if {when}:
        {ending}
    width = params["filters"] if params["family"] == "cnn" else params["units"]
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(), layers.Dense(width),
                             layers.Dense(num_classes, activation="softmax")])
'''


ENDINGS = {
    "sys.exit(0)": "called sys.exit(0)",
    "raise SystemExit": "called sys.exit(None)",
    "raise KeyboardInterrupt": "raised KeyboardInterrupt",
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_builder_that_exits_is_refused_at_create_in_one_line(ending: str, storage_url: str, tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=1, module=_builder(ending))
    user_error(run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300),
               str(study_file), f"model.builder: my_models:build {ENDINGS[ending]}, instead of returning a model")
    no_study(storage_url)


@pytest.mark.parametrize("ending", ["sys.exit(0)", "raise KeyboardInterrupt"])
def test_a_builder_that_exits_for_some_parameters_fails_those_trials_and_the_worker_says_so(
        ending: str, storage_url: str, tmp_path: Path) -> None:
    """The dry build takes the learning rate's low end, 0.003; every trial draws more."""
    study_file = own_model_study(tmp_path, trials=2, module=_builder(ending, "params['learning_rate'] > 0.003"))
    worker = run_hpo("worker", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300)
    ok(worker)
    assert "worker done: 0 complete, 0 pruned, 2 failed" in worker.stderr
    trials = optuna.load_study(study_name="own", storage=storage_url).get_trials()
    # Failed once each, not retried, not left RUNNING: it would end the worker again.
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(f"my_models:build {ENDINGS[ending]}, instead of returning a model" in t.user_attrs["error"]
               for t in trials)


def test_a_launch_whose_worker_ends_early_is_not_a_success(storage_url: str, tmp_path: Path) -> None:
    """``os._exit(0)`` from a thread of the user's while a trial trains: nothing in the worker can
    stop it, but the launch sees its study is not done."""
    ending = "threading.Thread(target=lambda: (time.sleep(1), os._exit(0)), daemon=True).start()"
    study_file = own_model_study(tmp_path, trials=2, module=_builder(ending, "params['learning_rate'] > 0.003"))
    launched = run_hpo("launch", str(study_file), "-n", "1", storage=storage_url, cwd=tmp_path, timeout=300)
    assert launched.returncode == 1, launched.stderr[-2000:]
    assert "hpo: study own is not done (2 trials waiting, 0 running) though every worker has exited" in launched.stderr
    # The trial it was training failed (its worker died) and waits for a retry, beside the other.
    states = [t.state.name for t in optuna.load_study(study_name="own", storage=storage_url).get_trials()]
    assert sorted(states) == ["FAIL", "WAITING", "WAITING"]


EXITS_WHEN_TRAINED = '''
import sys

import keras
from keras import layers


class Leaving(layers.Layer):
    def call(self, x, training=None):
        if training:
            sys.exit(3)
        return x


def build(params, *, input_shape, num_classes):
    width = params["units"] if params["family"] == "mlp" else params["filters"]
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(), Leaving(), layers.Dense(width),
                             layers.Dense(num_classes, activation="softmax")])
'''


def test_a_model_that_exits_while_it_trains_fails_its_trial_and_the_worker_goes_on(storage_url: str,
                                                                                    tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=2, module=EXITS_WHEN_TRAINED)
    worker = run_hpo("worker", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300)
    ok(worker)
    assert "worker done: 0 complete, 0 pruned, 2 failed" in worker.stderr
    trials = optuna.load_study(study_name="own", storage=storage_url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.user_attrs["error"] == "the trial's code called sys.exit(3), which would end the worker"
               for t in trials)


def test_ctrl_c_during_a_dry_build_still_stops_create(tmp_path: Path) -> None:
    """A builder's own KeyboardInterrupt fails the builder; the user's Ctrl-C stops the command."""
    started = tmp_path / "building"
    study_file = own_model_study(tmp_path, trials=1, module=_builder(
        f"open({str(started)!r}, 'w').close(); time.sleep(120)"))
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "create",
                             str(study_file)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for(started.exists, 120, "the dry build")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1, stderr
    assert "Aborted!" in stderr and "hpo: error:" not in stderr
    assert not (tmp_path / "hpo.db").exists()


# --- a trial's code that hangs ------------------------------------------------------------------

HANGS = {  # the signal, and how the builder hangs once a trial (not the dry build) calls it
    signal.SIGTERM: "time.sleep(600)",
    signal.SIGINT: "while True: pass",
}


@pytest.mark.parametrize("signum", list(HANGS), ids=lambda s: signal.Signals(s).name)
def test_a_worker_whose_build_hangs_stops_within_seconds_of_a_signal(signum: int, storage_url: str,
                                                                    tmp_path: Path) -> None:
    started = tmp_path / "building"
    hang = f"open({str(started)!r}, 'w').close()\n        {HANGS[signum]}"
    study_file = own_model_study(tmp_path, trials=1, module=_builder(hang, "params['learning_rate'] > 0.003"))
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", storage_url, "worker", str(study_file)],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started.exists, 120, "the trial's build")
        worker.send_signal(signum)
        sent = time.monotonic()
        _, stderr = worker.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130, stderr[-2000:]
    assert took < 12, took
    name = signal.Signals(signum).name
    assert f"trial 0 interrupted by {name}, and its code did not stop within 5 s; it will be retried" in stderr
    trials = optuna.load_study(study_name="own", storage=storage_url).get_trials()
    # Failed as retryable (an interruption uses no retry up), and queued again.
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[0].user_attrs["error"] == f"interrupted by {name}, and its code did not stop within 5 s"
    assert trials[0].system_attrs[records.INTERRUPTED] is True


# --- exports, labels and values that cannot be meant ----------------------------------------------

def test_a_categorical_value_with_a_line_break_stays_in_its_row_in_every_export(storage_url: str,
                                                                              tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=1, module=_builder("pass"))
    study_file.write_text(study_file.read_text().replace('family = ["mlp", "cnn"]', 'family = ["mlp\\nwide|1", "cnn"]')
                          .replace("[space.mlp]", '[space."mlp\\nwide|1"]'))
    ok(run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300))
    study = optuna.load_study(study_name="own", storage=storage_url)
    study.add_trial(optuna.trial.create_trial(
        params={"family": "mlp\nwide|1"}, distributions={"family": CategoricalDistribution(["mlp\nwide|1", "cnn"])},
        value=0.5, user_attrs={"val_accuracy": 0.5, "test_accuracy": 0.5, "test_loss": 1.0}))
    md = run_hpo("export", "own", "--format", "md", storage=storage_url)
    ok(md)
    assert len(md.stdout.splitlines()) == 3  # the header, its rule, one row
    assert "| mlp<br>wide\\|1 |" in md.stdout
    latex = run_hpo("export", "own", "--format", "latex", storage=storage_url)
    ok(latex)
    rows = [line for line in latex.stdout.splitlines() if line.endswith(r" \\")]
    assert len(rows) == 2 and " & mlp wide|1 & " in rows[1]


def test_a_label_past_int64_is_shown_as_it_is(tmp_path: Path) -> None:
    from hpo.errors import DataError
    from hpo.training.data import load_dataset

    labels = (np.arange(40) % 2).astype(np.uint64)
    labels[7] = 2**63 + 5
    np.savez(tmp_path / "d.npz", x_train=np.zeros((40, 8, 8, 1), np.uint8), y_train=labels,
             x_test=np.zeros((40, 8, 8, 1), np.uint8), y_test=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"d\.npz: y_train label 9223372036854775813 out of range 0\.\.1$"):
        load_dataset(tmp_path / "d.npz", cache_dir=tmp_path / "cache")


ABSURD = {  # a line of the study's [space], and what the refusal says
    "batch_size = 100000000000": "space.batch_size: 100000000000 is larger than the set a trial trains on (128 of "
                                 "the 160 training examples, less the validation split); at most 128",
    "batch_size = { low = 16, high = 4096 }": "space.batch_size: 4096 is larger than the set a trial trains on",
    "learning_rate = 1e6": "learning rate 1000000.0 must be a number > 0 and at most 10",
    "epochs = 100000000": "epochs 100000000 must be an integer >= 1 and at most 10,000",
}


@pytest.mark.parametrize("line", list(ABSURD))
def test_values_that_cannot_be_meant_are_refused_at_create(line: str, storage_url: str, tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=1, module=_builder("pass"))
    key = line.split(" = ")[0]
    text = study_file.read_text()
    start = text.index(f"\n{key} = ") + 1
    study_file.write_text(text[:start] + line + text[text.index("\n", start):])
    user_error(run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300),
               str(study_file), ABSURD[line])
    no_study(storage_url)


def test_a_piped_study_file_finds_its_data_and_builder_in_the_working_directory(storage_url: str,
                                                                              tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=1, module=_builder("pass"))
    command = f"{shlex.quote(sys.executable)} -m hpo --storage {shlex.quote(storage_url)} create <(cat own.toml)"
    created = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    ok(created)
    attrs = records.record_of(optuna.load_study(study_name="own", storage=storage_url))
    assert attrs[records.DATA_IDENTITY]["location"] == str(tmp_path / "shapes.npz")
    assert attrs[records.BUILDER]["file"] == str(tmp_path / "my_models.py")
    assert study_file.exists()


def _queued(storage_url: str) -> int:
    """Trials in the storage now (any study), read straight from its table."""
    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar_one())
    except sqlalchemy.exc.OperationalError:  # no table yet (or SQLite busy): none counted
        return 0
    except sqlalchemy.exc.ProgrammingError:
        return 0
    finally:
        engine.dispose()


def _holds_queue_lock(storage_url: str, study_name: str) -> bool:
    """Whether a session of this PostgreSQL database holds the study's queue lock now."""
    key = lock_key(study_name) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned halves
    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :high "
                "AND objid = :low AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"high": key >> 32, "low": key & 0xFFFFFFFF}).scalar_one())
    finally:
        engine.dispose()


def _big_grid(tmp_path: Path) -> Path:
    """A study of 3,000 grid points, long enough to queue for a kill to land part-way."""
    write_npz(tmp_path / "shapes.npz")
    rates = [round(0.0001 * (i + 1), 6) for i in range(100)]
    return write_study(tmp_path, "grid", study_body(data={"source": "shapes.npz"}, learning_rate=rates,
                                                    batch_size=list(range(1, 31))))


@pytest.mark.postgres
def test_on_postgresql_a_create_killed_under_the_queue_lock_leaves_nothing(postgres_url: str, tmp_path: Path) -> None:
    """On PostgreSQL what a create writes under the study's lock is one transaction: killed
    there, it leaves no study and no trial, and any create after it starts afresh."""
    big = _big_grid(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", postgres_url, "create", str(big)],
                            cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _holds_queue_lock(postgres_url, "grid") or proc.poll() is not None, 120,
                 "the create to hold the queue lock", interval=0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert _queued(postgres_url) == 0 and optuna.get_all_study_names(postgres_url) == []
    (tmp_path / "other").mkdir()
    small = write_study(tmp_path / "other", "grid", study_body(data={"source": "../shapes.npz"}))
    ok(run_hpo("create", str(small), storage=postgres_url, cwd=tmp_path))
    assert len(optuna.load_study(study_name="grid", storage=postgres_url).get_trials(deepcopy=False)) == 1


def test_a_create_killed_while_queueing_is_finished_only_with_its_own_definition(tmp_path: Path) -> None:
    """On SQLite the trials are queued a batch per transaction: a create killed part-way leaves
    what it queued, and only a create of the same definition finishes it."""
    storage_url = f"sqlite:///{tmp_path / 'hpo.db'}"
    big = _big_grid(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", storage_url, "create", str(big)],
                            cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _queued(storage_url) > 0 or proc.poll() is not None, 120, "the first trials queued",
                 interval=0.05)
    finally:
        proc.kill()
        proc.wait()
    queued = _queued(storage_url)
    assert 0 < queued < 3000, queued  # killed part-way (a fast machine may need a bigger grid)

    (tmp_path / "other").mkdir()
    small = write_study(tmp_path / "other", "grid", study_body(data={"source": "../shapes.npz"}))
    user_error(run_hpo("create", str(small), storage=storage_url, cwd=tmp_path),
               "study 'grid' was being created with a different definition when its create stopped",
               "optuna delete-study --study-name grid")
    assert _queued(storage_url) == queued
    # The same file finishes it: every point queued once.
    ok(run_hpo("create", str(big), storage=storage_url, cwd=tmp_path))
    trials = optuna.load_study(study_name="grid", storage=storage_url).get_trials(deepcopy=False)
    assert len(trials) == 3000 and len({t.system_attrs[records.SLOT] for t in trials}) == 3000


def test_ten_thousand_values_of_a_builders_parameter_are_not_ten_thousand_dry_builds(storage_url: str,
                                                                                     tmp_path: Path) -> None:
    """Up to 8 of a categorical parameter's values are built, spread from its first to its last."""
    builds = tmp_path / "builds"
    module = _builder(f"open({str(builds)!r}, 'a').write(str(params['width']) + chr(10))",
                      "params['family'] == 'mlp' and params['width']")
    study_file = own_model_study(tmp_path, trials=1, module=module)
    widths = ", ".join(str(u) for u in range(1, 10_001))
    study_file.write_text(study_file.read_text().replace('family = ["mlp", "cnn"]',
                                                         f'family = ["mlp", "cnn"]\nwidth = [{widths}]'))
    started = time.monotonic()
    ok(run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300))
    assert time.monotonic() - started < 60
    # 8 widths spread over 1 ... 10,000 (the first point's among them), and the cnn family's build.
    assert [int(u) for u in builds.read_text().split()] == [1, 1429, 2858, 4286, 5715, 7143, 8572, 10000]


def test_images_far_larger_than_the_model_expects_are_refused_saying_what_it_needs(storage_url: str,
                                                                                   tmp_path: Path) -> None:
    """The base model's Dense layer grows with the images: sized so that training it would need
    about four times the memory this machine has, it is refused at create, before any is built."""
    from hpo.training.limits import available_memory

    side = 2 * math.isqrt(4 * available_memory() // (16 * 32 * 128)) + 2
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x_train=rng.integers(0, 255, (6, side, side, 1), dtype=np.uint8),
             y_train=np.arange(6) % 2, x_test=rng.integers(0, 255, (2, side, side, 1), dtype=np.uint8),
             y_test=np.arange(2) % 2)
    study_file = write_study(tmp_path, "big", study_body(data={"source": "big.npz", "protocol": "test"},
                                                         batch_size=[2]))
    started = time.monotonic()
    line = user_error(run_hpo("create", str(study_file), storage=storage_url, cwd=tmp_path, timeout=300),
                      str(study_file), "the space's largest model (architecture=base, conv_blocks=1, ",
                      f"on {side}x{side}x1 images has ", "to train; this machine has ")
    assert time.monotonic() - started < 60
    parameters = int(line.split(" has ")[1].split(" parameters")[0].replace(",", ""))
    assert parameters == ((side - 2) // 2) ** 2 * 32 * 128 + 10 * 32 + 128 + 129 * 2  # conv, dense, softmax
    no_study(storage_url)


WIDE_BUILDER = '''
import keras
from keras import layers


def build(params, *, input_shape, num_classes):
    width = params["filters"] if params["family"] == "cnn" else params["units"]
    return keras.Sequential([keras.Input(input_shape), layers.Flatten(), layers.Dense(width * {scale}),
                             layers.Dense(num_classes, activation="softmax")])
'''


def test_a_launch_of_more_workers_than_a_builders_model_leaves_room_for_is_refused(storage_url: str,
                                                                                  tmp_path: Path) -> None:
    """A builder's 52M-parameter model needs about 0.8 GiB to train, beside TensorFlow's own
    0.5 GiB: -n one more than the memory available holds is refused before anything is written."""
    from hpo.training.limits import available_memory

    # 12x12 images, 16 units x 21,700: 144 x 347,200 weights, about 52 million parameters.
    study_file = own_model_study(tmp_path, trials=1, module=WIDE_BUILDER.format(scale=21_700))
    parameters = (144 + 1) * 16 * 21_700 + (16 * 21_700 + 1) * 4
    assert 50e6 < parameters < 52e6
    workers = available_memory() // (16 * parameters + (1 << 29)) + 1
    line = user_error(run_hpo("launch", str(study_file), "-n", str(workers), storage=storage_url, cwd=tmp_path,
                              timeout=300), f"-n {workers}: study own's largest model needs about ")
    assert int(line.rsplit("room for ", 1)[1]) < workers  # this process's memory is not the launcher's
    no_study(storage_url)
