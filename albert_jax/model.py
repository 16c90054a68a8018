"""ALBERT in Flax Linen: one shared transformer layer, applied with ``nn.scan``.

Weight sharing is expressed by the program: each layer group is a single module whose
parameters are broadcast (not stacked) across the ``layers_per_group`` scan iterations, so
the parameter tree holds exactly one copy of each group's weights. ``scan_layers=False``
calls the same module instance in a Python loop and yields the *same* tree.

Parameter tree (identical for every head; Hugging Face names with ``.N.`` -> ``_N``)::

    albert/embeddings/{word,position,token_type}_embeddings/embedding   [V|P|T, E]
    albert/embeddings/LayerNorm/{scale,bias}                            [E]
    albert/encoder/embedding_hidden_mapping_in/{kernel,bias}            [E, H]
    albert/encoder/albert_layer_groups_{g}/albert_layers_{i}/
        attention/{query,key,value,dense}/{kernel,bias}                 [H, H]
        attention/LayerNorm/{scale,bias}                                [H]
        ffn/{kernel,bias} [H, I]   ffn_output/{kernel,bias} [I, H]
        full_layer_layer_norm/{scale,bias}                              [H]
    albert/pooler/{kernel,bias}                    (heads that use the pooled output)
    predictions/{dense,LayerNorm}/..., predictions/bias [V]    (MLM; decoder tied)
    sop_classifier/classifier/{kernel,bias}        classifier/{kernel,bias}
    qa_outputs/{kernel,bias}

Every parameter carries logical axis names (see ``albert_jax.sharding``).
Shapes: B batch, S sequence length, E embedding size, H hidden size, V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from albert_jax.config import AlbertConfig

Array = jax.Array


def _quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


# The activations of Hugging Face's ACT2FN that ALBERT configs use.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf (v1 hub configs)
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # tanh approximation (v2)
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# ---------------------------------------------------------------------------- outputs
# Keyword-only, so that every output can put the shared optional fields in one base class.
@flax.struct.dataclass(kw_only=True)
class _WithInternals:
    """hidden_states: tuple of L + 1 arrays [B, S, H] (the first after
    ``embedding_hidden_mapping_in``); attentions: tuple of L * inner_group_num arrays
    [B, heads, S, S]. Both None unless asked for."""

    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None


def _internals(out: _WithInternals) -> dict[str, tuple[Array, ...] | None]:
    """The backbone's hidden states and attention maps, passed on to a head's output."""
    return {"hidden_states": out.hidden_states, "attentions": out.attentions}


@flax.struct.dataclass(kw_only=True)
class AlbertOutput(_WithInternals):
    """last_hidden_state [B, S, H]; pooler_output [B, H] or None."""

    last_hidden_state: Array
    pooler_output: Array | None = None


@flax.struct.dataclass(kw_only=True)
class LogitsOutput(_WithInternals):
    """logits: [B, S, V] (masked LM; [B, P, V] when ``masked_positions`` [B, P] is given),
    [B, num_labels] (sequence), [B, S, num_labels] (token), [B, C] (multiple choice)."""

    logits: Array


@flax.struct.dataclass(kw_only=True)
class PreTrainingOutput(_WithInternals):
    """prediction_logits [B, S or P, V]; sop_logits [B, 2]."""

    prediction_logits: Array
    sop_logits: Array


@flax.struct.dataclass(kw_only=True)
class QuestionAnsweringOutput(_WithInternals):
    """start_logits, end_logits: [B, S]."""

    start_logits: Array
    end_logits: Array


# ---------------------------------------------------------------------------- building blocks
def _init(config: AlbertConfig) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=config.initializer_range)


_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _half_on_cpu(dtype: Any) -> bool:
    return jnp.dtype(dtype) in _HALF and jax.default_backend() == "cpu"


def _dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                 preferred_element_type: Any = None, **kwargs: Any) -> Array:
    """``lax.dot_general``; half-precision products on CPU accumulate in float32 and are
    cast back. On a CPU with AVX512-BF16, XLA's bf16 -> bf16 dot runs at the float32 rate
    while bf16 -> f32 takes oneDNN's bf16 path at twice it (2048^3 on this project's CPU:
    179, 190 and 384 GFLOP/s for bf16, f32 and bf16 -> f32), and f32 accumulation is what
    GPUs and TPUs do anyway. Other backends keep the plain dot (their GEMMs already
    accumulate in f32)."""
    dtype = jnp.result_type(lhs, rhs)
    if preferred_element_type is None and _half_on_cpu(dtype):
        out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                  preferred_element_type=jnp.float32, **kwargs)
        return out.astype(dtype)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def _identity(x: Array) -> Array:
    return x


# The dense product and its gradient. XLA CPU runs dots on YNNPACK's GEMM only when the
# left operand is row-major with its contracting axis last; the automatic weight gradient
# ``x^T g`` contracts both operands over their leading (token) axis, so it fell back to
# Eigen at about 60% of YNNPACK's rate (the largest non-matmul cost of the CPU training
# step, issue 12). The gradient here transposes one operand first, behind an optimization
# barrier so that XLA cannot fold the transpose back into the dot: ``x^T [K, T] @ g [T, N]``,
# or for K > N (the FFN output) ``(g^T [N, T] @ x [T, K])^T``, which transposes the smaller
# arrays. Same math; the sums run in another kernel's order.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _act_product(act: Callable[[Array], Array], x: Array, kernel: Array) -> Array:
    """act(x) [..., K] @ kernel [K, N] -> [..., N] (:func:`_dot_general`'s rule).

    The gradient keeps only ``x``, not ``act(x)`` nor the activation's intermediates (for
    the FFN output: one [B, S, I] array per layer instead of six), and recomputes ``act``."""
    return _dot_general(act(x), kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _act_product_fwd(act, x, kernel):
    return _act_product(act, x, kernel), (x, kernel)


def _act_product_bwd(act, res, g):
    x, kernel = res
    k, n = kernel.shape
    y, act_vjp = jax.vjp(act, x)
    dy = _dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    (dx,) = act_vjp(dy.astype(y.dtype))
    if k > n:
        g_t = jax.lax.optimization_barrier(g.reshape(-1, n).T)  # [N, T]
        dk = _dot_general(g_t, y.reshape(-1, k), (((1,), (0,)), ((), ()))).T
    else:
        y_t = jax.lax.optimization_barrier(y.reshape(-1, k).T)  # [K, T]
        dk = _dot_general(y_t, g.reshape(-1, n), (((1,), (0,)), ((), ())))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_act_product.defvjp(_act_product_fwd, _act_product_bwd)


def _dense_dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                       preferred_element_type: Any = None, *,
                       act: Callable[[Array], Array] = _identity, **kwargs: Any) -> Array:
    """``nn.Dense``'s product: its plain [..., K] @ [K, N] case through
    :func:`_act_product` (``act`` applied to the input first: ``nn.Dense(...,
    dot_general=partial(_dense_dot_general, act=f))(x)`` is ``Dense(f(x))`` with the
    same parameters); anything else goes to :func:`_dot_general`."""
    (contract, batch) = dimension_numbers
    plain = (tuple(contract[0]), tuple(contract[1]), tuple(batch[0]), tuple(batch[1])) == (
        (lhs.ndim - 1,), (0,), (), ())
    if (plain and rhs.ndim == 2 and precision is None and preferred_element_type is None
            and not kwargs):
        return _act_product(act, lhs, rhs)
    return _dot_general(act(lhs), rhs, dimension_numbers, precision, preferred_element_type,
                        **kwargs)


@jax.custom_vjp
def _softmax(x: Array) -> Array:
    """``jax.nn.softmax`` over the last axis, whose gradient keeps only the output: the
    automatic one kept the [B, heads, S, S] scores as well as the probabilities (and the
    row max and sum), one more 6 MB array per layer of the base model at 8 x 128."""
    return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x: Array) -> tuple[Array, Array]:
    y = _softmax(x)
    return y, y


def _softmax_bwd(y: Array, g: Array) -> tuple[Array]:
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _einsum(spec: str, a: Array, b: Array, out_dtype: Any = None) -> Array:
    """``jnp.einsum`` with :func:`_dot_general`'s rule; ``out_dtype`` defaults to the
    inputs' (float32 keeps the accumulator's precision)."""
    dtype = jnp.result_type(a, b)
    if _half_on_cpu(dtype):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(
            out_dtype or dtype)
    out = jnp.einsum(spec, a, b)
    return out if out_dtype is None else out.astype(out_dtype)


def _dense(config: AlbertConfig, features: int, axes: tuple[str, str], name: str,
           act: Callable[[Array], Array] | None = None) -> nn.Dense:
    """A Dense layer ([in, out] kernel, TF layout) with logical axis names; with ``act`` it
    computes ``Dense(act(x))`` (see :func:`_act_product`)."""
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        dot_general=(_dense_dot_general if act is None
                     else functools.partial(_dense_dot_general, act=act)),
        kernel_init=nn.with_logical_partitioning(_init(config), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def _layer_norm(config: AlbertConfig, axis: str, name: str) -> nn.Module:
    # Rematerialised (same parameters, same names): the gradient recomputes the mean and
    # variance from the input instead of keeping the centred and normalised copies.
    return nn.remat(nn.LayerNorm)(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        # Two-pass variance, as PyTorch computes it: E[x^2] - E[x]^2 loses digits.
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis,)),
        name=name,
    )


def _constrain(x: Array) -> Array:
    """Shards a [B, S, H] activation over the batch axes (a no-op without a mesh)."""
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class AlbertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout: [B, S] -> [B, S, E]."""

    config: AlbertConfig

    def setup(self) -> None:
        cfg = self.config

        def embed(num: int, axis: str) -> nn.Embed:
            return nn.Embed(
                num,
                cfg.embedding_size,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                embedding_init=nn.with_logical_partitioning(_init(cfg), (axis, "embedding")),
            )

        self.word_embeddings = embed(cfg.vocab_size, "vocab")
        self.position_embeddings = embed(cfg.max_position_embeddings, "max_len")
        self.token_type_embeddings = embed(cfg.type_vocab_size, "type_vocab")
        self.LayerNorm = _layer_norm(cfg, "embedding", "LayerNorm")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool,
                 position_ids: Array | None = None) -> Array:
        """[B, S] ids -> [B, S, E]. ``position_ids`` [B, S] (default 0..S-1 in every row:
        batches are padded on the right) restart at 0 for each sequence of a packed row."""
        seq_len = input_ids.shape[-1]
        if position_ids is None and seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings})"
            )
        positions = jnp.arange(seq_len)[None, :] if position_ids is None else position_ids
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self._token_types(token_type_ids)
        )
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def _token_types(self, token_type_ids: Array) -> Array:
        """[B, S] -> [B, S, E]. A select per type, not a gather: the gather's gradient is a
        scatter-add of B*S rows into ``type_vocab_size`` (2) rows, which serialises on GPU
        atomics; the selects' gradients are plain reductions. Bit-identical values."""
        table = self.token_type_embeddings.embedding  # [T, E]
        dtype = self.config.dtype
        ids = token_type_ids[..., None]
        out = jnp.where(ids == 0, table[0].astype(dtype), jnp.zeros((), dtype))
        for k in range(1, self.config.type_vocab_size):
            out = out + jnp.where(ids == k, table[k].astype(dtype), jnp.zeros((), dtype))
        return out

    def attend(self, x: Array) -> Array:
        """The tied decoder: [..., E] @ word_embeddings^T -> [..., V]."""
        return self.word_embeddings.attend(x)


