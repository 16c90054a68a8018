# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Sharding ALBERT over a device mesh
#
# albert_jax runs every model on a 3-D device mesh with axes `(data, fsdp, tensor)`:
#
# - **data**: each device holds a full copy of the weights and a slice of the batch;
# - **fsdp**: the weights themselves are split along their hidden (`embed`) dimension and
#   gathered when used, so big models fit;
# - **tensor**: attention heads, the FFN and the vocabulary are split, so one matmul runs
#   on several devices.
#
# Nothing in the model names a device. Every parameter carries *logical* axis names
# (`vocab`, `embed`, `mlp`, ...), and one table of rules
# (`albert_jax.sharding.LOGICAL_AXIS_RULES`) maps them onto the mesh. This notebook shows
# the meshes, the placement of every parameter, what a sharded weight and a sharded batch
# look like, that 1 and 8 devices compute the same logits, and one sharded training step.
#
# It runs on **8 virtual CPU devices**, on any machine: the point is the layouts, not the
# speed. That includes Colab, whose TPU runtime is a single v5e chip.

# %%
# Colab: clone the repository and install albert_jax with the notebooks extra. Anywhere else
# (a checkout, CI) this cell does nothing: the package is already importable.
import os
import subprocess
import sys

GITHUB_REPO = "OWNER/albert_jax"  # the repository's GitHub home: see the README, "Notebooks"
try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False
if IN_COLAB:
    if not os.path.isdir("/content/albert_jax"):
        subprocess.run(["git", "clone", "-q", f"https://github.com/{GITHUB_REPO}.git",
                        "/content/albert_jax"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    "/content/albert_jax[notebooks]"], check=True)
    sys.path.insert(0, "/content/albert_jax")
    os.chdir("/content/albert_jax/notebooks")

# %% [markdown]
# XLA decides how many CPU devices there are when JAX starts, from `XLA_FLAGS`, so the flag
# must be set **before `jax` is imported**. `JAX_PLATFORMS=cpu` makes those CPU devices
# the default ones even on a GPU or TPU runtime. (If you ran another cell that imported
# jax first, restart the runtime.)

# %%
if "jax" in sys.modules:
    raise RuntimeError("jax is already imported: restart the runtime and run this notebook "
                       "from the top (the device count is fixed when jax starts)")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

if not IN_COLAB:
    matplotlib.use("Agg")  # CI: no display; figures are written as PNG files
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import albert_jax
from albert_jax import notebook
from albert_jax import sharding as shd

T0 = time.perf_counter()
SMOKE = notebook.smoke()
devices = jax.devices()
print(f"{len(devices)} devices:", devices)
assert len(devices) == 8, "expected 8 virtual CPU devices: restart and run from the top"
MODEL = notebook.choose_model()

# %% [markdown]
# ## 1. Meshes
#
# `albert_jax.sharding.make_mesh(data, fsdp, tensor)` arranges the devices in a
# `(data, fsdp, tensor)` grid; `data=-1` takes whatever is left. Three ways to use 8
# devices:

# %%
meshes = {
    "data-parallel (8, 1, 1)": shd.make_mesh(data=8),
    "mixed (2, 2, 2)": shd.make_mesh(data=2, fsdp=2, tensor=2),
    "tensor-parallel (1, 1, 8)": shd.make_mesh(data=1, tensor=8),
}
for name, mesh in meshes.items():
    grid = np.vectorize(lambda d: d.id)(mesh.devices)
    print(f"{name}: {dict(mesh.shape)}\n  device ids [data][fsdp][tensor] = "
          f"{grid.tolist()}")

# %% [markdown]
# ## 2. Every parameter: logical axes and where they land
#
# `load_pretrained` returns the parameters boxed with their logical names. The rules turn
# them into a `PartitionSpec` per mesh. On the mixed mesh: `embed` (the hidden size) goes
# to `fsdp`; `vocab`, `joined_kv` (heads x head size) and `mlp` (the FFN) go to `tensor`;
# `embedding` (ALBERT's small factorised embedding size E) stays whole. ALBERT has *one*
# shared layer, so this table is the whole model however deep it is.

# %%
model, boxed, tokenizer = albert_jax.load_pretrained(MODEL, head="masked_lm")
mesh = meshes["mixed (2, 2, 2)"]
logical = shd.logical_partition_specs(boxed)
placed = shd.param_shardings(boxed, mesh)
print("rules:", dict(shd.LOGICAL_AXIS_RULES))

rows = []
flat_logical = jax.tree_util.tree_flatten_with_path(logical)[0]
flat_sharding = jax.tree.leaves(placed)
flat_values = jax.tree.leaves(nn.meta.unbox(boxed))
for (path, spec), sharding, value in zip(flat_logical, flat_sharding, flat_values,
                                         strict=True):
    name = "/".join(str(getattr(k, "key", k)) for k in path[1:])
    rows.append([name.replace("albert_layer_groups_0/albert_layers_0", "layer"),
                 tuple(value.shape), tuple(spec), tuple(sharding.spec)])
