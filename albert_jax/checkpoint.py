"""Training checkpoints (orbax) and export of a checkpoint as a model directory.

Layout of ``WORKDIR/checkpoints/<step>/`` (one orbax ``CheckpointManager`` step)::

    state/    the TrainState (step, params, opt_state, rng) - StandardSave, one array per
              leaf, restorable onto any mesh (restore with target shardings)
    data/     JSON {"processes": [{"epoch", "position"}, ...]} - each process' data position
    config/   JSON: the run's ml_collections config (``config.to_dict()``)

Saves are asynchronous (the arrays are copied off the devices before ``save`` returns, so
the train state may then be donated); ``wait_until_finished`` runs before the trainer exits.
The last ``keep`` steps are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")


class Checkpointer:
    """A thin wrapper of ``ocp.CheckpointManager`` with the items above."""

    def __init__(self, directory: str | os.PathLike, save_every: int = 1000, keep: int = 3,
                 create: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, create=create,
                enable_async_checkpointing=True,
            ),
            item_names=ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_states: list[dict[str, int]],
             config: dict, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"processes": data_states}),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, list[dict[str, int]], dict]:
        """``(state, data states, config)``; ``abstract_state`` leaves are
        ``jax.ShapeDtypeStruct`` with the target shardings (any mesh)."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return out.state, list(out.data["processes"]), dict(out.config)

    def restore_config(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(out.config)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def export(workdir: str | os.PathLike, dest: str | os.PathLike, step: int | None = None,
           overwrite: bool = False, dtype: str = "float32") -> str:
    """The params of the latest (or ``step``) checkpoint of ``workdir`` -> an albert_jax model
    directory (with the run's ``spiece.model``) that ``albert_jax.load_pretrained`` and
    ``albert-jax convert --to hf`` accept. Restores onto one device. ``dtype`` is the
    storage dtype of the parameters ("bfloat16" halves the files; loading casts them to
    the ``param_dtype`` asked for). Returns ``dest``."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"export dtype must be float32, bfloat16 or float16, got {dtype!r}")
    import ml_collections

    from albert_jax import train
    from albert_jax.conversion import save_albert_jax

    ckpt_dir = Path(workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir} ({ckpt_dir} is missing)")
    ckpt = Checkpointer(ckpt_dir, create=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
        if step not in ckpt.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {ckpt_dir} "
                                    f"(have {ckpt.all_steps()})")
        config = ml_collections.ConfigDict(ckpt.restore_config(step))
        mcfg = train.model_config(config)
        task = train.pretraining_task(mcfg)
        tx = train.make_tx(config)
        mesh = train.shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        abstract, shardings = train.state_shardings(task, tx, mesh)
        state, _, _ = ckpt.restore(step, train.abstract_with_shardings(abstract, shardings))
    finally:
        ckpt.close()
    spm = train.resolve_path(config.data.spiece_model)
    # Export float32 compute by default: the model directory is for inference and conversion.
    mcfg = mcfg.replace(dtype="float32", remat="none")
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), state.params["params"])
    return save_albert_jax(dest, {"params": params}, mcfg,
                           tokenizer=spm if spm.is_file() else None, overwrite=overwrite)