class AlbertAttention(nn.Module):
    """Multi-head self-attention with ALBERT's post-LayerNorm: [B, S, H] -> [B, S, H], and
    the attention maps [B, heads, S, S] (None on the fused paths)."""

    config: AlbertConfig
    output_attentions: bool = False

    @nn.compact
    def __call__(
        self, x: Array, mask_bias: Array, deterministic: bool
    ) -> tuple[Array, Array]:
        cfg = self.config
        batch, seq_len, hidden = x.shape
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        def project(name: str) -> Array:
            y = _dense(cfg, hidden, ("embed", "joined_kv"), name)(x)
            return y.reshape(batch, seq_len, heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        # Scale the query (S*D products) rather than the scores (S*S): same math, fewer flops.
        query = query / jnp.sqrt(jnp.asarray(head_dim, query.dtype))
        if self._fused(query.dtype, deterministic):
            # Same math; the [B, heads, S, S] scores never reach memory on the cudnn path.
            # mask_bias is 0 where a key is attended and the dtype minimum where it is padding.
            mask = jnp.broadcast_to(mask_bias == 0, (batch, 1, seq_len, seq_len))
            context = jax.nn.dot_product_attention(
                query, key, value, mask=mask, scale=1.0, implementation=cfg.attention)
            return self._output(x, context, deterministic), None
        # Softmax in float32 whatever the compute dtype; padded keys get the dtype minimum.
        scores = _einsum("bqhd,bkhd->bhqk", query, key, jnp.float32) + mask_bias
        probs = _softmax(scores)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = _einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)
        return self._output(x, context, deterministic), probs

    def _fused(self, dtype: Any, deterministic: bool) -> bool:
        """Whether ``config.attention`` can replace the explicit path here: no maps wanted,
        no attention dropout, and (cudnn) a GPU and a half-precision compute dtype."""
        cfg = self.config
        if cfg.attention == "explicit" or self.output_attentions:
            return False
        if not deterministic and cfg.attention_probs_dropout_prob > 0:
            return False
        return cfg.attention == "xla" or (
            jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16))

    def _output(self, x: Array, context: Array, deterministic: bool) -> Array:
        """[B, S, heads, D] context -> projection, dropout, residual LayerNorm [B, S, H]."""
        cfg = self.config
        context = context.reshape(x.shape)
        out = _dense(cfg, x.shape[-1], ("joined_kv", "embed"), "dense")(context)
        out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
        return _layer_norm(cfg, "embed", "LayerNorm")(x + out)


