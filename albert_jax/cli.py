"""The ``albert-jax`` command line: every subcommand's arguments and its one-line errors.

Inference: ``fill-mask``, ``score``, ``convert``. Training: ``pretrain``, ``finetune``,
``evaluate``, ``predict``, ``export``. Each subcommand is one ``add_<name>_command``
function (its parser) and one ``cmd_<name>`` function (its handler, which calls the
library). The training commands take an ``ml_collections`` config file and
``--config.key=value`` overrides; ``albert-jax pretrain --help`` lists every key.

User mistakes (bad input, missing model, unreadable checkpoint, bad config) end in one line
on stderr, ``albert-jax COMMAND: error: ...``, and exit status 2; no traceback.

``score`` (batch scoring of a file, one text per line) has its own bad-line policy: a line
that cannot be processed does not stop the run. Such a line is

- empty (nothing but whitespace),
- longer than the model (or ``--max-length``) allows, counted in tokens with [CLS]/[SEP]
  (no truncation: a truncated score would be silently wrong),
- for ``fill-mask``, a line without exactly one ``[MASK]``,
- for ``pll``, a line with no token to score;

it yields the record ``{"line": n, "error": "..."}`` (n counts from 1) in its place and the
run continues. Lines that are not valid UTF-8 are decoded with U+FFFD replacements and
their record carries ``"invalid_utf8": true``. Exit status: 0 when every line was scored,
1 when any line failed, 2 for usage errors (bad options, missing model, unreadable input).
The output is written to a temporary file in the same directory and renamed at the end,
so a failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from albert_jax import compile_cache
from albert_jax.atomic import atomic_file
from albert_jax.errors import TrainingError

PROG = "albert-jax"
DEFAULT_MODEL = "albert-base-v2"
# Shipped inside the package: the default when albert-base-v2 is neither cached nor fetchable.
FALLBACK_MODEL = "albert-mini"


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


# Longest error line printed: a message that echoes a huge input is cut (its length shown).
MAX_MESSAGE = 1000


def _one_line(message: object) -> str:
    # One line whatever the message holds: newlines would break log parsers.
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text)} characters)"
    return text


class _Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, so temporaries are removed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


# errno values of a write that failed because of where it went, not because of a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                 errno.EPERM}


# Linux inode flags (chattr): FS_IOC_GETFLAGS and the two that refuse even root's writes.
_FS_IOC_GETFLAGS, _FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x80086601, 0x10, 0x20


def _locked_inode(path: str) -> str | None:
    """"immutable" or "append-only" when ``path`` carries that chattr flag, else None (also
    where the filesystem has no such flags). Root's ``os.access`` ignores them, yet the
    rename that publishes an output fails on them, so they are checked before any work."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)
    if flags & _FS_IMMUTABLE_FL:
        return "immutable"
    return "append-only" if flags & _FS_APPEND_FL else None


def _writable_dir(directory: str) -> str | None:
    """Why files cannot be created in ``directory`` (an existing directory), or None.

    ``os.access`` misses a read-only mount for root, hence the ``statvfs`` flag; the inode
    flags come first only to name the reason."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "it is on a read-only filesystem"
    except OSError:
        pass
    locked = _locked_inode(directory)
    if locked:
        return f"it is {locked} (chattr)"
    return None if os.access(directory, os.W_OK | os.X_OK) else "it is not writable"


def _existing_ancestor(path: str) -> str:
    """The nearest existing path at or above ``path``."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_output_file(path: str, option: str = "--output") -> None:
    """UserError (one line naming ``path``) unless a file can be written there: its
    directory exists and is writable, and ``path`` is not a directory. Called before any
    work."""
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise UserError(f"{option} {path}: it is a directory")
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.lexists(parent) else "does not exist"
        raise UserError(f"{option} {path}: its directory {parent} {what}")
    why = _writable_dir(parent)
    if why:
        raise UserError(f"{option} {path}: cannot write in {parent}: {why}")
    locked = _locked_inode(target) if os.path.isfile(target) else None
    if locked:
        raise UserError(f"{option} {path}: the file is {locked} (chattr), so it cannot be "
                        "replaced")


def check_output_dir(path: str, overwrite: bool, what: str = "DEST") -> None:
    """UserError (one line naming ``path``) unless a directory can be written at ``path``
    (as :func:`albert_jax.atomic.atomic_directory` does: missing parents are created).
    Called before any work."""
    target = os.path.abspath(path)
    if os.path.lexists(target):
        if not os.path.isdir(target) or os.path.islink(target):
            raise UserError(f"{what} {path} exists and is not a directory")
        if not overwrite and any(os.scandir(target)):
            raise UserError(f"{what} {path} exists and is not empty (--overwrite replaces it)")
        locked = _locked_inode(target)
        if locked:
            raise UserError(f"{what} {path} is {locked} (chattr), so it cannot be replaced")
    ancestor = _existing_ancestor(os.path.dirname(target))
    if not os.path.isdir(ancestor):
        raise UserError(f"{what} {path}: {ancestor} is not a directory")
    why = _writable_dir(ancestor)
    if why:
        raise UserError(f"{what} {path}: cannot write in {ancestor}: {why}")


def check_workdir(path: str) -> None:
    """UserError (one line) unless ``path`` is, or can be created as, a writable
    directory: a training run writes checkpoints and metrics there."""
    target = os.path.abspath(path)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UserError(f"--workdir {path} exists and is not a directory")
    ancestor = _existing_ancestor(target)
    if not os.path.isdir(ancestor):
        raise UserError(f"--workdir {path}: {ancestor} is not a directory")
    why = _writable_dir(ancestor)
    if why:
        raise UserError(f"--workdir {path}: cannot write in {ancestor}: {why}")


