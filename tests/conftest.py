"""Shared fixtures: the shared data directory and Hugging Face checkpoints with random weights."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Tests see 8 CPU devices (sharding tests); must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Commands turn the persistent compilation cache on by default: tests keep theirs private.
os.environ.setdefault("ALBERT_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="albert_jax_xla_"))

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPIECE = SHARED_DATA / "albert_spm" / "spiece.model"


def require_spiece() -> Path:
    if not SPIECE.exists():
        pytest.skip(f"the real ALBERT spiece.model is absent ({SPIECE})")
    return SPIECE


# Tiny transformers configs; initializer_range is large so that outputs are well separated.
TINY = dict(
    vocab_size=30000,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    initializer_range=0.2,
)


def save_hf_model(directory: Path, model_cls: str, safe: bool = True, seed: int = 0, **config):
    """Saves a transformers ALBERT with random weights (and the real spiece.model)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.AlbertConfig(**config)
    model = getattr(transformers, model_cls)(hf_config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=safe)
    if SPIECE.exists():
        shutil.copy(SPIECE, directory / "spiece.model")
    return model
