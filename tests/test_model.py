"""The Flax model against transformers' PyTorch ALBERT, loaded through load_pretrained."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import EPS32, TINY, f32_atol, model_atol, save_hf_model

from albert_jax import model as M
from albert_jax.config import PRESETS, AlbertConfig
from albert_jax.pretrained import load_pretrained
from albert_jax.sharding import LOGICAL_AXIS_RULES


def padded_batch(vocab: int = 30000, batch: int = 3, length: int = 12, seed: int = 0):
    """Random ids with right padding of different lengths and two token types."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 3 * row :] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, length // 2 :] = 1
    types[mask == 0] = 0
    return ids, mask, types


def torch_outputs(model, ids, mask, types, **kwargs):
    with torch.no_grad():
        return model(
            torch.tensor(ids), attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types), **kwargs,
        )


def max_diff(ours, theirs, mask=None) -> float:
    a, b = np.asarray(ours, dtype=np.float64), theirs.detach().numpy().astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    if mask is not None:  # Padded positions carry no meaning: compare real tokens only.
        diff = diff[mask.astype(bool)]
    return float(diff.max())


def assert_parity(ours, theirs, hf_config: dict, mask=None) -> None:
    """PyTorch and XLA agree within what float32 allows for the whole forward pass."""
    diff, atol = max_diff(ours, theirs, mask), model_atol(theirs.detach().numpy(), **hf_config)
    assert diff < atol, (diff, atol)


# --------------------------------------------------------------------- parity with transformers
# transformers' AlbertConfig() defaults are albert-xxlarge's shapes (hidden 4096, FFN 16384):
# the base shapes are spelled out, from the preset.
BASE_V2 = {k: v for k, v in PRESETS["albert-base-v2"].to_hf_dict().items()
           if k not in ("architectures", "model_type", "id2label", "label2id")}
PARITY_CONFIGS = {
    "base-v2": BASE_V2,  # The full albert-base-v2 shapes.
    "groups2-inner2": dict(TINY, num_hidden_groups=2, inner_group_num=2),
    "v1-gelu": dict(TINY, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1),
}


@pytest.fixture(scope="module", params=list(PARITY_CONFIGS))
def pretraining_checkpoint(request, tmp_path_factory):
    """An AlbertForPreTraining with random weights saved as safetensors (and .bin for one)."""
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    safe = name != "v1-gelu"  # One config goes through the PyTorch .bin reader.
    torch_model = save_hf_model(directory, "AlbertForPreTraining", safe=safe,
                                **PARITY_CONFIGS[name])
    return name, directory, torch_model


def fastest(fn, scan_layers: bool):
    """``fn`` compiled whole for a scanned model; op by op for an unrolled one, which costs
    more to compile than to run once (both are the same math)."""
    return jax.jit(fn) if scan_layers else fn


def jitted(model, params, *args, **kwargs):
    """``model.apply(params, *args, **kwargs)``, run the fastest way (see :func:`fastest`)."""
    return fastest(functools.partial(model.apply, **kwargs), model.config.scan_layers)(
        params, *args)


