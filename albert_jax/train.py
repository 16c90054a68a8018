"""The sharded trainer: one generic loop, ALBERT pretraining (MLM + SOP) plugged into it.

Design (fine-tuning reuses everything but the :class:`Task` and the data iterator):

* :class:`Task` holds the task-specific parts: the model, how to initialise its (boxed,
  logically named) parameters, and a loss function. The loss function sees one micro-batch
  and the *totals* of the whole global batch (e.g. the number of masked tokens), so that the
  loss of a micro-batch is its share of the global loss: summing gradients over micro-batches
  gives exactly the gradient of the full batch.
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
  TensorBoard, a tqdm bar with tokens/s), checkpoints every N steps and on SIGTERM/SIGINT.

Command line (wired as ``albert-jax pretrain`` / ``albert-jax export``)::

    python -m albert_jax.train pretrain --config configs/pretrain/tiny.py --workdir /tmp/run \\
        [--config.num_train_steps=100 ...]
    python -m albert_jax.train export /tmp/run /tmp/model
"""

from __future__ import annotations

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
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from albert_jax import sharding as shd
from albert_jax.config import AlbertConfig, ConfigError
from albert_jax.model import AlbertForPreTraining
from albert_jax.optim import make_optimizer, warmup_polynomial_decay

REPO_ROOT = Path(__file__).resolve().parents[1]
PyTree = Any
Batch = dict[str, Any]


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
        this (micro-)batch as its share of the global loss (divide by ``totals``, not by the
        micro-batch's own counts) and a dict of summed statistics.
      totals: ``global batch -> dict`` of counts the loss is normalised by.
      metrics: ``(sums, totals) -> dict`` of scalar metrics (summed over micro-batches).
    """

    model: nn.Module
    init_params: Callable[[jax.Array], PyTree]
    loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    totals: Callable[[Batch], dict[str, jax.Array]]
    metrics: Callable[[dict, dict], dict[str, jax.Array]]


# ============================================================================ pretraining task
def pretraining_task(model_config: AlbertConfig, seq_len: int = 8) -> Task:
    """MLM (mean over ``masked_weights``) + SOP cross-entropy, unweighted sum."""
    model = AlbertForPreTraining(model_config)

    def init_params(rng: jax.Array) -> PyTree:
        return model.init_params(rng, batch=1, seq_len=seq_len)

    def totals(batch: Batch) -> dict[str, jax.Array]:
        return {
            "masked": jnp.sum(batch["masked_weights"].astype(jnp.float32)),
            "examples": jnp.asarray(batch["sop_label"].shape[0], jnp.float32),
        }

    def loss_fn(params, batch, rng, deterministic, tot):
        out = model.apply(
            params,
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            masked_positions=batch["masked_positions"],
            deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        logits = out.prediction_logits.astype(jnp.float32)  # [B, P, V]
        w = batch["masked_weights"].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, batch["masked_ids"][..., None], axis=-1)[..., 0]
        mlm_sum = jnp.sum(nll * w)
        mlm_correct = jnp.sum((jnp.argmax(logits, -1) == batch["masked_ids"]) * w)
        sop_logits = out.sop_logits.astype(jnp.float32)  # [B, 2]
        sop_logp = jax.nn.log_softmax(sop_logits, axis=-1)
        sop_nll = -jnp.take_along_axis(sop_logp, batch["sop_label"][:, None], axis=-1)[:, 0]
        sop_sum = jnp.sum(sop_nll)
        sop_correct = jnp.sum(jnp.argmax(sop_logits, -1) == batch["sop_label"])
        loss = mlm_sum / jnp.maximum(tot["masked"], 1.0) + sop_sum / tot["examples"]
        sums = {
            "mlm_loss": mlm_sum,
            "sop_loss": sop_sum,
            "mlm_correct": mlm_correct.astype(jnp.float32),
            "sop_correct": sop_correct.astype(jnp.float32),
        }
        return loss, sums

    def metrics(sums, tot):
        masked = jnp.maximum(tot["masked"], 1.0)
        mlm_loss = sums["mlm_loss"] / masked
        sop_loss = sums["sop_loss"] / tot["examples"]
        return {
            "loss": mlm_loss + sop_loss,
            "mlm_loss": mlm_loss,
            "sop_loss": sop_loss,
            "mlm_accuracy": sums["mlm_correct"] / masked,
            "sop_accuracy": sums["sop_correct"] / tot["examples"],
        }

    return Task(model, init_params, loss_fn, totals, metrics)


# ============================================================================ shardings
def _path_names(path: Sequence[Any]) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


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
        by_path[_path_names(path)] = (tuple(leaf.shape), s)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        names = _path_names(path)
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
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (state, metrics)``: jitted, sharded, the state donated."""
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
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
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
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    os.replace(tmp, path)


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
    log_every: int = 10,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    accumulation_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
    eval_fn: Callable[[Callable, TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    config_dict: dict | None = None,
    rules: Sequence[tuple[str, Any]] = shd.LOGICAL_AXIS_RULES,
    progress: bool = True,
    init_state: Callable[[TrainState], TrainState] | None = None,
) -> TrainState:
    """Trains ``task`` from the latest checkpoint in ``workdir/checkpoints`` (or from
    scratch) to ``num_train_steps``. ``data_iter`` yields process-local numpy batches and has
    ``get_state()/set_state()``. ``eval_fn(eval_step, state) -> metrics`` (prefixed ``eval_``)
    runs every ``eval_every`` steps. ``init_state(shardings) -> state`` replaces the random
    initialisation of a fresh run (fine-tuning starts from pretrained weights). Returns the
    final state."""
    from albert_jax.checkpoint import Checkpointer

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
    try:
        with _stop_on_signals() as flag:
            while step < num_train_steps:
                local = next(data_iter)
                batch = device_batch(mesh, local)
                if train_step is None:
                    train_step = make_train_step(
                        task, tx, mesh, shardings, local, accumulation_steps,
                        learning_rate_fn, rules,
                    )
                state, metrics = train_step(state, batch)
                step += 1
                tokens += int(np.sum(local["attention_mask"])) if "attention_mask" in local \
                    else int(np.size(next(iter(local.values()))))
                last = step == num_train_steps
                if step % log_every == 0 or last:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if eval_fn is not None and eval_every and (step % eval_every == 0 or last):
                        if eval_step is None:
                            eval_step = _memoized_eval_step(task, mesh, shardings, rules)
                        values.update({f"eval_{k}": float(v)
                                       for k, v in eval_fn(eval_step, state).items()})
                    log.write(step, values)
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{values['loss']:.3f}",
                                        tok_s=f"{tokens * jax.process_count() / dt:.0f}")
                        tokens, t0 = 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                stop = bool(flag["stop"])
                if last or stop or step % checkpoint_every == 0:
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
            bar.close()
    return state


# ============================================================================ pretraining setup
def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute paths as given; relative ones from the current directory if they exist
    there, else from the repository root (config defaults are written that way)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()


def model_config(config: ml_collections.ConfigDict) -> AlbertConfig:
    return AlbertConfig(**config.model.to_dict(), dtype=config.dtype, remat=config.remat)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    o = config.optimizer
    return warmup_polynomial_decay(
        o.learning_rate, o.warmup_steps, config.num_train_steps, o.end_learning_rate, o.power
    )


def make_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer; accumulation happens in the step (scan), not in optax."""
    o = config.optimizer
    return make_optimizer(
        o.name, learning_rate_schedule(config), clip_norm=o.clip_norm,
        weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
    )


def build_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
               ) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh``; ``data=-1`` takes all devices,
    a smaller mesh uses the first devices (single process only)."""
    m = config.mesh
    devices = list(jax.devices() if devices is None else devices)
    if m.data != -1 and jax.process_count() == 1:
        devices = devices[: m.data * m.fsdp * m.tensor]
    return shd.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)


