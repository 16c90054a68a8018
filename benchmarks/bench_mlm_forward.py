"""MLM forward throughput: albert_jax against transformers' PyTorch AlbertForMaskedLM.

Same random weights (albert-base-v2 shapes, float32), same batch (default 8 x 128 tokens),
one run: both models, plus the matmul peak of this machine measured by XLA in the same run,
so the result is also given as a fraction of the time bound that peak sets. Then the
compile time of scanned vs unrolled layers for the base (12 layers) and large (24 layers)
shapes.

    python benchmarks/bench_mlm_forward.py [--batch 8] [--length 128] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(repeats: int, n: int = 2048) -> float:
    """FLOP/s of one large float32 XLA matmul (the best a dense kernel does here)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    seconds = timed(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * n**3 / seconds


def forward_flops(cfg, batch: int, length: int) -> float:
    """Matmul FLOPs of one MLM forward (elementwise work is not counted)."""
    t, h, e, i, v = batch * length, cfg.hidden_size, cfg.embedding_size, \
        cfg.intermediate_size, cfg.vocab_size
    per_layer = 2 * t * (4 * h * h + 2 * h * i) + 4 * batch * length * length * h
    mlm_head = 2 * t * (h * e + e * v)
    return cfg.num_hidden_layers * per_layer + 2 * t * e * h + mlm_head


def compile_seconds(cfg, batch: int, length: int) -> float:
    from albert_jax.model import AlbertForMaskedLM

    model = AlbertForMaskedLM(cfg)
    params = jax.eval_shape(lambda: model.init_params(jax.random.key(0)))
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    start = time.perf_counter()
    jax.jit(lambda p, x: model.apply(p, x).logits).lower(params, ids).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers

    from albert_jax.config import PRESETS
    from albert_jax.pretrained import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = PRESETS["albert-base-v2"]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores), "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"albert-base-v2 shapes, random weights, float32, batch {args.batch} x "
          f"{args.length} tokens, median of {args.repeats}")

    torch.manual_seed(0)
    torch_model = transformers.AlbertForMaskedLM(
        transformers.AlbertConfig(**cfg.to_hf_dict())).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model, params = load_model(tmp, head="masked_lm")

    rng = np.random.RandomState(0)
    ids = rng.randint(5, cfg.vocab_size, size=(args.batch, args.length))
    mask = np.ones_like(ids)
    ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)

    forward = jax.jit(lambda p, x, m: model.apply(p, x, m).logits)
    ours = forward(params, ids_j, mask_j)
    with torch.inference_mode():
        theirs = torch_model(ids_t, attention_mask=mask_t).logits
    diff = float(np.abs(np.asarray(ours) - theirs.numpy()).max())

    peak = matmul_peak(args.repeats)
    t_jax = timed(lambda: forward(params, ids_j, mask_j).block_until_ready(), args.repeats)
    with torch.inference_mode():
        t_torch = timed(lambda: torch_model(ids_t, attention_mask=mask_t), args.repeats)

    flops = forward_flops(cfg, args.batch, args.length)
    bound = flops / peak
    tokens = args.batch * args.length
    print(f"max |logits diff| jax vs torch: {diff:.2e}")
    print(f"matmul peak (XLA, 2048^3 f32): {peak / 1e9:.0f} GFLOP/s; "
          f"forward = {flops / 1e9:.1f} GFLOP -> time bound {bound * 1e3:.0f} ms")
    print(f"{'':28}{'ms/batch':>10}{'tokens/s':>10}{'GFLOP/s':>9}{'of bound':>9}")
    for name, t in (("albert_jax (scan, jit)", t_jax), ("transformers PyTorch", t_torch)):
        print(f"{name:28}{t * 1e3:10.0f}{tokens / t:10.0f}{flops / t / 1e9:9.0f}"
              f"{bound / t:9.0%}")
    print(f"speed-up albert_jax / PyTorch: {t_torch / t_jax:.2f}x "
          f"(target >= 2x); fraction of the matmul-peak bound: {bound / t_jax:.0%} "
          f"(target >= 80%)")

    if not args.skip_compile:
        print("compile time (lower + compile of the MLM forward), seconds:")
        for name in ("albert-base-v2", "albert-large-v2"):
            preset = PRESETS[name]
            scanned = compile_seconds(preset, args.batch, args.length)
            unrolled = compile_seconds(preset.replace(scan_layers=False), args.batch,
                                       args.length)
            print(f"  {name} ({preset.num_hidden_layers} layers): scanned {scanned:.2f}, "
                  f"unrolled {unrolled:.2f} ({unrolled / scanned:.1f}x)")


if __name__ == "__main__":
    main()
