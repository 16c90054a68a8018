"""What every command promises on bad input: a catalogue of hostile cases, run for real.

Each :class:`Case` builds a bad (or, as a control, a good) input under ``tmp_path``, runs the
real ``albert-jax`` command line in a process of its own (forked from an interpreter that has
imported JAX and torch: tests/forkrun.py) and checks the guarantees:

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
errors happen before JAX compiles anything, so a case costs little more than a fork.

The property tests at the end feed random Unicode and random bytes to the tokenizer (which
must never raise on a string) and to fill-mask's input path (which raises only its
documented ValueError).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
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
from conftest import child_env
from forkrun import ForkRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albert_jax import cli, hub

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
    # Training commands log through the library: its WARNING notices may precede the line.
    allow_notices: bool = False
    kept: tuple[str, ...] = ()  # Outputs an error may leave (a workdir's run config).
    # Refused before any work (argparse, the output and workdir checks): run through
    # cli.main in this process, which skips only the interpreter start.
    quick: bool = False


# ---------------------------------------------------------------------------- helpers
def edit_config(directory: Path, **changes) -> None:
    path = directory / hub.CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def fill_mask(directory: Path, *extra: str) -> list[str]:
    return ["fill-mask", "--model", str(directory), *extra, PROMPT]


def fill_mask_on(directory: Path, *args: str) -> list[str]:
    """fill-mask on ``directory`` with ``args`` (texts or options; none: stdin)."""
    return ["fill-mask", "--model", str(directory), *args]


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


def score_args(bench: Bench, *extra: str, output: str = "out.jsonl", task: str = "pll",
               text: str = PROMPT) -> list[str]:
    """setup: ``score`` of a one-line file with a fresh model."""
    source = write(bench.tmp / "in.txt", text + "\n")
    return ["score", "--task", task, "--model", str(bench.model()), "--input", str(source),
            "--output", str(bench.tmp / output), "--quiet", *extra]


def a_dir(bench: Bench, name: str = "adir") -> Path:
    (bench.tmp / name).mkdir()
    return bench.tmp / name


def a_file(bench: Bench, name: str = "afile") -> Path:
    return write(bench.tmp / name, "precious")


def damaged_workdir(bench: Bench) -> Path:
    """A pretraining workdir whose latest checkpoint step holds no checkpoint."""
    step = bench.tmp / "wd" / "checkpoints" / "5"
    step.mkdir(parents=True)
    write(step / "junk", "not a checkpoint")
    return bench.tmp / "wd"


def training(command: str, workdir: Path | str, *overrides: str) -> list[str]:
    config = ROOT / "configs" / ("pretrain/tiny.py" if command == "pretrain"
                                 else "finetune/sst2.py")
    return [command, "--config", str(config), "--workdir", str(workdir), *overrides]


def header_only_glue(bench: Bench) -> list[str]:
    data = bench.tmp / "sst"
    data.mkdir()
    for split in ("train", "dev", "test"):
        write(data / f"{split}.tsv", "sentence\tlabel\n")
    return training("finetune", bench.tmp / "run", f"--config.data.manual_dir={data}",
                    f"--config.init={bench.model()}", "--config.num_train_steps=2",
                    "--config.global_batch_size=8", "--config.max_seq_length=16")


def check_two_answers(bench: Bench, stdout: str) -> None:
    blocks = stdout.strip("\n").split("\n\n")
    assert len(blocks) == 2 and all(len(b.splitlines()) == 5 for b in blocks), stdout
    assert "\ufffd" in blocks[1] or "\ufffd" not in stdout  # decoded, not dropped


def check_json_flags(bench: Bench, stdout: str) -> None:
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r.get("invalid_utf8", False) for r in records] == [False, True]
    assert records[1]["input"] == "the \ufffd dog [MASK]."
    assert all(len(r["predictions"]) == 5 for r in records)


def check_short_record(bench: Bench, stdout: str) -> None:
    [record] = [json.loads(x) for x in (bench.tmp / "out.jsonl").read_text().splitlines()]
    assert "(25000 characters)" in record["error"] and len(record["error"]) < 200, record


LONG = "x" * 25000
NOT_UTF8 = "the \ufffd dog [MASK]."

CLI_CASES = [
    # Output paths, checked before any work (the model is never loaded).
    Case("score: --output is a directory",
         lambda b: score_args(b, output=a_dir(b).name), 2, "adir: it is a directory", quick=True),
    Case("score: --output's directory is missing",
         lambda b: score_args(b, output="nodir/out.jsonl"), 2, "nodir does not exist", quick=True),
    Case("score: --output below a file",
         lambda b: score_args(b, output=f"{a_file(b).name}/out.jsonl"), 2,
         "afile is not a directory", quick=True),
    Case("score embed: its status file is a directory",
         lambda b: (a_dir(b, "out.jsonl"), score_args(b, task="embed", output="out.npy"))[1], 2,
         "out.jsonl: it is a directory", quick=True),
    Case("predict: --output is a directory",
         lambda b: ["predict", "--model", str(b.model()), "--output", str(a_dir(b))], 2,
         "adir: it is a directory", quick=True),
    Case("predict: --output's directory is missing",
         lambda b: ["predict", "--model", str(b.model()), "--output", str(b.tmp / "no/p.jsonl")],
         2, "does not exist", quick=True),
    Case("convert: DEST is a file",
         lambda b: ["convert", str(b.model()), str(a_file(b))], 2,
         "afile exists and is not a directory", quick=True),
    Case("convert: DEST below a file",
         lambda b: ["convert", str(b.model()), str(a_file(b) / "out")], 2,
         "afile is not a directory", quick=True),
    Case("export: DEST is not empty",
         lambda b: ["export", str(damaged_workdir(b)), str(write_dir(b.tmp / "busy"))], 2,
         "exists and is not empty (--overwrite replaces it)", quick=True),
    Case("export: a damaged workdir",
         lambda b: ["export", str(damaged_workdir(b)), str(b.tmp / "out")], 2,
         "no good checkpoint in", outputs=("out",)),
    Case("export: not a workdir",
         lambda b: ["export", str(a_dir(b)), str(b.tmp / "out")], 2, "no checkpoints in",
         outputs=("out",), quick=True),
    # Workdirs, checked before the run starts.
    Case("pretrain: --workdir is a file", lambda b: training("pretrain", a_file(b)), 2,
         "afile exists and is not a directory", quick=True),
    Case("finetune: --workdir below a file",
         lambda b: training("finetune", a_file(b) / "run"), 2, "afile is not a directory",
         quick=True),
    # Numeric flags that make no sense: one argparse line each.
    Case("score: --tensor 0", lambda b: score_args(b, "--tensor", "0"), 2,
         "--tensor must be at least 1, got 0", quick=True),
    Case("score: --data 0", lambda b: score_args(b, "--data", "0"), 2,
         "--data must be at least 1 (or -1), got 0", quick=True),
    Case("score: --fsdp -3", lambda b: score_args(b, "--fsdp", "-3"), 2,
         "--fsdp must be at least 1", quick=True),
    Case("score: --max-batch-tokens 0", lambda b: score_args(b, "--max-batch-tokens", "0"), 2,
         "--max-batch-tokens must be at least 1", quick=True),
    Case("score: --batch-size not a number", lambda b: score_args(b, "--batch-size", "lots"),
         2, "--batch-size must be an integer, got 'lots'", quick=True),
    Case("fill-mask: --top-k 0", lambda b: fill_mask(b.model(), "--top-k", "0"), 2,
         "--top-k must be at least 1, got 0", quick=True),
    Case("serve: --max-queue 0", lambda b: ["serve", "--model", "m", "--max-queue", "0"], 2,
         "--max-queue must be at least 1", quick=True),
    Case("serve: --price-per-second nan",
         lambda b: ["serve", "--model", "m", "--price-per-second", "nan"], 2,
         "--price-per-second must be a finite number", quick=True),
    Case("serve: --request-timeout-s 0",
         lambda b: ["serve", "--model", "m", "--request-timeout-s", "0"], 2,
         "--request-timeout-s must be a finite number greater than 0", quick=True),
    Case("keys create: --rate-limit 0",
         lambda b: ["keys", "create", "--name", "k", "--rate-limit", "0"], 2,
         "--rate-limit must be at least 1", quick=True),
    Case("evaluate: --batch-size 0",
         lambda b: ["evaluate", "--model", str(b.model()), "--batch-size", "0"], 2,
         "--batch-size must be at least 1", quick=True),
    Case("export: --step -1",
         lambda b: ["export", str(a_dir(b)), str(b.tmp / "out"), "--step", "-1"], 2,
         "--step must be at least 0", quick=True),
    # --cache-dir that is a file.
    Case("fill-mask: --cache-dir is a file",
         lambda b: fill_mask(b.model(), "--cache-dir", str(a_file(b))), 2,
         "afile is a file, not a directory", quick=True),
    Case("score: --cache-dir is a file",
         lambda b: score_args(b, "--cache-dir", str(a_file(b))), 2,
         "afile is a file, not a directory", quick=True),
    Case("serve: --cache-dir is a file",
         lambda b: ["serve", "--model", str(b.model()), "--cache-dir", str(a_file(b))], 2,
         "afile is a file, not a directory", quick=True),
    Case("pretrain: --cache-dir is a file (no workdir is created)",
         lambda b: training("pretrain", b.tmp / "run", "--cache-dir", str(a_file(b))), 2,
         "afile is a file, not a directory", quick=True),
    Case("finetune: --cache-dir is a file (no workdir is created)",
         lambda b: training("finetune", b.tmp / "run", "--cache-dir", str(a_file(b))), 2,
         "afile is a file, not a directory", quick=True),
    # Messages: no echo of a 25 KB input, no literal \n, the full key of an override.
    Case("fill-mask: a 25 KB input is not echoed whole", lambda b: fill_mask_on(b.model(), LONG),
         2, "'... (25000 characters) has no [MASK] tokens"),
    Case("score: a 25 KB line's record is short", lambda b: score_args(b, text=LONG), 1,
         "0 of 1 lines scored (1 failed)", outputs=("out.jsonl",),
         check_output=check_short_record),
    Case("pretrain: unknown nested override",
         lambda b: training("pretrain", b.tmp / "run", "--config.optimizer.learning_rate.x=1"),
         2, "unknown config key in an override: optimizer.learning_rate.x", quick=True),
    Case("pretrain: unknown key in a section",
         lambda b: training("pretrain", b.tmp / "run", "--config.data.bogus=1"), 2,
         "unknown config key in an override: data.bogus", quick=True),
    # Invalid UTF-8 in the inputs: decoded with U+FFFD, flagged, every input answered.
    Case("fill-mask: invalid UTF-8 on stdin", lambda b: fill_mask_on(b.model()), 0,
         "input 2 is not valid UTF-8", stdin=f"{PROMPT}\n".encode() + b"the \xff dog [MASK].\n",
         check_output=check_two_answers),
    Case("fill-mask --json: invalid UTF-8 on stdin flagged in its record",
         lambda b: fill_mask_on(b.model(), "--json"), 0, "input 2 is not valid UTF-8",
         stdin=f"{PROMPT}\n".encode() + b"the \xff dog [MASK].\n",
         check_output=check_json_flags),
    Case("fill-mask: invalid UTF-8 in argv",
         lambda b: fill_mask_on(b.model(), PROMPT, os.fsdecode(b"the \xff dog [MASK].")),
         0, "input 2 is not valid UTF-8", check_output=check_two_answers),
    # Fine-tuning data.
    Case("finetune: a header-only TSV", header_only_glue, 2,
         "train.tsv: no examples (the file holds at most a header line)",
         outputs=("run",), kept=("run", "run/finetune_config.json", "run/.albert_jax.lock"),
         allow_notices=True),
]

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
         "tokenizer_config.json is not UTF-8 text"),

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
         "albert_jax.json is not UTF-8 text"),
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
    *CLI_CASES,
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


def cli_env(tmp: Path | None) -> dict[str, str]:
    """A command's environment: offline, CPU, its Hugging Face home under ``tmp``."""
    env = child_env(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    if tmp is not None:
        env["HF_HOME"] = str(tmp / "hf-home")
    return env


def run_cli(argv: list[str], tmp: Path, stdin: bytes | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "albert_jax.cli", *argv], input=stdin,
                          capture_output=True, env=cli_env(tmp), cwd=tmp, timeout=300)


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
    """Runs the selected cases, each in its own directory and process: a few at a time, each
    forked from one interpreter that has imported JAX and torch (tests/forkrun.py): most cases
    would otherwise be an interpreter start waiting on imports."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_catalogue"]
    benches = {c.name: Bench(tmp_path_factory.mktemp("case"), tiny_models) for c in selected}

    def run(case: Case) -> Run:
        bench = benches[case.name]
        (bench.tmp / "hf-home").mkdir()
        argv = case.setup(bench)
        before = snapshot(bench.tmp)
        proc = runner.run(argv, env=cli_env(bench.tmp), cwd=bench.tmp, stdin=case.stdin)
        return Run(bench, before, snapshot(bench.tmp), proc)

    def run_here(case: Case) -> Run:
        bench = benches[case.name]
        (bench.tmp / "hf-home").mkdir()
        argv = case.setup(bench)
        before = snapshot(bench.tmp)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        proc = subprocess.CompletedProcess(argv, code, out.getvalue().encode(),
                                           err.getvalue().encode())
        return Run(bench, before, snapshot(bench.tmp), proc)

    runs = {c.name: run_here(c) for c in selected if c.quick}
    slow = [c for c in selected if not c.quick]
    if slow:
        runner = ForkRunner(cli_env(None))
        try:
            # The control compiles fill-mask first, alone: the cases after it that run the
            # model find its programs in the (session's) persistent compilation cache.
            for case in [c for c in slow if c.name == "control: fill-mask"]:
                runs[case.name] = run(case)
                slow.remove(case)
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                runs.update(zip((c.name for c in slow), pool.map(run, slow), strict=True))
        finally:
            runner.close()
    return runs


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
        if case.allow_notices:
            lines = [x for x in lines if not x.startswith("WARNING:")]
        assert_one_line("\n".join(lines), case.message)
    # Nothing but the declared outputs changed: no temporary litter, no input touched.
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    changed.discard(".")  # The directory itself: its mtime moves when an output is added.
    assert not {p for p in changed if not under(p, case.outputs)}, sorted(changed)
    if case.check_output is not None:  # a success, or score's "some lines failed" (1)
        case.check_output(bench, stdout)
    elif case.exit_code != 0:
        assert stdout == "", stdout
        assert not any(under(p, case.outputs) for p in after if p not in case.kept), \
            "an output was written"
        assert not (bench.tmp / "pwned").exists()


def assert_one_line(stderr: str, message: str) -> None:
    """stderr is one short line holding ``message``: no traceback, no echoed megabytes,
    no escaped newline."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in stderr and "\\n" not in lines[0], lines[0]
    assert len(lines[0]) <= 1100, len(lines[0])  # cli.MAX_MESSAGE plus the prefix


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
    from albert_jax.errors import TokenizerError
    from albert_jax.inference import Embedder, FillMask, PseudoLogLikelihood
    from albert_jax.pretrained import load_pretrained
    from albert_jax.training import finetune, run_config

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
    config = run_config.finetune_config("sst2", learning_rate=1e-5, batch_size=8, steps=1,
                                        warmup=0, max_seq_length=16)
    config.init = str(model)
    with pytest.raises(finetune.FinetuneError, match=message):
        finetune.load_init(config, finetune.family_for(config))


