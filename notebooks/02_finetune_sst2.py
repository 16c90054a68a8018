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
# # 02 · Fine-tuning on SST-2
#
# SST-2 (the Stanford Sentiment Treebank, as packaged by GLUE) asks whether a snippet of a
# movie review is negative or positive. This notebook fine-tunes a pretrained ALBERT on it
# with the `albert-jax finetune` command, then looks at the run the way a researcher does:
#
# 1. the training loss and the dev accuracy over the steps, read from the run's
#    `metrics.jsonl`;
# 2. the best model's confusion matrix on the dev examples;
# 3. its predictions on sentences it has never seen;
# 4. an export to Hugging Face format, and the same logits from transformers.
#
# On a GPU or TPU runtime with the hub reachable it runs the published albert-base-v2
# recipe (AdamW, learning rate 1e-5, batch 32, 20,935 steps: about 92.9% dev accuracy;
# hours on one accelerator). In smoke mode (`ALBERT_JAX_SMOKE=1`, what CI runs) it
# fine-tunes the bundled albert-mini for 60 steps on short inputs: enough to beat the
# majority class clearly, not to be good (albert-mini reaches 73.6% after 600 steps of
# 32 x 48; see `benchmarks/bench_finetune_sst2.py`).

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
import json
import time
from pathlib import Path

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
# ## 1. The run
#
# Training is one command: a config file holding the recipe
# (`configs/finetune/sst2.py`) plus `--config.key=value` overrides. Its data come from
# local GLUE TSV files when `data.manual_dir` names a folder holding them (CI:
# `../shared/data/glue/SST-2`), else from the TFDS catalogue (`glue/sst2`, downloaded). The
# work directory collects everything: `metrics.jsonl`, TensorBoard events, orbax
# checkpoints (rerunning the same command resumes), and the best model by dev accuracy in
# `best/` with its score in `best.json`.

# %%
SST2_DIR = notebook.sst2_dir()  # None: TFDS glue/sst2
print("SST-2 from", SST2_DIR or "TFDS (glue/sst2)")
WORKDIR = notebook.workdir("sst2")
if SMOKE:
    # 60 steps of 32 x 24 tokens at a constant 4e-4: albert-mini starts to separate the
    # classes after about 30 steps (the full dev set is still scored: 872 sentences).
    overrides = dict(max_seq_length=24, num_train_steps=60, global_batch_size=32,
                     eval_batch_size=128, log_every=5, eval_every=30, checkpoint_every=60)
    overrides.update({"optimizer.learning_rate": 4e-4, "optimizer.end_learning_rate": 4e-4,
                      "optimizer.warmup_steps": 6, "model.classifier_dropout_prob": 0.0,
                      "data.max_train_examples": 8000})
elif MODEL == "albert-mini":  # no accelerator and no hub: a CPU-sized run
    overrides = dict(max_seq_length=64, num_train_steps=800, log_every=20, eval_every=200)
    overrides.update({"optimizer.learning_rate": 1e-4, "optimizer.warmup_steps": 50})
else:  # the published albert-base-v2 recipe, as configs/finetune/sst2.py holds it
    overrides = dict(log_every=100, eval_every=1000)
overrides["init"] = MODEL
overrides["data.manual_dir"] = str(SST2_DIR or "")
# GLUE is prepared once (tensorflow-datasets files) in a cache that later runs reuse
# (`$TFDS_DATA_DIR`, else `~/.cache/albert_jax/tfds`).
overrides["data.tfds_data_dir"] = str(notebook.tfds_dir())
command = ["finetune", "--config", str(notebook.configs_dir() / "finetune" / "sst2.py"),
           "--workdir", str(WORKDIR)] + [f"--config.{k}={v}" for k, v in overrides.items()]
print("albert-jax " + " ".join(command))

# %%
start = time.perf_counter()
run = subprocess.run([sys.executable, "-m", "albert_jax.cli", *command], capture_output=True,
                     text=True)
print(f"finished in {time.perf_counter() - start:.0f} s with status {run.returncode}")
print("\n".join(run.stderr.strip().splitlines()[-3:]))  # the progress bar's last lines
if run.returncode != 0:
    raise RuntimeError(run.stderr)
best = json.loads((WORKDIR / "best.json").read_text())  # {"step", "metric", "value"}
print("best:", best)

# %% [markdown]
# ## 2. Curves from `metrics.jsonl`
#
# One JSON object per logged step: the training `loss` (the mean over that step's
# batch), `learning_rate`, `grad_norm`, and at every evaluation the dev metrics prefixed
# `eval_`. The dashed line is what always answering the more frequent class of the dev
# examples would score.

# %%
records = [json.loads(line) for line in (WORKDIR / "metrics.jsonl").read_text().splitlines()]
train_steps = [r["step"] for r in records]
evals = [r for r in records if "eval_accuracy" in r]
dev = notebook.sst2_sentences("dev")  # what the run scores (data.max_eval_examples = 0: all)
dev_labels = np.array([y for _, y in dev])
majority = float(max(dev_labels.mean(), 1 - dev_labels.mean()))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.plot(train_steps, [r["loss"] for r in records], ".-")
ax1.set_xlabel("step")
ax1.set_ylabel("training loss (cross-entropy)")
ax1.set_title("training loss")
ax2.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-",
         label="dev accuracy")
