"""The exclusive lock of a training workdir: one ``pretrain`` or ``finetune`` run at a time.

Two runs on one workdir would interleave their checkpoints and metrics. A run holds
``fcntl.flock`` on ``WORKDIR/.albert_jax.lock`` for its whole length (the file holds its
process id, for the message); a second run fails at once with :class:`WorkdirBusyError` naming
that process. The kernel releases the lock when its holder dies, so the lock a killed run
leaves behind blocks nothing. In a multi-process run process 0 holds it. The lock is
re-entrant within a process (the command line takes it before importing JAX, so a second
run is refused in well under a second; ``pretrain()``/``finetune()`` take it again).

    @holds_workdir_lock
    def pretrain(config, workdir, ...): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LOCK_FILE = ".albert_jax.lock"
F = TypeVar("F", bound=Callable[..., Any])
_HELD: dict[str, int] = {}  # real path of a workdir -> depth, in this process


class WorkdirBusyError(OSError):
    """Another run holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[Path]:
    """Holds the exclusive lock of ``workdir`` (created if missing) for the block. A workdir
    created here is removed again if the block fails before writing anything into it (a
    refused config leaves nothing behind)."""
    workdir = Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(workdir)
    # Without JAX imported there is no distributed run yet: this is process 0.
    jax = sys.modules.get("jax")
    if key in _HELD or (jax is not None and jax.process_index() != 0):
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield workdir
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    path = workdir / LOCK_FILE
    # O_NOFOLLOW: a symlink planted at the lock's name is refused, never written through.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise WorkdirBusyError(f"{workdir} is in use by another run (process {holder}); "
                              "wait for it to end or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield workdir
        except BaseException:
            if created and os.listdir(workdir) == [LOCK_FILE]:
                os.unlink(path)
                os.rmdir(workdir)
            raise
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def holds_workdir_lock(fn: F) -> F:
    """Decorates ``fn(config, workdir, ...)`` to run holding ``workdir``'s lock."""

    @functools.wraps(fn)
    def wrapper(config: Any, workdir: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        with workdir_lock(workdir):
            return fn(config, workdir, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
