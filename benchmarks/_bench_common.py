"""Shared set-up of the scoring benchmarks: SST-2 dev sentences, a random albert-base-v2.

The checkpoint is a transformers ``AlbertForMaskedLM`` with random weights and the
albert-base-v2 shapes, saved once (with the real ``spiece.model``) so that albert_jax and
transformers run the very same weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
SST2_DEV = SHARED / "data" / "glue" / "SST-2" / "dev.tsv"
SPIECE = SHARED / "data" / "albert_spm" / "spiece.model"


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine options both scoring benchmarks take."""
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length-buckets", default=None,
                        help="comma-separated length buckets (default: the engine's)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="albert_jax compute dtype (transformers stays float32)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """``from_pretrained`` keyword arguments for the options of :func:`add_engine_args`."""
    kwargs: dict = {"batch_size": args.batch_size, "dtype": args.dtype}
    if args.length_buckets:
        kwargs["length_buckets"] = tuple(int(x) for x in args.length_buckets.split(","))
    return kwargs


def sst2_sentences(limit: int | None = None) -> list[str]:
    """The SST-2 dev sentences (872), in file order."""
    with open(SST2_DEV, encoding="utf-8") as f:
        next(f)  # Header.
        sentences = [line.split("\t")[0].strip() for line in f if line.strip()]
    return sentences[:limit] if limit else sentences


def mask_one_word(sentence: str) -> str:
    """Replaces the middle word by [MASK] (deterministic)."""
    words = sentence.split()
    words[len(words) // 2] = "[MASK]"
    return " ".join(words)


def random_base_checkpoint(seed: int = 0) -> tuple[str, object]:
    """(directory, torch model): albert-base-v2 shapes, random weights, real spiece.model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.AlbertConfig(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
        hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = transformers.AlbertForMaskedLM(config).eval()
    directory = tempfile.mkdtemp(prefix="albert_bench_")
    model.save_pretrained(directory, safe_serialization=True)
    shutil.copy(SPIECE, os.path.join(directory, "spiece.model"))
    return directory, model


def hf_tokenizer():
    import transformers

    return transformers.AlbertTokenizer(vocab_file=str(SPIECE), clean_up_tokenization_spaces=True)


def useful_gflop(lengths: list[int], copies: list[int] | None = None) -> float:
    """GFLOP of the matmuls the inputs need without padding, albert-base-v2 shapes: each
    input of ``L`` tokens is ``copies`` forwards (1 for fill-mask, one per token for PLL) of
    the encoder at length ``L`` plus the vocabulary projection at one position."""
    h, e, i, v, layers = 768, 128, 3072, 30000, 12
    total = 0.0
    for k, n in enumerate(lengths):
        per_layer = 2 * n * (4 * h * h + 2 * h * i) + 4 * n * n * h
        forward = layers * per_layer + 2 * n * e * h + 2 * (h * e + e * v)
        total += forward * (1 if copies is None else copies[k])
    return total / 1e9


def peak_line(gflop: float, seconds: float) -> str:
    """'useful GFLOP/s and its fraction of the float32 XLA matmul peak measured now'."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_mlm_forward import matmul_peak

    peak = matmul_peak(5) / 1e9
    rate = gflop / seconds
    return (f"useful work {gflop:.0f} GFLOP (no padding) -> {rate:.0f} GFLOP/s = "
            f"{rate / peak:.0%} of the float32 matmul peak ({peak:.0f} GFLOP/s, XLA 2048^3)")

