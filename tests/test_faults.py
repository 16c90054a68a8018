"""Faults: kill -9 in the middle of `convert`, `score` and `pretrain`, corrupted checkpoints,
stale temporaries and two runs on one workdir (issue 11, sections 1 and 3).

The kills are real: a child process is started and killed (SIGKILL) at points found by
watching the filesystem (as soon as its temporary appears, or after a seeded random delay
once it does), then the command is run again. After that run the final output is complete
and nothing of ours is left beside it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import atomic
from albert_jax.training import checkpoint, workdir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny.py"
CORPUS = REPO.parent / "shared" / "data" / "corpus" / "gutenberg_nltk"
SPIECE = REPO.parent / "shared" / "data" / "albert_spm" / "spiece.model"
OURS = re.compile(r"\..+\.albert_jax-[0-9a-f]{8}-[0-9]+-[a-z0-9_]+\.(tmp|old)")
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "albert_jax.cli", *args]


def _ours(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if OURS.fullmatch(p.name))


def _kill_when(cmd: list[str], ready, extra_delay: float = 0.0, timeout: float = 120) -> bool:
    """Starts ``cmd``, waits until ``ready()``, sleeps ``extra_delay``, kills it with SIGKILL.
    Returns whether it was killed (False: it ended first)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while proc.poll() is None and not ready():
            assert time.time() < deadline, "the child never reached the kill point"
            time.sleep(0.005)
        time.sleep(extra_delay)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ============================================================================ stale temporaries
def test_sweep_removes_only_our_stale_temporaries(tmp_path):
    dead = _dead_pid()
    stale_file = tmp_path / f".out.jsonl.albert_jax-{HOST}-{dead}-abc123_x.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".model.albert_jax-{HOST}-{dead}-q1w2e3r4.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "w.bin").write_bytes(b"x")
    aside = tmp_path / f".model.albert_jax-{HOST}-{dead}-0123456789abcdef.old"
    aside.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    keep = {
        # a living process' temporary (this one's parent stands in for a concurrent run)
        f".a.albert_jax-{HOST}-{os.getppid()}-zzzzzzzz.tmp": "file",
        f".b.albert_jax-{HOST}-{os.getpid()}-zzzzzzzz.tmp": "file",  # our own, in flight
        f".c.albert_jax-0badc0de-{dead}-zzzzzzzz.tmp": "file",  # another host's
        ".d.tmp": "file", "e.tmp": "file", f".f.{dead}.tmp": "file",  # not our naming
        f".g.albert_jax-{HOST}-{dead}-zzzzzzzz.tmp.bak": "file",
        f".h.albert_jax-{HOST}-{dead}-ZZZZ.tmp": "file",  # upper case: mkstemp never
        f".i.albert_jax-{HOST}-{dead}-zzzzzzzz.tmp": "symlink",  # ours by name, a symlink
        "unrelated.txt": "file",
    }
    for name, kind in keep.items():
        if kind == "symlink":
            (tmp_path / name).symlink_to(victim)
        else:
            (tmp_path / name).write_text("not yours")
    atomic.write_text(tmp_path / "out.jsonl", "done\n")  # the next run into this directory
    names = set(os.listdir(tmp_path))
    assert not {stale_file.name, stale_dir.name, aside.name} & names
    # The .old one (a replacement killed between its two renames): the previous version of
    # model/ was renamed aside and nothing took its place: it comes back.
    assert names == {*keep, "victim", "out.jsonl", "model"}
    for name, kind in keep.items():
        if kind == "file":
            assert (tmp_path / name).read_text() == "not yours"
    assert (victim / "precious").read_text() == "keep"
    # With model/ in place (the replacement got that far), the .old copy is just removed.
    (tmp_path / "model" / "w").write_text("new")
    back = tmp_path / f".model.albert_jax-{HOST}-{dead}-00ff00ff00ff00ff.old"
    back.mkdir()
    (back / "w").write_text("previous")
    atomic.write_text(tmp_path / "out.jsonl", "done\n")
    assert not back.exists() and (tmp_path / "model" / "w").read_text() == "new"
    shutil.rmtree(tmp_path / "model")
    # atomic_directory sweeps too; a subdirectory is never looked into.
    (tmp_path / "victim" / stale_file.name).write_text("half")
    stale_file.write_text("half")
    with atomic.atomic_directory(tmp_path / "model") as d:
        (d / "x").write_text("1")
    assert not stale_file.exists() and (tmp_path / "victim" / stale_file.name).exists()


def test_temporary_names_carry_host_and_pid(tmp_path):
    seen = []
    with atomic.atomic_file(tmp_path / "x.json") as f:
        seen = _ours(tmp_path)
        f.write("{}")
    assert len(seen) == 1 and f"-{HOST}-{os.getpid()}-" in seen[0]
    assert _ours(tmp_path) == []


def _complete_model(dest: Path) -> bool:
    from safetensors.numpy import load_file

    assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors", "spiece.model"]
    json.loads((dest / "config.json").read_text())
    return bool(load_file(dest / "model.safetensors"))