def _at_least(low: int, name: str = "", special: int | None = None):
    """argparse type: an int >= ``low`` (or exactly ``special``, e.g. -1 for "all")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < low and value != special:
            extra = f" (or {special})" if special is not None else ""
            raise argparse.ArgumentTypeError(f"{name} must be at least {low}{extra}, got {value}")
        return value
    return parse


def _finite(low: float, name: str = "", strict: bool = False):
    """argparse type: a finite float >= ``low`` (> ``low`` when ``strict``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            bound = "greater than" if strict else "at least"
            raise argparse.ArgumentTypeError(f"{name} must be a finite number {bound} {low}, "
                                             f"got {text}")
        return value
    return parse


def _error(message: str, command: str | None = None) -> None:
    prog = f"{PROG} {command}" if command else PROG
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        # "argument --top-k: --top-k must be ..." (our types name their option): once.
        head, sep, rest = message.partition(": ")
        if sep and head.startswith("argument ") and rest.startswith(head[len("argument "):]):
            message = rest
        print(f"{self.prog}: error: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def _format_score(score: float) -> str:
    return f"{score:.2f}" if score >= 0.005 else f"{score:.1e}"


def default_model() -> str:
    """albert-base-v2 when it is cached or the hub is reachable, else the bundled albert-mini.

    Says so in one line on stderr when it falls back.
    """
    from albert_jax import hub

    if hub.is_cached(DEFAULT_MODEL) or hub.packaged_model_dir(FALLBACK_MODEL) is None:
        return DEFAULT_MODEL
    reason = ("offline mode is on (HF_HUB_OFFLINE)" if hub.is_offline()
              else hub.unreachable_reason())
    if reason is None:
        return DEFAULT_MODEL
    print(f"{PROG}: {DEFAULT_MODEL} is not in the local cache and cannot be fetched "
          f"({reason}): using the bundled {FALLBACK_MODEL}, a small model trained on "
          "public-domain books", file=sys.stderr)
    return FALLBACK_MODEL


def _compile_cache(args: argparse.Namespace) -> None:
    from albert_jax.compile_cache import CacheDirError, enable_from_args

    try:
        enable_from_args(args)
    except CacheDirError as e:
        raise UserError(str(e)) from None


def _load_fill_mask(model: str):
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError
    from albert_jax.inference import FillMask

    try:
        return FillMask.from_pretrained(model)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError) as e:
        raise UserError(f"cannot load model {model!r}: {e}") from None


# fill-mask reads stdin in windows of this many lines: memory does not grow with the
# input, and each window's answers are printed (and flushed) before the next is read.
FILL_MASK_WINDOW = 64


def _decode(raw: bytes) -> tuple[str, bool]:
    """(text, had invalid UTF-8): undecodable bytes become U+FFFD."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _argv_text(text: str) -> tuple[str, bool]:
    """An argv string as (text, had invalid UTF-8): Python hands undecodable argv bytes
    over as lone surrogates (surrogateescape); they become U+FFFD."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return _decode(os.fsencode(text))[0], True


def _stdin_windows(size: int) -> Iterator[list[tuple[str, bool]]]:
    """stdin as lists of at most ``size`` (text, had invalid UTF-8) lines, read lazily."""
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    window: list[tuple[str, bool]] = []
    for line in stream if stream is not None else sys.stdin:
        raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
        window.append(_decode(raw.rstrip(b"\r\n")))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def cmd_fill_mask(args: argparse.Namespace) -> int:
    if args.text:
        windows: Iterator[list[tuple[str, bool]]] = iter([[_argv_text(t) for t in args.text]])
    else:
        windows = _stdin_windows(FILL_MASK_WINDOW)
    targets = [t for t in args.targets.split(",") if t] if args.targets is not None else None
    if targets is not None and not targets:
        raise UserError("--targets is empty")
    _compile_cache(args)
    first = next(windows, None)
    if first is None:
        raise UserError("no input: give TEXT arguments or lines on stdin")
    fm = _load_fill_mask(args.model or default_model())
    try:
        target_ids = None if targets is None else fm.target_ids(targets)
    except ValueError as e:
        raise UserError(str(e)) from None

    failed, n = False, 0
    for window in _chain(first, windows):
        prepared, errors = {}, {}
        for i, (text, _) in enumerate(window):
            try:
                prepared[i] = fm.prepare(text, n + i + 1)
            except ValueError as e:
                errors[i] = str(e)
        valid = sorted(prepared)
        if not n:  # Shapes from the first window only: later windows reuse what compiled
            fm.plan(prepared[i] for i in valid)  # (longer rows: the engine's fixed ladder).
        best = fm.stream_top_k((prepared[i] for i in valid), args.top_k, target_ids)
        for i, (text, bad_utf8) in enumerate(window):
            if bad_utf8:
                sys.stdout.flush()
                print(f"{PROG}: warning: input {n + i + 1} is not valid UTF-8: undecodable "
                      "bytes replaced with U+FFFD", file=sys.stderr)
            flag = {"invalid_utf8": True} if bad_utf8 else {}
            if i in errors:
                failed = True
                sys.stdout.flush()
                _error(errors[i])
                if args.json:
                    print(json.dumps({"input": text, "error": errors[i], **flag},
                                     ensure_ascii=False))
                continue
            results = fm.format_top_k(prepared[i], *next(best))
            if args.json:
                print(json.dumps({"input": text, "predictions": results, **flag},
                                 ensure_ascii=False))
            else:
                if n + i:
                    print()
                for r in results:
                    print(f"{r['sequence']} ({_format_score(r['score'])})")
        n += len(window)
        sys.stdout.flush()  # This window's answers appear now, not at the end.
    return 2 if failed else 0


def _chain(first: list, rest: Iterator[list]) -> Iterator[list]:
    yield first
    yield from rest


def _read_lines(path: str) -> list[tuple[str, bool]]:
    """(text, had invalid UTF-8) per line of ``path`` (``-``: stdin)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else (
                sys.stdin.read().encode("utf-8"))
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for raw in lines:
        raw = raw.removesuffix(b"\r")
        try:
            out.append((raw.decode("utf-8"), False))
        except UnicodeDecodeError:
            out.append((raw.decode("utf-8", errors="replace"), True))
    return out


def _load_task(args: argparse.Namespace, devices: Any = None):
    """The task's model on ``devices`` (default ``jax.devices()``: under --distributed,
    every process's)."""
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError
    from albert_jax.inference import Embedder, FillMask, PseudoLogLikelihood

    cls = {"fill-mask": FillMask, "pll": PseudoLogLikelihood, "embed": Embedder}[args.task]
    kwargs = dict(batch_size=args.batch_size, max_length=args.max_length, data=args.data,
                  fsdp=args.fsdp, tensor=args.tensor, dtype=args.dtype,
                  max_batch_tokens=args.max_batch_tokens, devices=devices)
    if args.task == "pll":
        kwargs["word_l2r"] = args.word_l2r
    if args.task == "embed":
        kwargs["pooling"] = args.pooling
    try:
        args.model = args.model or default_model()
        return cls.from_pretrained(args.model, **kwargs)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError) as e:
        raise UserError(f"cannot load model {args.model!r}: {e}") from None
    except ValueError as e:  # Bad engine options (mesh sizes, max length).
        raise UserError(str(e)) from None


