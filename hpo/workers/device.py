"""Where a worker runs: its CPU threads, its GPU, and a description of both for the record.

Settings go through environment variables, set before the backend is imported, so the same
code configures a worker started by ``hpo launch`` and one started by hand or in a container.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import tempfile
from typing import Any


def worker_environment(threads: int | None = None, gpu: str | None = None) -> dict[str, str]:
    """Variables that pin a worker to ``threads`` CPU threads and (optionally) one GPU.

    Several workers may share a GPU: TensorFlow grows its memory as needed and JAX does not
    grab 75% of it up front.
    """
    env = {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        # Under JAX, trials of one shape share compiled steps across trials and workers.
        # JAX caches only compiles over 1 s by default; a small CNN's steps are shorter.
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "hpo", "jax")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    if threads is not None:
        value = str(threads)
        env.update(
            TF_NUM_INTRAOP_THREADS=value,
            TF_NUM_INTEROP_THREADS="1" if threads == 1 else "2",
            OMP_NUM_THREADS=value,
            OPENBLAS_NUM_THREADS=value,
            MKL_NUM_THREADS=value,
        )
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def apply(threads: int | None = None) -> None:
    """Configure this process; call before Keras is imported."""
    for key, value in worker_environment(threads).items():
        if key.endswith("_THREADS"):
            os.environ[key] = value  # asked for with --threads
        else:
            os.environ.setdefault(key, value)  # the user's own setting wins


# What TensorFlow's C++ logging (absl, which TF_CPP_MIN_LOG_LEVEL no longer reaches) prints on
# every import on a machine like ours: no GPU, oneDNN on, the CPU's instructions. Not a problem.
IMPORT_NOISE = ("All log messages before absl::InitializeLog() is called", "port.cc:", "cudart_stub.cc:",
                "cuda_executor.cc:", "failed call to cuInit", "cpu_feature_guard.cc:",
                "To enable the following instructions:", "Unable to register cu", "computation_placer.cc:")


def import_backend() -> None:
    """Import Keras (and its backend) and start its runtime with what its C++ side prints then
    filtered: the lines of :data:`IMPORT_NOISE` are dropped, anything else is printed as it came.
    Call after :func:`apply`."""
    if "keras" in sys.modules:
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: PLC0415  (the import is the point; it must come after apply())

            keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # the runtime's start, and its cuInit line
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not any(noise in line for noise in IMPORT_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def describe() -> dict[str, Any]:
    """Host, device, backend and library versions, recorded with every trial."""
    import keras  # noqa: PLC0415  (imported late: apply() must run first)

    backend = keras.backend.backend()
    devices = keras.distribution.list_devices()
    gpu = [d for d in devices if not d.lower().startswith("cpu")]
    return {
        "host": socket.gethostname(),
        "device": gpu[0] if gpu else f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "keras_backend": backend,
        "threads": int(os.environ["TF_NUM_INTRAOP_THREADS"]) if "TF_NUM_INTRAOP_THREADS" in os.environ else None,
        "versions": {name: _version(name) for name in ("keras", "optuna", _backend_package(backend), "numpy")},
    }


def _backend_package(backend: str) -> str:
    return {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
