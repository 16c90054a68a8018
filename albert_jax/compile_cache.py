"""The persistent XLA compilation cache that every ``albert-jax`` command turns on.

A one-shot command on CPU spends most of its time compiling (a few seconds per step shape
for albert-base-v2); with the cache, the second and later runs load the compiled
executables from disk instead. Commands call :func:`enable` with their ``--cache-dir``
(``None``: ``$ALBERT_JAX_CACHE_DIR``, else the user cache directory,
``~/.cache/albert_jax/xla`` on Linux); ``--no-compile-cache`` skips the call. The library
itself never turns the cache on by itself (``EngineOptions(cache_dir=...)`` opts in).

A damaged entry (truncated by a full disk, flipped bits) never stops a run: JAX already
falls back to compiling when an entry cannot be decompressed or deserialised, but it
keeps the damaged file (its writer skips keys that exist) and warns again on every later
run. :func:`enable` turns that warning into one line on the ``albert_jax`` logger and
deletes the damaged file, so the fresh executable is written in its place.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

ENV_VAR = "ALBERT_JAX_CACHE_DIR"
_READ_ERROR = "Error reading persistent compilation cache entry for '"
_WRITE_ERROR = "Error writing persistent compilation cache entry for '"

logger = logging.getLogger(__name__)

_enabled_dir: str | None = None
_previous_showwarning = None


class CacheDirError(ValueError):
    """The cache directory cannot be used (a file, not creatable)."""


def default_cache_dir() -> str:
    """``$ALBERT_JAX_CACHE_DIR``, else the platform's user cache directory + ``albert_jax/xla``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return os.path.join(base, "albert_jax", "xla")


def enabled_dir() -> str | None:
    """The directory :func:`enable` turned on in this process, if any."""
    return _enabled_dir


def enable(directory: str | os.PathLike | None = None) -> str | None:
    """Turns JAX's persistent compilation cache on in ``directory`` (default:
    :func:`default_cache_dir`) and returns it.

    Raises :class:`CacheDirError` (one line naming the path) when ``directory`` exists and
    is not a directory. A directory that cannot be created or written (read-only home)
    only costs the speed-up: a warning, and ``None`` is returned.
    """
    global _enabled_dir
    path = os.path.abspath(os.fspath(directory) if directory is not None else default_cache_dir())
    if os.path.exists(path) and not os.path.isdir(path):
        raise CacheDirError(f"compilation cache directory {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        logger.warning("compilation cache disabled: cannot write %s (%s)", path,
                       e.strerror or e)
        return None
    import jax  # Deferred: the command line parses its arguments before importing jax.

    previous = jax.config.jax_compilation_cache_dir
    if previous is not None and os.path.abspath(previous) != path:
        # JAX opens its cache once per process, at the first compilation after a directory
        # is set, and keeps that one: without a reset, a new directory would be ignored.
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every step: on CPU even a small model's step compiles for ~1 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _install_warning_hook()
    _enabled_dir = path
    return path


def _decompresses(data: bytes) -> bool:
    """Whether a cache file's bytes are an intact compressed stream (zstd or zlib, as JAX
    writes them; both carry checksums)."""
    try:
        import zstandard
    except ImportError:
        zstandard = None
    try:
        if zstandard is not None and data[:4] == b"\x28\xb5\x2f\xfd":
            zstandard.ZstdDecompressor().decompress(data)
        else:
            zlib.decompress(data)
    except Exception:
        return False
    return True


def remove_damaged(module_name: str, directory: str | None = None) -> list[str]:
    """Deletes the entries of ``module_name`` (files ``<module_name>-<key>-cache``) whose
    bytes do not decompress; returns their paths."""
    directory = directory or _enabled_dir
    removed: list[str] = []
    if directory is None or not os.path.isdir(directory):
        return removed
    prefix = f"{module_name}-"
    for name in os.listdir(directory):
        if not (name.startswith(prefix) and name.endswith("-cache")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                intact = _decompresses(f.read())
            if not intact:
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def _install_warning_hook() -> None:
    """Routes JAX's multi-line cache read/write warnings to one logger line each."""
    global _previous_showwarning
    if _previous_showwarning is not None:
        return
    _previous_showwarning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith(_READ_ERROR):
            module_name = text[len(_READ_ERROR):].split("'", 1)[0]
            removed = remove_damaged(module_name)
            logger.warning(
                "damaged compilation cache entry for %s ignored (compiled afresh%s): %s",
                module_name, ", the entry replaced" if removed else "",
                text.split(": ", 1)[-1],
            )
            return
        if text.startswith(_WRITE_ERROR):
            logger.warning("compilation cache entry not written: %s", text.split(": ", 1)[-1])
            return
        _previous_showwarning(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    # JAX warns once per call site by default; every damaged entry must reach the hook.
    warnings.filterwarnings("always", message=r"Error (reading|writing) persistent compilation")


def add_arguments(parser: Any) -> None:
    """``--cache-dir`` and ``--no-compile-cache`` on an ``argparse`` (sub)parser: every
    command that compiles takes them (call :func:`enable_from_args` in its handler)."""
    parser.add_argument("--cache-dir", default=None,
                        help=f"persistent compilation cache directory (default: ${ENV_VAR}, "
                        "else the user cache directory, ~/.cache/albert_jax/xla on Linux)")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not read or write the persistent compilation cache")


def enable_from_args(args: Any) -> str | None:
    """:func:`enable` unless ``args.no_compile_cache``; CacheDirError on an unusable
    ``--cache-dir``."""
    if getattr(args, "no_compile_cache", False):
        return None
    return enable(getattr(args, "cache_dir", None))
