"""Google's TF1 ALBERT checkpoints, against transformers' own TF loader as the oracle.

The checkpoints are written as Google's code writes them: TF1 variables with Google's
names (``bert/...``, ``cls/...``), optimizer slots and ``global_step`` beside them, saved
with ``tf.compat.v1.train.Saver``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")  # CI installs it (the `test` extra).
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from albert_jax import cli, conversion, hub, tf_checkpoint  # noqa: E402
from albert_jax.conversion import ConversionError  # noqa: E402
from albert_jax.pretrained import load_model, load_pretrained  # noqa: E402
from albert_jax.sources import convert, read_weights  # noqa: E402

# The real 30k-clean.model (shipped with albert-mini): ids below are real pieces.
SPIECE = Path(hub.PACKAGED_MODELS_DIR) / "albert-mini" / "spiece.model"
IDS = np.array([[2, 48, 25, 21, 1289, 4, 9, 3], [2, 10, 20, 3, 0, 0, 0, 0]], dtype=np.int32)
MASK = (IDS != 0).astype(np.int32)
TYPES = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]], dtype=np.int32)

# Google's albert_config.json keys (as in its releases), tiny sizes.
GOOGLE = dict(
    attention_probs_dropout_prob=0, hidden_act="gelu", hidden_dropout_prob=0,
    embedding_size=8, hidden_size=16, initializer_range=0.02, intermediate_size=32,
    max_position_embeddings=32, num_attention_heads=2, num_hidden_layers=2,
    num_hidden_groups=1, net_structure_type=0, gap_size=0, num_memory_blocks=0,
    inner_group_num=1, down_scale_factor=1, type_vocab_size=2, vocab_size=30000,
)
LAYER_PARTS = {  # Google's scopes under inner_group_I -> kernel shape [in, out] (hidden, ffn).
    "attention_1/self/query": lambda h, i: (h, h),
    "attention_1/self/key": lambda h, i: (h, h),
    "attention_1/self/value": lambda h, i: (h, h),
    "attention_1/output/dense": lambda h, i: (h, h),
    "ffn_1/intermediate/dense": lambda h, i: (h, i),
    "ffn_1/intermediate/output/dense": lambda h, i: (i, h),
}


def google_variables(cfg: dict, seed: int = 0, *, mapping: bool = True
                     ) -> dict[str, np.ndarray]:
    """Random weights under Google's names and shapes (modeling.py / run_pretraining.py).

    The scale (0.2, LayerNorm gains around 1) keeps the outputs of order 1, so that any
    misplaced weight changes the logits far beyond the tolerance.
    """
    rng = np.random.default_rng(seed)
    e, h, i, v = (cfg["embedding_size"], cfg["hidden_size"], cfg["intermediate_size"],
                  cfg["vocab_size"])

    def w(*shape: int) -> np.ndarray:
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    def norm(scope: str, n: int) -> dict[str, np.ndarray]:
        return {f"{scope}/gamma": (1 + w(n)), f"{scope}/beta": w(n)}

    out = {
        "bert/embeddings/word_embeddings": w(v, e),
        "bert/embeddings/token_type_embeddings": w(cfg["type_vocab_size"], e),
        "bert/embeddings/position_embeddings": w(cfg["max_position_embeddings"], e),
        **norm("bert/embeddings/LayerNorm", e),
        "bert/pooler/dense/kernel": w(h, h), "bert/pooler/dense/bias": w(h),
        "cls/predictions/transform/dense/kernel": w(h, e),
        "cls/predictions/transform/dense/bias": w(e),
        **norm("cls/predictions/transform/LayerNorm", e),
        "cls/predictions/output_bias": w(v),
    }
    if mapping:
        out["bert/encoder/embedding_hidden_mapping_in/kernel"] = w(e, h)
        out["bert/encoder/embedding_hidden_mapping_in/bias"] = w(h)
    for g in range(cfg["num_hidden_groups"]):
        for k in range(cfg["inner_group_num"]):
            scope = f"bert/encoder/transformer/group_{g}/inner_group_{k}"
            for part, shape in LAYER_PARTS.items():
                kernel = shape(h, i)
                out[f"{scope}/{part}/kernel"] = w(*kernel)
                out[f"{scope}/{part}/bias"] = w(kernel[1])
            out.update(norm(f"{scope}/LayerNorm", h))
            out.update(norm(f"{scope}/LayerNorm_1", h))
    out["cls/seq_relationship/output_weights"] = w(2, h)  # [out, in], as Google has it.
    out["cls/seq_relationship/output_bias"] = w(2)
    return out


def write_weights(directory: Path, variables: dict[str, np.ndarray], *,
                     config: dict | None = None, spiece: bool = True,
                     step: int | None = 125000, slots: bool = True,
                     basename: str = "model.ckpt") -> Path:
    """Saves TF1 variables with tf.compat.v1.train.Saver (plus Adam/LAMB slots and
    global_step, as run_pretraining.py leaves them); returns the checkpoint prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        for name, value in variables.items():
            v1.get_variable(name, initializer=value)
            if slots and value.dtype == np.float32:
                for slot in ("adam_m", "adam_v") if value.ndim != 1 else ("lamb_m",):
                    v1.get_variable(f"{name}/{slot}", initializer=np.zeros_like(value))
        v1.train.get_or_create_global_step()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(session, str(directory / basename),
                                           global_step=step)
    if config is not None:
        (directory / "albert_config.json").write_text(json.dumps(config, indent=2))
    if spiece:
        shutil.copy(SPIECE, directory / "30k-clean.model")
    return Path(prefix)


