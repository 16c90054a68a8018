"""The generic sharded trainer: it knows no task (pretraining and fine-tuning plug in).

Design:

* :class:`Task` holds the task-specific parts: the model, how to initialise its (boxed,
  logically named) parameters, and a loss function. The loss contract is
  :data:`Sums` / :data:`Totals`: the loss function sees one micro-batch and the *totals* of
  the whole global batch (e.g. the number of masked tokens) and returns the micro-batch's
  loss as its share of the global loss (its sums divided by the global totals), so summing
  gradients over micro-batches gives exactly the gradient of the full batch.
* :class:`TrainState` (``step``, unboxed ``params``, optax ``opt_state``, ``rng``) is created
  directly in its shardings: ``jax.eval_shape`` of the initialiser -> logical
  ``PartitionSpec`` s of the boxed parameters -> ``NamedSharding`` s under
  :data:`albert_jax.sharding.LOGICAL_AXIS_RULES`; every optimizer-state leaf whose tree path
  ends with a parameter's path and has its shape gets that parameter's sharding (moments),
  everything else is replicated; then ``jax.jit(init, out_shardings=...)``.
* :func:`make_train_step` / :func:`make_eval_step`: ``jax.jit`` with in/out shardings and
  the state donated. Gradient accumulation is a ``jax.lax.scan`` over
  ``accumulation_steps`` micro-batches inside the step (example ``j`` of the global batch
  goes to micro-batch ``j % k``, so every device keeps its own rows); one step is one
  optimizer update, so the schedule, the checkpoints and the logs count real steps.
  (``optax.MultiSteps`` is not used: it would make every micro-batch a jitted call.)
* Dropout keys are ``fold_in(fold_in(state.rng, step), micro_batch)``: a resumed run draws
  the same masks.
* :func:`train_loop`: restore-or-init, the data position, metrics (``metrics.jsonl``,
  TensorBoard, eval lines on the console, a tqdm bar with tokens/s), checkpoints every N
  steps and on SIGTERM/SIGINT. Its checkpointer gets the abstract state from here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from albert_jax import atomic
from albert_jax import sharding as shd
from albert_jax.config import ConfigError
from albert_jax.errors import TrainingError
from albert_jax.training import run_config as rc
from albert_jax.training.checkpoint import Checkpointer
from albert_jax.training.optim import path_names

PyTree = Any
Batch = dict[str, Any]
# The loss contract of a Task: summed statistics of a (micro-)batch (``loss``, ``correct``,
# ...: [] float32 each, summed over micro-batches by the trainer) and the counts of the whole
# global batch that they are divided by (``masked``, ``examples``, ``count``: [] float32).
Sums = dict[str, jax.Array]
Totals = dict[str, jax.Array]


# ============================================================================ state
@flax.struct.dataclass
class TrainState:
    """``step`` [] int32 (updates done), ``params`` (unboxed), ``opt_state``, ``rng`` (a raw
    uint32[2] key: the base of every dropout key)."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Task:
    """The task-specific parts of training.

    Attributes:
      model: a Flax module.
      init_params: ``rng -> boxed params`` (``{"params": ...}`` with logical axis names).
      loss_fn: ``(params, batch, rng, deterministic, totals) -> (loss, sums)``: the loss of
        this (micro-)batch as its share of the global loss (its :data:`Sums` divided by the
        global :data:`Totals`, not by the micro-batch's own counts).
      totals: ``global batch -> Totals``: the counts the loss is normalised by.
      metrics: ``(sums, totals) -> dict`` of scalar metrics (sums over micro-batches).
    """

    model: nn.Module
    init_params: Callable[[jax.Array], PyTree]
    loss_fn: Callable[..., tuple[jax.Array, Sums]]
    totals: Callable[[Batch], Totals]
    metrics: Callable[[Sums, Totals], dict[str, jax.Array]]


