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
# # 03 · Pretraining ALBERT from scratch
#
# ALBERT learns from raw text with two self-supervised tasks at once:
#
# - **masked language modelling (MLM)**: 15% of the tokens are hidden, in whole-word
#   n-grams of up to 3 words (P(n) ∝ 1/n), and the model predicts them;
# - **sentence-order prediction (SOP)**: each example is two consecutive segments of one
#   document, swapped half of the time; the model says whether they are in order.
#
# This notebook pretrains the *tiny* configuration (`configs/pretrain/tiny.py`: H = 64,
# 2 layers) on public-domain books from Project Gutenberg with the `albert-jax pretrain`
# command. It shows one training example as the model sees it, the loss and accuracy
# curves from the run's `metrics.jsonl`, and what happens when a run is interrupted: it
# stops on the signal with a checkpoint, and the same command resumes it on the same
# curve (same weights, optimiser state, RNG and data position).

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
# There is no pretrained model to load here: the run starts from random weights. Its
# vocabulary is the real ALBERT one (the 30,000-piece `spiece.model`, shipped with the
# package). The books come from `../shared/data` in CI, or are downloaded from the NLTK
# data repository (the same "Project Gutenberg Selections").

# %%
import json
import re
import shutil
import signal
import time

import jax
import matplotlib

if not IN_COLAB:
    matplotlib.use("Agg")  # CI: no display; figures are written as PNG files
import matplotlib.pyplot as plt

from albert_jax import notebook
from albert_jax.training.corpus_builder import parse_documents, read_text
from albert_jax.training.pretrain_data import PretrainingDataset
from albert_jax.tokenizer import AlbertTokenizer

T0 = time.perf_counter()
SMOKE = notebook.smoke()
print("devices:", jax.devices())
print("smoke mode:", SMOKE)
BOOKS = notebook.gutenberg_dir()
WORKDIR = notebook.workdir("pretrain")
if SMOKE:  # two short books to train on, Macbeth held out, and a short run
    corpus = WORKDIR / "corpus"
    corpus.mkdir()
    for name in ("blake-poems.txt", "shakespeare-caesar.txt", "shakespeare-macbeth.txt"):
        shutil.copy(BOOKS / name, corpus / name)
    STEPS, LOG_EVERY, EVAL_EVERY, STOP_AFTER = 24, 2, 12, 8
else:  # the tiny config as it is: every book, 300 steps
    corpus = BOOKS
    STEPS, LOG_EVERY, EVAL_EVERY, STOP_AFTER = 300, 10, 50, 100
print("books:", sorted(p.name for p in corpus.glob("*.txt")))

# %% [markdown]
# ## 1. One training example
#
# `albert_jax.training.pretrain_data.PretrainingDataset` makes examples on the fly,
# deterministically from the seed: a book is split into sentences, consecutive sentences
# are packed into two segments A and B (swapped with probability 0.5: `sop_label` 1), and
# whole-word n-grams are masked: 80% become `[MASK]`, 10% a random token, 10% stay as they
# are (the model must predict those too). Highlighted below: every position the model is asked to
# predict, with the original token underneath when it was replaced.

# %%
tokenizer = AlbertTokenizer(notebook.spiece_model())
book = parse_documents(read_text(corpus / "blake-poems.txt"), "paragraphs")
dataset = PretrainingDataset(book, tokenizer, max_seq_length=64, max_predictions_per_seq=10,
                             batch_size=1, seed=3)
example = dataset.next_example()
n = int(example["attention_mask"].sum())
pieces = tokenizer.convert_ids_to_tokens(example["input_ids"][:n].tolist())
predicted = {int(p): int(t) for p, t, w in zip(example["masked_positions"],
                                               example["masked_ids"],
                                               example["masked_weights"], strict=True) if w}
segment_b = example["token_type_ids"][:n]
print(f"sop_label = {int(example['sop_label'])} "
      f"({'segments swapped' if example['sop_label'] else 'segments in order'}); "
      f"{len(predicted)} of {n} positions to predict")
print(" ".join(f"[{p}→{tokenizer.convert_ids_to_tokens(predicted[i])}]" if i in predicted
               else p for i, p in enumerate(pieces)))