@pytest.mark.parametrize("delay", [0.0, pytest.param(0.05, marks=pytest.mark.slow)])
def test_kill_during_convert_leaves_nothing_after_the_next_run(tmp_path, delay):
    dest = tmp_path / "hf"
    cmd = _cli("convert", "albert-mini", str(dest), "--to", "hf")
    killed = _kill_when(cmd, lambda: bool(_ours(tmp_path)), delay)
    assert not dest.exists() or _complete_model(dest)  # absent or complete, never partial
    left = _ours(tmp_path)
    if delay == 0.0:  # killed as its temporary directory appeared: that is left behind
        assert killed and left and not dest.exists()
    done = subprocess.run([*cmd, "--overwrite"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["hf"], (left, os.listdir(tmp_path))
    assert _complete_model(dest)


def test_kill_during_score_leaves_nothing_after_the_next_run(tmp_path):
    rng = random.Random(11)
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}: the old man and the sea, a story of {rng.random()}\n"
                           for i in range(24)))
    out = tmp_path / "out" / "scores.jsonl"
    out.parent.mkdir()
    cmd = _cli("score", "--task", "pll", "--model", "albert-mini", "--input", str(src),
               "--output", str(out), "--quiet", "--batch-size", "4")
    kills = 0
    for delay in (0.0, rng.uniform(0.2, 1.5)):  # as the temporary appears; mid-scoring
        kills += _kill_when(cmd, lambda: bool(_ours(out.parent)), delay)
        assert not out.exists() or len(out.read_text().splitlines()) == 24
    assert kills >= 1
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(out.parent) == ["scores.jsonl"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in lines] == list(range(1, 25))


# ============================================================================ the workdir lock
def test_lock_is_exclusive_names_the_holder_and_dies_with_it(tmp_path):
    with workdir.workdir_lock(tmp_path / "run"), workdir.workdir_lock(tmp_path / "run"):
        pass  # re-entrant within one process (the command line, then pretrain())
    # A run refused (e.g. a bad config) in a workdir it created leaves no workdir behind.
    with pytest.raises(ValueError, match="bad"), workdir.workdir_lock(tmp_path / "new"):
        raise ValueError("bad config")
    assert not (tmp_path / "new").exists()
    # A holder killed with SIGKILL leaves the file but not the lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from albert_jax.training import workdir;\n"
         "with workdir.workdir_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
         str(tmp_path / "run")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir.WorkdirBusyError, match=rf"process {holder.pid}\b"), \
                workdir.workdir_lock(tmp_path / "run"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with workdir.workdir_lock(tmp_path / "run"):
        assert (tmp_path / "run" / workdir.LOCK_FILE).read_text() == f"{os.getpid()}\n"


# ============================================================================ checkpoints
def _state(value: float) -> dict:
    return {"w": jnp.full((64, 64), value, jnp.float32), "step": jnp.asarray(3, jnp.int32)}


def _abstract() -> dict:
    s = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32, sharding=s),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=s)}


def _save(ckpt: checkpoint.Checkpointer, step: int, value: float) -> None:
    assert ckpt.save(step, _state(value), [{"epoch": 0, "position": step}], {"k": step},
                     force=True)
    ckpt.wait_until_finished()


