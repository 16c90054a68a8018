"""Training checkpoints: the orbax train state of a run (``WORKDIR/checkpoints``).

In this package a *checkpoint* is always this: a saved step of a training run (state, data
position, run config). A model's weights are a *model directory* (see
:mod:`albert_jax.conversion`); ``albert-jax export`` turns a checkpoint into one. This module
imports no trainer: its callers hand it the abstract state to restore into.

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

    def state_metadata(self, step: int) -> Any:
        """orbax's metadata of the saved train state (a tree of shapes and dtypes; no array
        is read)."""
        return ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")

    def restore_config(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(out.config)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
