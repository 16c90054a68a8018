"""SQuAD preprocessing and decoding: the real dev set round trip and hand-made cases."""

from __future__ import annotations

import itertools
import json
import re
import string
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from albert_jax.tokenizer import AlbertTokenizer
from albert_jax.training.tasks import squad_data as squad
from albert_jax.training.tasks.squad_data import SquadExample, SquadFormatError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPIECE = DATA / "albert_spm" / "spiece.model"
DEV = DATA / "squad" / "dev-v1.1.json.zip"

pytestmark = pytest.mark.skipif(
    not SPIECE.is_file(), reason=f"the real ALBERT spiece.model is absent ({SPIECE})"
)

BIG = 1e4


@pytest.fixture(scope="module")
def tok() -> AlbertTokenizer:
    return AlbertTokenizer(vocab_file=str(SPIECE))


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation (lowercase, no punctuation/articles/extra space)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def one_hot_logits(features, positions: dict[int, tuple[int, int]], length: int):
    """Start/end logits [N, L]: BIG at the given (start, end) per feature index, -BIG elsewhere."""
    start = np.full((len(features), length), -BIG, dtype=np.float32)
    end = start.copy()
    for i, (s, e) in positions.items():
        start[i, s] = BIG
        end[i, e] = BIG
    return start, end


def context_pieces(feature) -> np.ndarray:
    return np.flatnonzero(feature.offsets[:, 0] >= 0)


# ---------------------------------------------------------------------------- real dev set
@pytest.mark.skipif(not DEV.is_file(), reason=f"SQuAD v1.1 dev set absent ({DEV})")
def test_round_trip_dev_set(tok):
    """Gold spans -> one-hot logits -> decode gives back the gold text (EM >= 99%)."""
    t0 = time.perf_counter()
    examples = squad.read_squad(DEV)
    assert len(examples) == 10570
    assert all(ex.answers and not ex.is_impossible for ex in examples)
    features = squad.make_features(
        examples, tok, max_length=384, doc_stride=128, max_query_length=64, is_training=True
    )
    t_features = time.perf_counter() - t0

    # One-hot at the gold span of every feature whose window holds the answer; decode keeps
    # the one where the start piece has max context. max_answer_length is lifted so that
    # long gold answers (some are > 30 pieces) are decodable.
    positions = {
        i: (f.start_position, f.end_position) for i, f in enumerate(features) if f.start_position
    }
    covered = {features[i].example_index for i in positions}
    start, end = one_hot_logits(features, positions, 384)
    preds = squad.decode(features, examples, start, end, max_answer_length=384)
    elapsed = time.perf_counter() - t0

    assert len(covered) >= 0.99 * len(examples), f"only {len(covered)} answers fit a window"
    failures = [
        (examples[k].qid, examples[k].answers[0][0], preds[examples[k].qid])
        for k in sorted(covered)
        if normalize_answer(preds[examples[k].qid]) != normalize_answer(examples[k].answers[0][0])
    ]
    rate = 1 - len(failures) / len(covered)
    msg = (
        f"EM {rate:.4%} over {len(covered)} questions ({len(features)} features, "
        f"features {t_features:.1f}s, total {elapsed:.1f}s); failures (qid, gold, decoded): "
        f"{failures[:10]}"
    )
    print(msg)
    assert rate >= 0.99, msg


@pytest.mark.skipif(not DEV.is_file(), reason=f"SQuAD v1.1 dev set absent ({DEV})")
def test_word_by_word_tokenization_matches_whole_context(tok):
    contexts = sorted({ex.context for ex in squad.read_squad(DEV)})
    cache: dict = {}
    differ = [c[:60] for c in contexts if squad.tokenize_with_offsets(c, tok, cache)[0]
              != tok.tokenize(c)]
    assert not differ, f"{len(differ)} of {len(contexts)} contexts differ: {differ[:3]}"


