"""ALBERT pretraining on the generic trainer: the MLM + SOP task, the corpus, and
:func:`pretrain` (``albert-jax pretrain``), plus :func:`model_from_checkpoint` of a pretraining
checkpoint (what ``albert-jax export`` does for a pretraining run).

    from albert_jax.training.pretrain import pretrain
    from albert_jax.training.run_config import pretrain_config
    state = pretrain(config, "/tmp/run")   # resumes from /tmp/run/checkpoints

The corpus (``data.corpus_dir``, text files) is prepared once by TFDS as array_record
under ``data.tfds_data_dir`` (default ``WORKDIR/tfds``); each process reads its share.

Continued pretraining (``config.init``: a hub name or a model directory, as fine-tuning
takes) starts from that model's weights instead of random ones: its config is the model's
(:func:`adopt_init_config` refuses a ``model`` section that disagrees and fills in the rest),
its SOP head is loaded when the source has one (albert_jax directories, Google's TF
checkpoints, ``AlbertForPreTraining`` saves) and starts from random weights with a notice
otherwise (hub MLM checkpoints); its tokenizer is the default ``data.spiece_model``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import sharding as shd
from albert_jax.config import AlbertConfig, ConfigError
from albert_jax.model import AlbertForPreTraining
from albert_jax.training import run_config as rc
from albert_jax.training.checkpoint import Checkpointer
from albert_jax.training.trainer import (
    Batch,
    PyTree,
    Task,
    TrainState,
    abstract_with_shardings,
    device_batch,
    main_process_first,
    placed,
    state_shardings,
    train_loop,
)
from albert_jax.training.workdir import holds_workdir_lock


# ============================================================================ the task
def _is_argmax(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """``argmax(logits, -1) == ids`` ([B, P, V], [B, P] -> [B, P] bool) for finite logits:
    ``ids`` holds the maximum and no earlier index does (argmax takes the first of ties).
    Elementwise passes and a max; XLA CPU's argmax (a variadic value-and-index reduce) ran
    at a tenth of that speed over the [8, 20, 30000] logits (20 ms of the training step)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    at_id = jnp.take_along_axis(logits, ids[..., None], axis=-1)
    earlier = jnp.arange(logits.shape[-1], dtype=ids.dtype) < ids[..., None]
    tie_before = jnp.any((logits == top) & earlier, axis=-1)
    return (at_id[..., 0] == top[..., 0]) & ~tie_before


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
        mlm_correct = jnp.sum(_is_argmax(logits, batch["masked_ids"]) * w)
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




# ============================================================================ init model
def init_model_config(name_or_dir: str) -> tuple[AlbertConfig, str | None]:
    """``(config, spiece.model path or None)`` of a model source (a hub name, an albert_jax,
    Hugging Face or Google TF directory), reading no weights."""
    from albert_jax import hub
    from albert_jax.config import config_from_hf_file, read_hf_config

    try:
        files = hub.resolve_model_files(name_or_dir)
        if files.format == "tf":
            from albert_jax.tf_checkpoint import google_config_to_hf

            hf = google_config_to_hf(read_hf_config(files.config))
        else:
            hf = read_hf_config(files.config)
        return config_from_hf_file(hf, files.config), files.tokenizer
    except (OSError, ValueError) as e:  # ConfigError, ConversionError, ModelNotFoundError
        raise ConfigError(f"cannot load init model {name_or_dir!r}: "
                          f"{' '.join(str(e).split())}") from None


def adopt_init_config(config: ml_collections.ConfigDict) -> None:
    """Makes ``config.model`` the model of ``config.init`` (in place): every architecture
    field the config sets must equal the source's (else one :class:`ConfigError` naming
    them); the others are filled in from the source, so that the run config saved with the
    checkpoints describes the model exactly. Runtime fields (dropout, dtype, scan, ...)
    stay the config's. ``data.spiece_model`` defaults to the source's tokenizer."""
    source, spiece = init_model_config(config.init)
    disagree = [
        f"model.{k} {config.model[k]!r} != {getattr(source, k)!r}"
        for k in config.model
        if k not in rc.RUNTIME_MODEL_FIELDS and hasattr(source, k)
        and config.model[k] != getattr(source, k)
    ]
    if disagree:
        raise ConfigError(
            f"the model fields of the config disagree with init {config.init!r}: "
            f"{', '.join(disagree)} (the model comes from --config.init: set these to its "
            "values or use a config of that size)")
    with config.unlocked():
        for field in dataclasses.fields(source):
            if field.name not in rc.RUNTIME_MODEL_FIELDS and field.name not in config.model:
                config.model[field.name] = getattr(source, field.name)
        if not config.data.spiece_model:
            if spiece is None:
                raise ConfigError(f"init {config.init!r} has no spiece.model: set "
                                  "data.spiece_model")
            config.data.spiece_model = spiece


