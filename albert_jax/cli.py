"""The ``albert-jax`` command line: ``fill-mask`` and ``convert``.

User mistakes (bad input, missing model, unreadable checkpoint) end in one line on stderr,
``albert-jax: error: ...``, and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

PROG = "albert-jax"
DEFAULT_MODEL = "albert-base-v2"


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def _error(message: str) -> None:
    # One line whatever the message holds: newlines would break log parsers.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _format_score(score: float) -> str:
    return f"{score:.2f}" if score >= 0.005 else f"{score:.1e}"


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
    fm = _load_fill_mask(args.model)
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


def cmd_convert(args: argparse.Namespace) -> int:
    from albert_jax import hub
    from albert_jax.config import ConfigError
    from albert_jax.conversion import ConversionError, convert

    try:
        dest = convert(args.src, args.dest, to=args.to, overwrite=args.overwrite)
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
    fm.add_argument("--model", default=DEFAULT_MODEL, help="hub name or directory "
                    f"(default: {DEFAULT_MODEL})")
    fm.add_argument("--top-k", type=int, default=5, help="completions per input (default 5)")
    fm.add_argument("--targets", help="comma-separated candidate tokens to score instead")
    fm.add_argument("--json", action="store_true",
                    help="one JSON object per input: {input, predictions} or {input, error}")
    fm.set_defaults(func=cmd_fill_mask)

    cv = sub.add_parser(
        "convert",
        help="convert a checkpoint to albert_jax (default) or Hugging Face format",
        description="SRC is a hub name, a Hugging Face directory or an albert_jax directory.",
    )
    cv.add_argument("src", metavar="SRC")
    cv.add_argument("dest", metavar="DEST")
    cv.add_argument("--to", choices=("albert_jax", "hf"), default="albert_jax")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    cv.set_defaults(func=cmd_convert)
    return parser


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library notices (e.g. weights initialised) go to stderr as one line each.
    logger = logging.getLogger("albert_jax")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
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
