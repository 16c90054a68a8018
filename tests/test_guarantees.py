"""What every command promises on bad input: a catalogue of hostile cases, run for real.

Each :class:`Case` builds a bad (or, as a control, a good) input under ``tmp_path``, runs the
real ``albert-jax`` command line in a subprocess and checks the guarantees:

- the exit status;
- stderr is exactly one line, holding the expected message and no traceback (or, for a
  case whose message is None, stderr is empty);
- the output is absent after an error (and well formed after a success);
- nothing else under ``tmp_path`` was created, changed or removed: no stray temporary file,
  no touched input, nothing in the (isolated, offline) Hugging Face home.

To add a case, append a ``Case(name, setup, exit_code, message)`` to ``CASES``: ``setup``
gets a :class:`Bench` (``bench.tmp`` is the case's ``tmp_path``, ``bench.model(fmt)`` a fresh
copy of one tiny model) and returns the arguments after ``albert-jax``; ``outputs`` lists the
paths (relative to ``tmp_path``) the command may write, ``stdin`` feeds it. Most loading
errors happen before JAX compiles anything, so a case costs about one interpreter start.

The property tests at the end feed random Unicode and random bytes to the tokenizer (which
must never raise on a string) and to fill-mask's input path (which raises only its
documented ValueError).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albert_jax import hub

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the cat sat on the [MASK]."


# ---------------------------------------------------------------------------- the tiny model
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny masked-LM (random weights, albert-mini's tokenizer) in both formats."""
    import jax

    from albert_jax.config import AlbertConfig
    from albert_jax.conversion import save_albert_jax
    from albert_jax.model import AlbertForMaskedLM
    from albert_jax.sources import convert

    cfg = AlbertConfig(vocab_size=30000, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    root = tmp_path_factory.mktemp("tiny")
    spiece = Path(hub.packaged_model_dir("albert-mini")) / hub.TOKENIZER_FILE
    params = AlbertForMaskedLM(cfg).init_params(jax.random.key(0))
    save_albert_jax(root / "albert_jax", params, cfg, tokenizer=spiece)
    convert(root / "albert_jax", root / "hf", to="hf")
    return {"albert_jax": root / "albert_jax", "hf": root / "hf"}


@dataclasses.dataclass
class Bench:
    """What a case's ``setup`` works with."""

    tmp: Path
    models: dict[str, Path]

    def model(self, fmt: str = "hf", name: str = "model") -> Path:
        """A fresh copy of the tiny model (``"hf"`` or ``"albert_jax"``) under ``tmp``."""
        dest = self.tmp / name
        shutil.copytree(self.models[fmt], dest)
        return dest


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the catalogue (see the module docstring)."""

    name: str
    setup: Callable[[Bench], list[str]]
    exit_code: int
    message: str | None  # A substring of the one stderr line; None: stderr must be empty.
    outputs: tuple[str, ...] = ()
    stdin: bytes | None = None
    check_output: Callable[[Bench, str], None] | None = None  # stdout of a success.


# ---------------------------------------------------------------------------- helpers
def edit_config(directory: Path, **changes) -> None:
    path = directory / hub.CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def fill_mask(directory: Path, *extra: str) -> list[str]:
    return ["fill-mask", "--model", str(directory), *extra, PROMPT]


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def shard(bench: Bench, index: dict | str | bytes) -> Path:
    """The tiny model as one shard plus a ``model.safetensors.index.json`` (as given)."""
    model = bench.model()
    os.rename(model / "model.safetensors", model / "model-00001-of-00001.safetensors")
    body = index if isinstance(index, (str, bytes)) else json.dumps(index)
    write(model / "model.safetensors.index.json", body)
    return model


def good_index(model: Path) -> dict:
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "np") as f:
        names = list(f.keys())
    return {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}


def with_nan(bench: Bench) -> Path:
    """A well-formed model.safetensors whose embedding holds a NaN (a damaged file)."""
    from safetensors.numpy import load_file, save_file

    model = bench.model()
    tensors = load_file(model / "model.safetensors")
    name = next(k for k in tensors if "word_embeddings" in k)
    tensors[name][3, 1] = np.nan
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return model


def hostile_bin(bench: Bench) -> Path:
    """A pytorch_model.bin whose unpickling would run a shell command."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {bench.tmp / 'pwned'}",))

    model = bench.model()
    (model / "model.safetensors").unlink()
    torch.save({"albert.embeddings.word_embeddings.weight": Payload()},
               model / "pytorch_model.bin")
    return model


