"""Tests of the sharded trainer (albert_jax.training) on 8 fake CPU devices."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import child_env, xla_flags
from jax.sharding import PartitionSpec

from albert_jax import cli
from albert_jax.config import ConfigError
from albert_jax.training import pretrain, trainer
from albert_jax.training import run_config as rc

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.py"
CORPUS = REPO.parent / "shared" / "data" / "corpus" / "gutenberg_nltk"
SPIECE = REPO.parent / "shared" / "data" / "albert_spm" / "spiece.model"


def load_config(path: Path = TINY):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def small_config(**mesh):
    c = load_config()
    c.model.vocab_size = 512  # synthetic batches: a small model keeps the compiles fast
    c.model.num_hidden_layers = 1
    c.global_batch_size = 8
    c.mesh.update(mesh or dict(data=1, fsdp=1, tensor=1))
    return c


def synthetic_batches(n: int, batch: int = 8, length: int = 32, preds: int = 5, vocab: int = 512,
                      seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(length // 2, length + 1, batch)
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(5, vocab, (batch, length)).astype(np.int32) * mask
        types = ((np.arange(length)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
        pos = np.sort(rng.integers(1, length // 2, (batch, preds)), axis=1).astype(np.int32)
        weights = (rng.random((batch, preds)) < 0.8).astype(np.float32)
        out.append(dict(
            input_ids=ids, attention_mask=mask, token_type_ids=types,
            masked_positions=pos, masked_ids=rng.integers(5, vocab, (batch, preds)).astype(
                np.int32),
            masked_weights=weights, sop_label=rng.integers(0, 2, batch).astype(np.int32),
        ))
    return out


def run_steps(config, batches, **mesh):
    mesh_obj = rc.build_mesh(config)
    task = pretrain.pretraining_task(rc.model_config(config))
    tx = rc.make_tx(config)
    state, shardings = trainer.create_train_state(task, tx, mesh_obj, jax.random.PRNGKey(0))
    step = trainer.make_train_step(task, tx, mesh_obj, shardings, batches[0],
                                 config.accumulation_steps, rc.learning_rate_schedule(config))
    losses = []
    for b in batches:
        state, m = step(state, trainer.device_batch(mesh_obj, b))
        losses.append(float(m["loss"]))
    return state, losses, shardings


@pytest.fixture(scope="module")
def reference():
    """3 steps on one device."""
    c = small_config()
    batches = synthetic_batches(3)
    state, losses, _ = run_steps(c, batches)
    return c, batches, jax.device_get(state.params), losses


@pytest.mark.parametrize(
    "mesh", [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1),
             dict(data=4, fsdp=1, tensor=2)], ids=["data8", "data2_fsdp4", "data4_tensor2"],
)
def test_sharded_step_equals_single_device(reference, mesh):
    c, batches, ref_params, ref_losses = reference
    c = c.copy_and_resolve_references()
    c.mesh.update(mesh)
    state, losses, shardings = run_steps(c, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
                 jax.device_get(state.params), ref_params)
    # The layout is what the rules say: parameters and optimizer moments sharded alike.
    p = state.params["params"]["albert"]["encoder"]["albert_layer_groups_0"]["albert_layers_0"]
    kernel = p["ffn"]["kernel"]  # logical ("embed", "mlp") -> ("fsdp", "tensor")
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    h, i = kernel.shape
    assert kernel.sharding.shard_shape(kernel.shape) == (h // mesh["fsdp"], i // mesh["tensor"])
    assert PartitionSpec("fsdp", "tensor") in {s.spec for s in jax.tree.leaves(
        shardings.opt_state)}  # the moments follow the parameters


def test_gradient_accumulation_equals_full_batch(reference):
    c, batches, ref_params, ref_losses = reference
    c = c.copy_and_resolve_references()
    c.accumulation_steps = 2
    c.mesh.update(data=4, fsdp=1, tensor=1)
    state, losses, _ = run_steps(c, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
                 jax.device_get(state.params), ref_params)


def test_bfloat16_and_remat_step_runs():
    c = small_config()
    c.dtype, c.remat = "bfloat16", "full"
    state, losses, _ = run_steps(c, synthetic_batches(2))
    assert all(np.isfinite(losses))
    leaf = state.params["params"]["predictions"]["bias"]
    assert leaf.dtype == np.float32  # parameters stay float32


# ----------------------------------------------------------------------------- config errors
def test_bad_configs_fail_at_start(tmp_path):
    c = load_config()
    c.global_batch_size = 10  # 8 devices, data=-1
    with pytest.raises(ConfigError, match=r"global_batch_size 10 .* not divisible by the "
                                          r"data-parallel size 8"):
        rc.validate_config(c)
    c = load_config()
    c.mesh.data, c.mesh.tensor = 8, 2
    with pytest.raises(ConfigError, match="does not fit the 8 available devices"):
        rc.validate_config(c)
    c = load_config()
    c.data.corpus_dir = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"corpus_dir .* is not a directory"):
        rc.validate_config(c)
    c = load_config()
    c.data.max_seq_length = 1024
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        rc.validate_config(c)


def test_cli_errors_are_one_line(tmp_path, capsys):
    base = ["--config", str(TINY), "--workdir", str(tmp_path / "w")]
    assert cli.main(["pretrain", *base, "--config.no_such_key=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("albert-jax pretrain: error:") and "no_such_key" in err
    assert "\n" not in err
    assert cli.main(["pretrain", *base, "--config.global_batch_size=12"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not divisible by the data-parallel size 8" in err and "\n" not in err
    assert cli.main(["pretrain", *base, "--config.data.corpus_dir=/nonexistent"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["pretrain", "--workdir", str(tmp_path)]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_parse_overrides():
    config, workdir = cli.parse_config_args(
        ["--config", str(TINY), "--workdir", "/tmp/x", "--config.optimizer.learning_rate=0.5",
         "--config.mesh.fsdp=2"])
    assert workdir == "/tmp/x"
    assert config.optimizer.learning_rate == 0.5 and config.mesh.fsdp == 2


def test_base_v2_config_is_the_published_recipe():
    c = load_config(REPO / "configs" / "pretrain" / "base_v2.py")
    assert (c.global_batch_size, c.data.max_seq_length, c.num_train_steps) == (4096, 512, 125000)
    o = c.optimizer
    assert (o.name, o.learning_rate, o.warmup_steps, o.weight_decay, o.clip_norm) == (
        "lamb", 0.00176, 3125, 0.01, 1.0)
    assert c.data.max_predictions_per_seq == 20
    mc = rc.model_config(c)
    assert (mc.hidden_size, mc.num_hidden_layers, mc.embedding_size) == (768, 12, 128)


# ----------------------------------------------------------------------------- real corpus
# The tiny config on the Gutenberg corpus (loss falls) is tested in test_checkpoint.py, on the
# run whose checkpoints those tests restore and export.


@pytest.mark.slow
def test_tiny_config_full_run(tmp_path):
    c = load_config()
    pretrain.pretrain(c, tmp_path, progress=False)
    records = trainer.read_metrics(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] - 3.5


def test_metrics_log_writes_tensorboard_events_without_importing_torch(tmp_path):
    """tensorboardX would import torch (seconds) in every training process: MetricsLog does
    not, and torch stays importable afterwards. In a fresh interpreter (this one has torch)."""
    pytest.importorskip("torch")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from albert_jax.training import trainer\n"
        "log = trainer.MetricsLog(Path(sys.argv[1]), resume_step=0)\n"
        "log.write(1, {'loss': 2.5})\n"
        "log.close()\n"
        "print('torch' in sys.modules)\n"
        "import torch\n"
        "print(float(torch.ones(3).sum()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=child_env())
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "3.0"]
    assert trainer.read_metrics(tmp_path) == [{"step": 1, "loss": 2.5}]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"loss" in events[0].read_bytes()


# ----------------------------------------------------------------------------- multi-process
_WORKER = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from albert_jax.training import pretrain, trainer
from albert_jax.training import run_config as rc
if {distributed}:
    trainer.initialize_distributed()
import jax
from test_train import small_config, synthetic_batches
c = small_config(data=2, fsdp=1, tensor=1)
mesh = rc.build_mesh(c)
task = pretrain.pretraining_task(rc.model_config(c))
tx = rc.make_tx(c)
state, shardings = trainer.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
batches = synthetic_batches(3)
n, i = jax.process_count(), jax.process_index()
rows = lambda b: {{k: v[i * len(v) // n:(i + 1) * len(v) // n] for k, v in b.items()}}
step = trainer.make_train_step(task, tx, mesh, shardings, rows(batches[0]), 1,
                             rc.learning_rate_schedule(c))
losses = []
for b in batches:
    state, m = step(state, trainer.device_batch(mesh, rows(b)))
    losses.append(float(m["loss"]))
print("LOSSES", json.dumps(losses))
"""


def _worker(tmp_path, distributed: bool, devices: int, env_extra: dict) -> subprocess.Popen:
    import os

    script = _WORKER.format(tests=str(Path(__file__).parent), distributed=distributed)
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices),
           "JAX_PLATFORMS": "cpu", **env_extra}
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(proc: subprocess.Popen) -> list[float]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("LOSSES ")][-1]
    return json.loads(line[len("LOSSES "):])


def test_two_processes_equal_one(tmp_path):
    """2 processes on localhost (gloo), one device each, each feeding its half of the global
    batch through make_array_from_process_local_data = 1 process with 2 devices."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        _worker(tmp_path, True, 1, {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                    "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i in range(2)
    ]
    reference = _worker(tmp_path, False, 2, {})  # concurrently: the three are mostly compiling
    multi = [_losses(p) for p in procs]
    single = _losses(reference)
    assert multi[0] == multi[1]
    # The loss is summed across 2 processes instead of 2 devices of one: rounding only,
    # compounded over the steps (rtol 1e-6 is 8 eps: the edge of float32).
    np.testing.assert_allclose(multi[0], single, rtol=1e-5)
