"""Parity of albert_jax.tokenizer.AlbertTokenizer with transformers' slow AlbertTokenizer.

The oracle is transformers 4.x's sentencepiece-based ("slow") AlbertTokenizer built from
the real ``spiece.model``; the known values from docs/albert-reference.md guard against the
oracle itself drifting.
"""

from __future__ import annotations

import logging
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from albert_jax.tokenizer import AlbertTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPIECE = DATA / "albert_spm" / "spiece.model"
SST2_DEV = DATA / "glue" / "SST-2" / "dev.tsv"
COLA_DEV = DATA / "glue" / "CoLA" / "cola_public" / "raw" / "in_domain_dev.tsv"

pytestmark = pytest.mark.skipif(
    not SPIECE.is_file(), reason=f"the real ALBERT spiece.model is absent ({SPIECE})"
)

HARD_CASES = [
    # accents and compatibility characters
    "café",
    "naïve",
    "Ångström",
    "Crème Brûlée à la MODE",
    "e\u0301 (combining acute)",
    "ﬁnance ½ ²,",
    "ＡＢＣ１２３",
    "full-width ＡＢＣ",
    # quotes
    "``quoted'' text",
    "“curly” and ‘single’ quotes",
    "it 's a `` test '' here",
    "don't won't it's 'tis",
    # digits and commas
    "It costs 3.0, right?",
    "The year 1,000, and 2,5, ok",
    "1,2,3,",
    "9,9 and 10,000,000, and ٣, and ²,",
    "version 3.14159, build 2,",
    # scripts, emoji, control and zero-width characters
    "emoji 😀👍🏽 🇫🇷",
    "中文字符 日本語 한국어",
    "ΟΔΟΣ Σ σ ς",
    "x𝚺 𝚺",
    "İstanbul ǅ",
    "ctrl\x00\x01\x1c\x1f\x7f\x85end",
    "zero\u200bwidth\u200cjoin\u200d\ufeffbom",
    "tabs\tand\nnewlines\r\n  and   multiple   spaces",
    "\u3000ideographic\u3000space\xa0nbsp",
    "",
    " ",
    "   \t\n  ",
    # special tokens written in the text
    "[MASK]",
    "[MASK] at the start",
    "in the [MASK] middle",
    "at the end [MASK]",
    "at the end [MASK].",
    "foo[MASK]bar",
    "[MASK][MASK]",
    "[MASK] [MASK]",
    "a [MASK].",
    "a\t\n [MASK]",
    "a\u3000[MASK]",
    "[mask] lowercase",
    "[Mask] mixed case",
    "[CLS] hello [SEP] world",
    "<unk> and <UNK> and <pad> and <PAD>",
    "＜ｕｎｋ＞ ［ＭＡＳＫ］",
    "[[MASK]] [CLS[SEP]] <<unk>>",
    "[MASK [MASK",
    # words
    "self-supervised",
    "Self-Supervised learning",
    "Hello I'm a [MASK] model.",
    "Paris is the [MASK] of France.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "http://example.com/path?q=1&r=2#frag user@example.com",
    "!!!???...,,,;;;",
]

# Known values (docs/albert-reference.md and the slow tokenizer on the real spiece.model).
KNOWN_IDS = {
    "self-supervised": [1119, 8, 8542, 3762, 69],
    "It costs 3.0, right?": [32, 4227, 203, 9, 387, 15, 193, 60],
    "full-width ＡＢＣ": [503, 8, 3976, 43, 96, 5079],
    "The year 1,000, and 2,5, ok": [14, 159, 5925, 15, 17, 172, 15, 264, 15, 5854],
    "Hello I'm a [MASK] model.": [10975, 31, 22, 79, 21, 4, 1061, 9],
    "Paris is the [MASK] of France.": [1162, 25, 14, 4, 16, 714, 9],
}


@pytest.fixture(scope="module")
def tok() -> AlbertTokenizer:
    return AlbertTokenizer(SPIECE)


@pytest.fixture(scope="module")
def oracle():
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    hf = transformers.AlbertTokenizer(vocab_file=str(SPIECE))
    assert not hf.is_fast
    return hf


