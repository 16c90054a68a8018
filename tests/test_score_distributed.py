"""``albert-jax score --distributed``: 2 processes on localhost (gloo), each scoring its share,
write exactly what one process writes (input order, per-line errors kept)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, require_spiece, save_hf_model

from albert_jax import multihost

REPO = Path(__file__).resolve().parents[1]


def test_share_covers_every_item_once():
    for count in (0, 1, 5, 7, 100):
        for processes in (1, 2, 3, 8):
            parts = [multihost.share(count, i, processes) for i in range(processes)]
            assert [i for p in parts for i in p] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _score(args: list[str], env: dict) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **env}
    return subprocess.Popen([sys.executable, "-m", "albert_jax.cli", "score", "--quiet",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("task", ["fill-mask", "embed"])
def test_two_processes_write_what_one_writes(tmp_path, task):
    require_spiece()
    model = tmp_path / "model"
    save_hf_model(model, "AlbertForMaskedLM", seed=2,
                  **dict(TINY, initializer_range=1.0, max_position_embeddings=64))
    lines = [b"the [MASK] sat on the mat", b"", b"no mask here", b"a [MASK] b",
             b"caf\xe9 [MASK]", b"one [MASK] two [MASK]", b"a much longer [MASK] " * 3]
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    ext = ".npy" if task == "embed" else ".jsonl"
    one, two = tmp_path / f"one{ext}", tmp_path / f"two{ext}"
    common = ["--task", task, "--model", str(model), "--input", str(src), "--batch-size", "2"]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [_score([*common, "--output", str(two), "--distributed"],
                    {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                     "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    single = _score([*common, "--output", str(one)], {})  # Concurrently: mostly compiling.
    results = [_wait(p) for p in (*procs, single)]
    expected = 1  # Some lines fail (the empty one; fill-mask: no or two masks): exit 1.
    for code, err in results:
        assert code == expected, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    if task == "embed":
        import numpy as np

        np.testing.assert_array_equal(np.load(two), np.load(one))
        one, two = one.with_suffix(".jsonl"), two.with_suffix(".jsonl")
    assert two.read_bytes() == one.read_bytes()
    assert len(two.read_text().splitlines()) == len(lines)
    # Only process 0 wrote: nothing else in the directory but the inputs and outputs.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
