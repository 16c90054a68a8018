"""Loading pretrained checkpoints: a model, its parameters and its tokenizer in one call.

>>> model, params, tokenizer = load_pretrained("albert-base-v2")      # doctest: +SKIP
>>> out = model.apply(params, jnp.asarray([tokenizer.encode("Hello [MASK].")]))

Sources: hub names (through the local cache first), Hugging Face directories
(``model.safetensors`` or ``pytorch_model.bin``) and albert_jax directories (see
:mod:`albert_jax.conversion`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax

from albert_jax import hub
from albert_jax.config import AlbertConfig, config_from_hf_file, read_hf_config
from albert_jax.errors import TokenizerError
from albert_jax.model import HEADS, model_for_head
from albert_jax.sources import read_checkpoint

if TYPE_CHECKING:
    from albert_jax.tokenizer import AlbertTokenizer

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(AlbertConfig))


def _check_arguments(head: str, overrides: dict[str, Any]) -> None:
    """Fails on a bad head or config field before anything is downloaded or read."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r} (choose from {', '.join(HEADS)})")
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown AlbertConfig fields: {', '.join(unknown)}")


def load_model(
    name_or_path: str | os.PathLike,
    head: str = "masked_lm",
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    scan_layers: bool = True,
    remat: str = "none",
    num_labels: int | None = None,
    rng_seed: int = 0,
    **config_overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, params) of a checkpoint, without the tokenizer.

    See :func:`load_pretrained` for the arguments.
    """
    _check_arguments(head, config_overrides)
    return _load(
        hub.resolve_model_files(name_or_path), head, dtype=dtype, param_dtype=param_dtype,
        scan_layers=scan_layers, remat=remat, num_labels=num_labels, rng_seed=rng_seed,
        **config_overrides,
    )


def _load(
    files: hub.ModelFiles, head: str, *, num_labels: int | None, rng_seed: int,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    ckpt = read_checkpoint(files, **overrides)
    model = model_for_head(head, ckpt.config)
    return model, ckpt.params_for(head, rng=jax.random.key(rng_seed))


def load_tokenizer(name_or_path: str | os.PathLike) -> AlbertTokenizer:
    """The :class:`albert_jax.tokenizer.AlbertTokenizer` of a checkpoint."""
    files = hub.resolve_model_files(name_or_path)
    return _tokenizer(files)


def _tokenizer(files: hub.ModelFiles) -> AlbertTokenizer:
    from albert_jax.tokenizer import AlbertTokenizer  # Deferred: sentencepiece.

    if files.tokenizer is None:
        raise FileNotFoundError(
            f"{files.name}: the checkpoint has no {hub.TOKENIZER_FILE} (the tokenizer); put "
            "one in its directory, or use load_model() for the weights alone"
        )
    if files.format == "tf":  # Google's 30k-clean.model, with no tokenizer_config.json.
        return AlbertTokenizer.from_pretrained(files.tokenizer)
    return AlbertTokenizer.from_pretrained(os.path.dirname(files.tokenizer))


def check_tokenizer_fits(
    tokenizer: AlbertTokenizer, files: hub.ModelFiles, vocab_size: int | None = None
) -> None:
    """Refuses a tokenizer whose piece count differs from the model's ``vocab_size``.

    Every path that loads a model with its tokenizer (:func:`load_pretrained`, the
    ``from_pretrained`` of the inference tasks, fine-tuning) goes through here. A smaller
    vocabulary than the tokenizer's gives ids past the embedding table (NaN scores from
    gathers out of range); a larger one gives predictions the tokenizer cannot decode.
    ``vocab_size`` overrides the config's, as a config override would.
    """
    if vocab_size is None:
        vocab_size = config_from_hf_file(read_hf_config(files.config), files.config).vocab_size
    if vocab_size != tokenizer.vocab_size:
        raise TokenizerError(
            f"{tokenizer.vocab_file} has {tokenizer.vocab_size} pieces but the model's "
            f"vocab_size is {vocab_size} ({files.config}): the tokenizer does not belong to "
            "this model"
        )


def load_pretrained(
    name_or_path: str | os.PathLike,
    head: str = "masked_lm",
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    scan_layers: bool = True,
    remat: str = "none",
    num_labels: int | None = None,
    rng_seed: int = 0,
    **config_overrides: Any,
) -> tuple[nn.Module, dict[str, Any], AlbertTokenizer]:
    """(model, params, tokenizer) of a hub name, Hugging Face or albert_jax directory.

    Args:
      name_or_path: ``"albert-base-v2"``, ``"albert/albert-base-v2"``, any hub id, or a
        local directory (or weights file). Hub names are looked up in the local cache
        first; :class:`albert_jax.hub.ModelNotFoundError` if unavailable.
      head: a key of :data:`albert_jax.model.HEADS` (``"masked_lm"``, ``"pretraining"``,
        ``"sequence_classification"``, ...). Head weights the checkpoint lacks (SOP, new
        task heads, the pooler) are initialised randomly with a warning; weights the head
        does not use are dropped. Anything else that does not fit raises
        :class:`albert_jax.conversion.ConversionError` listing every offending key.
      dtype: computation dtype; param_dtype: the parameters are cast to it.
      scan_layers, remat: runtime options of :class:`AlbertConfig`.
      num_labels: classes of a classification head (default: the checkpoint's config).
      rng_seed: seeds the initialisation of missing head weights.
      config_overrides: further :class:`AlbertConfig` fields (e.g. dropout rates).

    Returns:
      The Flax model, ``{"params": tree}`` boxed in ``nn.Partitioned`` with logical axis
      names exactly as ``model.init_params`` returns them (``model.apply`` takes it as
      is), and the tokenizer.
    """
    _check_arguments(head, config_overrides)
    files = hub.resolve_model_files(name_or_path)
    # The tokenizer first: a missing spiece.model fails before the weights are read.
    tokenizer = _tokenizer(files)
    check_tokenizer_fits(tokenizer, files, config_overrides.get("vocab_size"))
    model, params = _load(
        files, head, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
        remat=remat, num_labels=num_labels, rng_seed=rng_seed, **config_overrides,
    )
    return model, params, tokenizer