class AlbertLayer(nn.Module):
    """Attention then the feed-forward block, each closed by a residual LayerNorm."""

    config: AlbertConfig
    output_attentions: bool = False

    @nn.compact
    def __call__(self, x: Array, mask_bias: Array, deterministic: bool) -> tuple[Array, Array]:
        """x [B, S, H], mask_bias [B, 1, 1, S] -> ([B, S, H], maps [B, heads, S, S] or None)."""
        cfg = self.config
        attn_out, probs = AlbertAttention(cfg, self.output_attentions, name="attention")(
            x, mask_bias, deterministic)
        y = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "ffn")(attn_out)
        # ffn_output(act(y)), the activation inside the product: the gradient keeps only the
        # pre-activation and recomputes the rest (gelu_new's autodiff kept six [B, S, I]
        # arrays per layer: 150 MB each over the 12 scanned layers of the base model at
        # 8 x 128, 60% of the step's scratch memory, written and read back every step).
        y = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "ffn_output",
                   act=ACTIVATIONS[cfg.hidden_act])(y)
        # Google's TF code drops out the FFN output; PyTorch does not. Identical at
        # inference and whenever hidden_dropout_prob is 0 (all v2 models).
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
        out = _layer_norm(cfg, "embed", "full_layer_layer_norm")(y + attn_out)
        return _constrain(out), probs


