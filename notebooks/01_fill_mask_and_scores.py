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
# # 01 · Fill-mask, sentence scores and embeddings
#
# A masked language model answers three questions a researcher asks of text:
#
# 1. **What fits here?** Fill-mask ranks completions of a `[MASK]`, over the whole
#    vocabulary or over candidate words you name.
# 2. **How plausible is this sentence?** The pseudo-log-likelihood (PLL, Salazar et al.
#    2020) masks every token in turn and adds up the log-probabilities of the true tokens;
#    on *minimal pairs* (two sentences that differ in one grammatical detail) a good model
#    prefers the grammatical one.
# 3. **What does this sentence mean, as a vector?** Sentence embeddings, here the mean of
#    the last hidden states, projected to 2-D.
#
# All three run on one batching engine (`albert_jax.Engine`): inputs are sorted by length,
# padded to a few fixed shapes and run through one jit-compiled step per shape. At the end:
# the raw features of the backbone and conversion to and from Hugging Face format.
#
# The notebook runs as it stands in Colab (any runtime) and in CI (`ALBERT_JAX_SMOKE=1`:
# the bundled albert-mini and small slices).

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
# JAX picks the accelerator by itself: a GPU or TPU runtime needs no set-up call. The
# model is albert-base-v2 when the Hugging Face hub (or the local cache) has it, else
# albert-mini, a small ALBERT that albert_jax pretrained on public-domain books and ships
# in the package; the next cell says which one this run uses.

# %%
import time

import jax
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
# ## 1. Fill-mask
#
# `FillMask` returns transformers' pipeline format: for each input a list of
# `{"score", "token", "token_str", "sequence"}`, best first. Exactly one `[MASK]` per
# input. The scores are the softmax over the whole vocabulary (30,000 pieces).

# %%
fm = albert_jax.FillMask.from_pretrained(MODEL, batch_size=8)
prompts = [
    "The capital of France is [MASK].",
    "She poured a cup of [MASK] and sat down.",
    "He opened the [MASK] and walked into the room.",
]
rows = []
for prompt, results in zip(prompts, fm(prompts, top_k=5), strict=True):
    for rank, r in enumerate(results, 1):
        rows.append([prompt if rank == 1 else "", rank, r["token_str"], r["score"]])
notebook.show_table(["prompt", "rank", "completion", "probability"], rows)

# %% [markdown]
# With `targets`, only the candidates you name are scored (their probabilities under the
# full softmax, not renormalised). Targets are vocabulary pieces: `▁` marks the start of a
# word, so `▁dog` is the word "dog".

# %%
targets = ["▁dog", "▁cat", "▁bird", "▁car"]
target_prompt = "The [MASK] barked at the mailman all morning."
scored = fm(target_prompt, targets=targets, top_k=len(targets))
notebook.show_table(["target", "probability"], [[r["token_str"], r["score"]] for r in scored])
target_probs = {r["token_str"]: r["score"] for r in scored}

# %% [markdown]
# ## 2. Sentence scores on minimal pairs
#
# Each pair below differs in one grammatical detail (agreement, argument structure,
# determiners, ...), in the spirit of BLiMP (Warstadt et al. 2020). A sentence's PLL is
# the sum over its tokens of log P(token | the rest of the sentence); the grammatical
# member should score higher. PLL-word-l2r (`word_l2r=True`) also masks the rest of a
# word to the right of the scored piece, which removes PLL's bias for words split into
# several pieces (Kauf & Ivanova 2023).

# %%
PAIRS = [
    ("The keys to the cabinet are on the table.", "The keys to the cabinet is on the table."),
    ("The dogs in the garden bark loudly.", "The dogs in the garden barks loudly."),
    ("She has eaten the apple.", "She has ate the apple."),
    ("They were walking to school.", "They was walking to school."),
    ("He gave her a book.", "He gave her a books."),
    ("I saw a cat yesterday.", "I saw an cat yesterday."),
    ("The children like to play outside.", "The children likes to play outside."),
    ("We have never been to Paris.", "We has never been to Paris."),
]
pll = albert_jax.PseudoLogLikelihood.from_pretrained(MODEL, batch_size=32, word_l2r=True)
scores = pll([s for pair in PAIRS for s in pair])
good = np.array([r.total_logprob for r in scores[0::2]])
bad = np.array([r.total_logprob for r in scores[1::2]])
preferred = int(np.sum(good > bad))
notebook.show_table(
    ["grammatical", "PLL", "ungrammatical", "PLL", "difference"],
    [[g, float(a), b, float(c), float(a - c)] for (g, b), a, c in zip(PAIRS, good, bad,
                                                                     strict=True)],
)
print(f"{MODEL} prefers the grammatical sentence in {preferred} of {len(PAIRS)} pairs")

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
x = np.arange(len(PAIRS))
ax.bar(x - 0.2, good, width=0.4, label="grammatical", color="tab:blue")
ax.bar(x + 0.2, bad, width=0.4, label="ungrammatical", color="tab:red")
ax.set_xticks(x, [f"pair {i + 1}" for i in x])
ax.set_ylabel("pseudo-log-likelihood (nats)")
ax.set_title(f"PLL-word-l2r on minimal pairs ({MODEL}): higher is more plausible")
ax.legend(loc="lower right")
notebook.save_figure(fig, "01_pll_minimal_pairs")
plt.show()

