"""Fine-tuning and evaluation on the sharded trainer: GLUE, SQuAD, CoNLL, multiple choice.

One :class:`Family` per kind of task turns its input files into fixed-shape arrays, gives
the loss and the metrics, and writes predictions; everything else (sharded steps, gradient
accumulation, orbax checkpoints with exact resume, metrics.jsonl / TensorBoard / tqdm) is
:func:`albert_jax.train.train_loop`, as in pretraining.

====================  ==========================  ======================================
family                head                        metrics (selection metric first)
====================  ==========================  ======================================
GLUE (``sst2`` ...)   sequence_classification     accuracy; F1 (MRPC, QQP); Matthews
                                                  (CoLA); Pearson/Spearman (STS-B)
``squad_v1/v2``       question_answering          official exact match and F1
``conll2003``         token_classification        entity precision/recall/F1, accuracy
``race`` (and SWAG)   multiple_choice             accuracy
====================  ==========================  ======================================

A run directory holds ``finetune_config.json`` (the run's config), the checkpoints, the
metrics, and ``best/``: the model with the best dev score so far (an albert_jax model
directory with ``id2label`` in its ``config.json`` and the run config in
``finetune_config.json``, so ``evaluate``/``predict``/``export`` need nothing else) and
``best.json`` (``{"step", "metric", "value"}``).

Command line (wired as ``albert-jax finetune/evaluate/predict``)::

    albert-jax finetune --config configs/finetune/sst2.py --workdir /tmp/sst2 \\
        [--config.init=albert-mini] [--config.key=value ...]
    albert-jax evaluate --workdir /tmp/sst2 [--split validation]       # or --model DIR
    albert-jax predict --workdir /tmp/sst2 --split test --output preds.jsonl
    albert-jax export /tmp/sst2 /tmp/sst2_model [--to hf]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from albert_jax import metrics as M
from albert_jax import sharding as shd
from albert_jax import train
from albert_jax.config import AlbertConfig, ConfigError

CONFIG_FILE = "finetune_config.json"
BEST_DIR = "best"
BEST_FILE = "best.json"
Batch = dict[str, np.ndarray]

# Metrics of each GLUE task; the first is the default selection metric.
GLUE_METRICS = {
    "cola": ("mcc", "accuracy"),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("mcc",),
}


class FinetuneError(ConfigError):
    """A fine-tuning run that cannot start: bad config, missing data, wrong workdir."""


@dataclasses.dataclass
class Encoded:
    """A split as model inputs: ``arrays`` of N rows ([N, L], [N, C, L] for multiple
    choice), the source ``examples`` and family-specific ``extra`` (SQuAD features, ...)."""

    arrays: dict[str, np.ndarray]
    examples: list[Any]
    extra: Any = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


# ============================================================================ families
class Family:
    """The task-specific parts of fine-tuning. Subclasses set ``head`` and implement the
    methods; ``label_names`` is fixed by :meth:`setup` (from the training data or a saved
    run) before the model is built."""

    head: str = ""
    label_names: tuple[str, ...] | None = None

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config

    # -- data
    def setup(self, label_names: Sequence[str] | None = None) -> None:
        """Fixes the label set (``label_names`` from a saved run, else from the data)."""

    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 2

    def splits(self) -> tuple[str, ...]:
        return ("train", "validation")

    def load(self, split: str, tokenizer: Any, training: bool = False,
             path: str | None = None) -> Encoded:
        raise NotImplementedError

    # -- training
    def loss(self, out: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Sums over the batch: ``loss``, ``correct`` (if meaningful) and ``count``."""
        raise NotImplementedError

    # -- evaluation and prediction
    def outputs(self, out: Any) -> dict[str, jax.Array]:
        """What prediction keeps of the model output (row-aligned with the batch)."""
        return {"logits": out.logits}

    def evaluate(self, preds: dict[str, np.ndarray], enc: Encoded) -> dict[str, float]:
        raise NotImplementedError

    def records(self, preds: dict[str, np.ndarray], enc: Encoded) -> list[dict]:
        raise NotImplementedError

    def default_metric(self) -> str:
        raise NotImplementedError


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [..., C] float32, labels [...] int (-1 = ignore) -> per-item loss [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.maximum(labels, 0)
    return -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


def _classification_loss(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    valid = (labels >= 0).astype(jnp.float32)
    nll = _cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(nll * valid), "correct": jnp.sum(correct * valid),
            "count": jnp.sum(valid)}


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _encode_pairs(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None,
                  max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(first), None if second is None else list(second), truncation=True,
                    max_length=max_length, padding="max_length", return_tensors="np")
    return {k: np.asarray(enc[k], np.int32)
            for k in ("input_ids", "attention_mask", "token_type_ids")}


class GlueFamily(Family):
    """Sentence (pair) classification and regression (STS-B) on GLUE-format data."""

    head = "sequence_classification"

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        from albert_jax.finetune_data import GLUE_TASKS

        self.spec = GLUE_TASKS[config.task]
        self.regression = self.spec.label_names is None

    def setup(self, label_names=None) -> None:
        self.label_names = None if self.regression else tuple(
            label_names or self.spec.label_names)

    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names or ())

    def splits(self) -> tuple[str, ...]:
        if self.spec.name == "mnli":
            return ("train", "validation_matched")
        return ("train", "validation")

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        from albert_jax.finetune_data import load_glue, read_glue_tsv

        d = self.config.data
        if path is not None:
            examples = list(read_glue_tsv(self.spec.name, path, "test"))
        else:
            data_dir = train.resolve_path(d.tfds_data_dir) if d.tfds_data_dir else None
            manual = train.resolve_path(d.manual_dir) if d.manual_dir else None
            if jax.process_count() > 1:  # Process 0 prepares; the others then open it.
                from jax.experimental import multihost_utils

                if jax.process_index() == 0:
                    load_glue(self.spec.name, split, manual_dir=manual, data_dir=data_dir)
                multihost_utils.sync_global_devices(f"albert_jax glue {split} prepared")
            examples = load_glue(self.spec.name, split, manual_dir=manual,
                                 data_dir=data_dir).examples
        # Sliced before materialising: each record of the lazy source is decoded on access.
        examples = _limit(examples, d.max_train_examples if training else d.max_eval_examples)
        if not examples:
            raise FinetuneError(f"GLUE {self.spec.name} {path or split}: no examples")
        pair = self.spec.text_b is not None
        arrays = _encode_pairs(tokenizer, [e["text_a"] for e in examples],
                               [e["text_b"] for e in examples] if pair else None,
                               self.config.max_seq_length)
        dtype = np.float32 if self.regression else np.int32
        arrays["labels"] = np.asarray([e["label"] for e in examples], dtype)
        return Encoded(arrays, examples)

    def loss(self, out, batch):
        labels = batch["labels"]
        if self.regression:
            pred = out.logits[:, 0].astype(jnp.float32)
            valid = (labels > -1.0).astype(jnp.float32)  # unlabeled rows read as -1.0
            return {"loss": jnp.sum(jnp.square(pred - labels) * valid),
                    "count": jnp.sum(valid)}
        return _classification_loss(out.logits, labels)

    def evaluate(self, preds, enc) -> dict[str, float]:
        labels = enc.arrays["labels"]
        logits = preds["logits"]
        if self.regression:
            return M.compute(("pearson", "spearman"), labels, logits[:, 0])
        names = GLUE_METRICS.get(self.spec.name, ("accuracy",))
        return M.compute(names, labels, logits.argmax(-1))

    def records(self, preds, enc) -> list[dict]:
        logits = preds["logits"]
        if self.regression:
            return [{"idx": e["idx"], "score": float(s)} for e, s in zip(
                enc.examples, logits[:, 0], strict=True)]
        probs = _softmax(logits)
        names = self.label_names or ()
        return [{"idx": e["idx"], "label": names[int(p.argmax())],
                 "probabilities": {n: round(float(x), 6) for n, x in zip(names, p, strict=True)}}
                for e, p in zip(enc.examples, probs, strict=True)]

    def default_metric(self) -> str:
        return GLUE_METRICS.get(self.spec.name, ("accuracy",))[0]


