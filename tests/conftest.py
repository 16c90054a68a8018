"""Shared fixtures: the shared data directory and Hugging Face checkpoints with random weights."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from albert_jax import compile_cache
from albert_jax.training import host_memory

# XLA's CPU backend without LLVM's optimisations: the suite compiles hundreds of small
# programs and runs each a few times, so compiling is most of its time (this cut the model
# and engine tests from 243 s to 167 s). The math is the same programs (HLO passes still
# run), rounded within the float32 bounds the tests assert; runs that pin today's kernels
# bit for bit (tests/test_pin.py) and the notebooks (real compute) use XLA's defaults.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int, fast: bool = True) -> str:
    """XLA_FLAGS for a test's child process: ``devices`` CPU devices, compiled fast unless
    ``fast`` is False (XLA's default compilation)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} {FAST_COMPILE}" if fast else flags


# Tests see 8 CPU devices (sharding tests); must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# transformers imports TensorFlow whenever it is installed (the `test` extra has it, for
# tests/test_tf_checkpoint.py); the oracles here are PyTorch, and the TFDS tests check
# that our input path never imports TensorFlow.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
# Commands turn the persistent compilation cache on by default: tests keep theirs private.
# (Only when unset: child processes that import this module inherit the session's.)
if "ALBERT_JAX_CACHE_DIR" not in os.environ:
    os.environ["ALBERT_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="albert_jax_xla_")

# The suite's processes keep freed memory for reuse (albert_jax.training.host_memory, which
# the training commands set for themselves) instead of faulting XLA's large buffers in again
# on every execution (the albert-mini quality fixture alone: 26.8 s -> 22.0 s, its kernel
# time 10.7 s -> 1.4 s). This process by mallopt (before JAX starts), its children by
# glibc's tunables (read when they start).
os.environ.setdefault("GLIBC_TUNABLES", host_memory.GLIBC_TUNABLES)
host_memory.retain_freed_memory()

# The suite's own processes use the session's compilation cache too, as every command does:
# a program another test (or the other worker) compiled already is loaded, not compiled
# again. Turned on here, not by whichever in-process command a worker happens to run first,
# so that it does not depend on the order of the tests.
compile_cache.enable(os.environ["ALBERT_JAX_CACHE_DIR"])

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPIECE = SHARED_DATA / "albert_spm" / "spiece.model"


def child_env(base: Mapping[str, str] | None = None, **changes: str) -> dict[str, str]:
    """The environment of a test's child Python process: ``base`` (default: this process's
    environment) with the repository first on ``PYTHONPATH`` (so the checkout is imported,
    installed or not), then ``changes``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(changes)
    return env


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


# ---------------------------------------------------------------------- float32 tolerances
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: the spacing of float32 numbers at 1.0


def f32_atol(reference, reduction: int, steps: int = 1, safety: float = 8.0) -> float:
    """Absolute tolerance between two float32 programs that compute the same function.

    Different kernels (AVX2 vs AVX-512 blocking, fusion, summation order, oneDNN vs Eigen,
    PyTorch vs XLA) may round every reduction differently: a sum of ``reduction`` terms
    differs by about ``eps32 * sqrt(reduction)`` relative to the magnitudes involved, and the
    differences of ``steps`` successive reductions along the computation add up like a random
    walk (``sqrt(steps)``). ``safety`` covers the tail of that walk and the model's gain. The
    scale is the largest magnitude of ``reference``: a real bug (a wrong weight, position or
    mask) shows up at that scale, orders of magnitude above this bound.
    """
    scale = float(np.max(np.abs(np.asarray(reference, dtype=np.float64))))
    return safety * EPS32 * float(np.sqrt(reduction * steps)) * scale


# Successive steps of a forward pass outside the layers: the embedding projection and the head.
_STEPS_OUTSIDE_LAYERS = 2


def model_atol(reference, **hf_config) -> float:
    """:func:`f32_atol` of a whole forward pass of an ALBERT (transformers config fields,
    albert-base-v2 defaults). Within a layer the longest reduction (the FFN's) dominates and
    LayerNorm rescales what comes out; the differences of successive layer applications add
    up like a random walk."""
    hidden = hf_config.get("hidden_size", 768)
    ffn = hf_config.get("intermediate_size", 3072)
    applications = hf_config.get("num_hidden_layers", 12) * hf_config.get("inner_group_num", 1)
    return f32_atol(reference, max(hidden, ffn), applications + _STEPS_OUTSIDE_LAYERS)


@pytest.fixture(scope="session")
def shared_tfds_dir(tmp_path_factory) -> Path:
    """One TFDS data directory for the whole run, every xdist worker's tests included: the
    local SST-2 (70,000 examples, 8 CPU-seconds to prepare) is prepared once, by the first
    run that needs it; LocalGlue's preparation lock makes a concurrent one wait, then read it.
    (tests/test_finetune_data.py prepares its own: it tests the preparation.)"""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, above each worker's own
    path = base / "shared_tfds"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def forked_cli():
    """A :class:`forkrun.ForkRunner` with this session's environment (one per xdist worker):
    ``forked_cli.run(argv, env=..., cwd=...)`` runs ``python -m albert_jax.cli *argv`` in a
    fresh process without paying for importing JAX, Flax and torch again."""
    from forkrun import ForkRunner  # tests/ is on sys.path (pytest's rootdir conftest)

    runner = ForkRunner()
    yield runner
    runner.close()


# ------------------------------------------------------------------ the order of the files
# `make test` hands whole files to its pytest-xdist workers (--dist loadfile), in collection
# order (--no-loadscope-reorder). The longest files go first, so that no worker is left
# with a long file while the other has finished (longest-first scheduling); the rest keep
# their order. Seconds each took in one run on 2 cores (session 8, commit 7554204).
LONGEST_FIRST = (
    "test_notebooks.py",  # 145
    "test_engine.py",  # 69
    "test_checkpoint.py",  # 63
    "test_train.py",  # 56
    "test_model.py",  # 54
    "test_finetune.py",  # 52
    "test_serve.py",  # 35
    "test_serve_hostile.py",  # about 60 (ten server starts, two PostgreSQL servers)
    "test_faults.py",  # 35
    "test_train_safety.py",  # 30
    "test_guarantees.py",  # 29
    "test_score_distributed.py",  # 27
    "test_pin.py",  # 26
    "test_tf_checkpoint.py",  # 24
    "test_serve_replicas.py",  # 23
    "test_flax_migration.py",  # 16
    "test_albert_mini.py",  # 16
    "test_compile_cache.py",  # 15
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep order
