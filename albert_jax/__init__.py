"""albert_jax: ALBERT (A Lite BERT) for JAX and Flax.

One shared transformer layer applied with ``nn.scan``, the exact sentencepiece tokenizer,
Hugging Face conversion both ways, and fill-mask from Python and the command line.

The names below are imported on first use (PEP 562), so that ``import albert_jax`` and
the command line's start-up load only the modules a command needs (jax and flax alone
take over a second to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "PRESETS": "config",
    "AlbertConfig": "config",
    "ConfigError": "config",
    "ConversionError": "conversion",
    "convert": "conversion",
    "Engine": "engine",
    "EngineOptions": "engine",
    "ModelNotFoundError": "hub",
    "Embedder": "inference",
    "FillMask": "inference",
    "PLLResult": "inference",
    "PseudoLogLikelihood": "inference",
    "HEADS": "model",
    "AlbertForMaskedLM": "model",
    "AlbertForMultipleChoice": "model",
    "AlbertForPreTraining": "model",
    "AlbertForQuestionAnswering": "model",
    "AlbertForSequenceClassification": "model",
    "AlbertForTokenClassification": "model",
    "AlbertModel": "model",
    "load_model": "pretrained",
    "load_pretrained": "pretrained",
    "AlbertTokenizer": "tokenizer",
}

__all__ = [
    "HEADS",
    "PRESETS",
    "AlbertConfig",
    "AlbertForMaskedLM",
    "AlbertForMultipleChoice",
    "AlbertForPreTraining",
    "AlbertForQuestionAnswering",
    "AlbertForSequenceClassification",
    "AlbertForTokenClassification",
    "AlbertModel",
    "AlbertTokenizer",
    "ConfigError",
    "ConversionError",
    "Embedder",
    "Engine",
    "EngineOptions",
    "FillMask",
    "ModelNotFoundError",
    "PLLResult",
    "PseudoLogLikelihood",
    "convert",
    "load_model",
    "load_pretrained",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'albert_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"albert_jax.{module}"), name)
    globals()[name] = value  # Later look-ups skip __getattr__.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # Static analysers and IDEs see the real names.
    from albert_jax.config import PRESETS, AlbertConfig, ConfigError
    from albert_jax.conversion import ConversionError, convert
    from albert_jax.engine import Engine, EngineOptions
    from albert_jax.hub import ModelNotFoundError
    from albert_jax.inference import Embedder, FillMask, PLLResult, PseudoLogLikelihood
    from albert_jax.model import (
        HEADS,
        AlbertForMaskedLM,
        AlbertForMultipleChoice,
        AlbertForPreTraining,
        AlbertForQuestionAnswering,
        AlbertForSequenceClassification,
        AlbertForTokenClassification,
        AlbertModel,
    )
    from albert_jax.pretrained import load_model, load_pretrained
    from albert_jax.tokenizer import AlbertTokenizer