class SquadFamily(Family):
    """Extractive QA (SQuAD v1.1 / v2.0 JSON): windows with a doc stride, n-best decoding."""

    head = "question_answering"

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        self.version_2 = config.task == "squad_v2"

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        from albert_jax import squad

        d = self.config.data
        path = path or _split_file(d, split)
        examples = _limit(squad.read_squad(path),
                          d.max_train_examples if training else d.max_eval_examples)
        features = squad.make_features(
            examples, tokenizer, max_length=self.config.max_seq_length,
            doc_stride=d.doc_stride, max_query_length=d.max_query_length,
            is_training=training)
        arrays = squad.stack_features(features)
        return Encoded(arrays, examples, features)

    def loss(self, out, batch):
        start = _cross_entropy(out.start_logits, batch["start_positions"])
        end = _cross_entropy(out.end_logits, batch["end_positions"])
        n = batch["start_positions"].shape[0]
        return {"loss": jnp.sum(start + end) / 2.0,
                "count": jnp.asarray(n, jnp.float32)}

    def outputs(self, out):
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    def _decode(self, preds, enc) -> dict[str, str]:
        from albert_jax import squad

        e = self.config.eval
        return squad.decode(enc.extra, enc.examples, preds["start_logits"], preds["end_logits"],
                            n_best_size=e.n_best_size, max_answer_length=e.max_answer_length,
                            version_2=self.version_2,
                            null_score_diff_threshold=e.null_score_diff_threshold)

    def evaluate(self, preds, enc) -> dict[str, float]:
        answers = self._decode(preds, enc)
        em = f1 = 0.0
        for ex in enc.examples:
            gold = [text for text, _ in ex.answers] or [""]
            em += M.squad_exact_match(answers.get(ex.qid, ""), gold, squad_v2=self.version_2)
            f1 += M.squad_f1(answers.get(ex.qid, ""), gold, squad_v2=self.version_2)
        n = max(len(enc.examples), 1)
        return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}

    def records(self, preds, enc) -> list[dict]:
        answers = self._decode(preds, enc)
        return [{"id": ex.qid, "answer": answers.get(ex.qid, "")} for ex in enc.examples]

    def default_metric(self) -> str:
        return "f1"