def _prepare_lines(task, lines, indices) -> tuple[dict[int, Any], dict[int, str]]:
    """(prepared input, error message) by line index, for the lines at ``indices``."""
    prepared: dict[int, Any] = {}
    errors: dict[int, str] = {}
    for i in indices:
        text = lines[i][0]
        try:
            if not text.strip():
                raise ValueError("empty line")
            prepared[i] = task.prepare(text)
        except ValueError as e:
            errors[i] = str(e).removeprefix("input ")
    return prepared, errors


def _exchange_prepared(task, args, lines,
                       share: tuple[dict[int, Any], dict[int, str]]
                       ) -> tuple[dict[int, Any], dict[int, str]]:
    """--distributed: every process's prepared share (token ids, per-line errors) to every
    process, so that all form the same batch plan. UserError when the processes did not
    read the same input."""
    from albert_jax import multihost
    from albert_jax.inference import _Prepared

    fill = args.task == "fill-mask"
    digest = hashlib.sha256("\n".join(text for text, _ in lines).encode()).hexdigest()
    mine = {"lines": len(lines), "digest": digest,
            "prepared": {i: [p.ids, p.mask_index] if fill else p for i, p in share[0].items()},
            "errors": share[1]}
    everyone = [json.loads(b) for b in multihost.gather_bytes(json.dumps(mine).encode())]
    for p, part in enumerate(everyone):
        if (part["lines"], part["digest"]) != (everyone[0]["lines"], everyone[0]["digest"]):
            what = (f"process {p} read {part['lines']} lines, process 0 "
                    f"{everyone[0]['lines']}" if part["lines"] != everyone[0]["lines"]
                    else f"processes 0 and {p} read different lines")
            raise UserError(f"{args.input} differs between processes: {what} (every host "
                            "needs the same file)")
    prepared, errors = {}, {}
    for part in everyone:
        for i, p in part["prepared"].items():
            prepared[int(i)] = _Prepared(ids=p[0], mask_index=p[1]) if fill else p
        errors.update({int(i): e for i, e in part["errors"].items()})
    return prepared, errors


def _join_processes() -> None:
    """--distributed: joins the other processes (UserError when that fails)."""
    from albert_jax import multihost

    try:
        multihost.peer_timeout()  # A bad ALBERT_JAX_PEER_TIMEOUT_S: said before joining.
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        multihost.initialize()
    except (RuntimeError, ValueError) as e:  # No coordinator, bad rank, timeout.
        raise UserError(f"--distributed: cannot join the other processes: {e}") from None
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        # JAX's preemption notifier took SIGTERM over: unwind on it, as without --distributed.
        signal.signal(signal.SIGTERM, _raise_terminated)


# Set when a distributed run fails mid-way: main() then leaves with os._exit
# (multihost.leave), because the interpreter's normal exit waits at JAX's shutdown barrier
# for peers blocked in a collective this process will never join (they are told to stop:
# multihost.watch).
_LEAVE_AT_ONCE = False


def _peer_failed(outputs: Sequence[str], message: str) -> None:
    """multihost.watch's callback: another process failed; this one ends now (exit 2), its
    temporaries removed (nothing written)."""
    from albert_jax import multihost
    from albert_jax.atomic import discard_own

    for path in outputs:
        discard_own(path)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    multihost.leave(2)


def _failure_line(error: BaseException) -> str:
    """One line for the other processes: what stopped this one."""
    if isinstance(error, UserError):
        return _one_line(str(error))
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, _Terminated):
        return "terminated (SIGTERM)"
    return _one_line(f"{type(error).__name__}: {error}")


