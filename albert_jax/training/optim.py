"""Optimisers and learning-rate schedule of ALBERT pretraining, built from optax transforms.

ALBERT (google-research/albert ``lamb_optimizer.py`` and ``optimization.py``) trains with a
LAMB variant that differs from ``optax.lamb``: Adam moments are used **without bias
correction** (BERT's ``AdamWeightDecayOptimizer`` style), and LayerNorm parameters and biases
are excluded both from weight decay and from the layer-wise trust ratio. Per parameter ``w``
with gradient ``g`` (after global-norm clipping), one step is::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    u = m / (sqrt(v) + eps)                      # no bias correction
    u += weight_decay * w                        # unless excluded from weight decay
    r = ||w|| / ||u|| if ||w|| > 0 and ||u|| > 0 else 1   # 1 if excluded from adaptation
    w -= lr * r * u

All transforms here act on **plain (unboxed) parameter trees**. Trees returned by
``model.init_params`` hold ``flax.linen.Partitioned`` boxes: unbox them first with
``flax.linen.meta.unbox`` (sharding metadata belongs to the shardings, not to the
optimiser). Exclusion masks are computed from '/'-joined parameter paths such as
``albert/embeddings/LayerNorm/scale`` or ``predictions/bias``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# Substrings of a parameter path that exclude it (ALBERT's run_pretraining defaults).
DEFAULT_EXCLUDE: tuple[str, ...] = ("LayerNorm", "layer_norm", "bias")

PyTree = Any


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """A pytree key path as text: dict keys, attribute names and sequence indices."""
    out = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                out.append(str(getattr(key, attr)))
                break
        else:
            out.append(str(key))
    return tuple(out)


def param_path_names(params: PyTree) -> PyTree:
    """A tree like ``params`` whose leaves are the '/'-joined paths of the parameters.

    Raises ``TypeError`` on boxed (``nn.Partitioned``) trees: the path would then include
    the box and the masks would not line up with the unboxed tree the optimiser sees.
    """
    boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    if any(isinstance(x, nn.meta.AxisMetadata) for x in boxed):
        raise TypeError(
            "albert_jax.training.optim works on unboxed parameter trees: apply "
            "flax.linen.meta.unbox(params) first"
        )
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(path_names(path)), params
    )


def exclusion_mask(params: PyTree, exclude: Sequence[str]) -> PyTree:
    """True for leaves whose path contains **none** of the ``exclude`` substrings.

    True means "the transform applies" (optax mask convention).
    """
    exclude = tuple(exclude)
    return jax.tree.map(lambda name: not any(s in name for s in exclude), param_path_names(params))


def decay_mask(params: PyTree, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> PyTree:
    """Weight-decay mask: False exactly for LayerNorm parameters and biases (by default).

    Works on abstract trees too (``jax.ShapeDtypeStruct`` leaves from ``jax.eval_shape``).
    """
    return exclusion_mask(params, exclude)


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    """First and second moments (no step count: nothing here is bias-corrected)."""

    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """``m / (sqrt(v) + eps)`` with raw exponential moments, as in BERT/ALBERT.

    ``optax.scale_by_adam`` (optax 0.2.8) always bias-corrects and has no switch to turn it
    off, so the published update needs this small transform.
    """

    def init_fn(params: optax.Params) -> ScaleByAdamNoBiasCorrectionState:
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return ScaleByAdamNoBiasCorrectionState(
            mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params)
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByAdamNoBiasCorrectionState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, ScaleByAdamNoBiasCorrectionState]:
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, updates)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, ScaleByAdamNoBiasCorrectionState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def albert_lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    exclude_from_weight_decay: Sequence[str] = DEFAULT_EXCLUDE,
    exclude_from_layer_adaptation: Sequence[str] | None = None,
) -> optax.GradientTransformation:
    """ALBERT's LAMB (google-research/albert ``lamb_optimizer.py``); see the module docstring.

    Args:
      learning_rate: a float or an ``optax.Schedule`` of the update count.
      b1, b2, eps: Adam moment decays and denominator epsilon (no bias correction).
      weight_decay: decoupled weight decay added to the update before the trust ratio.
      exclude_from_weight_decay: path substrings that get no weight decay.
      exclude_from_layer_adaptation: path substrings that use trust ratio 1; ``None``
        means the same list as ``exclude_from_weight_decay`` (as ALBERT does).

    Params passed to ``update`` must be unboxed (see module docstring).
    """
    wd_exclude = tuple(exclude_from_weight_decay)
    la_exclude = (
        wd_exclude
        if exclude_from_layer_adaptation is None
        else tuple(exclude_from_layer_adaptation)
    )
    # Masks are callables so the same optimiser serves any tree (real or abstract).
    return optax.chain(
        scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=lambda p: exclusion_mask(p, wd_exclude)),
        # optax's trust ratio already returns 1 when either norm is 0, as ALBERT does.
        optax.masked(optax.scale_by_trust_ratio(), lambda p: exclusion_mask(p, la_exclude)),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.01,
    exclude_from_weight_decay: Sequence[str] = DEFAULT_EXCLUDE,
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
) -> optax.GradientTransformation:
    """``optax.adamw`` with ALBERT's weight-decay exclusions (LayerNorm and biases).

    Unlike :func:`albert_lamb` this is the standard, bias-corrected AdamW (what PyTorch's
    AdamW and Hugging Face fine-tuning use), with decoupled decay scaled by the rate.
    """
    wd_exclude = tuple(exclude_from_weight_decay)
    return optax.adamw(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=lambda p: exclusion_mask(p, wd_exclude),
    )


def warmup_polynomial_decay(
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    end_lr: float = 0.0,
    power: float = 1.0,
) -> optax.Schedule:
    """ALBERT's schedule (google-research/albert ``optimization.py``), exactly::

        decayed(step) = (peak - end) * (1 - min(step, total) / total) ** power + end
        lr(step) = peak * step / warmup   if step < warmup
                   decayed(step)          otherwise

    The decay runs over *all* ``total_steps`` counted from step 0 (warmup overrides it
    rather than shifting it), so just after warmup the rate is slightly below ``peak_lr``.
    Step 0 has rate 0 when ``warmup_steps > 0``. Steps past ``total_steps`` stay at
    ``end_lr``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        # (total - step) / total rather than 1 - step / total: XLA turns division by a
        # constant into a multiply by its float32 reciprocal, and the subtraction would
        # then cancel catastrophically near the end (leaving lr != end_lr at total_steps).
        frac = (total_steps - jnp.minimum(step, total_steps)) / total_steps
        decayed = (peak_lr - end_lr) * frac**power + end_lr
        if warmup_steps == 0:
            return decayed
        warm = peak_lr * step / warmup_steps
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


