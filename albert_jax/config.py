"""ALBERT configuration: a frozen dataclass, the published presets, Hugging Face interop.

Two kinds of fields live here. *Architecture* fields mirror Hugging Face's ``config.json``
(every one that changes the math); they round-trip through :meth:`AlbertConfig.to_hf_dict`
and :meth:`AlbertConfig.from_hf_dict`. *Runtime* fields (``dtype``, ``param_dtype``,
``scan_layers``, ``scan_unroll``, ``remat``, ``attention``) choose how the program runs, never
what it computes in float32, and are not written to Hugging Face files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

# Activations Hugging Face's ACT2FN accepts and ALBERT configs use (see model.ACTIVATIONS).
SUPPORTED_ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
    "linear",
)
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
# "explicit": einsum + float32 softmax (returns the attention maps, attention dropout);
# "xla" / "cudnn": jax.nn.dot_product_attention (cudnn: fused flash attention on NVIDIA GPUs,
# bfloat16/float16 only). The fused paths fall back to "explicit" where they cannot apply.
ATTENTION_IMPLEMENTATIONS = ("explicit", "xla", "cudnn")


class ConfigError(ValueError):
    """An ALBERT configuration that cannot describe a valid model."""


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    """Hyperparameters of an ALBERT model (defaults: albert-base-v2).

    Layer ``i`` of ``num_hidden_layers`` uses group ``i // (num_hidden_layers //
    num_hidden_groups)``; each group holds ``inner_group_num`` distinct layers applied in
    order. All released checkpoints have one group of one layer.
    """

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float | None = 0.1
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    num_labels: int = 2
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    # Runtime fields (not part of the Hugging Face config).
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    # Layer iterations per scan-loop iteration (nn.scan's ``unroll``): 1 keeps one loop
    # iteration per layer; k > 1 lets XLA fuse across k layers at the cost of compile time.
    scan_unroll: int = 1
    remat: str = "none"
    attention: str = "explicit"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raises :class:`ConfigError` naming every inconsistent field.

        Types are checked first (a ``config.json`` may hold ``"768"`` or ``"false"``, which
        would otherwise fail deep inside the model or, for a flag, silently count as true).
        """
        errors = []
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                errors.append(f"{name} must be a positive integer, got {_short(value)}")
        for name in _TOKEN_ID_FIELDS:
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                errors.append(f"{name} must be a non-negative integer, got {_short(value)}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "classifier_dropout_prob":
                continue
            if not _is_real(value):
                errors.append(f"{name} must be a number, got {_short(value)}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                errors.append(f"{name} must be true or false, got {_short(getattr(self, name))}")
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                errors.append(f"{name} must be a string, got {_short(getattr(self, name))}")
        if errors:  # The checks below assume the types.
            raise ConfigError("invalid AlbertConfig: " + "; ".join(errors))
        if self.hidden_size % self.num_attention_heads:
            errors.append(
                f"hidden_size ({self.hidden_size}) is not divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_hidden_layers % self.num_hidden_groups:
            errors.append(
                f"num_hidden_layers ({self.num_hidden_layers}) is not divisible by "
                f"num_hidden_groups ({self.num_hidden_groups})"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            errors.append(
                f"unknown hidden_act {self.hidden_act!r} (supported: "
                f"{', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if self.position_embedding_type != "absolute":
            errors.append(
                f"position_embedding_type {self.position_embedding_type!r} is not supported "
                "(only 'absolute', which every released ALBERT uses)"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                errors.append(f"{name} must be in [0, 1), got {value!r}")
        if self.classifier_dropout_prob is not None and not 0.0 <= self.classifier_dropout_prob < 1:
            errors.append(f"classifier_dropout_prob must be in [0, 1), got "
                          f"{self.classifier_dropout_prob!r}")
        if self.layer_norm_eps <= 0:
            errors.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.initializer_range < 0:
            errors.append(f"initializer_range must be non-negative, got "
                          f"{self.initializer_range!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in SUPPORTED_DTYPES:
                errors.append(f"{name} must be one of {SUPPORTED_DTYPES}, got "
                              f"{getattr(self, name)!r}")
        if (not isinstance(self.scan_unroll, int) or isinstance(self.scan_unroll, bool)
                or self.scan_unroll < 1):
            errors.append(f"scan_unroll must be a positive integer, got {self.scan_unroll!r}")
        if self.remat not in REMAT_POLICIES:
            errors.append(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            errors.append(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, "
                          f"got {self.attention!r}")
        if errors:
            raise ConfigError("invalid AlbertConfig: " + "; ".join(errors))

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layers_per_group(self) -> int:
        """How many consecutive layer applications share one group's weights."""
        return self.num_hidden_layers // self.num_hidden_groups

    @property
    def sequence_classifier_dropout(self) -> float:
        """Dropout before the classifier of the classification and SOP heads."""
        return (self.classifier_dropout_prob if self.classifier_dropout_prob is not None
                else self.hidden_dropout_prob)

    def replace(self, **changes: Any) -> AlbertConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Hugging Face interop
    def to_hf_dict(self, architectures: tuple[str, ...] = ("AlbertForMaskedLM",)) -> dict:
        """The Hugging Face ``config.json`` contents (runtime fields left out)."""
        out: dict[str, Any] = {"architectures": list(architectures), "model_type": "albert"}
        for field in dataclasses.fields(self):
            if field.name in _RUNTIME_FIELDS or field.name == "num_labels":
                continue
            out[field.name] = getattr(self, field.name)
        # transformers derives num_labels from id2label.
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return out

    @classmethod
    def from_hf_dict(cls, hf: dict, **overrides: Any) -> AlbertConfig:
        """Builds a config from a Hugging Face ``config.json`` dict.

        Unknown keys (``architectures``, ``transformers_version``, ...) are ignored;
        ``overrides`` set any field, including the runtime ones.
        """
        if not isinstance(hf, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(hf).__name__}")
        if hf.get("model_type", "albert") != "albert":
            raise ConfigError(f"not an ALBERT config: model_type is "
                              f"{_short(hf.get('model_type'))}")
        names = {f.name for f in dataclasses.fields(cls)} - _RUNTIME_FIELDS
        kwargs = {k: v for k, v in hf.items() if k in names}
        if "id2label" in hf and "num_labels" not in hf:
            if not isinstance(hf["id2label"], dict):
                raise ConfigError(f"id2label must be an object mapping class ids to names, got "
                                  f"{_short(hf['id2label'])}")
            kwargs["num_labels"] = len(hf["id2label"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``config.json`` (Hugging Face format) into ``directory``; returns its path."""
        path = os.path.join(os.fspath(directory), "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> AlbertConfig:
        """The config of a Hugging Face ``config.json``; :class:`ConfigError` naming the file
        (and the field) when it is unreadable, not a JSON object or not a valid config."""
        return config_from_hf_file(read_hf_config(path), path, **overrides)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, **overrides: Any) -> AlbertConfig:
        """A preset name (offline), a directory holding ``config.json``, or a hub name.

        Presets cover ``albert-{base,large,xlarge,xxlarge}-{v1,v2}`` (also with the
        ``albert/`` organisation prefix) and resolve without any file or network.
        """
        name = os.fspath(name_or_dir)
        if os.path.isdir(name):
            return cls.from_json_file(os.path.join(name, "config.json"), **overrides)
        if os.path.isfile(name) and name.endswith(".json"):
            return cls.from_json_file(name, **overrides)
        preset = PRESETS.get(name.removeprefix("albert/"))
        if preset is not None:
            return preset.replace(**overrides) if overrides else preset
        from albert_jax import hub  # Deferred: hub pulls in huggingface_hub.

        return cls.from_json_file(hub.resolve_file(name, "config.json"), **overrides)


_RUNTIME_FIELDS = frozenset(
    {"dtype", "param_dtype", "scan_layers", "scan_unroll", "remat", "attention"}
)
_POSITIVE_INT_FIELDS = (
    "vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
    "num_attention_heads", "intermediate_size", "inner_group_num", "max_position_embeddings",
    "type_vocab_size", "num_labels",
)
_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")
_FLOAT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                 "layer_norm_eps", "classifier_dropout_prob")
_BOOL_FIELDS = ("tie_word_embeddings", "scan_layers")
_STR_FIELDS = ("hidden_act", "position_embedding_type", "dtype", "param_dtype", "remat",
               "attention")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """An int or a finite float (JSON has no NaN, but Python's json reads ``NaN``)."""
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a bad value, shortened: an error line must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a ``config.json``; :class:`ConfigError` naming the file when it
    cannot be read, is not UTF-8, not JSON, or not an object."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def config_from_hf_file(
    hf: dict[str, Any], path: str | os.PathLike, **overrides: Any
) -> AlbertConfig:
    """:meth:`AlbertConfig.from_hf_dict` of the contents of ``path``, errors naming it."""
    try:
        return AlbertConfig.from_hf_dict(hf, **overrides)
    except ConfigError as e:
        raise ConfigError(f"{os.fspath(path)}: {e}") from None


def _preset(layers: int, hidden: int, heads: int, ffn: int, v1: bool) -> AlbertConfig:
    return AlbertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_act="gelu" if v1 else "gelu_new",
        hidden_dropout_prob=0.1 if v1 else 0.0,
        attention_probs_dropout_prob=0.1 if v1 else 0.0,
    )


_SHAPES = {
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
    "xlarge": (24, 2048, 16, 8192),
    "xxlarge": (12, 4096, 64, 16384),
}
# The hub's config.json of each released model (v1 configs use exact-erf gelu and dropout 0.1).
PRESETS: dict[str, AlbertConfig] = {
    f"albert-{size}-{version}": _preset(*shape, v1=version == "v1")
    for size, shape in _SHAPES.items()
    for version in ("v1", "v2")
}
