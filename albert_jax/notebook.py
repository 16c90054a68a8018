"""What the research notebooks (``notebooks/NN_*.py``) share: run mode, model, data, figures.

The same notebook runs in Colab (GPU/TPU runtime, network) and in CI (2 CPU cores, no hub,
``../shared/data``). Everything that differs between the two is decided here, once, and
said in the notebook's output:

- **smoke mode** (``ALBERT_JAX_SMOKE=1``, what CI sets): small slices, few steps, small
  configs, the bundled albert-mini;
- **the model**: ``ALBERT_JAX_MODEL`` if set; else albert-mini in smoke mode; else
  albert-base-v2 when it is cached or the hub is reachable, else albert-mini;
- **data**: ``ALBERT_JAX_DATA`` if set, else ``../shared/data`` (from the notebook's
  directory or the repository root) when present, else a download (TFDS ``glue/sst2``,
  the NLTK Gutenberg selection);
- **figures**: PNG files in ``ALBERT_JAX_FIGURES`` (default ``./figures``, i.e.
  ``notebooks/figures/``, ignored by git), plus ``<notebook>.json`` there with the key
  numbers of the run (the CI test reads it);
- **work directories** (training runs): under ``ALBERT_JAX_WORKDIR`` (default: a fresh
  temporary directory).

Nothing here imports matplotlib or jax at module level: the core package does not depend
on the ``notebooks`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SHARED_DATA = "../shared/data"
MINI = "albert-mini"
BASE = "albert-base-v2"
# The NLTK "Project Gutenberg Selections" (the same books as ../shared/data/corpus).
GUTENBERG_URL = ("https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/"
                 "corpora/gutenberg.zip")

_TRUE = {"1", "true", "yes", "on"}


def smoke() -> bool:
    """Whether ``ALBERT_JAX_SMOKE`` asks for the small CI-sized run."""
    return os.environ.get("ALBERT_JAX_SMOKE", "").strip().lower() in _TRUE


def choose_model(smoke_mode: bool | None = None) -> str:
    """The model to use, with one printed line saying which and why."""
    from albert_jax import hub

    smoke_mode = smoke() if smoke_mode is None else smoke_mode
    if os.environ.get("ALBERT_JAX_MODEL"):
        name = os.environ["ALBERT_JAX_MODEL"]
        print(f"model: {name} (ALBERT_JAX_MODEL)")
        return name
    if smoke_mode:
        print(f"model: {MINI}, the small ALBERT bundled with albert_jax (smoke mode)")
        return MINI
    if hub.is_cached(BASE):
        print(f"model: {BASE} (in the local Hugging Face cache)")
        return BASE
    reason = ("offline mode is on (HF_HUB_OFFLINE)" if hub.is_offline()
              else hub.unreachable_reason())
    if reason is None:
        print(f"model: {BASE} (from the Hugging Face hub)")
        return BASE
    print(f"model: {MINI}, the small ALBERT bundled with albert_jax: {BASE} is not cached "
          f"and the hub cannot be reached ({reason})")
    return MINI


# ---------------------------------------------------------------------------- data
def local_data_dir() -> Path | None:
    """``ALBERT_JAX_DATA``, else the first ``../shared/data`` found (from the current
    directory, its parent, or the repository root), else None."""
    if os.environ.get("ALBERT_JAX_DATA"):
        return Path(os.environ["ALBERT_JAX_DATA"]).expanduser().resolve()
    for base in (Path.cwd(), Path.cwd().parent, REPO_ROOT):
        candidate = (base / SHARED_DATA).resolve()
        if candidate.is_dir():
            return candidate
    return None


def cache_dir() -> Path:
    """Where downloads go: ``~/.cache/albert_jax``."""
    path = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "albert_jax"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tfds_dir() -> Path:
    """Where tensorflow-datasets data is prepared: ``$TFDS_DATA_DIR`` when set (TFDS' own
    setting), else ``~/.cache/albert_jax/tfds``."""
    return Path(os.environ.get("TFDS_DATA_DIR") or cache_dir() / "tfds").expanduser()


def sst2_dir() -> Path | None:
    """The folder with SST-2's ``train.tsv`` / ``dev.tsv`` when it is local, else None
    (then fine-tuning reads TFDS ``glue/sst2``: ``--config.data.manual_dir=``)."""
    data = local_data_dir()
    if data is not None and (data / "glue" / "SST-2" / "dev.tsv").is_file():
        return data / "glue" / "SST-2"
    return None


def sst2_sentences(split: str = "dev", limit: int | None = None) -> list[tuple[str, int]]:
    """(sentence, label) pairs of SST-2 ``dev`` or ``train``, in file order: the local TSV
    files when present, else TFDS ``glue/sst2`` (downloaded)."""
    local = sst2_dir()
    if local is not None:
        lines = (local / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        pairs = [(s, int(y)) for s, y in (line.rsplit("\t", 1) for line in lines)]
        return pairs[:limit] if limit else pairs
    import tensorflow_datasets as tfds

    tfds_split = {"dev": "validation", "train": "train"}[split]
    if limit:
        tfds_split = f"{tfds_split}[:{limit}]"
    ds = tfds.load("glue/sst2", split=tfds_split)
    return [(ex["sentence"].decode("utf-8"), int(ex["label"]))
            for ex in tfds.as_numpy(ds)]


def gutenberg_dir() -> Path:
    """The Gutenberg books: ``shared/data/corpus/gutenberg_nltk`` or the NLTK download."""
    data = local_data_dir()
    if data is not None and (data / "corpus" / "gutenberg_nltk").is_dir():
        return data / "corpus" / "gutenberg_nltk"
    target = cache_dir() / "gutenberg"
    if not any(target.glob("*.txt")):
        import urllib.request

        archive = cache_dir() / "gutenberg.zip"
        print(f"downloading {GUTENBERG_URL}")
        urllib.request.urlretrieve(GUTENBERG_URL, archive)
        target.mkdir(exist_ok=True)
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if member.endswith(".txt") or member.endswith("README"):
                    (target / Path(member).name).write_bytes(z.read(member))
    return target


def spiece_model() -> Path:
    """ALBERT's 30k-clean spiece.model (shipped with albert-mini: no download needed)."""
    return PACKAGE_DIR / "models" / MINI / "spiece.model"


