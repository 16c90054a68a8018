"""Fine-tuning step throughput (SST-2 shapes): albert_jax against transformers' PyTorch
AlbertForSequenceClassification, both with AdamW, in the same run.

albert-base-v2 shapes, random weights, float32, batch 32 x 128 tokens (every position real),
2 classes, classifier dropout 0.1 in both. One step = forward, backward, global-norm
clipping, AdamW update. Also printed: the XLA float32 matmul peak of this machine and each
step's fraction of the time bound it sets (3 x the forward's matmul FLOPs).

    python benchmarks/bench_finetune_step.py [--batch 32] [--length 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlm_forward import matmul_peak, timed


def classify_flops(cfg, batch: int, length: int) -> float:
    """3 x the forward's matmul FLOPs (embedding projection, layers, pooler, classifier)."""
    t, h, e, i = batch * length, cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size
    per_layer = 2 * t * (4 * h * h + 2 * h * i) + 4 * batch * length * length * h
    forward = cfg.num_hidden_layers * per_layer + 2 * t * e * h + 2 * batch * (h * h + 2 * h)
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    from albert_jax import sharding as shd
    from albert_jax.config import PRESETS
    from albert_jax.model import AlbertForSequenceClassification
    from albert_jax.training import finetune, trainer
    from albert_jax.training.optim import make_optimizer
    from albert_jax.training.tasks import glue

    cfg = PRESETS["albert-base-v2"].replace(classifier_dropout_prob=0.1, num_labels=2)
    rng = np.random.default_rng(0)
    b = {
        "input_ids": rng.integers(5, cfg.vocab_size, (args.batch, args.length)).astype(np.int32),
        "attention_mask": np.ones((args.batch, args.length), np.int32),
        "token_type_ids": np.zeros((args.batch, args.length), np.int32),
        "labels": rng.integers(0, 2, args.batch).astype(np.int32),
    }
    tokens = args.batch * args.length
    flops = classify_flops(cfg, args.batch, args.length)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores); "
          f"albert-base-v2 shapes, float32, batch {args.batch} x {args.length}, SST-2 "
          f"classification, AdamW, median of {args.repeats} steps")

    family = glue.GlueFamily(ml_collections.ConfigDict({"task": "sst2"}))
    family.setup()
    task = finetune.make_task(family, AlbertForSequenceClassification(cfg))
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    tx = make_optimizer("adamw", 1e-5, clip_norm=1.0, weight_decay=0.01)
    state, shardings = trainer.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
    step = trainer.make_train_step(task, tx, mesh, shardings, b)
    batch = trainer.device_batch(mesh, b)
    holder = {"state": state}

    def jax_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m["loss"])

    t_jax = timed(jax_step, args.repeats)
    peak = matmul_peak(args.repeats)

    t_torch = None
    if not args.skip_torch:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        model = transformers.AlbertForSequenceClassification(
            transformers.AlbertConfig(**cfg.to_hf_dict()))
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        inputs = {k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}

        def torch_step():
            opt.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        t_torch = timed(torch_step, args.repeats)

    bound = flops / peak
    print(f"matmul peak (XLA, 2048^3 f32): {peak / 1e9:.0f} GFLOP/s; step = {flops / 1e9:.0f} "
          f"GFLOP (3 x forward) -> time bound {bound * 1e3:.0f} ms")
    print(f"{'':40}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'of bound':>9}")
    rows = [("albert_jax (AdamW, jit)", t_jax)]
    if t_torch is not None:
        rows.append(("transformers PyTorch (AdamW)", t_torch))
    for name, t in rows:
        print(f"{name:40}{t * 1e3:9.0f}{tokens / t:10.0f}{flops / t / 1e9:9.0f}{bound / t:9.0%}")
    if t_torch is not None:
        print(f"speed-up albert_jax / PyTorch: {t_torch / t_jax:.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