# The optimizers a run config may name (``optimizer.name``): the one list of them.
OPTIMIZERS = {"lamb": albert_lamb, "adamw": adamw}


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.01,
    accumulation_steps: int = 1,
    **kw: Any,
) -> optax.GradientTransformation:
    """``"lamb"`` (ALBERT pretraining) or ``"adamw"`` (fine-tuning), clipping first.

    Args:
      name: ``"lamb"`` or ``"adamw"``.
      learning_rate: a float or an ``optax.Schedule``.
      clip_norm: global-norm gradient clip applied before the optimiser (``None``: off).
      weight_decay: decoupled weight decay for non-excluded parameters.
      accumulation_steps: if > 1, wrap in ``optax.MultiSteps``: updates are zero on the
        first ``k - 1`` micro-batches and the k-th applies one step on the *mean* gradient.
        Clipping sits inside the wrapper, so it clips the mean gradient like one big batch.
        The schedule counts real (outer) steps.
      **kw: passed to :func:`albert_lamb` or :func:`adamw` (``b1``, ``b2``, ``eps``,
        exclusion lists).

    Params passed to ``update`` must be unboxed.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of "
                         f"{', '.join(map(repr, OPTIMIZERS))}")
    opt = OPTIMIZERS[name](learning_rate, weight_decay=weight_decay, **kw)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if accumulation_steps > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=accumulation_steps).gradient_transformation()
    return opt
