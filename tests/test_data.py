"""Tests of the pretraining data pipeline: the TFDS corpus builder and the example stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env

tfds = pytest.importorskip("tensorflow_datasets")

from albert_jax.training import pretrain_data as data  # noqa: E402
from albert_jax.training.corpus_builder import (  # noqa: E402
    LocalTextCorpus,
    LocalTextCorpusConfig,
    split_sentences,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPIECE = SHARED_DATA / "albert_spm" / "spiece.model"
GUTENBERG = SHARED_DATA / "corpus" / "gutenberg_nltk"

L, P = 128, 20


def _prepare(manual_dir: Path, data_dir: Path, **config) -> dict:
    builder = LocalTextCorpus(
        data_dir=str(data_dir), config=LocalTextCorpusConfig(**config), file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder.as_data_source()


def _records(source) -> dict[str, list[str]]:
    out = {}
    for i in range(len(source)):
        r = source[i]
        out[data._as_text(r["id"])] = data.document_sentences(r)
    return out


# ----------------------------------------------------------------------------- builder
def test_split_sentences():
    text = 'Mr. Smith came. "Is it so?" she asked! It was 5 p.m. Then J. Doe left. end'
    assert split_sentences(text) == [
        "Mr. Smith came.",
        '"Is it so?" she asked!',
        "It was 5 p.m. Then J. Doe left. end",
    ]


def test_corpus_preparation_never_imports_tensorflow(tmp_path):
    """Preparing and reading a corpus needs no TensorFlow (checked in a fresh interpreter:
    other tests import it for their oracles, e.g. Google's TF checkpoints)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("First one. Second one.\n\nDoc two.\n")
    script = (
        "import sys\n"
        "import tensorflow_datasets as tfds\n"
        "from albert_jax.training.corpus_builder import LocalTextCorpus, LocalTextCorpusConfig\n"
        f"b = LocalTextCorpus(data_dir={str(tmp_path / 'd')!r}, file_format='array_record',\n"
        "                    config=LocalTextCorpusConfig(name='t'))\n"
        "b.download_and_prepare(download_config=tfds.download.DownloadConfig(\n"
        f"    manual_dir={str(tmp_path / 'docs')!r}))\n"
        "assert len(b.as_data_source()['train']) > 0\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=child_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_builder_tiny_corpus_both_formats(tmp_path):
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "a.txt").write_bytes(b"First one.\r\nSecond one.\r\n\r\nDoc two.\r\n")
    (lines / "b.txt").write_bytes("Caf\xe9 cr\xe8me.\nNa\xefve line.\n".encode("latin-1"))
    (lines / "held.txt").write_text("Held out.\n\nAlso held.\n", encoding="utf-8")
    (lines / "notes.md").write_text("not read\n")
    ds = _prepare(
        lines, tmp_path / "d", name="t_lines", text_format="lines", validation_files=("held*",)
    )
    assert _records(ds["train"]) == {
        "a.txt:0": ["First one.", "Second one."],
        "a.txt:1": ["Doc two."],
        "b.txt:0": ["Café crème.", "Naïve line."],
    }
    assert _records(ds["validation"]) == {"held.txt:0": ["Held out."], "held.txt:1": ["Also held."]}

    prose = tmp_path / "prose"
    prose.mkdir()
    (prose / "crlf.txt").write_bytes(
        b"It was a dark\r\nnight. The end came!\r\n\r\n  CHAPTER II\r\n\r\nMrs. Jones wept.\r\n"
    )
    (prose / "latin.txt").write_bytes("Fa\xe7ade here. Ol\xe9 there.".encode("latin-1"))
    ds = _prepare(prose, tmp_path / "d", name="t_prose", text_format="paragraphs")
    assert set(ds) == {"train"}
    assert _records(ds["train"]) == {
        "crlf.txt:0": ["It was a dark night.", "The end came!", "CHAPTER II", "Mrs. Jones wept."],
        "latin.txt:0": ["Façade here.", "Olé there."],
    }


# ----------------------------------------------------------------------------- real corpus
@pytest.fixture(scope="module")
def tokenizer():
    if not SPIECE.exists():
        pytest.skip(f"the real ALBERT spiece.model is absent ({SPIECE})")
    from albert_jax.tokenizer import AlbertTokenizer

    return AlbertTokenizer(SPIECE)


@pytest.fixture(scope="module")
def gutenberg(tmp_path_factory):
    """The gutenberg corpus prepared with two held-out books: (source splits, file names)."""
    if not GUTENBERG.is_dir():
        pytest.skip(f"the gutenberg corpus is absent ({GUTENBERG})")
    d = tmp_path_factory.mktemp("tfds")
    ds = _prepare(GUTENBERG, d, name="gutenberg", validation_files=("shakespeare-macbeth*",))
    return ds, sorted(p.name for p in GUTENBERG.glob("*.txt"))


@pytest.fixture(scope="module")
def train_docs(gutenberg, tokenizer):
    source = gutenberg[0]["train"]
    return source, [data.tokenize_document(data.document_sentences(r), tokenizer) for r in source]


def test_gutenberg_prepares(gutenberg):
    ds, names = gutenberg
    train, val = _records(ds["train"]), _records(ds["validation"])
    assert set(val) == {"shakespeare-macbeth.txt:0"}
    assert set(train) == {f"{n}:0" for n in names if "macbeth" not in n}
    moby = train["melville-moby_dick.txt:0"]  # the CRLF file
    assert not any("\r" in s for s in moby) and len(moby) > 5000
    caesar = " ".join(train["shakespeare-caesar.txt:0"])  # the latin-1 file
    assert "\ufffd" not in caesar
    assert train["austen-emma.txt:0"][:2] == ["[Emma by Jane Austen 1816]", "VOLUME I"]


def _dataset(train_docs, tokenizer, **kw):
    source, docs = train_docs
    args = dict(max_seq_length=L, max_predictions_per_seq=P, batch_size=8, seed=0)
    args.update(kw)
    return data.PretrainingDataset(source, tokenizer, tokenized_documents=docs, **args)


def _unmask(batch):
    """Original ids: input_ids with the masked positions restored. [B, L]"""
    ids = batch["input_ids"].copy()
    rows, cols = np.nonzero(batch["masked_weights"])
    ids[rows, batch["masked_positions"][rows, cols]] = batch["masked_ids"][rows, cols]
    return ids


def test_example_invariants(train_docs, tokenizer):
    ds = _dataset(train_docs, tokenizer, batch_size=64)
    for _ in range(4):
        b = next(ds)
        assert {k: v.shape for k, v in b.items()} == {
            "input_ids": (64, L),
            "attention_mask": (64, L),
            "token_type_ids": (64, L),
            "masked_positions": (64, P),
            "masked_ids": (64, P),
            "masked_weights": (64, P),
            "sop_label": (64,),
        }
        assert b["masked_weights"].dtype == np.float32 and b["input_ids"].dtype == np.int32
        orig = _unmask(b)
        for i in range(64):
            n = int(b["attention_mask"][i].sum())
            assert (b["attention_mask"][i, :n] == 1).all() and (b["input_ids"][i, n:] == 0).all()
            seps = np.flatnonzero(orig[i, :n] == data.SEP_ID)
            assert orig[i, 0] == data.CLS_ID and len(seps) == 2 and seps[1] == n - 1
            assert 1 < seps[0] < n - 2  # both segments non-empty
            types = b["token_type_ids"][i]
            assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : n] == 1).all()
            assert (types[n:] == 0).all()
            inner = orig[i, 1:n][orig[i, 1:n] < data.NUM_SPECIAL_IDS]  # <unk> is text
            assert np.isin(inner, [data.SEP_ID, data.UNK_ID]).all()
            k = int(b["masked_weights"][i].sum())
            assert (b["masked_weights"][i, :k] == 1).all() and (
                b["masked_weights"][i, k:] == 0
            ).all()
            pos = b["masked_positions"][i, :k]
            assert k >= 1 and (np.diff(pos) > 0).all() and (pos < n).all()
            assert (b["masked_positions"][i, k:] == 0).all() and (b["masked_ids"][i, k:] == 0).all()
            assert (orig[i, pos] >= data.NUM_SPECIAL_IDS).all()  # never specials / padding
            assert (b["masked_ids"][i, :k] == orig[i, pos]).all()
            unmasked = np.setdiff1d(np.arange(L), pos)
            assert (b["input_ids"][i, unmasked] == orig[i, unmasked]).all()
            replaced = b["input_ids"][i, pos]
            assert ((replaced == data.MASK_ID) | (replaced >= data.NUM_SPECIAL_IDS)).all()