# ---------------------------------------------------------------------------- signals, streams
def test_sigterm_during_score_removes_the_temporary(tiny_models, tmp_path):
    """A real SIGTERM while score writes: exit 143, one line, no output, no temporary."""
    import signal
    import time

    model = Bench(tmp_path, tiny_models).model()
    source = write(tmp_path / "in.txt", "the cat sat on the mat.\n" * 20000)
    before = snapshot(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "albert_jax.cli", "score", "--task", "pll", "--model",
         str(model), "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
         "--quiet", "--no-compile-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.jsonl.*.tmp")):  # the temporary exists: mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert_one_line(stderr.decode(), "terminated (SIGTERM): no output written")
    assert stdout == b""
    assert snapshot(tmp_path).keys() - {"hf-home"} == before.keys() - {"hf-home"}


def test_fill_mask_answers_stdin_before_it_is_closed(tiny_models, tmp_path):
    """stdin is read in windows: the first window's answers appear while stdin stays
    open (a command that read everything first would print nothing yet)."""
    import select

    model = Bench(tmp_path, tiny_models).model()
    proc = subprocess.Popen(
        [sys.executable, "-m", "albert_jax.cli", "fill-mask", "--model", str(model),
         "--top-k", "1", "--json", "--no-compile-cache"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(tmp_path), cwd=tmp_path)
    try:
        proc.stdin.write(f"{PROMPT}\n".encode() * cli.FILL_MASK_WINDOW)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no answer within 120 s while stdin is open"
        first = json.loads(proc.stdout.readline())
        assert first["input"] == PROMPT and len(first["predictions"]) == 1
        assert proc.poll() is None  # still waiting for more input
        proc.stdin.write(f"{PROMPT}\n".encode())
        proc.stdin.close()
        rest, stderr = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=120) == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(rest.decode().splitlines()) == cli.FILL_MASK_WINDOW  # 63 + the last line
    assert stderr == b""


