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
# # 05 · Inside ALBERT: attention, the shared layer, and compile time
#
# ALBERT's defining idea is **cross-layer parameter sharing**: a 12-layer ALBERT applies
# *one* transformer layer 12 times. That invites three questions this notebook answers
# with pictures:
#
# 1. What does each application of the layer attend to? (`output_attentions=True`: the
#    attention maps of every layer and head.)
# 2. If the weights are the same, does the representation keep changing? (the hidden
#    state after every application, `output_hidden_states=True`, and the cosine
#    similarity between consecutive ones.)
# 3. What does sharing buy the compiler? albert_jax applies the layer with `nn.scan`, so the
#    program holds the layer once; an unrolled loop holds it `L` times. Compile time
#    against depth, both ways.

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

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib

if not IN_COLAB:
    matplotlib.use("Agg")  # CI: no display; figures are written as PNG files
import matplotlib.pyplot as plt
import numpy as np

import albert_jax
from albert_jax import notebook

T0 = time.perf_counter()
SMOKE = notebook.smoke()
print("devices:", jax.devices())
print("smoke mode:", SMOKE)
MODEL = notebook.choose_model()

# %% [markdown]
# ## 1. Attention maps, per layer and head
#
# Every model takes `output_attentions=True` and then also returns a tuple of `L` arrays
# [B, heads, S, S] (the softmax of the scaled dot products: row = the attending token,
# column = the attended one), as transformers does. Each row sums to 1.

# %%
model, params, tokenizer = albert_jax.load_pretrained(MODEL, head="base")
config = model.config
sentence = "The animal did not cross the street because it was too tired."
ids = np.asarray([tokenizer.encode(sentence)])
tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
out = jax.jit(lambda p, x: model.apply(p, x, output_attentions=True,
                                       output_hidden_states=True))(params, ids)
attentions = np.stack([np.asarray(a[0]) for a in out.attentions])  # [L, heads, S, S]
hidden = np.stack([np.asarray(h[0]) for h in out.hidden_states])  # [L + 1, S, H]
print(f"{len(tokens)} tokens: {tokens}")
print(f"attentions: {len(out.attentions)} x {out.attentions[0].shape}; hidden_states: "
      f"{len(out.hidden_states)} x {out.hidden_states[0].shape}")
row_sum_error = float(np.max(np.abs(attentions.sum(-1) - 1.0)))
print(f"max |row sum - 1| = {row_sum_error:.1e}")

# %%
num_layers, num_heads = attentions.shape[:2]
heads_shown = min(num_heads, 6)  # albert-base has 12 heads: the first 6 keep it readable
fig, axes = plt.subplots(num_layers, heads_shown, figsize=(1.6 * heads_shown + 1.5,
                                                           1.6 * num_layers + 0.6),
                         squeeze=False)
for layer in range(num_layers):
    for head in range(heads_shown):
        ax = axes[layer, head]
        ax.imshow(attentions[layer, head], cmap="viridis")  # each map on its own scale
        ax.set_xticks([])
        ax.set_yticks([])
        if head == 0:
            ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
        if layer == 0:
            ax.set_title(f"head {head + 1}", fontsize=8)
fig.suptitle(f"{MODEL}: attention maps for “{sentence}”\n(row: attending token, column: "
             "attended token; each map on its own colour scale)", fontsize=9)
fig.tight_layout(rect=(0, 0, 1, 0.97))
notebook.save_figure(fig, "05_attention_maps", dpi=80)
plt.show()

# %% [markdown]
# One map at reading size, with its tokens: the last layer, the head whose attention from
# the pronoun "it" is the most concentrated (lowest entropy).

# %%
it = tokens.index("▁it")
entropy = -(attentions[-1, :, it] * np.log(attentions[-1, :, it] + 1e-12)).sum(-1)
head = int(np.argmin(entropy))
fig, ax = plt.subplots(figsize=(6, 5.5))
im = ax.imshow(attentions[-1, head], cmap="viridis")
ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
ax.set_xlabel("attended token")
ax.set_ylabel("attending token")
ax.set_title(f"layer {num_layers}, head {head + 1}")
fig.colorbar(im, ax=ax, shrink=0.8)
notebook.save_figure(fig, "05_attention_one_head")
plt.show()
print(f"'it' attends most to {tokens[int(np.argmax(attentions[-1, head, it]))]!r} in this head")

# %% [markdown]
# ## 2. Twelve applications of one layer
#
# `hidden_states` holds `L + 1` arrays: the input of the first application (the embeddings
# mapped to H) and the output of each application. Because the same weights run every
# time, one might expect ALBERT to converge to a fixed point. The cosine similarity of each
# token's vector before and after an application (averaged over the tokens) shows how far
# each step moves the representation; the relative change in norm shows whether it grows.

# %%
def cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