def test_backbone_and_mlm_match_transformers(pretraining_checkpoint):
    """Each head is loaded once; the scanned and the unrolled model run on the same tree.

    At the real albert-base-v2 shapes, parity at scale is what matters: the pretraining head
    (backbone, every hidden state, MLM and SOP heads), scanned. The small configs cover the
    three heads in both layer modes.
    """
    name, directory, torch_model = pretraining_checkpoint
    cfg = PARITY_CONFIGS[name]
    ids, mask, types = padded_batch()
    ref = torch_outputs(torch_model, ids, mask, types, output_hidden_states=True)

    def both(model):
        if name == "base-v2":
            return (model,)
        return model, model.clone(config=model.config.replace(scan_layers=False))

    pre, pre_params, _ = load_pretrained(directory, head="pretraining")
    if name == "base-v2":  # what the name says, not transformers' default (xxlarge) shapes
        assert pre.config.replace(scan_layers=True) == PRESETS["albert-base-v2"].replace(
            scan_layers=True)
    else:
        ref_base = torch_outputs(torch_model.albert, ids, mask, types)
        base, base_params, _ = load_pretrained(directory, head="base")
        mlm, mlm_params, _ = load_pretrained(directory, head="masked_lm")
        for base_m, mlm_m in zip(both(base), both(mlm), strict=True):
            out = jitted(base_m, base_params, ids, mask, types)
            assert_parity(out.last_hidden_state, ref_base.last_hidden_state, cfg, mask)
            assert_parity(out.pooler_output, ref_base.pooler_output, cfg)
            logits = jitted(mlm_m, mlm_params, ids, mask, types).logits
            assert_parity(logits, ref.prediction_logits, cfg, mask)

    for pre_m in both(pre):
        out = jitted(pre_m, pre_params, ids, mask, types, output_hidden_states=True)
        assert_parity(out.prediction_logits, ref.prediction_logits, cfg, mask)
        assert_parity(out.sop_logits, ref.sop_logits, cfg)
        assert len(out.hidden_states) == len(ref.hidden_states)
        for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
            assert_parity(ours, theirs, cfg, mask)


def test_attention_maps_match_transformers(tmp_path):
    config = dict(TINY, num_hidden_groups=2, inner_group_num=2, attn_implementation="eager")
    torch_model = save_hf_model(tmp_path, "AlbertModel", **config)
    ids, mask, types = padded_batch()
    ref = torch_outputs(torch_model, ids, mask, types, output_attentions=True)
    model, params, _ = load_pretrained(tmp_path, head="base")
    out = model.apply(params, ids, mask, types, output_attentions=True)
    # HF returns one map per inner layer per application: 4 layers x 2 inner layers.
    assert len(out.attentions) == len(ref.attentions) == 8
    # Probabilities (scale 1) after up to 8 applications; the longest reduction is the FFN's.
    for ours, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert max_diff(ours, theirs) < f32_atol(1.0, TINY["intermediate_size"], 8)


HEAD_CASES = [
    ("sequence_classification", "AlbertForSequenceClassification", dict(num_labels=3)),
    ("sequence_classification", "AlbertForSequenceClassification", dict(num_labels=1)),
    ("token_classification", "AlbertForTokenClassification", dict(num_labels=5)),
    ("question_answering", "AlbertForQuestionAnswering", dict()),
    ("multiple_choice", "AlbertForMultipleChoice", dict()),
]


@pytest.mark.parametrize(("head", "hf_cls", "extra"), HEAD_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in HEAD_CASES])
def test_task_heads_match_transformers(tmp_path, head, hf_cls, extra):
    torch_model = save_hf_model(tmp_path, hf_cls, **TINY, **extra)
    model, params, _ = load_pretrained(tmp_path, head=head)
    ids, mask, types = padded_batch()
    if head == "multiple_choice":  # [B, C, S]: two examples of three choices each.
        ids, mask, types = (np.stack([x, x[::-1]]) for x in (ids, mask, types))
    ref = torch_outputs(torch_model, ids, mask, types)
    out = model.apply(params, ids, mask, types)
    if head == "question_answering":
        assert_parity(out.start_logits, ref.start_logits, TINY, mask)
        assert_parity(out.end_logits, ref.end_logits, TINY, mask)
    elif head == "token_classification":
        assert_parity(out.logits, ref.logits, TINY, mask)
    else:
        assert_parity(out.logits, ref.logits, TINY)


# --------------------------------------------------------------------- the program itself
def tiny_config(**changes) -> AlbertConfig:
    return AlbertConfig(vocab_size=100, embedding_size=8, hidden_size=16, num_hidden_layers=4,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        initializer_range=0.5).replace(**changes)