class TokenFamily(Family):
    """Token classification (CoNLL files): each word's label on its first piece."""

    head = "token_classification"

    def setup(self, label_names=None) -> None:
        from albert_jax.finetune_data import read_conll

        d = self.config.data
        if label_names:
            self.label_names = tuple(label_names)
        elif d.label_names:
            self.label_names = tuple(d.label_names)
        else:
            self.label_names = read_conll(train.resolve_path(d.train_file)).label_names

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        from albert_jax.finetune_data import read_conll

        d = self.config.data
        data = read_conll(path or _split_file(d, split), label_names=self.label_names)
        sentences = _limit(data.sentences,
                           d.max_train_examples if training else d.max_eval_examples)
        max_len = self.config.max_seq_length
        n = len(sentences)
        ids = np.zeros((n, max_len), np.int32)
        mask = np.zeros((n, max_len), np.int32)
        labels = np.full((n, max_len), -1, np.int32)
        # All words of all sentences go to sentencepiece in one batched call; a word alone
        # gives the pieces it has in context (each word starts with "▁").
        words = [w for tokens, _ in sentences for w in tokens]
        pieces = tokenizer._encode_texts(words) if words else []
        first: list[list[int]] = []  # position of each word's first piece (-1: truncated)
        index = {t: i for i, t in enumerate(self.label_names or ())}
        k = 0
        for row, (_, tags) in enumerate(sentences):
            seq, lab, starts = [tokenizer.cls_token_id], [-1], []
            for tag in tags:
                p = pieces[k] or [tokenizer.unk_token_id]
                k += 1
                if len(seq) + len(p) > max_len - 1:
                    starts.append(-1)
                    continue
                starts.append(len(seq))
                lab.extend([index[tag]] + [-1] * (len(p) - 1))
                seq.extend(p)
            seq.append(tokenizer.sep_token_id)
            lab.append(-1)
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            labels[row, : len(lab)] = lab
            first.append(starts)
        arrays = {"input_ids": ids, "attention_mask": mask,
                  "token_type_ids": np.zeros_like(ids), "labels": labels}
        return Encoded(arrays, sentences, first)

    def loss(self, out, batch):
        return _classification_loss(out.logits, batch["labels"])

    def _tags(self, preds, enc) -> list[list[str]]:
        best = preds["logits"].argmax(-1)
        names = self.label_names or ()
        outside = "O" if "O" in names else names[0]
        return [[names[best[i, p]] if p >= 0 else outside for p in starts]
                for i, starts in enumerate(enc.extra)]

    def evaluate(self, preds, enc) -> dict[str, float]:
        pred = self._tags(preds, enc)
        gold = [tags for _, tags in enc.examples]
        out = M.entity_scores(gold, pred, scheme=self.config.eval.tag_scheme)
        flat_gold = [t for s in gold for t in s]
        flat_pred = [t for s in pred for t in s]
        out["accuracy"] = M.accuracy(flat_gold, flat_pred)
        return out

    def records(self, preds, enc) -> list[dict]:
        return [{"tokens": tokens, "tags": tags}
                for (tokens, _), tags in zip(enc.examples, self._tags(preds, enc), strict=True)]

    def default_metric(self) -> str:
        return "f1"


