"""The ``albert-jax`` command line: ``fill-mask``, ``score`` and ``convert``.

User mistakes (bad input, missing model, unreadable checkpoint) end in one line on stderr,
``albert-jax: error: ...``, and exit status 2; no traceback.

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
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PROG = "albert-jax"
DEFAULT_MODEL = "albert-base-v2"
# Shipped inside the package: the default when albert-base-v2 is neither cached nor fetchable.
FALLBACK_MODEL = "albert-mini"


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def _error(message: str) -> None:
    # One line whatever the message holds: newlines would break log parsers.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


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


def _load_fill_mask(model: str):
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError
    from albert_jax.inference import FillMask

    try:
        return FillMask.from_pretrained(model)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError) as e:
        raise UserError(f"cannot load model {model!r}: {e}") from None


def cmd_fill_mask(args: argparse.Namespace) -> int:
    texts = list(args.text) if args.text else [line.rstrip("\r\n") for line in sys.stdin]
    if not texts:
        raise UserError("no input: give TEXT arguments or lines on stdin")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    targets = [t for t in args.targets.split(",") if t] if args.targets is not None else None
    if targets is not None and not targets:
        raise UserError("--targets is empty")
    fm = _load_fill_mask(args.model or default_model())
    try:
        target_ids = None if targets is None else fm.target_ids(targets)
    except ValueError as e:
        raise UserError(str(e)) from None

    prepared, errors = {}, {}
    for i, text in enumerate(texts):
        try:
            prepared[i] = fm.prepare(text, i + 1)
        except ValueError as e:
            errors[i] = str(e)
    valid = sorted(prepared)
    probs = fm.probabilities([prepared[i] for i in valid]) if valid else None
    row = {i: r for r, i in enumerate(valid)}
    for i, text in enumerate(texts):
        if i in errors:
            sys.stdout.flush()
            _error(errors[i])
            if args.json:
                print(json.dumps({"input": text, "error": errors[i]}))
            continue
        results = fm.format(prepared[i], probs[row[i]], args.top_k, target_ids)
        if args.json:
            print(json.dumps({"input": text, "predictions": results}, ensure_ascii=False))
        else:
            if i and len(texts) > 1:
                print()
            for r in results:
                print(f"{r['sequence']} ({_format_score(r['score'])})")
    return 2 if errors else 0


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


class _AtomicWriter:
    """A temporary file beside ``path``, renamed onto it by ``commit()``; removed otherwise."""

    def __init__(self, path: str, binary: bool = False) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise UserError(f"cannot write {path}: no directory {directory}")
        fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                        suffix=".tmp")
        self.path = path
        self.file = os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")

    def commit(self) -> None:
        self.file.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp creates 0600: give the usual mode.
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _load_task(args: argparse.Namespace):
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError
    from albert_jax.inference import Embedder, FillMask, PseudoLogLikelihood

    cls = {"fill-mask": FillMask, "pll": PseudoLogLikelihood, "embed": Embedder}[args.task]
    kwargs = dict(batch_size=args.batch_size, max_length=args.max_length, data=args.data,
                  fsdp=args.fsdp, tensor=args.tensor, cache_dir=args.cache_dir,
                  dtype=args.dtype)
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


def _score_records(task, args, lines) -> Iterator[tuple[int, dict, Any]]:
    """(line index, record, embedding or None) per input line, in input order."""
    prepared: dict[int, Any] = {}
    errors: dict[int, str] = {}
    for i, (text, _) in enumerate(lines):
        try:
            if not text.strip():
                raise ValueError("empty line")
            prepared[i] = task.prepare(text)
        except ValueError as e:
            errors[i] = str(e).removeprefix("input ")
    valid = [i for i in range(len(lines)) if i in prepared]
    if args.task == "fill-mask":
        results = task.stream_probabilities(prepared[i] for i in valid)
    else:
        results = task.stream(prepared[i] for i in valid)
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
                record["predictions"] = task.format(prepared[i], out, args.top_k, None)
            elif args.task == "pll":
                record.update(out.to_dict())  # num_tokens: the tokens scored.
            else:
                vector = out
        if bad_utf8:
            record["invalid_utf8"] = True
        yield i, record, vector


def cmd_score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_length is not None and args.max_length < 3:
        raise UserError(f"--max-length must be at least 3, got {args.max_length}")
    if args.task == "embed" and not args.output.endswith(".npy"):
        raise UserError(f"--task embed writes a .npy array: --output must end in .npy, "
                        f"got {args.output!r}")
    lines = _read_lines(args.input)
    task = _load_task(args)
    start = time.perf_counter()
    embed = args.task == "embed"
    status_path = args.output[: -len(".npy")] + ".jsonl" if embed else args.output
    writer = _AtomicWriter(status_path)
    array_writer = None
    failed = tokens = 0
    try:
        vectors = (np.full((len(lines), task.model.config.hidden_size), np.nan, np.float32)
                   if embed else None)
        with tqdm(total=len(lines), unit="line", file=sys.stderr, disable=args.quiet) as bar:
            for i, record, vector in _score_records(task, args, lines):
                failed += "error" in record
                tokens += record.get("num_tokens", 0)
                if vector is not None:
                    vectors[i] = vector
                writer.file.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(1)
        if embed:
            array_writer = _AtomicWriter(args.output, binary=True)
            np.save(array_writer.file, vectors)
            array_writer.commit()
        writer.commit()
    except BaseException:
        writer.discard()
        if array_writer is not None:
            array_writer.discard()
        raise
    elapsed = max(time.perf_counter() - start, 1e-9)
    done = len(lines) - failed
    print(f"{PROG}: {args.task}: {done} of {len(lines)} lines scored ({failed} failed) in "
          f"{elapsed:.2f} s: {done / elapsed:.1f} inputs/s, {tokens / elapsed:.0f} tokens/s",
          file=sys.stderr)
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError, convert

    try:
        src = args.src
        if args.source_format == "tf":  # Google's TF checkpoints: albert_jax.tf_checkpoint.
            from albert_jax import tf_checkpoint

            src = tf_checkpoint.resolve_files(src, config=args.config, spiece=args.spiece)
        elif args.config or args.spiece:
            raise UserError("--config and --spiece are for --from tf")
        dest = convert(src, args.dest, to=args.to, overwrite=args.overwrite)
    except (hub.ModelNotFoundError, ConversionError, ConfigError, FileNotFoundError,
            FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.to} checkpoint to {dest}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ALBERT for JAX and Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fm = sub.add_parser(
        "fill-mask",
        help="rank completions of the [MASK] in each text",
        description="Each TEXT (or each stdin line when no TEXT is given) must hold exactly "
        "one [MASK]. Prints the top completions with their probabilities.",
    )
    fm.add_argument("text", nargs="*", metavar="TEXT")
    fm.add_argument("--model", default=None, help="hub name or directory (default: "
                    f"{DEFAULT_MODEL}, or the bundled {FALLBACK_MODEL} when that is neither "
                    "cached nor fetchable)")
    fm.add_argument("--top-k", type=int, default=5, help="completions per input (default 5)")
    fm.add_argument("--targets", help="comma-separated candidate tokens to score instead")
    fm.add_argument("--json", action="store_true",
                    help="one JSON object per input: {input, predictions} or {input, error}")
    fm.set_defaults(func=cmd_fill_mask)

    sc = sub.add_parser(
        "score",
        help="batch scoring of a file: fill-mask, pseudo-log-likelihood or embeddings",
        description="One text per line in; JSON Lines out in input order (embed: a .npy "
        "array plus a .jsonl status file beside it). A bad line (empty, too long, no single "
        "[MASK] for fill-mask) yields {line, error} and the run goes on; exit status 1 if "
        "any line failed.",
    )
    sc.add_argument("--task", required=True, choices=("fill-mask", "pll", "embed"))
    sc.add_argument("--model", default=None, help="hub name or directory (default: "
                    f"{DEFAULT_MODEL}, or the bundled {FALLBACK_MODEL} when that is neither "
                    "cached nor fetchable)")
    sc.add_argument("--input", required=True, help="text file, one input per line; - for stdin")
    sc.add_argument("--output", required=True, help="JSON Lines file (embed: .npy)")
    sc.add_argument("--batch-size", type=int, default=32, help="rows per step (default 32)")
    sc.add_argument("--max-length", type=int, default=None,
                    help="longest input in tokens (default: the model's maximum)")
    sc.add_argument("--top-k", type=int, default=5, help="fill-mask completions (default 5)")
    sc.add_argument("--pooling", choices=("pooled", "cls", "mean"), default="mean",
                    help="embed: pooler output, [CLS] state or masked mean (default)")
    sc.add_argument("--word-l2r", action="store_true",
                    help="pll: also mask the rest of the scored piece's word (PLL-word-l2r)")
    sc.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    sc.add_argument("--data", type=int, default=-1, help="data-parallel devices (default all)")
    sc.add_argument("--fsdp", type=int, default=1)
    sc.add_argument("--tensor", type=int, default=1, help="tensor-parallel devices")
    sc.add_argument("--cache-dir", help="persistent compilation cache directory")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=cmd_score)

    cv = sub.add_parser(
        "convert",
        help="convert a checkpoint to albert_jax (default) or Hugging Face format",
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

    # Training commands parse their own arguments (ml_collections --config.key=value
    # overrides); they are listed here for --help and dispatched in main().
    sub.add_parser("pretrain", add_help=False,
                   help="MLM + SOP pretraining: --config FILE --workdir DIR [--config.k=v ...]")
    sub.add_parser("export", add_help=False,
                   help="WORKDIR DEST [--to hf]: a training run -> a model directory "
                        "(fine-tuning: its best model)")
    sub.add_parser("finetune", add_help=False,
                   help="fine-tuning: --config configs/finetune/TASK.py --workdir DIR "
                        "[--config.init=NAME_OR_DIR --config.k=v ...]")
    sub.add_parser("evaluate", add_help=False,
                   help="--workdir DIR | --model DIR [--split S]: dev metrics of a fine-tuned "
                        "model")
    sub.add_parser("predict", add_help=False,
                   help="--workdir DIR | --model DIR [--split S | --input FILE] --output "
                        "FILE.jsonl")
    return parser


# Subcommands with their own argument parsing: (module, function).
_TRAIN_COMMANDS = {
    "pretrain": ("train", "pretrain_main"),
    "export": ("train", "export_main"),
    "finetune": ("finetune", "finetune_main"),
    "evaluate": ("finetune", "evaluate_main"),
    "predict": ("finetune", "predict_main"),
}


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _TRAIN_COMMANDS:
        import importlib

        module, function = _TRAIN_COMMANDS[argv[0]]
        return getattr(importlib.import_module(f"albert_jax.{module}"), function)(argv[1:])
    args = build_parser().parse_args(argv)
    # Library notices (e.g. weights initialised) go to stderr as one line each.
    logger = logging.getLogger("albert_jax")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # Notices that need attention; not routine info.
    try:
        return args.func(args)
    except UserError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
