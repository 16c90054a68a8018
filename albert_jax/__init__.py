"""albert_jax: ALBERT (A Lite BERT) for JAX and Flax.

One shared transformer layer applied with ``nn.scan``, the exact sentencepiece tokenizer,
Hugging Face conversion both ways, and fill-mask from Python and the command line.

The names below are imported on first use (PEP 562), so ``import albert_jax.config`` or a
training config file does not pull in JAX, and the command line starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "PRESETS": "config", "AlbertConfig": "config", "ConfigError": "config",
    "ConversionError": "conversion", "convert": "sources",
    "Engine": "engine", "EngineOptions": "engine",
    "ModelNotFoundError": "hub",
    "Embedder": "inference", "FillMask": "inference", "PLLResult": "inference",
    "PseudoLogLikelihood": "inference",
    "HEADS": "model", "AlbertForMaskedLM": "model", "AlbertForMultipleChoice": "model",
    "AlbertForPreTraining": "model", "AlbertForQuestionAnswering": "model",
    "AlbertForSequenceClassification": "model", "AlbertForTokenClassification": "model",
    "AlbertModel": "model",
    "load_model": "pretrained", "load_pretrained": "pretrained",
    "AlbertTokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'albert_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"albert_jax.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from albert_jax.config import PRESETS, AlbertConfig, ConfigError  # noqa: F401
    from albert_jax.conversion import ConversionError  # noqa: F401
    from albert_jax.engine import Engine, EngineOptions  # noqa: F401
    from albert_jax.hub import ModelNotFoundError  # noqa: F401
    from albert_jax.inference import (  # noqa: F401
        Embedder,
        FillMask,
        PLLResult,
        PseudoLogLikelihood,
    )
    from albert_jax.model import (  # noqa: F401
        HEADS,
        AlbertForMaskedLM,
        AlbertForMultipleChoice,
        AlbertForPreTraining,
        AlbertForQuestionAnswering,
        AlbertForSequenceClassification,
        AlbertForTokenClassification,
        AlbertModel,
    )
    from albert_jax.pretrained import load_model, load_pretrained  # noqa: F401
    from albert_jax.sources import convert  # noqa: F401
    from albert_jax.tokenizer import AlbertTokenizer  # noqa: F401