# ---------------------------------------------------------------------------- offsets
def test_offsets_map_pieces_to_original_text(tok):
    text = "Café  Müller\tsaid ``Hi'' (twice) at 3.0, x\u200by Cafe\u0301 ＡＢＣ"
    pieces, offsets = squad.tokenize_with_offsets(text, tok)
    assert pieces == tok.tokenize(text)
    spans = {p: text[s:e] for p, (s, e) in zip(pieces, offsets, strict=True) if e > s}
    assert spans["▁cafe"] in ("Café", "Cafe\u0301")
    assert spans["▁muller"] == "Müller"
    assert spans["hi"] == "Hi"
    assert spans["▁abc"] == "ＡＢＣ"
    # Spans are ordered, non-overlapping, and a bare "▁" has an empty span.
    for (s0, e0), (s1, _) in itertools.pairwise(offsets):
        assert s0 <= e0 <= s1
    assert all(s == e for p, (s, e) in zip(pieces, offsets, strict=True) if p == "▁")
    assert [text[s:e] for p, (s, e) in zip(pieces, offsets, strict=True) if p == "▁cafe"] == [
        "Café",
        "Cafe\u0301",
    ]


# ---------------------------------------------------------------------------- features
def numbered_context(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))


def test_windows_stride_and_max_context(tok):
    context = numbered_context(60)
    answer = "word40 word41"
    ex = SquadExample("q", "Which?", context, ((answer, context.index(answer)),))
    feats = squad.make_features([ex], tok, max_length=48, doc_stride=16, is_training=True)
    assert len(feats) >= 3
    all_pieces, _ = squad.tokenize_with_offsets(context, tok)
    n_query = len(tok.tokenize("Which?"))
    max_doc = 48 - n_query - 3

    # Structure: [CLS] question [SEP] window [SEP] <pad>...; windows 16 pieces apart.
    for w, f in enumerate(feats):
        assert f.example_index == 0 and f.window_index == w
        assert f.input_ids.shape == (48,) and f.offsets.shape == (48, 2)
        assert f.input_ids[0] == tok.cls_token_id
        assert f.input_ids[n_query + 1] == tok.sep_token_id
        ctx = context_pieces(f)
        assert ctx[0] == n_query + 2
        assert f.input_ids[ctx[-1] + 1] == tok.sep_token_id
        n = int(f.attention_mask.sum())
        assert n == ctx[-1] + 2 and (f.input_ids[n:] == tok.pad_token_id).all()
        assert (f.token_type_ids[: n_query + 2] == 0).all()
        assert (f.token_type_ids[n_query + 2 : n] == 1).all() and (f.token_type_ids[n:] == 0).all()
        first = 16 * w
        assert tuple(f.offsets[ctx[0]]) == squad.tokenize_with_offsets(context, tok)[1][first]
        assert len(ctx) == min(max_doc, len(all_pieces) - first)

    # Each context piece is max-context in exactly one window.
    counts: dict[tuple[int, int], int] = {}
    for f in feats:
        for i in np.flatnonzero(f.token_is_max_context):
            key = tuple(f.offsets[i])
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == len(all_pieces) and set(counts.values()) == {1}

    # The answer is not in the first window (-> CLS) but is in a later one.
    assert (feats[0].start_position, feats[0].end_position) == (0, 0)
    inside = [f for f in feats if f.start_position]
    assert inside
    for f in inside:
        s, e = f.offsets[f.start_position][0], f.offsets[f.end_position][1]
        assert context[s:e] == answer

    # One-hot in every window holding the answer: decode returns it.
    positions = {
        i: (f.start_position, f.end_position) for i, f in enumerate(feats) if f.start_position
    }
    start, end = one_hot_logits(feats, positions, 48)
    assert squad.decode(feats, [ex], start, end) == {"q": answer}


def test_decode_ignores_starts_without_max_context(tok):
    context = numbered_context(60)
    ex = SquadExample("q", "Which?", context, (("word0", 0),))
    feats = squad.make_features([ex], tok, max_length=48, doc_stride=16)
    start = np.zeros((len(feats), 48), dtype=np.float32)
    end = np.zeros_like(start)
    # In window 0, the last context piece is not max-context (window 1 has more context
    # around it): a huge start logit there must be ignored.
    f0 = feats[0]
    last = context_pieces(f0)[-1]
    assert not f0.token_is_max_context[last]
    start[0, last] = 100.0
    end[0, last] = 5.0
    # A weaker span elsewhere in window 0, at a max-context piece (10 + 10 > 10 + 5).
    good = context_pieces(f0)[2]
    assert f0.token_is_max_context[good]
    start[0, good] = end[0, good] = 10.0
    pred = squad.decode(feats[:1], [ex], start[:1], end[:1])["q"]
    s, e = f0.offsets[good]
    assert pred == context[s:e]


