"""albert_jax: ALBERT (A Lite BERT) for JAX and Flax.

One shared transformer layer applied with ``nn.scan``, the exact sentencepiece tokenizer,
Hugging Face conversion both ways, and fill-mask from Python and the command line.
"""

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

__version__ = "0.1.0"

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
