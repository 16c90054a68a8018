"""Model file resolution: local paths, the Hugging Face cache layout, offline errors.

No test touches the network: the hub cache is a tmp directory and offline mode is on (or
the endpoint is a closed local port).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import SPIECE

from albert_jax import hub
from albert_jax.hub import ModelNotFoundError, is_cached, resolve_file, resolve_model_files
from albert_jax.pretrained import load_model, load_pretrained
from albert_jax.sources import convert

TINY = dict(vocab_size=30000, embedding_size=8, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache in tmp_path, offline mode on."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read these variables when it was imported; patch its constants too,
    # so that nothing it does by itself can reach the real cache or the network.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny AlbertForMaskedLM saved by transformers (safetensors and .bin)."""
    directory = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**TINY))
    model.save_pretrained(directory)
    model.save_pretrained(directory, safe_serialization=False)
    if SPIECE.exists():
        shutil.copy(SPIECE, directory / "spiece.model")
    return directory


def fake_snapshot(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lays files out as huggingface_hub does: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def unboxed(params: dict) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nn.meta.unbox(params))]


def test_repo_candidates() -> None:
    assert hub.repo_candidates("albert-base-v2") == ["albert/albert-base-v2", "albert-base-v2"]
    assert hub.repo_candidates("albert/albert-base-v2") == [
        "albert/albert-base-v2", "albert-base-v2"
    ]
    assert hub.repo_candidates("someone/my-albert") == ["someone/my-albert"]
    for not_a_name in ("./missing", "/abs/missing", "a/b/c", "bad--name"):
        with pytest.raises(ModelNotFoundError):
            hub.repo_candidates(not_a_name)


def test_local_paths_are_used_as_is(hf_dir: Path, hf_cache: Path) -> None:
    assert resolve_file(hf_dir, "config.json") == str(hf_dir / "config.json")
    weights = hf_dir / "model.safetensors"
    assert resolve_file(weights, "model.safetensors") == str(weights)
    assert resolve_file(weights, "config.json") == str(hf_dir / "config.json")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_file(hf_dir, "tokenizer.json")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_file(hf_dir / "missing", "config.json")
    files = resolve_model_files(hf_dir)
    assert files.format == "hf" and files.weights == (str(weights),)  # safetensors first
    assert is_cached(hf_dir)
    assert not is_cached(hf_dir / "missing")


@pytest.mark.parametrize("name", ["albert-base-v2", "albert/albert-base-v2"])
def test_offline_with_an_empty_cache_is_one_clear_error(hf_cache: Path, name: str) -> None:
    assert not is_cached(name)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_file(name, "config.json")
    message = str(e.value)
    assert isinstance(e.value, OSError) and "\n" not in message
    assert f"'{name}'" in message and str(hf_cache) in message
    assert "offline mode is on" in message and "local directory" in message
    with pytest.raises(ModelNotFoundError, match="offline mode is on"):
        load_pretrained(name)


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # Nothing listens on port 9.
    for var in hub._PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "_probe_cache", {})
    with pytest.raises(ModelNotFoundError, match="the hub could not be reached") as e:
        resolve_file("albert-base-v2", "config.json")
    assert "127.0.0.1:9" in str(e.value)


def test_cached_snapshot_resolves_offline(hf_dir: Path, hf_cache: Path, tmp_path: Path) -> None:
    files = {n: hf_dir / n for n in ("config.json", "model.safetensors", "spiece.model")
             if (hf_dir / n).exists()}
    snapshot = fake_snapshot(hf_cache, "albert/albert-base-v2", files)
    for name in ("albert-base-v2", "albert/albert-base-v2"):
        assert resolve_file(name, "config.json") == str(snapshot / "config.json")
        assert is_cached(name)
    resolved = resolve_model_files("albert-base-v2")
    assert resolved.format == "hf"
    assert resolved.weights == (str(snapshot / "model.safetensors"),)
    assert hub.resolve_model_dir("albert-base-v2") == str(snapshot)

    _, want = load_model(hf_dir)
    _, got = load_model("albert-base-v2")
    assert all(np.array_equal(a, b) for a, b in zip(unboxed(got), unboxed(want), strict=True))
    if SPIECE.exists():
        _, _, tokenizer = load_pretrained("albert/albert-base-v2")
        assert tokenizer.encode("this is a test") == [2, 48, 25, 21, 1289, 3]
    convert("albert-base-v2", tmp_path / "out")
    assert (tmp_path / "out" / "params.safetensors").exists()