def oracle(directory: Path, variables: dict[str, np.ndarray], hf_config: dict
           ) -> tuple[np.ndarray, np.ndarray]:
    """(MLM logits [B, S, V], SOP logits [B, 2]) of transformers' AlbertForPreTraining
    filled by transformers' load_tf_weights_in_albert.

    Its checkpoint has no optimizer slots: that loader skips adam_m/adam_v but writes
    LAMB's lamb_m zeros over the weights they belong to (its "no attribute" skip only
    leaves the inner loop), the failure users report on their own checkpoints.
    """
    prefix = write_weights(directory, variables, spiece=False, slots=False)
    config = transformers.AlbertConfig(**hf_config)
    model = transformers.AlbertForPreTraining(config).eval()
    transformers.load_tf_weights_in_albert(model, config, str(prefix))
    with torch.no_grad():
        out = model(torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                    token_type_ids=torch.tensor(TYPES, dtype=torch.long))
    return out.prediction_logits.numpy(), out.sop_logits.numpy()


def ours(model, params) -> tuple[np.ndarray, np.ndarray]:
    out = model.apply(params, IDS, MASK, TYPES)
    return np.asarray(out.prediction_logits), np.asarray(out.sop_logits)


def hf_outputs(directory: str) -> tuple[np.ndarray, np.ndarray]:
    model, info = transformers.AlbertForPreTraining.from_pretrained(
        directory, output_loading_info=True)
    assert not any(info.values()), info  # No missing (SOP included), unexpected, mismatched.
    with torch.no_grad():
        out = model.eval()(torch.tensor(IDS, dtype=torch.long),
                           attention_mask=torch.tensor(MASK),
                           token_type_ids=torch.tensor(TYPES, dtype=torch.long))
    return out.prediction_logits.numpy(), out.sop_logits.numpy()


