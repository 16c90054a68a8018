"""Fine-tuning runs on the generic trainer: :func:`finetune`, :func:`evaluate`,
:func:`predict` (``albert-jax finetune / evaluate / predict``).

The task family of ``config.task`` (:mod:`albert_jax.training.tasks`: GLUE, SQuAD, CoNLL,
multiple choice) turns its input files into arrays, gives the loss and the metrics, and
writes predictions; everything else (sharded steps, gradient accumulation, orbax checkpoints
with exact resume, metrics.jsonl / TensorBoard / console) is
:func:`albert_jax.training.trainer.train_loop`, as in pretraining.

A run directory holds ``finetune_config.json`` (the run's config), the checkpoints, the
metrics, ``tfds/`` (GLUE prepared by TFDS, unless ``data.tfds_data_dir`` says elsewhere),
and ``best/``: the model with the best dev score so far (an albert_jax model directory with
``id2label`` in its ``config.json`` and the run config in ``finetune_config.json``, so
``evaluate``/``predict``/``export`` need nothing else) and ``best.json``
(``{"step", "metric", "value"}``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from albert_jax import atomic
from albert_jax import sharding as shd
from albert_jax.config import AlbertConfig
from albert_jax.training import run_config as rc
from albert_jax.training.tasks import family_for
from albert_jax.training.tasks.base import Encoded, Family, FinetuneError
from albert_jax.training.trainer import Task, TrainState, device_batch, train_loop
from albert_jax.training.workdir import holds_workdir_lock

CONFIG_FILE = "finetune_config.json"
BEST_DIR = "best"
BEST_FILE = "best.json"
Batch = dict[str, np.ndarray]


# ============================================================================ task + batches
def make_task(family: Family, model: nn.Module) -> Task:
    """The trainer's :class:`Task` of a family: loss normalised by the global count."""

    def init_params(rng):
        return model.init_params(rng)

    def totals(batch):
        return {"count": _count(batch)}

    def loss_fn(params, batch, rng, deterministic, tot):
        out = model.apply(params, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], deterministic=deterministic,
                          rngs=None if deterministic else {"dropout": rng})
        sums = family.loss(out, batch)
        return sums["loss"] / jnp.maximum(tot["count"], 1.0), sums

    def metrics(sums, tot):
        n = jnp.maximum(tot["count"], 1.0)
        out = {"loss": sums["loss"] / n}
        if "correct" in sums:
            out["accuracy"] = sums["correct"] / n
        return out

    return Task(model, init_params, loss_fn, totals, metrics)


def _count(batch: dict[str, jax.Array]) -> jax.Array:
    """What the loss is averaged over: labelled rows (tokens for token classification)."""
    if "labels" in batch:
        labels = batch["labels"]
        return jnp.sum((labels > -1).astype(jnp.float32))
    return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)


