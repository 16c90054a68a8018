"""Checkpoints of the trainer: exact resume after kill -9 / SIGTERM, restore onto another
mesh, export to a model directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import cli
from albert_jax import sharding as shd
from albert_jax.training import checkpoint, pretrain, trainer
from albert_jax.training import run_config as rc

sys.path.insert(0, str(Path(__file__).parent))
from test_train import CORPUS, REPO, SPIECE, TINY, load_config

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir() or not SPIECE.is_file(), reason="the gutenberg corpus or spiece.model "
    "is absent")

STEPS = 24


def _overrides(tfds_dir: Path) -> list[str]:
    return [f"--config.num_train_steps={STEPS}", "--config.log_every=1",
            "--config.checkpoint_every=4", "--config.eval_every=0", "--config.mesh.data=2",
            "--config.data.file_pattern=[cms]*.txt",
            f"--config.data.tfds_data_dir={tfds_dir}"]


def _command(workdir: Path, tfds_dir: Path) -> list[str]:
    return [sys.executable, "-m", "albert_jax.cli", "pretrain", "--config", str(TINY),
            "--workdir", str(workdir), *_overrides(tfds_dir)]


def _finalized_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def _env(tmp: Path) -> dict[str, str]:
    """The children share a private persistent compilation cache (pretrain turns it on): the
    later runs load the train step the first ones compiled."""
    return {**os.environ, "ALBERT_JAX_CACHE_DIR": str(tmp / "xla")}


def _wait_until(ready, proc: subprocess.Popen, interval: float, timeout: float = 120) -> None:
    """Polls ``ready()`` every ``interval`` seconds until it holds, ``proc`` ends or
    ``timeout`` passes (the caller checks which)."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(interval)


