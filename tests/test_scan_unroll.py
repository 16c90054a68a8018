"""``scan_unroll`` (nn.scan's ``unroll``): the same outputs and gradients as the plain scan
and as unrolled layers, one parameter tree, and the loop really unrolled."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax.config import AlbertConfig, ConfigError
from albert_jax.model import AlbertForPreTraining

# 3 layers per group. Not narrower: XLA's CPU compiler inlines dots this small into the
# elementwise fusions around them and copies the chain into every consumer across the
# unrolled layers (hidden 16: a 7 MB program, 11 s to compile the gradient; 64: 2 s).
CONFIG = AlbertConfig(vocab_size=100, embedding_size=8, hidden_size=64, num_hidden_layers=6,
                      num_attention_heads=2, intermediate_size=128, max_position_embeddings=32,
                      initializer_range=0.5, num_hidden_groups=2)


def _loss_and_grads(cfg: AlbertConfig, params, ids):
    model = AlbertForPreTraining(cfg)

    def loss(p):
        out = model.apply(p, ids)
        return jnp.sum(out.prediction_logits ** 2) * 1e-3 + jnp.sum(out.sop_logits)

    return jax.jit(jax.value_and_grad(loss))(params)


def _scan_unroll_params(cfg: AlbertConfig, ids) -> list[int]:
    """The ``unroll`` of every scan in the forward's jaxpr."""
    model = AlbertForPreTraining(cfg)
    params = model.init_params(jax.random.key(0))
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, ids))(params)
    found = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "scan":
                found.append(eqn.params["unroll"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def test_scan_unroll_equals_scan_and_unrolled():
    ids = jax.random.randint(jax.random.key(1), (2, 12), 4, 100)
    params = AlbertForPreTraining(CONFIG).init_params(jax.random.key(0))
    ref_loss, ref_grads = _loss_and_grads(CONFIG.replace(scan_layers=False), params, ids)
    # float32 through 6 layers: the settings differ only by rounding in fusions XLA
    # arranges differently (~1e-7 relative per op); 1e-5 of the largest gradient is far
    # above that and far below any real difference. (Some gradients, such as the key
    # bias's, are exactly zero in exact arithmetic: only rounding noise remains there.)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    # unroll=2 does not divide the 3 layers of a group: a 2-layer body plus a remainder,
    # the case most likely to go wrong (the plain scan is the reference's other side).
    cfg = CONFIG.replace(scan_unroll=2)
    loss, grads = _loss_and_grads(cfg, params, ids)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, c in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, c, atol=1e-5 * scale, rtol=1e-5)
    # The loop is really unrolled, and capped at the 3 layers per group.
    assert _scan_unroll_params(cfg, ids) == [2, 2]
    assert _scan_unroll_params(CONFIG.replace(scan_unroll=4), ids) == [3, 3]


def test_scan_unroll_is_a_runtime_field():
    assert "scan_unroll" not in CONFIG.replace(scan_unroll=3).to_hf_dict()
    assert _scan_unroll_params(CONFIG, jnp.ones((1, 4), jnp.int32)) == [1, 1]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="scan_unroll must be a positive integer"):
            CONFIG.replace(scan_unroll=bad)