def test_masking_statistics(train_docs, tokenizer):
    ds = _dataset(train_docs, tokenizer, batch_size=500, seed=1)
    batches = [next(ds) for _ in range(8)]  # 4000 examples
    b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
    orig = _unmask(b)
    maskable = ((orig >= data.NUM_SPECIAL_IDS) & (b["attention_mask"] > 0)).sum(1)
    n_masked = b["masked_weights"].sum(1)
    budget = np.minimum(P, np.maximum(1, np.round(0.15 * maskable)))
    assert (n_masked <= budget).all() and n_masked.sum() / budget.sum() > 0.97
    assert abs(n_masked.sum() / maskable.sum() - 0.15) < 0.01

    rows, cols = np.nonzero(b["masked_weights"])
    inp, lab = b["input_ids"][rows, b["masked_positions"][rows, cols]], b["masked_ids"][rows, cols]
    assert abs((inp == data.MASK_ID).mean() - 0.8) < 0.02
    assert abs((inp == lab).mean() - 0.1) < 0.015
    assert abs(((inp != lab) & (inp != data.MASK_ID)).mean() - 0.1) < 0.015
    assert abs(b["sop_label"].mean() - 0.5) < 0.05

    # n-gram lengths, re-masking the original sequences. Realised P(n) sits below 1/n for
    # long n-grams (as in the original): overlapping or over-budget long n-grams are
    # rejected or shortened. Hence the tolerance.
    rng, lengths = np.random.default_rng(0), []
    for row, n in zip(orig, b["attention_mask"].sum(1), strict=True):
        lengths += data.mask_tokens(row[:n], rng, ds.is_word_start, ds.vocab_size, 0.15, P, 3)[3]
    freq = np.bincount(lengths, minlength=4)[1:] / len(lengths)
    assert np.allclose(freq, [6 / 11, 3 / 11, 2 / 11], atol=0.06), freq
    assert freq[0] > freq[1] > freq[2]