# ============================================================================ shardings
def opt_state_shardings(
    abstract_opt_state: PyTree, abstract_params: PyTree, params_shardings: PyTree, mesh: Mesh
) -> PyTree:
    """A parameter's sharding for every optimizer-state leaf whose path ends with that
    parameter's path and that has its shape (Adam moments, ...); replicated otherwise."""
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
    for (path, leaf), s in zip(
        jax.tree_util.tree_leaves_with_path(abstract_params),
        jax.tree.leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)),
        strict=True,
    ):
        by_path[path_names(path)] = (tuple(leaf.shape), s)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        names = path_names(path)
        for i in range(len(names)):
            hit = by_path.get(names[i:])
            if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(
    task: Task, tx: optax.GradientTransformation, mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
) -> tuple[TrainState, TrainState]:
    """``(abstract state, shardings)`` of the :class:`TrainState` of ``task`` on ``mesh``."""
    key = jax.random.PRNGKey(0)
    boxed = jax.eval_shape(task.init_params, key)
    p_shard = shd.param_shardings(boxed, mesh, rules)
    abstract = jax.eval_shape(lambda k: _init_state(task, tx, k), key)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(
        step=replicated,
        params=p_shard,
        opt_state=opt_state_shardings(abstract.opt_state, abstract.params, p_shard, mesh),
        rng=replicated,
    )
    return abstract, shardings


def _init_state(task: Task, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    p_rng, d_rng = jax.random.split(rng)
    params = nn.meta.unbox(task.init_params(p_rng))
    return TrainState(
        step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), rng=d_rng
    )


