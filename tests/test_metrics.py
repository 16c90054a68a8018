"""Metrics against their references: scikit-learn, scipy.stats, seqeval, hand-computed SQuAD."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_precision
from seqeval.metrics import recall_score as seq_recall
from seqeval.metrics.sequence_labeling import get_entities

from albert_jax import metrics

# The references warn on undefined scores (0/0) and constant inputs; those are tested cases.
pytestmark = pytest.mark.filterwarnings("ignore")

APPROX = dict(rel=1e-12, abs=1e-12)


def _random_labels(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n)


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_f1_mcc_random(seed):
    for k in (2, 3, 5):
        y, p = _random_labels(seed * 10 + k, 50 + 17 * seed, k)
        assert metrics.accuracy(y, p) == pytest.approx(
            sklearn.metrics.accuracy_score(y, p), **APPROX
        )
        for avg in ("macro", "micro"):
            ref = sklearn.metrics.f1_score(y, p, average=avg)
            assert metrics.f1(y, p, average=avg) == pytest.approx(ref, **APPROX)
        if k == 2:
            for pos in (0, 1):
                ref = sklearn.metrics.f1_score(y, p, pos_label=pos)
                assert metrics.f1(y, p, pos_label=pos) == pytest.approx(ref, **APPROX)
        ref = sklearn.metrics.matthews_corrcoef(y, p)
        assert metrics.matthews_corrcoef(y, p) == pytest.approx(ref, **APPROX)


def test_f1_fixed_values():
    y = [1, 1, 0, 0, 1]
    p = [1, 0, 0, 1, 1]  # tp 2, fp 1, fn 1 -> 4 / 6
    assert metrics.f1(y, p) == pytest.approx(2 / 3)
    assert metrics.accuracy(y, p) == pytest.approx(0.6)
    # Macro over classes present only in predictions: class 2 gets F1 0.
    y, p = [0, 1, 1, 0], [0, 1, 2, 0]
    assert metrics.f1(y, p, average="macro") == pytest.approx(
        sklearn.metrics.f1_score(y, p, average="macro")
    )
    assert metrics.f1(y, p, average="macro") == pytest.approx((1 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize(
    ("y", "p"),
    [
        ([1, 0, 1, 0], [0, 0, 0, 0]),  # no positive predicted
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # no positive anywhere (0/0)
        ([0, 0, 0, 0], [1, 0, 0, 0]),  # positives only predicted
        ([1, 1, 1], [1, 1, 1]),  # one class, the positive one
        ([0, 1, 0], [1, 0, 1]),  # all wrong
    ],
)
def test_f1_mcc_edge_cases(y, p):
    assert metrics.f1(y, p) == sklearn.metrics.f1_score(y, p)
    for avg in ("macro", "micro"):
        assert metrics.f1(y, p, average=avg) == pytest.approx(
            sklearn.metrics.f1_score(y, p, average=avg), **APPROX
        )
    assert metrics.matthews_corrcoef(y, p) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(y, p), **APPROX
    )


def test_f1_string_labels_and_errors():
    y = ["pos", "neg", "pos", "neg"]
    p = ["pos", "pos", "neg", "neg"]
    assert metrics.f1(y, p, pos_label="pos") == sklearn.metrics.f1_score(y, p, pos_label="pos")
    with pytest.raises(ValueError, match="classes"):
        metrics.f1([0, 1, 2], [0, 1, 1])  # binary on 3 classes (sklearn raises too)
    with pytest.raises(ValueError, match="pos_label"):
        metrics.f1(y, p)  # pos_label=1 is not a class
    with pytest.raises(ValueError, match="average"):
        metrics.f1([0, 1], [0, 1], average="weighted")
    with pytest.raises(ValueError, match="length"):
        metrics.accuracy([0, 1], [0, 1, 1])


def test_mcc_constant_prediction_is_zero():
    assert metrics.matthews_corrcoef([0, 1, 2, 1], [1, 1, 1, 1]) == 0.0
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0


# ----------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("seed", range(5))
def test_pearson_spearman_random(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, **APPROX)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, **APPROX)
    # Heavy ties (STS-B-like 0..5 scores in steps of 0.5).
    xt = rng.integers(0, 11, 60) / 2
    yt = np.clip(xt + rng.integers(-2, 3, 60) / 2, 0, 5)
    assert metrics.spearman(xt, yt) == pytest.approx(
        scipy.stats.spearmanr(xt, yt).statistic, **APPROX
    )
    assert metrics.pearson(xt, yt) == pytest.approx(
        scipy.stats.pearsonr(xt, yt).statistic, **APPROX
    )


def test_spearman_ties_fixed():
    x = [1, 2, 2, 3, 3, 3]
    y = [6, 5, 5, 4, 1, 2]
    # Average ranks: x -> 1, 2.5, 2.5, 5, 5, 5; y -> 6, 4.5, 4.5, 3, 1, 2.
    ref = scipy.stats.pearsonr([1, 2.5, 2.5, 5, 5, 5], [6, 4.5, 4.5, 3, 1, 2]).statistic
    assert metrics.spearman(x, y) == pytest.approx(ref, **APPROX)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, **APPROX)
    assert metrics.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_correlation_constant_input_is_nan():
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(scipy.stats.pearsonr([1.0, 1, 1], [1.0, 2, 3]).statistic)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.pearson([1.0], [2.0])


# ----------------------------------------------------------------------------- dispatcher


def test_compute():
    y, p = _random_labels(7, 80, 2)
    out = metrics.compute(["accuracy", "f1", "mcc", "f1_macro"], y, p)
    assert list(out) == ["accuracy", "f1", "mcc", "f1_macro"]
    assert out["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(y, p))
    assert out["f1"] == pytest.approx(sklearn.metrics.f1_score(y, p))
    assert out["mcc"] == pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
    assert out["f1_macro"] == pytest.approx(sklearn.metrics.f1_score(y, p, average="macro"))
    x = np.linspace(0, 1, 20)
    z = x**3
    reg = metrics.compute(("pearson", "spearman", "pearson_spearman_avg"), x, z)
    assert reg["spearman"] == pytest.approx(1.0)
    assert reg["pearson"] == pytest.approx(scipy.stats.pearsonr(x, z).statistic)
    assert reg["pearson_spearman_avg"] == pytest.approx((reg["pearson"] + 1.0) / 2)
    assert metrics.compute("accuracy", [1, 0], [1, 1]) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="'bleu'"):
        metrics.compute(["accuracy", "bleu"], y, p)


# ----------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("the theater", "theater"),  # "the" only as a whole word
        ("An apple a day", "apple day"),
        ("Anna and Ann", "anna and ann"),
        ("  Hello,   World!  ", "hello world"),
        ("U.S.A.", "usa"),
        ("rock-'n'-roll", "rocknroll"),
        ("the-end", "theend"),  # punctuation goes first, so "the" is no longer a word
        ("a", ""),
        ("THE\tEnd\n", "end"),
        ("Café «Noir»", "café «noir»"),  # only ASCII punctuation is removed
    ],
)
def test_squad_normalize(text, normalized):
    assert metrics.squad_normalize_answer(text) == normalized


def test_squad_em_f1():
    assert metrics.squad_exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert metrics.squad_f1("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert metrics.squad_exact_match("Denver", ["Denver Broncos"]) == 0.0
    # 1 common token; precision 1/1, recall 1/2 -> F1 = 2/3.
    assert metrics.squad_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # pred "in 1990s denver" (3 tokens) vs gold "denver colorado 1990s usa" (4): common 2
    # -> P 2/3, R 1/2, F1 = 2*(1/3)/(7/6) = 4/7.
    assert metrics.squad_f1("In the 1990s, Denver", ["Denver, Colorado 1990s (USA)"]) == (
        pytest.approx(4 / 7)
    )
    # Repeated tokens count with multiplicity: common(a a b, a b b) = {a:1, b:1}.
    assert metrics.squad_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert metrics.squad_f1("nothing shared", ["Denver"]) == 0.0


def test_squad_max_over_ground_truths():
    golds = ["Denver Broncos", "The Broncos", "Broncos of Denver"]
    assert metrics.squad_exact_match("broncos", golds) == 1.0  # "the broncos" -> "broncos"
    assert metrics.squad_f1("broncos", golds) == 1.0
    # best F1: vs "Denver Broncos" 2/3 (pred "Denver Broncos team": P 2/3 R 1 -> 0.8).
    assert metrics.squad_f1("Denver Broncos team", golds) == pytest.approx(0.8)
    assert metrics.squad_exact_match("Denver Broncos team", golds) == 0.0


def test_squad_v1_vs_v2_empty():
    # v1.1: an empty prediction scores F1 0 even against an empty gold; EM compares strings.
    assert metrics.squad_f1("", [""]) == 0.0
    assert metrics.squad_exact_match("", [""]) == 1.0
    with pytest.raises(ValueError, match="ground-truth"):
        metrics.squad_f1("x", [])
    # v2.0: no gold answer (empty list, or only golds that normalise to "") = unanswerable.
    for golds in ([], [""], ["", "the"]):
        assert metrics.squad_exact_match("", golds, squad_v2=True) == 1.0
        assert metrics.squad_f1("", golds, squad_v2=True) == 1.0
        assert metrics.squad_f1("The.", golds, squad_v2=True) == 1.0  # normalises to ""
        assert metrics.squad_exact_match("Denver", golds, squad_v2=True) == 0.0
        assert metrics.squad_f1("Denver", golds, squad_v2=True) == 0.0
    # Answerable in v2.0: an empty prediction scores 0; empty golds are dropped from the max.
    assert metrics.squad_f1("", ["Denver"], squad_v2=True) == 0.0
    assert metrics.squad_exact_match("", ["", "Denver"], squad_v2=True) == 0.0
    assert metrics.squad_f1("Denver", ["", "Denver"], squad_v2=True) == 1.0


def _dataset(v2: bool):
    qa = [
        {"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "the Broncos"}]},
        {"id": "q2", "answers": [{"text": "Santa Clara, California"}]},
        {"id": "q3", "answers": [{"text": "2016"}]},
    ]
    if v2:
        for q in qa:
            q["is_impossible"] = False
        qa.append({"id": "q4", "answers": [], "is_impossible": True})
    return [
        {"title": "SB50", "paragraphs": [{"context": "...", "qas": qa[:2]}]},
        {"title": "Other", "paragraphs": [{"context": "...", "qas": qa[2:]}]},
    ]


def test_squad_scores_v1(capsys):
    preds = {"q1": "Broncos", "q2": "Santa Clara"}  # q3 missing -> 0
    # q1: EM 1 (vs "the Broncos"), F1 1; q2: EM 0, F1 P 1 R 2/3 -> 0.8; q3: 0.
    out = metrics.squad_scores(preds, _dataset(v2=False))
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * 1.8 / 3)
    assert "q3" in capsys.readouterr().err
    full = metrics.squad_scores(
        {**preds, "q3": "2016"}, {"version": "1.1", "data": _dataset(False)}
    )
    assert full == pytest.approx({"exact_match": 200 / 3, "f1": 100 * 2.8 / 3})


def test_squad_scores_v2():
    preds = {"q1": "Broncos", "q2": "Santa Clara", "q3": "2016", "q4": ""}
    out = metrics.squad_scores(preds, _dataset(v2=True))  # v2 detected from is_impossible
    assert out == pytest.approx({"exact_match": 75.0, "f1": 100 * 3.8 / 4})
    out = metrics.squad_scores({**preds, "q4": "Levi's Stadium"}, _dataset(v2=True))
    assert out == pytest.approx({"exact_match": 50.0, "f1": 100 * 2.8 / 4})
    with pytest.raises(ValueError, match="ground-truth"):
        metrics.squad_scores(preds, _dataset(v2=True), squad_v2=False)


# ----------------------------------------------------------------------------- entities

IOB2_TRUE = [
    ["B-PER", "I-PER", "O", "B-LOC"],  # entity at the end of the sentence
    ["B-PER", "B-PER", "I-PER", "O", "O"],  # adjacent entities of one type
    ["O", "O", "O"],  # all O
    ["B-ORG", "I-ORG", "I-ORG", "B-MISC", "O", "B-LOC", "I-LOC"],
    ["B-LOC"],
]
IOB2_PRED = [
    ["B-PER", "I-PER", "O", "I-LOC"],  # I- after O begins an entity (same span as B-LOC)
    ["B-PER", "I-PER", "I-PER", "O", "B-MISC"],  # merged the adjacent pair; spurious MISC
    ["O", "I-PER", "O"],  # I- after O in an all-O sentence
    ["B-ORG", "I-ORG", "I-LOC", "I-MISC", "O", "B-LOC", "O"],  # type changes inside
    ["O"],
]
# IOB1: entities start with I-; B- only separates two adjacent entities of the same type.
IOB1_TRUE = [
    ["I-PER", "I-PER", "O", "I-LOC"],
    ["I-PER", "B-PER", "I-PER", "O", "O"],
    ["O", "O", "O"],
    ["I-ORG", "I-ORG", "I-ORG", "I-MISC", "O", "I-LOC", "I-LOC"],
    ["I-LOC"],
]
IOB1_PRED = [
    ["I-PER", "I-PER", "O", "I-LOC"],
    ["I-PER", "I-PER", "I-PER", "O", "I-MISC"],
    ["O", "I-PER", "B-PER"],  # adjacent same-type entities at the end
    ["I-ORG", "I-LOC", "I-LOC", "I-MISC", "O", "I-LOC", "O"],
    ["B-LOC"],  # B- at the start (invalid IOB1, still an entity)
]


def _seqeval(y_true, y_pred):
    return {
        "precision": seq_precision(y_true, y_pred),
        "recall": seq_recall(y_true, y_pred),
        "f1": seq_f1(y_true, y_pred),
    }


@pytest.mark.parametrize(
    ("scheme", "y_true", "y_pred"),
    [("IOB2", IOB2_TRUE, IOB2_PRED), ("IOB1", IOB1_TRUE, IOB1_PRED)],
)
def test_entity_scores_fixed(scheme, y_true, y_pred):
    for seq in y_true + y_pred:
        assert metrics.entity_spans(seq, scheme) == set(get_entities(seq))
    ours = metrics.entity_scores(y_true, y_pred, scheme)
    ref = _seqeval(y_true, y_pred)
    assert ours == pytest.approx(ref, **APPROX)
    assert 0 < ours["f1"] < 1  # the cases are neither trivial nor hopeless


def test_entity_spans_by_hand():
    spans = metrics.entity_spans(["B-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG", "B-ORG"])
    assert spans == {("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4), ("ORG", 5, 5), ("ORG", 6, 6)}
    assert metrics.entity_spans(["I-PER", "B-PER", "I-PER"], "IOB1") == {
        ("PER", 0, 0),
        ("PER", 1, 2),
    }
    assert metrics.entity_spans(["O", "O"]) == set()
    assert metrics.entity_spans([]) == set()
    # Types may contain hyphens (only the first "-" separates the prefix).
    assert metrics.entity_spans(["B-GPE-X", "I-GPE-X"]) == {("GPE-X", 0, 1)}
    # IOBES works with the same chunker.
    iobes = ["S-PER", "B-LOC", "E-LOC", "B-ORG", "I-ORG", "E-ORG"]
    assert metrics.entity_spans(iobes, "IOBES") == set(get_entities(iobes))


def test_entity_scores_hand_values():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"]]
    y_pred = [["B-PER", "O", "O", "B-LOC"]]  # 1 of 2 predicted correct, 1 of 2 gold found
    assert metrics.entity_scores(y_true, y_pred) == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    )
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert metrics.entity_scores([["O", "O"]], [["O", "O"]]) == zero  # seqeval: 0/0 -> 0
    assert _seqeval([["O", "O"]], [["O", "O"]]) == zero
    assert metrics.entity_scores([["B-PER"]], [["O"]]) == zero


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
def test_entity_scores_random(seed, scheme):
    rng = np.random.default_rng(seed)
    vocab = ["O", "O", "O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "LOC", "ORG")]
    y_true, y_pred = [], []
    for _ in range(40):
        n = int(rng.integers(0, 12))
        y_true.append([vocab[i] for i in rng.integers(0, len(vocab), n)])
        # Predictions: gold with some tags replaced, so that many entities match.
        pred = list(y_true[-1])
        for j in range(n):
            if rng.random() < 0.2:
                pred[j] = vocab[int(rng.integers(0, len(vocab)))]
        y_pred.append(pred)
    for seq in y_true:
        assert metrics.entity_spans(seq, scheme) == set(get_entities(seq))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _seqeval(y_true, y_pred)
    assert metrics.entity_scores(y_true, y_pred, scheme) == pytest.approx(ref, **APPROX)


def test_entity_errors():
    with pytest.raises(ValueError, match="IOB2 tag"):
        metrics.entity_spans(["S-PER"], "IOB2")  # E-/S- belong to IOBES
    with pytest.raises(ValueError, match="tag"):
        metrics.entity_spans(["PER"])
    with pytest.raises(ValueError, match="scheme"):
        metrics.entity_spans(["O"], "BILOU")
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_scores([["O", "O"]], [["O"]])
