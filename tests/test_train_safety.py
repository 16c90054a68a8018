"""Training that never goes silently wrong (issue 11) and continued pretraining (issue 14):
nonsense numbers refused by ``validate_config``, a non-finite loss stops the run (or is
skipped when asked) and never reaches a checkpoint, resuming with a changed config is
refused or warned about before orbax restores anything, and ``pretrain --config.init``
starts from a pretrained model's weights (its SOP head too when it has one).

The command-line cases run ``albert_jax.cli.main`` in this process; a run's stderr carries
its progress bar, so "one line" means: exactly one ``error:`` line, no traceback.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from albert_jax import cli
from albert_jax.config import AlbertConfig, ConfigError
from albert_jax.errors import TrainingError
from albert_jax.training import checkpoint, pretrain, trainer
from albert_jax.training import run_config as rc

sys.path.insert(0, str(Path(__file__).parent))
from conftest import save_hf_model
from test_train import CORPUS, SPIECE, TINY, load_config, small_config, synthetic_batches

needs_data = pytest.mark.skipif(not CORPUS.is_dir() or not SPIECE.is_file(),
                                reason="the gutenberg corpus or spiece.model is absent")

# The architecture of configs/pretrain/tiny.py's model, with 10x its initializer range: a
# model whose losses are far from a fresh tiny model's.
TINY_ARCH = dict(vocab_size=30000, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                 hidden_act="gelu_new", initializer_range=0.2)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, command: str = "pretrain") -> str:
    """The one ``error:`` line of a run's stderr (asserting there is exactly one)."""
    assert "Traceback" not in err, err
    lines = [x for x in err.replace("\r", "\n").splitlines() if "error:" in x]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"albert-jax {command}: error: ")
    return lines[0]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=-0.01", "optimizer.learning_rate must be > 0, got -0.01"),
    ("optimizer.learning_rate=0.0", "optimizer.learning_rate must be > 0, got 0.0"),
    ("optimizer.learning_rate=nan", "optimizer.learning_rate must be finite, got nan"),
    ("optimizer.learning_rate=inf", "optimizer.learning_rate must be finite, got inf"),
    ("global_batch_size=0", "global_batch_size must be >= 1, got 0"),
    ("global_batch_size=-8", "global_batch_size must be >= 1, got -8"),
    ("accumulation_steps=0", "accumulation_steps must be >= 1, got 0"),
    ("num_train_steps=0", "num_train_steps must be >= 1, got 0"),
    ("optimizer.warmup_steps=-1", "optimizer.warmup_steps must be >= 0, got -1"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be >= 0, got -0.1"),
    ("optimizer.b2=1.0", "optimizer.b2 must be in [0, 1), got 1.0"),
    ("optimizer.eps=0.0", "optimizer.eps must be > 0, got 0.0"),
    ("optimizer.clip_norm=-1.0", "optimizer.clip_norm must be > 0, got -1.0"),
    ("data.masked_lm_prob=0.0", "data.masked_lm_prob must be in (0, 1], got 0.0"),
    ("data.max_predictions_per_seq=0", "data.max_predictions_per_seq must be >= 1, got 0"),
    ("log_every=0", "log_every must be >= 1, got 0"),
])
def test_nonsense_numbers_are_one_line_errors(override, message, tmp_path, capsys):
    code, err = run_cli(capsys, "pretrain", "--config", TINY, "--workdir", tmp_path / "w",
                        f"--config.{override}")
    assert code == 2
    assert err.strip() == f"albert-jax pretrain: error: {message}"
    assert not (tmp_path / "w").exists()


def test_validation_of_finetune_configs_is_the_same():
    c = rc.finetune_config("sst2", learning_rate=-1e-5, batch_size=32, steps=10, warmup=1,
                           max_seq_length=128)
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate must be > 0"):
        rc.validate_config(c, check_files=False)
    c.optimizer.learning_rate, c.max_seq_length = 1e-5, 0
    with pytest.raises(ConfigError, match="max_seq_length must be >= 1, got 0"):
        rc.validate_config(c, check_files=False)


