"""FillMask against transformers' fill-mask pipeline on the same random weights."""

from __future__ import annotations

import pytest
from conftest import SPIECE, TINY, require_spiece, save_hf_model

from albert_jax.inference import FillMask, bucket_for

TEXTS = [
    "where is my [MASK]?",
    "The capital of France is [MASK].",
    "[MASK] is a word at the start",
    "a much longer sentence, with commas, numbers like 3,000 and more words, ends with a "
    "[MASK] and then keeps going for a while so that it lands in a longer length bucket.",
    "Hello I'm a [MASK] model.",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    require_spiece()
    directory = tmp_path_factory.mktemp("fill_mask")
    # A large initializer range spreads the logits so that the ranking is well separated.
    config = dict(TINY, initializer_range=0.5, max_position_embeddings=64)
    torch_model = save_hf_model(directory, "AlbertForMaskedLM", seed=3, **config)
    return directory, torch_model


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    import transformers

    _, torch_model = checkpoint
    # transformers 4.57 defaults to no clean-up for a tokenizer built from a vocab file
    # ("where is my phone ?"); albert_jax cleans up like the published model page
    # ("where is my phone?"), so the oracle is asked to do the same.
    tokenizer = transformers.AlbertTokenizer(vocab_file=str(SPIECE),
                                             clean_up_tokenization_spaces=True)
    return transformers.pipeline("fill-mask", model=torch_model, tokenizer=tokenizer,
                                 device="cpu")


@pytest.fixture(scope="module")
def fill_mask(checkpoint):
    return FillMask.from_pretrained(str(checkpoint[0]), batch_size=4,
                                    length_buckets=(16, 32, 64))


def assert_same(ours: list[dict], theirs: list[dict]) -> None:
    assert [r["token"] for r in ours] == [r["token"] for r in theirs]
    assert [r["token_str"] for r in ours] == [r["token_str"] for r in theirs]
    assert [r["sequence"] for r in ours] == [r["sequence"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-5, (a, b)
    scores = [r["score"] for r in ours]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("text", TEXTS)
def test_single_input_matches_pipeline(fill_mask, pipeline, text):
    assert_same(fill_mask(text), pipeline(text))


def test_list_input_and_top_k_match_pipeline(fill_mask, pipeline):
    ours = fill_mask(TEXTS, top_k=8)
    theirs = pipeline(TEXTS, top_k=8)
    assert len(ours) == len(TEXTS)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == 8
        assert_same(a, b)


def test_targets_match_pipeline(fill_mask, pipeline):
    # "▁father" is a vocabulary piece; "father" and "zyzzyva" are not and take their first
    # piece, as the pipeline does.
    targets = ["▁father", "▁mother", "city", "zyzzyva"]
    for text in TEXTS[:2]:
        assert_same(fill_mask(text, targets=targets), pipeline(text, targets=targets))
    assert_same(fill_mask(TEXTS[0], targets=targets, top_k=2),
                pipeline(TEXTS[0], targets=targets, top_k=2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no mask here", "has no \\[MASK\\] tokens"),
        ("two [MASK] and [MASK]", "has 2 \\[MASK\\] tokens"),
        ("", "has no \\[MASK\\] tokens"),
    ],
)
def test_inputs_need_exactly_one_mask(fill_mask, text, message):
    with pytest.raises(ValueError, match=message):
        fill_mask(text)


def test_error_names_the_bad_input_of_a_list(fill_mask):
    with pytest.raises(ValueError, match="input 1 'oops' has no"):
        fill_mask(["a [MASK] b", "oops", "c [MASK]"])


def test_too_long_input(fill_mask):
    with pytest.raises(ValueError, match="tokens long; the model accepts at most 64"):
        fill_mask("word " * 80 + "[MASK]")


def test_compiles_once_per_bucket(checkpoint):
    fm = FillMask.from_pretrained(str(checkpoint[0]), batch_size=4,
                                  length_buckets=(16, 32, 64))
    texts = [("x " * n) + "[MASK]" for n in (3, 40, 5, 20, 4, 6, 35, 2, 9)]
    fm(texts)
    # Lengths fall in buckets 16, 32 and 64; row counts 4 and 1 (nine inputs, four a batch).
    assert fm.num_traces <= 4
    before = fm.num_traces
    fm(list(reversed(texts)))
    fm(texts[:4])
    assert fm.num_traces == before  # The same shapes again: no new compilation.


def test_bucket_for():
    assert bucket_for(1, (16, 32)) == 16
    assert bucket_for(16, (16, 32)) == 16
    assert bucket_for(17, (16, 32)) == 32
    with pytest.raises(ValueError):
        bucket_for(33, (16, 32))
