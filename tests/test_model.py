"""The Flax model against transformers' PyTorch ALBERT, loaded through load_pretrained."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY, save_hf_model

from albert_jax import model as M
from albert_jax.config import PRESETS, AlbertConfig
from albert_jax.pretrained import load_pretrained
from albert_jax.sharding import LOGICAL_AXIS_RULES

ATOL = 1e-4


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


# --------------------------------------------------------------------- parity with transformers
PARITY_CONFIGS = {
    "base-v2": dict(),  # The full albert-base-v2 shapes.
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


def test_backbone_and_mlm_match_transformers(pretraining_checkpoint):
    """Each head is loaded once; the scanned and the unrolled model run on the same tree."""
    _name, directory, torch_model = pretraining_checkpoint
    ids, mask, types = padded_batch()
    ref = torch_outputs(torch_model, ids, mask, types, output_hidden_states=True)
    ref_base = torch_outputs(torch_model.albert, ids, mask, types)

    def both(model):
        return model, model.clone(config=model.config.replace(scan_layers=False))

    base, base_params, _ = load_pretrained(directory, head="base")
    mlm, mlm_params, _ = load_pretrained(directory, head="masked_lm")
    pre, pre_params, _ = load_pretrained(directory, head="pretraining")
    for base_m, mlm_m, pre_m in zip(both(base), both(mlm), both(pre), strict=True):
        out = base_m.apply(base_params, ids, mask, types)
        assert max_diff(out.last_hidden_state, ref_base.last_hidden_state, mask) < ATOL
        assert max_diff(out.pooler_output, ref_base.pooler_output) < ATOL

        logits = mlm_m.apply(mlm_params, ids, mask, types).logits
        assert max_diff(logits, ref.prediction_logits, mask) < ATOL

        out = pre_m.apply(pre_params, ids, mask, types, output_hidden_states=True)
        assert max_diff(out.prediction_logits, ref.prediction_logits, mask) < ATOL
        assert max_diff(out.sop_logits, ref.sop_logits) < ATOL
        assert len(out.hidden_states) == len(ref.hidden_states)
        for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
            assert max_diff(ours, theirs, mask) < ATOL


def test_attention_maps_match_transformers(tmp_path):
    config = dict(TINY, num_hidden_groups=2, inner_group_num=2, attn_implementation="eager")
    torch_model = save_hf_model(tmp_path, "AlbertModel", **config)
    ids, mask, types = padded_batch()
    ref = torch_outputs(torch_model, ids, mask, types, output_attentions=True)
    model, params, _ = load_pretrained(tmp_path, head="base")
    out = model.apply(params, ids, mask, types, output_attentions=True)
    # HF returns one map per inner layer per application: 4 layers x 2 inner layers.
    assert len(out.attentions) == len(ref.attentions) == 8
    for ours, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert max_diff(ours, theirs) < 1e-5


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
        assert max_diff(out.start_logits, ref.start_logits, mask) < ATOL
        assert max_diff(out.end_logits, ref.end_logits, mask) < ATOL
    elif head == "token_classification":
        assert max_diff(out.logits, ref.logits, mask) < ATOL
    else:
        assert max_diff(out.logits, ref.logits) < ATOL


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
    a = scanned.apply(params, ids, mask, types)
    b = unrolled.apply(params, ids, mask, types)
    np.testing.assert_allclose(a.prediction_logits, b.prediction_logits, atol=1e-5)
    np.testing.assert_allclose(a.sop_logits, b.sop_logits, atol=1e-5)


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
    a = explicit.apply(params, ids, mask, types)
    b = fused.apply(params, ids, mask, types)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(a.prediction_logits)[real],
                               np.asarray(b.prediction_logits)[real], atol=1e-5)
    np.testing.assert_allclose(a.sop_logits, b.sop_logits, atol=1e-5)
    maps = fused.apply(params, ids, mask, types, output_attentions=True).attentions
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
    np.testing.assert_allclose(picked, np.take_along_axis(full, positions[..., None], 1),
                               atol=1e-6)


def test_dropout_only_when_not_deterministic():
    cfg = tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = M.AlbertForSequenceClassification(cfg)
    params = model.init_params(jax.random.key(0))
    ids, mask, types = padded_batch(vocab=100, length=10)

    @functools.partial(jax.jit, static_argnums=1)
    def run(seed, deterministic):
        return model.apply(params, ids, mask, types, deterministic=deterministic,
                           rngs={"dropout": jax.random.key(seed)}).logits

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

    np.testing.assert_allclose(loss(plain, params), loss(remat, params), rtol=1e-6)
    g1 = jax.grad(lambda p: loss(plain, p))(params)
    g2 = jax.grad(lambda p: loss(remat, p))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


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
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    np.testing.assert_array_equal(out, jnp.asarray(exact.astype(np.float32), jnp.bfloat16))
    scores = M._einsum("qd,kd->qk", a, b.T, jnp.float32)
    assert scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-4)
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    np.testing.assert_array_equal(M._dot_general(a32, b32, dims), jax.lax.dot_general(a32, b32,
                                                                                      dims))


def test_too_long_input_is_a_clear_error():
    model = M.AlbertModel(tiny_config())
    params = model.init_params(jax.random.key(0))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model.apply(params, np.ones((1, 33), np.int32))
