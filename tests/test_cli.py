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

from albert_jax import cli, hub


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


def _offline_env(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    return env


def test_console_script_offline_without_cache(tmp_path):
    """The real entry point, albert-base-v2 asked for, no network, empty cache: one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "albert_jax.cli", "fill-mask", "--model", "albert-base-v2",
         "a [MASK]"], capture_output=True, text=True, env=_offline_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "albert-base-v2" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(hub.packaged_model_dir("albert-mini") is None,
                    reason="albert-mini is not in the package")
def test_default_model_offline_falls_back_to_albert_mini(tmp_path):
    """No --model, no network, empty cache: the bundled albert-mini answers, saying so."""
    proc = subprocess.run(
        [sys.executable, "-m", "albert_jax.cli", "fill-mask", "where is my [MASK]?"],
        capture_output=True, text=True, env=_offline_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    # A predicted piece may glue to "my" ("where is my,? (0.06)"): check the frame only.
    assert all(re.fullmatch(r"where is my.*\? \((\d\.\d\d|\d\.\de-\d\d)\)", x) for x in lines)
    notices = [x for x in proc.stderr.splitlines() if "albert-mini" in x]
    assert len(notices) == 1 and "albert-base-v2" in notices[0]


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


# ------------------------------------------------------------------ score (batch scoring)
LONG = " ".join(["word"] * 70) + " [MASK]"


def _score(args, tmp_path, lines: bytes, monkeypatch, capsys, name="out.jsonl"):
    src = tmp_path / "in.txt"
    src.write_bytes(lines)
    out = tmp_path / name
    code = cli.main(["score", "--input", str(src), "--output", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    return code, out, err


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_score_fill_mask_bad_lines_get_error_records(model_dir, tmp_path, monkeypatch, capsys):
    lines = ("a [MASK] b\nno mask here\ntwo [MASK] and [MASK]\n\n   \n"
             f"{LONG}\nlast [MASK] one\n").encode() + b"bad \xff\xfe [MASK] bytes\n"
    code, out, err = _score(["--task", "fill-mask", "--model", model_dir, "--top-k", "2"],
                            tmp_path, lines, monkeypatch, capsys)
    assert code == 1, err
    recs = _records(out)
    assert [r["line"] for r in recs] == list(range(1, 9))
    assert "has no [MASK]" in recs[1]["error"] and set(recs[1]) == {"line", "error"}
    assert "has 2 [MASK]" in recs[2]["error"]
    assert recs[3]["error"] == recs[4]["error"] == "empty line"
    assert "tokens long; the model accepts at most 64" in recs[5]["error"]
    assert recs[0]["input"] == "a [MASK] b" and len(recs[0]["predictions"]) == 2
    assert recs[6]["input"] == "last [MASK] one"
    assert recs[7]["invalid_utf8"] is True and "\ufffd" in recs[7]["input"]
    assert "invalid_utf8" not in recs[0]
    summary = err.strip().splitlines()[-1]
    assert "3 of 8 lines scored (5 failed)" in summary
    assert "inputs/s" in summary and "tokens/s" in summary
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_score_fill_mask_matches_python_api(model_dir, tmp_path, monkeypatch, capsys):
    from albert_jax.inference import FillMask

    texts = ["where is my [MASK]?", "x " * 20 + "[MASK]", "[MASK] y"]
    code, out, _ = _score(["--task", "fill-mask", "--model", model_dir, "--batch-size", "2"],
                          tmp_path, "\n".join(texts).encode(), monkeypatch, capsys)
    assert code == 0
    expected = FillMask.from_pretrained(model_dir)(texts)
    for rec, exp in zip(_records(out), expected, strict=True):
        assert [p["token"] for p in rec["predictions"]] == [p["token"] for p in exp]


def test_score_pll_and_stdin(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello world\n\nthe cat\n")))
    out = tmp_path / "pll.jsonl"
    code = cli.main(["score", "--task", "pll", "--model", model_dir, "--input", "-",
                     "--output", str(out), "--quiet"])
    assert code == 1
    first, empty, last = _records(out)
    assert empty == {"line": 2, "error": "empty line"}
    assert first["tokens"] == ["▁hello", "▁world"] and len(first["token_logprobs"]) == 2
    assert abs(first["total_logprob"] - sum(first["token_logprobs"])) < 1e-4
    assert last["line"] == 3 and last["pseudo_perplexity"] > 1


def test_score_embed_writes_npy_and_status(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = _score(["--task", "embed", "--model", model_dir, "--pooling", "cls"],
                            tmp_path, b"one line\n\ntwo lines here\n", monkeypatch, capsys,
                            name="emb.npy")
    assert code == 1, err
    import numpy as np

    vectors = np.load(out)
    assert vectors.shape == (3, 32)
    assert np.isnan(vectors[1]).all() and np.isfinite(vectors[[0, 2]]).all()
    status = _records(tmp_path / "emb.jsonl")
    assert [("error" in r) for r in status] == [False, True, False]


def test_score_all_good_exits_zero(model_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = _score(["--task", "pll", "--model", model_dir, "--word-l2r"], tmp_path,
                          b"unbelievably good\n", monkeypatch, capsys)
    assert code == 0 and len(_records(out)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--max-length", "1000"], "max_length must be in 1..64"),
        (["--task", "embed"], "must end in .npy"),
        (["--tensor", "3"], "cannot be split"),
    ],
)
def test_score_usage_errors(model_dir, tmp_path, monkeypatch, capsys, args, message):
    args = ["--task", "fill-mask", *args] if "--task" not in args else args
    code, out, err = _score(["--model", model_dir, *args], tmp_path, b"a [MASK]\n",
                            monkeypatch, capsys)
    assert code == 2 and message in err, err
    assert not out.exists()


def test_score_missing_input_is_usage_error(model_dir, tmp_path, monkeypatch, capsys):
    code = cli.main(["score", "--task", "pll", "--model", model_dir, "--input",
                     str(tmp_path / "none.txt"), "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "cannot read" in capsys.readouterr().err


def test_score_failure_leaves_no_output(model_dir, tmp_path, monkeypatch, capsys):
    from albert_jax.inference import PseudoLogLikelihood

    def boom(self, prepared, progress=None):
        yield from ()
        raise RuntimeError("device lost")

    monkeypatch.setattr(PseudoLogLikelihood, "stream", boom)
    (tmp_path / "out.jsonl").write_text("old\n")
    with pytest.raises(RuntimeError, match="device lost"):
        _score(["--task", "pll", "--model", model_dir], tmp_path, b"a b\n", monkeypatch, capsys)
    assert (tmp_path / "out.jsonl").read_text() == "old\n"  # Untouched.
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.jsonl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "configs/pretrain/nope.py", "--workdir", "W"], "cannot load config file"),
        (["--config", "configs/pretrain/tiny.py", "--workdir", "W", "--config.model.bogus=3"],
         "unknown config key in an override: model.bogus"),
        (["--workdir", "W"], "--config is required"),
    ],
)
def test_pretrain_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    args = [a.replace("W", str(tmp_path / "run")) for a in args]
    code = cli.main(["pretrain", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_export_without_checkpoints(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fill-mask", "score", "convert", "pretrain", "finetune",
                                     "evaluate", "predict", "export"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        if cli.main([command, "--help"]) == 0:  # the training commands return
            raise SystemExit(0)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: albert-jax {command}") and len(out.splitlines()) > 5


@pytest.mark.parametrize(("command", "key", "default"), [
    ("pretrain", "optimizer.learning_rate", "0.02"),
    ("pretrain", "data.max_seq_length", "64"),
    ("finetune", "init", "'albert-base-v2'"),
    ("finetune", "optimizer.learning_rate", "(set by each config file)"),
])
def test_training_help_lists_config_keys_with_defaults(command, key, default, capsys):
    assert cli.main([command, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:1] == [key] and line.strip().endswith(default) for line in lines)


def test_training_help_with_a_config_file_shows_its_values(capsys):
    assert cli.main(["finetune", "--config", "configs/finetune/sst2.py", "--help",
                     "--config.num_train_steps=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["num_train_steps", "7"] for line in lines)
    assert any(line.split() == ["optimizer.learning_rate", "1e-05"] for line in lines)


def test_unknown_arguments_are_one_line(capsys):
    assert cli.main(["export", "a", "b", "--nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "albert-jax export: error: unrecognized arguments: --nope"
    assert cli.main(["evaluate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "one of the arguments --workdir --model is required" in err



def test_relative_paths_in_a_config_file_resolve_from_the_file(tmp_path, monkeypatch):
    """A config anywhere, run from anywhere: its relative paths are from its own folder;
    overrides are from the current directory."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "my.py").write_text(
        "from albert_jax.training.run_config import pretrain_config\n\n\n"
        "def get_config():\n"
        "    c = pretrain_config()\n"
        "    c.data.corpus_dir = '../corpus'\n"
        "    c.data.spiece_model = 'spm/spiece.model'\n"
        "    return c\n")
    monkeypatch.chdir("/")
    config, _ = cli.parse_config_args(["--config", str(tmp_path / "cfg" / "my.py"),
                                       "--workdir", "w", "--config.data.tfds_data_dir=t"])
    assert config.data.corpus_dir == str(tmp_path / "corpus")
    assert config.data.spiece_model == str(tmp_path / "cfg" / "spm" / "spiece.model")
    assert config.data.tfds_data_dir == "t"  # an override: from the current directory
