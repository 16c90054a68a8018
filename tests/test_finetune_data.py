"""Fine-tuning inputs: LocalGlue / load_glue on the real SST-2 and CoLA files and synthetic
TSVs, CoNLL token files, multiple-choice JSON Lines, and the errors on bad input."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from albert_jax.training.tasks import datasets as fd
from albert_jax.training.tasks.datasets import (
    DataError,
    load_glue,
    read_conll,
    read_multiple_choice,
)

GLUE = SHARED_DATA / "glue"
SST2 = GLUE / "SST-2"
COLA = GLUE / "CoLA"


def _tsv_rows(path: Path, header: bool) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = [ln.rstrip("\r").split("\t") for ln in lines if ln.strip()]
    return rows[1:] if header else rows


def _write(path: Path, rows: list[list[str]] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else "\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _no_leftovers(data_dir: Path) -> None:
    """TFDS prepares into incomplete.* dirs; none may survive a failure."""
    assert not [p for p in data_dir.rglob("*") if p.name.startswith("incomplete")]


# ---------------------------------------------------------------------------- real GLUE files


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory) -> Path:
    if not (SST2 / "dev.tsv").exists() or not (COLA / "cola_public").exists():
        pytest.skip(f"local GLUE files absent ({GLUE})")
    return tmp_path_factory.mktemp("tfds")


def test_sst2_real_files(real_data_dir):
    dev = load_glue("sst2", "validation", manual_dir=SST2, data_dir=real_data_dir)
    rows = _tsv_rows(SST2 / "dev.tsv", header=True)
    assert len(dev) == len(rows) == 872
    assert dev.label_names == ("negative", "positive")
    assert (dev.num_labels, dev.is_regression) == (2, False)
    for i in (0, -1):
        ex = dev.examples[i]
        assert ex["text_a"] == rows[i][0]  # as written, trailing space included
        assert ex["label"] == int(rows[i][1])
        assert ex["text_b"] == ""
    assert dev.examples[-1]["idx"] == 871  # file order: idx == position
    assert [e["idx"] for e in dev.examples[10:13]] == [10, 11, 12]

    test = load_glue("sst2", "test", manual_dir=SST2, data_dir=real_data_dir)
    rows = _tsv_rows(SST2 / "test.tsv", header=True)
    assert len(test) == len(rows)
    assert test.examples[0]["text_a"] == rows[0][1]
    assert {e["label"] for e in test.examples[:50]} == {-1}


def test_sst2_real_train(real_data_dir):
    # Measured: the 67k-line train file prepares in ~5 s (all 3 splits are prepared at once,
    # by the first load_glue above); reloading is instant.
    t = time.perf_counter()
    train = load_glue("sst2", "train", manual_dir=SST2, data_dir=real_data_dir)
    assert time.perf_counter() - t < 20
    rows = _tsv_rows(SST2 / "train.tsv", header=True)
    assert len(train) == len(rows) == 67349
    for i in (0, -1):
        assert train.examples[i]["text_a"] == rows[i][0]
        assert train.examples[i]["label"] == int(rows[i][1])


def test_cola_raw_layout(real_data_dir):
    # manual_dir is CoLA/ holding cola_public/raw/in_domain_{train,dev}.tsv (no test file).
    dev = load_glue("cola", "validation", manual_dir=COLA, data_dir=real_data_dir)
    rows = _tsv_rows(COLA / "cola_public" / "raw" / "in_domain_dev.tsv", header=False)
    assert len(dev) == len(rows) == 527
    assert dev.label_names == ("unacceptable", "acceptable")
    for i in (0, -1):
        assert dev.examples[i]["text_a"] == rows[i][3]
        assert dev.examples[i]["label"] == int(rows[i][1])
    assert len(load_glue("cola", "train", manual_dir=COLA, data_dir=real_data_dir)) == 8551
    with pytest.raises(DataError, match=r"no test\.tsv"):
        load_glue("cola", "test", manual_dir=COLA, data_dir=real_data_dir)


# ---------------------------------------------------------------------------- synthetic GLUE

MNLI_TRAIN = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV = [*MNLI_TRAIN[:11], "label2", "label3", "label4", "label5", "gold_label"]
STSB = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]


def _mnli_row(i: int, n: int, label: str | None) -> list[str]:
    row = [
        str(i),
        "p",
        "q",
        "fiction",
        "(bp)",
        "(bp)",
        "(p)",
        "(p)",
        f"premise {i}",
        f"hypothesis {i}",
    ]
    return row + [label or ""] * (n - len(row)) if label else row


def test_mnli_layout(tmp_path):
    d = tmp_path / "glue" / "MNLI"  # manual_dir is the GLUE root
    labels = ["neutral", "entailment", "contradiction"]
    _write(d / "train.tsv", [MNLI_TRAIN] + [_mnli_row(i, 12, labels[i % 3]) for i in range(5)])
    _write(
        d / "dev_matched.tsv", [MNLI_DEV] + [_mnli_row(i, 16, "contradiction") for i in range(3)]
    )
    _write(d / "dev_mismatched.tsv", [MNLI_DEV] + [_mnli_row(i, 16, "neutral") for i in range(2)])
    _write(d / "test_matched.tsv", [MNLI_TRAIN[:10]] + [_mnli_row(i, 10, None) for i in range(4)])
    kw = dict(manual_dir=tmp_path / "glue", data_dir=tmp_path / "tfds")
    train = load_glue("mnli", "train", **kw)
    assert train.label_names == ("entailment", "neutral", "contradiction")
    assert [e["label"] for e in train.examples] == [1, 0, 2, 1, 0]
    assert train.examples[3] == {
        "idx": 3,
        "text_a": "premise 3",
        "text_b": "hypothesis 3",
        "label": 1,
    }
    matched = load_glue("mnli", "validation_matched", **kw)
    assert [e["label"] for e in matched.examples] == [2, 2, 2]
    mismatched = load_glue("mnli", "validation_mismatched", **kw)
    assert [e["label"] for e in mismatched.examples] == [1, 1]
    test = load_glue("mnli", "test_matched", **kw)
    assert [e["label"] for e in test.examples] == [-1] * 4
    assert test.examples[0]["text_b"] == "hypothesis 0"
    with pytest.raises(DataError, match=r"no test_mismatched\.tsv"):
        load_glue("mnli", "test_mismatched", **kw)
    with pytest.raises(DataError, match="no split 'validation'"):
        load_glue("mnli", "validation", **kw)


def test_rte_layout_and_rebuild_on_change(tmp_path):
    d = tmp_path / "RTE"
    header = ["index", "sentence1", "sentence2", "label"]
    _write(
        d / "train.tsv", [header, ["0", "a", "b", "entailment"], ["1", "c", "d", "not_entailment"]]
    )
    _write(d / "test.tsv", [header[:3], ["0", "e", "f"]])
    kw = dict(manual_dir=d, data_dir=tmp_path / "tfds")
    train = load_glue("rte", "train", **kw)
    assert list(train.examples) == [
        {"idx": 0, "text_a": "a", "text_b": "b", "label": 0},
        {"idx": 1, "text_a": "c", "text_b": "d", "label": 1},
    ]
    assert load_glue("rte", "test", **kw).examples[0]["label"] == -1
    # Edited files are prepared again, not served stale.
    _write(d / "train.tsv", [header, ["0", "x", "y", "1"]])
    train = load_glue("rte", "train", **kw)
    assert list(train.examples) == [{"idx": 0, "text_a": "x", "text_b": "y", "label": 1}]


def test_killed_preparation_leftovers_are_swept(tmp_path):
    """TFDS prepares into incomplete.* and removes it on any normal exit; a kill -9 leaves it.
    The next preparation (under its lock) removes it, prepared data and all else kept."""
    d = tmp_path / "RTE"
    header = ["index", "sentence1", "sentence2", "label"]
    _write(d / "train.tsv", [header, ["0", "a", "b", "entailment"]])
    kw = dict(manual_dir=d, data_dir=tmp_path / "tfds")
    assert len(load_glue("rte", "train", **kw)) == 1
    config_dir = tmp_path / "tfds" / "local_glue" / "rte"
    prepared = sorted(p.name for p in config_dir.iterdir())
    stale = config_dir / "incomplete.ABC123_1.0.0"  # as a killed run leaves it
    (stale / "local_glue-train.array_record-00000-of-00001").parent.mkdir()
    (stale / "local_glue-train.array_record-00000-of-00001").write_bytes(b"partial")
    _write(d / "train.tsv", [header, ["0", "x", "y", "1"], ["1", "z", "w", "1"]])  # rebuild
    assert [e["text_a"] for e in load_glue("rte", "train", **kw).examples] == ["x", "z"]
    assert not stale.exists()
    assert sorted(p.name for p in config_dir.iterdir()) == prepared


def test_stsb_float_labels(tmp_path):
    d = tmp_path / "STS-B"
    meta = ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none"]
    _write(
        d / "train.tsv",
        [
            STSB,
            [*meta, "A plane is taking off.", "An air plane is taking off.", "5.000"],
            [*meta, "A man plays.", "A cat sleeps.", "0.25"],
        ],
    )
    _write(d / "test.tsv", [STSB[:-1], [*meta, "s1", "s2"]])
    kw = dict(manual_dir=d, data_dir=tmp_path / "tfds")
    train = load_glue("stsb", "train", **kw)
    assert train.is_regression and train.label_names is None and train.num_labels == 1
    assert [e["label"] for e in train.examples] == [5.0, 0.25]
    assert isinstance(train.examples[0]["label"], float)
    assert train.examples[0]["text_b"] == "An air plane is taking off."
    assert load_glue("stsb", "test", **kw).examples[0]["label"] == -1.0


def test_cola_glue_distribution_layout(tmp_path):
    d = tmp_path / "CoLA"
    _write(d / "train.tsv", [["gj04", "1", "", "Good one."], ["gj04", "0", "*", "Bad one."]])
    _write(d / "dev.tsv", [["gj04", "0", "*", "Dev one."]])
    _write(d / "test.tsv", [["index", "sentence"], ["0", "Test one."]])
    kw = dict(manual_dir=d, data_dir=tmp_path / "tfds")
    assert [e["label"] for e in load_glue("cola", "train", **kw).examples] == [1, 0]
    assert load_glue("cola", "validation", **kw).examples[0]["text_a"] == "Dev one."
    assert load_glue("cola", "test", **kw).examples[0] == {
        "idx": 0,
        "text_a": "Test one.",
        "text_b": "",
        "label": -1,
    }


def test_mrpc_bom_and_crlf(tmp_path):
    d = tmp_path / "MRPC"
    d.mkdir()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = ["1\t1\t2\tHe said.\tHe stated.", "0\t3\t4\tA cat.\tA dog."]
    (d / "train.tsv").write_bytes(("\ufeff" + "\r\n".join([header, *rows]) + "\r\n").encode())
    train = load_glue("mrpc", "train", manual_dir=d, data_dir=tmp_path / "tfds")
    assert train.label_names == ("not_equivalent", "equivalent")
    assert list(train.examples) == [
        {"idx": 0, "text_a": "He said.", "text_b": "He stated.", "label": 1},
        {"idx": 1, "text_a": "A cat.", "text_b": "A dog.", "label": 0},
    ]


@pytest.mark.parametrize(
    "task, rows, line, problem",
    [
        ("sst2", [["sentence", "label"], ["good", "1"], ["no tab here"]], 3, "missing columns"),
        ("sst2", [["sentence", "label"], ["good", "1"], ["bad", "7"]], 3, "label '7'"),
        ("sst2", [["sentence", "label"], ["", "0"], ["bad", "x"]], 3, "label 'x'"),
        (
            "stsb",
            [STSB, [*"0abcdef", "s1", "s2", "1.5"], [*"1abcdef", "s1", "s2", "high"]],
            3,
            "score 'high' is not a finite number",
        ),
        ("sst2", [["text", "label"], ["good", "1"]], 1, "header lacks column"),
    ],
)
def test_bad_tsv_names_file_and_line(tmp_path, task, rows, line, problem):
    bad = _write(tmp_path / "in" / "dev.tsv", rows)
    data_dir = tmp_path / "tfds"
    with pytest.raises(DataError) as e:
        load_glue(task, "validation", manual_dir=bad.parent, data_dir=data_dir)
    assert f"{bad}, line {line}: " in str(e.value) and problem in str(e.value)
    _no_leftovers(data_dir)


def test_failed_preparation_is_redone_after_the_fix(tmp_path):
    manual = tmp_path / "in"
    data_dir = tmp_path / "tfds"
    _write(manual / "train.tsv", [["sentence", "label"], ["fine", "1"], ["fine", "0"]])
    _write(manual / "dev.tsv", [["sentence", "label"], ["ok", "0"], ["broken", "2"]])
    with pytest.raises(DataError, match=r"dev\.tsv, line 3: label '2'"):
        load_glue("sst2", "train", manual_dir=manual, data_dir=data_dir)
    _no_leftovers(data_dir)
    assert not (data_dir / "local_glue" / "sst2" / "1.0.0" / "dataset_info.json").exists()
    _write(manual / "dev.tsv", [["sentence", "label"], ["ok", "0"], ["fixed", "positive"]])
    dev = load_glue("sst2", "validation", manual_dir=manual, data_dir=data_dir)
    assert [e["label"] for e in dev.examples] == [0, 1]
    assert len(load_glue("sst2", "train", manual_dir=manual, data_dir=data_dir)) == 2


def test_unknown_task(tmp_path):
    with pytest.raises(DataError, match="unknown GLUE task 'sst'"):
        load_glue("sst", "train", manual_dir=tmp_path)


# ---------------------------------------------------------------------------- TFDS catalogue


def test_catalogue_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_glue("sst2", "validation", data_dir=tmp_path)
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "\n" not in msg
    assert "glue/sst2 could not be loaded" in msg and "manual_dir" in msg


def test_catalogue_records_are_normalised(monkeypatch):
    # The catalogue's glue/mnli names its texts premise/hypothesis and returns bytes.
    source = [{"idx": 4, "premise": b"p", "hypothesis": "h\u00e9".encode(), "label": 2}]
    monkeypatch.setattr(fd, "_catalogue_source", lambda spec, split, data_dir: source)
    split = load_glue("mnli", "validation_matched")
    assert split.examples[0] == {"idx": 4, "text_a": "p", "text_b": "h\u00e9", "label": 2}
    assert split.num_labels == 3


# ---------------------------------------------------------------------------- CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O"""  # no final blank line


