"""The persistent compilation cache of the commands: on by default, movable, switchable off,
and a damaged entry is ignored with one warning line (then replaced), never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import REPO, child_env

from albert_jax import compile_cache

MINI = str(Path(compile_cache.__file__).parent / "models" / "albert-mini")
TEXT = "where is my [MASK]?"


@pytest.fixture
def fill_mask(forked_cli):
    """The real command, each run in a fresh process (a cache is about later processes),
    forked from an interpreter that has imported JAX (tests/forkrun.py)."""
    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        done = forked_cli.run(["fill-mask", "--model", MINI, *args, TEXT], cwd=REPO,
                              env=child_env(**(env or {})))
        return subprocess.CompletedProcess(done.args, done.returncode,
                                           done.stdout.decode(), done.stderr.decode())

    return run


def step_entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("jit_step-*-cache"))


def intact(path: Path) -> bool:
    try:
        zlib.decompress(path.read_bytes())
    except zlib.error:
        return False
    return True


def test_damaged_entries_are_ignored_and_replaced(tmp_path, fill_mask):
    cache = tmp_path / "xla"
    first = fill_mask("--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    entries = step_entries(cache)
    assert entries, sorted(p.name for p in cache.iterdir())
    assert all(intact(p) for p in entries)

    for mode in ("flipped", "truncated"):
        for path in entries:
            data = bytearray(path.read_bytes())
            if mode == "flipped":  # Same size, bytes flipped all along the file.
                for i in range(64, len(data), 101):
                    data[i] ^= 0xFF
            else:  # A full disk: the file cut short.
                data = data[: len(data) // 3]
            path.write_bytes(bytes(data))
        run = fill_mask("--cache-dir", str(cache))
        assert run.returncode == 0, run.stderr
        assert run.stdout == first.stdout  # The same answer, compiled afresh.
        assert "Traceback" not in run.stderr
        warnings = [line for line in run.stderr.splitlines() if "damaged" in line]
        assert len(warnings) == len(entries), run.stderr
        assert all(w.startswith("albert-jax: warning: damaged compilation cache entry")
                   for w in warnings)
        assert len(run.stderr.strip().splitlines()) == len(entries)  # Nothing else printed.
        # The damaged files were replaced by fresh executables: the next run is quiet.
        assert all(intact(p) for p in step_entries(cache))
        quiet = fill_mask("--cache-dir", str(cache))
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        assert quiet.stdout == first.stdout


def test_default_directory_env_and_switch_off(tmp_path, fill_mask):
    env_dir = tmp_path / "from_env"
    run = fill_mask(env={compile_cache.ENV_VAR: str(env_dir)})
    assert run.returncode == 0, run.stderr
    assert step_entries(env_dir)  # On by default, in $ALBERT_JAX_CACHE_DIR.
    off_dir = tmp_path / "off"
    run = fill_mask("--no-compile-cache", env={compile_cache.ENV_VAR: str(off_dir)})
    assert run.returncode == 0, run.stderr
    assert not off_dir.exists()


def test_cache_dir_that_is_a_file_is_one_line(tmp_path, fill_mask):
    bad = tmp_path / "a_file"
    bad.write_text("not a directory")
    run = fill_mask("--cache-dir", str(bad))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"albert-jax: error: compilation cache directory {bad} is a file, not a directory"]
    assert run.stdout == ""


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert compile_cache.default_cache_dir() == str(tmp_path / "albert_jax" / "xla")
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "elsewhere"))
    assert compile_cache.default_cache_dir() == str(tmp_path / "elsewhere")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only directories")
def test_unwritable_directory_only_warns(tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert compile_cache.enable(ro / "xla") is None
    finally:
        ro.chmod(0o700)
    assert "compilation cache disabled" in caplog.text


def test_a_new_directory_in_the_same_process_takes_effect(tmp_path):
    """JAX keeps the cache it opened first; :func:`enable` with another directory must move
    later entries there (a notebook's second Engine(cache_dir=...), the suite's processes)."""
    import jax
    import numpy as np

    before = compile_cache.enabled_dir()
    x = jax.device_put(np.ones(7, np.float32))
    try:
        for name, scale in (("a", 3.0), ("b", 5.0)):
            assert compile_cache.enable(tmp_path / name) == str(tmp_path / name)
            jax.jit(lambda v, s=scale: v * s)(x).block_until_ready()
        for name in ("a", "b"):  # one program each, none of b's in a
            assert len(list((tmp_path / name).glob("jit__lambda-*-cache"))) == 1, name
    finally:
        if before is not None:
            compile_cache.enable(before)
