"""The albert-jax command line: output format, errors, exit status."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY, require_spiece, save_hf_model

from albert_jax import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    require_spiece()
    directory = tmp_path_factory.mktemp("cli_model")
    save_hf_model(directory, "AlbertForMaskedLM", seed=1,
                  **dict(TINY, initializer_range=1.0, max_position_embeddings=64))
    return str(directory)


def run_cli(args, stdin="", monkeypatch=None, capsys=None):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fill_mask_prints_ranked_completions(model_dir, monkeypatch, capsys):
    code, out, err = run_cli(["fill-mask", "--model", model_dir, "--top-k", "3",
                              "where is my [MASK]?"], monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    # Random weights may predict a piece that continues "my" ("myejo?"): check the frame.
    frame = re.compile(r"where is my.*\? \((\d\.\d\d|\d\.\de-\d\d)\)")
    assert all(frame.fullmatch(x) for x in lines), lines
    scores = [float(line.rsplit("(", 1)[1][:-1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_bad_line_on_stdin_fails_alone(model_dir, monkeypatch, capsys):
    stdin = "first [MASK] line\nno mask in this one\nlast [MASK] line\n"
    code, out, err = run_cli(["fill-mask", "--model", model_dir, "--top-k", "2"],
                             stdin=stdin, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    err_lines = [line for line in err.splitlines() if "error" in line]
    assert len(err_lines) == 1
    assert "input 2 'no mask in this one' has no [MASK] tokens" in err_lines[0]
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].startswith("first") and blocks[1].startswith("last")


def test_json_output_and_targets(model_dir, monkeypatch, capsys):
    code, out, _ = run_cli(["fill-mask", "--model", model_dir, "--json", "--targets",
                            "▁father,▁mother", "where is my [MASK]?", "bad"],
                           monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert first["input"] == "where is my [MASK]?"
    assert {p["token_str"] for p in first["predictions"]} == {"father", "mother"}
    assert set(first["predictions"][0]) == {"score", "token", "token_str", "sequence"}
    assert second == {"input": "bad", "error": second["error"]} and "no [MASK]" in second["error"]


def test_missing_model_is_one_line(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["fill-mask", "--model", str(tmp_path / "nowhere"), "a [MASK]"],
                             monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err


def test_bad_arguments(model_dir, monkeypatch, capsys):
    code, _, err = run_cli(["fill-mask", "--model", model_dir, "--top-k", "0", "a [MASK]"],
                           monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "--top-k must be at least 1" in err


def test_console_script_offline_without_cache(tmp_path):
    """The real entry point, default model, no network and an empty cache: one line, exit 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "albert_jax.cli", "fill-mask", "a [MASK]"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "albert-base-v2" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_round_trip_and_refusal(model_dir, tmp_path, monkeypatch, capsys):
    jax_dir, hf_dir = str(tmp_path / "jax"), str(tmp_path / "hf")
    assert run_cli(["convert", model_dir, jax_dir], monkeypatch=monkeypatch,
                   capsys=capsys)[0] == 0
    assert run_cli(["convert", "--to", "hf", jax_dir, hf_dir], monkeypatch=monkeypatch,
                   capsys=capsys)[0] == 0
    assert {"config.json", "spiece.model", "params.safetensors"} <= set(os.listdir(jax_dir))
    assert {"config.json", "spiece.model", "model.safetensors"} <= set(os.listdir(hf_dir))
    code, _, err = run_cli(["convert", model_dir, jax_dir], monkeypatch=monkeypatch,
                           capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