# %%
def draw_example(ax, pieces, predicted, segment_b, per_row=12):
    """Tokens in rows; masked-LM targets highlighted, the original piece below them."""
    for i, piece in enumerate(pieces):
        row, col = divmod(i, per_row)
        x, y = col * 1.0, -row * 1.25
        target = predicted.get(i)
        if target is None:
            face = "#dbe9f6" if segment_b[i] else "#f2f2f2"
        else:
            face = "#f4a582" if piece == "[MASK]" else "#fddbc7"
        ax.text(x, y, piece, ha="center", va="center", fontsize=7, family="monospace",
                bbox=dict(boxstyle="round,pad=0.25", fc=face, ec="none"))
        if target is not None and tokenizer.convert_ids_to_tokens(target) != piece:
            ax.text(x, y - 0.45, tokenizer.convert_ids_to_tokens(target), ha="center",
                    va="center", fontsize=6, color="darkred", family="monospace")
    rows = (len(pieces) - 1) // per_row + 1
    ax.set_xlim(-0.7, per_row - 0.3)
    ax.set_ylim(-rows * 1.25 + 0.4, 0.7)
    ax.axis("off")


fig, ax = plt.subplots(figsize=(11, 0.55 * ((n - 1) // 12 + 1) + 0.8))
draw_example(ax, pieces, predicted, segment_b)
ax.set_title(f"one pretraining example: grey = segment A, blue = segment B, orange = "
             f"predicted (dark: [MASK]); sop_label = {int(example['sop_label'])}",
             fontsize=9)
notebook.save_figure(fig, "03_masked_example")
plt.show()

# %% [markdown]
# ## 2. The runs
#
# The command below is what you would type in a shell (`albert-jax pretrain ...`). The
# corpus is prepared by a tensorflow-datasets builder into array_record files in the work
# directory, read without TensorFlow. Metrics go to `WORKDIR/metrics.jsonl` every
# `log_every` steps; `eval_*` metrics on the held-out book every `eval_every` steps.
#
# The same command starts twice, side by side, in two work directories. The first runs to
# the end. The second is stopped part-way with SIGTERM, what a preempted cloud VM or a
# Colab "interrupt" sends: the trainer finishes the step it is in, writes an orbax
# checkpoint (parameters, optimiser state, step, RNG, data position) and exits (section 3).

# %%
def pretrain_command(workdir):
    overrides = {
        "num_train_steps": STEPS, "log_every": LOG_EVERY, "eval_every": EVAL_EVERY,
        "checkpoint_every": STEPS, "mesh.data": 1,
        "data.corpus_dir": corpus, "data.spiece_model": notebook.spiece_model(),
    }
    return [sys.executable, "-m", "albert_jax.cli", "pretrain",
            "--config", str(notebook.configs_dir() / "pretrain" / "tiny.py"),
            "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()]


def read_metrics(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


full_dir, resumed_dir = WORKDIR / "uninterrupted", WORKDIR / "interrupted"
print("albert-jax " + " ".join(pretrain_command(full_dir)[3:]))
start = time.perf_counter()
logs = {d: open(WORKDIR / f"{d.name}.log", "w") for d in (full_dir, resumed_dir)}  # stderr
runs = {d: subprocess.Popen(pretrain_command(d), stdout=subprocess.DEVNULL, stderr=logs[d])
        for d in (full_dir, resumed_dir)}
signalled = False
while runs[full_dir].poll() is None or runs[resumed_dir].poll() is None:
    logged = read_metrics(resumed_dir)
    if not signalled and logged and logged[-1]["step"] >= STOP_AFTER:
        runs[resumed_dir].send_signal(signal.SIGTERM)
        signalled = True
    time.sleep(0.05)
for d, proc in runs.items():
    logs[d].close()
    if proc.returncode != 0:
        raise RuntimeError((WORKDIR / f"{d.name}.log").read_text())
print(f"both runs done in {time.perf_counter() - start:.0f} s (start-up and corpus "
      "preparation included)")
full = read_metrics(full_dir)

# %%
steps = [r["step"] for r in full]
evals = [r for r in full if "eval_loss" in r]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
axes[0].plot(steps, [r["loss"] for r in full], label="total")
axes[0].plot(steps, [r["mlm_loss"] for r in full], label="MLM")
axes[0].plot(steps, [r["sop_loss"] for r in full], label="SOP")
axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "ko",
             label="held-out total")
axes[0].set_ylabel("loss")
axes[0].legend()
for ax, key, chance in ((axes[1], "mlm_accuracy", None), (axes[2], "sop_accuracy", 0.5)):
    ax.plot(steps, [r[key] for r in full], label="training batch")
    ax.plot([r["step"] for r in evals], [r[f"eval_{key}"] for r in evals], "ko",
            label="held-out book")
    if chance:
        ax.axhline(chance, ls="--", color="gray", label="chance")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend()
for ax in axes:
    ax.set_xlabel("step")
fig.suptitle("tiny ALBERT pretraining on Gutenberg books")
fig.tight_layout()
notebook.save_figure(fig, "03_training_curves")
plt.show()
print(f"loss {full[0]['loss']:.3f} at step {full[0]['step']} -> {full[-1]['loss']:.3f} at "
      f"step {full[-1]['step']}")

# %% [markdown]
# ## 3. Interrupted, then resumed
#
# The second run stopped on the signal with a checkpoint. Running the same command again
# restores that checkpoint, drops any metrics logged after it, and carries on. The resumed
# curve lies on the uninterrupted one.

# %%
stderr = (WORKDIR / f"{resumed_dir.name}.log").read_text()
stopped = [line for line in stderr.splitlines() if "stopping at step" in line]
print(stopped[-1] if stopped else stderr[-2000:])
interrupted_at = int(re.search(r"stopping at step (\d+)", stopped[-1]).group(1))
before = read_metrics(resumed_dir)

run = subprocess.run(pretrain_command(resumed_dir), capture_output=True, text=True)
if run.returncode != 0:
    raise RuntimeError(run.stderr)
resumed = read_metrics(resumed_dir)
print(f"stopped at step {interrupted_at} ({len(before)} metric lines), resumed to step "
      f"{resumed[-1]['step']} ({len(resumed)} lines)")
full_by_step = {r["step"]: r["loss"] for r in full}
diffs = [abs(r["loss"] - full_by_step[r["step"]]) for r in resumed]
print(f"max |loss(resumed run) - loss(uninterrupted run)| over {len(diffs)} logged steps = "
      f"{max(diffs):.2e}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(steps, [r["loss"] for r in full], color="lightgray", lw=6,
        label="uninterrupted run")
first = [r for r in resumed if r["step"] <= interrupted_at]
after = [r for r in resumed if r["step"] > interrupted_at]
ax.plot([r["step"] for r in first], [r["loss"] for r in first], "o-", ms=3,
        label="interrupted run, before SIGTERM")
ax.plot([r["step"] for r in after], [r["loss"] for r in after], "s-", ms=3,
        label="same command again (resumed)")
ax.axvline(interrupted_at, ls="--", color="gray")
ax.text(interrupted_at, ax.get_ylim()[1], f" checkpoint at step {interrupted_at}",
        va="top", fontsize=8)
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.legend(loc="lower left")
ax.set_title("resuming from a checkpoint continues the same curve")
notebook.save_figure(fig, "03_resume")
plt.show()

# %%
elapsed = time.perf_counter() - T0
notebook.record(
    "03_pretrain_from_scratch", smoke=SMOKE, num_train_steps=STEPS,
    interrupted_at=interrupted_at, steps_logged=[r["step"] for r in resumed],
    loss_resumed=[r["loss"] for r in resumed],
    loss_uninterrupted=[full_by_step[r["step"]] for r in resumed],
    steps_after_resume=len(after), resume_max_diff=max(diffs),
    final_mlm_accuracy=full[-1]["mlm_accuracy"], sop_label=int(example["sop_label"]),
    num_predicted=len(predicted), seconds=elapsed,
)
print(f"done in {elapsed:.1f} s")
