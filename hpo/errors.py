"""The project's one exception tree.

Library code raises these; the CLI turns each into one line on stderr and exit code 2
(the traceback only with ``--debug``). Anything else that escapes is a bug, not a user error.
"""

from __future__ import annotations


class HpoError(Exception):
    """Base of every error a user can act on."""


class ConfigError(HpoError):
    """A study file is missing, malformed or fails validation."""


class DataError(HpoError):
    """A data set is missing, corrupt, or has the wrong shape or labels."""


class StorageError(HpoError):
    """The study database cannot be reached, or holds something that conflicts."""


class StudyNotFound(StorageError):
    """No study of that name in the storage."""


class OutputError(HpoError):
    """A file or folder hpo was told to write cannot be written."""


class NotReady(HpoError):
    """A study is not yet in the state a command needs (no COMPLETE trial to confirm, say)."""


class TrialError(HpoError):
    """A trial that cannot succeed however often it is tried (its model cannot be built, its
    data cannot serve it): it fails once, and is not retried. Any other exception in a trial is
    retried up to the study's ``max_retries``."""


def ended_by(e: BaseException) -> str:
    """What a user's code did that would have ended an hpo process (``SystemExit``,
    ``KeyboardInterrupt``), for the one line that says so: "called sys.exit(0)"."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    return f"raised {type(e).__name__}" + (f": {e}" if str(e) else "")
