"""``export``: a training run -> a model directory (albert_jax, or Hugging Face format).

A pretraining run exports the parameters of a checkpoint (the latest, or ``step``); a
fine-tuning run exports its best model (``best/``, with the run config beside it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from albert_jax import atomic
from albert_jax.sources import convert
from albert_jax.training import finetune, pretrain


def export(workdir: str | os.PathLike, dest: str | os.PathLike, *, to: str = "albert_jax",
           step: int | None = None, dtype: str = "float32", overwrite: bool = False) -> str:
    """Writes the model of the run in ``workdir`` to ``dest`` (atomically); returns ``dest``.

    ``to`` is ``"albert_jax"`` or ``"hf"``; ``step`` and ``dtype`` (the storage dtype:
    float32, bfloat16, float16) apply to pretraining runs."""
    if finetune.is_finetune_workdir(workdir):
        if step is not None or dtype != "float32":
            raise ValueError("a fine-tuning run exports its best model: --step and "
                             "--dtype apply to pretraining runs")
        model = finetune.best_model(workdir)
        out = convert(model, dest, to=to, overwrite=overwrite)
        if to == "albert_jax":  # convert keeps the model files; keep the run config too.
            atomic.write_bytes(Path(out) / finetune.CONFIG_FILE,
                               (model / finetune.CONFIG_FILE).read_bytes())
        return out
    if to == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            pretrain.model_from_checkpoint(workdir, Path(tmp) / "model", step=step, dtype=dtype)
            return convert(Path(tmp) / "model", dest, to="hf", overwrite=overwrite)
    return pretrain.model_from_checkpoint(workdir, dest, step=step, overwrite=overwrite,
                                          dtype=dtype)