class AlbertLayerGroup(nn.Module):
    """``inner_group_num`` distinct layers applied in order; the unit that is shared.

    Has the scan body signature ``(carry, *broadcast) -> (carry, per_step_output)``: the
    per-step output is ``(hidden [B, S, H] or None, (probs [B, heads, S, S], ...) or None)``.
    """

    config: AlbertConfig
    output_hidden_states: bool = False
    output_attentions: bool = False

    @nn.compact
    def __call__(
        self, x: Array, mask_bias: Array, deterministic: bool
    ) -> tuple[Array, tuple[Array | None, tuple[Array, ...] | None]]:
        all_probs = []
        for i in range(self.config.inner_group_num):
            x, probs = AlbertLayer(self.config, self.output_attentions,
                                   name=f"albert_layers_{i}")(
                x, mask_bias, deterministic
            )
            all_probs.append(probs)
        hidden = x if self.output_hidden_states else None
        attentions = tuple(all_probs) if self.output_attentions else None
        return x, (hidden, attentions)


class AlbertEncoder(nn.Module):
    """Maps embeddings to H, then applies each group ``layers_per_group`` times.

    [B, S, E] -> [B, S, H], plus the per-layer hidden states and attention maps if asked.
    """

    config: AlbertConfig

    @nn.compact
    def __call__(
        self,
        embeddings: Array,
        mask_bias: Array,
        deterministic: bool,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Array, list[Array], list[Array]]:
        cfg = self.config
        x = _dense(cfg, cfg.hidden_size, ("embedding", "embed"), "embedding_hidden_mapping_in")(
            embeddings
        )
        x = _constrain(x)
        all_hidden, all_attn = [x], []

        group_cls: Any = AlbertLayerGroup
        if cfg.remat != "none":
            # static_argnums counts self as 0: `deterministic` is argument 3.
            group_cls = nn.remat(
                group_cls, prevent_cse=not cfg.scan_layers, static_argnums=(3,),
                policy=_REMAT_POLICIES[cfg.remat],
            )
        if cfg.scan_layers:
            group_cls = nn.scan(
                group_cls,
                variable_broadcast="params",  # ONE copy of the weights, reused every step.
                split_rngs={"params": False, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.layers_per_group,
                unroll=min(cfg.scan_unroll, cfg.layers_per_group),
            )
        for g in range(cfg.num_hidden_groups):
            group = group_cls(
                cfg,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                name=f"albert_layer_groups_{g}",
            )
            if cfg.scan_layers:
                x, (hidden, attn) = group(x, mask_bias, deterministic)
                steps = [
                    (None if hidden is None else hidden[i], None if attn is None else
                     tuple(a[i] for a in attn))
                    for i in range(cfg.layers_per_group)
                ]
            else:
                steps = []
                for _ in range(cfg.layers_per_group):
                    x, step = group(x, mask_bias, deterministic)
                    steps.append(step)
            for hidden, attn in steps:
                if output_hidden_states:
                    all_hidden.append(hidden)
                if output_attentions:
                    all_attn.extend(attn)
        return x, all_hidden, all_attn


def attention_mask_bias(attention_mask: Array) -> Array:
    """Additive attention bias in float32: 0 where attended, the float32 minimum elsewhere.

    [B, S] mask of 1 (attend) / 0 (padding) -> [B, 1, 1, S]; [B, S, S] mask (query q may
    attend key k: several sequences packed in one row attend only within themselves) ->
    [B, 1, S, S]."""
    mask = attention_mask.astype(jnp.float32)
    mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]
    return (1.0 - mask) * jnp.finfo(jnp.float32).min


