"""Checkpoint conversion: Hugging Face state dicts <-> the albert_jax parameter tree.

Name mapping (rule based, see :func:`hf_to_flax_key`): the ``albert.`` prefix of the
backbone is optional (``AlbertModel`` saves have none); ``albert_layer_groups.G.
albert_layers.I`` <-> ``albert_layer_groups_G/albert_layers_I``; a Linear ``weight``
[out, in] is the transposed Flax ``kernel`` [in, out]; an Embedding ``weight`` is
``embedding``; a LayerNorm ``weight``/``gamma`` is ``scale`` and ``beta`` is ``bias``.
``predictions.decoder.weight`` is the word embedding matrix (tied) and
``predictions.decoder.bias`` is ``predictions.bias``: both are checked and skipped when read,
and not written (as ``save_pretrained`` does). Buffers (``position_ids``) are ignored.

albert_jax directory format (version 1)::

    config.json         the Hugging Face config (AlbertConfig.to_hf_dict): architectures
                        names the most complete head present
    spiece.model        the SentencePiece model (plus tokenizer_config.json and
                        special_tokens_map.json when the source had them)
    params.safetensors  every tensor of the source, keyed by its Flax path joined with "/"
                        (e.g. "albert/encoder/albert_layer_groups_0/albert_layers_0/ffn/kernel"),
                        in Flax layout ([in, out] kernels) and the dtype it was stored in;
                        header metadata {"format": "albert_jax", "format_version": "1"}
    albert_jax.json     {"format": "albert_jax", "format_version": 1,
                         "heads": [head names whose weights are all present, e.g.
                                   "base", "masked_lm"]}

The tree in ``params.safetensors`` is the union of whatever heads the source held (not one
head's subset), so converting back to Hugging Face loses nothing.

Loading for a head (:meth:`Checkpoint.params_for`) checks the checkpoint against that
head's parameter tree and reports every missing, unexpected and mis-shaped key in one
:class:`ConversionError`. Head weights that checkpoints legitimately lack (the SOP
classifier, which no hub file carries; new task heads; the pooler, which
``AlbertForMaskedLM`` saves lack) are initialised randomly with a one-line warning; weights
of other heads (the MLM head when loading a classifier, ...) are dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from albert_jax import hub
from albert_jax.atomic import atomic_directory
from albert_jax.config import AlbertConfig, config_from_hf_file, read_hf_config
from albert_jax.errors import ConversionError
from albert_jax.model import HEADS, model_for_head

logger = logging.getLogger(__name__)

FORMAT_NAME = "albert_jax"
FORMAT_VERSION = 1
CONVERT_TARGETS = ("albert_jax", "hf")

# Modules of a Hugging Face ALBERT state dict outside the `albert.` backbone.
_BACKBONE_MODULES = ("embeddings", "encoder", "pooler")
_HEAD_MODULES = ("predictions", "sop_classifier", "classifier", "qa_outputs")
# Non-persistent buffers that some (older) files still carry.
_BUFFERS = ("position_ids",)
_LAYER_INDEX_HF = re.compile(r"(albert_layer_groups|albert_layers)\.(\d+)")
_LAYER_INDEX_FLAX = re.compile(r"(albert_layer_groups|albert_layers)_(\d+)")

# Missing weights that are initialised randomly (with a notice) instead of being an error,
# and why a checkpoint may lack them.
_INITIALISABLE = {
    "sop_classifier/": "hub files carry no SOP weights",
    "albert/pooler/": "AlbertForMaskedLM saves carry no pooler",
    "classifier/": "a new task head",
    "qa_outputs/": "a new task head",
}
# The head whose weights a config.json `architectures` entry promises, most complete first.
_ARCHITECTURE_ORDER = (
    "pretraining",
    "masked_lm",
    "sequence_classification",
    "multiple_choice",
    "token_classification",
    "question_answering",
    "base",
)


class MissingDependencyError(ConversionError, ImportError):
    """Reading this checkpoint needs an optional dependency (PyTorch for ``.bin``)."""


# ---------------------------------------------------------------------------- key mapping
def hf_to_flax_key(name: str) -> tuple[str, bool] | None:
    """A Hugging Face parameter name -> (Flax path joined with "/", transpose?).

    Returns None for buffers (``position_ids``), which are not parameters. Raises KeyError
    for a name no rule covers. ``predictions.decoder.*`` (tied aliases) map to
    ``predictions/decoder/...`` here; :func:`hf_to_flax` resolves them.
    """
    parts = _LAYER_INDEX_HF.sub(r"\1_\2", name).split(".")
    if parts[-1] in _BUFFERS:
        return None
    if parts[0] == "albert" and len(parts) > 1 and parts[1] in _BACKBONE_MODULES:
        parts = parts[1:]
    if parts[0] in _BACKBONE_MODULES:
        parts = ["albert", *parts]
    elif parts[0] not in _HEAD_MODULES or len(parts) < 2:
        raise KeyError(name)
    module, leaf = parts[-2], parts[-1]
    transpose = False
    if leaf == "gamma":
        leaf = "scale"
    elif leaf == "beta":
        leaf = "bias"
    elif leaf == "weight":
        if module.endswith("_embeddings"):
            leaf = "embedding"
        elif _is_layer_norm(module):
            leaf = "scale"
        else:
            leaf, transpose = "kernel", True
    elif leaf != "bias":
        raise KeyError(name)
    return "/".join([*parts[:-1], leaf]), transpose


def flax_to_hf_key(path: str, *, backbone_prefix: str = "albert.") -> tuple[str, bool]:
    """A Flax path ("albert/pooler/kernel") -> (Hugging Face name, transpose?).

    ``backbone_prefix`` is ``"albert."`` for every model with a head and ``""`` for
    ``AlbertModel`` files.
    """
    parts = path.split("/")
    prefix = ""
    if parts[0] == "albert":
        parts, prefix = parts[1:], backbone_prefix
    leaf = parts[-1]
    transpose = leaf == "kernel"
    if leaf in ("kernel", "embedding", "scale"):
        leaf = "weight"
    elif leaf != "bias":
        raise KeyError(path)
    name = prefix + ".".join([*parts[:-1], leaf])
    return _LAYER_INDEX_FLAX.sub(r"\1.\2", name), transpose


def _is_layer_norm(module: str) -> bool:
    return module == "LayerNorm" or module.lower().endswith(("layernorm", "layer_norm"))


def _transpose(x: np.ndarray) -> np.ndarray:
    # safetensors writes raw buffers, so the transposed view must be made contiguous.
    return np.ascontiguousarray(x.T) if x.ndim == 2 else x


@dataclasses.dataclass
class _Mapped:
    """Flax-layout arrays plus what is needed to name keys as the file names them."""

    params: dict[str, np.ndarray]
    source_names: dict[str, str]
    transposed: set[str]
    problems: list[str]


def hf_to_flax(
    state_dict: Mapping[str, np.ndarray], *, tie_word_embeddings: bool = True
) -> dict[str, np.ndarray]:
    """A Hugging Face state dict -> flat Flax params {"albert/...": array} (all of it).

    Raises :class:`ConversionError` listing every key that cannot be placed.
    """
    mapped = _map_hf(state_dict, tie_word_embeddings=tie_word_embeddings)
    if mapped.problems:
        raise ConversionError("cannot convert the state dict:\n  " + "\n  ".join(mapped.problems))
    return mapped.params


def _map_hf(state_dict: Mapping[str, np.ndarray], *, tie_word_embeddings: bool) -> _Mapped:
    out = _Mapped({}, {}, set(), [])
    aliases = {}
    for name, value in state_dict.items():
        if name == "predictions.decoder.bias" or (
            name == "predictions.decoder.weight" and tie_word_embeddings
        ):
            aliases[name] = value
            continue
        try:
            mapped = hf_to_flax_key(name)
        except KeyError:
            out.problems.append(f"unexpected key {name} (no albert_jax parameter matches it)")
            continue
        if mapped is None:
            continue
        path, transpose = mapped
        if path in out.params:
            out.problems.append(
                f"duplicate key {name}: {out.source_names[path]} already gives {path}"
            )
            continue
        out.params[path] = _transpose(value) if transpose else value
        out.source_names[path] = name
        if transpose:
            out.transposed.add(path)

    # Tied tensors: check that the aliases hold what they alias, then drop them.
    for name, value in aliases.items():
        target = (
            "albert/embeddings/word_embeddings/embedding" if name.endswith("weight")
            else "predictions/bias"
        )
        if target not in out.params:
            if target == "predictions/bias":  # Only the alias was saved: it is the bias.
                out.params[target], out.source_names[target] = value, name
            continue
        if not _same(out.params[target], value):
            out.problems.append(
                f"{name} differs from {out.source_names[target]}; ALBERT ties them, so the "
                "checkpoint is inconsistent"
            )
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def flax_to_hf(
    params: Mapping[str, np.ndarray], *, backbone_prefix: str = "albert."
) -> dict[str, np.ndarray]:
    """Flat Flax params -> a Hugging Face state dict (PyTorch layout), tied keys left out."""
    out = {}
    for path, value in params.items():
        name, transpose = flax_to_hf_key(path, backbone_prefix=backbone_prefix)
        out[name] = _transpose(np.asarray(value)) if transpose else np.asarray(value)
    return out


# ---------------------------------------------------------------------------- reading files
def load_hf_state_dict(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> dict[str, np.ndarray]:
    """Reads a Hugging Face weights file (or the shards of one) into numpy arrays.

    ``.safetensors`` is read with safetensors (no torch needed); ``.bin`` with
    ``torch.load(weights_only=True)``, which cannot run code from the file. bfloat16 stays
    bfloat16 (``ml_dtypes``). Raises :class:`ConversionError` naming a file that cannot be
    read.
    """
    if not isinstance(path, (str, os.PathLike)):
        merged: dict[str, np.ndarray] = {}
        for shard in path:
            part = load_hf_state_dict(shard)
            clash = sorted(set(part) & set(merged))
            if clash:
                raise ConversionError(f"{os.fspath(shard)}: keys also in another shard: {clash}")
            merged.update(part)
        return merged
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        return _check_finite(_load_safetensors(path), path)
    if path.endswith((".bin", ".pt", ".pth")):
        return _check_finite(_load_torch(path), path)
    raise ConversionError(f"{path}: unknown weights format (expected .safetensors or .bin)")


def _check_finite(arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """Refuses NaN or infinite weights: they come only from a damaged file (or a diverged
    run) and would make every output NaN without any error."""
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.inexact) or value.dtype.name == "bfloat16":
            finite = np.isfinite(value.astype(np.float32) if value.dtype.name == "bfloat16"
                                 else value)
            if not finite.all():
                raise ConversionError(
                    f"{path}: tensor {name!r} holds {int((~finite).sum())} NaN or infinite "
                    "values: the file is damaged (or was saved from a diverged run)"
                )
    return arrays


def _first_line(error: BaseException, limit: int = 160) -> str:
    """The first line (or sentence) of an error message: library messages run to paragraphs
    of advice, and an error line must stay one readable line."""
    line = next((x.strip() for x in str(error).splitlines() if x.strip()), type(error).__name__)
    if len(line) > limit:
        end = line.find(". ")
        line = line[: end + 1] if 0 < end < limit else line[: limit - 3] + "..."
    return line


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, ValueError, KeyError, OSError) as e:
        # KeyError: a dtype numpy cannot hold; the rest: a truncated or corrupt file.
        raise ConversionError(
            f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            f"{path} is a PyTorch checkpoint and reading it needs PyTorch: "
            "pip install 'albert_jax[torch]' (or use a model.safetensors file)"
        ) from None
    try:
        with warnings.catch_warnings():  # Its notes on pickle protocols are not ours to print.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message for anything its restricted unpickler refuses advises retrying with
        # weights_only=False, i.e. running the file's code: never relay that advice.
        message = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if found:
            raise ConversionError(
                f"{path}: not a safe checkpoint: it holds objects other than tensors (it refers "
                f"to {found.group(1):.80}), and loading them could run code from the file; only "
                "plain state dicts of tensors are read (or use a model.safetensors file)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        reason = detail.group(1).strip() if detail else _first_line(e)
        if "weights_only" in reason:
            reason = "refused by the safe unpickler"
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({reason[:200]})") from None
    except Exception as e:  # Unpickling errors come in many types (EOFError, RuntimeError...).
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ConversionError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16; reinterpret the bits as ml_dtypes' bfloat16 (exact).
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ---------------------------------------------------------------------------- expected trees
@functools.lru_cache(maxsize=32)
def _abstract(config: AlbertConfig, head: str) -> dict[str, Any]:
    """Flat {path: nn.Partitioned(ShapeDtypeStruct)} of a head's parameter tree."""
    model = model_for_head(head, config)
    tree = jax.eval_shape(model.init_params, jax.random.key(0))["params"]
    return traverse_util.flatten_dict(tree, sep="/")


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(nn.meta.unbox(leaf).shape)