class _NoWriter(contextlib.nullcontext):
    """Stands in for :func:`albert_jax.atomic.atomic_file` on the processes that do not
    write: a context yielding a file that drops what is written."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())


def _score_records(task, args, lines, progress=None,
                   prepared_errors=None) -> Iterator[tuple[int, dict, Any]]:
    """(line index, record, embedding or None) per input line, in input order."""
    prepared, errors = prepared_errors or _prepare_lines(task, lines, range(len(lines)))
    valid = [i for i in range(len(lines)) if i in prepared]
    task.plan(prepared[i] for i in valid)  # The workload is known: fewest shapes to compile.
    if progress is not None and errors:
        progress(len(errors))
    if args.task == "fill-mask":
        results = task.stream_top_k((prepared[i] for i in valid), args.top_k,
                                    progress=progress)
    else:
        results = task.stream((prepared[i] for i in valid), progress=progress)
    for i, (text, bad_utf8) in enumerate(lines):
        record: dict[str, Any] = {"line": i + 1}
        vector = None
        if i in errors:
            record["error"] = errors[i]
        else:
            out = next(results)
            record["input"] = text
            record["num_tokens"] = (len(prepared[i].ids) if args.task == "fill-mask"
                                    else len(prepared[i]))
            if args.task == "fill-mask":
                record["predictions"] = task.format_top_k(prepared[i], *out)
            elif args.task == "pll":
                record.update(out.to_dict())  # num_tokens: the tokens scored.
            else:
                vector = out
        if bad_utf8:
            record["invalid_utf8"] = True
        yield i, record, vector


def _write_scores(task, args, lines, status_path: str, primary: bool,
                  prepared_errors) -> tuple[int, int]:
    """Scores every line and writes the outputs (on the primary process only): (lines
    failed, tokens scored)."""
    from tqdm import tqdm

    embed = args.task == "embed"
    failed = tokens = 0
    # Both outputs appear whole or not at all (an error or interrupt discards them); in a
    # distributed run only process 0 writes.
    with atomic_file(status_path) if primary else _NoWriter() as status:
        vectors = (np.full((len(lines), task.model.config.hidden_size), np.nan, np.float32)
                   if embed else None)
        # The bar counts lines finished (as batches complete, in any order); records are
        # written in input order as soon as they and every earlier line are done.
        with tqdm(total=len(lines), unit="line", file=sys.stderr,
                  disable=args.quiet or not primary) as bar:
            for i, record, vector in _score_records(task, args, lines, bar.update,
                                                    prepared_errors):
                failed += "error" in record
                tokens += record.get("num_tokens", 0)
                if vector is not None:
                    vectors[i] = vector
                status.write(json.dumps(record, ensure_ascii=False) + "\n")
        if embed and primary:
            with atomic_file(args.output, "wb") as array:
                np.save(array, vectors)
    return failed, tokens


def _score_distributed(task, args, lines, share, status_path: str,
                       primary: bool) -> tuple[int, int]:
    """--distributed, once this process has prepared its share: the rest of the run in
    lockstep with the other processes. When one fails mid-way, every one ends soon with
    one line: the failing one tells the others (multihost.report_failure), whose watchers
    end them (_peer_failed), then leaves at once itself (main)."""
    global _LEAVE_AT_ONCE
    import jax

    from albert_jax import multihost

    outputs = tuple(dict.fromkeys((status_path, args.output))) if primary else ()
    try:
        with multihost.watch(functools.partial(_peer_failed, outputs)):
            multihost.agree("ready")
            prepared_errors = _exchange_prepared(task, args, lines, share)
            mesh = task.engine.mesh
            print(f"{PROG}: process {jax.process_index()} of {jax.process_count()}: mesh "
                  f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} x "
                  f"tensor={mesh.shape['tensor']} over {mesh.devices.size} devices, "
                  f"{jax.local_device_count()} of them here", file=sys.stderr)
            result = _write_scores(task, args, lines, status_path, primary, prepared_errors)
            multihost.agree("done")  # The others wait while process 0 writes.
    except multihost.PeerError as e:
        if e.late:  # Perhaps hung, or arriving later: it must hear of this.
            multihost.report_failure(str(e))
            _LEAVE_AT_ONCE = True
        raise UserError(str(e)) from None  # (Else every process knows of the failure.)
    except UserError:  # The same on every process (e.g. the input differs between hosts).
        raise
    except BaseException as e:
        multihost.report_failure(_failure_line(e))
        _LEAVE_AT_ONCE = True
        raise
    return result


def cmd_score(args: argparse.Namespace) -> int:
    if args.task == "embed" and not args.output.endswith(".npy"):
        raise UserError(f"--task embed writes a .npy array: --output must end in .npy, "
                        f"got {args.output!r}")
    embed = args.task == "embed"
    status_path = args.output[: -len(".npy")] + ".jsonl" if embed else args.output
    primary = True
    if args.distributed:  # One process per host, one mesh over all their devices.
        import jax

        from albert_jax import multihost

        _join_processes()
        primary = jax.process_index() == 0  # The one that writes.
    try:
        if primary:
            for path in dict.fromkeys((status_path, args.output)):  # before any work
                check_output_file(path)
        lines = _read_lines(args.input)
        _compile_cache(args)
        task = _load_task(args)
        if args.distributed:
            share = _prepare_lines(task, lines, multihost.share(len(lines)))
    except BaseException as e:
        if args.distributed:  # The others stop too, instead of waiting for this one.
            multihost.agree("ready", _failure_line(e))
        raise
    start = time.perf_counter()
    if args.distributed:
        failed, tokens = _score_distributed(task, args, lines, share, status_path, primary)
    else:
        failed, tokens = _write_scores(task, args, lines, status_path, primary, None)
    elapsed = max(time.perf_counter() - start, 1e-9)
    done = len(lines) - failed
    if primary:
        print(f"{PROG}: {args.task}: {done} of {len(lines)} lines scored ({failed} failed) in "
              f"{elapsed:.2f} s: {done / elapsed:.1f} inputs/s, {tokens / elapsed:.0f} "
              "tokens/s", file=sys.stderr)
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError
    from albert_jax.sources import convert

    check_output_dir(args.dest, args.overwrite)
    try:
        src = args.src
        if args.source_format == "tf":  # Google's TF checkpoints (albert_jax.tf_checkpoint).
            src = hub.resolve_tf_files(src, config=args.config, spiece=args.spiece)
        elif args.config or args.spiece:
            raise UserError("--config and --spiece are for --from tf")
        dest = convert(src, args.dest, to=args.to, overwrite=args.overwrite)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError,
            FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.to} model to {dest}", file=sys.stderr)
    return 0


# ============================================================================= serving
# `serve`, `keys` and `usage`: parsers and handlers only; the work is in albert_jax.serving
# (needs the `serve` extra). One block, so that it moves as a whole.
_SERVE_EXTRA_HINT = "the server needs the serve extra: pip install 'albert_jax[serve]'"


def _import_serving(module: str):
    import importlib

    try:
        return importlib.import_module(f"albert_jax.serving.{module}")
    except ImportError as e:
        raise UserError(f"{_SERVE_EXTRA_HINT} ({e})") from None


def _length_buckets(text: str) -> tuple[int, ...]:
    try:
        buckets = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of lengths: {text!r}") from None
    if not buckets or buckets[0] < 3:
        raise argparse.ArgumentTypeError(f"lengths must be at least 3: {text!r}")
    return buckets


def add_serve_command(sub) -> None:
    sv = sub.add_parser(
        "serve", help="the hosted fill-mask service: HTTP API, model page, keys, metering",
        description="FastAPI on uvicorn. POST /v1/inference/{model}, POST /models/{model} "
        "(Hugging Face shape), GET /v1/models, /v1/usage, /health, /ready, /metrics, /docs; "
        "the model page at / and GET /models/{model}. SIGTERM drains and exits 0.")
    sv.add_argument("--model", action="append", required=True, metavar="[ALIAS=]NAME_OR_DIR",
                    help="a model to serve (repeatable); served as ALIAS, else its hub name, "
                    "else its directory's name")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_at_least(0, "--port"), default=8000)
    sv.add_argument("--db", default=_db_default(), help="SQLAlchemy URL of the keys and usage "
                    f"database (default: ${DB_ENV_VAR}, else SQLite in the user data directory; "
                    "postgresql+psycopg://... for replicas)")
    sv.add_argument("--price-per-second", type=_finite(0.0, "--price-per-second"), default=0.0005,
                    help="price of a second of device time (default 0.0005)")
    sv.add_argument("--max-batch-size", type=_at_least(1, "--max-batch-size"),
                    default=32, help="rows per batch (32)")
    sv.add_argument("--max-batch-tokens", type=_at_least(1, "--max-batch-tokens"), default=8192,
                    help="padded tokens per batch (8192)")
    sv.add_argument("--max-wait-ms", type=_finite(0.0, "--max-wait-ms"), default=2.0,
                    help="longest wait for more rows while a batch is not full (2)")
    sv.add_argument("--max-queue", type=_at_least(1, "--max-queue"), default=512,
                    help="rows waiting per model before 429 (512)")
    sv.add_argument("--max-body-bytes", type=_at_least(1, "--max-body-bytes"), default=1_000_000,
                    help="largest request body before 413 (1000000)")
    sv.add_argument("--request-timeout-s", type=_finite(0.0, "--request-timeout-s", strict=True),
                    default=30.0,
                    help="time to answer before 504 (30)")
    sv.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    sv.add_argument("--data", type=_at_least(1, "--data", special=-1),
                    default=-1, help="data-parallel devices (default all)")
    sv.add_argument("--tensor", type=_at_least(1, "--tensor"),
                    default=1, help="tensor-parallel devices")
    compile_cache.add_arguments(sv)
    sv.add_argument("--allow-anonymous", action="store_true",
                    help="inference without a key too (rate-limited per client address: 60 "
                    "inputs per minute)")
    sv.add_argument("--max-client-batch-size", type=_at_least(1, "--max-client-batch-size"),
                    default=None, help="inputs per request, more is 413 (default 32, or "
                    "half of --max-queue when that is less)")
    sv.add_argument("--max-targets", type=_at_least(1, "--max-targets"), default=100,
                    help="targets per request, more is 413 (100)")
    sv.add_argument("--max-top-k", type=_at_least(1, "--max-top-k"), default=100,
                    help="largest top_k, more is 422 (100)")
    sv.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                    help="comma-separated addresses of proxies whose X-Forwarded-For names "
                    "the client ('*': any); default: none, the peer's address is the client's")
    sv.add_argument("--metrics-port", type=_at_least(0, "--metrics-port"), default=None,
                    help="serve /metrics on this port only (on --metrics-host), not on --port")
    sv.add_argument("--metrics-host", default="127.0.0.1",
                    help="address of the --metrics-port listener (127.0.0.1)")
    sv.add_argument("--length-buckets", type=_length_buckets, default=None,
                    help="comma-separated sequence-length buckets to compile (default: the "
                    "engine's)")
    sv.add_argument("--max-length", type=_at_least(3, "--max-length"), default=None,
                    help="longest input in tokens (default: the model's maximum)")
    sv.add_argument("--pack-length", type=_at_least(0, "--pack-length"), default=64,
                    help="inputs up to this many tokens are packed several to a row of this "
                    "length instead of padded one per row (default 64; 0: off)")
    sv.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    server = _import_serving("server")
    # On by default, as for every command: a restart loads the compiled shapes.
    _compile_cache(args)
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError

    config = server.ServeConfig(
        models=args.model, host=args.host, port=args.port, db=args.db,
        price_per_second=args.price_per_second, max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout_s, dtype=args.dtype, data=args.data,
        tensor=args.tensor, allow_anonymous=args.allow_anonymous,
        length_buckets=args.length_buckets, max_length=args.max_length,
        pack_length=args.pack_length, max_client_batch_size=args.max_client_batch_size,
        max_targets=args.max_targets, max_top_k=args.max_top_k,
        forwarded_allow_ips=args.forwarded_allow_ips, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host)
    try:
        return server.serve(config)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError,
            ValueError) as e:
        raise UserError(str(e)) from None
    except (OSError, *_db_errors()) as e:  # The port is taken, the database unreachable...
        raise UserError(f"cannot serve: {e}") from None


def add_keys_command(sub) -> None:
    ks = sub.add_parser("keys", help="API keys of the service: create, list, revoke",
                        description="Keys are stored only as hashes; create prints the new "
                        "key alone on stdout, once.")
    ksub = ks.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    db_help = f"SQLAlchemy URL (default: ${DB_ENV_VAR}, else the server's default SQLite file)"
    create = ksub.add_parser("create", help="a new key, printed once; creates the database "
                             "if there is none")
    create.add_argument("--db", default=_db_default(), help=db_help)
    create.add_argument("--name", required=True, help=f"the key's name: {_KEY_NAME_RULE}")
    create.add_argument("--rate-limit", type=_at_least(1, "--rate-limit"), default=None,
                        help="requests per minute (default: no limit)")
    listing = ksub.add_parser("list", help="names, key prefixes, limits, status")
    listing.add_argument("--db", default=_db_default(), help=db_help)
    revoke = ksub.add_parser("revoke", help="revoke a key (its requests get 403)")
    revoke.add_argument("--db", default=_db_default(), help=db_help)
    revoke.add_argument("--name", required=True)
    ks.set_defaults(func=cmd_keys)


# --db's default, so that a password need not be on the command line (`ps` shows it).
DB_ENV_VAR = "ALBERT_JAX_DB"
# As albert_jax.serving.db.KEY_NAME_RULE (not imported: the parser needs no serve extra).
_KEY_NAME_RULE = ("1 to 64 characters from A-Z a-z 0-9 . _ @ + -, starting with a letter "
                  "or a digit")


def _db_default() -> str | None:
    return os.environ.get(DB_ENV_VAR) or None


def _db_errors():
    import sqlalchemy.exc

    from albert_jax.serving.db import DatabaseError

    return (DatabaseError, sqlalchemy.exc.SQLAlchemyError, ValueError)


def cmd_keys(args: argparse.Namespace) -> int:
    admin = _import_serving("admin")
    from albert_jax.serving import db
    from albert_jax.serving.text import printable

    try:
        if args.keys_command == "create":
            print(admin.create_key(args.db, args.name, args.rate_limit))
        elif args.keys_command == "list":
            print(admin.keys_table(args.db))
        else:
            admin.revoke_key(args.db, args.name)
            print(f"{PROG}: revoked key '{printable(args.name)}'", file=sys.stderr)
    except (db.KeyAdminError, db.DatabaseError) as e:  # Already one line, password-free.
        raise UserError(str(e)) from None
    except _db_errors() as e:
        raise UserError(db.describe_error(args.db, e)) from None
    return 0


def add_usage_command(sub) -> None:
    us = sub.add_parser("usage", help="usage summary of the service: requests, tokens, cost",
                        description="Per key, day and model, from the usage ledger.")
    us.add_argument("--db", default=_db_default(), help=f"SQLAlchemy URL (default: "
                    f"${DB_ENV_VAR}, else the server's default SQLite file)")
    us.add_argument("--name", default=None, help="one key's usage only")
    us.add_argument("--json", action="store_true", help="a JSON list of rows")
    us.set_defaults(func=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    admin = _import_serving("admin")
    from albert_jax.serving import db

    try:
        print(admin.usage_report(args.db, args.name, args.json))
    except db.DatabaseError as e:  # Already one line, password-free.
        raise UserError(str(e)) from None
    except _db_errors() as e:
        raise UserError(db.describe_error(args.db, e)) from None
    return 0
# ============================================================================ training
def parse_config_args(argv: Sequence[str], example: str = "configs/pretrain/tiny.py"
                      ) -> tuple[Any, str]:
    """``--config FILE --workdir DIR [--distributed] [--config.key=value ...]`` ->
    ``(config, workdir)``. Overrides follow ``ml_collections.config_flags`` (unknown keys
    and wrong types fail); a ``ConfigError`` names the problem in one line."""
    import ml_collections
    from absl import flags
    from ml_collections import config_flags

    from albert_jax.config import ConfigError

    fv = flags.FlagValues()
    args = ["albert-jax", *argv]
    config_flags.DEFINE_config_file("config", None, "config file (get_config())", flag_values=fv,
                                    sys_argv=args)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)", flag_values=fv)
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first",
                      flag_values=fv)
    try:
        rest = fv(args)
    except flags.Error as e:
        raise ConfigError(_one_line(e)) from None
    except (KeyError, AttributeError) as e:
        raise ConfigError(f"unknown config key in an override: {_unknown_key(e, argv)}"
                          ) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(_one_line(e)) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])}")
    config = fv.config
    if config is None:
        raise ConfigError(f"--config is required (e.g. {example})")
    if not isinstance(config, ml_collections.ConfigDict):
        # config_flags hands back a proxy that raises on use when the file failed to load.
        raise ConfigError(f"cannot load config file {_flag_value(args, 'config')!r} "
                          "(missing, or its get_config() failed)")
    if not fv.workdir:
        raise ConfigError("--workdir is required")
    if fv.distributed:
        with config.unlocked():
            config.distributed = True
    _resolve_config_paths(config, _flag_value(args, "config"), args)
    return config, fv.workdir


def _unknown_key(error: BaseException, argv: Sequence[str]) -> str:
    """The override key behind config_flags' error for an unknown key.

    config_flags raises AttributeError(KeyError("'name'")) (only the last part of the
    key) or a message "... Attempting to lookup: a.b.c"; the key given is what helps."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    if "Attempting to lookup: " in text:
        return _one_line(text.rsplit("Attempting to lookup: ", 1)[1])
    name = text.strip("\"'")
    for arg in argv:  # the override whose dotted key holds that name
        key = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") else ""
        if name in key.split("."):
            return key
    return _one_line(name)