def init_state_from(config: ml_collections.ConfigDict, task: Task, tx: Any,
                    mesh: Any) -> Any:
    """``init_state(shardings) -> TrainState`` of :func:`train_loop` for ``config.init``:
    its weights (the SOP head too when it has one; else fresh, with a notice) placed in the
    shardings, a fresh optimizer state, the dropout key a fresh run would have."""

    def init_state(shardings: TrainState) -> TrainState:
        from albert_jax.pretrained import load_model

        try:
            model, boxed = load_model(config.init, "pretraining", rng_seed=config.seed,
                                      **rc.model_fields(config))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load init model {config.init!r}: "
                              f"{' '.join(str(e).split())}") from None
        if model.config != task.model.config:  # adopt_init_config made them equal
            raise ConfigError(f"init {config.init!r}: its model {model.config} is not the "
                              f"run's {task.model.config}")
        params = placed(nn.meta.unbox(boxed), shardings.params)
        with jax.set_mesh(mesh):
            opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
        rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # as a fresh run's
        return TrainState(step=placed(np.zeros([], np.int32), shardings.step), params=params,
                          opt_state=opt_state, rng=placed(np.asarray(rng), shardings.rng))

    return init_state


# ============================================================================ data
def prepare_corpus(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """The TFDS ``LocalTextCorpus`` of ``config.data`` prepared (once) as array_record:
    ``{split: data source}``. Process 0 prepares; the others wait, then open it."""
    import tensorflow_datasets as tfds

    from albert_jax.training.corpus_builder import LocalTextCorpus, LocalTextCorpusConfig

    d = config.data
    data_dir = rc.resolve_path(d.tfds_data_dir) if d.tfds_data_dir else workdir / "tfds"
    name = d.corpus_name or "corpus"
    builder = LocalTextCorpus(
        data_dir=str(data_dir),
        config=LocalTextCorpusConfig(
            name=name, text_format=d.text_format, file_pattern=d.file_pattern,
            validation_files=tuple(d.validation_files),
        ),
        file_format="array_record",
    )
    dl = tfds.download.DownloadConfig(manual_dir=str(rc.resolve_path(d.corpus_dir)))
    main_process_first(lambda: builder.download_and_prepare(download_config=dl), "corpus")
    return builder.as_data_source()


def make_dataset(config: ml_collections.ConfigDict, source: Any, tokenizer: Any, seed: int,
                 batch_size: int, process_index: int = 0, process_count: int = 1):
    from albert_jax.training.pretrain_data import PretrainingDataset

    d = config.data
    return PretrainingDataset(
        source, tokenizer, max_seq_length=d.max_seq_length,
        max_predictions_per_seq=d.max_predictions_per_seq, batch_size=batch_size, seed=seed,
        short_seq_prob=d.short_seq_prob, masked_lm_prob=d.masked_lm_prob, max_ngram=d.max_ngram,
        process_index=process_index, process_count=process_count,
    )


# ============================================================================ the run
@holds_workdir_lock
def pretrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             progress: bool = True) -> TrainState:
    """ALBERT pretraining (MLM + SOP) as configured; resumes from ``workdir``'s checkpoints."""
    from albert_jax.tokenizer import AlbertTokenizer
    from albert_jax.training.host_memory import retain_freed_memory

    retain_freed_memory()  # before JAX's backend starts (see host_memory)

    rc.validate_config(config)
    if config.get("init"):
        adopt_init_config(config)
        rc.validate_config(config)  # the adopted model against the sequence length
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = rc.build_mesh(config)
    tokenizer = AlbertTokenizer(rc.resolve_path(config.data.spiece_model))
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

    task = pretraining_task(rc.model_config(config), seq_len=min(8, config.data.max_seq_length))
    tx = rc.make_tx(config)
    return train_loop(
        task, tx, mesh, workdir, train_ds,
        num_train_steps=config.num_train_steps, seed=config.seed,
        log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        accumulation_steps=config.accumulation_steps,
        learning_rate_fn=rc.learning_rate_schedule(config), eval_fn=eval_fn,
        eval_every=config.eval_every, config_dict=config.to_dict(), progress=progress,
        init_state=init_state_from(config, task, tx, mesh) if config.get("init") else None,
        skip_nonfinite=config.get("skip_nonfinite_steps", False),
    )


# ============================================================================ export
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def model_from_checkpoint(workdir: str | os.PathLike, dest: str | os.PathLike,
                          step: int | None = None,
                          overwrite: bool = False, dtype: str = "float32") -> str:
    """The params of the latest (or ``step``) checkpoint of a pretraining ``workdir`` -> an
    albert_jax model directory (with the run's ``spiece.model``) that
    ``albert_jax.load_pretrained`` and ``albert-jax convert --to hf`` accept. Restores onto
    one device. ``dtype`` is the storage dtype of the parameters ("bfloat16" halves the
    files; loading casts them to the ``param_dtype`` asked for). Returns ``dest``."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be float32, bfloat16 or float16, got {dtype!r}")
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
        mcfg = rc.model_config(config)
        task = pretraining_task(mcfg)
        tx = rc.make_tx(config)
        mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        abstract, shardings = state_shardings(task, tx, mesh)
        state, _, _ = ckpt.restore(step, abstract_with_shardings(abstract, shardings))
    finally:
        ckpt.close()
    spm = rc.resolve_path(config.data.spiece_model)
    # Export float32 compute by default: the model directory is for inference and conversion.
    mcfg = mcfg.replace(dtype="float32", remat="none")
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), state.params["params"])
    return save_albert_jax(dest, {"params": params}, mcfg,
                           tokenizer=spm if spm.is_file() else None, overwrite=overwrite)