def create_train_state(
    task: Task, tx: optax.GradientTransformation, mesh: Mesh, rng: jax.Array,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
) -> tuple[TrainState, TrainState]:
    """A fresh state initialised directly into its shardings: ``(state, shardings)``."""
    _, shardings = state_shardings(task, tx, mesh, rules)
    init = jax.jit(lambda k: _init_state(task, tx, k), out_shardings=shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return init(rng), shardings


def abstract_with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves carrying the target shardings (for restoring)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def placed(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host arrays (identical on every process) -> global arrays in ``shardings``."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i, x=x: np.asarray(x)[i]),
        tree, shardings)


def batch_shardings(mesh: Mesh, batch: Batch) -> Batch:
    return {k: shd.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def device_batch(mesh: Mesh, local_batch: Batch) -> Batch:
    """Process-local numpy rows -> global arrays sharded over ``(data, fsdp)``."""
    return {
        k: jax.make_array_from_process_local_data(shd.batch_sharding(mesh, np.ndim(v)), v)
        for k, v in local_batch.items()
    }


# ============================================================================ steps
def make_train_step(
    task: Task, tx: optax.GradientTransformation, mesh: Mesh, shardings: TrainState,
    example_batch: Batch, accumulation_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (state, metrics)``: jitted, sharded, the state donated.

    ``metrics["nonfinite_step"]`` ([] int32) is the step's number (``state.step + 1``) when
    its loss or gradient norm is not finite, else 0. With ``skip_nonfinite`` such a step
    keeps the previous params and optimizer state (the step count still advances: the
    batch is consumed)."""
    k = accumulation_steps
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

    def step(state: TrainState, batch: Batch):
        tot = task.totals(batch)
        step_rng = jax.random.fold_in(state.rng, state.step)
        if k == 1:
            (_, sums), grads = grad_fn(state.params, batch, step_rng, False, tot)
        else:
            # Example j -> micro-batch j % k: each device keeps its rows in every micro-batch.
            micro = jax.tree.map(
                lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0),
                batch,
            )

            def body(carry, xs):
                g_acc, s_acc = carry
                i, mb = xs
                (_, sums), g = grad_fn(
                    state.params, mb, jax.random.fold_in(step_rng, i), False, tot
                )
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, sums)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            _, sums_shape = jax.eval_shape(
                lambda: task.loss_fn(
                    state.params, jax.tree.map(lambda x: x[0], micro), step_rng, True, tot
                )
            )
            zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
            (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), (jnp.arange(k), micro))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(task.metrics(sums, tot))
        metrics["grad_norm"] = optax.tree.norm(grads)
        # Finite gradients give finite updates (clipped; LAMB/Adam divide by guarded norms).
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        if skip_nonfinite:
            def keep(new, old):
                return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

            params = keep(params, state.params)
            opt_state = keep(opt_state, state.opt_state)
        metrics["nonfinite_step"] = jnp.where(finite, 0, state.step + 1).astype(jnp.int32)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        step,
        in_shardings=(shardings, batch_shardings(mesh, example_batch)),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )

    def run(state: TrainState, batch: Batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, batch)

    run.jitted = jitted  # type: ignore[attr-defined]
    return run


def make_eval_step(
    task: Task, mesh: Mesh, shardings: TrainState, example_batch: Batch,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """``eval(state, batch) -> metrics`` (deterministic: no dropout)."""

    def step(state: TrainState, batch: Batch):
        tot = task.totals(batch)
        _, sums = task.loss_fn(state.params, batch, state.rng, True, tot)
        return task.metrics(sums, tot)

    jitted = jax.jit(
        step,
        in_shardings=(shardings, batch_shardings(mesh, example_batch)),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )

    def run(state: TrainState, batch: Batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, batch)

    return run


# ============================================================================ logging
def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without importing torch.

    tensorboardX imports torch when it is installed (1.7 s on a CPU, in every training
    process), only to accept torch tensors as values; we log Python floats. While it is
    imported, ``sys.modules["torch"] = None`` makes its ``import torch`` fail (it falls
    back to numpy); the global import lock keeps another thread from seeing that. A torch
    that is already imported is left alone.
    """
    import _imp

    _imp.acquire_lock()
    hidden = "torch" not in sys.modules
    try:
        if hidden:
            sys.modules["torch"] = None  # type: ignore[assignment]
        from tensorboardX import SummaryWriter
    finally:
        if hidden and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
        _imp.release_lock()
    return SummaryWriter


class MetricsLog:
    """``metrics.jsonl`` (append-only, truncated to the restored step on resume),
    TensorBoard events and nothing on processes other than 0."""

    def __init__(self, workdir: Path, resume_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            self._tb = _summary_writer_class()(str(workdir / "tensorboard"))
        except ImportError:  # pragma: no cover
            self._tb = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drops the lines of ``metrics.jsonl`` with ``"step" > step`` (and a torn last line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", 0) <= step:
            keep.append(line)
    atomic.write_text(path, "".join(x + "\n" for x in keep))


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, float]]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@contextlib.contextmanager
def _stop_on_signals():
    """Sets ``flag["stop"]`` on SIGTERM/SIGINT (main thread only) instead of dying."""
    flag = {"stop": False}
    previous = {}

    def handler(signum, frame):
        del frame
        flag["stop"] = signum

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# ============================================================================ the loop
def _process_data_states(data_iter: Any) -> list[dict[str, int]]:
    """Every process' data position (gathered, so process 0 can save them all)."""
    state = data_iter.get_state()
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils

    arr = np.asarray([state["epoch"], state["position"]], np.int64)
    gathered = np.asarray(multihost_utils.process_allgather(arr))
    return [{"epoch": int(e), "position": int(p)} for e, p in gathered.reshape(-1, 2)]


def _memoized_eval_step(task, mesh, shardings, rules):
    """``example numpy batch -> eval step``, compiled once per batch structure."""
    cache: dict[Any, Callable] = {}

    def get(example: Batch) -> Callable:
        key = tuple(sorted((k, np.shape(v)) for k, v in example.items()))
        if key not in cache:
            cache[key] = make_eval_step(task, mesh, shardings, example, rules)
        return cache[key]

    return get


def train_loop(
    task: Task,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    workdir: str | os.PathLike,
    data_iter: Iterator[Batch],
    *,
    num_train_steps: int,
    seed: int = 0,
    log_every: int = 10, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
    accumulation_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
    eval_fn: Callable[[Callable, TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    config_dict: dict | None = None,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
    progress: bool = True,
    init_state: Callable[[TrainState], TrainState] | None = None,
    skip_nonfinite: bool = False,
) -> TrainState:
    """Trains ``task`` from the latest checkpoint in ``workdir/checkpoints`` (or from
    scratch) to ``num_train_steps``. ``data_iter`` yields process-local numpy batches and has
    ``get_state()/set_state()``. ``eval_fn(eval_step, state) -> metrics`` (prefixed ``eval_``)
    runs every ``eval_every`` steps. ``init_state(shardings) -> state`` replaces the random
    initialisation of a fresh run (fine-tuning starts from pretrained weights). Returns the
    final state.

    A step whose loss or gradient norm is not finite raises :class:`TrainingError` naming
    it, at the next logging or checkpoint step (the check reads a device-side record of the
    first such step, fetched only where metrics are fetched or a checkpoint is saved
    anyway), before anything of that state is logged, evaluated or saved; with
    ``skip_nonfinite`` such steps are skipped instead and counted (``skipped_steps`` in
    each metrics record: the skips since the previous record). On resume ``config_dict``
    is compared with the run config saved with the checkpoint
    (:func:`run_config.check_resume_config`) before anything is restored."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    abstract, shardings = state_shardings(task, tx, mesh, rules)

    ckpt = Checkpointer(workdir / "checkpoints", save_every=checkpoint_every, keep=keep_checkpoints)
    start = ckpt.latest_step()
    try:
        if start is None:
            if init_state is not None:
                state = init_state(shardings)
            else:
                state, _ = create_train_state(task, tx, mesh, jax.random.PRNGKey(seed), rules)
            start = 0
        else:
            _check_resume(ckpt, start, config_dict, abstract)
            state, data_states, _ = ckpt.restore(
                start, abstract_with_shardings(abstract, shardings))
            if len(data_states) != jax.process_count():
                raise ConfigError(
                    f"the checkpoint of step {start} in {ckpt.directory} was written by "
                    f"{len(data_states)} processes; this run has {jax.process_count()}"
                )
            data_iter.set_state(data_states[jax.process_index()])
    except BaseException:
        ckpt.close()
        raise

    train_step = None
    eval_step = None
    log = MetricsLog(workdir, start, enabled=is_main)
    bar = None
    if progress and is_main:
        from tqdm import tqdm

        bar = tqdm(total=num_train_steps, initial=start, file=sys.stderr, unit="step",
                   dynamic_ncols=True)
    step = start
    tokens, t0 = 0, time.perf_counter()
    pending = None  # the last step's metrics: the bar advances once they are computed
    # [first non-finite step (0: none), non-finite steps]: folded on the device every step,
    # read only where the loop syncs anyway (metrics, checkpoints).
    replicated = NamedSharding(mesh, PartitionSpec())
    health = placed(np.zeros(2, np.int32), replicated)
    fold = jax.jit(_fold_nonfinite, out_shardings=replicated)
    skips_logged = 0
    try:
        with _stop_on_signals() as flag:
            while step < num_train_steps:
                local = next(data_iter)
                batch = device_batch(mesh, local)
                if train_step is None:
                    train_step = make_train_step(
                        task, tx, mesh, shardings, local, accumulation_steps,
                        learning_rate_fn, rules, skip_nonfinite,
                    )
                    if bar is not None:  # the first call compiles: say so, not a silent gap
                        bar.set_postfix_str("compiling the train step", refresh=True)
                state, metrics = train_step(state, batch)
                metrics = dict(metrics)
                health = fold(health, metrics.pop("nonfinite_step"))
                step += 1
                tokens += int(np.sum(local["attention_mask"])) if "attention_mask" in local \
                    else int(np.size(next(iter(local.values()))))
                last = step == num_train_steps
                if bar is not None:
                    # One step in flight: the bar counts finished steps (it does not run ahead
                    # of the device and then stall at the next logging step's sync).
                    if pending is not None:
                        jax.block_until_ready(pending)
                        bar.update(1)
                    pending = metrics
                evaluate = eval_fn is not None and eval_every and (step % eval_every == 0
                                                                   or last)
                stop = bool(flag["stop"])
                save = last or stop or step % checkpoint_every == 0
                log_now = step % log_every == 0 or last or evaluate
                if log_now or save:
                    fetched, (first_bad, skips) = jax.device_get(
                        (metrics if log_now else {}, health))
                    if first_bad and not skip_nonfinite:
                        raise TrainingError(_nonfinite_message(int(first_bad), ckpt))
                if log_now:
                    values = {k: float(v) for k, v in fetched.items()}
                    if skip_nonfinite:
                        values["skipped_steps"] = float(skips - skips_logged)
                        if skips > skips_logged:
                            console(f"step {step}: skipped {skips - skips_logged} update(s) "
                                    "with a non-finite loss or gradient", bar)
                        skips_logged = int(skips)
                    if bar is not None:
                        bar.update(1)
                        pending = None
                    if evaluate:
                        if eval_step is None:
                            eval_step = _memoized_eval_step(task, mesh, shardings, rules)
                        if bar is not None:
                            bar.set_postfix_str("evaluating", refresh=True)
                        scores = {f"eval_{k}": float(v)
                                  for k, v in eval_fn(eval_step, state).items()}
                        values.update(scores)
                        console(f"step {step}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in scores.items()), bar)
                    log.write(step, values)
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{values['loss']:.3f}",
                                        tok_s=f"{tokens * jax.process_count() / dt:.0f}")
                        tokens, t0 = 0, time.perf_counter()
                if save:
                    ckpt.save(step, state, _process_data_states(data_iter), config_dict or {},
                              force=True)
                if stop:
                    print(f"albert-jax: stopping at step {step} on signal {flag['stop']}; "
                          f"checkpoint saved", file=sys.stderr)
                    break
    finally:
        ckpt.wait_until_finished()
        ckpt.close()
        log.close()
        if bar is not None:
            if pending is not None:
                bar.update(1)
            bar.close()
    return state


def _fold_nonfinite(health: jax.Array, bad_step: jax.Array) -> jax.Array:
    """``health`` int32[2] (first non-finite step or 0, count) updated with one step's
    ``nonfinite_step`` ([] int32: its number, or 0 when finite)."""
    first = jnp.where(health[0] > 0, health[0], bad_step)
    return jnp.stack([first, health[1] + (bad_step > 0).astype(jnp.int32)])


def _nonfinite_message(step: int, ckpt: Checkpointer) -> str:
    ckpt.wait_until_finished()  # an earlier step's save may still be sealing (async)
    kept = ckpt.latest_step()
    where = f"the last checkpoint (step {kept}) is kept" if kept is not None else \
        "no checkpoint was saved"
    return (f"the loss or gradient norm of step {step} is not finite: stopping; {where}. "
            "Lower optimizer.learning_rate, or set config.skip_nonfinite_steps=True to skip "
            "such steps")


def _check_resume(ckpt: Checkpointer, step: int, config_dict: dict | None,
                  abstract: TrainState) -> None:
    """The resumed run's config against the one saved with checkpoint ``step`` (refused in
    one line when it changes the train state, a warning per other change), then the saved
    state's arrays against ``abstract`` (what the restore will ask orbax for)."""
    where = f"the checkpoint of step {step} in {ckpt.directory}"
    if config_dict is not None:
        saved = ckpt.restore_config(step)
        current = json.loads(json.dumps(config_dict, default=list))
        for line in rc.check_resume_config(saved, current, where):
            console(line)
    try:
        meta = ckpt.state_metadata(step)
    except Exception:  # an unreadable step is the restore's to report
        return
    saved = _shapes_by_path(getattr(meta, "tree", meta))
    if not saved:
        return
    want = _shapes_by_path(abstract)
    if set(saved) == set(want):
        diff = sorted(k for k in want if want[k] != saved[k])
    elif collections.Counter(want.values()) != collections.Counter(saved.values()):
        diff = sorted(set(want) ^ set(saved))  # containers named otherwise on disk
    else:
        diff = []
    if diff:
        k = min(diff, key=lambda p: (p[:1] != ("params",), p))  # a parameter, if one differs
        raise ConfigError(
            f"cannot resume {where}: its train state does not fit this run's model and "
            f"optimizer ({len(diff)} array(s) differ, e.g. {'/'.join(k)}: saved "
            f"{saved.get(k, 'absent')}, now {want.get(k, 'absent')}); use a new --workdir")


def _shapes_by_path(tree: PyTree) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {path_names(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def console(line: str, bar: Any = None) -> None:
    """``albert-jax: LINE`` on stderr from process 0, without breaking a progress bar."""
    if jax.process_index() != 0:
        return
    if bar is not None:
        bar.write(f"albert-jax: {line}", file=sys.stderr)
    else:
        print(f"albert-jax: {line}", file=sys.stderr)


def main_process_first(prepare: Callable[[], Any], what: str) -> Any:
    """``prepare()`` on process 0 first while the others wait, then on every other process
    (which then finds the work done, e.g. a prepared dataset); returns its result."""
    if jax.process_count() == 1:
        return prepare()
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        prepare()
    multihost_utils.sync_global_devices(f"albert_jax {what} prepared")
    return prepare()


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` (multi-host). ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are used when set (otherwise JAX detects
    TPU pods, SLURM, ...). CPU collectives go through gloo (processes on one machine)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    env = os.environ
    kwargs: dict[str, Any] = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
