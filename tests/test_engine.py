"""The batch-scoring engine: every task equals the unbatched single-device computation.

Layouts: one device, 8-way data parallel, and data=2 x tensor=4 (the tiny config's hidden,
FFN, head and vocabulary sizes are divisible by 4, so tensor sharding applies).
"""

from __future__ import annotations

import random

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import EPS32, model_atol, require_spiece

from albert_jax.config import AlbertConfig
from albert_jax.engine import Engine, Row, bucket_for
from albert_jax.inference import Embedder, FillMask, PseudoLogLikelihood
from albert_jax.model import AlbertForMaskedLM, AlbertModel
from albert_jax.tokenizer import AlbertTokenizer

CONFIG = AlbertConfig(
    vocab_size=30000, embedding_size=16, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
    initializer_range=0.2,
)
LAYOUTS = {
    "1dev": dict(data=1, devices=jax.devices()[:1]),
    "data8": dict(data=8),
    "data2_tensor4": dict(data=2, tensor=4),
}
OPTS = dict(batch_size=4, length_buckets=(8, 16, 32))
HF_SHAPES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def logprob_atol(logits) -> float:
    """Padded, sharded and single-sequence programs differ by rounding only: the forward
    pass at the scale of the logits, plus the 30000-term sum of the log-softmax (at scale 1).
    Also bounds probabilities, whose error is at most p times that."""
    return model_atol(logits, **HF_SHAPES) + 8 * EPS32 * np.sqrt(CONFIG.vocab_size)

WORDS = ("the", "cat", "sat", "on", "a", "mat", "while", "unbelievably", "gigantic",
         "elephants", "danced", "quietly", "near", "hyperventilating", "zookeepers", "in",
         "1987")


def _texts(n: int, seed: int, mask: bool = False, max_words: int = 30) -> list[str]:
    rng = random.Random(seed)
    counts = [c for c in (1, 2, 3, 6, 10, 18, 30) if c <= max_words]
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.choice(counts))]
        if mask:
            words[rng.randrange(len(words))] = "[MASK]"
        texts.append(" ".join(words))
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    return AlbertTokenizer(str(require_spiece()))


@pytest.fixture(scope="module")
def mlm():
    model = AlbertForMaskedLM(CONFIG)
    return model, model.init_params(jax.random.key(1))


@pytest.fixture(scope="module")
def base():
    model = AlbertModel(CONFIG)
    return model, model.init_params(jax.random.key(2))


_FORWARDS: dict = {}


def _single(model, params, ids):
    """The unbatched, unpadded, single-device forward of one sequence (jitted per model)."""
    key = (id(model), id(params))
    if key not in _FORWARDS:
        _FORWARDS[key] = (jax.jit(model.apply), jax.device_put(nn.meta.unbox(params),
                                                               jax.devices()[0]))
    forward, plain = _FORWARDS[key]
    return forward(plain, jax.device_put(np.asarray([ids], np.int32), jax.devices()[0]))


