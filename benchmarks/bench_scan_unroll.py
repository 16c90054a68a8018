"""Scanned vs unrolled vs ``scan_unroll`` k: step and compile time of the pretraining step at
several depths, on whatever backend JAX has (the CPU here; the GPU figures come from
``bench_gpu.py``).

The step is MLM (at ``--predictions`` positions) + SOP loss, its gradient and an AdamW update
(optax), jitted once per setting; compile time is ``lower().compile()``, step time the
median of ``--repeats`` steps after one warm-up. Settings: ``scan_layers=True`` (one loop
iteration per layer), ``scan_layers=False`` (every layer in the program), and
``scan_unroll`` in {2, 3, 4, 6} (k layers per loop iteration). The parameter tree is the same
for all, so the switch is free for checkpoints. The plain-scan row is the anchor: each row
prints its ratio to it.

    python benchmarks/bench_scan_unroll.py [--depths 12,24,48] [--hidden 256] \
        [--batch 8] [--length 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_batch, train_flops

SETTINGS = (("scanned", {}), ("unrolled", {"scan_layers": False}),
            *((f"scan_unroll={k}", {"scan_unroll": k}) for k in (2, 3, 4, 6)))


def make_step(cfg):
    """A jitted (params, opt_state, batch) -> (params, opt_state, loss) and its inputs."""
    import flax.linen as nn

    from albert_jax.model import AlbertForPreTraining

    model = AlbertForPreTraining(cfg)
    params = jax.jit(lambda r: nn.unbox(model.init_params(r)))(jax.random.key(0))
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)

    def loss_fn(p, b):
        out = model.apply(p, b["input_ids"], b["attention_mask"], b["token_type_ids"],
                          masked_positions=b["masked_positions"])
        logp = jax.nn.log_softmax(out.prediction_logits.astype(jnp.float32), -1)
        mlm = -jnp.take_along_axis(logp, b["masked_ids"][..., None], -1)[..., 0]
        mlm = (mlm * b["masked_weights"]).sum() / b["masked_weights"].sum()
        sop = optax.softmax_cross_entropy_with_integer_labels(
            out.sop_logits.astype(jnp.float32), b["sop_label"]).mean()
        return mlm + sop

    def step(p, s, b):
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return jax.jit(step, donate_argnums=(0, 1)), params, opt_state


def measure(cfg, batch: dict, repeats: int) -> tuple[float, float]:
    """(compile seconds, step seconds)."""
    step, params, opt_state = make_step(cfg)
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, b).compile()
    compile_s = time.perf_counter() - t0
    params, opt_state, loss = compiled(params, opt_state, b)
    loss.block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, b)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    if not np.isfinite(float(loss)):
        raise RuntimeError("non-finite loss")
    return compile_s, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="12,24,48")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    from albert_jax.config import AlbertConfig

    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, {dev.platform} ({getattr(dev, 'device_kind', dev)}), "
          f"{len(jax.devices())} device(s); batch {args.batch} x {args.length}, hidden "
          f"{args.hidden}, {args.dtype}; AdamW step, median of {args.repeats}")
    print(f"{'depth':>5} {'setting':<14}{'compile s':>10}{'step ms':>10}{'GFLOP/s':>9}"
          f"{'step/scan':>10}{'compile/scan':>13}")
    for depth in (int(d) for d in args.depths.split(",")):
        cfg = AlbertConfig(hidden_size=args.hidden, num_attention_heads=max(1, args.hidden // 64),
                           intermediate_size=4 * args.hidden, num_hidden_layers=depth,
                           dtype=args.dtype)
        batch = make_batch(cfg, args.batch, args.length, args.predictions)
        flops = train_flops(cfg, args.batch, args.length, args.predictions)
        anchor = None
        for name, change in SETTINGS:
            c, t = measure(cfg.replace(**change), batch, args.repeats)
            anchor = anchor or (c, t)
            print(f"{depth:5d} {name:<14}{c:10.2f}{t * 1e3:10.1f}{flops / t / 1e9:9.0f}"
                  f"{t / anchor[1]:10.2f}{c / anchor[0]:13.2f}", flush=True)


if __name__ == "__main__":
    main()