def _start_and_stop(workdir: Path, tfds_dir: Path, sig: int, after_step: int) -> int:
    """Starts the run, waits for a finalized checkpoint >= after_step, sends ``sig``."""
    proc = subprocess.Popen(_command(workdir, tfds_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(workdir.parent))
    try:
        _wait_until(lambda: any(s >= after_step for s in _finalized_steps(workdir)), proc,
                    interval=0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted: " + (
            proc.stderr.read().decode()[-2000:])
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_kill_and_resume_is_exact(tmp_path):
    tfds_dir = tmp_path / "tfds"
    # The corpus is prepared once, before the concurrent runs.
    config, _ = cli.parse_config_args(
        ["--config", str(TINY), "--workdir", str(tmp_path), *_overrides(tfds_dir)])
    pretrain.prepare_corpus(config, tmp_path)
    # The uninterrupted run, concurrently with the first interrupted one. That one starts
    # when the reference has compiled its train step, and loads it from the shared cache.
    ref_dir = tmp_path / "ref"
    reference = subprocess.Popen(_command(ref_dir, tfds_dir), cwd=REPO, env=_env(tmp_path),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: bool(list((tmp_path / "xla").glob("jit_step-*-cache"))), reference,
                interval=0.05)
    run = tmp_path / "run"
    assert _start_and_stop(run, tfds_dir, signal.SIGKILL, after_step=4) == -signal.SIGKILL
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    ref = {r["step"]: r for r in trainer.read_metrics(ref_dir)}
    assert sorted(ref) == list(range(1, STEPS + 1))
    killed_at = max(_finalized_steps(run))
    assert killed_at < STEPS
    # SIGTERM: the run saves a checkpoint at the current step and exits cleanly.
    assert _start_and_stop(run, tfds_dir, signal.SIGTERM, after_step=killed_at + 4) == 0
    termed_at = max(_finalized_steps(run))
    assert termed_at < STEPS and termed_at > killed_at
    done = subprocess.run(_command(run, tfds_dir), cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]

    records = trainer.read_metrics(run)
    steps = [r["step"] for r in records]
    assert steps == list(range(1, STEPS + 1))  # no step twice, none missing
    for r in records:
        for key in ("loss", "mlm_loss", "sop_loss", "mlm_accuracy", "sop_accuracy",
                    "learning_rate", "grad_norm"):
            assert r[key] == ref[r["step"]][key], (r["step"], key)  # bit-identical
    assert len(_finalized_steps(run)) <= 3  # keep_checkpoints
    # pretrain turned the cache on and wrote its compiled train step there, for the runs
    # after the first ones to load (whose metrics are, above, the uninterrupted run's).
    assert list((tmp_path / "xla").glob("jit_step-*-cache"))


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8))
                    + '{"step": 8, "lo')  # a line torn by a kill
    trainer.truncate_metrics(path, 5)
    assert [r["step"] for r in trainer.read_metrics(tmp_path)] == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny config, 50 steps on a data=2 mesh, checkpoints at 25 and 50, an evaluation at
    the end: (config, workdir, final state)."""
    workdir = tmp_path_factory.mktemp("run")
    c = load_config()
    c.num_train_steps, c.checkpoint_every, c.eval_every, c.log_every = 50, 25, 50, 1
    c.mesh.data = 2
    state = pretrain.pretrain(c, workdir, progress=False)
    return c, workdir, jax.device_get(state)


def test_tiny_config_loss_falls_on_gutenberg(trained):
    _, workdir, _ = trained
    records = trainer.read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 51))
    first = records[0]["loss"]
    last = np.mean([r["loss"] for r in records[-5:]])
    assert first > 10.0  # about ln(30000) + ln(2)
    assert last < first - 2.0, (first, last)
    for key in ("loss", "mlm_loss", "sop_loss", "mlm_accuracy", "sop_accuracy", "learning_rate",
                "grad_norm", "eval_loss", "eval_mlm_accuracy"):
        assert key in records[-1]
    assert records[-1]["eval_loss"] < first - 1.5
    assert list((workdir / "tensorboard").iterdir())


def test_restore_on_a_different_mesh(trained):
    c, workdir, final = trained
    task = pretrain.pretraining_task(rc.model_config(c))
    tx = rc.make_tx(c)
    mesh = shd.make_mesh(2, 2, 2)
    abstract, shardings = trainer.state_shardings(task, tx, mesh)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    try:
        assert ckpt.all_steps() == [25, 50]
        state, data_states, config = ckpt.restore(50, trainer.abstract_with_shardings(abstract,
                                                                                   shardings))
    finally:
        ckpt.close()
    assert int(state.step) == 50 and config["global_batch_size"] == c.global_batch_size
    assert data_states == [{"epoch": 0, "position": 50 * c.global_batch_size}]
    kernel = state.params["params"]["albert"]["encoder"]["albert_layer_groups_0"][
        "albert_layers_0"]["ffn"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    assert kernel.sharding.shard_shape(kernel.shape) == (kernel.shape[0] // 2,
                                                         kernel.shape[1] // 2)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), final)


def test_export_load_pretrained_and_convert(trained, tmp_path, capsys):
    import albert_jax

    c, workdir, final = trained
    dest = tmp_path / "model"
    assert cli.main(["export", str(workdir), str(dest)]) == 0
    model, params, tokenizer = albert_jax.load_pretrained(str(dest), head="pretraining")
    assert tokenizer.vocab_size == 30000
    batch = tokenizer(["The old man and the sea.", "Whale ho!"], padding=True,
                      return_tensors="np")
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    got = model.apply(params, *args)
    ref_model = pretrain.pretraining_task(rc.model_config(c)).model
    want = ref_model.apply({"params": final.params["params"]}, *args)
    np.testing.assert_allclose(got.prediction_logits, want.prediction_logits, atol=1e-5)
    np.testing.assert_allclose(got.sop_logits, want.sop_logits, atol=1e-5)
    hf = albert_jax.convert(str(dest), str(tmp_path / "hf"), to="hf")
    assert (Path(hf) / "config.json").is_file()
    # A second export into the same place needs --overwrite; a missing workdir is one line.
    assert cli.main(["export", str(workdir), str(dest)]) == 2
    assert "--overwrite replaces it" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    # bfloat16 storage: the stored tensors are the float32 ones rounded, loaded back as float32.
    half = tmp_path / "model_bf16"
    assert cli.main(["export", str(workdir), str(half), "--dtype", "bfloat16"]) == 0
    from safetensors.numpy import load_file

    stored = load_file(half / "params.safetensors")
    assert {v.dtype.name for v in stored.values()} == {"bfloat16"}
    _, params16, _ = albert_jax.load_pretrained(str(half), head="pretraining")
    for a, b in zip(jax.tree_util.tree_leaves(nn.meta.unbox(params16)),
                    jax.tree_util.tree_leaves(nn.meta.unbox(params)), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, np.asarray(b).astype(jnp.bfloat16).astype(np.float32))