def test_answer_outside_every_window_targets_cls(tok):
    context = numbered_context(60)
    answer = "word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15"
    ex = SquadExample("q", "Which?", context, ((answer, context.index(answer)),))
    # Windows of max_length - 3 - len(question) pieces: too short for the whole answer.
    feats = squad.make_features([ex], tok, max_length=24, doc_stride=8, is_training=True)
    assert len(feats) > 2
    assert all((f.start_position, f.end_position) == (0, 0) for f in feats)
    # Not training: no targets at all.
    feats = squad.make_features([ex], tok, max_length=128, is_training=False)
    assert all((f.start_position, f.end_position) == (0, 0) for f in feats)
    arrays = squad.stack_features(feats)
    assert arrays["input_ids"].shape == (1, 128) and arrays["input_ids"].dtype == np.int32
    assert arrays["start_positions"].shape == (1,)


def test_version_2_null_prediction(tok):
    context = "The Eiffel Tower is in Paris, France."
    ex = SquadExample("q", "Where is Big Ben?", context, (), is_impossible=True)
    feats = squad.make_features([ex], tok, max_length=64, is_training=True)
    assert len(feats) == 1 and (feats[0].start_position, feats[0].end_position) == (0, 0)
    f = feats[0]
    paris = next(i for i in context_pieces(f) if context[slice(*f.offsets[i])] == "Paris")
    start = np.zeros((1, 64), dtype=np.float32)
    end = np.zeros_like(start)
    start[0, paris] = end[0, paris] = 5.0  # best span "Paris", score 10
    start[0, 0] = end[0, 0] = 6.0  # null score 12

    assert squad.decode(feats, [ex], start, end) == {"q": "Paris"}  # v1 never abstains
    assert squad.decode(feats, [ex], start, end, version_2=True) == {"q": ""}
    # null - best = 2: "" above threshold 1, the span with threshold 3.
    assert squad.decode(feats, [ex], start, end, version_2=True,
                        null_score_diff_threshold=1.0) == {"q": ""}
    assert squad.decode(feats, [ex], start, end, version_2=True,
                        null_score_diff_threshold=3.0) == {"q": "Paris"}
    preds, nbest = squad.decode_nbest(feats, [ex], start, end, version_2=True)
    assert preds == {"q": ""}
    assert nbest["q"][0]["text"] == "" and nbest["q"][1]["text"] == "Paris"
    assert sum(e["probability"] for e in nbest["q"]) == pytest.approx(1.0)
    assert nbest["q"][0]["probability"] > nbest["q"][1]["probability"]
    texts = [e["text"] for e in nbest["q"]]
    assert len(texts) == len(set(texts))


