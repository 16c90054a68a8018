"""Every source of a model's weights read into one checkpoint, and ``convert`` between formats.

Hugging Face and albert_jax directories are read by :mod:`albert_jax.conversion`, Google's
TF1 checkpoints by :mod:`albert_jax.tf_checkpoint` (which builds on conversion); this module
picks the reader by the files' format, so that neither reader imports the other.
"""

from __future__ import annotations

import os
from typing import Any

from albert_jax import conversion, hub, tf_checkpoint


def read_checkpoint(
    name_or_path: str | os.PathLike | hub.ModelFiles, **config_overrides: Any
) -> conversion.Checkpoint:
    """Reads a hub name, a Hugging Face, albert_jax or Google TF checkpoint (a directory,
    a file, or files resolved by :mod:`albert_jax.hub`) into memory.

    ``config_overrides`` set fields of the :class:`AlbertConfig` built from its config.
    """
    files = (
        name_or_path if isinstance(name_or_path, hub.ModelFiles)
        else hub.resolve_model_files(name_or_path)
    )
    if files.format == "tf":
        return tf_checkpoint.read_checkpoint(files, **config_overrides)
    return conversion.read_files(files, **config_overrides)


def convert(
    src: str | os.PathLike | hub.ModelFiles,
    dest: str | os.PathLike,
    to: str = "albert_jax",
    *,
    overwrite: bool = False,
) -> str:
    """Converts a checkpoint; returns ``dest``.

    ``src``: what :func:`read_checkpoint` reads (for a bare TF checkpoint prefix with its
    config elsewhere: :func:`albert_jax.hub.resolve_tf_files`). ``to``: ``"albert_jax"`` or
    ``"hf"`` (:func:`albert_jax.conversion.write_checkpoint`). ``dest`` is written
    atomically; an existing non-empty ``dest`` raises FileExistsError unless ``overwrite``
    (checked before ``src`` is read, which may be slow).
    """
    conversion.check_destination(dest, to, overwrite=overwrite)
    return conversion.write_checkpoint(read_checkpoint(src), dest, to, overwrite=overwrite)