def _resolve_config_paths(config: Any, config_file: str, args: Sequence[str]) -> None:
    """Relative paths written in a config file -> absolute, from the file's directory (so a
    config works from any directory); paths given as overrides stay relative to the current
    directory. ``init`` is resolved only when it names an existing directory there (it may
    be a hub name)."""
    from albert_jax.training.run_config import PATH_FIELDS

    overridden = {a[len("--config."):].split("=", 1)[0] for a in args
                  if a.startswith("--config.")}
    here = os.path.dirname(os.path.abspath(config_file))
    for field in (*PATH_FIELDS, "data.tfds_data_dir", "init"):
        section, _, key = field.rpartition(".")
        node = config[section] if section else config
        if field in overridden or key not in node:
            continue
        value = node[key]
        if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)):
            continue
        resolved = os.path.normpath(os.path.join(here, value))
        if field != "init" or os.path.isdir(resolved):
            node[key] = resolved


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The value given to ``--name`` (as ``--name=v`` or ``--name v``) in ``args``."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def _config_keys_help(config: Any, per_config: Sequence[str] = ()) -> str:
    """``key = default`` for every leaf of ``config`` (one line each)."""
    from albert_jax.training.run_config import flat_items

    items = flat_items(config)
    width = max(len(k) for k, _ in items)
    return "\n".join(f"  {k:<{width}}  "
                     + ("(set by each config file)" if k in per_config else repr(v))
                     for k, v in items)