def test_version_2_null_score_is_min_over_features(tok):
    context = numbered_context(60)
    ex = SquadExample("q", "Which?", context, ((("word30"), context.index("word30")),))
    feats = squad.make_features([ex], tok, max_length=48, doc_stride=16)
    assert len(feats) >= 2
    start = np.zeros((len(feats), 48), dtype=np.float32)
    end = np.zeros_like(start)
    start[:, 0] = end[:, 0] = 20.0
    start[1, 0] = -20.0  # min null score: 0
    ctx = context_pieces(feats[1])
    i = ctx[len(ctx) // 2]
    assert feats[1].token_is_max_context[i]
    start[1, i] = end[1, i] = 1.0  # best span score 2 > 0
    want = context[slice(*feats[1].offsets[i])]
    assert squad.decode(feats, [ex], start, end, version_2=True) == {"q": want}


def test_max_answer_length_and_end_before_start(tok):
    context = "one two three four five six seven eight"  # one piece per word
    ex = SquadExample("q", "Which?", context, (("one", 0),))
    feats = squad.make_features([ex], tok, max_length=64)
    ctx = context_pieces(feats[0])
    word = {context[slice(*feats[0].offsets[i])]: i for i in ctx}
    assert len(word) == 8 == len(ctx)
    start = np.full((1, 64), -5.0, dtype=np.float32)
    end = np.full((1, 64), -5.0, dtype=np.float32)
    start[0, word["two"]] = 10.0
    end[0, word["six"]] = 10.0
    end[0, word["three"]] = 4.0
    assert squad.decode(feats, [ex], start, end) == {"q": "two three four five six"}
    assert squad.decode(feats, [ex], start, end, max_answer_length=4) == {"q": "two three"}
    # The best end lies before the best start: never chosen.
    start = np.full((1, 64), -50.0, dtype=np.float32)
    end = np.full((1, 64), -50.0, dtype=np.float32)
    start[0, word["seven"]] = 10.0
    end[0, word["two"]] = 20.0
    end[0, word["eight"]] = 1.0
    assert squad.decode(feats, [ex], start, end) == {"q": "seven eight"}
    # [CLS], question and [SEP] pieces are never part of an answer.
    start[0, : word["one"]] = 50.0
    end[0, : word["one"]] = 50.0
    assert squad.decode(feats, [ex], start, end) == {"q": "seven eight"}


def test_accents_and_casing_come_back(tok):
    context = "The café is run by Ana Müller-Łukasiewicz in São Paulo."
    answer = "Müller-Łukasiewicz"
    ex = SquadExample("q", "Who runs the café?", context, ((answer, context.index(answer)),))
    feats = squad.make_features([ex], tok, max_length=64, is_training=True)
    f = feats[0]
    assert f.start_position > 0
    start, end = one_hot_logits(feats, {0: (f.start_position, f.end_position)}, 64)
    assert squad.decode(feats, [ex], start, end) == {"q": answer}
    sp = context.index("São Paulo")
    ex2 = SquadExample("q2", "Where?", context, (("São Paulo", sp),))
    f2 = squad.make_features([ex2], tok, max_length=64, is_training=True)
    s2, e2 = one_hot_logits(f2, {0: (f2[0].start_position, f2[0].end_position)}, 64)
    assert squad.decode(f2, [ex2], s2, e2) == {"q2": "São Paulo"}


# ---------------------------------------------------------------------------- reading
def squad_json(version: str = "1.1", **overrides) -> dict:
    context = "Normandy is a region in France."
    qa = {"id": "q1", "question": "Where is Normandy?",
          "answers": [{"text": "France", "answer_start": context.index("France")}]}
    qa.update(overrides.pop("qa", {}))
    paragraph = {"context": context, "qas": [qa]}
    paragraph.update(overrides.pop("paragraph", {}))
    return {"version": version, "data": [{"title": "Normandy", "paragraphs": [paragraph]}]}


def test_read_v1_v2_and_zip(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(squad_json()), encoding="utf-8")
    (ex,) = squad.read_squad(path)
    assert ex == SquadExample("q1", "Where is Normandy?", ex.context, (("France", 24),), False)

    v2 = squad_json("v2.0")
    v2["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "q2", "question": "Where is Paris?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "France", "answer_start": 24}]}
    )
    zpath = tmp_path / "v2.json.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("v2.json", json.dumps(v2))
    examples = squad.read_squad(str(zpath))
    assert [e.qid for e in examples] == ["q1", "q2"]
    assert examples[1].is_impossible and examples[1].answers == ()


def test_bad_files(tmp_path):
    def write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    bad = write("bad.json", '{\n  "data": [\n    {"paragraphs": [}\n  ]\n}\n')
    with pytest.raises(SquadFormatError, match=r"bad\.json: malformed JSON at line 3") as info:
        squad.read_squad(bad)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)

    doc = squad_json()
    del doc["data"][0]["paragraphs"][0]["context"]
    p = write("noctx.json", json.dumps(doc))
    with pytest.raises(SquadFormatError, match=r"noctx\.json: article 0, paragraph 0 .*'q1'.*"
                                               r"has no 'context'"):
        squad.read_squad(p)

    p = write("nodata.json", json.dumps({"version": "1.1"}))
    with pytest.raises(SquadFormatError, match=r"nodata\.json: .*'data'"):
        squad.read_squad(p)

    p = write("shifted.json", json.dumps(squad_json(
        qa={"answers": [{"text": "France", "answer_start": 3}]})))
    with pytest.raises(SquadFormatError, match=r"shifted\.json: question 'q1', answer 0: "
                                               r"answer_start 3"):
        squad.read_squad(p)

    p = write("noq.json", json.dumps(squad_json(qa={"question": None})))
    with pytest.raises(SquadFormatError, match=r"question 'q1'.*'question'"):
        squad.read_squad(p)

    p = write("noanswers.json", json.dumps(squad_json(qa={"answers": []})))
    with pytest.raises(SquadFormatError, match=r"question 'q1' has no answers"):
        squad.read_squad(p)

    zpath = tmp_path / "empty.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(SquadFormatError, match=r"empty\.zip: expected one \.json"):
        squad.read_squad(zpath)