def _known_shapes(
    config: AlbertConfig, needed: set[str] | None = None
) -> dict[str, set[tuple[int, ...]]]:
    """Every parameter any head can have, with the shapes it may take.

    With ``needed``, stops at the first heads that know every path of it: each head is a
    trace of the model (~0.1 s), and loading should not pay for seven.
    """
    known: dict[str, set[tuple[int, ...]]] = {}
    for head in HEADS:
        for path, leaf in _abstract(config, head).items():
            known.setdefault(path, set()).add(_shape(leaf))
        if needed is not None and known.keys() >= needed:
            break
    return known


def _initialisable(path: str) -> str | None:
    """Why a checkpoint may lack this parameter, if it may."""
    return next((why for prefix, why in _INITIALISABLE.items() if path.startswith(prefix)), None)


def _compact(names: Sequence[str]) -> str:
    """["a.b.weight", "a.b.bias", "c.weight"] -> "a.b.{weight,bias}, c.weight"."""
    groups: dict[str, list[str]] = {}
    for name in names:
        stem, _, leaf = name.rpartition(".")
        groups.setdefault(stem, []).append(leaf)
    out = []
    for stem, leaves in groups.items():
        leaves.sort(key=lambda leaf: (leaf != "weight", leaf))  # "{weight,bias}", as in HF.
        tail = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        out.append(f"{stem}.{tail}" if stem else tail)
    return ", ".join(out)