# ----------------------------------------------------------------------------- non-finite
class ListBatches:
    """Resumable batches from a list (what ``train_loop`` needs of a data iterator)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.position = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def get_state(self) -> dict:
        return {"epoch": 0, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = state["position"]


def poisoned_batches(bad_index: int, n: int = 4) -> list[dict]:
    """Synthetic batches; batch ``bad_index`` has NaN mask weights (a NaN loss and grads)."""
    batches = synthetic_batches(n)
    batches[bad_index] = dict(batches[bad_index])
    batches[bad_index]["masked_weights"] = np.full_like(batches[bad_index]["masked_weights"],
                                                        np.nan)
    return batches


def run_loop(workdir: Path, batches: list[dict], config=None, **kw):
    c = config or small_config()
    mesh = rc.build_mesh(c)
    task = pretrain.pretraining_task(rc.model_config(c))
    kw = {"num_train_steps": 4, "log_every": 2, "checkpoint_every": 2, "keep_checkpoints": 5,
          "progress": False, "config_dict": c.to_dict(), **kw}
    return trainer.train_loop(task, rc.make_tx(c), mesh, workdir, ListBatches(batches), **kw)


def saved_states(workdir: Path) -> dict[int, dict]:
    """Every checkpoint's train state, read with orbax alone (not with the trainer)."""
    import orbax.checkpoint as ocp

    ckpt = ocp.PyTreeCheckpointer()
    return {int(p.name): ckpt.restore(p / "state")
            for p in sorted((workdir / "checkpoints").iterdir()) if p.name.isdigit()}


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_nonfinite_loss_stops_naming_its_step_and_is_never_checkpointed(tmp_path):
    # Step 3 is non-finite; the loop looks at steps 2 and 4 only (log_every, checkpoint_every):
    # the error names step 3, from the device-side record, and step 4 is not saved.
    with pytest.raises(TrainingError, match=r"step 3 is not finite: stopping; the last "
                                            r"checkpoint \(step 2\) is kept"):
        run_loop(tmp_path, poisoned_batches(2))
    states = saved_states(tmp_path)
    assert sorted(states) == [2] and all_finite(states[2])
    assert [r["step"] for r in trainer.read_metrics(tmp_path)] == [2]


def test_skip_nonfinite_steps_keeps_the_previous_state_and_counts(tmp_path):
    state = run_loop(tmp_path, poisoned_batches(2), log_every=1, checkpoint_every=1,
                     skip_nonfinite=True)
    records = trainer.read_metrics(tmp_path)
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 0]
    assert math.isnan(records[2]["loss"]) and math.isfinite(records[3]["loss"])
    states = saved_states(tmp_path)
    assert sorted(states) == [1, 2, 3, 4] and all(all_finite(s) for s in states.values())
    # The skipped step 3 left params and optimizer state exactly as step 2 had them.
    for part in ("params", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, states[3][part], states[2][part])
    assert not np.array_equal(*(np.asarray(states[s]["params"]["params"]["predictions"]["bias"])
                                for s in (3, 4)))
    assert int(state.step) == 4 and all_finite(jax.device_get(state.params))

    # Resuming this run with another model: refused in one line before orbax restores
    # (the config check names the keys; the state check catches what no key says).
    c = small_config()
    c.model.hidden_size = 32
    with pytest.raises(ConfigError, match=r"changed model or optimizer: model.hidden_size "
                                          r"64 -> 32 \(use a new --workdir"):
        run_loop(tmp_path, synthetic_batches(1), c, num_train_steps=5)
    with pytest.raises(ConfigError, match=r"train state does not fit this run's model and "
                                          r"optimizer .* saved \(64,\), now \(32,\)"):
        run_loop(tmp_path, synthetic_batches(1), c, num_train_steps=5, config_dict=None)


@needs_data
def test_nonfinite_loss_through_the_cli(corpus_args, tmp_path, capsys):
    wd = tmp_path / "w"
    code, err = run_cli(capsys, "pretrain", "--config", TINY, "--workdir", wd, *corpus_args,
                        "--config.num_train_steps=4", "--config.log_every=2",
                        "--config.optimizer.learning_rate=1e30",
                        "--config.optimizer.warmup_steps=0")
    assert code == 1
    line = error_line(err)
    step = int(line.split("the loss or gradient norm of step ")[1].split()[0])
    assert 1 < step <= 4 and "skip_nonfinite_steps" in line
    states = saved_states(wd)
    assert sorted(states) == list(range(1, step)) and all(all_finite(s) for s in
                                                          states.values())
    records = trainer.read_metrics(wd)
    assert all(r["step"] < step and math.isfinite(r["loss"]) for r in records)


# ----------------------------------------------------------------------------- init
@pytest.fixture(scope="module")
def corpus_args(tmp_path_factory) -> list[str]:
    """Overrides of the tiny config for one-step runs on a small corpus (prepared once)."""
    tfds = tmp_path_factory.mktemp("tfds")
    return ["--config.num_train_steps=1", "--config.log_every=1",
            "--config.checkpoint_every=1", "--config.eval_every=0", "--config.mesh.data=1",
            "--config.global_batch_size=4", "--config.data.file_pattern=blake*.txt",
            "--config.data.validation_files=()", f"--config.data.tfds_data_dir={tfds}"]