def validate_config(config: ml_collections.ConfigDict, check_files: bool = True) -> None:
    """Raises :class:`ConfigError` with one line naming what is wrong."""
    n_dev = jax.device_count()
    m = config.mesh
    for name in ("fsdp", "tensor"):
        if int(m[name]) < 1:
            raise ConfigError(f"mesh.{name} must be >= 1, got {m[name]}")
    if m.data < 1 and m.data != -1:
        raise ConfigError(f"mesh.data must be >= 1 or -1 (all devices), got {m.data}")
    fixed = m.fsdp * m.tensor * (m.data if m.data != -1 else 1)
    exact = m.data == -1 or jax.process_count() > 1  # must use every device
    if fixed > n_dev or (exact and n_dev % fixed) or (m.data != -1 and exact and fixed != n_dev):
        raise ConfigError(
            f"mesh data={m.data} x fsdp={m.fsdp} x tensor={m.tensor} does not fit the "
            f"{n_dev} available devices"
        )
    data = m.data if m.data != -1 else n_dev // (m.fsdp * m.tensor)
    dp = data * m.fsdp
    b, k = config.global_batch_size, config.accumulation_steps
    if k < 1:
        raise ConfigError(f"accumulation_steps must be >= 1, got {k}")
    if b % k:
        raise ConfigError(f"global_batch_size {b} is not divisible by accumulation_steps {k}")
    if (b // k) % dp:
        raise ConfigError(
            f"global_batch_size {b} (micro-batch {b // k}) is not divisible by the data-parallel "
            f"size {dp} (mesh data={data} x fsdp={m.fsdp})"
        )
    if b % jax.process_count():
        raise ConfigError(f"global_batch_size {b} is not divisible by the "
                          f"{jax.process_count()} processes")
    if config.optimizer.name not in ("lamb", "adamw"):
        raise ConfigError(f"optimizer.name must be 'lamb' or 'adamw', got "
                          f"{config.optimizer.name!r}")
    if config.num_train_steps < 1:
        raise ConfigError(f"num_train_steps must be >= 1, got {config.num_train_steps}")
    if config.data.max_seq_length > config.model.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_length {config.data.max_seq_length} exceeds "
            f"model.max_position_embeddings {config.model.max_position_embeddings}"
        )
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if config[name] < 1:
            raise ConfigError(f"{name} must be >= 1, got {config[name]}")
    model_config(config)  # AlbertConfig validates the model fields (ConfigError)
    if check_files:
        corpus = resolve_path(config.data.corpus_dir)
        if not corpus.is_dir():
            raise ConfigError(f"data.corpus_dir {config.data.corpus_dir!r} is not a directory "
                              f"({corpus})")
        if not any(corpus.glob(config.data.file_pattern)):
            raise ConfigError(f"data.corpus_dir {corpus} has no {config.data.file_pattern} files")
        spm = resolve_path(config.data.spiece_model)
        if not spm.is_file():
            raise ConfigError(f"data.spiece_model {config.data.spiece_model!r} not found ({spm})")