def _read_sst2() -> list[str]:
    if not SST2_DEV.is_file():
        pytest.skip(f"GLUE SST-2 dev set is absent ({SST2_DEV})")
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    col = header.index("sentence")
    return [line.split("\t")[col] for line in lines[1:] if line]


def _read_cola() -> list[str]:
    if not COLA_DEV.is_file():
        pytest.skip(f"GLUE CoLA dev set is absent ({COLA_DEV})")
    lines = COLA_DEV.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[3] for line in lines if line]


@pytest.fixture(scope="module")
def sst2() -> list[str]:
    return _read_sst2()


@pytest.fixture(scope="module")
def cola() -> list[str]:
    return _read_cola()


@pytest.fixture(scope="module")
def sst2_ids(oracle, sst2) -> list[list[int]]:
    return [oracle.encode(s) for s in sst2]


def _assert_same_encoding(ours: dict, ref, text) -> None:
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert ours[key] == ref[key], (key, text)


# ---------------------------------------------------------------------------- known values
def test_known_values(tok, oracle):
    for text, ids in KNOWN_IDS.items():
        assert tok.encode(text, add_special_tokens=False) == ids, text
        assert tok.encode(text) == [2, *ids, 3], text
        # Fails if the oracle drifts (e.g. a tokenizers-based replacement).
        assert oracle.encode(text, add_special_tokens=False) == ids, text
    assert tok.tokenize("self-supervised") == ["▁self", "-", "super", "vis", "ed"]
    assert tok.tokenize("It costs 3.0, right?")[2:6] == ["▁3", ".", "0", ","]
    assert tok.convert_tokens_to_ids("▁") == 13


def test_properties(tok, oracle):
    assert tok.vocab_size == len(tok) == oracle.vocab_size == 30000
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 1, 2)
    assert (tok.sep_token_id, tok.mask_token_id) == (3, 4)
    assert tok.mask_token == "[MASK]"
    assert tok.all_special_ids == oracle.all_special_ids == [2, 3, 1, 0, 4]
    assert tok.all_special_tokens == oracle.all_special_tokens
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(tok, f"{name}_token_id") == getattr(oracle, f"{name}_token_id")
    assert tok.get_vocab() == {k: v for k, v in oracle.get_vocab().items()}
    assert tok.num_special_tokens_to_add() == 2 and tok.num_special_tokens_to_add(pair=True) == 3


# ---------------------------------------------------------------------------- GLUE parity
@pytest.mark.parametrize("dataset", ["sst2", "cola"])
def test_glue_parity(tok, oracle, dataset, request):
    sentences = request.getfixturevalue(dataset)
    assert len(sentences) == {"sst2": 872, "cola": 527}[dataset]
    batch = tok(sentences)
    for i, s in enumerate(sentences):
        ref = oracle(s)
        assert batch["input_ids"][i] == ref["input_ids"], s
        assert batch["token_type_ids"][i] == ref["token_type_ids"], s
        assert batch["attention_mask"][i] == ref["attention_mask"], s
    # tokenize() and the single-text path agree with the oracle too (a sample keeps it fast).
    for s in sentences[::7]:
        assert tok.tokenize(s) == oracle.tokenize(s), s
        assert tok.encode(s) == oracle.encode(s), s


def test_glue_pairs_parity(tok, oracle, sst2, cola):
    firsts, seconds = sst2[:300], cola[:300]
    ours = tok(firsts, seconds)
    for i, (a, b) in enumerate(zip(firsts, seconds, strict=True)):
        ref = oracle(a, b)
        assert ours["input_ids"][i] == ref["input_ids"], (a, b)
        assert ours["token_type_ids"][i] == ref["token_type_ids"], (a, b)
        assert 1 in ours["token_type_ids"][i]