def garbage_header(path: Path) -> None:
    """Keeps the size, replaces the JSON header with junk of the same length."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + length] = b"{" * length
    path.write_bytes(bytes(data))


def check_fill_mask_output(bench: Bench, stdout: str) -> None:
    """The command prints what the Python API answers for the same model and text."""
    from albert_jax.cli import _format_score
    from albert_jax.inference import FillMask

    want = FillMask.from_pretrained(str(bench.models["hf"]))(PROMPT)
    assert stdout.splitlines() == [f"{r['sequence']} ({_format_score(r['score'])})"
                                   for r in want]


def check_converted(bench: Bench, stdout: str) -> None:
    out = bench.tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "albert_jax.json", "config.json", "params.safetensors", "spiece.model"]


def model_then(change: Callable[[Path], object], fmt: str = "hf"):
    """setup: a fresh model, changed by ``change(model_dir)``; fill-mask on it."""
    def setup(bench: Bench) -> list[str]:
        model = bench.model(fmt)
        change(model)
        return fill_mask(model)
    return setup


def convert_then(change: Callable[[Path], object], fmt: str = "hf"):
    """setup: a fresh model, changed by ``change(model_dir)``; convert it to ``out``."""
    def setup(bench: Bench) -> list[str]:
        model = bench.model(fmt)
        change(model)
        return ["convert", str(model), str(bench.tmp / "out")]
    return setup


INVALID_UTF8 = b'{"model_type": "albert", "hidden_act": "gelu\xff\xfe"}'

# ---------------------------------------------------------------------------- the catalogue
CASES = [
    # Controls: the same commands on good input do their job (and write only their output).
    Case("control: fill-mask", lambda b: fill_mask(b.model()), 0, None,
         check_output=check_fill_mask_output),
    Case("control: convert", lambda b: ["convert", str(b.model()), str(b.tmp / "out")], 0,
         "wrote albert_jax model", outputs=("out",), check_output=check_converted),

    # A tokenizer that does not belong to the model (silent NaN or a crash before).
    Case("vocab_size smaller than the tokenizer",
         model_then(lambda m: edit_config(m, vocab_size=1000)), 2,
         "has 30000 pieces but the model's vocab_size is 1000"),
    Case("vocab_size larger than the tokenizer, --top-k 30000",
         lambda b: fill_mask(edit_model(b, vocab_size=30001), "--top-k", "30000"), 2,
         "has 30000 pieces but the model's vocab_size is 30001"),

    # config.json
    Case("config.json: a string where a number belongs",
         model_then(lambda m: edit_config(m, hidden_size="16")), 2,
         "config.json: invalid AlbertConfig: hidden_size must be a positive integer, got '16'"),
    Case("config.json: a string where a float belongs",
         convert_then(lambda m: edit_config(m, layer_norm_eps="1e-12")), 2,
         "layer_norm_eps must be a number, got '1e-12'", outputs=("out",)),
    Case("config.json: a string where a flag belongs",
         model_then(lambda m: edit_config(m, tie_word_embeddings="false")), 2,
         "tie_word_embeddings must be true or false, got 'false'"),
    Case("config.json: id2label not an object",
         model_then(lambda m: edit_config(m, id2label=3)), 2,
         "id2label must be an object"),
    Case("config.json: a JSON list (fill-mask)",
         model_then(lambda m: write(m / "config.json", "[1, 2]")), 2,
         "config.json must hold a JSON object, not a list"),
    Case("config.json: a JSON list (convert)",
         convert_then(lambda m: write(m / "config.json", "[1, 2]")), 2,
         "config.json must hold a JSON object, not a list", outputs=("out",)),
    Case("config.json: invalid UTF-8",
         model_then(lambda m: write(m / "config.json", INVALID_UTF8)), 2,
         "config.json is not UTF-8 text"),
    Case("config.json: not JSON",
         convert_then(lambda m: write(m / "config.json", "{'vocab_size': 1")), 2,
         "config.json is not valid JSON", outputs=("out",)),
    Case("config.json: albert_jax format, not an object",
         convert_then(lambda m: write(m / "config.json", "null"), fmt="albert_jax"), 2,
         "must hold a JSON object, not a NoneType", outputs=("out",)),

    # spiece.model and tokenizer_config.json
    Case("spiece.model: empty", model_then(lambda m: write(m / "spiece.model", b"")), 2,
         "spiece.model is empty: not a sentencepiece model"),
    Case("spiece.model: corrupt",
         model_then(lambda m: write(m / "spiece.model", b"\x00garbage" * 500)), 2,
         "spiece.model: not a readable sentencepiece model"),
    Case("spiece.model: truncated", model_then(lambda m: truncate(m / "spiece.model")), 2,
         "spiece.model: not a readable sentencepiece model"),
    Case("tokenizer_config.json: a string where a flag belongs",
         model_then(lambda m: write(m / "tokenizer_config.json", '{"do_lower_case": "no"}')),
         2, "tokenizer_config.json: do_lower_case must be true or false, got 'no'"),
    Case("tokenizer_config.json: invalid UTF-8",
         model_then(lambda m: write(m / "tokenizer_config.json", b'{"a": "\xff"}')), 2,
         "tokenizer_config.json is not valid JSON"),

    # model.safetensors.index.json
    Case("index: not JSON", lambda b: ["convert", str(shard(b, "{not json")), str(b.tmp / "out")],
         2, "model.safetensors.index.json is not valid JSON", outputs=("out",)),
    Case("index: no weight_map", lambda b: fill_mask(shard(b, {"metadata": {}})), 2,
         "model.safetensors.index.json: no weight_map"),
    Case("index: weight_map a list", lambda b: fill_mask(shard(b, {"weight_map": ["a"]})), 2,
         "no weight_map"),
    Case("index: a shard path outside the directory",
         lambda b: fill_mask(shard(b, {"weight_map": {"x": "../model/config.json"}})), 2,
         "must be a file name beside the index, got '../model/config.json'"),
    Case("index: a shard that is not a string",
         lambda b: fill_mask(shard(b, {"weight_map": {"x": 7}})), 2,
         "weight_map['x'] must be a file name beside the index, got 7"),
    Case("index: a listed shard is missing",
         lambda b: fill_mask(shard(b, {"weight_map": {"x": "model-00002-of-00002.safetensors"}})),
         2, "missing checkpoint shards"),

    # Weights files
    Case("model.safetensors: truncated",
         model_then(lambda m: truncate(m / "model.safetensors")), 2,
         "model.safetensors: not a readable safetensors file"),
    Case("model.safetensors: garbage header, same size",
         convert_then(lambda m: garbage_header(m / "model.safetensors")), 2,
         "model.safetensors: not a readable safetensors file", outputs=("out",)),
    Case("model.safetensors: empty",
         model_then(lambda m: write(m / "model.safetensors", b"")), 2,
         "model.safetensors: not a readable safetensors file"),
    Case("model.safetensors: NaN weights", lambda b: fill_mask(with_nan(b)), 2,
         "holds 1 NaN or infinite values: the file is damaged"),
    Case("params.safetensors (albert_jax): truncated",
         convert_then(lambda m: truncate(m / "params.safetensors"), fmt="albert_jax"), 2,
         "params.safetensors: not a readable safetensors file", outputs=("out",)),
    Case("albert_jax.json: invalid UTF-8",
         model_then(lambda m: write(m / "albert_jax.json", b"\xff\xfe"), fmt="albert_jax"), 2,
         "albert_jax.json: unreadable"),
    Case("pytorch_model.bin: hostile pickle", lambda b: fill_mask(hostile_bin(b)), 2,
         "not a safe checkpoint: it holds objects other than tensors"),
    Case("pytorch_model.bin: hostile pickle (convert)",
         lambda b: ["convert", str(hostile_bin(b)), str(b.tmp / "out")], 2,
         "not a safe checkpoint", outputs=("out",)),
    Case("pytorch_model.bin: not a pickle",
         lambda b: fill_mask(bin_model(b, pickle.dumps([1, 2])[:5])), 2,
         "pytorch_model.bin: not a readable PyTorch checkpoint"),
    Case("no weights file", model_then(lambda m: (m / "model.safetensors").unlink()), 2,
         "no weights file"),
    Case("convert into a non-empty directory",
         lambda b: ["convert", str(b.model()), str(write_dir(b.tmp / "busy"))], 2,
         "exists and is not empty"),
    # Training configs: nonsense numbers are refused before anything runs or is written.
    Case("pretrain: a negative learning rate",
         lambda b: pretrain_args(b, "optimizer.learning_rate=-0.001"), 2,
         "optimizer.learning_rate must be > 0, got -0.001"),
    Case("pretrain: a NaN learning rate", lambda b: pretrain_args(b, "optimizer.learning_rate=nan"),
         2, "optimizer.learning_rate must be finite, got nan"),
    Case("pretrain: global_batch_size=0", lambda b: pretrain_args(b, "global_batch_size=0"), 2,
         "global_batch_size must be >= 1, got 0"),
]


def pretrain_args(bench: Bench, override: str) -> list[str]:
    """``pretrain`` of the tiny config into ``bench.tmp/w`` with one ``--config.`` override."""
    return ["pretrain", "--config", str(ROOT / "configs" / "pretrain" / "tiny.py"),
            "--workdir", str(bench.tmp / "w"), f"--config.{override}"]


def edit_model(bench: Bench, **changes) -> Path:
    model = bench.model()
    edit_config(model, **changes)
    return model


def bin_model(bench: Bench, data: bytes) -> Path:
    model = bench.model()
    (model / "model.safetensors").unlink()
    write(model / "pytorch_model.bin", data)
    return model


def write_dir(path: Path) -> Path:
    path.mkdir()
    write(path / "keep.txt", "precious")
    return path


# ---------------------------------------------------------------------------- the runner
def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, modification time and mode."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mtime_ns,
                                            st.st_mode)
    return out


def run_cli(argv: list[str], tmp: Path, stdin: bytes | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return subprocess.run([sys.executable, "-m", "albert_jax.cli", *argv], input=stdin,
                          capture_output=True, env=env, cwd=tmp, timeout=300)


def under(path: str, outputs: tuple[str, ...]) -> bool:
    return any(path == o or path.startswith(o + os.sep) for o in outputs)


@dataclasses.dataclass
class Run:
    bench: Bench
    before: dict[str, tuple]
    after: dict[str, tuple]
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def catalogue_runs(request, tiny_models, tmp_path_factory) -> dict[str, Run]:
    """Runs the selected cases, a few subprocesses at a time (each is mostly an interpreter
    start waiting on imports), each in its own directory."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_catalogue"]
    benches = {c.name: Bench(tmp_path_factory.mktemp("case"), tiny_models) for c in selected}

    def run(case: Case) -> Run:
        bench = benches[case.name]
        (bench.tmp / "hf-home").mkdir()
        argv = case.setup(bench)
        before = snapshot(bench.tmp)
        proc = run_cli(argv, bench.tmp, case.stdin)
        return Run(bench, before, snapshot(bench.tmp), proc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(benches, pool.map(run, selected), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, catalogue_runs):
    run = catalogue_runs[case.name]
    bench, proc, before, after = run.bench, run.proc, run.before, run.after
    stderr = proc.stderr.decode("utf-8", "replace")
    stdout = proc.stdout.decode("utf-8", "replace")

    assert proc.returncode == case.exit_code, (proc.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    if case.message is None:
        assert stderr == "", stderr
    else:
        lines = stderr.splitlines()
        assert len(lines) == 1, stderr
        assert case.message in lines[0], lines[0]
    # Nothing but the declared outputs changed: no temporary litter, no input touched.
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    changed.discard(".")  # The directory itself: its mtime moves when an output is added.
    assert not {p for p in changed if not under(p, case.outputs)}, sorted(changed)
    if case.exit_code == 0:
        if case.check_output is not None:
            case.check_output(bench, stdout)
    else:
        assert stdout == "", stdout
        assert not any(under(p, case.outputs) for p in after), "an output was written"
        assert not (bench.tmp / "pwned").exists()


def test_catalogue_covers_both_formats_and_commands():
    """The table keeps at least one case per command and per weights format."""
    names = " ".join(c.name for c in CASES)
    for needle in ("config.json", "spiece.model", "index", "safetensors", "pytorch_model.bin",
                   "vocab_size", "control: fill-mask", "control: convert"):
        assert needle in names, needle


# ---------------------------------------------------------------------------- properties
# Any character, lone surrogates (from undecodable bytes) and the pieces that matter here.
CHARS = st.one_of(
    st.characters(), st.characters(categories=["Cs"]),
    st.sampled_from(["[MASK]", "[mask]", "[CLS]", "[SEP]", "<unk>", "<pad>", " ", "\x00",
                     "\u3000", "1,", "``", "\u0301", "\u03a3", "\ufffd"]),
)
TEXT = st.lists(CHARS, max_size=40).map("".join)
# Derandomized and without an example database: the same examples on every run and no
# .hypothesis directory left behind.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny_fill_mask(tiny_models):
    from albert_jax.inference import FillMask

    return FillMask.from_pretrained(str(tiny_models["hf"]), batch_size=2)


@PROPERTY
@given(text=TEXT, pair=st.none() | TEXT)
def test_tokenizer_never_raises_on_any_string(tiny_fill_mask, text, pair):
    tok = tiny_fill_mask.tokenizer
    ids = tok.encode(text) if pair is None else tok.encode(text, pair)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    if pair is None:  # The piece path and the batched id path agree.
        assert tok.convert_tokens_to_ids(tok.tokenize(text)) == ids[1:-1]
    assert isinstance(tok.decode(ids), str)
    batch = tok([text, text], text_pair=None if pair is None else [pair, pair], padding=True,
                truncation=True, max_length=16, return_tensors="np")
    assert batch["input_ids"].shape[1] <= 16


def _fill_mask_input(fm, text: str) -> None:
    """fill-mask's input path: either a documented ValueError or valid, finite results."""
    try:
        prepared = fm.prepare(text, 1)
    except ValueError as e:
        assert re.search(r"has (no|\d+) \[MASK\] tokens; exactly one is required|tokens long; "
                         r"the model accepts at most", str(e)), str(e)
        return
    assert fm.tokenizer.decode(prepared.ids)  # Decodes whatever it holds.
    [results] = fm([text], top_k=3)
    assert len(results) == 3 and all(np.isfinite(r["score"]) for r in results)


@PROPERTY
@given(text=st.one_of(TEXT, st.tuples(TEXT, TEXT).map(lambda p: f"{p[0]}[MASK]{p[1]}")))
def test_fill_mask_input_path_on_random_unicode(tiny_fill_mask, text):
    _fill_mask_input(tiny_fill_mask, text)


@PROPERTY
@given(data=st.binary(max_size=60), mask=st.booleans(),
       errors=st.sampled_from(["replace", "surrogateescape"]))
def test_fill_mask_input_path_on_random_bytes(tiny_fill_mask, data, mask, errors):
    """Bytes as the score command decodes them (replace) and as Python decodes an argv that
    is not UTF-8 (surrogateescape)."""
    if mask:
        data = data[: len(data) // 2] + b" [MASK] " + data[len(data) // 2 :]
    _fill_mask_input(tiny_fill_mask, data.decode("utf-8", errors))


# ---------------------------------------------------------------------------- load paths
def test_every_load_path_checks_the_tokenizer_against_the_model(tiny_models, tmp_path):
    """load_pretrained, each task's from_pretrained and fine-tuning's model load refuse a
    tokenizer that does not fit, before any weight is read."""
    from albert_jax import finetune
    from albert_jax.errors import TokenizerError
    from albert_jax.inference import Embedder, FillMask, PseudoLogLikelihood
    from albert_jax.pretrained import load_pretrained

    model = Bench(tmp_path, tiny_models).model()
    edit_config(model, vocab_size=29999)
    (model / "model.safetensors").write_bytes(b"")  # Never reached.
    message = "has 30000 pieces but the model's vocab_size is 29999"
    for load in (lambda: load_pretrained(model), lambda: load_pretrained(model, head="base"),
                 lambda: FillMask.from_pretrained(str(model)),
                 lambda: PseudoLogLikelihood.from_pretrained(str(model)),
                 lambda: Embedder.from_pretrained(str(model))):
        with pytest.raises(TokenizerError, match=message):
            load()
    config = finetune.base_config("sst2", learning_rate=1e-5, batch_size=8, steps=1, warmup=0,
                                  max_seq_length=16)
    config.init = str(model)
    with pytest.raises(finetune.FinetuneError, match=message):
        finetune.load_init(config, finetune.family_for(config))
