"""``albert-jax score --distributed``: 2 processes on localhost (gloo), one mesh over both
processes' devices, write exactly what one process writes (input order, per-line errors
kept); one process's failure ends both."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, require_spiece, save_hf_model, xla_flags

from albert_jax import multihost

REPO = Path(__file__).resolve().parents[1]


def test_share_covers_every_item_once():
    for count in (0, 1, 5, 7, 100):
        for processes in (1, 2, 3, 8):
            parts = [multihost.share(count, i, processes) for i in range(processes)]
            assert [i for p in parts for i in p] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _score(args: list[str], env: dict, devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(devices), **env}
    return subprocess.Popen([sys.executable, "-m", "albert_jax.cli", "score", "--quiet",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _two_processes(args: list[str], extra: tuple[list[str], list[str]] = ([], [])
                   ) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a 2-process run on localhost, 4 CPU devices each."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [_score([*args, *extra[i], "--distributed"],
                   {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                    "JAX_PROCESS_ID": str(i)}, devices=4) for i in range(2)]


# Lengths from 3 to ~40 tokens, so that the rows are reordered by length, fill several
# batches of several shapes, and come back in input order; bad lines among them.
LINES = [b"the [MASK] sat on the mat", b"", b"no mask here", b"a [MASK] b",
         b"caf\xe9 [MASK]", b"one [MASK] two [MASK]", b"a much longer [MASK] " * 3,
         *(b"word " * (3 * k) + b"[MASK] end" for k in range(1, 13)), b"[MASK]",
         b"   ", b"short [MASK]", b"the last line [MASK] of the file"]


@pytest.mark.parametrize(("task", "mesh"), [("fill-mask", []), ("embed", ["--tensor", "2"])])
def test_two_processes_write_what_one_writes(tmp_path, task, mesh):
    """One mesh over both processes' 4 + 4 devices: the same devices and per-device shapes
    as one process with 8, so the output must be the same bytes."""
    require_spiece()
    model = tmp_path / "model"
    save_hf_model(model, "AlbertForMaskedLM", seed=2,
                  **dict(TINY, initializer_range=1.0, max_position_embeddings=64))
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(LINES) + b"\n")
    ext = ".npy" if task == "embed" else ".jsonl"
    one, two = tmp_path / f"one{ext}", tmp_path / f"two{ext}"
    common = ["--task", task, "--model", str(model), "--input", str(src), "--batch-size", "8",
              *mesh]
    procs = _two_processes([*common, "--output", str(two)])
    single = _score([*common, "--output", str(one)], {}, devices=8)  # Concurrently.
    results = [_wait(p) for p in (*procs, single)]
    expected = 1  # Some lines fail (the empty ones; fill-mask: no or two masks): exit 1.
    for code, err in results:
        assert code == expected, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    # The engine's mesh spans both processes: 8 devices, 4 of them in each.
    data = 4 if mesh else 8
    for i, (_, err) in enumerate(results[:2]):
        assert (f"process {i} of 2: mesh data={data} x fsdp=1 x tensor={8 // data} over 8 "
                "devices, 4 of them here") in err, err[-3000:]
    if task == "embed":
        import numpy as np

        vectors = np.load(two)
        np.testing.assert_array_equal(vectors, np.load(one))
        assert vectors.shape == (len(LINES), TINY["hidden_size"])
        one, two = one.with_suffix(".jsonl"), two.with_suffix(".jsonl")
    assert two.read_bytes() == one.read_bytes()
    records = [json.loads(line) for line in two.read_text().splitlines()]
    # Input order, every line, errors kept in their place.
    assert [r["line"] for r in records] == list(range(1, len(LINES) + 1))
    for r, raw in zip(records, LINES, strict=True):
        if not raw.strip() or (task == "fill-mask" and raw.count(b"[MASK]") != 1):
            assert "error" in r and "input" not in r, r
        else:
            assert r["input"] == raw.decode("utf-8", errors="replace"), r
    assert records[4].get("invalid_utf8") is True
    # Only process 0 wrote: nothing else in the directory but the inputs and outputs.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failing_process_stops_the_other(tmp_path):
    """Process 1 cannot load its model: both end soon, each with one line, nothing
    written."""
    require_spiece()
    model = tmp_path / "model"
    save_hf_model(model, "AlbertForMaskedLM", **dict(TINY, max_position_embeddings=64))
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(LINES) + b"\n")
    out = tmp_path / "out.jsonl"
    common = ["--task", "fill-mask", "--input", str(src), "--output", str(out)]
    procs = _two_processes(common, (["--model", str(model)], ["--model", str(tmp_path / "no")]))
    (code0, err0), (code1, err1) = [_wait(p) for p in procs]
    assert code1 == 2 and "cannot load model" in err1, err1[-3000:]
    assert code0 == 2, err0[-3000:]
    assert "error: process 1 failed: cannot load model" in err0, err0[-3000:]
    for err in (err0, err1):
        assert "Traceback" not in err, err[-3000:]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_process_stopped_mid_run_stops_the_other(tmp_path):
    """SIGTERM to process 1 once the run is under way (its mesh line printed): both end
    within seconds, each with one line; process 0 writes nothing."""
    require_spiece()
    model = tmp_path / "model"
    save_hf_model(model, "AlbertForMaskedLM", **dict(TINY, max_position_embeddings=64))
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(LINES * 60) + b"\n")  # Seconds of scoring after the line.
    out = tmp_path / "out.jsonl"
    procs = _two_processes(["--task", "fill-mask", "--model", str(model), "--input", str(src),
                            "--output", str(out), "--batch-size", "8"])
    seen = []
    for line in procs[1].stderr:
        seen.append(line)
        if "process 1 of 2: mesh" in line:
            procs[1].send_signal(signal.SIGTERM)
            break
    start = time.monotonic()
    (code0, err0), (code1, err1) = [_wait(p) for p in procs]
    err1 = "".join(seen) + err1
    assert time.monotonic() - start < 60, (err0[-3000:], err1[-3000:])
    assert code1 == 128 + signal.SIGTERM, err1[-3000:]
    assert "error: terminated (SIGTERM): no output written" in err1, err1[-3000:]
    assert code0 == 2, err0[-3000:]
    assert "error: process 1 failed: terminated (SIGTERM)" in err0, err0[-3000:]
    for err in (err0, err1):
        assert "Traceback" not in err and "Check failure" not in err, err[-3000:]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


_ENGINE_SCRIPT = '''
import json, os, sys
import numpy as np
import jax
from albert_jax import multihost
if os.environ.get("JAX_NUM_PROCESSES"):
    multihost.initialize()
from albert_jax.config import AlbertConfig
from albert_jax.engine import Engine, Row
from albert_jax.model import AlbertForMaskedLM

config = AlbertConfig(vocab_size=500, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                      initializer_range=0.5)
model = AlbertForMaskedLM(config)
rng = np.random.default_rng(0)  # Random weights without compiling the initialiser:
params = jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype),
                      jax.eval_shape(lambda: model.init_params(jax.random.key(0))))
groups = []
for g in range(40):  # Groups of 0-3 rows of 3-40 tokens: several windows of 6 rows.
    rows = []
    for _ in range(rng.integers(0, 4)):
        n = int(rng.integers(3, 41))
        ids = [2, *rng.integers(5, 500, n - 2).tolist(), 3]
        rows.append(Row(ids, position=int(rng.integers(0, n)), target=int(rng.integers(5, 500))))
    groups.append(rows)
engine = Engine(model, params, batch_size=8, window=6, pipeline_depth=1,
                length_buckets=(16, 48), tensor=2)
done = []
logprob = [np.asarray(x) for x in engine.stream("logprob", groups, progress=done.append)]
top = [x for x in engine.stream("topk", groups, top_k=3) if len(x) == 2]  # (Empty: [0].)
np.savez(sys.argv[1] + ".npz", logprob=np.concatenate(logprob),
         scores=np.concatenate([s for s, _ in top]), ids=np.concatenate([i for _, i in top]))
with open(sys.argv[1] + ".json", "w") as f:
    json.dump({"mesh": int(engine.mesh.devices.size), "devices": jax.device_count(),
               "local": jax.local_device_count(), "multiprocess": engine.multiprocess,
               "group_sizes": [len(x) for x in logprob], "completed": sum(done)}, f)
'''


def test_engine_streams_over_a_mesh_of_both_processes(tmp_path):
    """The Engine API itself: streaming over several windows of multi-row groups, in input
    order, with one mesh (data=4 x tensor=2) over 2 processes x 4 devices; the same bytes
    as 1 process x 8."""
    script = tmp_path / "worker.py"
    script.write_text(_ENGINE_SCRIPT)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]

    def start(out: str, devices: int, env: dict) -> subprocess.Popen:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": xla_flags(devices), **env}
        return subprocess.Popen([sys.executable, str(script), str(tmp_path / out)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    procs = [start(f"p{i}", 4, {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    procs.append(start("single", 8, {}))
    for p in procs:
        code, err = _wait(p)
        assert code == 0, err[-3000:]
    import numpy as np

    reports = [json.loads((tmp_path / f"{name}.json").read_text())
               for name in ("p0", "p1", "single")]
    for r in reports[:2]:  # The mesh spans both processes.
        assert r["mesh"] == r["devices"] == 2 * r["local"] == 8, r
        assert r["multiprocess"] is True
    assert reports[2]["mesh"] == 8 and reports[2]["multiprocess"] is False
    assert reports[0]["group_sizes"] == reports[2]["group_sizes"]  # Input order, each group.
    # progress counted every group that had rows once.
    assert reports[0]["completed"] == sum(1 for n in reports[0]["group_sizes"] if n) > 20
    single = np.load(tmp_path / "single.npz")
    assert np.isfinite(single["logprob"]).all() and (single["logprob"] < 0).all()
    assert len(single["logprob"]) == sum(reports[2]["group_sizes"]) == len(single["ids"])
    for name in ("p0", "p1"):
        got = np.load(tmp_path / f"{name}.npz")
        for key in ("logprob", "scores", "ids"):
            np.testing.assert_array_equal(got[key], single[key], err_msg=f"{name} {key}")