# ---------------------------------------------------------------------------- hard cases
@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_cases(tok, oracle, text):
    assert tok.tokenize(text) == oracle.tokenize(text)
    _assert_same_encoding(tok(text), oracle(text), text)
    ids = oracle.encode(text)
    assert tok.encode(text) == ids
    assert tok.encode(text, add_special_tokens=False) == oracle.encode(
        text, add_special_tokens=False
    )
    assert tok.preprocess_text(text) == oracle.preprocess_text(text)
    for skip in (False, True):
        for clean in (False, True):
            assert tok.decode(ids, skip, clean) == oracle.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean
            )


def test_mask_handling(tok):
    # [MASK] swallows whitespace on its left only, and is never lowercased.
    assert tok.tokenize("a [MASK] b") == ["▁a", "[MASK]", "▁b"]
    assert tok.tokenize("foo[MASK]bar") == ["▁fo", "o", "[MASK]", "▁bar"]
    assert tok.encode("[MASK] [MASK]") == [2, 4, 4, 3]
    assert "[MASK]" not in tok.tokenize("[mask]")
    # Lowercasing runs before the special-token split: "<UNK>" becomes the special "<unk>".
    assert tok.encode("<UNK>", add_special_tokens=False) == [1]


def test_fuzz_parity(tok, oracle):
    """Random concatenations of tricky fragments: specials, whitespace, digits, scripts."""
    rng = random.Random(1234)
    frags = [
        "[MASK]", "[mask]", "[CLS]", "[SEP]", "<unk>", "<UNK>", "<pad>", "[", "]", "<", ">",
        "MASK", " ", "  ", "\t", "\n", "\u3000", "\u200b", "\xa0", "a", "B", "é", "e\u0301",
        "3", ",", "1,000,", "9,9", "ΟΔΟΣ", "Σ", "x𝚺", "``", "''", "“", "café", "ＡＢＣ", "😀",
        "中文", "\x00", "\x1c", "İ", "ǅ", "ﬁ", "²,", "٣,", "self-supervised", "3.0,", ".", "?",
        " n't", " 's",
    ]  # fmt: skip
    texts = ["".join(rng.choice(frags) for _ in range(rng.randint(0, 8))) for _ in range(400)]
    batch = tok(texts)["input_ids"]
    for text, ids in zip(texts, batch, strict=True):
        assert tok.tokenize(text) == oracle.tokenize(text), repr(text)
        ref = oracle.encode(text)
        assert ids == ref, repr(text)
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == oracle.decode(
            ref, clean_up_tokenization_spaces=False
        ), repr(text)


# ---------------------------------------------------------------------------- truncation
TRUNC_TEXTS = ["", "hi", "hello world", "the quick brown fox jumps", "a b c d e f g h i j k"]
TRUNCATIONS = [True, "longest_first", "only_first", "only_second", False, "do_not_truncate", None]
MAX_LENGTHS = [None, 0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 16, 40]


def test_truncation_single(tok, oracle):
    for text in TRUNC_TEXTS:
        for truncation in TRUNCATIONS:
            for max_length in MAX_LENGTHS:
                kwargs = dict(truncation=truncation, max_length=max_length)
                _assert_same_encoding(tok(text, **kwargs), oracle(text, **kwargs), (text, kwargs))
                assert tok.encode(text, **kwargs) == oracle.encode(text, **kwargs)


def test_truncation_pairs(tok, oracle):
    for a in TRUNC_TEXTS:
        for b in TRUNC_TEXTS:
            for truncation in TRUNCATIONS:
                for max_length in MAX_LENGTHS:
                    kwargs = dict(truncation=truncation, max_length=max_length)
                    ref = oracle(a, b, **kwargs)
                    _assert_same_encoding(tok(a, b, **kwargs), ref, (a, b, kwargs))
                    assert tok.encode(a, b, **kwargs) == ref["input_ids"]


def test_truncation_without_specials(tok, oracle):
    for a, b in [("hello world", "the quick brown fox jumps"), ("a b c d e f g h i j k", "hi")]:
        for truncation in ("longest_first", "only_first", "only_second"):
            for max_length in (1, 3, 5, 8):
                kw = dict(add_special_tokens=False, truncation=truncation, max_length=max_length)
                _assert_same_encoding(tok(a, b, **kw), oracle(a, b, **kw), (a, b, kw))
                _assert_same_encoding(tok(a, **kw), oracle(a, **kw), (a, kw))


