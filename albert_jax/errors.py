"""Errors for model files that cannot be used, importable without jax or sentencepiece.

Every layer that reads a user's files (hub lookups, the tokenizer, checkpoint reading)
raises these, so the command line and the Python API catch one family whatever the file:
each message names the file and, where there is one, the field.
"""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class TokenizerError(ConversionError):
    """A ``spiece.model`` or ``tokenizer_config.json`` that cannot be read, is not an ALBERT
    tokenizer, or does not fit the model it is loaded with."""


class TrainingError(RuntimeError):
    """A training run that cannot go on (a non-finite loss): one line naming the step; the
    command exits with status 1. Nothing after the last good checkpoint is saved."""
