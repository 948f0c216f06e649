"""Where a worker runs: its CPU threads, its GPU, and a description of both for the record.

Settings go through environment variables, set before the backend is imported, so the same
code configures a worker started by ``hpo launch`` and one started by hand or in a container.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
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
