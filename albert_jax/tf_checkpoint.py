"""Google's original TensorFlow 1 ALBERT checkpoints -> the albert_jax parameter tree.

Sources, as google-research/albert releases them (and as its ``run_pretraining.py`` /
``run_classifier.py`` write them for checkpoints people trained themselves):

- a directory with ``albert_config.json``, ``model.ckpt-*.{index,data-*}`` and
  ``30k-clean.model`` (the checkpoint: the one a ``checkpoint`` state file names, else the
  only ``*.index`` there); also the TF-Hub layout (``variables/variables.*``,
  ``assets/albert_config.json``, ``assets/30k-clean.model``);
- a checkpoint prefix (``.../model.ckpt-10000``, or any of its files) with the config and
  the SentencePiece model given separately.

Reading uses TensorFlow's own checkpoint reader (``tf.train.load_checkpoint``), from the
optional extra ``albert_jax[tf]``. Only model variables are read: optimizer slots
(``*/adam_m``, ``*/adam_v``, LAMB's ``*/lamb_m``, ``*/lamb_v``, ``tf.train.AdamOptimizer``'s
``*/Adam``, ``*/Adam_1``), ``global_step`` and loss-scale counters are skipped.

Variable names (``G``: layer group, ``I``: inner group) and their albert_jax paths; every
kernel is ``[in, out]`` in both, except ``output_weights``, which is ``[out, in]``::

    bert/embeddings/{word,token_type,position}_embeddings  albert/embeddings/*/embedding
    bert/embeddings/LayerNorm/{gamma,beta}       albert/embeddings/LayerNorm/{scale,bias}
    bert/encoder/embedding_hidden_mapping_in/*   albert/encoder/embedding_hidden_mapping_in/*
    bert/encoder/transformer/                    albert/encoder/
      group_G/inner_group_I/                       albert_layer_groups_G/albert_layers_I/
        attention_1/self/{query,key,value}/*         attention/{query,key,value}/*
        attention_1/output/dense/*                   attention/dense/*
        LayerNorm/*                                  attention/LayerNorm/*
        ffn_1/intermediate/dense/*                   ffn/*
        ffn_1/intermediate/output/dense/*            ffn_output/*
        LayerNorm_1/*                                full_layer_layer_norm/*
    bert/pooler/dense/*                          albert/pooler/*
    cls/predictions/transform/{dense,LayerNorm}/*  predictions/{dense,LayerNorm}/*
    cls/predictions/output_bias                  predictions/bias
    cls/seq_relationship/output_{weights,bias}   sop_classifier/classifier/{kernel,bias}
    output_{weights,bias} (run_classifier.py)    classifier/{kernel,bias}

A ``module/`` prefix (TF-Hub exports) is dropped. Google's code keeps the attention
kernels 2-D (``[hidden, heads * head_dim]`` for query/key/value, ``[heads * head_dim,
hidden]`` for the output projection) and reshapes them to 3-D at run time; a checkpoint
that stores the 3-D form (``[hidden, heads, head_dim]``, ``[heads, head_dim, hidden]``,
biases ``[heads, head_dim]``) is reshaped back the same, row-major, way.

Config translation: Google's ``hidden_act: "gelu"`` is the tanh approximation (its
``modeling.gelu``), which albert_jax and transformers call ``"gelu_new"``; a Google config
(one without ``model_type``) is translated so, a Hugging Face ``config.json`` given as the
config is taken as it is. Google's ``embedding_size == hidden_size`` models have no
``embedding_hidden_mapping_in`` (its code skips the projection): it is filled with the
identity, which computes the same. Google assigns layer ``i`` to group
``int(i / num_hidden_layers * num_hidden_groups)``; the few configs where float rounding
makes that differ from ``i // (num_hidden_layers // num_hidden_groups)`` are refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from albert_jax import hub
from albert_jax.config import AlbertConfig, ConfigError
from albert_jax.conversion import Checkpoint, ConversionError, MissingDependencyError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'albert_jax[tf]' (tensorflow-cpu)"

# Optimizer state: slot variables ("<variable>/<slot>") and global counters.
_SLOTS = frozenset({
    "adam_m", "adam_v", "lamb_m", "lamb_v", "Adam", "Adam_1", "Momentum",
    "AdamWeightDecayOptimizer", "AdamWeightDecayOptimizer_1",
})
_GLOBALS = frozenset({
    "global_step", "beta1_power", "beta2_power", "current_loss_scale", "good_steps",
})

# Whole variables (no module/leaf split): TF name -> (albert_jax path, transpose?).
_VARIABLES: dict[str, tuple[str, bool]] = {
    **{
        f"bert/embeddings/{kind}_embeddings": (f"albert/embeddings/{kind}_embeddings/embedding",
                                               False)
        for kind in ("word", "token_type", "position")
    },
    "cls/predictions/output_bias": ("predictions/bias", False),
    "cls/seq_relationship/output_weights": ("sop_classifier/classifier/kernel", True),
    "cls/seq_relationship/output_bias": ("sop_classifier/classifier/bias", False),
    "output_weights": ("classifier/kernel", True),
    "output_bias": ("classifier/bias", False),
}
# Modules holding kernel/bias or gamma/beta: TF scope -> albert_jax module path.
_MODULES = {
    "bert/embeddings/LayerNorm": "albert/embeddings/LayerNorm",
    "bert/encoder/embedding_hidden_mapping_in": "albert/encoder/embedding_hidden_mapping_in",
    "bert/pooler/dense": "albert/pooler",
    "cls/predictions/transform/dense": "predictions/dense",
    "cls/predictions/transform/LayerNorm": "predictions/LayerNorm",
}
# Modules of one shared layer: scope under inner_group_I -> module under albert_layers_I.
_LAYER_MODULES = {
    "attention_1/self/query": "attention/query",
    "attention_1/self/key": "attention/key",
    "attention_1/self/value": "attention/value",
    "attention_1/output/dense": "attention/dense",
    "LayerNorm": "attention/LayerNorm",
    "ffn_1/intermediate/dense": "ffn",
    "ffn_1/intermediate/output/dense": "ffn_output",
    "LayerNorm_1": "full_layer_layer_norm",
}
_TF_LAYER = re.compile(r"bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/(.+)")
_FLAX_LAYER = re.compile(r"albert/encoder/albert_layer_groups_(\d+)/albert_layers_(\d+)/(.+)")
_LEAVES = {"kernel": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}


# ---------------------------------------------------------------------------- names
def is_ignored(name: str) -> bool:
    """Whether a variable is optimizer or training state, not a model weight."""
    name = name.removeprefix("module/")
    return name in _GLOBALS or name.rpartition("/")[2] in _SLOTS


def tf_to_flax_key(name: str) -> tuple[str, bool] | None:
    """A Google variable name -> (albert_jax path joined with "/", transpose?).

    None for optimizer/training state (:func:`is_ignored`); KeyError for a name no rule
    covers.
    """
    if is_ignored(name):
        return None
    name = name.removeprefix("module/")
    if name in _VARIABLES:
        return _VARIABLES[name]
    scope, _, leaf = name.rpartition("/")
    if leaf not in _LEAVES or (leaf in ("gamma", "beta")) != scope.endswith(
        ("LayerNorm", "LayerNorm_1")
    ):
        raise KeyError(name)
    if scope in _MODULES:
        return f"{_MODULES[scope]}/{_LEAVES[leaf]}", False
    match = _TF_LAYER.fullmatch(scope)
    if match is None or match.group(3) not in _LAYER_MODULES:
        raise KeyError(name)
    group, inner, module = match.groups()
    path = (f"albert/encoder/albert_layer_groups_{int(group)}/albert_layers_{int(inner)}/"
            f"{_LAYER_MODULES[module]}/{_LEAVES[leaf]}")
    return path, False


_FLAX_VARIABLES = {path: name for name, (path, _) in _VARIABLES.items()}
_FLAX_MODULES = {v: k for k, v in _MODULES.items()}
_FLAX_LAYER_MODULES = {v: k for k, v in _LAYER_MODULES.items()}


def flax_to_tf_key(path: str) -> str:
    """An albert_jax path -> the Google variable name that holds it (KeyError if none)."""
    if path in _FLAX_VARIABLES:
        return _FLAX_VARIABLES[path]
    module, _, leaf = path.rpartition("/")
    match = _FLAX_LAYER.fullmatch(module)
    if match is not None:
        group, inner, part = match.groups()
        scope = (f"bert/encoder/transformer/group_{group}/inner_group_{inner}/"
                 f"{_FLAX_LAYER_MODULES[part]}")
    else:
        scope = _FLAX_MODULES[module]
    if scope.endswith(("LayerNorm", "LayerNorm_1")):
        leaf = {"scale": "gamma", "bias": "beta"}[leaf]
    return f"{scope}/{leaf}"


# ---------------------------------------------------------------------------- config
def google_config_to_hf(google: Mapping[str, Any]) -> dict[str, Any]:
    """An ``albert_config.json`` dict -> a Hugging Face ``config.json`` dict.

    Google's keys that its code never reads (``down_scale_factor``, ``net_structure_type``,
    ``gap_size``, ``num_memory_blocks``) are dropped; ``"gelu"`` becomes ``"gelu_new"``
    (see the module docstring). A dict with ``model_type`` is already Hugging Face's.
    """
    out = {k: v for k, v in google.items() if k not in (
        "down_scale_factor", "net_structure_type", "gap_size", "num_memory_blocks",
    )}
    if "model_type" not in google:
        if out.get("hidden_act") == "gelu":
            out["hidden_act"] = "gelu_new"
        # tf.contrib.layers.layer_norm's epsilon, which Google's layer_norm uses.
        out.setdefault("layer_norm_eps", 1e-12)
    out["model_type"] = "albert"
    return out


def _check_groups(config: AlbertConfig) -> None:
    """Google's layer -> group assignment must be albert_jax's (see the module docstring)."""
    layers, groups = config.num_hidden_layers, config.num_hidden_groups
    google = [int(i / layers * groups) for i in range(layers)]
    ours = [i // config.layers_per_group for i in range(layers)]
    if google != ours:
        differ = [i for i in range(layers) if google[i] != ours[i]]
        raise ConversionError(
            f"num_hidden_layers={layers} with num_hidden_groups={groups}: Google's code "
            f"puts layers {differ} in groups {[google[i] for i in differ]} (float rounding "
            f"in int(i / layers * groups)), albert_jax in {[ours[i] for i in differ]}; "
            "such a checkpoint cannot be represented"
        )


# ---------------------------------------------------------------------------- reading
def _import_tensorflow(what: str) -> Any:
    if "tensorflow" not in sys.modules:
        # Reading needs no oneDNN kernels; without these TensorFlow prints start-up notices
        # on stderr (the CLI promises one line per problem). A user's settings win.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            f"{what} is a TensorFlow checkpoint and reading it needs TensorFlow: "
            f"{INSTALL_HINT}"
        ) from None
    return tf


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_variables(prefix: str) -> tuple[dict[str, np.ndarray], set[str]]:
    """(model variables by name, names of skipped optimizer/training state) of a
    checkpoint. Raises :class:`ConversionError` for an unreadable index or data file."""
    tf = _import_tensorflow(prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
    except Exception as e:  # tf.errors.OpError subclasses, or ValueError.
        raise ConversionError(
            f"{prefix}.index: not a readable TensorFlow checkpoint ({_first_line(e)})"
        ) from None
    variables, skipped = {}, set()
    for name in names:
        if is_ignored(name):  # Not read at all: the Adam slots are twice the model.
            skipped.add(name)
            continue
        try:
            variables[name] = np.asarray(reader.get_tensor(name))
        except Exception as e:  # A truncated .data file: IndexError, DataLossError, ...
            raise ConversionError(
                f"{prefix}.data-*: variable {name} cannot be read ({_first_line(e)}); the "
                "checkpoint is truncated or corrupt"
            ) from None
    return variables, skipped


class TFCheckpoint(Checkpoint):
    """A :class:`albert_jax.conversion.Checkpoint` whose keys are reported by their Google
    variable names (shapes as the checkpoint stores them)."""

    def display_name(self, path: str) -> str:
        if path in self.source_names:
            return self.source_names[path]
        try:
            return flax_to_tf_key(path)
        except KeyError:
            return path


def _reshape_attention(path: str, value: np.ndarray, expected: tuple[int, ...] | None
                       ) -> np.ndarray:
    """The 3-D attention layouts (module docstring) as the 2-D ones, if that fits."""
    if expected is None or value.shape == expected or value.size != int(np.prod(expected)):
        return value
    module = path.rpartition("/")[0].rpartition("/")[2]
    if module in ("query", "key", "value") and (
        (value.ndim == 3 and value.shape[0] == expected[0]) or value.ndim == 2
    ):
        return value.reshape(expected)  # [H, N, D] -> [H, N*D]; bias [N, D] -> [N*D].
    if module == "dense" and "/attention/" in path and value.ndim == 3 and (
        value.shape[-1] == expected[-1]
    ):
        return value.reshape(expected)  # [N, D, H] -> [N*D, H].
    return value


def read_checkpoint(files: hub.ModelFiles, **config_overrides: Any) -> TFCheckpoint:
    """Reads a Google checkpoint (:func:`albert_jax.hub.resolve_tf_files`) into a checkpoint
    in albert_jax layout; ``config_overrides`` set :class:`AlbertConfig` fields.

    Problems (unknown variables, duplicates) are collected, not raised, so that
    ``validate``/``params_for`` report them with every missing and mis-shaped key.
    """
    from albert_jax.conversion import _known_shapes  # The shapes any head may have.

    try:
        with open(files.config, encoding="utf-8") as f:
            google = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{files.config}: not a readable JSON config ({e})") from None
    if not isinstance(google, dict):
        raise ConversionError(f"{files.config}: not a JSON object")
    hf_config = google_config_to_hf(google)
    prefix = files.weights[0]
    variables, skipped = read_variables(prefix)
    if skipped:
        logger.info("skipped %d optimizer/training variables of %s", len(skipped), prefix)
    # A fine-tuned classifier's label count comes from its weights when the config lacks it.
    if ("output_bias" in variables and "num_labels" not in config_overrides
            and "id2label" not in hf_config and "num_labels" not in hf_config):
        config_overrides = {**config_overrides,
                            "num_labels": int(variables["output_bias"].shape[0])}
    try:
        config = AlbertConfig.from_hf_dict(hf_config, **config_overrides)
    except ConfigError as e:
        raise ConversionError(f"{files.config}: {e}") from None
    _check_groups(config)
    known = _known_shapes(config)

    params: dict[str, np.ndarray] = {}
    source_names: dict[str, str] = {}
    transposed: set[str] = set()
    problems: list[str] = []
    for name, value in variables.items():
        try:
            mapped = tf_to_flax_key(name)
        except KeyError:
            problems.append(
                f"unexpected key {name} {list(value.shape)} (no albert_jax parameter "
                "matches it)"
            )
            continue
        if mapped is None:  # Optimizer state (not read by read_variables anyway).
            continue
        path, transpose = mapped
        if path in params:
            problems.append(f"duplicate key {name}: {source_names[path]} already gives {path}")
            continue
        if transpose and value.ndim == 2:
            value = np.ascontiguousarray(value.T)
            transposed.add(path)
        expected = next(iter(known[path])) if len(known.get(path, ())) == 1 else None
        params[path] = _reshape_attention(path, value, expected)
        source_names[path] = name

    # Google's code skips the projection when the sizes agree: the identity is the same.
    mapping = "albert/encoder/embedding_hidden_mapping_in/"
    if (config.embedding_size == config.hidden_size
            and not any(p.startswith(mapping) for p in params)):
        dtype = params.get("albert/embeddings/word_embeddings/embedding", np.zeros(0)).dtype
        params[mapping + "kernel"] = np.eye(config.hidden_size, dtype=dtype)
        params[mapping + "bias"] = np.zeros(config.hidden_size, dtype=dtype)
        source_names[mapping + "kernel"] = source_names[mapping + "bias"] = (
            "(identity: embedding_size == hidden_size)"
        )
    return TFCheckpoint(params, config, hf_config, files, source_names, transposed, problems)