def _training_help(args: argparse.Namespace) -> str:
    """The subcommand's help and its config keys: those of ``--config FILE`` when given and
    loadable, else the defaults every config file starts from."""
    from albert_jax.training import run_config as rc

    config, source, per_config = None, "", ()
    if args.config:
        try:
            config = parse_config_args(["--config", args.config, "--workdir", "-",
                                        *args.overrides])[0]
            source = f"the values of {args.config}"
        except Exception as e:  # help still prints the defaults
            source = f"defaults ({args.config}: {_one_line(e)})"
    if config is None and args.command == "pretrain":
        config, source = rc.pretrain_config(), source or (
            "defaults (albert_jax.training.run_config.pretrain_config)")
    elif config is None:
        per_config = ("task", "optimizer.learning_rate", "global_batch_size",
                      "num_train_steps", "optimizer.warmup_steps", "max_seq_length")
        config = rc.finetune_config("", learning_rate=0.0, batch_size=0, steps=0, warmup=0,
                                    max_seq_length=0)
        source = source or "defaults (albert_jax.training.run_config.finetune_config)"
    return (f"{args.parser.format_help()}\nconfig keys (override with --config.KEY=VALUE), "
            f"{source}:\n{_config_keys_help(config, per_config)}\n")


def _run_training(args: argparse.Namespace, run: Callable[[Any, str], Any],
                  example: str) -> int:
    """Shared by pretrain and finetune: --help, config + overrides, distributed set-up."""
    if args.help:
        print(_training_help(args), end="")
        return 0
    argv = [*(["--config", args.config] if args.config else []),
            *(["--workdir", args.workdir] if args.workdir else []),
            *(["--distributed"] if args.distributed else []), *args.overrides]
    config, workdir = parse_config_args(argv, example=example)
    check_workdir(workdir)  # before any work: a file, or a read-only place, is one line
    _compile_cache(args)  # a rerun (a resume) loads its compiled steps instead
    if config.get("distributed", False):
        from albert_jax.training.trainer import initialize_distributed

        initialize_distributed()
    from albert_jax.training.workdir import workdir_lock

    with workdir_lock(workdir):  # before the heavy imports: a second run is refused at once
        result = run(config, workdir)
    if result is not None:
        print(json.dumps(result))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    def run(config, workdir):
        from albert_jax.training.pretrain import pretrain

        pretrain(config, workdir)

    return _run_training(args, run, example="configs/pretrain/tiny.py")