def test_legacy_cache_and_bin_fallback(hf_dir: Path, hf_cache: Path) -> None:
    """A cache filled under the legacy bare id, holding only pytorch_model.bin."""
    snapshot = fake_snapshot(hf_cache, "albert-base-v2", {
        "config.json": hf_dir / "config.json",
        "pytorch_model.bin": hf_dir / "pytorch_model.bin",
    })
    assert is_cached("albert-base-v2") and is_cached("albert/albert-base-v2")
    resolved = resolve_model_files("albert/albert-base-v2")
    assert resolved.weights == (str(snapshot / "pytorch_model.bin"),)
    assert resolved.tokenizer is None  # Optional: offline and not cached is not an error.
    _, want = load_model(hf_dir)
    _, got = load_model("albert-base-v2")
    assert all(np.array_equal(a, b) for a, b in zip(unboxed(got), unboxed(want), strict=True))
    with pytest.raises(FileNotFoundError, match=r"no spiece\.model"):
        load_pretrained("albert-base-v2")


def test_cached_config_without_weights_is_not_cached(hf_dir: Path, hf_cache: Path) -> None:
    fake_snapshot(hf_cache, "albert/albert-base-v2", {"config.json": hf_dir / "config.json"})
    assert not is_cached("albert-base-v2")
    with pytest.raises(ModelNotFoundError, match="offline mode is on"):
        resolve_model_files("albert-base-v2")


def test_sharded_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**TINY))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    model.save_pretrained(tmp_path / "single")
    files = resolve_model_files(tmp_path / "sharded")
    assert files.weights[0].endswith(".safetensors") and len(files.weights) > 1
    _, want = load_model(tmp_path / "single")
    _, got = load_model(tmp_path / "sharded")
    assert all(np.array_equal(a, b) for a, b in zip(unboxed(got), unboxed(want), strict=True))


def test_online_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online (simulated): canonical id first, then the legacy id; safetensors before .bin."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "unreachable_reason", lambda: None)
    hosted = {"config.json": b"{}", "pytorch_model.bin": b"", "spiece.model": b""}
    calls = []

    def download(repo: str, filename: str) -> str | None:
        calls.append((repo, filename))
        if repo != "albert-base-v2" or filename not in hosted:
            return None  # Like RepositoryNotFoundError / EntryNotFoundError.
        path = tmp_path / filename
        path.write_bytes(hosted[filename])
        return str(path)

    monkeypatch.setattr(hub, "_download", download)
    files = resolve_model_files("albert-base-v2")
    assert files.format == "hf" and files.weights == (str(tmp_path / "pytorch_model.bin"),)
    assert files.tokenizer == str(tmp_path / "spiece.model")
    assert calls == [
        ("albert/albert-base-v2", "config.json"),
        ("albert-base-v2", "config.json"),
        ("albert-base-v2", "albert_jax.json"),
        ("albert-base-v2", "model.safetensors"),
        ("albert-base-v2", "model.safetensors.index.json"),
        ("albert-base-v2", "pytorch_model.bin"),
        ("albert-base-v2", "spiece.model"),
        ("albert-base-v2", "tokenizer_config.json"),
    ]

    def unreachable(repo: str, filename: str) -> str | None:
        raise ConnectionError("connection reset")

    monkeypatch.setattr(hub, "_download", unreachable)
    with pytest.raises(ModelNotFoundError, match="the hub could not be reached"):
        resolve_file("someone/model", "config.json")