# ---------------------------------------------------------------------------- checkpoints
@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read into memory: Flax-layout numpy arrays keyed by flat Flax path."""

    params: dict[str, np.ndarray]
    config: AlbertConfig
    hf_config: dict[str, Any]
    files: hub.ModelFiles
    source_names: dict[str, str]
    transposed: set[str]
    problems: list[str]

    @property
    def format(self) -> str:
        return self.files.format

    @property
    def backbone_prefix(self) -> str:
        """``albert.``, or nothing if the file named its backbone without it (AlbertModel)."""
        backbone = [n for p, n in self.source_names.items() if p.startswith("albert/")]
        if self.format == "hf" and backbone and not any(
            n.startswith("albert.") for n in backbone
        ):
            return ""
        return "albert."

    def hf_name(self, path: str) -> str:
        """The Hugging Face name of a Flax path, as this checkpoint's files spell it."""
        if self.format == "hf" and path in self.source_names:
            return self.source_names[path]
        try:
            return flax_to_hf_key(path, backbone_prefix=self.backbone_prefix)[0]
        except KeyError:
            return path

    def display_name(self, path: str) -> str:
        """The key as the file names it (for a missing key: as such a file would)."""
        if self.format == "hf":
            return self.hf_name(path)
        hf_name = self.hf_name(path)
        return path if hf_name == path else f"{path} (HF {hf_name})"

    def _layout(self, path: str, shape: tuple[int, ...]) -> list[int]:
        """A Flax-layout shape as the file stores it."""
        return list(reversed(shape)) if path in self.transposed else list(shape)

    def _diagnose(
        self, allowed: Mapping[str, set[tuple[int, ...]]], required: set[str], what: str
    ) -> None:
        """Raises one ConversionError listing every unknown, mis-shaped and missing key."""
        known = _known_shapes(self.config, needed=set(self.params))  # Only membership.
        errors = list(self.problems)
        for path, value in sorted(self.params.items()):
            if path not in known:
                errors.append(f"unexpected key {self.display_name(path)}")
            elif path in allowed and tuple(value.shape) not in allowed[path]:
                expected = " or ".join(str(self._layout(path, s)) for s in sorted(allowed[path]))
                errors.append(
                    f"shape mismatch for {self.display_name(path)}: checkpoint "
                    f"{self._layout(path, tuple(value.shape))}, model {expected}"
                )
        errors += [
            f"missing key {self.display_name(p)}"
            for p in sorted(required) if p not in self.params
        ]
        if errors:
            source = ", ".join(self.files.weights) or self.files.name
            raise ConversionError(
                f"{source} does not fit {what} ({len(errors)} problem"
                f"{'s' if len(errors) > 1 else ''}):\n  " + "\n  ".join(errors)
            )

    def validate(self) -> None:
        """Checks every tensor against the parameters some head has; the backbone (minus
        the pooler) must be complete. Raises :class:`ConversionError`."""
        known = _known_shapes(self.config)
        required = {p for p in _abstract(self.config, "base") if _initialisable(p) is None}
        # A module that is there at all must be complete (a partial head means corruption).
        for module in ("albert/pooler/", *(m + "/" for m in _HEAD_MODULES)):
            if any(p.startswith(module) for p in self.params):
                required |= {p for p in known if p.startswith(module)}
        self._diagnose(known, required, "an ALBERT model of its config")

    def heads(self) -> list[str]:
        """Heads (names of ``albert_jax.model.HEADS``) whose weights are all present."""
        present = []
        for head in HEADS:
            tree = _abstract(self.config, head)
            if all(
                p in self.params and tuple(self.params[p].shape) == _shape(leaf)
                for p, leaf in tree.items()
            ):
                present.append(head)
        return present

    def params_for(self, head: str, *, rng: jax.Array | None = None) -> dict[str, Any]:
        """``{"params": tree}`` for ``head``, boxed with logical axis names like
        ``model.init_params``, cast to the config's ``param_dtype``.

        Missing weights of heads checkpoints may lack are initialised from ``rng`` (with a
        warning); weights the head does not use are dropped.
        """
        abstract = _abstract(self.config, head)
        required = {p for p in abstract if _initialisable(p) is None}
        self._diagnose(
            {p: {_shape(leaf)} for p, leaf in abstract.items()},
            required,
            f"the albert_jax {head!r} head ({HEADS[head].__name__}) of its config",
        )
        unused = sorted(p for p in self.params if p not in abstract)
        if unused:
            logger.info(
                "weights the %s head does not use were dropped: %s",
                head, _compact([self.hf_name(p) for p in unused]),
            )
        fresh = sorted(p for p in abstract if p not in self.params)
        values: dict[str, Any] = {p: self.params[p] for p in abstract if p in self.params}
        if fresh:
            reasons: dict[str, list[str]] = {}
            for p in fresh:
                reasons.setdefault(_initialisable(p), []).append(self.hf_name(p))
            logger.warning(
                "%s",
                "; ".join(
                    f"{_compact(names)} not in the checkpoint ({why}): initialised randomly"
                    for why, names in reasons.items()
                ),
            )
            values.update(_init_subset(self.config, head, tuple(fresh), rng))
        boxed = {
            path: leaf.replace_boxed(jnp.asarray(values[path], dtype=nn.meta.unbox(leaf).dtype))
            for path, leaf in abstract.items()
        }
        return {"params": traverse_util.unflatten_dict(boxed, sep="/")}


