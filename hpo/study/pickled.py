"""A builder defined in a notebook cell or a script's ``__main__``: pickled by value.

Such a function has no module file a worker could import, so :func:`identify` pickles it with
cloudpickle (its code and what it refers to in ``__main__``; installed packages such as Keras by
name) and the study records the pickle with its SHA-256, the builder's identity. Every worker
loads the function from the study's record (:func:`load`), after checking the hash.

Loading a pickle runs code: whoever can write a study's database can run code in its workers,
as whoever can edit a builder's module file can. The pickle is bounded (:data:`MAX_PICKLE_BYTES`),
and it loads only under the Python version that made it (cloudpickle's by-value functions are
not portable across versions).
"""

from __future__ import annotations

import base64
import hashlib
import platform
import types
from collections.abc import Callable
from typing import Any

from hpo.errors import ConfigError

MAX_PICKLE_BYTES = 8 << 20  # a model builder is a few KB; more means it captured data from the notebook

PYTHON = ".".join(platform.python_version_tuple()[:2])


def label(function: Callable[..., Any]) -> str:
    """The ``module:function`` a pickled builder is shown and stored as (``__main__:build``)."""
    module = getattr(function, "__module__", None) or "__main__"
    name = getattr(function, "__name__", "")
    if not all(part.isidentifier() for part in module.split(".")):
        module = "__main__"
    return f"{module}:{name if name.isidentifier() else 'builder'}"


def _placeless(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` (and the code of the functions defined in it) with one file name: a notebook cell's
    file is a temporary one, another in every kernel, so the same cell would pickle differently."""
    consts = tuple(_placeless(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _portable(function: Callable[..., Any]) -> Callable[..., Any]:
    if not isinstance(function, types.FunctionType):
        return function  # a callable object: pickled as it is
    copy = types.FunctionType(_placeless(function.__code__, f"<{label(function)}>"), function.__globals__,
                              function.__name__, function.__defaults__, function.__closure__)
    copy.__kwdefaults__, copy.__qualname__, copy.__module__ = (function.__kwdefaults__, function.__qualname__,
                                                               function.__module__)
    copy.__dict__.update(function.__dict__)
    return copy


def dumps(function: Callable[..., Any]) -> bytes:
    """The function pickled by value, or a ConfigError that says why it cannot be. The same code
    pickles to the same bytes in any kernel (its cell's file name is left out)."""
    import cloudpickle  # noqa: PLC0415  (only a builder from a notebook needs it)

    if not callable(function):
        raise ConfigError(f"build: a {type(function).__name__} is not a function")
    try:
        data = cloudpickle.dumps(_portable(function))
    except Exception as exc:  # noqa: BLE001  (anything the function refers to may refuse to pickle)
        raise ConfigError(f"build: {label(function)} cannot be sent to the workers: pickling it raised "
                          f"{type(exc).__name__}: {exc}") from None
    if len(data) > MAX_PICKLE_BYTES:
        raise ConfigError(f"build: {label(function)} pickles to {len(data) / 2**20:.1f} MiB (at most "
                          f"{MAX_PICKLE_BYTES >> 20} MiB): it refers to large objects of the notebook, arrays say; "
                          "pass data as train_data, and let the builder refer to its parameters only")
    return data


def encode(data: bytes) -> tuple[str, str]:
    """(the pickle as text for the study's record, its SHA-256)."""
    return base64.b64encode(data).decode("ascii"), hashlib.sha256(data).hexdigest()


def load(name: str, text: str, sha256: str, python: str | None) -> Callable[..., Any]:
    """The function a study recorded as a pickle, checked against its SHA-256."""
    import cloudpickle  # noqa: PLC0415  (only studies with a pickled builder need it)

    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ConfigError(f"model.builder: the study's pickled {name} is damaged (not base64)") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"model.builder: the study's pickled {name} does not match its recorded sha256 "
                          f"{sha256[:12]}: it was changed after the study was created")
    if python is not None and python != PYTHON:
        raise ConfigError(f"model.builder: {name} was pickled under Python {python}; this worker runs {PYTHON}, "
                          "which cannot load it: run the workers under Python " + python)
    try:
        function = cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001  (a module it refers to missing here, or any error of its own)
        raise ConfigError(f"model.builder: loading the study's pickled {name} raised {type(exc).__name__}: {exc}"
                          ) from None
    if not callable(function):
        raise ConfigError(f"model.builder: the study's pickled {name} is a {type(function).__name__}, not a function")
    return function
