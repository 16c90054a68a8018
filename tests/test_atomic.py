"""albert_jax.atomic: whole or nothing, fresh exclusive temporaries, no symlink followed."""

from __future__ import annotations

import json
import os
import stat

import pytest

from albert_jax import atomic
from albert_jax.training import trainer


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_file_replaces_whole_and_gets_umask_mode(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with atomic.atomic_file(target) as f:
        f.write("new\n")
        assert target.read_text() == "old\n"  # nothing visible before the end
    assert target.read_text() == "new\n"
    assert _listing(tmp_path) == ["out.jsonl"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_error_leaves_target_and_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_file(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["out.jsonl"]


def test_missing_directory_and_directory_target_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no directory"):
        atomic.write_text(tmp_path / "nope" / "x.json", "{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic.write_text(tmp_path / "d", "{}")


@pytest.mark.parametrize("old_temp", [".preds.jsonl.tmp", "preds.tmp", "preds.jsonl.tmp"])
def test_planted_symlink_at_the_old_fixed_temp_name_is_not_followed(tmp_path, old_temp):
    """The writers used fixed temporary names (predict: ``.NAME.tmp``; metrics.jsonl:
    ``NAME.jsonl.tmp``; best.json / finetune_config.json: ``NAME.tmp``): a symlink planted
    there made them overwrite its target. Now nothing at any fixed name is touched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / old_temp).symlink_to(victim)
    atomic.write_text(tmp_path / "preds.jsonl", "result\n")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "preds.jsonl").read_text() == "result\n"
    assert (tmp_path / old_temp).is_symlink()  # left alone


def test_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "best.json").symlink_to(victim)
    atomic.write_text(tmp_path / "best.json", "{}\n")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "best.json").is_symlink()


def test_metrics_truncation_ignores_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "metrics.jsonl.tmp").symlink_to(victim)  # the old fixed name
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    trainer.truncate_metrics(path, 3)
    assert [r["step"] for r in trainer.read_metrics(tmp_path)] == [1, 2, 3]
    assert victim.read_text() == "precious\n"


def test_directory_is_whole_or_absent(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic.atomic_directory(dest) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed")
    assert _listing(tmp_path) == []
    with atomic.atomic_directory(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".model.")
        (tmp / "config.json").write_text("{}")
    assert _listing(dest) == ["config.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask
    with pytest.raises(FileExistsError, match="--overwrite"), atomic.atomic_directory(dest):
        pass
    with atomic.atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "weights").write_text("w")
    assert _listing(dest) == ["weights"]
    assert _listing(tmp_path) == ["model"]  # no temporary or renamed-aside copy left


def test_directory_fresh_name_ignores_planted_symlink(tmp_path):
    """conversion's old temporaries had a short random suffix; a planted symlink to another
    directory at any such name is neither followed nor written into."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".model.tmp").symlink_to(elsewhere)
    with atomic.atomic_directory(tmp_path / "model") as tmp:
        (tmp / "f").write_text("x")
    assert _listing(elsewhere) == []
    assert (tmp_path / "model" / "f").read_text() == "x"
