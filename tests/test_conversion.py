"""Checkpoint conversion and loading against checkpoints written by transformers."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from conftest import SPIECE, model_atol
from safetensors.numpy import load_file, save_file

from albert_jax import conversion
from albert_jax.conversion import (
    ConversionError,
    flax_to_hf_key,
    hf_to_flax_key,
    load_hf_state_dict,
)
from albert_jax.pretrained import load_model, load_pretrained
from albert_jax.sources import convert

# Small but not degenerate: 2 layer applications sharing one layer, vocab of the real spm.
TINY = dict(
    vocab_size=30000,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    initializer_range=0.2,
)
IDS = np.array([[2, 48, 25, 21, 1289, 4, 9, 3], [2, 10, 20, 3, 0, 0, 0, 0]], dtype=np.int32)
MASK = (IDS != 0).astype(np.int32)


def save_hf(directory: Path, model_cls: str = "AlbertForPreTraining", *, safe: bool = True,
            dtype: torch.dtype = torch.float32, seed: int = 0, **config) -> torch.nn.Module:
    """A transformers ALBERT with random weights saved by save_pretrained, plus spiece.model."""
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(transformers.AlbertConfig(**{**TINY, **config}))
    model = model.to(dtype).eval()
    model.save_pretrained(directory, safe_serialization=safe)
    if SPIECE.exists():
        shutil.copy(SPIECE, directory / "spiece.model")
    return model


def flat(params: dict) -> dict[str, np.ndarray]:
    from flax import traverse_util

    tree = nn.meta.unbox(params)["params"]
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def torch_outputs(model: torch.nn.Module) -> object:
    with torch.no_grad():
        return model(torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK))


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """An AlbertForPreTraining checkpoint (pooler, MLM and SOP weights), safetensors."""
    directory = tmp_path_factory.mktemp("pretraining")
    return directory, save_hf(directory)


# ---------------------------------------------------------------------------- key mapping
@pytest.mark.parametrize(
    ("hf", "path", "transpose"),
    [
        ("albert.embeddings.word_embeddings.weight",
         "albert/embeddings/word_embeddings/embedding", False),
        ("embeddings.position_embeddings.weight",
         "albert/embeddings/position_embeddings/embedding", False),
        ("albert.embeddings.LayerNorm.weight", "albert/embeddings/LayerNorm/scale", False),
        ("albert.embeddings.LayerNorm.gamma", "albert/embeddings/LayerNorm/scale", False),
        ("albert.embeddings.LayerNorm.beta", "albert/embeddings/LayerNorm/bias", False),
        ("albert.encoder.embedding_hidden_mapping_in.weight",
         "albert/encoder/embedding_hidden_mapping_in/kernel", True),
        ("albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
         "albert/encoder/albert_layer_groups_0/albert_layers_0/attention/query/kernel", True),
        ("encoder.albert_layer_groups.1.albert_layers.2.full_layer_layer_norm.gamma",
         "albert/encoder/albert_layer_groups_1/albert_layers_2/full_layer_layer_norm/scale",
         False),
        ("albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output.bias",
         "albert/encoder/albert_layer_groups_0/albert_layers_0/ffn_output/bias", False),
        ("albert.pooler.weight", "albert/pooler/kernel", True),
        ("predictions.bias", "predictions/bias", False),
        ("predictions.LayerNorm.weight", "predictions/LayerNorm/scale", False),
        ("predictions.dense.weight", "predictions/dense/kernel", True),
        ("sop_classifier.classifier.weight", "sop_classifier/classifier/kernel", True),
        ("classifier.bias", "classifier/bias", False),
        ("qa_outputs.weight", "qa_outputs/kernel", True),
    ],
)
def test_key_mapping(hf: str, path: str, transpose: bool) -> None:
    assert hf_to_flax_key(hf) == (path, transpose)
    canonical = hf.replace("gamma", "weight").replace("beta", "bias")
    prefix = "" if hf.startswith(("embeddings", "encoder")) else "albert."
    assert flax_to_hf_key(path, backbone_prefix=prefix) == (canonical, transpose)


def test_key_mapping_buffers_and_unknown_names() -> None:
    assert hf_to_flax_key("albert.embeddings.position_ids") is None
    for bad in ("foo.weight", "albert.encoder.ffn.running_mean", "bias"):
        with pytest.raises(KeyError):
            hf_to_flax_key(bad)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_round_trip_hf_albert_jax_hf_is_bit_identical(tmp_path: Path, dtype) -> None:
    save_hf(tmp_path / "hf", dtype=dtype)
    convert(tmp_path / "hf", tmp_path / "aj")
    convert(tmp_path / "aj", tmp_path / "back", to="hf")

    source = load_file(tmp_path / "hf" / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(source)
    for key, value in source.items():
        assert back[key].dtype == value.dtype, key
        assert back[key].shape == value.shape, key
        assert back[key].tobytes() == value.tobytes(), key

    # The albert_jax files: Flax paths, Flax layout, the stored dtype, every head present.
    params = load_file(tmp_path / "aj" / "params.safetensors")
    assert len(params) == len(source)
    kernel = params["albert/encoder/albert_layer_groups_0/albert_layers_0/ffn/kernel"]
    weight = source["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"]
    assert kernel.shape == (16, 32) and np.array_equal(kernel, weight.T)
    assert kernel.dtype == (np.float32 if dtype == torch.float32 else ml_dtypes.bfloat16)
    meta = (tmp_path / "aj" / "albert_jax.json").read_text()
    assert '"heads": [\n    "base",\n    "masked_lm",\n    "pretraining"\n  ]' in meta
    config = transformers.AlbertConfig.from_pretrained(tmp_path / "back")
    assert config.architectures == ["AlbertForPreTraining"]
    if SPIECE.exists():
        assert (tmp_path / "aj" / "spiece.model").read_bytes() == SPIECE.read_bytes()
        assert (tmp_path / "back" / "spiece.model").read_bytes() == SPIECE.read_bytes()


def test_convert_to_hf_loads_in_transformers_with_identical_logits(tmp_path: Path) -> None:
    source = save_hf(tmp_path / "hf", "AlbertForMaskedLM", seed=1)
    convert(tmp_path / "hf", tmp_path / "aj")
    dest = convert(tmp_path / "aj", tmp_path / "out", to="hf")
    model, info = transformers.AlbertForMaskedLM.from_pretrained(dest, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == []
    assert torch.equal(torch_outputs(model.eval()).logits, torch_outputs(source).logits)


def test_albert_model_save_without_prefix(tmp_path: Path) -> None:
    """AlbertModel files name the backbone without "albert."; both directions keep that."""
    source = save_hf(tmp_path / "hf", "AlbertModel", seed=2)
    state = load_file(tmp_path / "hf" / "model.safetensors")
    assert not any(k.startswith("albert.") for k in state)
    model, params = load_model(tmp_path / "hf", head="base")
    got = flat(params)
    for key, value in state.items():
        path, transpose = hf_to_flax_key(key)
        assert np.array_equal(got[path], value.T if transpose else value), key

    out = model.apply(params, jnp.asarray(IDS), jnp.asarray(MASK))
    ref = torch_outputs(source)
    # XLA against PyTorch: rounding only, within what float32 allows for the forward pass.
    for ours, theirs in ((out.last_hidden_state, ref.last_hidden_state),
                         (out.pooler_output, ref.pooler_output)):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=model_atol(theirs, **TINY))

    convert(tmp_path / "hf", tmp_path / "back", to="hf")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(state)
    assert transformers.AlbertConfig.from_pretrained(tmp_path / "back").architectures == [
        "AlbertModel"
    ]


def test_gamma_beta_names(pretraining, tmp_path: Path) -> None:
    directory, _ = pretraining
    state = load_file(directory / "model.safetensors")
    renamed = {}
    for key, value in state.items():
        if "LayerNorm" in key or "layer_norm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[key] = value
    assert any(k.endswith(".gamma") for k in renamed)
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})

    _, expected = load_model(directory, head="pretraining")
    _, params = load_model(tmp_path, head="pretraining")
    want, got = flat(expected), flat(params)
    assert sorted(got) == sorted(want)
    for path in want:
        assert np.array_equal(got[path], want[path]), path


# ---------------------------------------------------------------------------- missing weights
def test_missing_sop_weights_are_initialised_with_a_notice(pretraining, tmp_path, caplog):
    directory, _ = pretraining
    state = load_file(directory / "model.safetensors")
    hub_like = {k: v for k, v in state.items() if not k.startswith("sop_classifier.")}
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    save_file(hub_like, tmp_path / "model.safetensors", metadata={"format": "pt"})

    _, full = load_model(directory, head="pretraining")
    with caplog.at_level(logging.WARNING, logger="albert_jax"):
        _, params = load_model(tmp_path, head="pretraining", rng_seed=3)
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert notices == [
        "sop_classifier.classifier.{weight,bias} not in the checkpoint "
        "(hub files carry no SOP weights): initialised randomly"
    ]
    want, got = flat(full), flat(params)
    for path in want:
        if not path.startswith("sop_classifier/"):
            assert np.array_equal(got[path], want[path]), path
    kernel = got["sop_classifier/classifier/kernel"]
    assert kernel.shape == (16, 2) and 0.05 < kernel.std() < 0.5  # normal(initializer_range)
    assert not np.array_equal(kernel, want["sop_classifier/classifier/kernel"])
    assert np.all(got["sop_classifier/classifier/bias"] == 0)
    _, again = load_model(tmp_path, head="pretraining", rng_seed=3)
    assert np.array_equal(flat(again)["sop_classifier/classifier/kernel"], kernel)


def test_masked_lm_save_as_classifier(tmp_path: Path, caplog) -> None:
    """MLM weights are dropped silently; the pooler and classifier are new (one notice)."""
    save_hf(tmp_path, "AlbertForMaskedLM")
    with caplog.at_level(logging.INFO, logger="albert_jax"):
        _, params = load_model(tmp_path, head="sequence_classification", num_labels=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "albert.pooler.{weight,bias} not in the checkpoint" in warnings[0]
    assert "classifier.{weight,bias} not in the checkpoint (a new task head)" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("predictions.bias" in m and "dropped" in m for m in infos)
    got = flat(params)
    assert got["classifier/kernel"].shape == (16, 3)
    assert not any(p.startswith("predictions/") for p in got)


# ---------------------------------------------------------------------------- errors
def test_truncated_safetensors_names_the_file(pretraining, tmp_path: Path) -> None:
    directory, _ = pretraining
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    data = (directory / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"model\.safetensors") as e:
        load_model(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(e.value)

    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConversionError, match=r"pytorch_model\.bin"):
        load_model(tmp_path)


def test_one_error_lists_every_offending_key(pretraining, tmp_path: Path) -> None:
    directory, _ = pretraining
    state = dict(load_file(directory / "model.safetensors"))
    state["albert.encoder.embedding_hidden_mapping_in.weight"] = np.zeros((16, 9), np.float32)
    state["albert.encoder.extra.weight"] = np.zeros((2, 2), np.float32)
    state["foo.running_mean"] = np.zeros(2, np.float32)
    del state["predictions.dense.bias"]
    del state["albert.embeddings.LayerNorm.weight"]
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ConversionError) as e:
        load_model(tmp_path, head="pretraining")
    message = str(e.value)
    assert "5 problems" in message
    assert ("shape mismatch for albert.encoder.embedding_hidden_mapping_in.weight: "
            "checkpoint [16, 9], model [16, 8]") in message
    assert "unexpected key albert.encoder.extra.weight" in message
    assert "unexpected key foo.running_mean" in message
    assert "missing key predictions.dense.bias" in message
    assert "missing key albert.embeddings.LayerNorm.weight" in message
    # convert validates too, and writes nothing.
    with pytest.raises(ConversionError, match="5 problems"):
        convert(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_overrides_that_change_shapes_are_reported(pretraining) -> None:
    directory, _ = pretraining
    with pytest.raises(ConversionError, match=r"checkpoint \[30000, 8\], model \[100, 8\]"):
        load_model(directory, head="masked_lm", vocab_size=100)
    with pytest.raises(ValueError, match="unknown head"):
        load_model(directory, head="nope")
    with pytest.raises(TypeError, match="hidden_sise"):
        load_model(directory, hidden_sise=3)


# ---------------------------------------------------------------------------- .bin files
def test_bin_checkpoints(pretraining, tmp_path: Path) -> None:
    directory, source = pretraining
    source.save_pretrained(tmp_path / "bin", safe_serialization=False)
    state = load_hf_state_dict(tmp_path / "bin" / "pytorch_model.bin")
    reference = load_file(directory / "model.safetensors")
    # .bin files also hold the tied decoder tensors; they are checked, then skipped.
    assert set(state) == set(reference) | {"predictions.decoder.weight",
                                           "predictions.decoder.bias"}
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key
    _, from_bin = load_model(tmp_path / "bin", head="pretraining")
    _, from_st = load_model(directory, head="pretraining")
    want, got = flat(from_st), flat(from_bin)
    assert all(np.array_equal(got[p], want[p]) for p in want)

    # bfloat16 survives torch -> numpy bit for bit.
    bf16 = copy.deepcopy(source).to(torch.bfloat16)  # .to() converts in place.
    bf16.save_pretrained(tmp_path / "bf16", safe_serialization=False)
    state = load_hf_state_dict(tmp_path / "bf16" / "pytorch_model.bin")
    ln = state["albert.embeddings.LayerNorm.weight"]
    assert ln.dtype == ml_dtypes.bfloat16
    want_ln = bf16.state_dict()["albert.embeddings.LayerNorm.weight"]
    assert ln.tobytes() == want_ln.view(torch.int16).numpy().tobytes()

    # An inconsistent tied decoder is an error, not silently ignored.
    tampered = {k: torch.from_numpy(np.array(v)) for k, v in load_hf_state_dict(
        tmp_path / "bin" / "pytorch_model.bin").items()}
    tampered["predictions.decoder.weight"] = tampered["predictions.decoder.weight"] + 1
    torch.save(tampered, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"predictions\.decoder\.weight differs"):
        load_model(tmp_path / "bin")


def test_bin_without_torch_says_how_to_install(pretraining, tmp_path, monkeypatch) -> None:
    import builtins

    _, source = pretraining
    source.save_pretrained(tmp_path, safe_serialization=False)
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"pip install 'albert_jax\[torch\]'"):
        load_hf_state_dict(tmp_path / "pytorch_model.bin")


# ---------------------------------------------------------------------------- writing
def test_convert_is_atomic_and_refuses_to_overwrite(pretraining, tmp_path, monkeypatch) -> None:
    directory, _ = pretraining
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(directory, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]

    # A failure half-way leaves dest as it was and no temporary directory behind.
    def fail(directory, *args, **kwargs):
        (directory / "params.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(conversion, "_write_albert_jax", fail)
    with pytest.raises(OSError, match="disk full"):
        convert(directory, dest, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    monkeypatch.undo()

    convert(directory, dest, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert not (dest / "keep.txt").exists() and (dest / "params.safetensors").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (dest, *dest.iterdir()):  # Usual permissions, not mkdtemp's / safetensors' 0700.
        mode = 0o777 if path.is_dir() else 0o666
        assert path.stat().st_mode & 0o777 == mode & ~umask, path
    # An empty existing directory needs no overwrite; a file is never replaced.
    (tmp_path / "empty").mkdir()
    convert(dest, tmp_path / "empty", to="hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        convert(dest, tmp_path / "file", overwrite=True)


def test_save_albert_jax_from_a_param_tree(pretraining, tmp_path: Path) -> None:
    directory, _ = pretraining
    model, params = load_model(directory, head="pretraining")
    conversion.save_albert_jax(tmp_path / "aj", params, model.config,
                               tokenizer=directory / "spiece.model" if SPIECE.exists() else None)
    _, again = load_model(tmp_path / "aj", head="pretraining")
    want, got = flat(params), flat(again)
    assert all(np.array_equal(got[p], want[p]) for p in want)


# ---------------------------------------------------------------------------- load_pretrained
def test_load_pretrained_matches_torch_and_is_boxed(pretraining, tmp_path: Path) -> None:
    if not SPIECE.exists():
        pytest.skip(f"the real ALBERT spiece.model is absent ({SPIECE})")
    directory, source = pretraining
    model, params, tokenizer = load_pretrained(directory, head="pretraining")
    assert tokenizer.encode("this is a test") == [2, 48, 25, 21, 1289, 3]

    # Boxed exactly like init_params: same tree, same logical axis names.
    init = jax.eval_shape(model.init_params, jax.random.key(0))
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    assert jax.tree.structure(params, is_leaf=is_box) == jax.tree.structure(init, is_leaf=is_box)
    names = [x.names for x in jax.tree.leaves(params, is_leaf=is_box)]
    assert names == [x.names for x in jax.tree.leaves(init, is_leaf=is_box)]

    out = model.apply(params, jnp.asarray(IDS), jnp.asarray(MASK))
    ref = torch_outputs(source)
    valid = MASK.astype(bool)
    theirs = ref.prediction_logits.numpy()[valid]
    np.testing.assert_allclose(np.asarray(out.prediction_logits)[valid], theirs, rtol=0,
                               atol=model_atol(theirs, **TINY))
    np.testing.assert_allclose(out.sop_logits, ref.sop_logits, rtol=0,
                               atol=model_atol(ref.sop_logits.numpy(), **TINY))

    # An albert_jax directory loads the same parameters; param_dtype casts them.
    convert(directory, tmp_path / "aj")
    _, from_aj, _ = load_pretrained(tmp_path / "aj", head="pretraining")
    assert all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(nn.meta.unbox(from_aj)), jax.tree.leaves(nn.meta.unbox(params)),
        strict=True))
    _, bf16 = load_model(tmp_path / "aj", head="masked_lm", param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(bf16))} == {jnp.dtype(jnp.bfloat16)}


def test_load_pretrained_needs_the_tokenizer(pretraining, tmp_path: Path) -> None:
    directory, _ = pretraining
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no spiece\.model"):
        load_pretrained(tmp_path)
    model, _ = load_model(tmp_path)  # The weights alone load fine.
    assert model.config.hidden_size == 16