consecutive = np.array([cosine(hidden[i], hidden[i + 1]).mean()
                        for i in range(len(hidden) - 1)])
to_first = np.array([cosine(hidden[0], hidden[i]).mean() for i in range(len(hidden))])
norms = np.linalg.norm(hidden, axis=-1).mean(-1)
for i, c in enumerate(consecutive, 1):
    print(f"application {i:2d}: cos(h{i - 1}, h{i}) = {c:.3f}, mean |h{i}| = {norms[i]:.1f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
steps = np.arange(1, len(consecutive) + 1)
ax1.plot(steps, consecutive, "o-", label="cos(h[l-1], h[l])")
ax1.plot(np.arange(len(to_first)), to_first, "s--", alpha=0.7, label="cos(h[0], h[l])")
ax1.set_xlabel("application l of the shared layer")
ax1.set_ylabel("mean cosine similarity over tokens")
ax1.set_ylim(min(0.0, float(to_first.min()) - 0.05), 1.02)
ax1.legend()
ax1.set_title("how much each application changes the tokens")
ax2.plot(np.arange(len(norms)), norms, "o-", color="tab:green")
ax2.set_xlabel("l")
ax2.set_ylabel("mean |h[l]|")
ax2.set_title("hidden-state norm")
fig.suptitle(MODEL)
fig.tight_layout()
notebook.save_figure(fig, "05_shared_layer_similarity")
plt.show()

# %% [markdown]
# ## 3. Compile time: scanned against unrolled, as depth grows
#
# The parameter tree is the same either way (`scan_layers=False` calls the same module
# instance in a Python loop), so checkpoints never depend on the switch. What differs is
# the program XLA compiles: `nn.scan` emits the layer once inside a loop, the unrolled
# model emits it `L` times. Below: `lower` + `compile` of the forward pass, timed for each
# depth (random weights; only shapes matter to the compiler). In smoke mode a small layer
# and shallow depths keep this short; the full run uses albert-base's shapes.

# %%
if SMOKE:
    shapes = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  embedding_size=32, vocab_size=1000, max_position_embeddings=64)
    depths = [1, 2, 4, 8, 16]
else:
    shapes = {}  # albert-base-v2: H 768, 12 heads, FFN 3072
    depths = [1, 6, 12, 24, 48]


def compile_seconds(depth, scan):
    cfg = albert_jax.AlbertConfig(num_hidden_layers=depth, scan_layers=scan, **shapes)
    m = albert_jax.AlbertModel(cfg)
    x = jnp.ones((8, 64), jnp.int32)
    abstract = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
    start = time.perf_counter()
    jax.jit(lambda p, x: m.apply(p, x).last_hidden_state).lower(abstract, x).compile()
    return time.perf_counter() - start


same_tree = (jax.tree.structure(jax.eval_shape(lambda: albert_jax.AlbertModel(
    albert_jax.AlbertConfig(num_hidden_layers=4, scan_layers=True, **shapes)).init(
    jax.random.key(0), jnp.ones((1, 8), jnp.int32))))
    == jax.tree.structure(jax.eval_shape(lambda: albert_jax.AlbertModel(
        albert_jax.AlbertConfig(num_hidden_layers=4, scan_layers=False, **shapes)).init(
        jax.random.key(0), jnp.ones((1, 8), jnp.int32)))))
print("scanned and unrolled models have the same parameter tree:", same_tree)
compile_times = {"scan": [], "unrolled": []}
for depth in depths:
    for kind in compile_times:
        compile_times[kind].append(compile_seconds(depth, kind == "scan"))
    print(f"depth {depth:2d}: scanned {compile_times['scan'][-1]:.2f} s, unrolled "
          f"{compile_times['unrolled'][-1]:.2f} s")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.plot(depths, compile_times["scan"], "o-", label="nn.scan (albert_jax default)")
ax.plot(depths, compile_times["unrolled"], "s-", label="unrolled (scan_layers=False)")
ax.set_xlabel("num_hidden_layers")
ax.set_ylabel("lower + compile (s)")
ax.set_title("compile time of the forward pass" + (" (small layer)" if SMOKE else
                                                   " (albert-base shapes)"))
ax.legend()
notebook.save_figure(fig, "05_compile_time")
plt.show()

# %%
elapsed = time.perf_counter() - T0
notebook.record(
    "05_inside_albert", model=MODEL, smoke=SMOKE, num_layers=config.num_hidden_layers,
    num_attentions=len(out.attentions), num_hidden_states=len(out.hidden_states),
    attention_shape=list(out.attentions[0].shape), attention_row_sum_error=row_sum_error,
    consecutive_cosine=consecutive.tolist(), cosine_to_first=to_first.tolist(),
    same_tree=bool(same_tree), depths=depths, compile_seconds=compile_times,
    seconds=elapsed,
)
print(f"done in {elapsed:.1f} s")