def test_truncation_batch(tok, oracle):
    texts, pairs = TRUNC_TEXTS, TRUNC_TEXTS[::-1]
    for truncation in ("longest_first", "only_first", "only_second"):
        for max_length in (3, 6, 9):
            kw = dict(truncation=truncation, max_length=max_length)
            _assert_same_encoding(tok(texts, pairs, **kw), oracle(texts, pairs, **kw), kw)
            _assert_same_encoding(tok(texts, **kw), oracle(texts, **kw), kw)


def test_truncation_impossible_logs_and_keeps_input(tok, caplog):
    # "hello world" has 2 pieces: removing 2 would empty it, so nothing is removed.
    with caplog.at_level(logging.ERROR, logger="albert_jax.tokenizer"):
        out = tok("hello world", truncation=True, max_length=2)
    assert out["input_ids"] == [2, 10975, 126, 3]
    assert "We need to remove 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="albert_jax.tokenizer"):
        out = tok("hello world", truncation="only_second", max_length=3)
    assert out["input_ids"] == [2, 10975, 126, 3]
    assert "only_second" in caplog.text


# ---------------------------------------------------------------------------- padding
PAD_TEXTS = ["short", "a somewhat longer sentence, with 1,000, commas.", "[MASK] it", ""]


@pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")
@pytest.mark.parametrize("return_tensors", [None, "np"])
def test_padding_matches_oracle(tok, oracle, return_tensors):
    pairs = ["x", "", "second segment here", "y z"]
    cases = 0
    for padding in (True, "longest", "max_length", False):
        for max_length in (None, 5, 16, 24):
            for multiple in (None, 8):
                for truncation in (None, True, False):
                    for text_pair in (None, pairs):
                        kw = dict(
                            padding=padding,
                            max_length=max_length,
                            pad_to_multiple_of=multiple,
                            truncation=truncation,
                            return_tensors=return_tensors,
                        )
                        try:
                            ref = oracle(PAD_TEXTS, text_pair, **kw)
                        except ValueError:
                            with pytest.raises(ValueError):
                                tok(PAD_TEXTS, text_pair, **kw)
                            continue
                        if return_tensors == "np" and ref["input_ids"].dtype == object:
                            # Ragged: transformers returns an object array, we raise.
                            with pytest.raises(ValueError, match="one length"):
                                tok(PAD_TEXTS, text_pair, **kw)
                            continue
                        ours = tok(PAD_TEXTS, text_pair, **kw)
                        cases += 1
                        for key in ("input_ids", "token_type_ids", "attention_mask"):
                            if return_tensors == "np":
                                assert isinstance(ours[key], np.ndarray)
                                assert ours[key].dtype == np.int32
                                np.testing.assert_array_equal(ours[key], ref[key], err_msg=str(kw))
                            else:
                                assert ours[key] == ref[key], (key, kw)
    assert cases > 20


def test_padding_single_text(tok, oracle):
    for kw in (
        dict(padding="max_length", max_length=12),
        dict(padding=True, pad_to_multiple_of=8),
        dict(padding="max_length", max_length=16, pad_to_multiple_of=8, truncation=True),
    ):
        _assert_same_encoding(tok("hello there", **kw), oracle("hello there", **kw), kw)
        ours = tok("hello there", "pair", return_tensors="np", **kw)
        ref = oracle("hello there", "pair", return_tensors="np", **kw)
        assert ours["input_ids"].shape == ref["input_ids"].shape  # [1, L]
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            np.testing.assert_array_equal(ours[key], ref[key])