# %% [markdown]
# ## 3. Sentence embeddings of SST-2
#
# `Embedder` returns one vector per sentence: here `pooling="mean"`, the mean of the last
# hidden states over the sentence's tokens (`"cls"` and `"pooled"` are the alternatives).
# A few dozen sentences of the SST-2 dev set (movie-review snippets labelled negative or
# positive) are embedded and projected onto their first two principal components. A
# pretrained model that was never told about sentiment separates the two classes only
# partly: that is what fine-tuning (notebook 02) is for.

# %%
n_sentences = 48 if SMOKE else 400
sst2 = notebook.sst2_sentences("dev", limit=n_sentences)
sentences = [s for s, _ in sst2]
labels = np.array([y for _, y in sst2])
emb = albert_jax.Embedder.from_pretrained(MODEL, pooling="mean", batch_size=32)
vectors = emb(sentences)  # [N, H] float32
centered = vectors - vectors.mean(axis=0)
_, singular, components = np.linalg.svd(centered, full_matrices=False)
xy = centered @ components[:2].T
explained = (singular[:2] ** 2).sum() / (singular ** 2).sum()
print(f"{len(sentences)} sentences -> {vectors.shape} embeddings; the first two principal "
      f"components explain {explained:.1%} of the variance")

fig, ax = plt.subplots(figsize=(5.5, 4.5))
for value, name, color in ((0, "negative", "tab:red"), (1, "positive", "tab:blue")):
    ax.scatter(*xy[labels == value].T, s=18, alpha=0.75, label=name, color=color)
ax.set_xlabel("PC 1")
ax.set_ylabel("PC 2")
ax.set_title(f"SST-2 dev sentences, mean-pooled {MODEL} embeddings")
ax.legend()
notebook.save_figure(fig, "01_embeddings_pca")
plt.show()

# %% [markdown]
# ## 4. The backbone's features
#
# Underneath the tasks is a plain Flax module: `load_pretrained` returns the model, its
# parameters and the tokenizer. The tokenizer takes transformers' arguments; the model
# returns the sequence output [B, S, H] and the pooled output [B, H].

# %%
model, params, tokenizer = albert_jax.load_pretrained(MODEL, head="base")
batch = tokenizer(["A short sentence.", "A somewhat longer second sentence."], padding=True,
                  return_tensors="np")
forward = jax.jit(lambda p, b: model.apply(p, b["input_ids"], b["attention_mask"],
                                           b["token_type_ids"]))
out = forward(params, dict(batch))
print("last_hidden_state", out.last_hidden_state.shape, "pooler_output",
      out.pooler_output.shape)

# %% [markdown]
# ## 5. Conversion to and from Hugging Face
#
# `albert_jax.convert` writes the albert_jax directory format (safetensors keyed by Flax
# paths) or, with `to="hf"`, a directory that transformers' `AlbertForMaskedLM` loads.
# The round trip is exact: the reloaded model gives bit-identical logits.

# %%
import tempfile

tmp = tempfile.mkdtemp()
jax_dir = albert_jax.convert(MODEL, f"{tmp}/albert_jax")
hf_dir = albert_jax.convert(jax_dir, f"{tmp}/hf", to="hf")
print(sorted(os.listdir(hf_dir)))
mlm, mlm_params, _ = albert_jax.load_pretrained(MODEL)
back, back_params, _ = albert_jax.load_pretrained(hf_dir)
ids = np.asarray([tokenizer.encode("The cat sat on the [MASK].")])
round_trip_diff = float(np.max(np.abs(mlm.apply(mlm_params, ids).logits
                                      - back.apply(back_params, ids).logits)))
print(f"max |logits(original) - logits(via HF format)| = {round_trip_diff}")

# %% [markdown]
# ## Key numbers of this run
#
# Written next to the figures as `01_fill_mask_and_scores.json`: CI checks them.

# %%
elapsed = time.perf_counter() - T0
notebook.record(
    "01_fill_mask_and_scores", model=MODEL, smoke=SMOKE,
    top1={p: r[0]["token_str"] for p, r in zip(prompts, fm(prompts, top_k=1), strict=True)},
    target_probs=target_probs,
    pll_good=good.tolist(), pll_bad=bad.tolist(), pairs_preferred=preferred,
    num_pairs=len(PAIRS), embedding_shape=list(vectors.shape),
    pca_explained=float(explained), round_trip_max_diff=round_trip_diff,
    seconds=elapsed,
)
print(f"done in {elapsed:.1f} s")