# ---------------------------------------------------------------------------- real filesystems
def _mount_tmpfs(where: Path, options: str) -> None:
    """A real tmpfs at ``where`` (root only; skips with the reason otherwise)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_full_disk_while_score_writes(tiny_models, tmp_path, mounts):
    """A real full filesystem (a 16 KiB tmpfs): one line naming the output, exit 2, and
    nothing left on it (the partial temporary is removed)."""
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=16k")
    mounts.append(full)
    model = Bench(tmp_path, tiny_models).model()
    source = write(tmp_path / "in.txt", f"{PROMPT}\n" * 300)  # ~100 KB of records
    proc = run_cli(["score", "--task", "fill-mask", "--model", str(model), "--input",
                    str(source), "--output", str(full / "out.jsonl"), "--quiet",
                    "--no-compile-cache"], tmp_path, None)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr.decode(), f"cannot write {full / 'out.jsonl'}: No space left")
    assert list(full.iterdir()) == []


def test_full_disk_behind_stdout(tiny_models, tmp_path):
    """stdout redirected to /dev/full (every write: ENOSPC): one line, exit 2."""
    model = Bench(tmp_path, tiny_models).model()
    env = cli_env(tmp_path)
    with open("/dev/full", "wb") as devfull:
        proc = subprocess.run([sys.executable, "-m", "albert_jax.cli", "fill-mask", "--model",
                               str(model), "--no-compile-cache", PROMPT], stdout=devfull,
                              stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr.decode(), "cannot write the output: No space left on device")


def _read_only_dir(where: Path, mounts: list[Path]) -> None:
    """A directory nobody may write: a read-only tmpfs as root, else mode 0555."""
    if os.geteuid() == 0:
        _mount_tmpfs(where, "ro,size=16k")
        mounts.append(where)
    else:
        where.mkdir()
        where.chmod(0o555)


READ_ONLY_COMMANDS = {
    "score": lambda b, ro: score_args(b, output=f"{ro.name}/out.jsonl"),
    "predict": lambda b, ro: ["predict", "--model", str(b.model()), "--output",
                              str(ro / "p.jsonl")],
    "convert": lambda b, ro: ["convert", str(b.model()), str(ro / "out")],
    "export": lambda b, ro: ["export", str(damaged_workdir(b)), str(ro / "out")],
    "pretrain": lambda b, ro: training("pretrain", ro / "run"),
    "finetune": lambda b, ro: training("finetune", ro),
}


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_read_only_output_is_refused_before_any_work(command, tiny_models, tmp_path, mounts):
    ro = tmp_path / "ro"
    _read_only_dir(ro, mounts)
    bench = Bench(tmp_path, tiny_models)
    argv = READ_ONLY_COMMANDS[command](bench, ro)
    before = snapshot(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    assert code == 2 and out.getvalue() == ""
    why = "it is on a read-only filesystem" if os.geteuid() == 0 else "it is not writable"
    assert_one_line(err.getvalue(), f"cannot write in {ro}: {why}")
    assert snapshot(tmp_path) == before


@pytest.fixture
def chattr(tmp_path):
    """``chattr(path, "+i")``; every flag set is cleared again at teardown. Skips where the
    filesystem or the user cannot set inode flags (chattr needs root or CAP_LINUX_IMMUTABLE)."""
    probe = tmp_path / "chattr-probe"
    probe.touch()
    ok = shutil.which("chattr") and subprocess.run(
        ["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("chattr +i is not possible here (needs root and ext4/xfs/btrfs)")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    locked: list[Path] = []

    def set_flag(path: Path, flag: str) -> None:
        subprocess.run(["chattr", flag, str(path)], check=True)
        locked.append(path)

    yield set_flag
    for path in locked:
        subprocess.run(["chattr", "-i", "-a", str(path)], check=True)


@pytest.mark.parametrize("flag, word", [("+i", "immutable"), ("+a", "append-only")])
def test_chattr_outputs_are_refused_before_any_work(flag, word, chattr, tiny_models, tmp_path):
    """Root's os.access says yes to chattr'ed places; the rename would fail after the work.
    Both an immutable output file and an immutable directory are refused up front."""
    bench = Bench(tmp_path, tiny_models)
    out_file = tmp_path / "out.jsonl"
    out_file.write_text("kept\n")
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    chattr(out_file, flag)
    chattr(locked_dir, flag)
    score = score_args(bench, output=out_file.name)
    model = score[score.index("--model") + 1]
    into_dir = [*score[: score.index("--output") + 1], str(locked_dir / "out.jsonl")]
    cases = [
        (score, f"--output {out_file}: the file is {word} (chattr)"),
        (into_dir, f"cannot write in {locked_dir}: it is {word} (chattr)"),
        (["convert", model, str(locked_dir / "out")],
         f"cannot write in {locked_dir}: it is {word} (chattr)"),
    ]
    for argv, message in cases:
        before = snapshot(tmp_path)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        assert code == 2 and out.getvalue() == "", argv
        assert_one_line(err.getvalue(), message)
        assert snapshot(tmp_path) == before
    assert out_file.read_text() == "kept\n"