class MultipleChoiceFamily(Family):
    """Multiple choice (RACE/SWAG JSON Lines): one [CLS] context [SEP] question+choice
    [SEP] row per choice, a score per row, softmax over the choices."""

    head = "multiple_choice"

    def load(self, split, tokenizer, training=False, path=None) -> Encoded:
        from albert_jax.finetune_data import read_multiple_choice

        d = self.config.data
        examples = _limit(
            read_multiple_choice(path or _split_file(d, split), num_choices=d.num_choices or None),
            d.max_train_examples if training else d.max_eval_examples)
        if not examples:
            raise FinetuneError(f"{path or split}: no examples")
        c = len(examples[0]["choices"])
        if any(len(e["choices"]) != c for e in examples):
            raise FinetuneError(f"{path or split}: examples have different numbers of choices "
                                "(set data.num_choices to check each line)")
        first, second = [], []
        for e in examples:
            for choice in e["choices"]:
                q = e["question"]
                # RACE cloze questions put the blank as "_"; others append the choice.
                text = q.replace("_", choice) if "_" in q else f"{q} {choice}".strip()
                first.append(e["context"] or text)
                second.append(text if e["context"] else "")
        has_second = any(second)
        arrays = _encode_pairs(tokenizer, first, second if has_second else None,
                               self.config.max_seq_length)
        arrays = {k: v.reshape(len(examples), c, -1) for k, v in arrays.items()}
        arrays["labels"] = np.asarray([e["label"] for e in examples], np.int32)
        return Encoded(arrays, examples)

    def loss(self, out, batch):
        return _classification_loss(out.logits, batch["labels"])

    def evaluate(self, preds, enc) -> dict[str, float]:
        labels = enc.arrays["labels"]
        keep = labels >= 0
        return {"accuracy": M.accuracy(labels[keep], preds["logits"].argmax(-1)[keep])}

    def records(self, preds, enc) -> list[dict]:
        probs = _softmax(preds["logits"])
        return [{"id": e["id"], "label": int(p.argmax()),
                 "probabilities": [round(float(x), 6) for x in p]}
                for e, p in zip(enc.examples, probs, strict=True)]

    def default_metric(self) -> str:
        return "accuracy"


def family_for(config: ml_collections.ConfigDict) -> Family:
    from albert_jax.finetune_data import GLUE_TASKS

    task = config.task
    if task in GLUE_TASKS:
        return GlueFamily(config)
    if task in ("squad_v1", "squad_v2"):
        return SquadFamily(config)
    if task in ("conll2003", "ner", "token_classification"):
        return TokenFamily(config)
    if task in ("race", "swag", "multiple_choice"):
        return MultipleChoiceFamily(config)
    raise FinetuneError(
        f"unknown task {task!r} (GLUE: {', '.join(GLUE_TASKS)}; squad_v1, squad_v2, "
        "conll2003, race, swag)")


def _limit(items: Sequence, n: int) -> list:
    """The first ``n`` items (all when ``n`` <= 0) as a list."""
    if n and n > 0:
        return [items[i] for i in range(min(n, len(items)))]
    return list(items)


def _split_file(d: ml_collections.ConfigDict, split: str) -> Path:
    key = {"train": "train_file", "validation": "validation_file", "test": "test_file"}.get(split)
    if key is None or not d.get(key):
        raise FinetuneError(f"no file for split {split!r}: set data.{key or 'test_file'}")
    return train.resolve_path(d[key])


# ============================================================================ task + batches
def make_task(family: Family, model: nn.Module) -> train.Task:
    """The :class:`albert_jax.train.Task` of a family: loss normalised by the global count."""

    def init_params(rng):
        return model.init_params(rng)

    def totals(batch):
        return {"count": _count(batch)}

    def loss_fn(params, batch, rng, deterministic, tot):
        out = model.apply(params, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], deterministic=deterministic,
                          rngs=None if deterministic else {"dropout": rng})
        sums = family.loss(out, batch)
        return sums["loss"] / jnp.maximum(tot["count"], 1.0), sums

    def metrics(sums, tot):
        n = jnp.maximum(tot["count"], 1.0)
        out = {"loss": sums["loss"] / n}
        if "correct" in sums:
            out["accuracy"] = sums["correct"] / n
        return out

    return train.Task(model, init_params, loss_fn, totals, metrics)