@pytest.fixture(scope="module")
def sop_source(tmp_path_factory) -> Path:
    """An albert_jax directory of a random pretraining model (SOP head included)."""
    from albert_jax.conversion import save_albert_jax
    from albert_jax.model import AlbertForPreTraining

    cfg = AlbertConfig(**TINY_ARCH)
    d = tmp_path_factory.mktemp("sop_source") / "model"
    save_albert_jax(d, AlbertForPreTraining(cfg).init_params(jax.random.key(7)), cfg,
                    tokenizer=SPIECE)
    return d


@pytest.fixture(scope="module")
def init_run(sop_source, corpus_args, tmp_path_factory):
    """``pretrain --config.init=SOP_SOURCE`` for one step: (workdir, its arguments)."""
    wd = tmp_path_factory.mktemp("init_run") / "w"
    argv = ["pretrain", "--config", str(TINY), "--workdir", str(wd), *corpus_args,
            f"--config.init={sop_source}"]
    assert cli.main(argv) == 0
    return wd, argv


def first_batch(argv: list[str], workdir: Path) -> dict:
    """The first training batch of the run of ``argv`` (the pipeline rebuilt, same seed)."""
    from albert_jax.tokenizer import AlbertTokenizer

    config, _ = cli.parse_config_args(argv[1:])
    pretrain.adopt_init_config(config)
    splits = pretrain.prepare_corpus(config, workdir)
    tok = AlbertTokenizer(config.data.spiece_model)
    return next(pretrain.make_dataset(config, splits["train"], tok, config.seed,
                                      config.global_batch_size))


def losses_of(params, model_config: AlbertConfig, batch: dict) -> dict[str, float]:
    """MLM and SOP losses of ``params`` (unboxed ``{"params": ...}``) on ``batch``."""
    task = pretrain.pretraining_task(model_config)
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    tot = task.totals(batch)
    _, sums = task.loss_fn(params, batch, None, True, tot)
    m = task.metrics(sums, tot)
    return {k: float(m[k]) for k in ("mlm_loss", "sop_loss")}


@needs_data
def test_continued_pretraining_starts_from_the_init_model(init_run, sop_source):
    from albert_jax.pretrained import load_model

    wd, argv = init_run
    batch = first_batch(argv, wd)
    model, boxed = load_model(sop_source, "pretraining")
    loaded = losses_of(nn.meta.unbox(boxed), model.config, batch)
    task = pretrain.pretraining_task(model.config)
    fresh_params = trainer._init_state(task, rc.make_tx(small_config()),
                                       jax.random.PRNGKey(0)).params
    fresh = losses_of(fresh_params, model.config, batch)
    step1 = trainer.read_metrics(wd)[0]
    assert step1["step"] == 1
    for key in ("mlm_loss", "sop_loss"):
        # The same float32 forward, fused differently inside the train step: a few ulp.
        assert step1[key] == pytest.approx(loaded[key], rel=1e-5), key
        assert abs(step1[key] - fresh[key]) > 1e-2, key  # not a fresh model's
    # The run config saved with the checkpoint describes the whole model (export rebuilds
    # it from there), the fields the tiny config does not list filled in from the source.
    ckpt = checkpoint.Checkpointer(wd / "checkpoints", create=False)
    try:
        saved = ckpt.restore_config(1)
    finally:
        ckpt.close()
    assert rc.model_config(rc.ConfigDict(saved)) == model.config.replace(
        initializer_range=0.02, classifier_dropout_prob=0.0)  # runtime fields: the config's


def test_init_without_sop_head_starts_it_fresh_with_a_notice(tmp_path, caplog):
    from albert_jax.pretrained import load_model

    src = tmp_path / "mlm"
    save_hf_model(src, "AlbertForMaskedLM", **TINY_ARCH)  # what hub checkpoints hold
    c = load_config()
    c.mesh.data, c.init = 1, str(src)
    pretrain.adopt_init_config(c)
    task = pretrain.pretraining_task(rc.model_config(c))
    tx, mesh = rc.make_tx(c), rc.build_mesh(c)
    _, shardings = trainer.state_shardings(task, tx, mesh)
    with caplog.at_level("WARNING"):
        state = pretrain.init_state_from(c, task, tx, mesh)(shardings)
    notices = [r.getMessage() for r in caplog.records if "sop_classifier" in r.getMessage()]
    assert len(notices) == 1 and "initialised randomly" in notices[0]
    params = jax.device_get(state.params)["params"]
    _, mlm = load_model(src, "masked_lm")
    mlm = nn.meta.unbox(mlm)["params"]
    jax.tree.map(np.testing.assert_array_equal, params["albert"]["embeddings"],
                 mlm["albert"]["embeddings"])
    jax.tree.map(np.testing.assert_array_equal, params["predictions"], mlm["predictions"])
    # The fresh SOP head is the run's seeded initialisation, drawn at the config's scale.
    sop = np.asarray(params["sop_classifier"]["classifier"]["kernel"])
    assert 0.005 < sop.std() < 0.05  # initializer_range 0.02, not the source's 0.2


