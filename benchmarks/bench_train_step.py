"""Pretraining train-step throughput: albert_jax against transformers' PyTorch
AlbertForPreTraining, both with AdamW (albert_jax's LAMB with ``--optimizer lamb``).

albert-base-v2 shapes, random weights, float32, batch 8 x 128 tokens, MLM + SOP, 20 masked
positions per sequence. One run: both trainers plus the matmul peak of this machine measured
by XLA, so the albert_jax step is also given as a fraction of the time bound that peak sets
(a training step is counted as 3 forwards of matmul FLOPs). albert_jax computes the
vocabulary projection only at the masked positions (as ALBERT does); transformers'
AlbertForPreTraining computes it at every position (its API has no masked positions), so
PyTorch does about 4% more matmul work than the bound counts.

Besides the whole step it times the parts: albert_jax's forward (the loss alone), gradient
(value_and_grad) and optimizer update (clip + AdamW + apply, each its own jitted call), and
PyTorch's forward, backward and optimizer (clip + step). Every time is the minimum over the
repeats, which run all the calls (the matmul peak included) in turn, as wall time and as
this process's CPU time: on a machine shared with other jobs the wall time of a 2-core run
measures the neighbours as much as the code, while CPU seconds (against the peak's CPU
seconds of the same run) stay closer to what an idle machine gives. Before JAX starts, the
benchmark makes the host-memory setting of ``albert-jax pretrain``
(:mod:`albert_jax.training.host_memory`; ``--default-malloc`` leaves it out); PyTorch runs
in the same process, under the same setting.

    python benchmarks/bench_train_step.py [--batch 8] [--length 128] [--repeats 5]
    # GPU MFU of the base config (no PyTorch; peak from the data sheet, e.g. H100 SXM bf16):
    python benchmarks/bench_train_step.py --batch 64 --length 512 --dtype bfloat16 \
        --skip-torch --peak-tflops 989
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int
                ) -> dict[str, tuple[float, float]]:
    """``{name: (wall, cpu)}`` seconds of each call: the minimum of each over ``repeats``
    rounds that run every call once in turn, after one warm-up round (CPU: this process's
    user + system time, all threads). In turn, so that the anchors (the matmul peak,
    PyTorch) and albert_jax see the same neighbours on a shared machine."""
    for fn in calls.values():
        fn()
    best = {name: (float("inf"), float("inf")) for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    return best


def matmul_peak_call(n: int = 2048) -> tuple[Callable[[], Any], float]:
    """A call of one large float32 XLA matmul (the best a dense kernel does here) and its
    FLOPs."""
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return (lambda: f(a, b).block_until_ready()), 2.0 * n**3


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
    parser.add_argument("--scan-layers", type=int, default=None, choices=(0, 1),
                        help="override the preset's scan_layers (1: nn.scan, 0: unrolled)")
    parser.add_argument("--scan-unroll", type=int, default=None,
                        help="override the preset's scan_unroll")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="use this peak (e.g. a GPU's data-sheet figure) instead of the "
                             "measured float32 matmul peak")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (albert-jax pretrain sets "
                             "albert_jax.training.host_memory before JAX starts)")
    args = parser.parse_args()
    if not args.default_malloc:  # what `albert-jax pretrain` does, before JAX starts
        from albert_jax.training.host_memory import retain_freed_memory

        retain_freed_memory()

    import optax

    from albert_jax import sharding as shd
    from albert_jax.config import PRESETS
    from albert_jax.training import pretrain, trainer
    from albert_jax.training.optim import make_optimizer

    cfg = PRESETS["albert-base-v2"].replace(dtype=args.dtype)
    if args.scan_layers is not None:
        cfg = cfg.replace(scan_layers=bool(args.scan_layers))
    if args.scan_unroll is not None:
        cfg = cfg.replace(scan_unroll=args.scan_unroll)
    b = make_batch(cfg, args.batch, args.length, args.predictions)
    tokens = args.batch * args.length
    flops = train_flops(cfg, args.batch, args.length, args.predictions)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores), "
          f"load average {os.getloadavg()[0]:.2f}; albert-base-v2 shapes, {args.dtype}, "
          f"batch {args.batch} x {args.length}, {args.predictions} masked positions, "
          f"scan_layers={cfg.scan_layers} scan_unroll={cfg.scan_unroll}; min of "
          f"{args.repeats} interleaved rounds; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

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

    # The parts, each its own jitted call (not donated; the step above is the real one).
    rng = jax.random.PRNGKey(1)

    def loss(params, bt):
        return task.loss_fn(params, bt, rng, False, task.totals(bt))[0]

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    forward = jax.jit(loss)
    grad = jax.jit(jax.value_and_grad(loss))
    upd = jax.jit(update)

    # The parts run on copies: the step donates (deletes) the state it is given.
    params = jax.tree.map(lambda x: x.copy(), holder["state"].params)
    opt_state = jax.tree.map(lambda x: x.copy(), holder["state"].opt_state)
    grads = jax.tree.map(lambda x: x * 1e-3, params)
    peak_call, peak_flops = matmul_peak_call()
    calls = {
        "peak": peak_call,
        "albert_jax step": jax_step,
        "  forward (loss)": lambda: forward(params, batch).block_until_ready(),
        "  gradient (value_and_grad)": lambda: jax.block_until_ready(grad(params, batch)),
        "  update (clip, AdamW, apply)": lambda: jax.block_until_ready(
            upd(params, opt_state, grads)),
    }
    jax_names = list(calls)[1:]

    # ---------------------------------------------------------------- PyTorch
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
        box = {}

        def torch_forward():
            opt.zero_grad(set_to_none=True)
            box["loss"] = model(**inputs).loss

        def torch_backward():
            box["loss"].backward()

        def torch_update():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        def torch_step():
            torch_forward()
            torch_backward()
            torch_update()

        def fwd_bwd():
            torch_forward()
            torch_backward()

        # In this order: the update reuses the gradients the forward + backward left.
        calls.update({
            "transformers PyTorch step": torch_step,
            "  forward": torch_forward,
            "  forward + backward": fwd_bwd,
            "  update (clip, AdamW)": torch_update,
        })

    times = interleaved(calls, args.repeats)
    peak_wall, peak_cpu = (peak_flops / t for t in times["peak"])
    if args.peak_tflops:
        peak_wall = peak_cpu = args.peak_tflops * 1e12
    rows = {k: times[k] for k in ("albert_jax step", "transformers PyTorch step") if k in times}
    parts = {k: times[k] for k in jax_names[1:]}
    torch_parts = {k: times[k] for k in ("  forward", "  forward + backward",
                                         "  update (clip, AdamW)") if k in times}
    bound_wall, bound_cpu = flops / peak_wall, flops / peak_cpu
    source = "given" if args.peak_tflops else "XLA, 2048^3 f32"
    print(f"matmul peak ({source}): {peak_wall / 1e9:.0f} GFLOP per second, "
          f"{peak_cpu / 1e9:.0f} per CPU second; train step = {flops / 1e9:.0f} GFLOP "
          f"(3 x forward) -> time bound {bound_wall * 1e3:.0f} ms, "
          f"{bound_cpu * 1e3:.0f} CPU ms")
    print(f"{'':34}{'ms':>8}{'tokens/s':>10}{'GFLOP/s':>9}{'of bound':>9}"
          f"{'CPU ms':>9}{'of CPU bound':>13}")
    # The forward holds 1/3 of the step's matmul work, forward + backward all of it; the
    # optimizer none (its time is shown as a share of the bound, marked "b").
    share = {"  forward (loss)": 1 / 3, "  forward": 1 / 3}
    no_matmul = ("  update (clip, AdamW, apply)", "  update (clip, AdamW)")
    table = [("albert_jax step", *rows["albert_jax step"]), *((k, *v) for k, v in parts.items())]
    if torch_parts:
        table += [("transformers PyTorch step", *rows["transformers PyTorch step"]),
                  *((k, *v) for k, v in torch_parts.items())]
    for name, t, c in table:
        if name in no_matmul:
            print(f"{name:34}{t * 1e3:8.0f}{'':19}{t / bound_wall:8.1%}b"
                  f"{c * 1e3:9.0f}{c / bound_cpu:12.1%}b")
            continue
        frac = share.get(name, 1.0)
        print(f"{name:34}{t * 1e3:8.0f}{tokens / t:10.0f}{frac * flops / t / 1e9:9.0f}"
              f"{frac * bound_wall / t:9.0%}{c * 1e3:9.0f}{frac * bound_cpu / c:13.0%}")
    (f_w, f_c) = parts["  forward (loss)"]
    (g_w, g_c) = parts["  gradient (value_and_grad)"]
    u_w = parts["  update (clip, AdamW, apply)"][0]
    print(f"albert_jax gradient / forward: {g_w / f_w:.2f}x wall, {g_c / f_c:.2f}x CPU "
          f"(3x is the matmul count); update = {u_w / rows['albert_jax step'][0]:.1%} of "
          "the step")
    (j_w, j_c) = rows["albert_jax step"]
    print(f"albert_jax: {bound_wall / j_w:.0%} of the bound (wall), "
          f"{bound_cpu / j_c:.0%} (CPU time) (target >= 85%)")
    if torch_parts:
        (t_w, t_c) = rows["transformers PyTorch step"]
        print(f"PyTorch:    {bound_wall / t_w:.0%} of the bound (wall), "
              f"{bound_cpu / t_c:.0%} (CPU time)")
        print(f"speed-up albert_jax / PyTorch: {t_w / j_w:.2f}x wall, {t_c / j_c:.2f}x CPU "
              f"(target >= 2.5x)")


if __name__ == "__main__":
    main()