notebook.show_table(["parameter", "shape", "logical axes", "PartitionSpec (2, 2, 2)"], rows)
num_params = sum(int(np.prod(v.shape)) for v in flat_values)
print(f"{len(rows)} parameter arrays, {num_params:,} numbers")

# %% [markdown]
# ## 3. What a sharded weight and a sharded batch look like
#
# `jax.debug.visualize_array_sharding` draws a 2-D array's blocks and the devices holding
# each. The attention query kernel [H, heads x head size] is split over `fsdp` (rows) and
# `tensor` (columns), and each block is held by the two `data` replicas. A batch [B, S] is
# split over `data` x `fsdp` along its rows and replicated over `tensor`.

# %%
params = jax.device_put(nn.meta.unbox(boxed), placed)
query = params["params"]["albert"]["encoder"]["albert_layer_groups_0"]["albert_layers_0"][
    "attention"]["query"]["kernel"]
print("attention query kernel", query.shape, query.sharding.spec)
jax.debug.visualize_array_sharding(query, use_color=False)

# %%
sentences = ["The quick brown fox jumps over the lazy dog.",
             "Sharding splits arrays across devices.",
             "Each device computes on its own block.",
             "The results are the same as on one device."] * 2
batch = tokenizer(sentences, padding="max_length", max_length=24, return_tensors="np")
batch = {k: np.asarray(v) for k, v in batch.items()}
ids = jax.device_put(batch["input_ids"], shd.batch_sharding(mesh))
print("input_ids", ids.shape, ids.sharding.spec)
jax.debug.visualize_array_sharding(ids, use_color=False)

# %% [markdown]
# ## 4. The same logits on 1 and on 8 devices
#
# Sharding changes where the arithmetic happens, not what it computes. The forward pass
# jitted on one device is compared with the same function on each 8-device mesh, its
# inputs placed by the rules. The sums inside a matmul split over `tensor` are added in a
# different order, so float32 results may differ in the last bits: a few units of float32
# precision relative to the size of the logits (up to 16 here), and less than 1e-5 in the
# predicted probabilities.

# %%
def logits_fn(p, input_ids, attention_mask, token_type_ids):
    with nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        return model.apply(p, input_ids, attention_mask, token_type_ids).logits


unboxed = nn.meta.unbox(boxed)
one = jax.device_put(unboxed, devices[0])
reference = np.asarray(jax.jit(logits_fn)(one, batch["input_ids"], batch["attention_mask"],
                                          batch["token_type_ids"]))
reference_probs = np.asarray(jax.nn.softmax(reference, axis=-1))
scale = float(np.max(np.abs(reference)))
diffs, prob_diffs = {}, {}
for name, m in meshes.items():
    shardings = shd.param_shardings(boxed, m)
    rows_sharding = shd.batch_sharding(m)
    step = jax.jit(logits_fn, in_shardings=(shardings, rows_sharding, rows_sharding,
                                            rows_sharding))
    with jax.set_mesh(m):
        out = step(jax.device_put(unboxed, shardings), batch["input_ids"],
                   batch["attention_mask"], batch["token_type_ids"])
    diffs[name] = float(np.max(np.abs(np.asarray(out) - reference)))
    prob_diffs[name] = float(np.max(np.abs(np.asarray(jax.nn.softmax(out, axis=-1))
                                           - reference_probs)))
    print(f"{name}: output on {len(out.sharding.device_set)} devices, max |logits - "
          f"1-device logits| = {diffs[name]:.2e} ({diffs[name] / scale:.1e} of the largest "
          f"logit), max |probabilities - 1-device ones| = {prob_diffs[name]:.1e}")
print(f"logits range: [{reference.min():.1f}, {reference.max():.1f}]")

# %% [markdown]
# ## 5. One sharded training step
#
# A masked-LM step written out: mask 15% of the tokens, cross-entropy at the masked
# positions, AdamW. `jax.jit` gets the parameter and batch shardings (`in_shardings`) and
# keeps the parameters and optimiser moments in theirs (`out_shardings`); XLA inserts the
# collectives: the gradient all-reduce over `data`, the weight gathers for `fsdp`, the
# partial-sum reductions for `tensor`. The same step on one device gives the same loss and
# the same gradients. (Not bit-identical parameters after the update: Adam's first step
# moves each weight by about lr x g / |g|, so a gradient entry near zero turns a last-bit
# difference into a visible one. The gradients are what sharding computes.)
# (albert_jax's trainer, behind `albert-jax pretrain` and `albert-jax finetune`, does this
# with gradient accumulation, checkpoints and metrics; see notebooks 02 and 03.)