def _init_subset(
    config: AlbertConfig, head: str, paths: tuple[str, ...], rng: jax.Array | None
) -> dict[str, jax.Array]:
    """Fresh values (the head's own initialisers) of some parameters only."""
    model = model_for_head(head, config)
    rng = jax.random.key(0) if rng is None else rng

    def init(key: jax.Array) -> dict[str, jax.Array]:
        flat = traverse_util.flatten_dict(nn.meta.unbox(model.init_params(key))["params"], sep="/")
        return {p: flat[p] for p in paths}

    # Under jit, XLA drops the initialisation (and forward pass) of everything not returned.
    return jax.jit(init)(rng)


def read_files(files: hub.ModelFiles, **config_overrides: Any) -> Checkpoint:
    """Reads a Hugging Face or albert_jax checkpoint's files into memory (any source,
    Google's TF checkpoints included: :func:`albert_jax.sources.read_checkpoint`).

    ``config_overrides`` set fields of the :class:`AlbertConfig` built from ``config.json``.
    """
    if files.format not in ("hf", FORMAT_NAME):
        raise ValueError(f"{files.name}: format {files.format!r} is not read here")
    hf_config = read_hf_config(files.config)
    config = config_from_hf_file(hf_config, files.config, **config_overrides)
    if files.format == "albert_jax":
        _check_meta(files.meta)
        params = {}
        for path in files.weights:
            params.update(_check_finite(_load_safetensors(path), path))
        return Checkpoint(params, config, hf_config, files, {p: p for p in params}, set(), [])
    state_dict = load_hf_state_dict(files.weights)
    mapped = _map_hf(state_dict, tie_word_embeddings=config.tie_word_embeddings)
    return Checkpoint(
        mapped.params, config, hf_config, files, mapped.source_names, mapped.transposed,
        mapped.problems,
    )