def prepare_corpus(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """The TFDS ``LocalTextCorpus`` of ``config.data`` prepared (once) as array_record:
    ``{split: data source}``. Process 0 prepares; the others wait, then open it."""
    import tensorflow_datasets as tfds

    from albert_jax.corpus_builder import LocalTextCorpus, LocalTextCorpusConfig

    d = config.data
    data_dir = resolve_path(d.tfds_data_dir) if d.tfds_data_dir else workdir / "tfds"
    name = d.corpus_name or "corpus"
    builder = LocalTextCorpus(
        data_dir=str(data_dir),
        config=LocalTextCorpusConfig(
            name=name, text_format=d.text_format, file_pattern=d.file_pattern,
            validation_files=tuple(d.validation_files),
        ),
        file_format="array_record",
    )
    dl = tfds.download.DownloadConfig(manual_dir=str(resolve_path(d.corpus_dir)))
    if jax.process_index() == 0:
        builder.download_and_prepare(download_config=dl)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("albert_jax corpus prepared")
        builder.download_and_prepare(download_config=dl)
    return builder.as_data_source()


def make_dataset(config: ml_collections.ConfigDict, source: Any, tokenizer: Any, seed: int,
                 batch_size: int, process_index: int = 0, process_count: int = 1):
    from albert_jax.data import PretrainingDataset

    d = config.data
    return PretrainingDataset(
        source, tokenizer, max_seq_length=d.max_seq_length,
        max_predictions_per_seq=d.max_predictions_per_seq, batch_size=batch_size, seed=seed,
        short_seq_prob=d.short_seq_prob, masked_lm_prob=d.masked_lm_prob, max_ngram=d.max_ngram,
        process_index=process_index, process_count=process_count,
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             progress: bool = True) -> TrainState:
    """ALBERT pretraining (MLM + SOP) as configured; resumes from ``workdir``'s checkpoints."""
    from albert_jax.tokenizer import AlbertTokenizer

    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = build_mesh(config)
    tokenizer = AlbertTokenizer(resolve_path(config.data.spiece_model))
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ConfigError(f"model.vocab_size {config.model.vocab_size} != the tokenizer's "
                          f"{tokenizer.vocab_size} pieces")
    splits = prepare_corpus(config, workdir)
    pc, pi = jax.process_count(), jax.process_index()
    local_batch = config.global_batch_size // pc
    train_ds = make_dataset(config, splits["train"], tokenizer, config.seed, local_batch, pi, pc)

    eval_fn = None
    if config.eval_every and "validation" in splits:
        eval_ds = make_dataset(config, splits["validation"], tokenizer, config.seed + 1,
                               local_batch, pi, pc)

        def eval_fn(make_step, state):
            eval_ds.set_state({"epoch": 0, "position": 0})
            sums: dict[str, float] = {}
            step_fn = None
            for _ in range(config.eval_batches):
                local = next(eval_ds)
                step_fn = step_fn or make_step(local)
                m = jax.device_get(step_fn(state, device_batch(mesh, local)))
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / config.eval_batches
            return sums

    task = pretraining_task(model_config(config), seq_len=min(8, config.data.max_seq_length))
    return train_loop(
        task, make_tx(config), mesh, workdir, train_ds,
        num_train_steps=config.num_train_steps, seed=config.seed,
        log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        accumulation_steps=config.accumulation_steps,
        learning_rate_fn=learning_rate_schedule(config), eval_fn=eval_fn,
        eval_every=config.eval_every, config_dict=config.to_dict(), progress=progress,
    )


# ============================================================================ command line
def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def parse_pretrain_args(argv: Sequence[str], example: str = "configs/pretrain/tiny.py"
                        ) -> tuple[ml_collections.ConfigDict, str]:
    """``--config FILE --workdir DIR [--config.key=value ...]`` -> ``(config, workdir)``.

    Overrides follow ``ml_collections.config_flags`` (unknown keys and wrong types fail)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    args = ["pretrain", *argv]
    config_flags.DEFINE_config_file("config", None, "config file (get_config())", flag_values=fv,
                                    sys_argv=args)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)", flag_values=fv)
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first",
                      flag_values=fv)
    try:
        rest = fv(args)
    except flags.Error as e:
        raise ConfigError(" ".join(str(e).split())) from None
    except (KeyError, AttributeError) as e:
        # config_flags reports an unknown key as AttributeError(KeyError("'name'")).
        key = str(e.args[0] if e.args else e).strip("\"'")
        raise ConfigError(f"unknown config key in an override: {key}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])}")
    config = fv.config
    if config is None:
        raise ConfigError(f"--config is required (e.g. {example})")
    if not isinstance(config, ml_collections.ConfigDict):
        # config_flags hands back a proxy that raises on use when the file failed to load.
        raise ConfigError(f"cannot load config file {_flag_value(args, 'config')!r} "
                          "(missing, or its get_config() failed)")
    if not fv.workdir:
        raise ConfigError("--workdir is required")
    if fv.distributed:
        with config.unlocked():
            config.distributed = True
    return config, fv.workdir


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The value given to ``--name`` (as ``--name=v`` or ``--name v``) in ``args``."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


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


def pretrain_main(argv: Sequence[str]) -> int:
    """``albert-jax pretrain --config FILE --workdir DIR [--config.key=value ...]``."""
    prog = "albert-jax pretrain"
    try:
        config, workdir = parse_pretrain_args(argv)
        if config.get("distributed", False):
            initialize_distributed()
        pretrain(config, workdir)
    except ConfigError as e:
        return _fail(prog, str(e))
    except FileNotFoundError as e:
        return _fail(prog, str(e))
    return 0


def export_main(argv: Sequence[str]) -> int:
    """``albert-jax export WORKDIR DEST [--overwrite] [--step N] [--dtype bfloat16]
    [--to hf]``; a fine-tuning workdir exports its best model."""
    import argparse

    from albert_jax.checkpoint import export

    p = argparse.ArgumentParser(prog="albert-jax export",
                                description="latest training checkpoint -> model directory")
    p.add_argument("workdir")
    p.add_argument("dest")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="storage dtype of the exported parameters (default float32)")
    p.add_argument("--to", choices=("albert_jax", "hf"), default="albert_jax",
                   help="albert_jax model directory (default) or Hugging Face format")
    args = p.parse_args(list(argv))
    try:
        from albert_jax import finetune

        if finetune.is_finetune_workdir(args.workdir):
            if args.step is not None or args.dtype != "float32":
                raise ValueError("a fine-tuning run exports its best model: --step and "
                                 "--dtype apply to pretraining runs")
            out = finetune.export(args.workdir, args.dest, to=args.to, overwrite=args.overwrite)
        elif args.to == "hf":
            import tempfile

            from albert_jax.conversion import convert

            with tempfile.TemporaryDirectory() as tmp:
                export(args.workdir, Path(tmp) / "model", step=args.step, dtype=args.dtype)
                out = convert(Path(tmp) / "model", args.dest, to="hf", overwrite=args.overwrite)
        else:
            out = export(args.workdir, args.dest, step=args.step, overwrite=args.overwrite,
                         dtype=args.dtype)
    except (OSError, ValueError) as e:
        return _fail(p.prog, " ".join(str(e).split()))
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("pretrain", "export"):
        print("usage: python -m albert_jax.train {pretrain,export} ...", file=sys.stderr)
        return 2
    return (pretrain_main if argv[0] == "pretrain" else export_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