class AlbertBackbone(nn.Module):
    """Embeddings, encoder and (optionally) the pooler; every head nests it as ``albert``."""

    config: AlbertConfig
    add_pooling_layer: bool = True

    def setup(self) -> None:
        self.embeddings = AlbertEmbeddings(self.config)
        self.encoder = AlbertEncoder(self.config)
        if self.add_pooling_layer:
            self.pooler = _dense(
                self.config, self.config.hidden_size, ("embed", "embed_out"), "pooler"
            )

    def __call__(
        self, input_ids: Array, attention_mask: Array, token_type_ids: Array,
        deterministic: bool, output_hidden_states: bool, output_attentions: bool,
        position_ids: Array | None = None,
    ) -> AlbertOutput:
        """input_ids, token_type_ids, position_ids: [B, S]; attention_mask [B, S] or
        [B, S, S] (the heads fill in defaults)."""
        embeddings = self.embeddings(input_ids, token_type_ids, deterministic, position_ids)
        sequence, hidden, attn = self.encoder(
            embeddings, attention_mask_bias(attention_mask), deterministic,
            output_hidden_states, output_attentions,
        )
        pooled = jnp.tanh(self.pooler(sequence[:, 0])) if self.add_pooling_layer else None
        return AlbertOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attn) if output_attentions else None,
        )

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


