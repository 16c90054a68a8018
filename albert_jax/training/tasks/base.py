"""What every fine-tuning task family shares: :class:`Family` (the interface the fine-tuning
run calls), :class:`Encoded` (a split as arrays) and the small helpers of the families.

A family turns its input files into fixed-shape arrays, gives the per-batch loss sums and
the metrics, and writes predictions; the fine-tuning run (:mod:`albert_jax.training.finetune`)
and the generic trainer do everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax.config import ConfigError
from albert_jax.training.run_config import resolve_path


class FinetuneError(ConfigError):
    """A fine-tuning run that cannot start: bad config, missing data, wrong workdir."""


@dataclasses.dataclass
class Encoded:
    """A split as model inputs: ``arrays`` of N rows ([N, L], [N, C, L] for multiple
    choice), the source ``examples`` and family-specific ``extra`` (SQuAD features, ...)."""

    arrays: dict[str, np.ndarray]
    examples: list[Any]
    extra: Any = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


# ============================================================================ families
class Family:
    """The task-specific parts of fine-tuning. Subclasses set ``head`` and implement the
    methods; ``label_names`` is fixed by :meth:`setup` (from the training data or a saved
    run) before the model is built."""

    head: str = ""
    label_names: tuple[str, ...] | None = None

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config

    # -- data
    def setup(self, label_names: Sequence[str] | None = None) -> None:
        """Fixes the label set (``label_names`` from a saved run, else from the data)."""

    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 2

    def splits(self) -> tuple[str, ...]:
        return ("train", "validation")

    def load(self, split: str, tokenizer: Any, training: bool = False,
             path: str | None = None) -> Encoded:
        raise NotImplementedError

    # -- training
    def loss(self, out: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Sums over the batch: ``loss``, ``correct`` (if meaningful) and ``count``."""
        raise NotImplementedError

    # -- evaluation and prediction
    def outputs(self, out: Any) -> dict[str, jax.Array]:
        """What prediction keeps of the model output (row-aligned with the batch)."""
        return {"logits": out.logits}

    def evaluate(self, preds: dict[str, np.ndarray], enc: Encoded) -> dict[str, float]:
        raise NotImplementedError

    def records(self, preds: dict[str, np.ndarray], enc: Encoded) -> list[dict]:
        raise NotImplementedError

    def default_metric(self) -> str:
        raise NotImplementedError


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [..., C] float32, labels [...] int (-1 = ignore) -> per-item loss [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.maximum(labels, 0)
    return -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


def classification_loss(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    valid = (labels >= 0).astype(jnp.float32)
    nll = cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(nll * valid), "correct": jnp.sum(correct * valid),
            "count": jnp.sum(valid)}


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def encode_pairs(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None,
                  max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(first), None if second is None else list(second), truncation=True,
                    max_length=max_length, padding="max_length", return_tensors="np")
    return {k: np.asarray(enc[k], np.int32)
            for k in ("input_ids", "attention_mask", "token_type_ids")}



def limit(items: Sequence, n: int) -> list:
    """The first ``n`` items (all when ``n`` <= 0) as a list."""
    if n and n > 0:
        return [items[i] for i in range(min(n, len(items)))]
    return list(items)


def split_file(d: ml_collections.ConfigDict, split: str) -> Path:
    key = {"train": "train_file", "validation": "validation_file", "test": "test_file"}.get(split)
    if key is None or not d.get(key):
        raise FinetuneError(f"no file for split {split!r}: set data.{key or 'test_file'}")
    return resolve_path(d[key])