def test_determinism(train_docs, tokenizer):
    a = [next(_dataset(train_docs, tokenizer, seed=3)) for _ in range(1)]
    b = [next(_dataset(train_docs, tokenizer, seed=3)) for _ in range(1)]
    c = [next(_dataset(train_docs, tokenizer, seed=4)) for _ in range(1)]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])


def test_resume_across_epochs(train_docs, tokenizer):
    source, docs = train_docs
    small = [docs[i][:60] for i in range(len(docs))]  # short epochs, so resuming crosses one
    kw = dict(
        tokenized_documents=small,
        max_seq_length=64,
        max_predictions_per_seq=10,
        batch_size=16,
        seed=7,
    )
    ref = data.PretrainingDataset(source, tokenizer, **kw)
    epoch_len = ref.examples_in_epoch()
    n_batches = 2 * epoch_len // 16 + 3
    stream, states = [], []
    for _ in range(n_batches):
        states.append(ref.get_state())
        stream.append(next(ref))
    assert ref.epoch >= 2
    for start in (0, 5, epoch_len // 16, n_batches - 4):
        fresh = data.PretrainingDataset(source, tokenizer, **kw)
        fresh.set_state(dict(states[start]))
        for expected in stream[start : start + 4]:
            got = next(fresh)
            for k in expected:
                np.testing.assert_array_equal(got[k], expected[k])
    assert all(isinstance(v, int) for v in states[-1].values())


def test_two_process_sharding(train_docs, tokenizer):
    shards = [_dataset(train_docs, tokenizer, process_index=i, process_count=2) for i in (0, 1)]
    idx = [set(s.document_indices) for s in shards]
    assert not idx[0] & idx[1] and idx[0] | idx[1] == set(range(len(train_docs[0])))
    # Each shard's examples come only from its own documents.
    vocab = [set(np.concatenate([np.concatenate(d) for d in s.documents]).tolist()) for s in shards]
    batches = [next(s) for s in shards]
    assert not np.array_equal(batches[0]["input_ids"], batches[1]["input_ids"])
    for s, b, v in zip(shards, batches, vocab, strict=True):
        ids = _unmask(b)
        words = set(ids[ids >= data.NUM_SPECIAL_IDS].tolist())
        assert words <= v, s.process_index