def _check_meta(path: str | None) -> dict[str, Any]:
    if path is None:
        raise ConversionError(f"no {hub.ALBERT_JAX_META}: not an albert_jax checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not UTF-8 or not JSON.
        raise ConversionError(f"{path}: unreadable ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise ConversionError(f"{path} must hold a JSON object, not a {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise ConversionError(f"{path}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise ConversionError(
            f"{path}: format version {meta.get('format_version')!r} is newer than this "
            f"albert_jax reads ({FORMAT_VERSION}); upgrade albert_jax"
        )
    return meta


# ---------------------------------------------------------------------------- writing
def _architectures(heads: Sequence[str], hf_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The source's architecture if its weights are all there, else the most complete."""
    by_class = {HEADS[h].__name__: h for h in heads}
    for name in hf_config.get("architectures") or ():
        if name in by_class:
            return (name,)
    for head in _ARCHITECTURE_ORDER:
        if head in heads:
            return (HEADS[head].__name__,)
    return ("AlbertModel",)


def _write_config(
    directory: Path, config: AlbertConfig, architectures: tuple[str, ...],
    hf_config: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
) -> None:
    out = config.to_hf_dict(architectures=architectures)
    # AlbertConfig keeps only the number of labels; keep the source's label names.
    for key in ("id2label", "label2id"):
        source = hf_config.get(key)
        if isinstance(source, dict) and len(source) == config.num_labels:
            out[key] = source
    out.update(extra or {})
    with open(directory / hub.CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")


def _copy_tokenizer(files: hub.ModelFiles, directory: Path) -> None:
    if files.tokenizer is None:
        logger.warning(
            "%s has no %s: the converted checkpoint has no tokenizer",
            files.name, hub.TOKENIZER_FILE,
        )
        return
    # Named spiece.model in the result whatever the source calls it (30k-clean.model).
    shutil.copyfile(files.tokenizer, directory / hub.TOKENIZER_FILE)
    source_dir = os.path.dirname(files.tokenizer)
    for name in hub.TOKENIZER_FILES[1:]:
        path = os.path.join(source_dir, name)
        if os.path.isfile(path):
            shutil.copyfile(path, directory / name)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread).
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_safetensors(
    arrays: Mapping[str, np.ndarray], path: Path, metadata: dict[str, str]
) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())}, path,
              metadata=metadata)
    # safetensors creates its files 0600; give them the permissions any new file gets.
    os.chmod(path, 0o666 & ~_umask())


def _write_albert_jax(
    directory: Path, params: Mapping[str, Any], heads: Sequence[str]
) -> None:
    _save_safetensors(
        {k: np.asarray(v) for k, v in params.items()}, directory / hub.ALBERT_JAX_PARAMS,
        {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)},
    )
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "heads": list(heads)}
    with open(directory / hub.ALBERT_JAX_META, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def _dtype_name(params: Mapping[str, np.ndarray]) -> str | None:
    """The one floating dtype of all tensors, as torch names it (or None if mixed)."""
    names = {np.dtype(v.dtype).name for v in params.values()}
    return names.pop() if len(names) == 1 else None


def check_destination(dest: str | os.PathLike, to: str, *, overwrite: bool = False) -> None:
    """Refuses a bad ``to`` or a ``dest`` that holds something (unless ``overwrite``); run
    before reading the source, which may be slow."""
    if to not in CONVERT_TARGETS:
        raise ValueError(f"to must be one of {CONVERT_TARGETS}, got {to!r}")
    dest_path = Path(dest)
    if dest_path.exists() and not dest_path.is_dir():
        raise FileExistsError(f"{dest_path} exists and is not a directory")
    if dest_path.is_dir() and any(dest_path.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest_path} exists and is not empty (--overwrite to replace it)")


def write_checkpoint(
    ckpt: Checkpoint, dest: str | os.PathLike, to: str = "albert_jax", *, overwrite: bool = False
) -> str:
    """Writes a checkpoint read into memory as ``to``: ``"albert_jax"`` (the format in this
    module's docstring) or ``"hf"`` (``config.json``, ``model.safetensors`` with Hugging Face
    names and PyTorch layout, tokenizer files), which ``transformers`` loads with its
    ``from_pretrained``. Every tensor is kept, in its dtype.

    ``dest`` is written atomically (a temporary sibling renamed at the end); an existing
    non-empty ``dest`` raises FileExistsError unless ``overwrite``. Returns ``dest``.
    """
    check_destination(dest, to, overwrite=overwrite)
    ckpt.validate()
    heads = ckpt.heads()
    architectures = _architectures(heads, ckpt.hf_config)
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        _copy_tokenizer(ckpt.files, tmp)
        if to == "albert_jax":
            _write_config(tmp, ckpt.config, architectures, ckpt.hf_config)
            _write_albert_jax(tmp, ckpt.params, heads)
        else:
            dtype = _dtype_name(ckpt.params)
            _write_config(
                tmp, ckpt.config, architectures, ckpt.hf_config,
                extra={"torch_dtype": dtype} if dtype else None,
            )
            prefix = "" if architectures == ("AlbertModel",) else "albert."
            state_dict = flax_to_hf(ckpt.params, backbone_prefix=prefix)
            _save_safetensors(state_dict, tmp / "model.safetensors", {"format": "pt"})
    logger.info("wrote %s (%s; heads: %s)", dest, to, ", ".join(heads) or "none")
    return os.fspath(dest)


def save_albert_jax(
    dest: str | os.PathLike,
    params: Mapping[str, Any],
    config: AlbertConfig,
    *,
    tokenizer: Any = None,
    overwrite: bool = False,
    extra_config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> str:
    """Writes a Flax parameter tree (boxed or not, with or without the ``"params"`` level)
    as an albert_jax directory; ``tokenizer`` is an object with ``save_pretrained(dir)``
    or the path of a ``spiece.model``. ``extra_config`` adds keys to ``config.json``
    (``id2label``, ...); ``extra_files`` maps file names to JSON-able contents written
    beside it. Atomic like :func:`convert`; returns ``dest``."""
    tree = nn.meta.unbox(params)
    tree = tree.get("params", tree)
    flat = {
        path: np.asarray(jax.device_get(value))
        for path, value in traverse_util.flatten_dict(tree, sep="/").items()
    }
    files = hub.ModelFiles(name=os.fspath(dest), config="", weights=(), format=FORMAT_NAME)
    ckpt = Checkpoint(flat, config, {}, files, {p: p for p in flat}, set(), [])
    ckpt.validate()
    heads = ckpt.heads()
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        _write_config(tmp, config, _architectures(heads, {}), {}, extra=extra_config)
        _write_albert_jax(tmp, flat, heads)
        for name, content in (extra_files or {}).items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)
                f.write("\n")
        if isinstance(tokenizer, (str, os.PathLike)):
            shutil.copyfile(tokenizer, tmp / hub.TOKENIZER_FILE)
        elif tokenizer is not None:
            tokenizer.save_pretrained(os.fspath(tmp))
    return os.fspath(dest)
