"""Serving optuna-dashboard on the study storage, with the trials' artifacts.

Binds the loopback address unless told otherwise: the dashboard has no authentication, and
anyone who can reach its port can read and change every study.

hpo names its artifact files readably ("exp3-model_trial14-1a2b3c4d.keras",
hpo.training.artifacts.readable_id), while optuna-dashboard serves only ids of hex digits and
dashes (Optuna's UUIDs): the app gets one more route, for the names hpo gives, that serves them
as the dashboard serves its own.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError
from hpo.storage import records

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
        import bottle  # noqa: PLC0415  (optuna-dashboard's web framework: only the dashboard needs it)

        bottle.run(app(storage, store), host=host, port=port)
    except OSError as exc:  # port taken, address not on this machine, ...
        raise HpoError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None


# An artifact id as hpo.training.artifacts.readable_id writes it: no "/", and not "." or "..".
READABLE_ID = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


def app(storage: optuna.storages.BaseStorage, store: FileSystemArtifactStore | None) -> Any:
    """optuna-dashboard's WSGI app, serving hpo's readably named artifacts too."""
    import bottle  # noqa: PLC0415  (see serve)
    from optuna_dashboard import wsgi  # noqa: PLC0415  (imports scikit-learn: only the dashboard needs it)

    dashboard = wsgi(storage, artifact_store=store)

    @dashboard.get(f"/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:{READABLE_ID}>")
    def trial_artifact(study_id: int, trial_id: int, artifact_id: str) -> Any:
        if store is None:
            return bottle.HTTPResponse(b"Cannot access to the artifacts.", status=400)
        try:
            meta = storage.get_trial_system_attrs(trial_id).get(records.ARTIFACT_PREFIX + artifact_id)
            if meta is None:  # not this trial's (the study in the path is the dashboard's, unused)
                raise KeyError(artifact_id)
            meta = json.loads(meta)
            body = store.open_reader(artifact_id)
        except (KeyError, ValueError, OSError, optuna.exceptions.OptunaError):
            return bottle.HTTPResponse(b"Not Found", status=404)
        headers = {"Content-Type": meta.get("mimetype") or "application/octet-stream",
                   "Access-Control-Allow-Origin": "*"}
        if meta.get("encoding"):
            headers["Content-Encoding"] = meta["encoding"]
        return bottle.HTTPResponse(body, headers=headers)

    return dashboard