def _count(batch: dict[str, jax.Array]) -> jax.Array:
    """What the loss is averaged over: labelled rows (tokens for token classification)."""
    if "labels" in batch:
        labels = batch["labels"]
        return jnp.sum((labels > -1).astype(jnp.float32))
    return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)


class Batches:
    """Shuffled, resumable training batches of an :class:`Encoded` split.

    Epoch ``e`` visits the rows in ``permutation(seed, e)`` order, ``global_batch`` at a
    time (a last partial batch is dropped); process ``i`` of ``n`` takes rows
    ``[i*b/n, (i+1)*b/n)`` of each global batch. ``{"epoch", "position"}`` is the state.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> None:
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if self.n < global_batch:
            raise FinetuneError(f"the training split has {self.n} examples, fewer than one "
                                f"batch of {global_batch}")
        self.global_batch, self.seed = global_batch, seed
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        rows = self._perm[self.position + self.offset:
                          self.position + self.offset + self.local]
        self.position += self.global_batch
        return {k: v[rows] for k, v in self.arrays.items()}

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


# ============================================================================ prediction
class Predictor:
    """Jitted, sharded inference of a family's outputs over an :class:`Encoded` split."""

    def __init__(self, family: Family, model: nn.Module, mesh: Mesh, batch_size: int) -> None:
        self.family, self.model, self.mesh, self.batch_size = family, model, mesh, batch_size
        replicated = NamedSharding(mesh, PartitionSpec())

        def step(params, batch):
            out = model.apply(params, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"], deterministic=True)
            return family.outputs(out)

        self._step = jax.jit(step, out_shardings=replicated)

    def __call__(self, params: Any, enc: Encoded) -> dict[str, np.ndarray]:
        n, b = len(enc), self.batch_size
        pc, pi = jax.process_count(), jax.process_index()
        keys = ("input_ids", "attention_mask", "token_type_ids")
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, b):
            rows = np.arange(start, start + b)
            rows = np.where(rows < n, rows, start)  # pad the last batch with a real row
            local = {k: enc.arrays[k][rows][pi * (b // pc):(pi + 1) * (b // pc)] for k in keys}
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
                out = self._step(params, train.device_batch(self.mesh, local))
            for k, v in jax.device_get(out).items():
                chunks.setdefault(k, []).append(np.asarray(v)[: min(b, n - start)])
        return {k: np.concatenate(v) for k, v in chunks.items()}


# ============================================================================ set-up
def base_config(task: str, *, learning_rate: float, batch_size: int, steps: int, warmup: int,
                max_seq_length: int) -> ml_collections.ConfigDict:
    """Every field a fine-tuning config has, with defaults; ``configs/finetune/<task>.py``
    calls this with its published hyperparameters and sets its data paths."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.init = "albert-base-v2"  # a hub name, or a model directory (albert_jax or HF)
    c.seed = 0
    c.global_batch_size = batch_size
    c.eval_batch_size = 64
    c.accumulation_steps = 1  # micro-batches per step (a scan inside the jitted step)
    c.num_train_steps = steps
    c.max_seq_length = max_seq_length
    c.dtype = "float32"  # compute dtype: "bfloat16" on GPU/TPU
    c.remat = "none"
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    c.metric = ""  # dev metric that selects the best checkpoint ("" = the task's default)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # AlbertConfig fields to override on the pretrained config (dropout, runtime options).
    c.model = ml_collections.ConfigDict(dict(
        classifier_dropout_prob=0.1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, scan_layers=True, attention="explicit"))
    c.data = ml_collections.ConfigDict(dict(
        manual_dir="",  # GLUE: folder of local TSV files ("" = the TFDS catalogue)
        tfds_data_dir="",  # "" = TFDS' default
        train_file="", validation_file="", test_file="",  # SQuAD / CoNLL / multiple choice
        label_names=(),  # CoNLL: the tag set ("" = from the training file)
        num_choices=0,  # multiple choice: check every example has this many (0: any)
        doc_stride=128, max_query_length=64,  # SQuAD windows
        eval_split="",  # the split evaluated during training ("" = the task's dev split)
        max_train_examples=0, max_eval_examples=0,  # > 0: use the first N (smoke runs)
    ))
    c.eval = ml_collections.ConfigDict(dict(
        n_best_size=20, max_answer_length=30, null_score_diff_threshold=0.0,  # SQuAD
        tag_scheme="IOB2",  # CoNLL entity scoring: IOB1 | IOB2 | IOBES
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=learning_rate, warmup_steps=warmup,
        end_learning_rate=0.0, power=1.0, weight_decay=0.01, clip_norm=1.0,
        b1=0.9, b2=0.999, eps=1e-6,
    ))
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.eval_every = 1000  # a multiple of log_every; 0 = no dev evaluation
    return c


def validate_config(config: ml_collections.ConfigDict) -> None:
    """One-line :class:`FinetuneError` for what would fail later."""
    family_for(config)
    b, k = config.global_batch_size, config.accumulation_steps
    if b < 1 or k < 1 or b % k:
        raise FinetuneError(f"global_batch_size {b} must be a positive multiple of "
                            f"accumulation_steps {k}")
    if config.num_train_steps < 1:
        raise FinetuneError(f"num_train_steps must be >= 1, got {config.num_train_steps}")
    if config.eval_batch_size < 1:
        raise FinetuneError(f"eval_batch_size must be >= 1, got {config.eval_batch_size}")
    if config.optimizer.name not in ("adamw", "lamb"):
        raise FinetuneError(f"optimizer.name must be 'adamw' or 'lamb', got "
                            f"{config.optimizer.name!r}")
    d = config.data
    for key in ("train_file", "validation_file", "test_file", "manual_dir"):
        value = d.get(key)
        if value and not train.resolve_path(value).exists():
            raise FinetuneError(f"data.{key} {value!r} does not exist "
                                f"({train.resolve_path(value)})")


def _mesh_config_check(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    b, k = config.global_batch_size, config.accumulation_steps
    if (b // k) % dp:
        raise FinetuneError(f"global_batch_size {b} (micro-batch {b // k}) is not divisible by "
                            f"the data-parallel size {dp}")
    if config.eval_batch_size % dp:
        raise FinetuneError(f"eval_batch_size {config.eval_batch_size} is not divisible by the "
                            f"data-parallel size {dp}")


def _model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    overrides = dict(config.model.to_dict()) if "model" in config else {}
    overrides.update(dtype=config.dtype, remat=config.remat)
    return overrides


def load_init(config: ml_collections.ConfigDict, family: Family):
    """(model, boxed params, tokenizer) of ``config.init`` with the family's head."""
    from albert_jax.pretrained import load_pretrained

    try:
        return load_pretrained(config.init, head=family.head, num_labels=family.num_labels(),
                               rng_seed=config.seed, **_model_overrides(config))
    except (OSError, ValueError) as e:
        raise FinetuneError(f"cannot load init model {config.init!r}: "
                            f"{' '.join(str(e).split())}") from None


def _placed(params: Any, shardings: Any) -> Any:
    """Host arrays (identical on every process) -> global arrays in ``shardings``."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i, x=x: np.asarray(x)[i]),
        params, shardings)


def _host(tree: Any) -> Any:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def save_model(dest: Path, params: Any, model_config: AlbertConfig, family: Family,
               tokenizer: Any, run_config: dict, overwrite: bool = True) -> str:
    """An albert_jax model directory with labels and the run config (float32 compute)."""
    from albert_jax.conversion import save_albert_jax

    extra: dict[str, Any] = {}
    if family.label_names and family.head != "multiple_choice":
        extra["id2label"] = {str(i): n for i, n in enumerate(family.label_names)}
        extra["label2id"] = {n: i for i, n in enumerate(family.label_names)}
    if family.head == "sequence_classification" and family.num_labels() == 1:
        extra["problem_type"] = "regression"
    cfg = model_config.replace(dtype="float32", remat="none")
    return save_albert_jax(dest, {"params": params}, cfg, tokenizer=tokenizer,
                           overwrite=overwrite, extra_config=extra,
                           extra_files={CONFIG_FILE: run_config})


def finetune(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tunes ``config.init`` on ``config.task``; resumes from ``workdir``. Returns the
    best dev result ``{"step", "metric", "value"}`` (and the final eval metrics)."""
    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / CONFIG_FILE
    family = family_for(config)
    family.setup()
    run_config = config.to_dict()
    run_config["label_names"] = list(family.label_names) if family.label_names else None
    if jax.process_index() == 0:
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(run_config, indent=2, default=list) + "\n")
        os.replace(tmp, saved)

    mesh = train.build_mesh(config)
    _mesh_config_check(config, mesh)
    model, boxed, tokenizer = load_init(config, family)
    train_enc = family.load(family.splits()[0], tokenizer, training=True)
    eval_split = config.data.get("eval_split") or family.splits()[1]
    eval_enc = family.load(eval_split, tokenizer) if config.eval_every else None
    pc, pi = jax.process_count(), jax.process_index()
    batches = Batches(train_enc.arrays, config.global_batch_size, config.seed, pi, pc)

    task = make_task(family, model)
    tx = train.make_tx(config)
    init_params = nn.meta.unbox(boxed)

    def init_state(shardings: train.TrainState) -> train.TrainState:
        params = _placed(init_params, shardings.params)
        opt_init = jax.jit(tx.init, out_shardings=shardings.opt_state)
        with jax.set_mesh(mesh):
            opt_state = opt_init(params)
        rng = _placed(np.asarray(jax.random.PRNGKey(config.seed + 1)), shardings.rng)
        step = _placed(np.zeros([], np.int32), shardings.step)
        return train.TrainState(step=step, params=params, opt_state=opt_state, rng=rng)

    metric = config.metric or family.default_metric()
    best_path = workdir / BEST_FILE
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    predictor = Predictor(family, model, mesh, config.eval_batch_size)
    last_eval: dict[str, float] = {}

    def eval_fn(_make_step: Callable, state: train.TrainState) -> dict[str, float]:
        nonlocal best
        scores = family.evaluate(predictor(state.params, eval_enc), eval_enc)
        last_eval.clear()
        last_eval.update(scores)
        value = scores.get(metric)
        if value is None:
            raise FinetuneError(f"metric {metric!r} is not computed for {config.task} "
                                f"(have {', '.join(scores)})")
        step = int(jax.device_get(state.step))
        # best.json from a step at or after this one was written by a run that was killed
        # before its next checkpoint: this (deterministic) rerun replays those steps.
        if best is None or value > best["value"] or best["step"] >= step:
            params = _host(state.params)["params"]
            if pi == 0:
                save_model(workdir / BEST_DIR, params, model.config, family, tokenizer,
                           run_config)
                best = {"step": step, "metric": metric, "value": float(value)}
                tmp = best_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(best) + "\n")
                os.replace(tmp, best_path)
            else:
                best = {"step": step, "metric": metric, "value": float(value)}
        return scores

    train.train_loop(
        task, tx, mesh, workdir, batches, num_train_steps=config.num_train_steps,
        seed=config.seed, log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints, accumulation_steps=config.accumulation_steps,
        learning_rate_fn=train.learning_rate_schedule(config),
        eval_fn=eval_fn if eval_enc is not None else None, eval_every=config.eval_every,
        config_dict=run_config, progress=progress, init_state=init_state,
    )
    result = dict(best or {})
    result["eval"] = dict(last_eval)
    return result


# ============================================================================ evaluate/predict
def _run_config(workdir: str | None, model_dir: str | None) -> tuple[ml_collections.ConfigDict,
                                                                     Path]:
    """(run config, model directory) of ``--workdir`` (its best model) or ``--model``."""
    if workdir:
        wd = Path(workdir)
        if not (wd / CONFIG_FILE).is_file():
            raise FinetuneError(f"{wd} is not a fine-tuning workdir (no {CONFIG_FILE})")
        model = wd / BEST_DIR
        if not model.is_dir():
            raise FinetuneError(f"{wd} has no {BEST_DIR}/ model yet (it is written at the "
                                "first evaluation)")
    elif model_dir:
        model = Path(model_dir)
        if not (model / CONFIG_FILE).is_file():
            raise FinetuneError(f"{model} has no {CONFIG_FILE}: not a model fine-tuned by "
                                "albert-jax finetune")
    else:
        raise FinetuneError("give --workdir DIR or --model DIR")
    raw = json.loads((model / CONFIG_FILE).read_text())
    return ml_collections.ConfigDict(raw), model


def _load_finetuned(config: ml_collections.ConfigDict, model_dir: Path):
    from albert_jax.pretrained import load_pretrained

    family = family_for(config)
    family.setup(config.get("label_names") or None)
    overrides = _model_overrides(config)
    overrides.update(dtype="float32", remat="none")
    model, boxed, tokenizer = load_pretrained(model_dir, head=family.head,
                                              num_labels=family.num_labels(), **overrides)
    mesh = train.build_mesh(config)
    params = _placed(nn.meta.unbox(boxed), shd.param_shardings(boxed, mesh))
    return family, model, params, tokenizer, mesh


def evaluate(workdir: str | None = None, model_dir: str | None = None,
             split: str | None = None, path: str | None = None,
             batch_size: int | None = None) -> dict[str, float]:
    """Metrics of the fine-tuned model on a split of its task (default: the dev split)."""
    config, model_path = _run_config(workdir, model_dir)
    family, model, params, tokenizer, mesh = _load_finetuned(config, model_path)
    enc = family.load(split or family.splits()[1], tokenizer, path=path)
    preds = Predictor(family, model, mesh, batch_size or config.eval_batch_size)(params, enc)
    return family.evaluate(preds, enc)


def predict(output: str | os.PathLike, workdir: str | None = None,
            model_dir: str | None = None, split: str | None = None, path: str | None = None,
            batch_size: int | None = None) -> int:
    """Writes one JSON object per input example to ``output`` (atomically); returns the
    number written."""
    config, model_path = _run_config(workdir, model_dir)
    family, model, params, tokenizer, mesh = _load_finetuned(config, model_path)
    enc = family.load(split or "test", tokenizer, path=path)
    preds = Predictor(family, model, mesh, batch_size or config.eval_batch_size)(params, enc)
    records = family.records(preds, enc)
    out = Path(output)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return len(records)


def export(workdir: str | os.PathLike, dest: str | os.PathLike, *, to: str = "albert_jax",
           overwrite: bool = False) -> str:
    """The best model of a fine-tuning workdir -> ``dest`` (albert_jax or Hugging Face)."""
    from albert_jax.conversion import convert

    _, model_path = _run_config(os.fspath(workdir), None)
    out = convert(model_path, dest, to=to, overwrite=overwrite)
    if to == "albert_jax":  # convert keeps the model files; keep the run config too.
        (Path(out) / CONFIG_FILE).write_bytes((model_path / CONFIG_FILE).read_bytes())
    return out


def is_finetune_workdir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


# ============================================================================ command line
def finetune_main(argv: Sequence[str]) -> int:
    """``albert-jax finetune --config FILE --workdir DIR [--config.key=value ...]``."""
    prog = "albert-jax finetune"
    try:
        config, workdir = train.parse_pretrain_args(argv, example="configs/finetune/sst2.py")
        if config.get("distributed", False):
            train.initialize_distributed()
        result = finetune(config, workdir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return train._fail(prog, " ".join(str(e).split()))
    print(json.dumps(result))
    return 0


def _eval_parser(prog: str, output: bool):
    import argparse

    p = argparse.ArgumentParser(prog=prog)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a fine-tuning run (its best model)")
    where.add_argument("--model", help="a model directory written by finetune/export")
    p.add_argument("--split", default=None, help="a split of the task's data "
                   "(default: the dev split for evaluate, test for predict)")
    p.add_argument("--input", default=None, help="a file in the task's format instead")
    p.add_argument("--batch-size", type=int, default=None)
    if output:
        p.add_argument("--output", required=True, help="JSON Lines file to write")
    return p


def evaluate_main(argv: Sequence[str]) -> int:
    """``albert-jax evaluate --workdir DIR | --model DIR [--split S | --input FILE]``."""
    p = _eval_parser("albert-jax evaluate", output=False)
    args = p.parse_args(list(argv))
    try:
        scores = evaluate(args.workdir, args.model, args.split, args.input, args.batch_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return train._fail(p.prog, " ".join(str(e).split()))
    print(json.dumps(scores))
    return 0


def predict_main(argv: Sequence[str]) -> int:
    """``albert-jax predict --workdir DIR | --model DIR [--split S | --input FILE]
    --output FILE.jsonl``."""
    p = _eval_parser("albert-jax predict", output=True)
    args = p.parse_args(list(argv))
    try:
        n = predict(args.output, args.workdir, args.model, args.split, args.input,
                    args.batch_size)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return train._fail(p.prog, " ".join(str(e).split()))
    print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0