def cmd_finetune(args: argparse.Namespace) -> int:
    def run(config, workdir):
        from albert_jax.training.finetune import finetune

        return finetune(config, workdir)

    return _run_training(args, run, example="configs/finetune/sst2.py")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from albert_jax.training.finetune import evaluate

    _compile_cache(args)
    print(json.dumps(evaluate(args.workdir, args.model, args.split, args.input,
                              args.batch_size)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from albert_jax.training.finetune import predict

    check_output_file(args.output)
    _compile_cache(args)
    n = predict(args.output, args.workdir, args.model, args.split, args.input, args.batch_size)
    print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from albert_jax.training.export import export

    check_output_dir(args.dest, args.overwrite)
    # orbax warns through absl about each missing metadata file: the error below says it.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        out = export(args.workdir, args.dest, to=args.to, step=args.step, dtype=args.dtype,
                     overwrite=args.overwrite)
    except (UserError, OSError, ValueError):
        raise
    except (KeyError, RuntimeError) as e:  # orbax on a damaged checkpoint directory
        raise UserError(f"cannot export {args.workdir}: its checkpoint is damaged or "
                        f"incomplete ({type(e).__name__}: {_one_line(e)})") from None
    print(out)
    return 0


# ============================================================================ parsers
MODEL_HELP = (f"hub name or directory (default: {DEFAULT_MODEL}, or the bundled "
              f"{FALLBACK_MODEL} when that is neither cached nor fetchable)")


def add_fill_mask_command(sub: Any) -> None:
    fm = sub.add_parser(
        "fill-mask",
        help="rank completions of the [MASK] in each text",
        description="Each TEXT (or each stdin line when no TEXT is given) must hold exactly "
        "one [MASK]. Prints the top completions with their probabilities.",
    )
    fm.add_argument("text", nargs="*", metavar="TEXT")
    fm.add_argument("--model", default=None, help=MODEL_HELP)
    fm.add_argument("--top-k", type=_at_least(1, "--top-k"),
                    default=5, help="completions per input (default 5)")
    fm.add_argument("--targets", help="comma-separated candidate tokens to score instead")
    fm.add_argument("--json", action="store_true",
                    help="one JSON object per input: {input, predictions} or {input, error}")
    compile_cache.add_arguments(fm)
    fm.set_defaults(func=cmd_fill_mask)


def add_score_command(sub: Any) -> None:
    sc = sub.add_parser(
        "score",
        help="batch scoring of a file: fill-mask, pseudo-log-likelihood or embeddings",
        description="One text per line in; JSON Lines out in input order (embed: a .npy "
        "array plus a .jsonl status file beside it). A bad line (empty, too long, no single "
        "[MASK] for fill-mask) yields {line, error} and the run goes on; exit status 1 if "
        "any line failed.",
    )
    sc.add_argument("--task", required=True, choices=("fill-mask", "pll", "embed"))
    sc.add_argument("--model", default=None, help=MODEL_HELP)
    sc.add_argument("--input", required=True, help="text file, one input per line; - for stdin")
    sc.add_argument("--output", required=True, help="JSON Lines file (embed: .npy)")
    sc.add_argument("--batch-size", type=_at_least(1, "--batch-size"),
                    default=32, help="rows per step (default 32)")
    sc.add_argument("--max-length", type=_at_least(3, "--max-length"), default=None,
                    help="longest input in tokens (default: the model's maximum)")
    sc.add_argument("--top-k", type=_at_least(1, "--top-k"),
                    default=5, help="fill-mask completions (default 5)")
    sc.add_argument("--pooling", choices=("pooled", "cls", "mean"), default="mean",
                    help="embed: pooler output, [CLS] state or masked mean (default)")
    sc.add_argument("--word-l2r", action="store_true",
                    help="pll: also mask the rest of the scored piece's word (PLL-word-l2r)")
    sc.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    sc.add_argument("--data", type=_at_least(1, "--data", special=-1),
                    default=-1, help="data-parallel devices (default all)")
    sc.add_argument("--fsdp", type=_at_least(1, "--fsdp"), default=1)
    sc.add_argument("--tensor", type=_at_least(1, "--tensor"),
                    default=1, help="tensor-parallel devices")
    sc.add_argument("--max-batch-tokens", type=_at_least(1, "--max-batch-tokens"), default=None,
                    help="token budget per batch (rows x padded length; --batch-size stays "
                    "the row limit): short lines go in large batches, long ones in small")
    compile_cache.add_arguments(sc)
    sc.add_argument("--distributed", action="store_true",
                    help="one process per host on JAX's multi-host runtime "
                    "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or JAX's "
                    "detection on TPU pods and SLURM): one mesh over every process's "
                    "devices, each process tokenises its share of the lines, process 0 "
                    "writes the output")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=cmd_score)


def add_convert_command(sub: Any) -> None:
    cv = sub.add_parser(
        "convert",
        help="convert a model to albert_jax (default) or Hugging Face format",
        description="SRC is a hub name, a Hugging Face directory, an albert_jax directory, "
        "or (--from tf) a Google TF checkpoint: its directory as released or a checkpoint "
        "prefix with --config and --spiece.",
    )
    cv.add_argument("src", metavar="SRC")
    cv.add_argument("dest", metavar="DEST")
    cv.add_argument("--to", choices=("albert_jax", "hf"), default="albert_jax")
    cv.add_argument("--from", dest="source_format", choices=("auto", "tf"), default="auto",
                    help="tf: a Google TF checkpoint (default auto: detected)")
    cv.add_argument("--config", help="--from tf: the albert_config.json (default: beside SRC)")
    cv.add_argument("--spiece", help="--from tf: the SentencePiece model (default: "
                    "30k-clean.model beside SRC)")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    cv.set_defaults(func=cmd_convert)


def _add_training_command(sub: Any, name: str, summary: str, description: str,
                          func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(name, help=summary, description=description, add_help=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action="store_true",
                   help="show this help and every config key with its default")
    p.add_argument("--config", metavar="FILE", help="config file defining get_config()")
    p.add_argument("--workdir", metavar="DIR",
                   help="run directory: checkpoints, metrics.jsonl, TensorBoard, tfds/; "
                        "rerunning resumes from it")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host)")
    compile_cache.add_arguments(p)
    p.set_defaults(func=func, parser=p, takes_overrides=True)


def add_pretrain_command(sub: Any) -> None:
    _add_training_command(
        sub, "pretrain", "MLM + SOP pretraining: --config FILE --workdir DIR [--config.k=v ...]",
        "ALBERT pretraining (masked LM + sentence order) on a folder of text files,\n"
        "sharded over the devices of config.mesh. Example:\n\n"
        "  albert-jax pretrain --config configs/pretrain/tiny.py --workdir /tmp/tiny \\\n"
        "      --config.num_train_steps=100\n\n"
        "Rerunning resumes from the latest checkpoint in the workdir.", cmd_pretrain)