@needs_data
def test_init_model_fields_must_agree(sop_source, corpus_args, tmp_path, capsys):
    code, err = run_cli(capsys, "pretrain", "--config", TINY, "--workdir", tmp_path / "w",
                        *corpus_args, f"--config.init={sop_source}",
                        "--config.model.hidden_size=32", "--config.model.num_hidden_layers=3")
    assert code == 2
    assert err.strip() == (
        f"albert-jax pretrain: error: the model fields of the config disagree with init "
        f"'{sop_source}': model.hidden_size 32 != 64, model.num_hidden_layers 3 != 2 (the "
        "model comes from --config.init: set these to its values or use a config of that "
        "size)")
    code, err = run_cli(capsys, "pretrain", "--config", TINY, "--workdir", tmp_path / "w",
                        *corpus_args, f"--config.init={tmp_path / 'nothing'}")
    assert code == 2 and "cannot load init model" in error_line(err)
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- resume
@needs_data
def test_resume_with_a_changed_config(init_run, capsys):
    wd, argv = init_run
    before = sorted(p.name for p in (wd / "checkpoints").iterdir())
    # The train state's structure: refused in one line naming the keys, nothing restored.
    code, err = run_cli(capsys, *argv, "--config.optimizer.name=adamw")
    assert code == 2
    line = error_line(err)
    assert "changed model or optimizer: optimizer.name 'lamb' -> 'adamw'" in line
    assert "orbax" not in line.lower()
    # Anything else: one warning line per key, then the run goes on (here: nothing left).
    code, err = run_cli(capsys, *argv, "--config.optimizer.learning_rate=0.01",
                        "--config.data.max_seq_length=32")
    assert code == 0, err
    warnings = [x for x in err.splitlines() if "with a changed config" in x]
    assert [w.split("config: ")[1] for w in warnings] == [
        "data.max_seq_length 64 -> 32", "optimizer.learning_rate 0.02 -> 0.01"]
    assert all(w.startswith("albert-jax: resuming the checkpoint of step 1 in ")
               for w in warnings)
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before


def test_resume_changes_classifies_keys():
    saved = load_config().to_dict()
    now = json.loads(json.dumps(saved, default=list))
    now["model"]["vocab_size"] = 512
    now["model"]["hidden_dropout_prob"] = 0.1
    now["optimizer"]["learning_rate"] = 0.5
    now["mesh"]["data"] = 4  # restoring reshards: no warning
    now["num_train_steps"] = 1000
    refused, warned = rc.resume_changes(saved, now)
    assert refused == ["model.vocab_size 30000 -> 512"]
    assert warned == ["model.hidden_dropout_prob 0.0 -> 0.1", "num_train_steps 300 -> 1000",
                      "optimizer.learning_rate 0.02 -> 0.5"]


@pytest.mark.slow  # TensorFlow's import and Saver: ~35 s on 2 busy cores
def test_init_from_a_google_tf_checkpoint_loads_its_sop_head(tmp_path, caplog):
    pytest.importorskip("tensorflow")
    from test_tf_checkpoint import GOOGLE, google_variables, write_checkpoint

    google = {**GOOGLE, **{k: v for k, v in TINY_ARCH.items() if k in GOOGLE}}
    variables = google_variables(google)
    write_checkpoint(tmp_path / "ckpt", variables, config=google)
    c = load_config()
    c.mesh.data, c.init = 1, str(tmp_path / "ckpt")
    c.data.spiece_model = ""  # the checkpoint's 30k-clean.model
    pretrain.adopt_init_config(c)
    assert c.data.spiece_model == str(tmp_path / "ckpt" / "30k-clean.model")
    assert c.model.hidden_act == "gelu_new"  # Google's "gelu" is the tanh approximation
    task = pretrain.pretraining_task(rc.model_config(c))
    tx, mesh = rc.make_tx(c), rc.build_mesh(c)
    _, shardings = trainer.state_shardings(task, tx, mesh)
    with caplog.at_level("WARNING"):
        state = pretrain.init_state_from(c, task, tx, mesh)(shardings)
    assert not [r for r in caplog.records if "initialised randomly" in r.getMessage()]
    sop = jax.device_get(state.params)["params"]["sop_classifier"]["classifier"]
    # Google keeps the SOP weights [out, in]; Flax kernels are [in, out].
    np.testing.assert_array_equal(sop["kernel"], variables["cls/seq_relationship/output_weights"].T)
    np.testing.assert_array_equal(sop["bias"], variables["cls/seq_relationship/output_bias"])