def param_shapes(params) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    return {jax.tree_util.keystr(k): v.shape for k, v in flat}


@pytest.mark.parametrize("groups,inner", [(1, 1), (2, 2)])
def test_scanned_and_unrolled_share_one_tree_and_agree(groups, inner):
    cfg = tiny_config(num_hidden_groups=groups, inner_group_num=inner)
    scanned, unrolled = M.AlbertForPreTraining(cfg), M.AlbertForPreTraining(
        cfg.replace(scan_layers=False))
    params = scanned.init_params(jax.random.key(0))
    assert param_shapes(params) == param_shapes(unrolled.init_params(jax.random.key(0)))
    # One copy of each (group, inner layer): weights are shared, never stacked per layer.
    layer_keys = {k.split("]")[3] + "]" + k.split("]")[4] + "]" for k in param_shapes(params)
                  if "albert_layer_groups" in k}
    assert len(layer_keys) == groups * inner
    ids, mask, types = padded_batch(vocab=100, length=10)
    a = jitted(scanned, params, ids, mask, types)
    b = jitted(unrolled, params, ids, mask, types)
    # Same math, different XLA programs (a while loop vs inlined layers): rounding only.
    hf = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, inner_group_num=inner)
    for x, y in ((a.prediction_logits, b.prediction_logits), (a.sop_logits, b.sop_logits)):
        np.testing.assert_allclose(x, y, rtol=0, atol=model_atol(x, **hf))


@pytest.mark.parametrize("attention", ["xla", "cudnn"])
def test_fused_attention_paths_agree_with_explicit(attention):
    """jax.nn.dot_product_attention computes the same function (padding masks included);
    cudnn off a GPU falls back to the explicit path; asking for maps always gives them."""
    cfg = tiny_config(num_hidden_groups=2, inner_group_num=2)
    explicit, fused = M.AlbertForPreTraining(cfg), M.AlbertForPreTraining(
        cfg.replace(attention=attention))
    params = explicit.init_params(jax.random.key(0))
    assert param_shapes(params) == param_shapes(fused.init_params(jax.random.key(0)))
    ids, mask, types = padded_batch(vocab=100, length=10)
    a = jitted(explicit, params, ids, mask, types)
    b = jitted(fused, params, ids, mask, types)
    real = mask.astype(bool)
    hf = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, inner_group_num=2)
    logits = np.asarray(a.prediction_logits)[real]
    np.testing.assert_allclose(logits, np.asarray(b.prediction_logits)[real], rtol=0,
                               atol=model_atol(logits, **hf))
    np.testing.assert_allclose(a.sop_logits, b.sop_logits, rtol=0,
                               atol=model_atol(a.sop_logits, **hf))
    maps = jitted(fused, params, ids, mask, types, output_attentions=True).attentions
    assert len(maps) == cfg.num_hidden_layers * cfg.inner_group_num
    assert maps[0].shape == (3, cfg.num_attention_heads, 10, 10)


def test_base_parameter_count_and_logical_names():
    cfg = PRESETS["albert-base-v2"]
    shapes = jax.eval_shape(lambda: M.AlbertModel(cfg).init_params(jax.random.key(0)))
    assert M.count_params(shapes["params"]) == 11_683_584
    known = {name for name, _ in LOGICAL_AXIS_RULES}
    for head in M.HEADS.values():
        boxed = jax.eval_shape(lambda h=head: h(cfg).init_params(jax.random.key(0)))["params"]
        leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for leaf in leaves:
            assert isinstance(leaf, nn.Partitioned), leaf
            assert len(leaf.names) == leaf.value.ndim
            assert set(leaf.names) <= known, leaf.names