def test_read_conll(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL, encoding="utf-8")
    split = read_conll(path)
    assert split.sentences == [
        (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    ]
    assert split.label_names == ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER")
    assert split.num_labels == 6 and len(split) == 3
    assert split.label_ids(["B-PER", "O"]) == [4, 0]
    chunks = read_conll(path, tag_column=2)  # the chunk tags
    assert chunks.sentences[1][1] == ["B-NP", "I-NP"]


def test_read_conll_given_label_names(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a O\nb B-X\n\nc I-X\n", encoding="utf-8")
    names = ("O", "B-X", "I-X")
    assert read_conll(path, label_names=names).label_names == names
    with pytest.raises(DataError) as e:
        read_conll(path, label_names=("O", "B-X"))
    assert f"{path}, line 4: tag 'I-X'" in str(e.value)


def test_read_conll_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a O\n\ncaf\u00e9 O\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 3: not UTF-8"):
        read_conll(path)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("a O\nb\n", 2, "1 column(s), expected 2"),  # a tag missing
        ("\n\nlonely\n", 3, "1 column(s), expected at least 2"),
        ("a x O\nb O\n", 2, "2 column(s), expected 3"),
    ],
)
def test_read_conll_bad_columns(tmp_path, text, line, problem):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert f"{path}, line {line}: {problem}" in str(e.value)


