"""One error contract for every verb: the user-error type and the exit-code table.

A runner raises :class:`UserError` (or a subclass) for anything the user can fix — a bad config
key, a path of the wrong kind, an unreadable file, an unreachable service — with a message that
names the bad thing and what is allowed. `dutrain.cli` catches it once and prints one line,
``dutrain VERB: error: MESSAGE``, and exits with :data:`EXIT_USER`; any other exception is a bug
and keeps its traceback (:data:`EXIT_FAILED`).
"""

from __future__ import annotations

import errno

#: exit codes of every verb (`dutrain --help` prints this table)
EXIT_OK = 0  #: the verb did what was asked
EXIT_FAILED = 1  #: the work itself failed (a bug, a crashed worker, a failed job)
EXIT_USER = 2  #: a problem the user can fix; one line on stderr says what
EXIT_STOPPED = 3  #: `submit --wait`/`--status`: the job was stopped
EXIT_CLUSTER = 4  #: `submit`: the cluster could not be reached or refused the request
EXIT_INTERRUPTED = 130  #: Ctrl-C (SIGINT); finished work is kept, a rerun resumes

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "the work failed (a bug or a crashed worker/job; the traceback or job log says "
                 "why)",
    EXIT_USER: "a user error: bad config, path, file, unreachable service or full disk (one "
               "line says which)",
    EXIT_STOPPED: "submit: the job was stopped",
    EXIT_CLUSTER: "submit: the Ray cluster could not be reached or refused the request",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); finished work is kept and a rerun resumes",
}


class UserError(Exception):
    """A problem the user can fix. The message names the bad key/file/value and what is allowed."""


def disk_full(exc: BaseException) -> bool:
    """True when `exc` or an exception it was raised from is ENOSPC (no space left on device),
    also when a Ray task raised it on a worker (Ray re-raises it wrapped, with its text)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False