def test_masked_positions_equal_full_logits():
    model = M.AlbertForMaskedLM(tiny_config())
    params = model.init_params(jax.random.key(1))
    ids, mask, types = padded_batch(vocab=100, length=10)
    positions = np.array([[1, 4], [0, 2], [3, 3]])
    full = model.apply(params, ids, mask, types).logits
    picked = model.apply(params, ids, mask, types, masked_positions=positions).logits
    want = np.take_along_axis(np.asarray(full), positions[..., None], 1)
    # The MLM head runs on [3, 2] rows instead of [3, 10]: its three reductions (dense over
    # hidden_size 16, LayerNorm, decoder over embedding_size 8) may be blocked and rounded
    # differently (1.4e-6 at logits of 4.7 on an AVX2 EPYC); the encoder is the same program.
    np.testing.assert_allclose(picked, want, rtol=0, atol=f32_atol(want, reduction=16, steps=3))


def test_packed_row_equals_each_sequence_alone():
    """Two sequences in one row with a block-diagonal [B, S, S] mask and positions from 0 in
    each: each gets the hidden states it has alone; a mask of another shape is refused."""
    model = M.AlbertModel(tiny_config())
    params = model.init_params(jax.random.key(1))
    rng = np.random.default_rng(0)
    a, b = rng.integers(5, 100, 4), rng.integers(5, 100, 6)
    mask = np.zeros((1, 12, 12), np.int32)
    mask[0, :4, :4] = mask[0, 4:10, 4:10] = 1
    mask[0, 10, 10] = mask[0, 11, 11] = 1  # padding tokens attend to themselves
    ids = np.concatenate([a, b, [0, 0]])[None]
    positions = np.concatenate([np.arange(4), np.arange(6), [0, 0]])[None]
    packed = model.apply(params, ids, mask, position_ids=positions).last_hidden_state[0]
    alone_a = model.apply(params, a[None]).last_hidden_state[0]
    alone_b = model.apply(params, b[None]).last_hidden_state[0]
    for got, want in ((packed[:4], alone_a), (packed[4:10], alone_b)):
        atol = model_atol(want, hidden_size=16, intermediate_size=32, num_hidden_layers=4)
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.apply(params, ids, mask[:, :, :6])


