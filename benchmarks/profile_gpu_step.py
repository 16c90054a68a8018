"""Where a GPU train step's time goes: forward loss, gradient and full step of the
albert-base-v2 pretraining step (batch 64 x 512, bf16 compute, AdamW), for the variants
that mattered, and a profiler trace plus the optimised HLO of the fastest one.

    python benchmarks/profile_gpu_step.py [--out DIR]   # DIR gets step.xplane.pb, step_hlo.txt

The "gather token types" variant restores the embedding lookup that made the step 4x slower
on an H100 (the gradient of a gather from a 2-row table is a scatter-add that serialises on
atomics); see benchmarks/GPU.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_gpu import timed
from bench_train_step import make_batch, train_flops

from albert_jax import model as M
from albert_jax import sharding as shd
from albert_jax.config import PRESETS
from albert_jax.training import pretrain, trainer
from albert_jax.training.optim import make_optimizer


def run(name: str, cfg, b, flops: float, out: Path | None = None) -> None:
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    task = pretrain.pretraining_task(cfg)
    tx = make_optimizer("adamw", 1e-5, clip_norm=1.0, weight_decay=0.01)
    state, shardings = trainer.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
    batch = trainer.device_batch(mesh, b)
    tot = task.totals(batch)

    def loss(p, x):
        return task.loss_fn(p, x, None, True, tot)[0]

    with jax.set_mesh(mesh):
        fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss))
        t_fwd = timed(lambda: fwd(state.params, batch).block_until_ready(), 8)
        t_grad = timed(lambda: jax.block_until_ready(grad(state.params, batch)), 8)
    step = trainer.make_train_step(task, tx, mesh, shardings, b)
    holder = {"state": state}

    def full_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m["loss"])

    t_step = timed(full_step, 8)
    print(f"{name}: forward loss {t_fwd * 1e3:.1f} ms, grad {t_grad * 1e3:.1f} ms, "
          f"full step {t_step * 1e3:.1f} ms, MFU(989 TFLOP/s) {flops / t_step / 989e12:.1%}",
          flush=True)
    if out is not None:
        trace = "/tmp/albert_jax_profile"
        with jax.profiler.trace(trace):
            for _ in range(3):
                full_step()
        for f in glob.glob(trace + "/**/*.xplane.pb", recursive=True):
            shutil.copy(f, out / "step.xplane.pb")
        hlo = step.jitted.lower(holder["state"], batch).compile().as_text()
        (out / "step_hlo.txt").write_text(hlo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    out = Path(args.out) if args.out else None
    base = PRESETS["albert-base-v2"]
    b = make_batch(base, 64, 512, 20)
    flops = train_flops(base, 64, 512, 20)
    cfg = base.replace(dtype="bfloat16", scan_layers=False, attention="cudnn")
    run("unrolled, cudnn attention", cfg, b, flops, out)
    select = M.AlbertEmbeddings._token_types
    M.AlbertEmbeddings._token_types = lambda self, t: self.token_type_embeddings(t)
    run("gather token types (before the fix)", cfg, b, flops)
    M.AlbertEmbeddings._token_types = select
    run("scanned, cudnn attention", cfg.replace(scan_layers=True), b, flops)
    run("unrolled, explicit attention", cfg.replace(attention="explicit"), b, flops)


if __name__ == "__main__":
    main()
