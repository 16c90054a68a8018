"""The run config: what every training run shares, built and checked in one place.

A run config is an ``ml_collections.ConfigDict``. Every run has the fields of
:func:`shared_fields` (seed, batch and accumulation, steps, precision, mesh, optimizer and
schedule, logging and checkpointing); :func:`pretrain_config` adds the pretraining model and
corpus, :func:`finetune_config` the fine-tuning task, init model and data files. The files in
``configs/`` call these and change what their recipe changes.

This module imports only ``ml_collections`` at load time, so a config file loads without
JAX; the builders that need JAX (:func:`build_mesh`, :func:`make_tx`, ...) import it when
called. :func:`validate_config` is the one validation of a run config; it raises
:class:`albert_jax.config.ConfigError` with one line naming the field.

Paths in a config file are written relative to that file (:func:`config_relative`), so a
config works from any directory and outside a checkout; paths given as overrides on the
command line are relative to the current directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from albert_jax.config import AlbertConfig, ConfigError

ConfigDict = ml_collections.ConfigDict

# Fields of a config that name files or directories (checked to exist before a run starts).
PATH_FIELDS = ("data.corpus_dir", "data.spiece_model", "data.manual_dir", "data.train_file",
               "data.validation_file", "data.test_file")


# ============================================================================ building
def config_relative(config_file: str, path: str) -> str:
    """``path`` (relative to the directory of ``config_file``, a config's ``__file__``) as
    an absolute path."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_file)), path))


def shared_fields(*, batch_size: int, steps: int, optimizer: str, learning_rate: float,
                  warmup: int) -> ConfigDict:
    """The fields every run has, with their defaults."""
    c = ConfigDict()
    c.seed = 0
    c.global_batch_size = batch_size
    c.accumulation_steps = 1  # micro-batches per step (a scan inside the jitted step)
    c.num_train_steps = steps
    c.dtype = "float32"  # compute dtype: "bfloat16" on GPU/TPU
    c.remat = "none"  # "none" | "full" | "dots_saveable" | ...
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    # The (data, fsdp, tensor) device mesh; data=-1 takes all devices (data x fsdp x tensor
    # devices are used; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8).
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optimizer = ConfigDict(dict(
        name=optimizer,  # "lamb" | "adamw"
        learning_rate=learning_rate, warmup_steps=warmup,  # linear warmup, then
        end_learning_rate=0.0, power=1.0,  # polynomial decay (power 1: linear) to the end
        weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-6,
    ))
    c.log_every = 10  # steps between metrics.jsonl / TensorBoard records
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.eval_every = 0  # steps between dev evaluations (0: none); also at the last step
    # A step whose loss or gradient norm is not finite stops the run (False) or is skipped
    # (True: params and optimizer state stay as they were; metrics count skipped_steps).
    c.skip_nonfinite_steps = False
    return c


def pretrain_config() -> ConfigDict:
    """Every field of a pretraining run, with the defaults of the tiny recipe (a 64-wide
    ALBERT on the real 30000-piece vocabulary): ``configs/pretrain/*.py`` start here."""
    c = shared_fields(batch_size=16, steps=300, optimizer="lamb", learning_rate=0.02, warmup=10)
    # Continued pretraining: a hub name or model directory (albert_jax, Hugging Face, Google
    # TF) to start from instead of random weights ("" = from scratch). Its config is the
    # model's: the fields of `model` below must agree with it (runtime ones apply).
    c.init = ""
    c.model = ConfigDict(dict(
        vocab_size=30000, embedding_size=32, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0, initializer_range=0.02, hidden_act="gelu_new",
        scan_layers=True,
    ))
    c.data = ConfigDict(dict(
        corpus_dir="",  # a folder of text files
        corpus_name="gutenberg",  # the TFDS config name the corpus is prepared under
        text_format="paragraphs",  # "paragraphs" (blank-line separated) | "lines"
        file_pattern="*.txt",
        validation_files=("shakespeare-macbeth*",),  # held out for evaluation
        tfds_data_dir="",  # where the corpus is prepared ("" = WORKDIR/tfds)
        spiece_model="",  # the sentencepiece model (its size = model.vocab_size)
        max_seq_length=64, max_predictions_per_seq=10, short_seq_prob=0.1,
        masked_lm_prob=0.15, max_ngram=3,
    ))
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_every = 100
    c.eval_batches = 2  # dev batches per evaluation
    return c


def finetune_config(task: str, *, learning_rate: float, batch_size: int, steps: int,
                    warmup: int, max_seq_length: int) -> ConfigDict:
    """Every field of a fine-tuning run, with defaults; ``configs/finetune/<task>.py`` calls
    this with its published hyperparameters and sets its data paths."""
    c = shared_fields(batch_size=batch_size, steps=steps, optimizer="adamw",
                      learning_rate=learning_rate, warmup=warmup)
    c.task = task  # sst2, cola, ... (GLUE), squad_v1, squad_v2, conll2003, race, swag
    c.init = "albert-base-v2"  # a hub name, or a model directory (albert_jax or HF)
    c.eval_batch_size = 64
    c.max_seq_length = max_seq_length
    c.metric = ""  # dev metric that selects the best checkpoint ("" = the task's default)
    # AlbertConfig fields to override on the pretrained config (dropout, runtime options).
    c.model = ConfigDict(dict(
        classifier_dropout_prob=0.1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, scan_layers=True, attention="explicit"))
    c.data = ConfigDict(dict(
        manual_dir="",  # GLUE: folder of local TSV files ("" = the TFDS catalogue)
        tfds_data_dir="",  # where GLUE is prepared ("" = WORKDIR/tfds)
        train_file="", validation_file="", test_file="",  # SQuAD / CoNLL / multiple choice
        label_names=(),  # CoNLL: the tag set ("" = from the training file)
        num_choices=0,  # multiple choice: check every example has this many (0: any)
        doc_stride=128, max_query_length=64,  # SQuAD windows
        eval_split="",  # the split evaluated during training ("" = the task's dev split)
        max_train_examples=0, max_eval_examples=0,  # > 0: use the first N (smoke runs)
    ))
    c.eval = ConfigDict(dict(
        n_best_size=20, max_answer_length=30, null_score_diff_threshold=0.0,  # SQuAD
        tag_scheme="IOB2",  # CoNLL entity scoring: IOB1 | IOB2 | IOBES
    ))
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.eval_every = 1000
    return c


def flat_items(config: ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """``[("optimizer.learning_rate", 0.02), ...]``: every leaf of ``config``, in order."""
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            out.extend(flat_items(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


# ============================================================================ reading
def resolve_path(path: str | os.PathLike) -> Path:
    """A config path as an absolute path (``~`` expanded; relative: from the current
    directory; config files write theirs with :func:`config_relative`)."""
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def model_fields(config: ConfigDict) -> dict[str, Any]:
    """The :class:`AlbertConfig` fields a run config sets: its ``model`` section (all fields
    for pretraining, overrides of the pretrained config for fine-tuning) plus precision."""
    fields = dict(config.model.to_dict()) if "model" in config else {}
    fields.update(dtype=config.dtype, remat=config.remat)
    return fields


def model_config(config: ConfigDict) -> AlbertConfig:
    """The model of a pretraining run config."""
    return AlbertConfig(**model_fields(config))


def learning_rate_schedule(config: ConfigDict):
    """Linear warmup to ``optimizer.learning_rate``, polynomial decay to the last step."""
    from albert_jax.training.optim import warmup_polynomial_decay

    o = config.optimizer
    return warmup_polynomial_decay(
        o.learning_rate, o.warmup_steps, config.num_train_steps, o.end_learning_rate, o.power
    )


def make_tx(config: ConfigDict):
    """The optimizer; accumulation happens in the step (scan), not in optax."""
    from albert_jax.training.optim import make_optimizer

    o = config.optimizer
    return make_optimizer(
        o.name, learning_rate_schedule(config), clip_norm=o.clip_norm,
        weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
    )


def build_mesh(config: ConfigDict, devices: Sequence[Any] | None = None):
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh``; ``data=-1`` takes all devices,
    a smaller mesh uses the first devices (single process only)."""
    import jax

    from albert_jax import sharding as shd

    m = config.mesh
    devices = list(jax.devices() if devices is None else devices)
    if m.data != -1 and jax.process_count() == 1:
        devices = devices[: m.data * m.fsdp * m.tensor]
    return shd.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)


# ============================================================================ validation
def _check_mesh(config: ConfigDict, n_dev: int, n_proc: int) -> None:
    m = config.mesh
    for name in ("fsdp", "tensor"):
        if int(m[name]) < 1:
            raise ConfigError(f"mesh.{name} must be >= 1, got {m[name]}")
    if m.data < 1 and m.data != -1:
        raise ConfigError(f"mesh.data must be >= 1 or -1 (all devices), got {m.data}")
    fixed = m.fsdp * m.tensor * (m.data if m.data != -1 else 1)
    exact = m.data == -1 or n_proc > 1  # must use every device
    if fixed > n_dev or (exact and n_dev % fixed) or (m.data != -1 and exact and fixed != n_dev):
        raise ConfigError(
            f"mesh data={m.data} x fsdp={m.fsdp} x tensor={m.tensor} does not fit the "
            f"{n_dev} available devices"
        )
    data = m.data if m.data != -1 else n_dev // (m.fsdp * m.tensor)
    dp = data * m.fsdp
    b, k = config.global_batch_size, config.accumulation_steps
    if (b // k) % dp:
        raise ConfigError(
            f"global_batch_size {b} (micro-batch {b // k}) is not divisible by the data-parallel "
            f"size {dp} (mesh data={data} x fsdp={m.fsdp})"
        )
    if b % n_proc:
        raise ConfigError(f"global_batch_size {b} is not divisible by the {n_proc} processes")
    if "eval_batch_size" in config and config.eval_batch_size % dp:
        raise ConfigError(f"eval_batch_size {config.eval_batch_size} is not divisible by the "
                          f"data-parallel size {dp}")


def validate_config(config: ConfigDict, check_files: bool = True) -> None:
    """The one check of a run config before anything runs: batch and mesh against the
    devices, optimizer, steps and intervals, the model fields, the input files. Raises
    :class:`ConfigError` with one line naming the field."""
    import jax

    from albert_jax.training.optim import OPTIMIZERS

    _check_numbers(config)
    b, k = config.global_batch_size, config.accumulation_steps
    if b % k:
        raise ConfigError(f"global_batch_size {b} must be a multiple of "
                          f"accumulation_steps {k}")
    _check_mesh(config, jax.device_count(), jax.process_count())
    if config.optimizer.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name must be one of {', '.join(map(repr, OPTIMIZERS))}, "
                          f"got {config.optimizer.name!r}")
    if "vocab_size" in config.model:  # a whole model (pretraining): AlbertConfig checks it
        model_config(config)
        if config.data.max_seq_length > config.model.max_position_embeddings:
            raise ConfigError(
                f"data.max_seq_length {config.data.max_seq_length} exceeds "
                f"model.max_position_embeddings {config.model.max_position_embeddings}"
            )
    if check_files:
        _check_files(config)


# (key, lowest, highest, whether the bounds are allowed, must be an integer): the numbers a
# run config holds, each finite and in its range. Keys a config lacks are skipped.
_NUMBERS: tuple[tuple[str, float, float, tuple[bool, bool], bool], ...] = (
    ("global_batch_size", 1, math.inf, (True, False), True),
    ("accumulation_steps", 1, math.inf, (True, False), True),
    ("eval_batch_size", 1, math.inf, (True, False), True),
    ("num_train_steps", 1, math.inf, (True, False), True),
    ("log_every", 1, math.inf, (True, False), True),
    ("checkpoint_every", 1, math.inf, (True, False), True),
    ("keep_checkpoints", 1, math.inf, (True, False), True),
    ("eval_every", 0, math.inf, (True, False), True),
    ("eval_batches", 1, math.inf, (True, False), True),
    ("max_seq_length", 1, math.inf, (True, False), True),
    ("optimizer.learning_rate", 0.0, math.inf, (False, False), False),
    # Warmup past the last step is allowed: smoke runs cut num_train_steps of a recipe.
    ("optimizer.warmup_steps", 0, math.inf, (True, False), True),
    ("optimizer.end_learning_rate", 0.0, math.inf, (True, False), False),
    ("optimizer.power", 0.0, math.inf, (False, False), False),
    ("optimizer.weight_decay", 0.0, math.inf, (True, False), False),
    ("optimizer.clip_norm", 0.0, math.inf, (False, False), False),
    ("optimizer.b1", 0.0, 1.0, (True, False), False),
    ("optimizer.b2", 0.0, 1.0, (True, False), False),
    ("optimizer.eps", 0.0, math.inf, (False, False), False),
    ("data.max_seq_length", 1, math.inf, (True, False), True),
    ("data.max_predictions_per_seq", 1, math.inf, (True, False), True),
    ("data.masked_lm_prob", 0.0, 1.0, (False, True), False),
    ("data.short_seq_prob", 0.0, 1.0, (True, True), False),
    ("data.max_ngram", 1, math.inf, (True, False), True),
)


def _lookup(config: ConfigDict, key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_numbers(config: ConfigDict) -> None:
    """Each number of :data:`_NUMBERS`: a (finite) number in its range, else one line."""
    for key, low, high, (low_ok, high_ok), integer in _NUMBERS:
        present, value = _lookup(config, key)
        if not present or (key == "optimizer.clip_norm" and value is None):
            continue  # clip_norm None: no clipping
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                integer and not isinstance(value, int)):
            raise ConfigError(f"{key} must be {kind}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        above = value > low or (low_ok and value == low)
        below = value < high or (high_ok and value == high)
        if not (above and below):
            lo = f"{'>=' if low_ok else '>'} {low:g}"
            rng = lo if high == math.inf else f"in {'[' if low_ok else '('}{low:g}, " \
                f"{high:g}{']' if high_ok else ')'}"
            raise ConfigError(f"{key} must be {rng}, got {value!r}")
    for key in ("skip_nonfinite_steps",):
        present, value = _lookup(config, key)
        if present and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_files(config: ConfigDict) -> None:
    d = config.data
    for field in PATH_FIELDS:
        key = field.split(".", 1)[1]
        value = d.get(key)
        if not value:
            continue
        path = resolve_path(value)
        if key == "corpus_dir":
            if not path.is_dir():
                raise ConfigError(f"data.corpus_dir {value!r} is not a directory ({path})")
            if not any(path.glob(d.file_pattern)):
                raise ConfigError(f"data.corpus_dir {path} has no {d.file_pattern} files")
        elif key == "spiece_model":
            if not path.is_file():
                raise ConfigError(f"data.spiece_model {value!r} not found ({path})")
        elif not path.exists():
            raise ConfigError(f"data.{key} {value!r} does not exist ({path})")
    for key in ("corpus_dir", "spiece_model"):
        # Continued pretraining may take the tokenizer of its init model.
        if key in d and not d[key] and not (key == "spiece_model" and config.get("init")):
            raise ConfigError(f"data.{key} is not set")


# ============================================================================ resuming
# AlbertConfig fields that do not define the model's parameters or function: changing them
# on resume only warns. Every other model field (sizes, activation, ...) refuses.
RUNTIME_MODEL_FIELDS = frozenset({
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
    "initializer_range", "dtype", "param_dtype", "scan_layers", "scan_unroll", "remat",
    "attention",
})
# Keys whose change alters the train state (its tree or its shapes) besides the model's.
STRUCTURAL_KEYS = frozenset({"optimizer.name", "task", "label_names", "data.num_choices"})
# Keys that may change freely on resume (restoring reshards onto any mesh).
FREE_KEYS = frozenset({"distributed"})
FREE_PREFIXES = ("mesh.",)


def _flat_json(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer.learning_rate": 0.02, ...}`` of a JSON-like nested dict (tuples as
    lists, as the saved JSON has them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_json(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def is_structural(key: str) -> bool:
    """Whether changing ``key`` (a flat run-config key) on resume changes the train state."""
    if key in STRUCTURAL_KEYS:
        return True
    return key.startswith("model.") and key[len("model."):] not in RUNTIME_MODEL_FIELDS


def resume_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """``(refused, warned)``: ``"key saved -> now"`` for every key of the run config saved
    with a checkpoint that the current run config changes; refused when the change alters
    the train state (:func:`is_structural`). Keys one side lacks (configs of other versions)
    are not compared."""
    old, new = _flat_json(saved), _flat_json(current)
    refused, warned = [], []
    for key in sorted(old.keys() & new.keys()):
        if old[key] == new[key] or key in FREE_KEYS or key.startswith(FREE_PREFIXES):
            continue
        line = f"{key} {old[key]!r} -> {new[key]!r}"
        (refused if is_structural(key) else warned).append(line)
    return refused, warned


def check_resume_config(saved: dict, current: dict, where: str) -> list[str]:
    """Raises :class:`ConfigError` (one line naming the keys) when ``current`` changes the
    train state's structure against the run config ``saved`` with the checkpoint ``where``;
    returns one warning line per other changed key."""
    refused, warned = resume_changes(saved, current)
    if refused:
        raise ConfigError(
            f"cannot resume {where} with a changed model or optimizer: {'; '.join(refused)} "
            "(use a new --workdir, or the saved values)")
    return [f"resuming {where} with a changed config: {w}" for w in warned]
