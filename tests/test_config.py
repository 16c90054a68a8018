"""AlbertConfig: presets, validation, Hugging Face dict round trip."""

from __future__ import annotations

import json

import pytest
import transformers

from albert_jax.config import PRESETS, AlbertConfig, ConfigError


def test_presets_cover_the_family():
    assert set(PRESETS) == {f"albert-{s}-{v}" for s in ("base", "large", "xlarge", "xxlarge")
                            for v in ("v1", "v2")}
    xxl = AlbertConfig.from_pretrained("albert/albert-xxlarge-v2")
    assert (xxl.hidden_size, xxl.num_attention_heads, xxl.intermediate_size,
            xxl.num_hidden_layers) == (4096, 64, 16384, 12)
    assert PRESETS["albert-large-v1"].hidden_act == "gelu"
    assert PRESETS["albert-large-v2"].hidden_act == "gelu_new"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(hidden_size=100, num_attention_heads=12), "not divisible by num_attention_heads"),
        (dict(num_hidden_layers=12, num_hidden_groups=5), "not divisible by num_hidden_groups"),
        (dict(hidden_act="gelu_newest"), "unknown hidden_act 'gelu_newest'"),
        (dict(position_embedding_type="relative_key"), "position_embedding_type"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(remat="sometimes"), "remat must be one of"),
        # Wrong types, as a hand-edited config.json holds them: named, never a TypeError
        # deep inside (or, for a flag, a string that silently counts as true).
        (dict(hidden_size="768"), "hidden_size must be a positive integer, got '768'"),
        (dict(hidden_size=768.0), "hidden_size must be a positive integer"),
        (dict(layer_norm_eps="1e-12"), "layer_norm_eps must be a number, got '1e-12'"),
        (dict(hidden_dropout_prob=None), "hidden_dropout_prob must be a number"),
        (dict(initializer_range=float("nan")), "initializer_range must be a number"),
        (dict(tie_word_embeddings="false"), "tie_word_embeddings must be true or false"),
        (dict(pad_token_id=-1), "pad_token_id must be a non-negative integer"),
        (dict(hidden_act=["gelu"]), "hidden_act must be a string"),
        (dict(hidden_size="x" * 500), r"got 'x{56}\.\.\.$"),  # The bad value is shortened.
    ],
)
def test_validation_names_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        AlbertConfig(**changes)


def test_several_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        AlbertConfig(hidden_act="nope", num_hidden_groups=5)
    assert "hidden_act" in str(info.value) and "num_hidden_groups" in str(info.value)


def test_hf_dict_round_trip_with_transformers(tmp_path):
    hf = transformers.AlbertConfig(hidden_size=64, num_attention_heads=4, num_hidden_groups=2,
                                   inner_group_num=3, num_hidden_layers=6, num_labels=5,
                                   hidden_act="gelu")
    ours = AlbertConfig.from_hf_dict(hf.to_dict())
    assert (ours.num_hidden_groups, ours.inner_group_num, ours.num_labels) == (2, 3, 5)
    ours.save(tmp_path)
    back = transformers.AlbertConfig.from_pretrained(tmp_path)
    for key in ("hidden_size", "num_hidden_groups", "inner_group_num", "hidden_act",
                "num_labels", "layer_norm_eps", "classifier_dropout_prob"):
        assert getattr(back, key) == getattr(hf, key), key
    assert AlbertConfig.from_pretrained(tmp_path) == ours


def test_runtime_fields_stay_out_of_hf_files(tmp_path):
    cfg = AlbertConfig(dtype="bfloat16", scan_layers=False)
    cfg.save(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert "dtype" not in data and "scan_layers" not in data
    assert AlbertConfig.from_pretrained(tmp_path, dtype="bfloat16").dtype == "bfloat16"


def test_bad_config_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AlbertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not an ALBERT config"):
        AlbertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "must hold a JSON object, not a list"),
        (b'{"hidden_act": "gelu\xff"}', "is not UTF-8 text"),
        (b"{", "is not valid JSON"),
        (b'{"id2label": 3}', "id2label must be an object"),
        (b'{"model_type": "bert"}', "not an ALBERT config"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        AlbertConfig.from_json_file(path)
    assert str(path) in str(info.value)