def _cached(fn):
    """Memoises a reference computation across the layouts of a parametrised test."""
    cache: dict = {}

    def wrapper(*args, **kwargs):
        key = (*(id(a) if not isinstance(a, (str, tuple, bool)) else a for a in args),
               tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = fn(*args, **kwargs)
        return cache[key]

    return wrapper


# ------------------------------------------------------------------ engine mechanics
def test_bucket_sets_and_padding_rows(mlm):
    model, params = mlm
    eng = Engine(model, params, batch_size=6, data=8, length_buckets=(8, 16, 100))
    # Batch buckets are multiples of the data-parallel size; lengths capped at the model's.
    assert eng.batch_buckets == (8,)
    assert eng.length_buckets == (8, 16, 64)
    eng2 = Engine(model, params, batch_size=32, data=2, tensor=4)
    assert eng2.batch_buckets == (2, 4, 8, 16, 32)
    assert bucket_for(3, eng2.batch_buckets) == 4
    # Parameters are tensor-sharded by their logical names; the embedding table's vocab axis.
    spec = eng2.params["params"]["albert"]["embeddings"]["word_embeddings"]["embedding"]
    assert spec.sharding.spec[0] == "tensor"
    with pytest.raises(ValueError, match="max_length"):
        Engine(model, params, max_length=65)


def test_streams_in_input_order_and_lazily(mlm, tokenizer):
    model, params = mlm
    eng = Engine(model, params, window=3, **OPTS, data=1, devices=jax.devices()[:1])
    texts = _texts(10, seed=5)
    rows = [Row(tokenizer.encode(t), position=1, target=7) for t in texts]
    consumed = []

    def groups():
        for i, row in enumerate(rows):
            consumed.append(i)
            yield [row]

    stream = eng.stream("logprob", groups())
    first = next(stream)
    assert len(consumed) < len(rows)  # Only the first window was read.
    rest = list(stream)
    together = eng.run_rows("logprob", rows)
    np.testing.assert_allclose(np.concatenate([first, *rest]), together,
                               atol=logprob_atol(together))


def test_compiles_at_most_once_per_bucket(mlm, tokenizer):
    model, params = mlm
    eng = Engine(model, params, **OPTS, data=1, devices=jax.devices()[:1])
    texts = _texts(23, seed=2)
    rows = [Row(tokenizer.encode(t), position=1, target=9) for t in texts]
    eng.run_rows("logprob", rows)
    # The shapes this run can use: every (rows, length) pair of a batch it formed.
    lengths = sorted(len(r.ids) for r in rows)
    shapes = set()
    for s in range(0, len(lengths), eng.batch_size):
        chunk = lengths[s : s + eng.batch_size]
        shapes.add((bucket_for(len(chunk), eng.batch_buckets),
                    bucket_for(chunk[-1], eng.length_buckets)))
    assert eng.num_traces <= len(shapes)
    before = eng.num_traces
    random.Random(0).shuffle(rows)
    eng.run_rows("logprob", rows)
    assert eng.num_traces == before  # Same shapes in another order: nothing recompiles.


def test_rejects_empty_and_too_long(mlm):
    model, params = mlm
    eng = Engine(model, params, **OPTS, data=1, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="empty"):
        eng.run_rows("probs", [Row([])])
    with pytest.raises(ValueError, match="65 tokens long"):
        eng.run_rows("probs", [Row([2] + [5] * 63 + [3])])


# ------------------------------------------------------------------ tasks vs references
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fill_mask_equals_single_device(mlm, tokenizer, layout):
    model, params = mlm
    fm = FillMask(model, params, tokenizer, **OPTS, **LAYOUTS[layout])
    texts = _texts(11, seed=1, mask=True)
    prepared = [fm.prepare(t) for t in texts]
    probs = fm.probabilities(prepared)
    for p, got in zip(prepared, probs, strict=True):
        logits = _single(model, params, p.ids).logits[0, p.mask_index]
        np.testing.assert_allclose(got, jax.nn.softmax(logits), atol=logprob_atol(logits))
    # Records in input order.
    results = fm(texts, top_k=1)
    assert [r[0]["token"] for r in results] == [int(np.argmax(p)) for p in probs]


@_cached
def _reference_pll(model, params, tokenizer, ids, word_l2r=False):
    """One forward per masked position, written out directly."""
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for p in range(len(ids)):
        if ids[p] in special:
            continue
        masked = list(ids)
        masked[p] = tokenizer.mask_token_id
        if word_l2r:
            for q in range(p + 1, len(ids) - 1):
                if pieces[q].startswith("▁"):
                    break
                masked[q] = tokenizer.mask_token_id
        logits = _single(model, params, masked).logits[0, p]
        out.append(float(jax.nn.log_softmax(logits)[ids[p]]))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pll_equals_single_device(mlm, tokenizer, layout):
    model, params = mlm
    pll = PseudoLogLikelihood(model, params, tokenizer, **OPTS, **LAYOUTS[layout])
    texts = _texts(6, seed=3, max_words=10)
    results = pll(texts)
    for text, res in zip(texts, results, strict=True):
        ids = tokenizer.encode(text)
        ref = _reference_pll(model, params, tokenizer, tuple(ids))
        atol = logprob_atol(ref)
        np.testing.assert_allclose(res.token_logprobs, ref, atol=atol)
        assert res.tokens == tokenizer.convert_ids_to_tokens(ids[1:-1])
        assert abs(res.total_logprob - sum(ref)) < atol * len(ref)
        assert abs(res.pseudo_perplexity - np.exp(-sum(ref) / len(ref))) < (
            2 * atol * res.pseudo_perplexity)  # exp(x + d) = exp(x) (1 + d + ...), |d| <= atol.


def test_pll_word_l2r_small_example(mlm, tokenizer):
    model, params = mlm
    text = "unbelievably hyperventilating cat"
    ids = tokenizer.encode(text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    ids = tuple(ids)
    assert sum(not p.startswith("▁") for p in pieces[1:-1]) >= 2  # Multi-piece words.
    pll = PseudoLogLikelihood(model, params, tokenizer, word_l2r=True, **OPTS,
                              data=1, devices=jax.devices()[:1])
    rows = pll.rows(ids)
    mask = tokenizer.mask_token_id
    for row in rows:  # The scored piece and the rest of its word to the right are masked.
        p = row.position
        q = p + 1
        while q < len(ids) - 1 and not pieces[q].startswith("▁"):
            assert row.ids[q] == mask
            q += 1
        assert tuple(row.ids[q:]) == ids[q:] and tuple(row.ids[:p]) == ids[:p]
    res = pll(text)
    ref = _reference_pll(model, params, tokenizer, ids, word_l2r=True)
    np.testing.assert_allclose(res.token_logprobs, ref, atol=logprob_atol(ref))
    plain = _reference_pll(model, params, tokenizer, ids)
    assert not np.allclose(ref, plain)  # The variant really differs here.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_embed_equals_single_device(base, tokenizer, layout):
    model, params = base
    texts = _texts(9, seed=4)
    for pooling in ("pooled", "cls", "mean"):
        emb = Embedder(model, params, tokenizer, pooling=pooling, **OPTS, **LAYOUTS[layout])
        got = emb(texts)
        assert got.shape == (len(texts), CONFIG.hidden_size)
        for text, vec in zip(texts, got, strict=True):
            out = _single(model, params, tokenizer.encode(text))
            ref = {"pooled": out.pooler_output[0], "cls": out.last_hidden_state[0, 0],
                   "mean": out.last_hidden_state[0].mean(0)}[pooling]
            np.testing.assert_allclose(vec, ref, atol=model_atol(ref, **HF_SHAPES))
        assert emb.num_traces <= 3 * 2  # (lengths 8/16/32/64) x (rows): a handful at most.


def test_bfloat16_compute(base, tokenizer):
    model, params = base
    texts = _texts(5, seed=6)
    f32 = Embedder(model, params, tokenizer, **OPTS)(texts)
    bf16_model = AlbertModel(CONFIG.replace(dtype="bfloat16"))
    bf16 = Embedder(bf16_model, params, tokenizer, **OPTS)(texts)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.1
    assert not np.array_equal(bf16, f32)


def test_tasks_reject_bad_inputs(mlm, tokenizer):
    model, params = mlm
    pll = PseudoLogLikelihood(model, params, tokenizer, **OPTS)
    with pytest.raises(ValueError, match="is empty"):
        pll("")
    with pytest.raises(ValueError, match="no token to score"):
        pll("[MASK]")
    with pytest.raises(ValueError, match="tokens long"):
        pll("word " * 70)


def test_compilation_cache_is_opt_in(mlm, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
    model, params = mlm
    Engine(model, params, data=1, devices=jax.devices()[:1])
    assert calls == []
    Engine(model, params, data=1, devices=jax.devices()[:1], cache_dir=str(tmp_path / "cc"))
    assert ("jax_compilation_cache_dir", str(tmp_path / "cc")) in calls
    assert (tmp_path / "cc").is_dir()


# ------------------------------------------------------------------ batching and shapes
def test_token_budget_batches_respect_the_budget(mlm, tokenizer):
    model, params = mlm
    budget = 64
    eng = Engine(model, params, batch_size=16, length_buckets=(8, 16, 32),
                 max_batch_tokens=budget, data=1, devices=jax.devices()[:1])
    texts = _texts(30, seed=8)
    rows = [Row(tokenizer.encode(t), position=1, target=9) for t in texts]
    shapes = []
    dispatch = eng._dispatch

    def record(kind, rows_, num, length, *args):
        shapes.append((num, length))
        return dispatch(kind, rows_, num, length, *args)

    eng._dispatch = record
    got = eng.run_rows("logprob", rows)
    # Short rows in large batches, long ones in small; never above the budget.
    assert all(num * length <= budget for num, length in shapes), shapes
    assert max(num for num, length in shapes if length == 8) > max(
        num for num, length in shapes if length == 32)
    plain = Engine(model, params, **OPTS, data=1, devices=jax.devices()[:1])
    np.testing.assert_allclose(got, plain.run_rows("logprob", rows), atol=1e-5)


def _brute_force_plan(lengths, ladder, batch_buckets, max_shapes, row_s, compile_s):
    """Every subset of the ladder, every remainder choice: the cheapest plan's cost."""
    import itertools

    from albert_jax.batching import _segment

    top = bucket_for(max(lengths), ladder)
    cands = [b for b in ladder if b <= top]
    best = float("inf")
    for r in range(1, len(cands) + 1):
        for subset in itertools.combinations(cands, r):
            if subset[-1] != top:
                continue
            cost, shapes, low = 0.0, 0, 0
            for b in subset:
                count = sum(low < n <= b for n in lengths)
                low = b
                if count == 0:
                    cost = float("inf")
                    break
                c, rows = _segment(count, b, batch_buckets[-1], batch_buckets, row_s(b),
                                   compile_s)
                cost += c
                shapes += len(rows)
            if shapes <= max_shapes:
                best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_subset_of_the_ladder(seed):
    from albert_jax.batching import plan_length_buckets, planned_batches

    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 20), rng.randint(3, 120)]) for _ in range(
        rng.randint(1, 200))]
    ladder = (16, 24, 32, 48, 64, 96, 128)
    batch_buckets = (1, 2, 4, 8, 16, 32)
    compile_s = rng.choice([0.01, 0.5, 5.0])

    def row_s(n):
        return 1e-3 * n

    plan = plan_length_buckets(lengths, ladder, batch_buckets, max_shapes=4,
                               row_seconds=row_s, compile_seconds=compile_s)
    assert plan.num_shapes <= 4
    assert plan.estimated_s == pytest.approx(
        _brute_force_plan(lengths, ladder, batch_buckets, 4, row_s, compile_s))
    # The batches realise exactly the planned shapes and hold every row once.
    srt = sorted(lengths)
    batches = planned_batches(srt, plan, batch_buckets)
    assert [i for b in batches for i in range(b.start, b.stop)] == list(range(len(srt)))
    assert {(b.rows, b.length) for b in batches} <= {
        (r, length) for length, rows in plan.rows.items() for r in rows}
    assert all(srt[b.stop - 1] <= b.length and b.stop - b.start <= b.rows for b in batches)
    cost = sum(b.rows * row_s(b.length) for b in batches) + compile_s * len(
        {(b.rows, b.length) for b in batches})
    assert cost == pytest.approx(plan.estimated_s)


