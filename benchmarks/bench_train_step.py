"""Pretraining train-step throughput: albert_jax against transformers' PyTorch
AlbertForPreTraining, both with AdamW (albert_jax's LAMB with ``--optimizer lamb``).

albert-base-v2 shapes, random weights, float32, batch 8 x 128 tokens, MLM + SOP, 20 masked
positions per sequence. One run: both trainers plus the matmul peak of this machine measured
by XLA, so the albert_jax step is also given as a fraction of the time bound that peak sets
(a training step is counted as 3 forwards of matmul FLOPs). albert_jax computes the
vocabulary projection only at the masked positions (as ALBERT does); transformers'
AlbertForPreTraining computes it at every position (its API has no masked positions).

    python benchmarks/bench_train_step.py [--batch 8] [--length 128] [--repeats 5]
    # GPU MFU of the base config (no PyTorch; peak from the data sheet, e.g. H100 SXM bf16):
    python benchmarks/bench_train_step.py --batch 64 --length 512 --dtype bfloat16 \
        --skip-torch --peak-tflops 989
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlm_forward import matmul_peak, timed


def train_flops(cfg, batch: int, length: int, predictions: int) -> float:
    """3 x the matmul FLOPs of the forward (MLM head at ``predictions`` positions)."""
    t, h, e, i, v = batch * length, cfg.hidden_size, cfg.embedding_size, \
        cfg.intermediate_size, cfg.vocab_size
    per_layer = 2 * t * (4 * h * h + 2 * h * i) + 4 * batch * length * length * h
    mlm_head = 2 * batch * predictions * (h * e + e * v)
    forward = cfg.num_hidden_layers * per_layer + 2 * t * e * h + mlm_head + 2 * batch * h * h
    return 3 * forward


def make_batch(cfg, batch: int, length: int, predictions: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    pos = np.sort(np.stack([rng.choice(np.arange(1, length - 1), predictions, replace=False)
                            for _ in range(batch)]), axis=1).astype(np.int32)
    types = np.zeros((batch, length), np.int32)
    types[:, length // 2:] = 1
    return {
        "input_ids": rng.integers(5, cfg.vocab_size, (batch, length)).astype(np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "token_type_ids": types,
        "masked_positions": pos,
        "masked_ids": rng.integers(5, cfg.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_weights": np.ones((batch, predictions), np.float32),
        "sop_label": rng.integers(0, 2, batch).astype(np.int32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "lamb"))
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="albert_jax compute dtype (parameters stay float32)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="use this peak (e.g. a GPU's data-sheet figure) instead of the "
                             "measured float32 matmul peak")
    args = parser.parse_args()

    from albert_jax import sharding as shd
    from albert_jax.config import PRESETS
    from albert_jax.training import pretrain, trainer
    from albert_jax.training.optim import make_optimizer

    cfg = PRESETS["albert-base-v2"].replace(dtype=args.dtype)
    b = make_batch(cfg, args.batch, args.length, args.predictions)
    tokens = args.batch * args.length
    flops = train_flops(cfg, args.batch, args.length, args.predictions)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores); "
          f"albert-base-v2 shapes, {args.dtype}, batch {args.batch} x {args.length}, "
          f"{args.predictions} masked positions, median of {args.repeats} steps")

    # ---------------------------------------------------------------- albert_jax
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    task = pretrain.pretraining_task(cfg)
    tx = make_optimizer(args.optimizer, 1e-5, clip_norm=1.0, weight_decay=0.01)
    state, shardings = trainer.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
    step = trainer.make_train_step(task, tx, mesh, shardings, b)
    batch = trainer.device_batch(mesh, b)
    holder = {"state": state}

    def jax_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m["loss"])

    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(args.repeats)
    t_jax = timed(jax_step, args.repeats)

    # ---------------------------------------------------------------- PyTorch
    t_torch = None
    if not args.skip_torch:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        hf_config = transformers.AlbertConfig(**cfg.replace(dtype="float32").to_hf_dict())
        model = transformers.AlbertForPreTraining(hf_config)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        labels = np.full((args.batch, args.length), -100, np.int64)
        np.put_along_axis(labels, b["masked_positions"].astype(np.int64),
                          b["masked_ids"].astype(np.int64), axis=1)
        inputs = {
            "input_ids": torch.tensor(b["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(b["attention_mask"], dtype=torch.long),
            "token_type_ids": torch.tensor(b["token_type_ids"], dtype=torch.long),
            "labels": torch.tensor(labels),
            "sentence_order_label": torch.tensor(b["sop_label"], dtype=torch.long),
        }

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        t_torch = timed(torch_step, args.repeats)

    bound = flops / peak
    source = "given" if args.peak_tflops else "XLA, 2048^3 f32"
    print(f"matmul peak ({source}): {peak / 1e9:.0f} GFLOP/s; train step = "
          f"{flops / 1e9:.0f} GFLOP (3 x forward) -> time bound {bound * 1e3:.0f} ms")
    print(f"{'':34}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'of bound':>9}")
    rows = [(f"albert_jax ({args.optimizer}, jit)", t_jax)]
    if t_torch is not None:
        rows.append(("transformers PyTorch (AdamW)", t_torch))
    for name, t in rows:
        print(f"{name:34}{t * 1e3:9.0f}{tokens / t:10.0f}{flops / t / 1e9:9.0f}{bound / t:9.0%}")
    if t_torch is not None:
        print(f"speed-up albert_jax / PyTorch: {t_torch / t_jax:.2f}x (target >= 2.5x)")


if __name__ == "__main__":
    main()
