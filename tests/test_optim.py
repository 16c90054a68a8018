"""albert_jax.training.optim against a direct NumPy transcription of ALBERT's published update."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import EPS32, f32_atol

from albert_jax.config import AlbertConfig
from albert_jax.model import AlbertForPreTraining
from albert_jax.training import optim

EXCLUDE = ("LayerNorm", "layer_norm", "bias")


def small_tree(seed: int = 0) -> dict:
    """Kernels, biases, LayerNorm scale/bias, and an all-zero kernel (trust ratio 1)."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return {
        "encoder": {
            "dense": {"kernel": f(4, 3), "bias": f(3)},
            "LayerNorm": {"scale": 1.0 + 0.1 * f(3), "bias": f(3)},
            "full_layer_layer_norm": {"scale": 1.0 + 0.1 * f(3), "bias": f(3)},
            "zero_init": {"kernel": np.zeros((3, 2), np.float32)},
        },
        "predictions": {"bias": f(5)},
        "embedding": f(5, 3),
    }


def paths(tree: dict) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(k.key) for k in p): np.asarray(v) for p, v in flat}


def reference_albert(params, grads_seq, lr_fn, clip, wd, b1=0.9, b2=0.999, eps=1e-6):
    """google-research/albert lamb_optimizer.py + tf.clip_by_global_norm, in float64."""
    p = {k: v.astype(np.float64) for k, v in paths(params).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g = {k: x.astype(np.float64) for k, x in paths(grads).items()}
        gnorm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        g = {k: x * clip / max(gnorm, clip) for k, x in g.items()}
        lr = lr_fn(step)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            update = m[k] / (np.sqrt(v[k]) + eps)
            excluded = any(s in k for s in EXCLUDE)
            if not excluded:
                update = update + wd * p[k]
            ratio = 1.0
            if not excluded:
                w_norm, u_norm = np.linalg.norm(p[k]), np.linalg.norm(update)
                ratio = w_norm / u_norm if (w_norm > 0 and u_norm > 0) else 1.0
            p[k] = p[k] - ratio * lr * update
    return p


def reference_schedule(step, peak, warmup, total, end=0.0, power=1.0):
    if step < warmup:
        return peak * step / warmup
    return (peak - end) * (1 - min(step, total) / total) ** power + end


def grad_seq(n: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = small_tree()
    # Scales vary so that some steps are clipped (global norm > 1) and some are not.
    return [
        jax.tree.map(lambda x, s=s: (s * rng.normal(size=x.shape)).astype(np.float32), base)
        for s in (0.5, 0.05, 2.0, 0.1, 1.0)[:n]
    ]


def test_lamb_matches_published_update():
    peak, warmup, total, wd = 0.05, 2, 10, 0.01
    sched = optim.warmup_polynomial_decay(peak, warmup, total)
    opt = optim.make_optimizer("lamb", sched, clip_norm=1.0, weight_decay=wd)
    params = jax.tree.map(jnp.asarray, small_tree())
    grads_seq = grad_seq(5)
    state = opt.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads_seq:
        params, state = step(params, state, g)
    ref = reference_albert(
        small_tree(), grads_seq, lambda s: reference_schedule(s, peak, warmup, total), 1.0, wd
    )
    got = paths(params)
    assert got.keys() == ref.keys()
    # Float32 against float64: 5 steps of about 10 successive operations each (clip, moments,
    # sqrt, division, decay, two norms over the 50 values of the tree, the update).
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=f32_atol(ref[k], 50, 5 * 10),
                                   err_msg=k)
    # The zero-initialised kernel moved (ratio 1 applied), and something was clipped.
    assert np.any(got["encoder/zero_init/kernel"] != 0)


def test_no_bias_correction_first_step():
    # Step 1 without bias correction: m = 0.1 g, v = 0.001 g^2 -> |u| = 0.1/sqrt(0.001) ~ 3.16,
    # where bias-corrected Adam would give 1.
    opt = optim.albert_lamb(1.0, weight_decay=0.0, exclude_from_layer_adaptation=("",))
    params = {"bias": jnp.ones(3)}
    updates, _ = opt.update({"bias": jnp.full(3, 2.0)}, opt.init(params), params)
    np.testing.assert_allclose(updates["bias"], -0.1 / (np.sqrt(0.001) + 1e-6 / 2.0), rtol=1e-5)


@pytest.mark.parametrize(
    "peak,warmup,total,end,power", [(1.76e-3, 3125, 125000, 0.0, 1.0), (1.0, 10, 100, 0.1, 2.0)]
)
def test_schedule_formula(peak, warmup, total, end, power):
    sched = optim.warmup_polynomial_decay(peak, warmup, total, end_lr=end, power=power)
    steps = [
        0,
        1,
        warmup // 2,
        warmup - 1,
        warmup,
        warmup + 1,
        total // 2,
        total - 1,
        total,
        total + 7,
    ]
    got = jax.jit(jax.vmap(sched))(jnp.asarray(steps))
    want = [reference_schedule(s, peak, warmup, total, end, power) for s in steps]
    # A few correctly rounded float32 operations (divide, subtract, multiply, power) against
    # float64: each within half an ulp, the power a few ulps on any CPU.
    np.testing.assert_allclose(np.asarray(got), want, rtol=16 * EPS32, atol=1e-12)
    assert float(sched(0)) == 0.0


def test_schedule_without_warmup():
    sched = optim.warmup_polynomial_decay(2.0, 0, 4)
    np.testing.assert_allclose([float(sched(s)) for s in range(5)], [2.0, 1.5, 1.0, 0.5, 0.0])


def tiny_abstract_params() -> dict:
    cfg = AlbertConfig(
        vocab_size=100,
        embedding_size=8,
        hidden_size=16,
        num_hidden_layers=4,
        num_hidden_groups=2,
        inner_group_num=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = AlbertForPreTraining(cfg)
    boxed = jax.eval_shape(model.init_params, jax.random.key(0))
    return nn.meta.unbox(boxed)["params"]


def test_masks_on_real_albert_tree():
    params = tiny_abstract_params()
    mask = paths(optim.decay_mask(params))
    excluded = {k for k, keep in mask.items() if not keep}
    # Independent expectation: LayerNorm modules (either spelling) and every bias.
    expected = {
        k
        for k in mask
        if k.split("/")[-1] == "bias" or k.split("/")[-2] in ("LayerNorm", "full_layer_layer_norm")
    }
    assert excluded == expected
    for k in (
        "albert/embeddings/LayerNorm/scale",
        "predictions/bias",
        "predictions/LayerNorm/bias",
        "sop_classifier/classifier/bias",
    ):
        assert k in excluded, k
    assert any("full_layer_layer_norm/scale" in k for k in excluded)
    assert all(k.endswith(("kernel", "embedding")) for k in set(mask) - excluded)
    assert "albert/embeddings/word_embeddings/embedding" in set(mask) - excluded


def test_boxed_tree_is_rejected():
    boxed = {"dense": {"kernel": nn.Partitioned(jnp.ones((2, 2)), names=("embed", "mlp"))}}
    with pytest.raises(TypeError, match="unbox"):
        optim.decay_mask(boxed)


@pytest.mark.parametrize("name,accum", [("lamb", 1), ("adamw", 1), ("lamb", 2)])
def test_state_is_abstract_pytree_on_real_tree(name, accum):
    params = tiny_abstract_params()
    opt = optim.make_optimizer(
        name, optim.warmup_polynomial_decay(1e-3, 10, 100), accumulation_steps=accum
    )
    state = jax.eval_shape(opt.init, params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    grads = params
    new_params = jax.eval_shape(
        lambda p, s, g: optax.apply_updates(p, opt.update(g, s, p)[0]), params, state, grads
    )
    assert jax.tree.structure(new_params) == jax.tree.structure(params)


def test_adamw_runs_and_masks_decay():
    params = jax.tree.map(jnp.asarray, small_tree())
    opt = optim.make_optimizer("adamw", 1e-2, clip_norm=None, weight_decay=0.5)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(opt.update)(zero, opt.init(params), params)
    # Zero gradient: only weight decay moves params, and only non-excluded ones.
    for k, u in paths(updates).items():
        p = paths(small_tree())[k]
        if any(s in k for s in EXCLUDE):
            np.testing.assert_array_equal(u, 0.0, err_msg=k)
        else:
            # Two float32 products (and 1e-2 rounded to float32): 1.5 eps at most.
            np.testing.assert_allclose(u, -1e-2 * 0.5 * p, rtol=8 * EPS32, err_msg=k)
    grads = grad_seq(1)[0]
    updates, _ = jax.jit(opt.update)(grads, state, params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_multisteps_equals_mean_gradient_step(name):
    sched = optim.warmup_polynomial_decay(0.05, 1, 10)
    params = jax.tree.map(jnp.asarray, small_tree())
    g1, g2 = grad_seq(3)[1:3]  # second one is large: clipping acts on the mean
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)

    ref_opt = optim.make_optimizer(name, sched)
    acc_opt = optim.make_optimizer(name, sched, accumulation_steps=2)

    def run(opt, grads_list):
        p, s = params, opt.init(params)
        update = jax.jit(opt.update)
        for g in grads_list:
            u, s = update(g, s, p)
            p = optax.apply_updates(p, u)
        return p

    # Two outer steps so that the schedule (lr 0 at step 0) is exercised past step 0.
    ref = run(ref_opt, [mean, mean])
    acc = run(acc_opt, [g1, g2, g1, g2])
    mid = run(acc_opt, [g1])  # the first micro-batch leaves params unchanged
    # The mean gradient is formed in another order (rounding only), then 2 steps of about
    # 10 operations each over the 50 values of the tree.
    for k, v in paths(ref).items():
        np.testing.assert_allclose(paths(acc)[k], v, rtol=0, atol=f32_atol(v, 50, 2 * 10),
                                   err_msg=k)
        np.testing.assert_array_equal(paths(mid)[k], paths(params)[k])


def test_unknown_name_rejected():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("sgd", 0.1)