# Both sides compute the same float32 graph with different kernels (summation order, fused
# ops, tanh/erf implementations), each op adding O(eps32 = 1.2e-7) relative error. Against
# transformers run in float64, each side's float32 MLM logits (|logit| <= ~3 here) are off by
# up to ~1.6e-6 and the SOP logits by ~1e-7, so the two float32 results may differ by ~3e-6
# at worst (measured: <= 2.0e-6 MLM, 1.6e-7 SOP). 1e-5 leaves a 5x margin over that, while a
# single transposed square kernel moves the logits by >= 2e-2 (query 0.31, attention output
# 4.1, pooler 1.2 on the SOP logits: measured).
TOLERANCE = 1e-5


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------- names
def test_every_parameter_has_one_google_name() -> None:
    config = conversion.AlbertConfig.from_hf_dict(tf_checkpoint.google_config_to_hf(
        {**GOOGLE, "num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2}))
    paths = set()
    for head in ("pretraining", "sequence_classification"):
        paths |= set(conversion._abstract(config, head))
    names = {p: tf_checkpoint.flax_to_tf_key(p) for p in paths}
    assert len(set(names.values())) == len(paths)
    for path, name in names.items():
        assert tf_checkpoint.tf_to_flax_key(name)[0] == path
        assert tf_checkpoint.tf_to_flax_key("module/" + name)[0] == path  # TF-Hub exports.
    assert names["sop_classifier/classifier/kernel"] == "cls/seq_relationship/output_weights"
    assert tf_checkpoint.tf_to_flax_key("cls/seq_relationship/output_weights")[1] is True
    assert (names["albert/encoder/albert_layer_groups_1/albert_layers_1/full_layer_layer_norm/"
                  "scale"] == "bert/encoder/transformer/group_1/inner_group_1/LayerNorm_1/gamma")
    for state in ("global_step", "bert/pooler/dense/kernel/adam_m",
                  "cls/predictions/output_bias/adam_v", "bert/pooler/dense/bias/lamb_v",
                  "bert/pooler/dense/kernel/Adam_1", "beta1_power"):
        assert tf_checkpoint.tf_to_flax_key(state) is None
    for unknown in ("bert/pooler/dense/gamma", "cls/squad/output_weights", "bert/foo/kernel"):
        with pytest.raises(KeyError):
            tf_checkpoint.tf_to_flax_key(unknown)


def test_google_gelu_is_the_tanh_approximation() -> None:
    """Google's modeling.gelu is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the
    translated activation computes it, the exact-erf "gelu" does not."""
    from albert_jax.model import ACTIVATIONS

    hf = tf_checkpoint.google_config_to_hf(GOOGLE)
    assert hf["hidden_act"] == "gelu_new" and "down_scale_factor" not in hf
    x = np.linspace(-6, 6, 2001)
    google = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    ours = np.asarray(ACTIVATIONS[hf["hidden_act"]](x.astype(np.float32)), np.float64)
    assert np.max(np.abs(ours - google)) < 1e-6  # float32 rounding of values up to 6.
    exact = np.asarray(ACTIVATIONS["gelu"](x.astype(np.float32)), np.float64)
    assert np.max(np.abs(exact - google)) > 1e-4
    # A Hugging Face config.json (model_type set) is taken as it is.
    assert tf_checkpoint.google_config_to_hf(
        {"model_type": "albert", "hidden_act": "gelu"})["hidden_act"] == "gelu"


def test_layer_groups_google_assigns_differently_are_refused() -> None:
    """Google's int(i / L * G) puts layer 15 of 22 in group 14 (float rounding)."""
    config = conversion.AlbertConfig(num_hidden_layers=22, num_hidden_groups=22)
    with pytest.raises(ConversionError, match=r"puts layers \[15\] in groups \[14\]"):
        tf_checkpoint._check_groups(config)
    tf_checkpoint._check_groups(conversion.AlbertConfig(num_hidden_layers=24,
                                                        num_hidden_groups=4))


# ---------------------------------------------------------------------------- the oracle
# (name, albert_config.json, passed with --config as a Hugging Face config.json?)
STRUCTURES = [
    # Every released size's structure: one group of one layer; v2 (no dropout).
    ("v2_one_group", {**GOOGLE}, False),
    # v1: dropout 0.1 (no effect at inference), another depth.
    ("v1_one_group", {**GOOGLE, "hidden_dropout_prob": 0.1,
                      "attention_probs_dropout_prob": 0.1, "num_hidden_layers": 3}, False),
    # Several groups and inner groups, with the hub's v1 config.json (exact-erf "gelu").
    ("groups_inner_groups_v1_hub_gelu",
     {**GOOGLE, "num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2}, True),
    # Three groups, with the hub's v2 config.json ("gelu_new").
    ("three_groups_v2_hub_gelu_new",
     {**GOOGLE, "num_hidden_layers": 6, "num_hidden_groups": 3, "hidden_act": "gelu_new"},
     True),
]


@pytest.mark.parametrize(("name", "google", "as_hf"), STRUCTURES, ids=[s[0] for s in STRUCTURES])
def test_logits_match_transformers_tf_loader(name, google, as_hf, tmp_path: Path) -> None:
    if as_hf:  # A bare prefix with a Hugging Face config.json and a spiece elsewhere.
        hf_config = {**google, "model_type": "albert"}
        for key in ("net_structure_type", "gap_size", "num_memory_blocks", "down_scale_factor"):
            hf_config.pop(key)
        variables = google_variables(google)
        prefix = write_weights(tmp_path / "ckpt", variables, spiece=False)
        config_file = tmp_path / "hf_config.json"
        config_file.write_text(json.dumps(hf_config))
        files = hub.resolve_tf_files(prefix, config=config_file, spiece=SPIECE)
        convert(files, tmp_path / "aj")
        model, params, tokenizer = load_pretrained(tmp_path / "aj", head="pretraining")
    else:  # A directory as released (albert_config.json, model.ckpt-*, 30k-clean.model).
        hf_config = tf_checkpoint.google_config_to_hf(google)
        variables = google_variables(google)
        prefix = write_weights(tmp_path / "ckpt", variables, config=google)
        model, params, tokenizer = load_pretrained(tmp_path / "ckpt", head="pretraining")
    assert model.config.hidden_act == hf_config["hidden_act"]
    assert tokenizer.encode("Hello world")[0] == 2  # [CLS] from the 30k-clean.model.

    expected_mlm, expected_sop = oracle(tmp_path / "oracle", variables, hf_config)
    mlm, sop = ours(model, params)
    assert_close(mlm, expected_mlm)
    assert_close(sop, expected_sop)

    # On to Hugging Face: AlbertForPreTraining with the SOP head, the same logits.
    convert(prefix.parent if not as_hf else tmp_path / "aj", tmp_path / "hf", to="hf")
    hf_mlm, hf_sop = hf_outputs(str(tmp_path / "hf"))
    assert_close(hf_mlm, expected_mlm)
    assert_close(hf_sop, expected_sop)
    assert (tmp_path / "hf" / "spiece.model").read_bytes() == SPIECE.read_bytes()


def test_embedding_size_equal_to_hidden_size_has_no_projection(tmp_path: Path) -> None:
    """Google's code skips embedding_hidden_mapping_in when the sizes agree: the identity
    projection computes the same as transformers given that identity explicitly."""
    google = {**GOOGLE, "embedding_size": 16}
    variables = google_variables(google, mapping=False)
    write_weights(tmp_path / "ckpt", variables, config=google)
    variables["bert/encoder/embedding_hidden_mapping_in/kernel"] = np.eye(16, dtype=np.float32)
    variables["bert/encoder/embedding_hidden_mapping_in/bias"] = np.zeros(16, np.float32)
    model, params = load_model(tmp_path / "ckpt", head="pretraining")
    expected = oracle(tmp_path / "oracle", variables, tf_checkpoint.google_config_to_hf(google))
    for got, want in zip(ours(model, params), expected, strict=True):
        assert_close(got, want)


def test_three_dimensional_attention_kernels_are_reshaped(tmp_path: Path) -> None:
    """[hidden, heads, head_dim] q/k/v kernels ([heads, head_dim] biases) and a
    [heads, head_dim, hidden] output kernel: Google's run-time reshapes, stored."""
    variables = google_variables(GOOGLE)
    write_weights(tmp_path / "flat", variables, config=GOOGLE)
    scope = "bert/encoder/transformer/group_0/inner_group_0/attention_1"
    for part in ("query", "key", "value"):
        variables[f"{scope}/self/{part}/kernel"] = variables[f"{scope}/self/{part}/kernel"
                                                             ].reshape(16, 2, 8)
        variables[f"{scope}/self/{part}/bias"] = variables[f"{scope}/self/{part}/bias"
                                                           ].reshape(2, 8)
    variables[f"{scope}/output/dense/kernel"] = variables[f"{scope}/output/dense/kernel"
                                                          ].reshape(2, 8, 16)
    write_weights(tmp_path / "3d", variables, config=GOOGLE)
    flat = read_weights(tmp_path / "flat").params
    reshaped = read_weights(tmp_path / "3d").params
    assert flat.keys() == reshaped.keys()
    assert all(np.array_equal(flat[k], reshaped[k]) for k in flat)


def test_pretraining_checkpoint_directory_converts_with_every_head(tmp_path: Path) -> None:
    write_weights(tmp_path / "ckpt", google_variables(GOOGLE), config=GOOGLE)
    convert(tmp_path / "ckpt", tmp_path / "aj")
    meta = json.loads((tmp_path / "aj" / "albert_jax.json").read_text())
    assert "pretraining" in meta["heads"]
    written = json.loads((tmp_path / "aj" / "config.json").read_text())
    assert written["architectures"] == ["AlbertForPreTraining"]
    assert written["hidden_act"] == "gelu_new"
    assert (tmp_path / "aj" / "spiece.model").read_bytes() == SPIECE.read_bytes()


def test_fine_tuned_classifier_checkpoint(tmp_path: Path) -> None:
    """run_classifier.py's output_weights [num_labels, hidden] / output_bias at the root:
    the label count comes from the weights; logits as transformers' loader gives them."""
    # A fine-tuning graph has no pretraining heads (cls/...).
    variables = {k: v for k, v in google_variables(GOOGLE).items() if not k.startswith("cls/")}
    variables["output_weights"] = (0.2 * np.random.default_rng(1).standard_normal((3, 16))
                                   ).astype(np.float32)
    variables["output_bias"] = np.array([0.1, -0.2, 0.3], np.float32)
    write_weights(tmp_path / "ckpt", variables, config=GOOGLE)
    model, params = load_model(tmp_path / "ckpt", head="sequence_classification")
    assert model.config.num_labels == 3
    logits = np.asarray(model.apply(params, IDS, MASK, TYPES).logits)

    prefix = write_weights(tmp_path / "oracle", variables, spiece=False, slots=False)
    config = transformers.AlbertConfig(**tf_checkpoint.google_config_to_hf(GOOGLE),
                                       num_labels=3)
    reference = transformers.AlbertForSequenceClassification(config).eval()
    transformers.load_tf_weights_in_albert(reference, config, str(prefix))
    with torch.no_grad():
        expected = reference(torch.tensor(IDS, dtype=torch.long),
                             attention_mask=torch.tensor(MASK),
                             token_type_ids=torch.tensor(TYPES, dtype=torch.long)).logits
    assert_close(logits, expected.numpy())


def test_tf_hub_layout(tmp_path: Path) -> None:
    """TF-Hub exports: variables/variables.*, assets/albert_config.json, names under
    module/."""
    variables = google_variables(GOOGLE)
    write_weights(tmp_path / "hub" / "variables",
                     {f"module/{k}": v for k, v in variables.items()}, spiece=False,
                     step=None, basename="variables")
    (tmp_path / "hub" / "variables" / "checkpoint").unlink()
    (tmp_path / "hub" / "assets").mkdir()
    (tmp_path / "hub" / "assets" / "albert_config.json").write_text(json.dumps(GOOGLE))
    shutil.copy(SPIECE, tmp_path / "hub" / "assets" / "30k-clean.model")
    write_weights(tmp_path / "plain", variables, config=GOOGLE)
    files = hub.resolve_model_files(tmp_path / "hub")
    assert files.format == "tf" and files.tokenizer.endswith("30k-clean.model")
    from_hub = read_weights(files).params
    plain = read_weights(tmp_path / "plain").params
    assert from_hub.keys() == plain.keys()
    assert all(np.array_equal(from_hub[k], plain[k]) for k in plain)


# ---------------------------------------------------------------------------- bad inputs
def _cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_missing_and_mis_shaped_variables_are_one_error(tmp_path: Path, capsys) -> None:
    variables = google_variables(GOOGLE)
    query = "bert/encoder/transformer/group_0/inner_group_0/attention_1/self/query/kernel"
    ffn = "bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel"
    del variables[query]
    variables[ffn] = np.zeros((16, 33), np.float32)
    variables["cls/squad/output_weights"] = np.zeros((2, 16), np.float32)
    variables["cls/seq_relationship/output_weights"] = np.zeros((16, 2), np.float32)
    write_weights(tmp_path / "ckpt", variables, config=GOOGLE)
    with pytest.raises(ConversionError) as e:
        load_model(tmp_path / "ckpt", head="pretraining")
    message = str(e.value)
    assert "4 problems" in message
    assert f"missing key {query}" in message
    assert f"shape mismatch for {ffn}: checkpoint [16, 33], model [16, 32]" in message
    assert ("shape mismatch for cls/seq_relationship/output_weights: checkpoint [16, 2], "
            "model [2, 16]") in message
    assert "unexpected key cls/squad/output_weights [2, 16]" in message

    code, err = _cli(["convert", "--from", "tf", str(tmp_path / "ckpt"), str(tmp_path / "out")],
                     capsys)
    assert code == 2 and len(err) == 1 and "4 problems" in err[0] and query in err[0]
    assert not (tmp_path / "out").exists()


def test_config_that_disagrees_with_the_checkpoint(tmp_path: Path, capsys) -> None:
    write_weights(tmp_path / "ckpt", google_variables(GOOGLE),
                     config={**GOOGLE, "hidden_size": 32, "num_hidden_groups": 2})
    code, err = _cli(["convert", str(tmp_path / "ckpt"), str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and "does not fit" in err[0]
    assert not (tmp_path / "out").exists()
    # The command line shortens a long error line; the exception names every key.
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "ckpt", tmp_path / "out")
    assert ("shape mismatch for bert/pooler/dense/kernel: checkpoint [16, 16], model "
            "[32, 32]") in str(error.value)
    assert ("missing key bert/encoder/transformer/group_1/inner_group_0/attention_1/self/"
            "query/kernel") in str(error.value)


def test_truncated_data_file_is_one_line(tmp_path: Path) -> None:
    """A fresh process, so that TensorFlow's start-up output would show: one line only."""
    prefix = write_weights(tmp_path / "ckpt", google_variables(GOOGLE), config=GOOGLE)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "albert_jax.cli", "convert", "--from", "tf", str(prefix),
         str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "truncated or corrupt" in lines[0] and str(prefix) in lines[0]
    assert not (tmp_path / "out").exists()


def test_files_that_cannot_be_found(tmp_path: Path, capsys) -> None:
    prefix = write_weights(tmp_path / "ckpt", google_variables(GOOGLE), spiece=False)
    out = str(tmp_path / "out")
    code, err = _cli(["convert", "--from", "tf", str(prefix), out], capsys)
    assert code == 2 and len(err) == 1 and "no albert_config.json" in err[0]
    assert "--config" in err[0]
    code, err = _cli(["convert", "--config", str(tmp_path / "c.json"), str(prefix), out], capsys)
    assert code == 2 and err == ["albert-jax: error: --config and --spiece are for --from tf"]
    code, err = _cli(["convert", "--from", "tf", str(tmp_path / "model.ckpt-9"), out], capsys)
    assert code == 2 and len(err) == 1 and "no model.ckpt-9.index" in err[0]
    # Two checkpoints and no `checkpoint` state file naming one: ask for the prefix.
    write_weights(tmp_path / "ckpt", google_variables(GOOGLE), step=7, config=GOOGLE,
                     spiece=False)
    (tmp_path / "ckpt" / "checkpoint").unlink()
    code, err = _cli(["convert", "--from", "tf", str(tmp_path / "ckpt"), out], capsys)
    assert code == 2 and len(err) == 1 and "several checkpoints" in err[0]
    # The prefix of one, or one of its files, with the config beside it.
    code, err = _cli(["convert", "--from", "tf", f"{prefix}.index", out], capsys)
    assert code == 0, err
    assert not (tmp_path / "out" / "spiece.model").exists()  # None was there to copy.


def test_without_tensorflow_says_what_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    write_weights(tmp_path / "ckpt", google_variables(GOOGLE), config=GOOGLE)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails.
    code, err = _cli(["convert", str(tmp_path / "ckpt"), str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1
    assert "pip install 'albert_jax[tf]'" in err[0]