def test_model_max_length(oracle):
    """Truncation / max_length padding without max_length fall back to model_max_length."""
    transformers = sys.modules["transformers"]
    ref = transformers.AlbertTokenizer(vocab_file=str(SPIECE), model_max_length=8)
    ours = AlbertTokenizer(SPIECE, model_max_length=8)
    texts = ["a b c d e f g h i j k l", "hi"]
    for kw in (
        dict(truncation=True),
        dict(padding="max_length"),
        dict(padding="max_length", truncation="only_first"),
        dict(padding=True, truncation=True, max_length=5),
    ):
        _assert_same_encoding(ours(texts, **kw), ref(texts, **kw), kw)
        _assert_same_encoding(ours(texts, texts[::-1], **kw), ref(texts, texts[::-1], **kw), kw)


def test_padding_values(tok):
    out = tok(["a b c", "d"], ["e", "f g h"], padding="max_length", max_length=10)
    # "e" is two pieces ("▁", "e"), "d" too.
    assert out["input_ids"][0] == [2, 21, 334, 272, 3, 13, 62, 3, 0, 0]
    assert out["attention_mask"][0] == [1] * 8 + [0] * 2
    assert out["token_type_ids"][0] == [0] * 5 + [1] * 3 + [0] * 2  # pads get type 0
    assert out["token_type_ids"][1] == [0] * 4 + [1] * 4 + [0] * 2


def test_numpy_errors(tok):
    with pytest.raises(ValueError, match="one length"):
        tok(["a", "a b c d"], return_tensors="np")
    # Equal lengths need no padding.
    out = tok(["a", "b"], return_tensors="np")
    assert out["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="multiple"):
        tok(["a"], padding=True, truncation=True, max_length=10, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="pt")


def test_input_errors(tok):
    with pytest.raises(TypeError):
        tok(["a", "b"], "c")
    with pytest.raises(ValueError, match="batch length"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="longest")
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="shortest")
    with pytest.raises(ValueError, match="strings"):
        tok([1, 2])


# ---------------------------------------------------------------------------- decoding
def test_decode_sst2(tok, oracle, sst2_ids):
    for skip in (False, True):
        for clean in (False, True):
            ours = tok.batch_decode(
                sst2_ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean
            )
            for ids, text in zip(sst2_ids, ours, strict=True):
                ref = oracle.decode(
                    ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean
                )
                assert text == ref, ids


def test_decode_special_tokens(tok, oracle):
    rng = random.Random(7)
    seqs = [
        [2, 10975, 126, 3],
        [2, 21, 4, 334, 3, 4, 4, 3, 0, 0],
        [4],
        [0, 0, 0],
        [],
        [1, 13, 1],
        [13, 13, 9, 4, 13],
    ]
    for _ in range(300):
        n = rng.randint(0, 12)
        seqs.append(
            [rng.randrange(5) if rng.random() < 0.3 else rng.randrange(30000) for _ in range(n)]
        )
    for ids in seqs:
        for skip in (False, True):
            for clean in (False, True):
                kw = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert tok.decode(ids, **kw) == oracle.decode(ids, **kw), ids
    # Our default cleans up tokenization spaces (transformers 4.57's default is not to).
    ids = tok.encode("it 's a test .")
    assert tok.decode(ids) == oracle.decode(ids, clean_up_tokenization_spaces=True)
    assert tok.decode(ids) == "[CLS] it's a test.[SEP]"
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == "[CLS] it 's a test .[SEP]"
    # Ints and numpy inputs.
    assert tok.decode(4) == oracle.decode(4) == "[MASK]"
    assert tok.decode(np.array([2, 10975, 126, 3])) == "[CLS] hello world[SEP]"
    assert tok.batch_decode(np.array([[2, 10975, 3], [2, 126, 3]]), skip_special_tokens=True) == [
        "hello",
        "world",
    ]


def test_convert_ids_and_tokens(tok, oracle, sst2_ids):
    for ids in sst2_ids[:50]:
        assert tok.convert_ids_to_tokens(ids) == oracle.convert_ids_to_tokens(ids)
        assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == (
            oracle.convert_ids_to_tokens(ids, skip_special_tokens=True)
        )
        tokens = oracle.convert_ids_to_tokens(ids)
        assert tok.convert_tokens_to_ids(tokens) == oracle.convert_tokens_to_ids(tokens) == ids
    for i in (0, 1, 2, 3, 4, 13, 29999):
        assert tok.convert_ids_to_tokens(i) == oracle.convert_ids_to_tokens(i)
    assert tok.convert_ids_to_tokens(np.int64(4)) == "[MASK]"
    assert tok.convert_tokens_to_ids("[MASK]") == 4
    assert tok.convert_tokens_to_ids("not-a-piece") == oracle.convert_tokens_to_ids("not-a-piece")
    assert tok.convert_tokens_to_ids([]) == []


