"""The research notebooks: jupytext pairs in sync and stripped, and each one executed.

``notebooks/NN_name.py`` (jupytext percent format) is the source of truth; the ``.ipynb``
beside it is what Colab opens and must hold the same cells with no outputs (after editing
a ``.py``: ``jupytext --sync notebooks/NN_name.py``). Every notebook is executed with nbclient
in smoke mode (``ALBERT_JAX_SMOKE=1``: albert-mini, small slices, few steps) and the test
checks what it produced: its PNG figures, and the key numbers it writes to
``<figures>/<notebook>.json``.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHARED_DATA = ROOT.parent / "shared" / "data"
NAMES = (
    "01_fill_mask_and_scores",
    "02_finetune_sst2",
    "03_pretrain_from_scratch",
    "04_sharding",
    "05_inside_albert",
)
# Notebooks that read ../shared/data in CI (in Colab they download).
NEEDS_DATA = {"01_fill_mask_and_scores", "02_finetune_sst2", "03_pretrain_from_scratch"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip("\n")) for c in nb.cells]


def test_the_notebook_set_is_complete():
    found = {p.stem for p in NOTEBOOKS.glob("*.py")} | {p.stem for p in
                                                         NOTEBOOKS.glob("*.ipynb")}
    assert found == set(NAMES), "every notebook is a .py/.ipynb pair listed in NAMES"


@pytest.mark.parametrize("name", NAMES)
def test_pair_in_sync_and_stripped(name):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    hint = f"out of sync: run `jupytext --sync notebooks/{name}.py`"
    assert _cells(ipynb) == _cells(py), hint
    assert ipynb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(ipynb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs") == [], f"{name}.ipynb cell {i} holds outputs"
            assert cell.get("execution_count") is None, f"{name}.ipynb cell {i} was executed"
    # A story, not a cell dump: prose between the code.
    kinds = [c.cell_type for c in ipynb.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 5


def test_colab_repository_is_one_value():
    """The README declares the GitHub repository once; badges and clone cells use it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    declared = re.search(r"GITHUB_REPO = `([^`]+)`", readme)
    assert declared, "the README's Notebooks section declares GITHUB_REPO = `owner/name`"
    repo = declared.group(1)
    badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/[^/]+/"
                        r"notebooks/(\w+)\.ipynb", readme)
    assert sorted(n for _, n in badges) == sorted(NAMES)
    assert {r for r, _ in badges} == {repo}
    for name in NAMES:
        text = (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8")
        assert f'GITHUB_REPO = "{repo}"' in text, name
        assert "import google.colab" in text, f"{name}: the Colab install cell"
    assert "quickstart" not in readme and not (NOTEBOOKS / "quickstart.ipynb").exists()


# ---------------------------------------------------------------------------- execution
def _execute(name: str, tmp_path: Path, **env: str) -> tuple[dict, Path, float]:
    """Runs notebooks/<name>.ipynb in smoke mode, ``env`` added to the kernel's environment;
    returns (key numbers, figures dir, seconds)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    if name in NEEDS_DATA and not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data directory is absent ({SHARED_DATA})")
    figures = tmp_path / "figures"
    env = child_env(
        ALBERT_JAX_SMOKE="1", ALBERT_JAX_FIGURES=str(figures),
        ALBERT_JAX_WORKDIR=str(tmp_path / "work"), ALBERT_JAX_DATA=str(SHARED_DATA),
        HF_HUB_OFFLINE="1", MPLBACKEND="Agg", **env,
    )
    env.pop("XLA_FLAGS", None)  # conftest's 8 devices are for the sharding tests only
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    print(f"{name}: executed in {seconds:.1f} s")
    numbers = json.loads((figures / f"{name}.json").read_text())
    return numbers, figures, seconds


def _assert_pngs(figures: Path, names: list[str]) -> None:
    for n in names:
        path = figures / f"{n}.png"
        assert path.is_file(), f"figure {path.name} was not written"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, f"{path.name} is not a real PNG"


def test_01_fill_mask_and_scores(tmp_path):
    numbers, figures, _ = _execute("01_fill_mask_and_scores", tmp_path)
    _assert_pngs(figures, ["01_pll_minimal_pairs", "01_embeddings_pca"])
    assert numbers["model"] == "albert-mini" and numbers["smoke"] is True
    assert numbers["embedding_shape"] == [48, 256]
    plls = numbers["pll_good"] + numbers["pll_bad"]
    assert len(plls) == 2 * numbers["num_pairs"]
    assert all(math.isfinite(x) and x < 0 for x in plls)
    # albert-mini is a toy, but it still prefers the grammatical member of most pairs.
    assert numbers["pairs_preferred"] > numbers["num_pairs"] / 2
    assert all(0 < p < 1 for p in numbers["target_probs"].values())
    assert numbers["round_trip_max_diff"] == 0.0  # HF format and back is exact
    assert 0 < numbers["pca_explained"] < 1


def test_02_finetune_sst2(tmp_path, shared_tfds_dir):
    # SST-2 prepared in the run's TFDS directory (not in ~/.cache), once for the run.
    numbers, figures, _ = _execute("02_finetune_sst2", tmp_path,
                                   TFDS_DATA_DIR=str(shared_tfds_dir))
    _assert_pngs(figures, ["02_training_curves", "02_confusion_matrix"])
    assert numbers["model"] == "albert-mini"
    assert numbers["num_eval"] == 872  # the whole SST-2 dev set
    # Fine-tuned accuracy above always answering the majority class of the same examples.
    assert numbers["accuracy"] > numbers["majority_accuracy"] + 0.02, numbers
    # The accuracy recomputed from the exported best model matches the run's best.json.
    assert abs(numbers["accuracy"] - numbers["best_value"]) < 1e-6
    # transformers, loading the Hugging Face export, computes the same logits.
    assert numbers["hf_logits_max_diff"] < 1e-4


def test_03_pretrain_from_scratch(tmp_path):
    numbers, figures, _ = _execute("03_pretrain_from_scratch", tmp_path)
    _assert_pngs(figures, ["03_masked_example", "03_training_curves", "03_resume"])
    steps = numbers["num_train_steps"]
    assert 0 < numbers["interrupted_at"] < steps, "the run was stopped part-way"
    full, resumed = numbers["loss_uninterrupted"], numbers["loss_resumed"]
    assert len(full) == len(resumed) and numbers["steps_logged"][-1] == steps
    # The resumed run continues the uninterrupted curve (resume is bit-exact).
    assert max(abs(a - b) for a, b in zip(full, resumed, strict=True)) <= 1e-6
    assert numbers["steps_after_resume"] > 0
    assert full[-1] < full[0], "the loss went down"


def test_04_sharding(tmp_path):
    numbers, figures, _ = _execute("04_sharding", tmp_path)
    _assert_pngs(figures, ["04_parameter_blocks"])
    assert numbers["num_devices"] == 8
    assert len(numbers["logits_max_diff"]) == 3
    # The same logits on 1 and on 8 devices (data-, mixed- and tensor-parallel meshes):
    # within 1e-5 relative to the logits' size (float32 sums in another order), and the
    # probabilities within 1e-5.
    for mesh, diff in numbers["logits_max_diff"].items():
        assert diff <= 1e-5 * numbers["logits_abs_max"], (mesh, diff)
        assert numbers["probs_max_diff"][mesh] <= 1e-5, mesh
    assert abs(numbers["loss_1_device"] - numbers["loss_8_devices"]) <= 1e-5
    assert numbers["grad_max_diff"] <= 1e-5
    assert numbers["ffn_spec_after_step"] == ["fsdp", "tensor"]


def test_05_inside_albert(tmp_path):
    numbers, figures, _ = _execute("05_inside_albert", tmp_path)
    _assert_pngs(figures, ["05_attention_maps", "05_attention_one_head",
                           "05_shared_layer_similarity", "05_compile_time"])
    layers = numbers["num_layers"]
    assert numbers["num_attentions"] == layers and numbers["num_hidden_states"] == layers + 1
    assert numbers["attention_row_sum_error"] < 1e-5
    cos = numbers["consecutive_cosine"]
    assert len(cos) == layers and all(-1 <= c <= 1 + 1e-6 for c in cos)
    assert numbers["same_tree"] is True
    for kind in ("scan", "unrolled"):
        assert len(numbers["compile_seconds"][kind]) == len(numbers["depths"])
        assert all(s > 0 for s in numbers["compile_seconds"][kind])


# ---------------------------------------------------------------------------- the helpers
def test_choose_model_says_which_and_why(monkeypatch, tmp_path, capsys):
    from albert_jax import notebook

    monkeypatch.delenv("ALBERT_JAX_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert notebook.choose_model(smoke_mode=False) == "albert-mini"
    assert "albert-base-v2 is not cached" in capsys.readouterr().out
    assert notebook.choose_model(smoke_mode=True) == "albert-mini"
    assert "smoke mode" in capsys.readouterr().out
    monkeypatch.setenv("ALBERT_JAX_MODEL", "/some/model")
    assert notebook.choose_model(smoke_mode=True) == "/some/model"


def test_figures_record_and_workdir(monkeypatch, tmp_path):
    from albert_jax import notebook

    monkeypatch.setenv("ALBERT_JAX_FIGURES", str(tmp_path / "fig"))
    notebook.record("nb", a=1)
    notebook.record("nb", b=[2.5])
    assert json.loads((tmp_path / "fig" / "nb.json").read_text()) == {"a": 1, "b": [2.5]}
    monkeypatch.setenv("ALBERT_JAX_WORKDIR", str(tmp_path / "work"))
    first = notebook.workdir("run")
    (first / "stale").write_text("x")
    assert notebook.workdir("run") == first and not (first / "stale").exists()
    monkeypatch.setenv("ALBERT_JAX_DATA", str(tmp_path / "data"))
    assert notebook.local_data_dir() == (tmp_path / "data").resolve()
    assert notebook.sst2_dir() is None  # no SST-2 there: the notebooks use TFDS
    assert notebook.spiece_model().is_file()


def test_tfds_dir_is_tfds_own_setting_else_the_cache(monkeypatch, tmp_path):
    from albert_jax import notebook

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    assert notebook.tfds_dir() == tmp_path / "cache" / "albert_jax" / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert notebook.tfds_dir() == tmp_path / "tfds"
