"""Errors for model files that cannot be used, importable without jax or sentencepiece.

Every layer that reads a user's files (hub lookups, the tokenizer, checkpoint reading)
raises these, so the command line and the Python API catch one family whatever the file:
each message names the file and, where there is one, the field.
"""

from __future__ import annotations

import json
import os
from typing import Any


class ConversionError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class TokenizerError(ConversionError):
    """A ``spiece.model`` or ``tokenizer_config.json`` that cannot be read, is not an ALBERT
    tokenizer, or does not fit the model it is loaded with."""


class TrainingError(RuntimeError):
    """A training run that cannot go on (a non-finite loss): one line naming the step; the
    command exits with status 1. Nothing after the last good checkpoint is saved."""


def read_json_object(path: str | os.PathLike, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in a user's file; ``error`` naming the file, in one line, when it
    cannot be read, is not UTF-8, not JSON, or not an object."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data