class AlbertMLMHead(nn.Module):
    """Dense H->E, activation, LayerNorm, tied decoder + bias: [..., H] -> [..., V]."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x: Array, attend: Callable[[Array], Array]) -> Array:
        cfg = self.config
        x = _dense(cfg, cfg.embedding_size, ("embed", "embedding"), "dense")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        x = _layer_norm(cfg, "embedding", "LayerNorm")(x)
        if cfg.tie_word_embeddings:
            logits = attend(x)
        else:
            logits = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=nn.with_logical_partitioning(_init(cfg), ("embedding", "vocab")),
                name="decoder",
            )(x)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (cfg.vocab_size,),
            cfg.param_dtype,
        )
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)


def gather_positions(x: Array, positions: Array) -> Array:
    """x [B, S, H], positions [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)


# ---------------------------------------------------------------------------- public models
class _Head(nn.Module):
    """The backbone (named ``albert``) followed by a task head: ``Model(config)``.

    ``__call__(input_ids, attention_mask=None, token_type_ids=None, *, position_ids=None,
    deterministic=True, output_hidden_states=False, output_attentions=False,
    **head_inputs)`` takes [B, S] arrays ([B, C, S] for multiple choice). ``attention_mask``
    may also be [B, S, S] (whether query q may attend key k) and, with ``position_ids``
    restarting at 0 per sequence, run several sequences packed into one row, each exactly
    as if alone. Subclasses implement :meth:`head`.
    """

    config: AlbertConfig
    uses_pooler: ClassVar[bool] = True  # Whether the backbone carries the pooler (as in HF).

    def dummy_inputs(self, batch: int = 1, seq_len: int = 8) -> dict[str, Array]:
        ids = jnp.full((batch, seq_len), 5, dtype=jnp.int32)
        return {"input_ids": ids}

    def init_params(self, rng: Array, batch: int = 1, seq_len: int = 8) -> dict:
        """Fresh random parameters (boxed with logical axis names) as ``{"params": ...}``."""
        return self.init(rng, **self.dummy_inputs(batch, seq_len))

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        position_ids: Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **head_inputs: Any,
    ) -> Any:
        shape = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)

        def flat(x: Array) -> Array:  # [..., S] -> [N, S]; a no-op for [B, S].
            return x.reshape(-1, shape[-1])

        if attention_mask.shape == (*shape, shape[-1]):  # [..., S, S] -> [N, S, S]
            mask = attention_mask.reshape(-1, shape[-1], shape[-1])
        elif attention_mask.shape == shape:
            mask = flat(attention_mask)
        else:
            raise ValueError(f"attention_mask has shape {attention_mask.shape}; expected "
                             f"{shape} or {(*shape, shape[-1])} for input_ids {shape}")
        backbone = AlbertBackbone(self.config, add_pooling_layer=self.uses_pooler, name="albert")
        out = backbone(
            flat(input_ids), mask, flat(token_type_ids), deterministic,
            output_hidden_states, output_attentions,
            None if position_ids is None else flat(position_ids),
        )
        return self.head(backbone, out, deterministic, shape, **head_inputs)

    def head(
        self, backbone: AlbertBackbone, out: AlbertOutput, deterministic: bool,
        input_shape: tuple[int, ...], **head_inputs: Any,
    ) -> Any:
        raise NotImplementedError


class AlbertModel(_Head):
    """The bare backbone with the pooler: ``AlbertOutput``."""

    def head(self, backbone, out, deterministic, input_shape):
        return out


def _mlm_logits(config: AlbertConfig, backbone: AlbertBackbone, x: Array,
                masked_positions: Array | None) -> Array:
    """MLM logits [B, S, V], or [B, P, V] at ``masked_positions`` [B, P] (cheaper)."""
    if masked_positions is not None:
        x = gather_positions(x, masked_positions)
    return AlbertMLMHead(config, name="predictions")(x, backbone.attend)


