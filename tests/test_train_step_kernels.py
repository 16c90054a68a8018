"""The training step's hand-written gradients (issue 12, part 3) against JAX's automatic
ones: the dense product with its activation (both transpose branches), the softmax, and
the masked-LM accuracy's argmax test.

The dense product's custom gradient is the same math summed in another order, so it agrees
with the automatic one to float32 round-off: a few ulps of the largest terms of each dot
(K <= 48 products here), far inside ``rtol=1e-5``. The softmax gradient subtracts nearly
equal terms, so it is checked against float64 with a bound in ulps of those terms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax.model import ACTIVATIONS, _act_product, _dense_dot_general, _softmax
from albert_jax.training.pretrain import _is_argmax


@pytest.mark.parametrize("act", ["gelu_new", "gelu", "relu", "linear"])
@pytest.mark.parametrize("k,n", [(12, 48), (48, 12)])  # both transpose branches (k > n)
def test_act_product_gradient_matches_autodiff(act, k, n):
    f = ACTIVATIONS[act]
    x = jax.random.normal(jax.random.key(0), (3, 5, k))
    w = jax.random.normal(jax.random.key(1), (k, n)) / np.sqrt(k)
    c = jax.random.normal(jax.random.key(2), (3, 5, n))

    def ours(x, w):
        return jnp.sum(_act_product(f, x, w) * c)

    def auto(x, w):
        return jnp.sum(jnp.einsum("bsk,kn->bsn", f(x), w) * c)

    np.testing.assert_allclose(ours(x, w), auto(x, w), rtol=1e-6)
    for got, want in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(auto, (0, 1))(x, w),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dense_dot_general_falls_back_for_other_dimension_numbers():
    x = jax.random.normal(jax.random.key(0), (4, 6))
    w = jax.random.normal(jax.random.key(1), (5, 6))
    dims = (((1,), (1,)), ((), ()))  # x @ w.T: not Dense's layout
    got = _dense_dot_general(x, w, dims, act=jnp.tanh)
    np.testing.assert_allclose(got, jnp.tanh(x) @ w.T, rtol=1e-6)


def test_act_product_keeps_half_precision_dtypes():
    f = functools.partial(jax.nn.gelu, approximate=True)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (8, 16)).astype(jnp.bfloat16)
    y = _act_product(f, x, w)
    dx, dw = jax.grad(lambda x, w: jnp.sum(_act_product(f, x, w).astype(jnp.float32)),
                      (0, 1))(x, w)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16,) * 3


def test_softmax_gradient_matches_float64():
    s = jax.random.normal(jax.random.key(0), (2, 3, 7, 7)) * 4
    c = jax.random.normal(jax.random.key(1), s.shape)
    np.testing.assert_array_equal(_softmax(s), jax.nn.softmax(s, axis=-1))
    got = np.asarray(jax.grad(lambda s: jnp.sum(_softmax(s) * c))(s), np.float64)
    s64, c64 = np.asarray(s, np.float64), np.asarray(c, np.float64)
    y = np.exp(s64 - s64.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    want = y * (c64 - (c64 * y).sum(-1, keepdims=True))
    # y * (c - sum(c * y)) in float32: a few ulps of y times the terms of the difference.
    scale = y * (np.abs(c64) + (np.abs(c64) * y).sum(-1, keepdims=True))
    assert np.all(np.abs(got - want) <= 8 * np.finfo(np.float32).eps * scale + 1e-30)


@pytest.mark.parametrize("vocab", [2, 7, 300])
def test_is_argmax_is_argmax_equality_with_ties(vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.integers(0, 3, (64, 5, vocab)).astype(np.float32)  # ties everywhere
    ids = rng.integers(0, vocab, (64, 5)).astype(np.int32)
    # Half of the targets sit on the first maximum, some on a later tied one.
    ids = np.where(rng.random(ids.shape) < 0.5, logits.argmax(-1), ids).astype(np.int32)
    want = logits.argmax(-1) == ids
    got = np.asarray(_is_argmax(jnp.asarray(logits), jnp.asarray(ids)))
    assert want.any() and (~want).any()
    np.testing.assert_array_equal(got, want)