# %%
rng = np.random.default_rng(0)
labels = batch["input_ids"].copy()
maskable = (batch["attention_mask"] == 1) & (labels > 4)  # never [CLS]/[SEP]/<pad>
chosen = maskable & (rng.random(labels.shape) < 0.15)
chosen[np.arange(len(chosen)), np.argmax(maskable, axis=1)] = True  # >= 1 per row
train_batch = dict(batch, input_ids=np.where(chosen, tokenizer.mask_token_id, labels),
                   labels=labels, weights=chosen.astype(np.float32))
tx = optax.adamw(1e-3)


def loss_fn(p, b):
    logits = logits_fn(p, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, b["labels"][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * b["weights"]) / jnp.sum(b["weights"])


def train_step(p, opt_state, b):
    loss, grads = jax.value_and_grad(loss_fn)(p, b)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss, grads


def run_step(m):
    """One step on mesh m (None: one device): loss, gradients (host), the updated FFN
    kernel's PartitionSpec."""
    if m is None:
        p = jax.device_put(unboxed, devices[0])
        _, _, loss, grads = jax.jit(train_step)(p, tx.init(p), train_batch)
        return float(loss), jax.device_get(grads), None
    shardings = shd.param_shardings(boxed, m)
    p = jax.device_put(unboxed, shardings)
    opt_state = jax.jit(tx.init)(p)  # moments inherit the parameters' shardings
    # ... and the step counter (a scalar) is replicated over the whole mesh.
    opt_shardings = jax.tree.map(
        lambda x: x.sharding if len(x.sharding.device_set) > 1 else NamedSharding(m, P()),
        opt_state)
    opt_state = jax.device_put(opt_state, opt_shardings)
    b_shardings = {k: shd.batch_sharding(m, np.ndim(v)) for k, v in train_batch.items()}
    step = jax.jit(train_step, in_shardings=(shardings, opt_shardings, b_shardings),
                   out_shardings=(shardings, opt_shardings, None, shardings),
                   donate_argnums=(0, 1))
    with jax.set_mesh(m):
        new_p, _, loss, grads = step(p, opt_state, train_batch)
    ffn_spec = new_p["params"]["albert"]["encoder"]["albert_layer_groups_0"][
        "albert_layers_0"]["ffn"]["kernel"].sharding.spec
    return float(loss), jax.device_get(grads), ffn_spec


loss_1, grads_1, _ = run_step(None)
loss_8, grads_8, ffn_spec = run_step(mesh)
grad_diff = max(float(np.max(np.abs(a - b)))
                for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8), strict=True))
grad_max = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(grads_1))
print(f"loss on 1 device {loss_1:.6f}, on the (2, 2, 2) mesh {loss_8:.6f}")
print(f"updated ffn kernel still sharded as {ffn_spec}")
print(f"max |gradient, 1 device - 8 devices| = {grad_diff:.2e} (largest gradient entry "
      f"{grad_max:.2e})")

# %% [markdown]
# ## A picture of the placement
#
# For each parameter of the shared layer and the embeddings: into how many blocks it is
# cut on each mesh (1 = replicated on every device). Data parallelism replicates
# everything; the mixed and tensor-parallel meshes cut the big matrices, which is what
# lets xxlarge (H = 4096) fit.

# %%
names = [r[0] for r in rows]
blocks = np.array([[len(set(map(lambda i: tuple((s.start, s.stop) for s in i),
                                sh.devices_indices_map(v.shape).values())))
                    for sh, v in zip(jax.tree.leaves(shd.param_shardings(boxed, m)),
                                     flat_values, strict=True)]
                   for m in meshes.values()])
fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
im = ax.imshow(blocks.T, cmap="Blues", vmin=0, vmax=8, aspect="auto")
ax.set_xticks(range(len(meshes)), [n.split(" (")[0] for n in meshes])
ax.set_yticks(range(len(names)), names, fontsize=7)
for (i, j), v in np.ndenumerate(blocks):
    ax.text(i, j, str(v), ha="center", va="center", fontsize=7,
            color="white" if v > 4 else "black")
ax.set_title(f"{MODEL}: blocks per parameter on 8 devices")
notebook.save_figure(fig, "04_parameter_blocks")
plt.show()

# %%
elapsed = time.perf_counter() - T0
notebook.record(
    "04_sharding", model=MODEL, smoke=SMOKE, num_devices=len(devices),
    logits_max_diff=diffs, logits_abs_max=scale, probs_max_diff=prob_diffs,
    loss_1_device=loss_1, loss_8_devices=loss_8, grad_max_diff=grad_diff, grad_abs_max=grad_max,
    ffn_spec_after_step=list(ffn_spec), num_parameter_arrays=len(rows), seconds=elapsed,
)
print(f"done in {elapsed:.1f} s")