# ---------------------------------------------------------------------------- multiple choice


def _jsonl(path: Path, *objs: object) -> Path:
    lines = [o if isinstance(o, str) else json.dumps(o) for o in objs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_multiple_choice(tmp_path):
    path = _jsonl(
        tmp_path / "mc.jsonl",
        {
            "id": "s1",
            "context": "He opens the door.",
            "question": "He",
            "choices": ["walks in.", "flies.", "sings.", "melts."],
            "label": 0,
        },
        "",
        {"context": "", "question": "2+2?", "choices": ["3", "4", "5", "6"]},  # test: no label
        {
            "id": "r1",
            "article": "Once...",
            "question": "Who?",
            "options": list("wxyz"),
            "answer": "C",
        },
        {
            "id": "high1.txt",
            "article": "Text.",
            "questions": ["Q1?", "Q2?"],
            "options": [list("abcd"), list("efgh")],
            "answers": ["B", "D"],
        },
    )
    examples = read_multiple_choice(path, num_choices=4)
    assert examples[0] == {
        "id": "s1",
        "context": "He opens the door.",
        "question": "He",
        "choices": ["walks in.", "flies.", "sings.", "melts."],
        "label": 0,
    }
    assert examples[1]["id"] == "mc.jsonl:3" and examples[1]["label"] == -1
    assert examples[2] == {
        "id": "r1",
        "context": "Once...",
        "question": "Who?",
        "choices": list("wxyz"),
        "label": 2,
    }
    assert [(e["id"], e["question"], e["label"]) for e in examples[3:]] == [
        ("high1.txt-0", "Q1?", 1),
        ("high1.txt-1", "Q2?", 3),
    ]


@pytest.mark.parametrize(
    "line, problem, kwargs",
    [
        ('{"context": "c", "question": "q", "choices": ["a"], ', "malformed JSON", {}),
        (
            {"context": "c", "question": "q", "choices": ["a", "b"], "label": 2},
            "label 2 is out of range for 2 choices",
            {},
        ),
        (
            {"article": "c", "question": "q", "options": ["a", "b"], "answer": "E"},
            "label 'E' is out of range",
            {},
        ),
        ({"context": "c", "choices": ["a", "b"], "label": 0}, "missing field 'question'", {}),
        (
            {"context": "c", "question": "q", "choices": ["a", "b"], "label": 0},
            "2 choices, expected 4",
            {"num_choices": 4},
        ),
        ([1, 2], "expected a JSON object", {}),
        (
            {"article": "c", "questions": ["q"], "options": ["abcd"], "answers": ["A"]},
            "choices must be a non-empty list of strings",
            {},
        ),
    ],
)
def test_read_multiple_choice_errors(tmp_path, line, problem, kwargs):
    good = {"context": "c", "question": "q", "choices": ["a", "b", "c", "d"], "label": 1}
    path = _jsonl(tmp_path / "mc.jsonl", good, line)
    with pytest.raises(DataError) as e:
        read_multiple_choice(path, **kwargs)
    assert f"{path}, line 2: " in str(e.value) and problem in str(e.value)