def add_finetune_command(sub: Any) -> None:
    _add_training_command(
        sub, "finetune", "fine-tuning: --config configs/finetune/TASK.py --workdir DIR "
        "[--config.init=NAME_OR_DIR --config.k=v ...]",
        "Fine-tunes config.init (a hub name or model directory) on config.task (GLUE,\n"
        "SQuAD, CoNLL-2003, RACE/SWAG); keeps the best dev model in WORKDIR/best.\n"
        "Example:\n\n"
        "  albert-jax finetune --config configs/finetune/sst2.py --workdir /tmp/sst2 \\\n"
        "      --config.init=albert-mini\n\n"
        "Prints the best dev result as JSON. Rerunning resumes.", cmd_finetune)


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a fine-tuning run (its best model)")
    where.add_argument("--model", help="a model directory written by finetune/export")
    p.add_argument("--split", default=None, help="a split of the task's data "
                   "(default: the dev split for evaluate, test for predict)")
    p.add_argument("--input", default=None, help="a file in the task's format instead")
    p.add_argument("--batch-size", type=_at_least(1, "--batch-size"), default=None)
    compile_cache.add_arguments(p)


def add_evaluate_command(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="--workdir DIR | --model DIR [--split S]: dev metrics "
                       "of a fine-tuned model", description="Metrics of a fine-tuned model on a "
                       "split of its task, printed as JSON.")
    _add_eval_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def add_predict_command(sub: Any) -> None:
    p = sub.add_parser("predict", help="--workdir DIR | --model DIR [--split S | --input FILE] "
                       "--output FILE.jsonl", description="One JSON object per example of a "
                       "split (or an input file) with the fine-tuned model's prediction.")
    _add_eval_arguments(p)
    p.add_argument("--output", required=True, help="JSON Lines file to write")
    p.set_defaults(func=cmd_predict)


def add_export_command(sub: Any) -> None:
    p = sub.add_parser("export", help="WORKDIR DEST [--to hf]: a training run -> a model "
                       "directory (fine-tuning: its best model)",
                       description="The model of a training run as a model directory: a "
                       "pretraining run's latest (or --step) checkpoint, a fine-tuning run's "
                       "best model.")
    p.add_argument("workdir", metavar="WORKDIR")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    p.add_argument("--step", type=_at_least(0, "--step"),
                   default=None, help="pretraining: the checkpoint step "
                   "(default: the latest)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="pretraining: storage dtype of the exported parameters (default float32)")
    p.add_argument("--to", choices=("albert_jax", "hf"), default="albert_jax",
                   help="albert_jax model directory (default) or Hugging Face format")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="ALBERT for JAX and Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_fill_mask_command, add_score_command, add_convert_command,
                add_pretrain_command, add_finetune_command, add_evaluate_command,
                add_predict_command, add_export_command, add_serve_command, add_keys_command,
                add_usage_command):
        add(sub)
    return parser


# Exceptions that user input causes in the library: one line each, exit status 2. (Inference
# handlers translate theirs to UserError themselves; the training library raises these.)
def _user_error_types() -> tuple[type[BaseException], ...]:
    from albert_jax.config import ConfigError

    return (UserError, ConfigError, OSError, ValueError)


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if _LEAVE_AT_ONCE:  # A distributed run failed (its one line is printed).
        from albert_jax import multihost

        multihost.leave(code)
    return code


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if extras and not getattr(args, "takes_overrides", False):
        _error(f"unrecognized arguments: {' '.join(extras)}", args.command)
        return 2
    args.overrides = extras
    training = args.command in ("pretrain", "finetune", "evaluate", "predict", "export")
    # Inference notices (e.g. weights initialised) go to stderr as one line each. (The
    # training commands log as the library does: their console is the progress bar.)
    logger = logging.getLogger("albert_jax")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    if not training:
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)  # Notices that need attention; not routine info.
    # One-shot commands that write atomically: SIGTERM unwinds like Ctrl-C, so their
    # temporaries are removed. (serve drains on SIGTERM; training handles its own.)
    previous_sigterm = (signal.signal(signal.SIGTERM, _raise_terminated)
                        if args.command in _SIGTERM_UNWINDS else None)
    where = args.command if training else None
    try:
        code = args.func(args)
        sys.stdout.flush()  # A full disk behind stdout fails here, inside the handlers.
        return code
    except UserError as e:
        _error(str(e), where)
        return 2
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS and not (training and isinstance(
                e, _user_error_types())):
            raise
        if e.errno in _WRITE_ERRNOS:
            # A write error carries no file name: it is the command's output, else stdout.
            e.filename = e.filename or getattr(args, "output", None) or getattr(
                args, "dest", None)
            _error(_write_error(e, training), where)
        else:
            _error(str(e), where)
        return 2
    except TrainingError as e:  # the run failed (a non-finite loss): status 1
        _error(str(e), args.command)
        return 1
    except _user_error_types() as e:
        if not training:  # an inference handler did not translate it: a real bug
            raise
        _error(str(e), args.command)
        return 2
    except KeyboardInterrupt:
        _error(f"interrupted{_NOTHING_WRITTEN.get(args.command, '')}", where)
        return 130
    except _Terminated:
        _error(f"terminated (SIGTERM){_NOTHING_WRITTEN.get(args.command, '')}", where)
        return 128 + signal.SIGTERM
    finally:
        logger.removeHandler(handler)
        if previous_sigterm is not None:  # main() may be called from Python: restore
            signal.signal(signal.SIGTERM, previous_sigterm)


_SIGTERM_UNWINDS = ("fill-mask", "score", "convert", "evaluate", "predict", "export")
# What an interrupted command leaves: its output file or directory is not written at all.
_NOTHING_WRITTEN = dict.fromkeys(("score", "convert", "predict", "export"),
                                 ": no output written")


def _write_error(e: OSError, training: bool) -> str:
    """One line for an OSError of where data went: a full disk, a read-only place."""
    if e.filename:  # One-shot outputs are atomic: the temporary is already removed.
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and not training
        return (f"cannot write {e.filename}: {e.strerror}; nothing was written" if full
                else f"{e.filename}: {e.strerror}")
    _drop_stdout()  # Mostly stdout (a full disk behind a redirect): it is incomplete.
    return f"cannot write the output: {e.strerror or e}"


def _drop_stdout() -> None:
    """After a failed write to stdout (full disk): later flushes go nowhere, so the
    interpreter's exit does not print a second error."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