def test_dropout_only_when_not_deterministic():
    cfg = tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = M.AlbertForSequenceClassification(cfg)
    params = model.init_params(jax.random.key(0))
    ids, mask, types = padded_batch(vocab=100, length=10)

    @functools.partial(jax.jit, static_argnums=1)
    def run(seed, deterministic):
        return model.apply(params, ids, mask, types, deterministic=deterministic,
                           rngs={"dropout": jax.random.key(seed)}).logits

    # Bitwise: one compiled program on the same inputs (the unused key aside) is deterministic.
    np.testing.assert_array_equal(run(0, True), run(1, True))
    assert not np.allclose(run(0, False), run(1, False))
    np.testing.assert_array_equal(run(2, False), run(2, False))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_keeps_outputs_and_gradients(scan_layers):
    cfg = tiny_config(scan_layers=scan_layers)
    plain, remat = M.AlbertForMaskedLM(cfg), M.AlbertForMaskedLM(cfg.replace(remat="full"))
    params = plain.init_params(jax.random.key(0))
    ids, mask, types = padded_batch(vocab=100, length=10)

    def loss(model, p):
        return jnp.mean(model.apply(p, ids, mask, types).logits ** 2)

    # Rematerialisation recomputes the same math in a differently fused program: rounding
    # only, through the 4 layers and 2 outer steps of the forward pass and the mean over the
    # 3000 logits (and, for gradients, back: twice the steps, with the weight gradients
    # summed over the 30 positions).
    want = fastest(lambda p: loss(plain, p), scan_layers)(params)
    got = fastest(lambda p: loss(remat, p), scan_layers)(params)
    np.testing.assert_allclose(got, want, rtol=0, atol=f32_atol(want, 3000, 4 + 2))
    g1 = fastest(jax.grad(lambda p: loss(plain, p)), scan_layers)(params)
    g2 = fastest(jax.grad(lambda p: loss(remat, p)), scan_layers)(params)
    scale = max(float(np.abs(a).max()) for a in jax.tree_util.tree_leaves(g1))
    atol = f32_atol(scale, reduction=30 * 32, steps=2 * (4 + 2))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_shared_layer_gradient_sums_over_applications():
    """d loss / d shared weights = the sum over the L applications (checked numerically)."""
    cfg = tiny_config(num_hidden_layers=3)
    model = M.AlbertModel(cfg)
    params = nn.meta.unbox(model.init_params(jax.random.key(0)))
    ids, mask, types = padded_batch(vocab=100, length=10)
    path = ("params", "albert", "encoder", "albert_layer_groups_0", "albert_layers_0", "ffn",
            "bias")

    def loss(bias):
        p = jax.tree_util.tree_map(lambda x: x, params)
        p["params"]["albert"]["encoder"]["albert_layer_groups_0"]["albert_layers_0"]["ffn"][
            "bias"] = bias
        return jnp.sum(model.apply(p, ids, mask, types).last_hidden_state[:, 0, :3])

    bias = params
    for key in path:
        bias = bias[key]
    grad = jax.grad(loss)(bias)
    eps, i = 1e-2, 3
    numeric = (loss(bias.at[i].add(eps)) - loss(bias.at[i].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(grad[i], numeric, rtol=2e-2, atol=1e-4)


def test_bfloat16_compute_is_close_to_float32():
    cfg = tiny_config()
    params = M.AlbertForMaskedLM(cfg).init_params(jax.random.key(0))
    ids, mask, types = padded_batch(vocab=100, length=10)
    f32 = M.AlbertForMaskedLM(cfg).apply(params, ids, mask, types).logits
    bf16 = M.AlbertForMaskedLM(cfg.replace(dtype="bfloat16")).apply(params, ids, mask, types)
    assert bf16.logits.dtype == jnp.float32  # Logits come back in float32.
    err = np.abs(np.asarray(bf16.logits) - np.asarray(f32))[mask.astype(bool)]
    assert err.max() < 0.1 * np.abs(np.asarray(f32)).max()


def test_half_precision_products_accumulate_in_float32_on_cpu():
    """bf16 x bf16 -> the float32-accumulated product rounded once to bf16 (the fast oneDNN
    path on CPUs); float32 products are untouched."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(64, 256)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(256, 32)), jnp.bfloat16)
    dims = (((1,), (0,)), ((), ()))
    out = M._dot_general(a, b, dims)
    assert out.dtype == jnp.bfloat16
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    exact = a64 @ b64
    # Worst-case float32 accumulation error of each 256-term product (Higham's gamma_n bound;
    # any summation order, FMA or not), against float64.
    f32_error = 256 * EPS32 / 2 * (np.abs(a64) @ np.abs(b64))
    # Rounded once to bfloat16: within half a bfloat16 spacing of a float32-accurate value.
    # A bfloat16 accumulation would be off by many spacings.
    spacing = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - 7)
    err = np.abs(np.asarray(out, np.float64) - exact)
    assert np.all(err <= spacing / 2 + f32_error), float((err - spacing / 2 - f32_error).max())
    scores = M._einsum("qd,kd->qk", a, b.T, jnp.float32)
    assert scores.dtype == jnp.float32
    # Float32 output of bfloat16 inputs: exact products, float32 accumulation only.
    assert np.all(np.abs(np.asarray(scores, np.float64) - exact) <= f32_error)
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    # Bitwise: the very same primitive on the same inputs (the float32 path is untouched).
    np.testing.assert_array_equal(M._dot_general(a32, b32, dims), jax.lax.dot_general(a32, b32,
                                                                                      dims))


def test_too_long_input_is_a_clear_error():
    model = M.AlbertModel(tiny_config())
    params = model.init_params(jax.random.key(0))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model.apply(params, np.ones((1, 33), np.int32))