ax2.axhline(majority, ls="--", color="gray", label=f"majority class ({majority:.1%})")
ax2.set_xlabel("step")
ax2.set_ylabel("accuracy")
ax2.set_title(f"dev accuracy ({len(dev)} examples)")
ax2.legend()
fig.suptitle(f"{MODEL} on SST-2")
fig.tight_layout()
notebook.save_figure(fig, "02_training_curves")
plt.show()

# %% [markdown]
# ## 3. The best model, evaluated again
#
# `WORKDIR/best` is an ordinary albert_jax model directory (with `id2label`), so
# `load_pretrained` opens it like any other checkpoint. Scoring the dev examples with it
# reproduces the accuracy in `best.json`, and the confusion matrix shows where it errs.

# %%
clf, clf_params, tokenizer = albert_jax.load_pretrained(WORKDIR / "best",
                                                        head="sequence_classification")
label_names = ["negative", "positive"]
forward = jax.jit(lambda p, b: clf.apply(p, b["input_ids"], b["attention_mask"],
                                         b["token_type_ids"]).logits)


def classify(sentences, batch_size=64):
    """[N, 2] logits for a list of sentences (padded to the run's max_seq_length)."""
    out = []
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        enc = tokenizer(chunk + [""] * (batch_size - len(chunk)), truncation=True,
                        max_length=int(overrides.get("max_seq_length", 512)),
                        padding="max_length", return_tensors="np")
        out.append(np.asarray(forward(clf_params, {k: np.asarray(v) for k, v in
                                                   enc.items()}))[:len(chunk)])
    return np.concatenate(out)


dev_logits = classify([s for s, _ in dev])
dev_pred = dev_logits.argmax(-1)
accuracy = float(np.mean(dev_pred == dev_labels))
confusion = np.zeros((2, 2), int)
np.add.at(confusion, (dev_labels, dev_pred), 1)
print(f"best model (step {best['step']}): dev accuracy {accuracy:.4f} here, "
      f"{best['value']:.4f} in best.json; majority class {majority:.4f}")

fig, ax = plt.subplots(figsize=(4, 3.6))
ax.imshow(confusion, cmap="Blues")
for (i, j), v in np.ndenumerate(confusion):
    ax.text(j, i, str(v), ha="center", va="center",
            color="white" if v > confusion.max() / 2 else "black", fontsize=12)
ax.set_xticks([0, 1], label_names)
ax.set_yticks([0, 1], label_names)
ax.set_xlabel("predicted")
ax.set_ylabel("true")
ax.set_title(f"dev confusion matrix (accuracy {accuracy:.1%})")
notebook.save_figure(fig, "02_confusion_matrix")
plt.show()

# %% [markdown]
# ## 4. New sentences
#
# The classifier's probabilities on reviews written for this notebook.

# %%
new_sentences = [
    "An absolute delight from the first frame to the last.",
    "A tedious, overlong mess with nothing to say.",
    "The acting is wonderful and the story is moving.",
    "I wanted to walk out after twenty minutes.",
    "Not great, not terrible.",
]
new_logits = classify(new_sentences)
probs = np.exp(new_logits - new_logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
notebook.show_table(["sentence", "prediction", "P(positive)"],
                    [[s, label_names[int(p.argmax())], float(p[1])]
                     for s, p in zip(new_sentences, probs, strict=True)])

# %% [markdown]
# ## 5. Export to Hugging Face, and the same logits from transformers
#
# `albert-jax export WORKDIR DEST --to hf` (here its library call, `albert_jax.convert`)
# writes the best model as a Hugging Face directory: transformers'
# `AlbertForSequenceClassification` loads it with its labels. Its logits on the new
# sentences match ours to float32 precision.

# %%
import tempfile

hf_dir = albert_jax.convert(WORKDIR / "best", Path(tempfile.mkdtemp()) / "sst2_hf", to="hf")
print(sorted(os.listdir(hf_dir)))
os.environ.setdefault("USE_TF", "0")  # transformers: PyTorch only (skips importing TensorFlow)
try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None
    hf_diff = None
    print("transformers (with PyTorch) is not installed: `pip install transformers torch` to "
          "compare")
if transformers is not None:
    hf_model = transformers.AlbertForSequenceClassification.from_pretrained(hf_dir).eval()
    print("transformers labels:", hf_model.config.id2label)
    enc = tokenizer(new_sentences, padding=True, return_tensors="np")
    with torch.no_grad():
        hf_logits = hf_model(**{k: torch.from_numpy(np.asarray(v, np.int64))
                                for k, v in enc.items()}).logits.numpy()
    ours = np.asarray(forward(clf_params, {k: np.asarray(v) for k, v in enc.items()}))
    hf_diff = float(np.max(np.abs(hf_logits - ours)))
    print(f"max |transformers logits - albert_jax logits| = {hf_diff:.2e}")

# %%
elapsed = time.perf_counter() - T0
notebook.record(
    "02_finetune_sst2", model=MODEL, smoke=SMOKE, num_train_steps=records[-1]["step"],
    num_eval=len(dev), accuracy=accuracy, majority_accuracy=majority,
    best_step=best["step"], best_value=best["value"], confusion=confusion.tolist(),
    eval_curve=[[r["step"], r["eval_accuracy"]] for r in evals],
    new_sentence_p_positive=probs[:, 1].tolist(), hf_logits_max_diff=hf_diff,
    seconds=elapsed,
)
print(f"done in {elapsed:.1f} s")