def workdir(name: str) -> Path:
    """A fresh, empty directory for one notebook's runs: ``$ALBERT_JAX_WORKDIR/name``
    (emptied first: a rerun must not resume the previous one) or a new temp dir."""
    root = os.environ.get("ALBERT_JAX_WORKDIR")
    if root:
        path = Path(root) / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"albert_jax_{name}_"))


def configs_dir() -> Path:
    """The repository's ``configs/`` (a checkout: the package's parent directory)."""
    for base in (REPO_ROOT, Path.cwd().parent, Path.cwd()):
        if (base / "configs" / "finetune").is_dir():
            return base / "configs"
    raise FileNotFoundError("configs/ not found: run the notebooks from a checkout of the "
                            "repository (the Colab cell clones one)")


# ---------------------------------------------------------------------------- figures
def figures_dir() -> Path:
    """``ALBERT_JAX_FIGURES`` or ``./figures`` (created)."""
    path = Path(os.environ.get("ALBERT_JAX_FIGURES") or "figures").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Any, name: str, dpi: int = 110) -> Path:
    """Writes a matplotlib figure as ``figures_dir()/name.png`` and returns the path."""
    path = figures_dir() / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    print(f"figure: {path}")
    return path


def record(notebook: str, **numbers: Any) -> Path:
    """Merges ``numbers`` into ``figures_dir()/<notebook>.json`` (the run's key numbers)."""
    path = figures_dir() / f"{notebook}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(numbers)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (for ``IPython.display.Markdown``; reads fine as plain text too)."""
    def cell(x: Any) -> str:
        text = f"{x:.4f}" if isinstance(x, float) else str(x)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(header: list[str], rows: list[list[Any]]) -> None:
    """Displays a table: rendered Markdown in a notebook, text elsewhere."""
    table = markdown_table(header, rows)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(table))
            return
    except ImportError:
        pass
    print(table)