def test_special_tokens_mask(tok, oracle):
    a, b = [10975, 126], [21]
    assert tok.get_special_tokens_mask(a) == oracle.get_special_tokens_mask(a)
    assert tok.get_special_tokens_mask(a, b) == oracle.get_special_tokens_mask(a, b)
    full = [2, 10975, 4, 3, 0]
    assert tok.get_special_tokens_mask(full, already_has_special_tokens=True) == (
        oracle.get_special_tokens_mask(full, already_has_special_tokens=True)
    )


# ---------------------------------------------------------------------------- loading / saving
def test_from_pretrained_and_save(tok, oracle, tmp_path, monkeypatch):
    text = "Hello I'm a [MASK] model."
    expected = tok.encode(text)
    assert AlbertTokenizer.from_pretrained(SPIECE).encode(text) == expected
    assert AlbertTokenizer.from_pretrained(str(SPIECE.parent)).encode(text) == expected

    saved = tmp_path / "saved"
    vocab_path, config_path = tok.save_pretrained(saved)
    assert Path(vocab_path).read_bytes() == SPIECE.read_bytes()
    assert Path(config_path).is_file()
    reloaded = AlbertTokenizer.from_pretrained(saved)
    assert reloaded.encode(text) == expected and reloaded.do_lower_case
    # transformers loads the saved directory too.
    assert type(oracle).from_pretrained(str(saved)).encode(text) == expected

    # keep_accents survives a save/load round trip via tokenizer_config.json.
    accents = AlbertTokenizer(SPIECE, keep_accents=True)
    accents.save_pretrained(tmp_path / "accents")
    assert AlbertTokenizer.from_pretrained(tmp_path / "accents").keep_accents

    with pytest.raises(FileNotFoundError):
        AlbertTokenizer.from_pretrained(tmp_path)  # a directory without spiece.model

    # Hub names go through albert_jax.hub.resolve_file (stubbed: no network in tests).
    calls = []

    def resolve_file(name_or_path: str, filename: str) -> str:
        calls.append((name_or_path, filename))
        return str(SPIECE)

    import albert_jax

    fake_hub = types.ModuleType("albert_jax.hub")
    fake_hub.resolve_file = resolve_file
    monkeypatch.setitem(sys.modules, "albert_jax.hub", fake_hub)
    monkeypatch.setattr(albert_jax, "hub", fake_hub, raising=False)
    assert AlbertTokenizer.from_pretrained("albert/albert-base-v2").encode(text) == expected
    assert calls == [("albert/albert-base-v2", "spiece.model")]
    # A tokenizer_config.json in the same snapshot directory is honoured.
    fake_hub.resolve_file = lambda name, filename: str(tmp_path / "accents" / filename)
    assert AlbertTokenizer.from_pretrained("someone/albert-accents").keep_accents


def test_non_default_options(oracle):
    transformers = sys.modules["transformers"]
    text = "  Crème  BRÛLÉE\t[MASK] ΟΔΟΣ 1,000, ok  "
    for kwargs in (
        dict(do_lower_case=False),
        dict(remove_space=False),
        dict(keep_accents=True),
        dict(do_lower_case=False, remove_space=False, keep_accents=True),
    ):
        ref = transformers.AlbertTokenizer(vocab_file=str(SPIECE), **kwargs)
        ours = AlbertTokenizer(SPIECE, **kwargs)
        for t in (text, *HARD_CASES[:20]):
            assert ours.tokenize(t) == ref.tokenize(t), (kwargs, t)
            assert ours.encode(t) == ref.encode(t), (kwargs, t)