def _flip(step_dir: Path) -> Path:
    """Flips bytes (same size) in the largest array file of a step."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 16)):
        data[i] ^= 0x5A
    target.write_bytes(bytes(data))
    return target


def test_manifest_is_part_of_the_commit_and_verifies(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        _save(ckpt, 1, 1.0)
        manifest = json.loads((tmp_path / "1" / checkpoint.MANIFEST).read_text())
        assert manifest["finite"] is True
        assert any(f.startswith("state/") for f in manifest["files"])
        assert checkpoint.verify(tmp_path / "1") is None
        assert ckpt.latest_step() == 1
        state, data, config = ckpt.restore(1, _abstract())
        np.testing.assert_array_equal(state["w"], np.ones((64, 64), np.float32))
        assert data == [{"epoch": 0, "position": 1}] and config == {"k": 1}
    finally:
        ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1"]  # no orbax or atomic temporaries


def test_corrupt_latest_step_falls_back_with_a_warning(tmp_path, capsys):
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        _save(ckpt, 1, 1.0)
        _save(ckpt, 2, 2.0)
    finally:
        ckpt.close()
    _flip(tmp_path / "2")
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        with pytest.raises(checkpoint.CheckpointError, match=r"step 2 .* SHA-256"):
            ckpt.restore(2, _abstract())  # restoring a broken step by name: refused
        assert ckpt.latest_step() == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "checkpoint step 2" in err[0] and "using step 1" in err[0]
        state, _, _ = ckpt.restore(1, _abstract())
        np.testing.assert_array_equal(state["w"], np.ones((64, 64), np.float32))
        _save(ckpt, 2, 3.0)  # the step saved anew beside the set-aside copy
        assert ckpt.latest_step() == 2
    finally:
        ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "corrupt-2"]


def test_no_good_step_is_refused_in_one_line(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        _save(ckpt, 5, 1.0)
    finally:
        ckpt.close()
    _flip(tmp_path / "5")
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        with pytest.raises(checkpoint.CheckpointError, match=r"no good checkpoint .*step 5"):
            ckpt.latest_step()
    finally:
        ckpt.close()
    (tmp_path / "5" / checkpoint.MANIFEST).unlink()  # e.g. written by an older albert_jax
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        with pytest.raises(checkpoint.CheckpointError, match="no integrity data"):
            ckpt.latest_step()
    finally:
        ckpt.close()


def test_rotation_never_deletes_the_last_good_step(tmp_path, capsys):
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    try:
        _save(ckpt, 1, 1.0)
        _save(ckpt, 2, 2.0)
        _save(ckpt, 3, 3.0)
        assert ckpt.all_steps() == [2, 3]  # plain rotation
        _save(ckpt, 4, float("nan"))  # non-finite states are saved, but are not good
        _save(ckpt, 5, float("inf"))
        assert ckpt.all_steps() == [3, 4, 5]  # 3, the newest good one, stays
        assert json.loads((tmp_path / "5" / checkpoint.MANIFEST).read_text())["finite"] is False
        assert ckpt.latest_step() == 3
    finally:
        ckpt.close()
    assert "non-finite" in capsys.readouterr().err


# ============================================================================ pretrain
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir() or not SPIECE.is_file(),
                                  reason="the gutenberg corpus or spiece.model is absent")


def _pretrain_cmd(wd: Path, tfds: Path, steps: int) -> list[str]:
    return _cli("pretrain", "--config", str(TINY), "--workdir", str(wd),
                f"--config.num_train_steps={steps}", "--config.log_every=1",
                "--config.checkpoint_every=2", "--config.eval_every=0",
                "--config.mesh.data=1", "--config.data.file_pattern=[cms]*.txt",
                f"--config.data.tfds_data_dir={tfds}")


def _orbax_tmp(wd: Path) -> list[str]:
    d = wd / "checkpoints"
    return [p.name for p in d.iterdir() if "orbax-checkpoint-tmp" in p.name] if d.is_dir() \
        else []


def _committed(wd: Path) -> list[int]:
    d = wd / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    from albert_jax import cli
    from albert_jax.training import pretrain

    d = tmp_path_factory.mktemp("tfds")
    config, _ = cli.parse_config_args(["--config", str(TINY), "--workdir", str(d),
                                       "--config.data.file_pattern=[cms]*.txt",
                                       f"--config.data.tfds_data_dir={d}"])
    pretrain.prepare_corpus(config, d)
    return d


@needs_corpus
def test_pretrain_lock_kill_mid_save_and_corrupt_checkpoint(tmp_path, tfds_dir):
    wd = tmp_path / "run"
    steps = 8
    proc = subprocess.Popen(_pretrain_cmd(wd, tfds_dir, steps), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = wd / workdir.LOCK_FILE
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.01)
        # A second run on the same workdir is refused at once, naming the holder.
        t0 = time.perf_counter()
        second = subprocess.run(_pretrain_cmd(wd, tfds_dir, steps), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        refused_in = time.perf_counter() - t0
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and f"process {proc.pid}" in err[0] and "Traceback" not in err[0]
        assert proc.poll() is None and not _committed(wd)  # refused long before the first
        # kill -9 while orbax writes a step (its temporary directory exists), once two
        # steps are committed (the newest is then corrupted: the run falls back to the other).
        deadline = time.time() + 180
        while not (len(_committed(wd)) >= 2 and _orbax_tmp(wd)):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_with = _committed(wd)
    assert len(killed_with) >= 2 and max(killed_with) < steps and _orbax_tmp(wd)
    _flip(wd / "checkpoints" / str(max(killed_with)))  # and the newest committed step rots
    done = subprocess.run(_pretrain_cmd(wd, tfds_dir, steps), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    warning = [x for x in done.stderr.splitlines() if "warning: checkpoint step" in x]
    assert len(warning) == 1 and f"step {max(killed_with)} " in warning[0]
    assert f"using step {killed_with[-2]}" in warning[0]
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) for r in records)
    assert _orbax_tmp(wd) == [] and _ours(wd) == [] and _ours(wd / "checkpoints") == []
    assert max(_committed(wd)) == steps
    assert checkpoint.verify(wd / "checkpoints" / str(steps)) is None
    print(f"second run refused in {refused_in:.2f} s; killed with steps {killed_with}")


@pytest.mark.slow
@needs_corpus
@pytest.mark.parametrize("seed", range(4))
def test_pretrain_killed_at_random_times_resumes_cleanly(tmp_path, tfds_dir, seed):
    """Several kills at seeded random delays after the first committed step, then a run to
    the end: every step logged once, finite, no temporaries left."""
    rng = random.Random(seed)
    wd = tmp_path / "run"
    steps = 12
    for _ in range(3):
        _kill_when(_pretrain_cmd(wd, tfds_dir, steps), lambda: bool(_committed(wd)),
                   rng.uniform(0.0, 3.0), timeout=300)
    done = subprocess.run(_pretrain_cmd(wd, tfds_dir, steps), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert _orbax_tmp(wd) == [] and _ours(wd) == []
