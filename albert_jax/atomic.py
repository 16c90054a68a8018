"""Atomic writes: every file and directory the package writes appears whole or not at all.

One rule for the whole package: the content goes to a fresh, randomly named temporary in
the target's own directory (``.NAME.albert_jax-HOST-PID-XXXXXXXX.tmp``), created
exclusively (``O_EXCL``, ``O_NOFOLLOW``: a file or symlink planted at any name is never
followed or reused), flushed to disk (``fsync``), then renamed onto the target, and the
directory entry is synced. An error or interruption before the rename removes the temporary
and leaves the target as it was. Temporaries are created ``0600``/``0700`` (nobody else
can write into them meanwhile) and get the usual ``umask`` permissions just before the
rename.

A process killed outright (``kill -9``) cannot remove its temporary. Its name says whose it
is: ``HOST`` (a hash of the host name) and ``PID`` (the writer's process id). Every atomic
write first sweeps the target's directory of *stale* temporaries: only names of exactly this
form, from this host, whose process is gone, that are plain files or directories owned by
this user. Nothing else is ever removed (:func:`sweep_stale`).

    with atomic_file("preds.jsonl") as f:      # text ("w") or bytes ("wb")
        f.write(...)
    write_text("best.json", json.dumps(best))
    with atomic_directory("model", overwrite=True) as tmp:
        (tmp / "config.json").write_text(...)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# .NAME.albert_jax-HOST-PID-RANDOM.tmp (a temporary) or .old (a directory renamed aside).
_OURS = re.compile(r"\.(?P<name>.+)\.albert_jax-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-"
                   r"[a-z0-9_]+\.(?P<kind>tmp|old)")


def _temp_name(target: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of the temporaries of ``target``:
    ``.NAME.albert_jax-HOST-PID-<random>.tmp``."""
    return f".{target.name}.albert_jax-{_HOST}-{os.getpid()}-", ".tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or not a pid): not ours to judge
    return True


def sweep_stale(directory: str | os.PathLike) -> list[str]:
    """Removes the stale temporaries of this module in ``directory`` (not below it): names
    ``.NAME.albert_jax-HOST-PID-XXXX.tmp``/``.old`` with this host's ``HOST``, whose ``PID``
    is no living process, that are a plain file or directory (never a symlink) owned by
    this user. Returns the names removed. (A ``.old`` directory - the previous ``NAME``
    renamed aside by a replacement killed before its second rename - is renamed back to
    ``NAME`` when nothing is there: the previous version, complete.)"""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _OURS.fullmatch(entry.name)
        if m is None or m["host"] != _HOST:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_uid != os.getuid():
                continue
            if stat.S_ISDIR(st.st_mode):
                original = os.path.join(directory, m["name"])
                if m["kind"] == "old" and not os.path.lexists(original):
                    os.rename(entry.path, original)
                else:
                    shutil.rmtree(entry.path)  # never follows symlinks inside
            elif stat.S_ISREG(st.st_mode):
                os.unlink(entry.path)
            else:
                continue
        except OSError:  # e.g. another run swept it first
            continue
        removed.append(entry.name)
    return removed


def discard_own(path: str | os.PathLike) -> list[str]:
    """Removes this process's temporaries of ``path`` (for a process about to end with
    ``os._exit``, which unwinds no ``atomic_file`` block). Returns the names removed."""
    target = Path(path).absolute()
    prefix, suffix = _temp_name(target)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _umask_mode(full: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def check_target(path: str | os.PathLike) -> None:
    """Raises (one line) if ``path`` cannot be written atomically: its directory is missing
    or it is a directory. Lets a command refuse before doing any work."""
    _check_parent(Path(path).absolute())


def _check_parent(target: Path) -> None:
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: no directory {target.parent}")
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(f"cannot write {target}: it is a directory")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yields a file object (``mode`` ``"w"``: UTF-8 text, ``"wb"``: bytes) whose content
    replaces ``path`` when the block ends without an exception."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path).absolute()
    _check_parent(target)
    sweep_stale(target.parent)
    prefix, suffix = _temp_name(target)
    # mkstemp: a fresh random name, O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``path`` atomically replaced by ``text`` (UTF-8)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``path`` atomically replaced by ``data``."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            p = os.path.join(directory, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(directory))


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh, empty temporary directory beside ``dest`` that replaces ``dest`` when
    the block ends without an exception.

    A non-empty existing ``dest`` is refused (``FileExistsError``) unless ``overwrite``; on
    any error the temporary is removed and ``dest`` is left as it was. Replacing an
    existing ``dest`` renames it aside first (directories cannot be renamed over a
    non-empty one), then removes it.
    """
    dest = Path(dest).absolute()
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise FileExistsError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()) and not overwrite:
            raise FileExistsError(f"{dest} exists and is not empty (--overwrite replaces it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent)
    prefix, suffix = _temp_name(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix, suffix=suffix))  # 0700
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, _umask_mode(0o777))
        if dest.exists():
            old = dest.parent / f"{prefix}{secrets.token_hex(8)}.old"  # (sweepable too)
            os.rename(dest, old)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
        _fsync_directory(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
