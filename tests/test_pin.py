"""Pins the trainer's behaviour across refactors: the tiny pretraining config and one
fine-tuning family (SST-2 from the bundled albert-mini) for a few steps, compared with values
recorded before the training side was restructured (issue 10).

``tests/fixtures/pin.json`` was produced at commit dabdb70 (the last commit before the move:
``albert_jax/train.py`` + ``albert_jax/finetune.py``) by running this file's
``run_pinned`` there, with the same run settings::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=$PWD \\
        python tests/test_pin.py --record

``tests/fixtures/pin_kernels.json`` is the same recording made when the CPU training step's
kernels changed the order of some sums (issue 12: weight gradients on another GEMM, custom
softmax and activation gradients), by ``python tests/test_pin.py --record-kernels``. The
run is compared with both: with dabdb70's within float32 round-off (below) on every
machine, and with the newer one bit for bit where the machine matches it; a later change
that alters the bits on purpose records the newer file again and says why.

The values are every ``metrics.jsonl`` record (losses, metrics, learning rate, gradient norm,
dev metrics), the fine-tuning result (``best.json`` + final eval), and a SHA-256 of every
array of every orbax checkpoint (read back with orbax itself, not with the trainer) and of
the ``best/`` model's tensors. On a machine whose JAX version and CPU (make, model and
feature flags: :func:`fingerprint`) match the recording, everything must be equal bit for
bit; elsewhere XLA's CPU kernels may sum in another order (AVX2 vs AVX-512, or another
make's AVX-512), so there the checksums are not compared and the floats must agree to
``rtol=2e-3`` (float32 round-off, ~1e-7 per op, amplified by a few optimizer steps). The
kernels file holds one machine's recording, the last one made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env, xla_flags

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pin.json"
KERNELS = Path(__file__).resolve().parent / "fixtures" / "pin_kernels.json"
SHARED = REPO.parent / "shared" / "data"
SST2 = SHARED / "glue" / "SST-2"
CORPUS = SHARED / "corpus" / "gutenberg_nltk"


def fingerprint() -> dict:
    """What decides whether float results can be bit-identical to the recording: XLA's CPU
    backend compiles for the host's own microarchitecture (LLVM's host CPU name and feature
    set), so two AVX-512 machines of different makes (an AMD EPYC and an Intel Xeon, say)
    run different kernels. The CPU is identified by its vendor, family and model and a
    digest of its feature flags, as the kernel reports them."""
    import jax
    import jaxlib

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough: the cores are alike
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = " ".join(sorted(fields.get("flags", "").split()))
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "machine": platform.machine(), "devices": jax.device_count(),
            "cpu": " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model")),
            "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def _tree_sha(tree) -> str:
    import jax

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(tree),
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _checkpoint_shas(workdir: Path) -> dict[str, str]:
    """SHA-256 of each saved step's train state, read with orbax alone."""
    import orbax.checkpoint as ocp

    out = {}
    ckpt = ocp.PyTreeCheckpointer()
    for step in sorted((workdir / "checkpoints").iterdir(), key=lambda p: p.name):
        if step.name.isdigit():
            out[step.name] = _tree_sha(ckpt.restore(step / "state"))
    return out


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]


def _config(path: Path, workdir: Path, overrides: dict):
    """A config file + --config.key=value overrides through the command-line parser."""
    from albert_jax.cli import parse_config_args

    return parse_config_args(["--config", str(path), "--workdir", str(workdir),
                              *(f"--config.{k}={v}" for k, v in overrides.items())])[0]


def run_pinned(tmp: Path, tfds_dir: Path | None = None) -> dict:
    """The pinned runs in ``tmp``; SST-2 is prepared in ``tfds_dir`` (default: under ``tmp``)."""
    from albert_jax.training.finetune import finetune
    from albert_jax.training.pretrain import pretrain

    pre = tmp / "pretrain"
    c = _config(REPO / "configs" / "pretrain" / "tiny.py", pre, {
        "num_train_steps": 6, "log_every": 1, "checkpoint_every": 3, "eval_every": 3,
        "mesh.data": 2})
    pretrain(c, pre, progress=False)

    ft = tmp / "finetune"
    c = _config(REPO / "configs" / "finetune" / "sst2.py", ft, {
        "init": "albert-mini", "num_train_steps": 4, "global_batch_size": 8,
        "eval_batch_size": 8, "max_seq_length": 24, "log_every": 1, "eval_every": 2,
        "checkpoint_every": 2, "mesh.data": 1, "optimizer.warmup_steps": 1,
        "optimizer.learning_rate": 1e-3, "model.classifier_dropout_prob": 0.1,
        "data.max_train_examples": 48, "data.max_eval_examples": 16,
        "data.tfds_data_dir": tfds_dir or tmp / "tfds"})
    result = finetune(c, ft, progress=False)
    from safetensors.numpy import load_file

    return {
        "pretrain_metrics": _metrics(pre),
        "pretrain_checkpoints": _checkpoint_shas(pre),
        "finetune_metrics": _metrics(ft),
        "finetune_result": result,
        "finetune_checkpoints": _checkpoint_shas(ft),
        "finetune_best_model": _tree_sha(load_file(ft / "best" / "params.safetensors")),
    }


def _floats_close(got, want, path="") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _floats_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _floats_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=2e-3, abs=1e-6), path
    else:
        assert got == want, path


@pytest.mark.skipif(not (SST2.is_dir() and CORPUS.is_dir()),
                    reason="the shared SST-2 / Gutenberg data is absent")
def test_restructured_trainer_reproduces_the_recording(tmp_path, shared_tfds_dir):
    # In a child process with XLA's default compilation (the recordings' settings), not the
    # suite's fast-compile flags (conftest.FAST_COMPILE), which change the kernels' bits.
    out = tmp_path / "pinned.json"
    env = child_env(XLA_FLAGS=xla_flags(8, fast=False), JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, __file__, "--emit", str(out), "--tfds",
                          str(shared_tfds_dir)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(out.read_text())
    got_fingerprint = got.pop("fingerprint")
    # dabdb70, before the restructure: the same run within float32 round-off, everywhere.
    recorded = json.loads(FIXTURE.read_text())
    for key in ("pretrain_metrics", "finetune_metrics", "finetune_result"):
        _floats_close(got[key], recorded[key], key)
    assert set(got["pretrain_checkpoints"]) == set(recorded["pretrain_checkpoints"])
    assert set(got["finetune_checkpoints"]) == set(recorded["finetune_checkpoints"])
    # Today's kernels: bit for bit where the machine matches (floats via their exact JSON
    # repr, arrays via SHA-256).
    kernels = json.loads(KERNELS.read_text())
    if got_fingerprint == kernels["fingerprint"]:
        assert got == {k: v for k, v in kernels.items() if k != "fingerprint"}


if __name__ == "__main__" and {"--record", "--record-kernels", "--emit"} & set(sys.argv):
    import tempfile

    if "--emit" in sys.argv:  # the test's child: the run, as JSON, where the test says
        target = Path(sys.argv[sys.argv.index("--emit") + 1])
    else:
        target = KERNELS if "--record-kernels" in sys.argv else FIXTURE
    tfds = Path(sys.argv[sys.argv.index("--tfds") + 1]) if "--tfds" in sys.argv else None
    with tempfile.TemporaryDirectory() as d:
        values = {"fingerprint": fingerprint(), **run_pinned(Path(d), tfds)}
    target.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {target}")
