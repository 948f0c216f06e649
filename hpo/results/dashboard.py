"""Serving optuna-dashboard on the study storage, with the trials' artifacts.

Binds the loopback address unless told otherwise: the dashboard has no authentication, and
anyone who can reach its port can read and change every study.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(storage: optuna.storages.BaseStorage, *, host: str = "127.0.0.1", port: int = 8080,
          artifacts: Path | None = None) -> None:
    if not is_loopback(host):
        log.warning("the dashboard has no authentication: anyone who can reach %s:%d can read "
                    "and change every study in this storage", host, port)
    log.info("dashboard on http://%s:%d/ (Ctrl-C to stop)", host if host != "0.0.0.0" else "127.0.0.1", port)
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    try:
        from optuna_dashboard import run_server  # noqa: PLC0415  (imports scikit-learn: only the dashboard needs it)

        run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:  # port taken, address not on this machine, ...
        raise HpoError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