def test_planned_shapes_compile_less_and_agree(mlm, tokenizer):
    model, params = mlm
    texts = _texts(40, seed=9)
    rows = [Row(tokenizer.encode(t), position=1, target=4) for t in texts]
    ladder = Engine(model, params, batch_size=8, data=1, devices=jax.devices()[:1])
    expected = ladder.run_rows("logprob", rows)
    eng = Engine(model, params, batch_size=8, data=1, devices=jax.devices()[:1])
    plan = eng.plan([len(r.ids) for r in rows], compile_seconds=60.0, max_shapes=2)
    assert plan.num_shapes <= 2
    got = eng.run_rows("logprob", rows)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert eng.num_traces <= plan.num_shapes < ladder.num_traces
    # Longer rows than planned fall back to the ladder instead of failing.
    long_row = Row(tokenizer.encode("word " * 50), position=3, target=2)
    assert eng.run_rows("logprob", [long_row]).shape == (1,)


# ------------------------------------------------------------------ streaming and overlap
def test_dispatch_runs_ahead_and_results_stream_early(mlm, tokenizer):
    model, params = mlm
    eng = Engine(model, params, batch_size=2, length_buckets=(8, 16, 32, 64),
                 pipeline_depth=2, data=1, devices=jax.devices()[:1])
    # Input order = length order: each batch completes the next groups in input order.
    texts = sorted(_texts(12, seed=10), key=lambda t: len(tokenizer.encode(t)))
    rows = [Row(tokenizer.encode(t), position=1, target=5) for t in texts]
    events = []
    dispatch, fetch = eng._dispatch, eng._fetch

    def d(*args):
        events.append("D")
        return dispatch(*args)

    def f(out, n):
        events.append("F")
        return fetch(out, n)

    eng._dispatch, eng._fetch = d, f
    done = []
    stream = eng.stream("logprob", ([r] for r in rows), progress=done.append)
    first = next(stream)
    # Batches 1-3 were sent before batch 1 came back; the first result came out long
    # before the last batch was sent.
    assert events[:4] == ["D", "D", "D", "F"], events
    assert events.count("D") < len(rows) // 2
    rest = list(stream)
    assert sum(done) == len(rows)
    np.testing.assert_allclose(np.concatenate([first, *rest]),
                               eng.run_rows("logprob", rows), atol=1e-6)