class Batches:
    """Shuffled, resumable training batches of an :class:`Encoded` split.

    Epoch ``e`` visits the rows in ``permutation(seed, e)`` order, ``global_batch`` at a
    time (a last partial batch is dropped); process ``i`` of ``n`` takes rows
    ``[i*b/n, (i+1)*b/n)`` of each global batch. ``{"epoch", "position"}`` is the state.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> None:
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if self.n < global_batch:
            raise FinetuneError(f"the training split has {self.n} examples, fewer than one "
                                f"batch of {global_batch}")
        self.global_batch, self.seed = global_batch, seed
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        rows = self._perm[self.position + self.offset:
                          self.position + self.offset + self.local]
        self.position += self.global_batch
        return {k: v[rows] for k, v in self.arrays.items()}

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


# ============================================================================ prediction
class Predictor:
    """Jitted, sharded inference of a family's outputs over an :class:`Encoded` split."""

    def __init__(self, family: Family, model: nn.Module, mesh: Mesh, batch_size: int) -> None:
        self.family, self.model, self.mesh, self.batch_size = family, model, mesh, batch_size
        replicated = NamedSharding(mesh, PartitionSpec())

        def step(params, batch):
            out = model.apply(params, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"], deterministic=True)
            return family.outputs(out)

        self._step = jax.jit(step, out_shardings=replicated)

    def __call__(self, params: Any, enc: Encoded) -> dict[str, np.ndarray]:
        n, b = len(enc), self.batch_size
        pc, pi = jax.process_count(), jax.process_index()
        keys = ("input_ids", "attention_mask", "token_type_ids")
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, b):
            rows = np.arange(start, start + b)
            rows = np.where(rows < n, rows, start)  # pad the last batch with a real row
            local = {k: enc.arrays[k][rows][pi * (b // pc):(pi + 1) * (b // pc)] for k in keys}
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
                out = self._step(params, device_batch(self.mesh, local))
            for k, v in jax.device_get(out).items():
                chunks.setdefault(k, []).append(np.asarray(v)[: min(b, n - start)])
        return {k: np.concatenate(v) for k, v in chunks.items()}


# ============================================================================ set-up
def load_init(config: ml_collections.ConfigDict, family: Family):
    """(model, boxed params, tokenizer) of ``config.init`` with the family's head."""
    from albert_jax.pretrained import load_pretrained

    try:
        return load_pretrained(config.init, head=family.head, num_labels=family.num_labels(),
                               rng_seed=config.seed, **rc.model_fields(config))
    except (OSError, ValueError) as e:
        raise FinetuneError(f"cannot load init model {config.init!r}: "
                            f"{' '.join(str(e).split())}") from None


def _placed(params: Any, shardings: Any) -> Any:
    """Host arrays (identical on every process) -> global arrays in ``shardings``."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i, x=x: np.asarray(x)[i]),
        params, shardings)


def _host(tree: Any) -> Any:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def save_model(dest: Path, params: Any, model_config: AlbertConfig, family: Family,
               tokenizer: Any, run_config: dict, overwrite: bool = True) -> str:
    """An albert_jax model directory with labels and the run config (float32 compute)."""
    from albert_jax.conversion import save_albert_jax

    extra: dict[str, Any] = {}
    if family.label_names and family.head != "multiple_choice":
        extra["id2label"] = {str(i): n for i, n in enumerate(family.label_names)}
        extra["label2id"] = {n: i for i, n in enumerate(family.label_names)}
    if family.head == "sequence_classification" and family.num_labels() == 1:
        extra["problem_type"] = "regression"
    cfg = model_config.replace(dtype="float32", remat="none")
    return save_albert_jax(dest, {"params": params}, cfg, tokenizer=tokenizer,
                           overwrite=overwrite, extra_config=extra,
                           extra_files={CONFIG_FILE: run_config})


@holds_workdir_lock
def finetune(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tunes ``config.init`` on ``config.task``; resumes from ``workdir``. Returns the
    best dev result ``{"step", "metric", "value"}`` (and the final eval metrics)."""
    from albert_jax.training.host_memory import retain_freed_memory

    retain_freed_memory()  # before JAX's backend starts (see host_memory)
    family = family_for(config)
    rc.validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not config.data.tfds_data_dir:  # GLUE is prepared under the workdir
        with config.unlocked():
            config.data.tfds_data_dir = str(workdir.absolute() / "tfds")
    family.setup()
    run_config = config.to_dict()
    run_config["label_names"] = list(family.label_names) if family.label_names else None
    if jax.process_index() == 0:
        atomic.write_text(workdir / CONFIG_FILE,
                          json.dumps(run_config, indent=2, default=list) + "\n")

    mesh = rc.build_mesh(config)
    model, boxed, tokenizer = load_init(config, family)
    train_enc = family.load(family.splits()[0], tokenizer, training=True)
    eval_split = config.data.get("eval_split") or family.splits()[1]
    eval_enc = family.load(eval_split, tokenizer) if config.eval_every else None
    pc, pi = jax.process_count(), jax.process_index()
    batches = Batches(train_enc.arrays, config.global_batch_size, config.seed, pi, pc)

    task = make_task(family, model)
    tx = rc.make_tx(config)
    init_params = nn.meta.unbox(boxed)

    def init_state(shardings: TrainState) -> TrainState:
        params = _placed(init_params, shardings.params)
        opt_init = jax.jit(tx.init, out_shardings=shardings.opt_state)
        with jax.set_mesh(mesh):
            opt_state = opt_init(params)
        rng = _placed(np.asarray(jax.random.PRNGKey(config.seed + 1)), shardings.rng)
        step = _placed(np.zeros([], np.int32), shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)

    metric = config.metric or family.default_metric()
    best_path = workdir / BEST_FILE
    best = json.loads(best_path.read_text()) if best_path.exists() else None
    predictor = Predictor(family, model, mesh, config.eval_batch_size)
    last_eval: dict[str, float] = {}

    def eval_fn(_make_step: Callable, state: TrainState) -> dict[str, float]:
        nonlocal best
        scores = family.evaluate(predictor(state.params, eval_enc), eval_enc)
        last_eval.clear()
        last_eval.update(scores)
        value = scores.get(metric)
        if value is None:
            raise FinetuneError(f"metric {metric!r} is not computed for {config.task} "
                                f"(have {', '.join(scores)})")
        step = int(jax.device_get(state.step))
        # best.json from a step at or after this one was written by a run that was killed
        # before its next checkpoint: this (deterministic) rerun replays those steps.
        if best is None or value > best["value"] or best["step"] >= step:
            params = _host(state.params)["params"]
            if pi == 0:
                save_model(workdir / BEST_DIR, params, model.config, family, tokenizer,
                           run_config)
                best = {"step": step, "metric": metric, "value": float(value)}
                atomic.write_text(best_path, json.dumps(best) + "\n")
            else:
                best = {"step": step, "metric": metric, "value": float(value)}
        return scores

    train_loop(
        task, tx, mesh, workdir, batches, num_train_steps=config.num_train_steps,
        seed=config.seed, log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints, accumulation_steps=config.accumulation_steps,
        learning_rate_fn=rc.learning_rate_schedule(config),
        eval_fn=eval_fn if eval_enc is not None else None, eval_every=config.eval_every,
        config_dict=run_config, progress=progress, init_state=init_state,
        skip_nonfinite=config.get("skip_nonfinite_steps", False),
    )
    result = dict(best or {})
    result["eval"] = dict(last_eval)
    return result


# ============================================================================ evaluate/predict
def run_config_of(workdir: str | None, model_dir: str | None) -> tuple[ml_collections.ConfigDict,
                                                                     Path]:
    """(run config, model directory) of ``--workdir`` (its best model) or ``--model``."""
    if workdir:
        wd = Path(workdir)
        if not (wd / CONFIG_FILE).is_file():
            raise FinetuneError(f"{wd} is not a fine-tuning workdir (no {CONFIG_FILE})")
        model = wd / BEST_DIR
        if not model.is_dir():
            raise FinetuneError(f"{wd} has no {BEST_DIR}/ model yet (it is written at the "
                                "first evaluation)")
    elif model_dir:
        model = Path(model_dir)
        if not (model / CONFIG_FILE).is_file():
            raise FinetuneError(f"{model} has no {CONFIG_FILE}: not a model fine-tuned by "
                                "albert-jax finetune")
    else:
        raise FinetuneError("give --workdir DIR or --model DIR")
    raw = json.loads((model / CONFIG_FILE).read_text())
    return ml_collections.ConfigDict(raw), model


def _load_finetuned(config: ml_collections.ConfigDict, model_dir: Path):
    from albert_jax.pretrained import load_pretrained

    family = family_for(config)
    family.setup(config.get("label_names") or None)
    overrides = rc.model_fields(config)
    overrides.update(dtype="float32", remat="none")
    model, boxed, tokenizer = load_pretrained(model_dir, head=family.head,
                                              num_labels=family.num_labels(), **overrides)
    mesh = rc.build_mesh(config)
    params = _placed(nn.meta.unbox(boxed), shd.param_shardings(boxed, mesh))
    return family, model, params, tokenizer, mesh


def evaluate(workdir: str | None = None, model_dir: str | None = None,
             split: str | None = None, path: str | None = None,
             batch_size: int | None = None) -> dict[str, float]:
    """Metrics of the fine-tuned model on a split of its task (default: the dev split)."""
    config, model_path = run_config_of(workdir, model_dir)
    family, model, params, tokenizer, mesh = _load_finetuned(config, model_path)
    enc = family.load(split or family.splits()[1], tokenizer, path=path)
    preds = Predictor(family, model, mesh, batch_size or config.eval_batch_size)(params, enc)
    return family.evaluate(preds, enc)


def predict(output: str | os.PathLike, workdir: str | None = None,
            model_dir: str | None = None, split: str | None = None, path: str | None = None,
            batch_size: int | None = None) -> int:
    """Writes one JSON object per input example to ``output`` (atomically); returns the
    number written."""
    config, model_path = run_config_of(workdir, model_dir)
    family, model, params, tokenizer, mesh = _load_finetuned(config, model_path)
    enc = family.load(split or "test", tokenizer, path=path)
    preds = Predictor(family, model, mesh, batch_size or config.eval_batch_size)(params, enc)
    records = family.records(preds, enc)
    with atomic.atomic_file(output) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(records)


def best_model(workdir: str | os.PathLike) -> Path:
    """The best model directory of a fine-tuning ``workdir`` (what ``export`` exports)."""
    return run_config_of(os.fspath(workdir), None)[1]


def is_finetune_workdir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()
