"""README "Coming from transformers' FlaxAlbert": every albert_jax cell of the table runs.

The table sits between ``<!-- flax-migration:start -->`` and ``<!-- flax-migration:end -->``.
In each row, the code spans that open the albert_jax cell (before any prose) are the call;
they are executed in table order in one namespace holding what the README promises
(``name``, ``pt_dir``, ``texts``, ``key``, ``save_dir``, ``hf_dir``), and each row's result is
checked below. ``name`` is the bundled albert-mini here (CI has no hub); the calls are the
same for albert-base-v2. The transformers column is checked against transformers 4.x's
Flax classes when that version is installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI_SPIECE = ROOT / "albert_jax" / "models" / "albert-mini" / "spiece.model"
ROW = re.compile(r"^\|\s*(?P<what>[^|]*?)\s*\|\s*(?P<flax>[^|]*?)\s*\|\s*(?P<ours>[^|]*?)\s*\|$")
LEADING_CODE = re.compile(r"^`[^`]+`(?:,\s*`[^`]+`)*")


def table_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split("<!-- flax-migration:start -->", 1)[1].split(
        "<!-- flax-migration:end -->", 1)[0]
    rows = []
    for line in body.strip().splitlines()[2:]:  # header and rule
        m = ROW.match(line.strip())
        assert m, f"not a table row: {line}"
        rows.append((m["what"], m["flax"], m["ours"]))
    return rows


def runnable(cell: str) -> list[str]:
    """The code spans opening an albert_jax cell (empty when it starts with prose)."""
    m = LEADING_CODE.match(cell)
    return re.findall(r"`([^`]+)`", m.group(0)) if m else []


def _run(snippet: str, ns: dict):
    """Executes a statement, or evaluates an expression and returns its value."""
    tree = ast.parse(snippet)
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
        return eval(compile(ast.Expression(tree.body[0].value), "<README>", "eval"), ns)
    exec(compile(tree, "<README>", "exec"), ns)
    return None


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    import flax
    import jax
    import jax.numpy as jnp
    from conftest import TINY, save_hf_model

    import albert_jax

    tmp = tmp_path_factory.mktemp("flax_migration")
    pt_dir = tmp / "pt"
    save_hf_model(pt_dir, "AlbertModel", **TINY)
    if not (pt_dir / "spiece.model").exists():
        shutil.copy(MINI_SPIECE, pt_dir / "spiece.model")
    return dict(albert_jax=albert_jax, jax=jax, jnp=jnp, np=np, flax=flax,
                name="albert-mini", pt_dir=str(pt_dir),
                texts=["Where is my [MASK]?", "A longer second sentence, with a few more words."],
                key=jax.random.key(0), save_dir=str(tmp / "saved"), hf_dir=str(tmp / "hf"),
                pt_config=TINY)


def test_table_has_the_expected_rows():
    labels = [what for what, _, _ in table_rows()]
    assert set(labels) == set(CHECKS) | {"`return_dict=False`", "`position_ids`"}
    for what, _, ours in table_rows():
        assert bool(runnable(ours)) == (what in CHECKS), what


def test_every_albert_jax_cell_runs(namespace):
    import jax

    ns = namespace
    for what, _, ours in table_rows():
        values = [_run(snippet, ns) for snippet in runnable(ours)]
        if what in CHECKS:
            CHECKS[what](ns, values, jax)


# ---------------------------------------------------------------------------- checks per row
def _load(ns, values, jax):
    assert isinstance(ns["model"], ns["albert_jax"].AlbertForMaskedLM)
    assert set(ns["params"]) == {"params"}
    assert isinstance(ns["tokenizer"], ns["albert_jax"].AlbertTokenizer)


def _other_heads(ns, values, jax):
    assert isinstance(ns["clf"], ns["albert_jax"].AlbertForSequenceClassification)
    assert ns["clf"].config.num_labels == 3


def _pytorch(ns, values, jax):
    assert isinstance(ns["base"], ns["albert_jax"].AlbertModel)
    assert ns["base"].config.hidden_size == ns["pt_config"]["hidden_size"]


def _tokenizer(ns, values, jax):
    batch = ns["batch"]
    assert {"input_ids", "attention_mask", "token_type_ids"} <= set(batch)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].sum() < \
        batch["attention_mask"][1].sum()


def _call(ns, values, jax):
    b, s = ns["batch"]["input_ids"].shape
    assert ns["out"].logits.shape == (b, s, 30000)
    ns["reference_logits"] = np.asarray(ns["out"].logits)


def _other_weights(ns, values, jax):
    assert values[0].logits.shape == ns["reference_logits"].shape


def _dropout(ns, values, jax):
    assert np.all(np.isfinite(np.asarray(values[0].logits)))


def _hidden(ns, values, jax):
    out, layers = ns["out"], ns["model"].config.num_hidden_layers
    b, s = ns["batch"]["input_ids"].shape
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert out.attentions[0].shape == (b, ns["model"].config.num_attention_heads, s, s)


def _fields(ns, values, jax):
    logits, hidden, attentions = values
    assert logits.ndim == 3 and isinstance(hidden, tuple) and isinstance(attentions, tuple)


def _base_outputs(ns, values, jax):
    assert values[0].shape == (2, ns["pt_config"]["hidden_size"])
    pre, pre_params, _ = ns["albert_jax"].load_pretrained(ns["name"], head="pretraining")
    out = pre.apply(pre_params, ns["batch"]["input_ids"])
    assert out.prediction_logits.shape[-1] == 30000 and out.sop_logits.shape == (2, 2)


def _parameters(ns, values, jax):
    leaves = jax.tree.leaves(ns["plain"])
    assert all(isinstance(x, jax.Array) for x in leaves)
    same = ns["model"].apply(ns["plain"], ns["batch"]["input_ids"]).logits
    ref = ns["model"].apply(ns["params"], ns["batch"]["input_ids"]).logits
    np.testing.assert_array_equal(np.asarray(same), np.asarray(ref))


def _compute_dtype(ns, values, jax):
    assert ns["m16"].config.dtype == "bfloat16"
    assert ns["m16"].apply(ns["p16"], ns["batch"]["input_ids"]).logits.dtype == np.float32


def _param_dtype(ns, values, jax):
    assert {x.dtype for x in jax.tree.leaves(ns["flax"].linen.meta.unbox(ns["pp"]))} == {
        np.dtype("bfloat16")}


def _jit(ns, values, jax):
    logits = ns["forward"](ns["params"], ns["batch"]["input_ids"], ns["batch"][
        "attention_mask"], ns["batch"]["token_type_ids"]).logits
    np.testing.assert_allclose(np.asarray(logits), ns["reference_logits"], atol=1e-5)


def _random_init(ns, values, jax):
    assert set(ns["fresh"]) == {"params"}


def _config(ns, values, jax):
    assert values[0]["model_type"] == "albert" and values[0]["hidden_size"] == \
        ns["model"].config.hidden_size


def _save(ns, values, jax):
    assert (Path(ns["save_dir"]) / "params.safetensors").is_file()
    again, again_params, _ = ns["albert_jax"].load_pretrained(ns["save_dir"])
    b = ns["batch"]
    logits = again.apply(again_params, b["input_ids"], b["attention_mask"],
                         b["token_type_ids"]).logits
    np.testing.assert_array_equal(np.asarray(logits), ns["reference_logits"])


def _to_pytorch(ns, values, jax):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AlbertForMaskedLM.from_pretrained(ns["hf_dir"]).eval()
    b = ns["batch"]
    with torch.no_grad():
        logits = hf(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in b.items()}
                    ).logits.numpy()
    mask = np.asarray(b["attention_mask"], bool)  # padded positions are not compared
    np.testing.assert_allclose(logits[mask], ns["reference_logits"][mask], atol=1e-4)


CHECKS = {
    "load": _load,
    "other heads": _other_heads,
    "PyTorch weights": _pytorch,
    "tokenizer": _tokenizer,
    "call": _call,
    "other weights": _other_weights,
    "dropout": _dropout,
    "hidden states, attentions": _hidden,
    "output fields": _fields,
    "base and pretraining outputs": _base_outputs,
    "parameters": _parameters,
    "compute dtype": _compute_dtype,
    "parameter dtype": _param_dtype,
    "jit": _jit,
    "random init": _random_init,
    "config": _config,
    "save": _save,
    "to PyTorch": _to_pytorch,
}


def test_transformers_column_matches_flax_albert():
    """The FlaxAlbert side names real classes and arguments (transformers 4.x with Flax).

    Checked in a subprocess: conftest turns transformers' Flax models off (USE_FLAX=0)."""
    transformers = pytest.importorskip("transformers")
    flax_column = " ".join(flax for _, flax, _ in table_rows())
    classes = sorted(set(re.findall(r"FlaxAlbert\w+", flax_column)))
    script = f"""
import inspect, json, transformers
from transformers.utils import is_flax_available
out = {{"flax": is_flax_available() and hasattr(transformers, "FlaxAlbertForMaskedLM")}}
if out["flax"]:
    m = transformers.FlaxAlbertForMaskedLM
    out["classes"] = {{c: hasattr(transformers, c) for c in {classes!r}}}
    out["call"] = list(inspect.signature(m.__call__).parameters)
    out["save"] = list(inspect.signature(m.save_pretrained).parameters)
    out["to_bf16"] = hasattr(m, "to_bf16")
print(json.dumps(out))
"""
    env = dict(os.environ, USE_FLAX="1", USE_TF="0", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["flax"]:
        pytest.skip(f"transformers {transformers.__version__} has no Flax ALBERT")
    assert all(out["classes"].values()), out["classes"]
    for arg in ("params", "train", "dropout_rng", "output_hidden_states", "output_attentions",
                "return_dict", "position_ids"):
        assert arg in out["call"], arg
    assert "params" in out["save"] and out["to_bf16"]