class AlbertForMaskedLM(_Head):
    """MLM logits at every position, or only at ``masked_positions`` [B, P]."""

    uses_pooler = False

    def head(self, backbone, out, deterministic, input_shape, masked_positions=None):
        logits = _mlm_logits(self.config, backbone, out.last_hidden_state, masked_positions)
        return LogitsOutput(logits=logits, **_internals(out))


class AlbertForPreTraining(_Head):
    """MLM + sentence-order prediction (SOP) on the pooled output."""

    def head(self, backbone, out, deterministic, input_shape, masked_positions=None):
        logits = _mlm_logits(self.config, backbone, out.last_hidden_state, masked_positions)
        sop = _ClassifierHead(self.config, self.config.num_labels, name="sop_classifier")
        return PreTrainingOutput(
            prediction_logits=logits, sop_logits=sop(out.pooler_output, deterministic),
            **_internals(out),
        )


class _ClassifierHead(nn.Module):
    """Dropout then Dense(H -> features) named ``classifier``: [..., H] -> [..., features]."""

    config: AlbertConfig
    features: int

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        return _classify(self.config, self.features, x, deterministic)


def _classify(config: AlbertConfig, features: int, x: Array, deterministic: bool) -> Array:
    """Dropout + a Dense named ``classifier`` directly under the calling module."""
    x = nn.Dropout(config.sequence_classifier_dropout)(x, deterministic=deterministic)
    logits = _dense(config, features, ("embed", "classes"), "classifier")(x)
    return logits.astype(jnp.float32)


class AlbertForSequenceClassification(_Head):
    """Pooled output -> dropout -> Dense(num_labels); num_labels 1 means regression."""

    def head(self, backbone, out, deterministic, input_shape):
        logits = _classify(self.config, self.config.num_labels, out.pooler_output, deterministic)
        return LogitsOutput(logits=logits, **_internals(out))


class AlbertForTokenClassification(_Head):
    """Dropout -> Dense(num_labels) on every token: logits [B, S, num_labels]."""

    uses_pooler = False

    def head(self, backbone, out, deterministic, input_shape):
        logits = _classify(
            self.config, self.config.num_labels, out.last_hidden_state, deterministic
        )
        return LogitsOutput(logits=logits, **_internals(out))


class AlbertForQuestionAnswering(_Head):
    """Dense(H -> 2) on every token, split into start and end logits [B, S]."""

    uses_pooler = False

    def head(self, backbone, out, deterministic, input_shape):
        logits = _dense(self.config, 2, ("embed", "classes"), "qa_outputs")(
            out.last_hidden_state
        ).astype(jnp.float32)
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], **_internals(out)
        )


class AlbertForMultipleChoice(_Head):
    """Inputs [B, C, S]; each choice's pooled output -> dropout -> Dense(1): logits [B, C].

    Hidden states and attention maps come back flattened to B * C rows, as in transformers.
    """

    def dummy_inputs(self, batch: int = 1, seq_len: int = 8) -> dict[str, Array]:
        return {"input_ids": jnp.full((batch, 2, seq_len), 5, dtype=jnp.int32)}

    def head(self, backbone, out, deterministic, input_shape):
        logits = _classify(self.config, 1, out.pooler_output, deterministic)
        return LogitsOutput(logits=logits.reshape(input_shape[:-1]), **_internals(out))


# Head names accepted by ``load_pretrained(..., head=...)``.
HEADS: dict[str, type[_Head]] = {
    "base": AlbertModel,
    "masked_lm": AlbertForMaskedLM,
    "pretraining": AlbertForPreTraining,
    "sequence_classification": AlbertForSequenceClassification,
    "token_classification": AlbertForTokenClassification,
    "question_answering": AlbertForQuestionAnswering,
    "multiple_choice": AlbertForMultipleChoice,
}


def model_for_head(head: str, config: AlbertConfig) -> _Head:
    """The model class for a head name, built on ``config``."""
    try:
        return HEADS[head](config)
    except KeyError:
        raise ValueError(f"unknown head {head!r} (choose from {', '.join(HEADS)})") from None


def count_params(params: Any) -> int:
    """Number of scalars in a (possibly boxed) parameter tree."""
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
    return sum(int(x.size) for x in leaves)
