"""The models a server holds: a :class:`~albert_jax.inference.FillMask` each (its engine,
tokenizer, preparation and decoding), the batcher that feeds its engine, and its card."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from albert_jax.inference import FillMask
from albert_jax.serving.batcher import Batcher
from albert_jax.serving.metrics import Metrics

CARD_FILES = ("MODEL_CARD.md", "README.md")
# Sequence lengths a server compiles by default: coarser than the engine's ladder (7 lengths,
# not 14), because every shape costs start-up time (44 shapes for albert-mini with the
# 1.5x steps 96, 192: 15 s to /ready from a warm cache on 2 cores; 32 with these), and
# inputs up to --pack-length (64) tokens, most fill-mask prompts, are packed instead.
SERVE_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 384, 512)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``[ALIAS=]NAME_OR_DIR`` -> (served name, source): the alias, else the hub name, else
    the directory's name."""
    alias, sep, source = spec.partition("=")
    if not sep:
        alias, source = "", spec
    if sep and not alias.strip():
        raise ValueError(f"--model {spec!r}: empty alias before '='")
    source = source.strip()
    if not source:
        raise ValueError(f"--model {spec!r}: no model name or directory")
    if alias:
        return alias.strip(), source
    if os.path.isdir(source):
        return os.path.basename(os.path.normpath(source)), source
    return source, source


def _card(source: str) -> str | None:
    from albert_jax import hub

    try:
        directory = hub.resolve_model_dir(hub.packaged_model_dir(source) or source)
    except Exception:  # No card is no reason to refuse a model that loaded.
        return None
    for name in CARD_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return None


@dataclasses.dataclass
class ServedModel:
    """One model under its served name."""

    name: str
    source: str
    fill_mask: FillMask
    batcher: Batcher
    price_per_second: float
    dtype: str
    card: str | None

    @property
    def max_length(self) -> int:
        """The longest input (tokens with [CLS]/[SEP]) any batch can hold."""
        return self.batcher.max_length

    def info(self) -> dict[str, Any]:
        config = self.fill_mask.model.config
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.fill_mask.params))
        return {"id": self.name, "source": self.source, "parameters": params,
                "hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
                "vocab_size": config.vocab_size, "max_length": self.max_length,
                "dtype": self.dtype, "price_per_second": self.price_per_second}


def load_model(spec: str, *, price_per_second: float, max_batch_size: int,
               max_batch_tokens: int, max_wait_ms: float, max_queue: int,
               metrics: Metrics, dtype: str = "float32", data: int = -1, tensor: int = 1,
               cache_dir: str | None = None, length_buckets: tuple[int, ...] | None = None,
               max_length: int | None = None, pack_length: int | None = 64,
               top_k: int = 100, num_targets: int = 100) -> ServedModel:
    """Loads ``spec`` (``[ALIAS=]NAME_OR_DIR``) and builds its engine and batcher (not started).

    ``top_k`` and ``num_targets``: the most completions and targets a request may ask for
    (every batch computes that many on the device)."""
    name, source = parse_model_spec(spec)
    kwargs: dict[str, Any] = dict(batch_size=max_batch_size, data=data, tensor=tensor,
                                  cache_dir=cache_dir, dtype=dtype, max_length=max_length,
                                  length_buckets=tuple(length_buckets or SERVE_LENGTH_BUCKETS))
    fill_mask = FillMask.from_pretrained(source, **kwargs)
    batcher = Batcher(fill_mask.engine, name=name, top_k=top_k, num_targets=num_targets,
                      max_batch_size=max_batch_size,
                      max_batch_tokens=max_batch_tokens, max_wait_s=max_wait_ms / 1000.0,
                      max_queue=max_queue, pack_length=pack_length or None, metrics=metrics)
    return ServedModel(name=name, source=source, fill_mask=fill_mask, batcher=batcher,
                       price_per_second=price_per_second, dtype=dtype, card=_card(source))
