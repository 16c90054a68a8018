"""Evaluation metrics for fine-tuning: GLUE-style classification/regression, SQuAD, NER.

Pure numpy/python at runtime. Each metric reproduces a reference implementation exactly,
including its edge cases (the tests compare against them):

- ``accuracy``, ``f1``, ``matthews_corrcoef``: ``sklearn.metrics`` (``zero_division`` = 0).
- ``pearson``, ``spearman``: ``scipy.stats.pearsonr`` / ``spearmanr`` (NaN on constant input).
- ``squad_*``: the official SQuAD ``evaluate-v1.1.py`` / ``evaluate-v2.0.py`` scripts.
- ``entity_spans``, ``entity_scores``: ``seqeval``'s default (conlleval-compatible) mode.
"""

from __future__ import annotations

import collections
import math
import re
import string
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "compute",
    "entity_scores",
    "entity_spans",
    "f1",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "squad_exact_match",
    "squad_f1",
    "squad_normalize_answer",
    "squad_scores",
]


def _pair(labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattens both inputs to 1-D arrays of the same, non-zero length."""
    a = np.asarray(labels).reshape(-1)
    b = np.asarray(predictions).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labels and predictions differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("labels and predictions are empty")
    return a, b


def _div(num: float, den: float) -> float:
    # sklearn / seqeval with zero_division=0 (the value behind their default "warn").
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------------------
# Classification and regression
# --------------------------------------------------------------------------------------


def accuracy(labels: Any, predictions: Any) -> float:
    """Fraction of equal entries; ``labels`` and ``predictions`` are class ids of shape [N]."""
    a, b = _pair(labels, predictions)
    return float(np.mean(a == b))


def _f1_counts(a: np.ndarray, b: np.ndarray, label: Any) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) for one class."""
    tp = int(np.sum((a == label) & (b == label)))
    fp = int(np.sum((a != label) & (b == label)))
    fn = int(np.sum((a == label) & (b != label)))
    return tp, fp, fn


def f1(labels: Any, predictions: Any, average: str = "binary", pos_label: Any = 1) -> float:
    """F1 score like ``sklearn.metrics.f1_score`` (undefined scores count as 0).

    Args:
      labels, predictions: class ids, shape [N].
      average: "binary" (F1 of ``pos_label``; the inputs may hold at most two classes),
        "macro" (unweighted mean of per-class F1 over the classes present in either input)
        or "micro" (F1 of the pooled counts; equals accuracy for single-label data).
      pos_label: the positive class for "binary".
    """
    a, b = _pair(labels, predictions)
    classes = np.union1d(a, b)
    if average == "binary":
        # sklearn's checks: binary needs <= 2 classes, and pos_label among them if there are 2.
        if len(classes) > 2:
            raise ValueError(f"average='binary' but the data has {len(classes)} classes")
        if pos_label not in classes.tolist() and len(classes) == 2:
            raise ValueError(f"pos_label={pos_label!r} is not a class of {classes.tolist()}")
        tp, fp, fn = _f1_counts(a, b, pos_label)
        return _div(2 * tp, 2 * tp + fp + fn)
    if average == "macro":
        scores = []
        for c in classes:
            tp, fp, fn = _f1_counts(a, b, c)
            scores.append(_div(2 * tp, 2 * tp + fp + fn))
        return float(np.mean(scores))
    if average == "micro":
        totals = np.sum([_f1_counts(a, b, c) for c in classes], axis=0)
        tp, fp, fn = (int(t) for t in totals)
        return _div(2 * tp, 2 * tp + fp + fn)
    raise ValueError(f"unknown average {average!r}; expected 'binary', 'macro' or 'micro'")


def matthews_corrcoef(labels: Any, predictions: Any) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K) like sklearn; 0.0 when undefined.

    ``labels`` and ``predictions`` are class ids of shape [N].
    """
    a, b = _pair(labels, predictions)
    classes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ai, bi = inverse[: a.size], inverse[a.size :]
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.float64)  # float64: the products overflow int32
    np.add.at(confusion, (ai, bi), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    n_correct = np.trace(confusion)
    n = confusion.sum()
    # Same order of operations as sklearn, so the results agree to the last bit or so.
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def _float_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(x, y)
    if a.size < 2:
        raise ValueError("correlation needs at least 2 values")
    return a.astype(np.float64), b.astype(np.float64)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # scipy returns NaN (with a ConstantInputWarning) when either input is constant.
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    xm = x - x.mean()
    ym = y - y.mean()
    # Scale by the max first (as scipy does) so that the norms cannot overflow.
    xm /= np.max(np.abs(xm))
    ym /= np.max(np.abs(ym))
    r = np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym))
    return float(np.clip(r, -1.0, 1.0))


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation of two [N] arrays, like ``scipy.stats.pearsonr(x, y).statistic``.

    NaN when either input is constant or holds a non-finite value (as scipy).
    """
    return _pearson(*_float_pair(x, y))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; ties get the mean of their positions (``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.concatenate([starts[1:], [x.size]])
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of start+1 .. end
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two [N] arrays, like ``scipy.stats.spearmanr``.

    Ties get average ranks; NaN when either input is constant or holds a non-finite value.
    """
    a, b = _float_pair(x, y)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    return _pearson(_average_ranks(a), _average_ranks(b))


def _pearson_spearman_avg(x: Any, y: Any) -> float:
    return (pearson(x, y) + spearman(x, y)) / 2.0


_METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": lambda a, b: f1(a, b, average="macro"),
    "f1_micro": lambda a, b: f1(a, b, average="micro"),
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "pearson_spearman_avg": _pearson_spearman_avg,
}


def compute(metric_names: Sequence[str], labels: Any, predictions: Any) -> dict[str, float]:
    """Evaluates the named metrics on ``labels`` / ``predictions`` (shape [N]).

    Names: accuracy, f1 (binary, positive class 1), f1_macro, f1_micro, mcc, pearson,
    spearman, pearson_spearman_avg. Predictions are class ids (already arg-maxed) for the
    classification metrics and real values for the correlations.
    """
    if isinstance(metric_names, str):  # a lone name would be iterated letter by letter
        metric_names = [metric_names]
    unknown = [m for m in metric_names if m not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; expected one of {sorted(_METRICS)}")
    return {m: _METRICS[m](labels, predictions) for m in metric_names}


# --------------------------------------------------------------------------------------
# SQuAD (official evaluate-v1.1.py and evaluate-v2.0.py)
# --------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize_answer(s: str) -> str:
    """Lower-cases, drops ASCII punctuation, then the words a/an/the, and collapses spaces.

    The order matters and is the official one: punctuation goes before articles, so
    "the-end" -> "theend" keeps its "the", and "a.b" -> "ab".
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(prediction: str, ground_truth: str, squad_v2: bool) -> float:
    pred_tokens = squad_normalize_answer(prediction).split()
    gold_tokens = squad_normalize_answer(ground_truth).split()
    if squad_v2 and (not pred_tokens or not gold_tokens):
        # v2.0: an empty side is a no-answer; F1 is 1 iff both are no-answers.
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _gold_answers(ground_truths: Iterable[str], squad_v2: bool) -> list[str]:
    golds = list(ground_truths)
    if squad_v2:
        # v2.0 drops golds that normalise to nothing; none left means unanswerable, whose
        # only correct answer is the empty string.
        golds = [g for g in golds if squad_normalize_answer(g)] or [""]
    if not golds:
        raise ValueError("no ground-truth answers (an unanswerable question needs squad_v2)")
    return golds


def squad_exact_match(
    prediction: str, ground_truths: Iterable[str], squad_v2: bool = False
) -> float:
    """1.0 if the normalised prediction equals some normalised ground truth, else 0.0.

    With ``squad_v2``, an empty (or all-empty) gold list means unanswerable: 1.0 iff the
    prediction normalises to the empty string.
    """
    norm = squad_normalize_answer(prediction)
    golds = _gold_answers(ground_truths, squad_v2)
    return max(float(norm == squad_normalize_answer(g)) for g in golds)


def squad_f1(prediction: str, ground_truths: Iterable[str], squad_v2: bool = False) -> float:
    """Best bag-of-tokens F1 of the normalised prediction over the ground truths.

    With ``squad_v2``, empty predictions/golds are no-answers (F1 1.0 iff both are).
    """
    golds = _gold_answers(ground_truths, squad_v2)
    return max(_token_f1(prediction, g, squad_v2) for g in golds)


def squad_scores(
    predictions: Mapping[str, str],
    dataset: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    squad_v2: bool | None = None,
) -> dict[str, float]:
    """Official SQuAD exact match and F1, in percent, over every question of ``dataset``.

    Args:
      predictions: question id -> predicted answer text ("" = no answer, for v2.0).
      dataset: the ``data`` list of a SQuAD JSON file (articles -> paragraphs -> qas with
        ``id`` and ``answers``); the whole parsed file (a dict with "data") works too.
      squad_v2: v2.0 rules for unanswerable questions; None = v2.0 iff some question has
        an ``is_impossible`` field.

    Questions without a prediction score 0 (with a warning on stderr), as in v1.1. (The
    official v2.0 script instead leaves them out of its overall average.)
    """
    if isinstance(dataset, Mapping):
        dataset = dataset["data"]
    qas = [
        qa for article in dataset for paragraph in article["paragraphs"] for qa in paragraph["qas"]
    ]
    if not qas:
        raise ValueError("the dataset has no questions")
    if squad_v2 is None:
        squad_v2 = any("is_impossible" in qa for qa in qas)
    exact_match = f1_sum = 0.0
    for qa in qas:
        if qa["id"] not in predictions:
            print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
            continue
        golds = [answer["text"] for answer in qa["answers"]]
        prediction = predictions[qa["id"]]
        exact_match += squad_exact_match(prediction, golds, squad_v2)
        f1_sum += squad_f1(prediction, golds, squad_v2)
    return {"exact_match": 100.0 * exact_match / len(qas), "f1": 100.0 * f1_sum / len(qas)}


# --------------------------------------------------------------------------------------
# Entity-level scores for token classification (seqeval default / conlleval)
# --------------------------------------------------------------------------------------

_SCHEME_PREFIXES = {"IOB1": "BIO", "IOB2": "BIO", "IOBES": "BIOES"}


def _split_tag(tag: str) -> tuple[str, str]:
    # seqeval: prefix = first character, type = text after the first "-" ("_" if none).
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended at the previous token (conlleval's endOfChunk)."""
    if prev_tag in "ES":
        return True
    if prev_tag in "BI" and tag in "BSO":
        return True
    return prev_tag not in "O." and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at the current token (conlleval's startOfChunk)."""
    if tag in "BS":
        return True
    if prev_tag in "ESO" and tag in "EI":  # e.g. an I-X after O begins an entity
        return True
    return tag not in "O." and prev_type != type_  # so does a change of type


def entity_spans(tags: Sequence[str], scheme: str = "IOB2") -> set[tuple[str, int, int]]:
    """Entities of one tag sequence as ``(type, start, end)`` with ``end`` INCLUSIVE.

    The chunking is seqeval's default (conlleval) one, identical for both schemes:
    ``B-X`` always begins an entity, ``I-X`` continues one of type X and otherwise (after
    ``O`` or another type) begins one. IOB2 starts every entity with ``B-``; IOB1 starts
    entities with ``I-`` and uses ``B-`` only for an entity that directly follows another
    of the same type (``I-PER I-PER B-PER`` = two persons). ``scheme`` only sets which tag
    prefixes are allowed ("IOB1"/"IOB2": B, I, O; "IOBES": also E, S).
    """
    if scheme not in _SCHEME_PREFIXES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(_SCHEME_PREFIXES)}")
    allowed = _SCHEME_PREFIXES[scheme]
    spans = set()
    prev_tag, prev_type, begin = "O", "_", 0
    for i, chunk in enumerate([*tags, "O"]):  # the sentinel "O" closes a final entity
        if not chunk or chunk[0] not in allowed or (chunk != "O" and chunk[1:2] != "-"):
            raise ValueError(f"tag {chunk!r} at position {i} is not a {scheme} tag")
        tag, type_ = _split_tag(chunk)
        if _ends(prev_tag, tag, prev_type, type_):
            spans.add((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


def entity_scores(
    true_seqs: Sequence[Sequence[str]],
    pred_seqs: Sequence[Sequence[str]],
    scheme: str = "IOB2",
) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 (0.0 when undefined).

    A predicted entity counts only if its type and both boundaries match a gold one. Equals
    ``seqeval.metrics.{precision,recall,f1}_score(true_seqs, pred_seqs)`` in default mode.
    ``true_seqs`` and ``pred_seqs`` are lists of sentences, each a list of tag strings.
    """
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} gold sentences but {len(pred_seqs)} predicted")
    n_true = n_pred = n_correct = 0
    for i, (true_tags, pred_tags) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(true_tags) != len(pred_tags):
            raise ValueError(
                f"sentence {i}: {len(true_tags)} gold tags, {len(pred_tags)} predicted"
            )
        gold = entity_spans(true_tags, scheme)
        pred = entity_spans(pred_tags, scheme)
        n_true += len(gold)
        n_pred += len(pred)
        n_correct += len(gold & pred)
    precision = _div(n_correct, n_pred)
    recall = _div(n_correct, n_true)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _div(2 * precision * recall, precision + recall),
    }