def test_top_k_on_device_equals_host_ranking(mlm, tokenizer):
    model, params = mlm
    eng = Engine(model, params, **OPTS, data=2, tensor=4)
    texts = _texts(9, seed=11, mask=True)
    rows = []
    for t in texts:
        ids = tokenizer.encode(t)
        rows.append(Row(ids, position=ids.index(tokenizer.mask_token_id)))
    probs = eng.run_rows("probs", rows)
    scores, ids = eng.run_rows("topk", rows, top_k=5)
    assert scores.shape == ids.shape == (len(rows), 5)
    np.testing.assert_array_equal(ids, np.argsort(-probs, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(probs, ids, 1), atol=1e-6)
    cand = np.asarray([7, 100, 2999, 42, 29999])
    scores, ids = eng.run_rows("topk", rows, top_k=3, candidates=cand)
    sub = probs[:, cand]
    best = np.argsort(-sub, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(ids, cand[best])
    np.testing.assert_allclose(scores, np.take_along_axis(sub, best, 1), atol=1e-6)


# ------------------------------------------------------------------ boundary validation
def test_engine_rejects_bad_rows_naming_the_argument(mlm):
    model, params = mlm
    eng = Engine(model, params, **OPTS, data=1, devices=jax.devices()[:1])
    good = [2, 10, 11, 3]
    cases = [
        (Row(good, position=4), ValueError, "position 4 is outside"),
        (Row(good, position=-1), ValueError, "position -1 is outside"),
        (Row([2, -5, 3]), ValueError, "ids: token id -5 is outside the vocabulary"),
        (Row([2, 30000, 3]), ValueError, "ids: token id 30000 is outside the vocabulary"),
        (Row(good, target=30000), ValueError, "target 30000 is outside the vocabulary"),
        (Row(good, target=-2), ValueError, "target -2 is outside the vocabulary"),
        (Row([2.0, 5.0]), TypeError, "ids must be a sequence of integer"),
        (Row("abc"), TypeError, "ids must be a sequence of integer"),
        (Row(good, position=1.5), TypeError, "position must be an integer"),
    ]
    for row, error, message in cases:
        for kind in ("logprob", "probs"):
            with pytest.raises(error, match=message):
                eng.run_rows(kind, [row])
        with pytest.raises(error, match=message):
            eng.run_batch("logprob", [row])
    with pytest.raises(TypeError, match="a group must be a sequence of Row"):
        list(eng.stream("logprob", [{"ids": good}]))
    with pytest.raises(TypeError, match="groups must be an iterable"):
        list(eng.stream("logprob", {"a": [Row(good)]}))
    with pytest.raises(TypeError, match="rows must be Row instances"):
        eng.run_rows("logprob", [good])
    with pytest.raises(ValueError, match="candidates: token id 30000"):
        eng.run_rows("topk", [Row(good, position=1)], top_k=2, candidates=[1, 30000])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        eng.run_rows("topk", [Row(good, position=1)], top_k=0)
    with pytest.raises(ValueError, match="unknown step"):
        eng.run_rows("logits", [Row(good)])
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Engine(model, params, max_batch_tokens=0)


def test_tasks_reject_a_dict_for_a_list(mlm, base, tokenizer):
    model, params = mlm
    fm = FillMask(model, params, tokenizer, **OPTS, data=1, devices=jax.devices()[:1])
    pll = PseudoLogLikelihood(model, params, tokenizer, **OPTS, data=1,
                              devices=jax.devices()[:1])
    emb = Embedder(*base, tokenizer, **OPTS, data=1, devices=jax.devices()[:1])
    for task in (fm, pll, emb):
        with pytest.raises(TypeError, match="inputs must be a string or a list of strings"):
            task({"the [MASK] sat": 1})
        with pytest.raises(TypeError, match="input 0 must be a string"):
            task([b"the [MASK] sat"])
    with pytest.raises(TypeError, match="targets must be a string or a list"):
        fm("the [MASK] sat", targets={"cat": 1})
    with pytest.raises(TypeError, match="top_k must be an integer"):
        fm("the [MASK] sat", top_k=2.5)


# ------------------------------------------------------------------------------ packing
def test_pack_sequences_first_fit_decreasing():
    from albert_jax.batching import pack_sequences

    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = list(rng.integers(1, 33, rng.integers(1, 40)))
        slots = int(rng.integers(1, 6))
        p = pack_sequences(lengths, 32, slots)
        assert sorted(i for row in p.slots for i in row) == list(range(len(lengths)))
        for r, members in enumerate(p.slots):
            assert 1 <= len(members) <= slots
            ends = 0
            for s, i in enumerate(members):  # contiguous, in slot order, inside the row
                assert (p.row[i], p.slot[i], p.offset[i]) == (r, s, ends)
                ends += lengths[i]
            assert ends <= 32
        # First fit decreasing never needs more than 11/9 OPT + 1 rows; OPT >= tokens / 32.
        bound = max(-(-sum(lengths) // 32), -(-len(lengths) // slots))
        assert len(p.slots) <= 11 / 9 * bound + 1
    with pytest.raises(ValueError, match=r"1\.\.32 tokens"):
        pack_sequences([33], 32, 4)


@pytest.mark.parametrize("layout", ["1dev", "data2_tensor4"])
def test_packed_rows_equal_each_sequence_alone(mlm, layout):
    """Several sequences packed into each row (block-diagonal attention, positions from 0)
    give each the outputs of its unbatched, unpadded forward: probabilities, log-probability
    of a target, and the top k chosen on the device."""
    model, params = mlm
    eng = Engine(model, params, **OPTS, **LAYOUTS[layout])
    rng = np.random.default_rng(3)
    rows = [Row(list(rng.integers(5, CONFIG.vocab_size, n)), position=int(rng.integers(n)),
                target=int(rng.integers(CONFIG.vocab_size)))
            for n in (1, 2, 5, 9, 13, 17, 24, 30, 31, 32, 3, 7)]
    probs = eng.run_packed("probs", rows, pack_length=32)
    logprob = eng.run_packed("logprob", rows, pack_length=64)
    scores, ids = eng.run_packed("topk", rows, pack_length=32, top_k=3)
    assert probs.shape == (len(rows), CONFIG.vocab_size) and logprob.shape == (len(rows),)
    for i, row in enumerate(rows):
        logits = _single(model, params, row.ids).logits[0, row.position]
        atol = logprob_atol(logits)
        np.testing.assert_allclose(probs[i], jax.nn.softmax(logits), atol=atol)
        np.testing.assert_allclose(logprob[i], jax.nn.log_softmax(logits)[row.target], atol=atol)
        np.testing.assert_allclose(scores[i], np.sort(probs[i])[::-1][:3], atol=atol)
        assert set(ids[i]) <= set(np.argsort(probs[i])[::-1][:4])  # ties at the edge aside
    # Each packed row count compiles once: the same rows again trace nothing new.
    traces = eng.num_traces
    eng.run_packed("probs", rows[::-1], pack_length=32)
    assert eng.num_traces == traces
    with pytest.raises(ValueError, match="can be packed"):
        eng.run_packed("mean", rows, pack_length=32)
    with pytest.raises(ValueError, match=r"1\.\.32 tokens"):
        eng.run_packed("probs", [Row([5] * 33, position=0)], pack_length=32)


# ------------------------------------------------------------------ top k with targets
@pytest.mark.parametrize("layout", ["1dev", "data2_tensor4"])
def test_topk_targets_equals_probs_then_host_top_k(mlm, layout):
    """One step gives the top k over the whole vocabulary and the probabilities at each
    row's own targets (0, 1 or T of them, padded to T): those of ``"probs"`` followed by a
    host top k and gather, padded and packed; more than T targets are refused."""
    model, params = mlm
    eng = Engine(model, params, **OPTS, **LAYOUTS[layout])
    rng = np.random.default_rng(4)
    k, t = 5, 3
    targets = [(), (17,), (2, 4000, 29999), (), (123,), (7, 8, 9)]
    rows = [Row(list(rng.integers(5, CONFIG.vocab_size, n)), position=int(rng.integers(n)),
                targets=targets[i % len(targets)])
            for i, n in enumerate((1, 3, 9, 13, 17, 24, 30, 31))]
    for out, probs in (
        (eng.run_batch("topk_targets", rows[:4], top_k=k, num_targets=t),
         eng.run_batch("probs", rows[:4])),
        (eng.run_packed("topk_targets", rows, pack_length=32, top_k=k, num_targets=t),
         eng.run_packed("probs", rows, pack_length=32)),
    ):
        scores, ids, target_probs = out
        n = len(probs)
        assert scores.shape == ids.shape == (n, k) and target_probs.shape == (n, t)
        assert scores.dtype == target_probs.dtype == np.float32
        np.testing.assert_array_equal(ids, np.argsort(-probs, axis=1, kind="stable")[:, :k])
        np.testing.assert_allclose(scores, np.take_along_axis(probs, ids, 1), atol=1e-6)
        for i in range(n):
            padded = np.zeros(t, np.int64)
            padded[: len(rows[i].targets)] = rows[i].targets  # Padding reads id 0.
            np.testing.assert_allclose(target_probs[i], probs[i][padded], atol=1e-6)
    too_many = [Row([2, 10, 3], position=1, targets=(1, 2, 3, 4))]
    with pytest.raises(ValueError, match="at most num_targets=3"):
        eng.run_batch("topk_targets", too_many, top_k=k, num_targets=t)
    with pytest.raises(ValueError, match="at most num_targets=3"):
        eng.run_packed("topk_targets", too_many, pack_length=32, top_k=k, num_targets=t)
    with pytest.raises(ValueError, match="targets: token id 30000 is outside"):
        eng.run_batch("topk_targets", [Row([2, 10, 3], targets=(30000,))], top_k=k,
                      num_targets=t)
    with pytest.raises(ValueError, match="num_targets must be a non-negative integer"):
        eng.run_batch("topk_targets", rows[:1], top_k=k)
    with pytest.raises(ValueError, match="num_targets applies to the 'topk_targets' step"):
        eng.run_batch("topk", rows[:1], top_k=k, num_targets=t)


def test_topk_targets_compiled_ahead_is_reused(mlm):
    """compile_shape for the new step, padded and packed: running those shapes traces
    nothing more."""
    model, params = mlm
    eng = Engine(model, params, **OPTS, data=1, devices=jax.devices()[:1])
    eng.compile_shape("topk_targets", 2, 16, top_k=4, num_targets=2)
    eng.compile_shape("topk_targets", 1, 32, packed=True, top_k=4, num_targets=2)
    traces = eng.num_traces
    rows = [Row([2, 10, 11, 3], position=1, targets=(5,)), Row([2] * 12, position=3)]
    scores, ids, target_probs = eng.run_batch("topk_targets", rows, top_k=4, num_targets=2)
    eng.run_packed("topk_targets", rows, pack_length=32, num_rows=1, top_k=4, num_targets=2)
    assert eng.num_traces == traces
    assert scores.shape == ids.shape == (2, 4) and target_probs.shape == (2, 2)
