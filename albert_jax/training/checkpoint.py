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
    integrity.json  SHA-256 and size of every other file of the step (but orbax's
              commit files), and whether the state
              was finite (see below)

Saves are asynchronous (the arrays are copied off the devices before ``save`` returns, so
the train state may then be donated); ``wait_until_finished`` runs before the trainer exits.

Integrity: when orbax has written a step's files into its temporary directory, and before it
renames that directory to ``<step>`` (its commit), process 0 hashes every file into
``integrity.json`` there (orbax's ``post_finalization_callback``). So a committed step always
has its manifest; a step without one is not trusted. Restoring verifies the files against the
manifest first (every byte is read once: on the tiny config about 11 MB per step, some
20-40 ms). :meth:`Checkpointer.latest_step` is the newest *good* step: verified and saved
from a finite state. A broken newer step is named in a one-line warning and (in a training
run) set aside as ``corrupt-<step>``, so the run resumes from the previous good step and
saves that step anew; if there are steps but none is good, :class:`CheckpointError` says so
in one line. Rotation keeps the newest ``keep`` steps and never deletes the newest good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from albert_jax import atomic

ITEMS = ("state", "data", "config")
MANIFEST = "integrity.json"
CORRUPT_PREFIX = "corrupt-"
# Orbax's own commit bookkeeping, (re)written after the manifest, at the rename: not hashed.
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (corrupt, unverifiable or non-finite)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(step_dir: Path, finite: bool) -> None:
    """``step_dir/integrity.json``: ``{"files": {relative path: [size, sha256]}, "finite"}``
    of every regular file below ``step_dir`` but orbax's top-level commit files (written
    atomically)."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(step_dir).as_posix()
            if rel in (MANIFEST, *_COMMIT_FILES) or p.is_symlink() or not p.is_file():
                continue
            files[rel] = [p.stat().st_size, _sha256(p)]
    atomic.write_text(step_dir / MANIFEST, json.dumps(
        {"format": 1, "finite": bool(finite), "files": files}, sort_keys=True) + "\n")


def verify(step_dir: Path, prefix: str = "") -> str | None:
    """``None`` if the files of ``step_dir`` (those under ``prefix``, if given) match its
    manifest and the state was finite, else why not (a few words)."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        finite = manifest["finite"]
    except FileNotFoundError:
        return f"no {MANIFEST} (no integrity data)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST}"
    if not prefix and finite is not True:
        return "it was saved from a non-finite state"
    checked = 0
    for rel, (size, sha) in sorted(files.items()):
        if prefix and not rel.startswith(prefix):
            continue
        p = step_dir / rel
        try:
            if p.is_symlink() or p.stat().st_size != size:
                return f"{rel} has the wrong size"
            if _sha256(p) != sha:
                return f"{rel} does not match its SHA-256"
        except OSError:
            return f"{rel} is missing or unreadable"
        checked += 1
    if not checked:
        return f"{MANIFEST} lists no files"
    return None


def _agree(values: list[int]) -> list[int]:
    """Process 0's ``values`` (non-negative ints, at most 256) on every process."""
    if jax.process_count() == 1:
        return values
    import numpy as np
    from jax.experimental import multihost_utils

    arr = np.full(256, -3, np.int32)
    arr[:len(values)] = values[:256]
    out = np.asarray(multihost_utils.broadcast_one_to_all(arr))
    return [int(x) for x in out if x != -3]


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class Checkpointer:
    """A thin wrapper of ``ocp.CheckpointManager`` with the items above, integrity manifests
    and rotation that keeps the newest good step."""

    def __init__(self, directory: str | os.PathLike, save_every: int = 1000, keep: int = 3,
                 create: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.create = create
        self._saving: tuple[int, bool] | None = None  # (step, finite) of the save in flight
        self._good: set[int] = set()  # steps verified (or sealed) by this process
        self._is_main = jax.process_index() == 0
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, save_interval_steps=save_every, create=create,
                enable_async_checkpointing=True,
                # A save killed before its commit leaves orbax's temporary directory: gone
                # at the next start.
                cleanup_tmp_directories=create,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
            ),
            item_names=ITEMS,
        )

    # ------------------------------------------------------------------ integrity
    def _seal(self) -> None:
        """Orbax's post-finalization callback (background thread): the step's files are
        complete in the temporary directory, not yet renamed: the manifest goes in there,
        so it is part of the commit."""
        if self._saving is None or not self._is_main:
            return
        step, finite = self._saving
        tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        target = tmp[-1] if tmp else self.directory / str(step)  # (commit-file filesystems)
        write_manifest(target, finite)
        if finite:
            self._good.add(step)
        else:
            self._good.discard(step)

    def _check(self, step: int, prefix: str = "") -> str | None:
        if step in self._good:
            return None
        problem = verify(self.directory / str(step), prefix)
        if problem is None and not prefix:
            self._good.add(step)
        return problem

    def all_steps(self) -> list[int]:
        """Every committed step, good or not (ascending)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest good step (verified, finite); ``None`` if there are no steps.

        Each newer broken step gets a one-line warning naming it; in a training run
        (``create``) it is renamed ``corrupt-<step>`` so the step can be saved anew. Raises
        :class:`CheckpointError` if there are steps but none is good. (Process 0 decides;
        the others follow.)"""
        error = None
        step = None
        if self._is_main:
            try:
                step = self._newest_good()
            except CheckpointError as e:
                error = e
        agreed = _agree([-2 if error else -1 if step is None else step])[0]
        self.manager.reload()
        if agreed == -2:
            raise error or CheckpointError(f"no good checkpoint in {self.directory}")
        if agreed < 0:
            return None
        self._good.add(agreed)
        return agreed

    def _newest_good(self) -> int | None:
        steps = self.all_steps()
        broken = []
        for step in reversed(steps):
            problem = self._check(step)
            if problem is None:
                break
            broken.append((step, problem))
        else:
            step = None
        if broken and step is None:
            raise CheckpointError(
                f"no good checkpoint in {self.directory}: " + "; ".join(
                    f"step {s}: {why}" for s, why in broken)
                + " (move the checkpoints away to start over)")
        for s, why in broken:
            aside = ""
            if self.create:
                dest = self.directory / f"{CORRUPT_PREFIX}{s}"
                n = 1
                while dest.exists():
                    n += 1
                    dest = self.directory / f"{CORRUPT_PREFIX}{s}.{n}"
                os.rename(self.directory / str(s), dest)
                aside = f", moved to {dest.name}"
            print(f"albert-jax: warning: checkpoint step {s} in {self.directory} is "
                  f"broken ({why}{aside}); using step {step}", file=sys.stderr)
        return step

    def _rotate(self) -> None:
        """Deletes all but the newest ``keep`` steps, keeping the newest good one too."""
        if not self.keep:
            return
        doomed = []
        if self._is_main:
            steps = self.all_steps()
            keep = set(steps[-self.keep:])
            for step in reversed(steps):
                if self._check(step) is None:
                    keep.add(step)
                    break
            doomed = [s for s in steps if s not in keep]
        for step in _agree(doomed):  # orbax's delete synchronises the processes
            self.manager.delete(step)

    def save(self, step: int, state: Any, data_states: list[dict[str, int]],
             config: dict, force: bool = False) -> bool:
        """Starts saving ``step`` (asynchronously); whether it was saved."""
        finite = bool(jax.device_get(_all_finite(state)))
        self.wait_until_finished()  # the previous save committed and rotated
        self._saving = (step, finite)
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
        ``jax.ShapeDtypeStruct`` with the target shardings (any mesh). The step's files
        are verified first (:class:`CheckpointError` if they do not match)."""
        problem = self._check(step)
        if problem is not None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is broken: "
                                  f"{problem}")
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
        """The run config saved with ``step`` (its files verified)."""
        problem = self._check(step, prefix="config/")
        if problem is not None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is broken: "
                                  f"{problem}")
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(out.config)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()
        if self._saving is not None:
            self._saving = None
            self._rotate()

    def close(self) -> None:
        self.wait_until_finished()
        self.manager.close()
