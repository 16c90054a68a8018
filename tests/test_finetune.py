"""Fine-tuning: every task family end to end on tiny models, exact resume after kill -9,
sharded equality, evaluate/predict/export (Hugging Face logits), bad input, and albert-mini
learning SST-2 on a small slice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY, require_spiece, save_hf_model, xla_flags

from albert_jax import cli
from albert_jax.training import finetune, tasks, trainer
from albert_jax.training import run_config as rc
from albert_jax.training.tasks import glue

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "finetune"
SST2 = SHARED_DATA / "glue" / "SST-2"
SQUAD_DEV = SHARED_DATA / "squad" / "dev-v1.1.json.zip"


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> Path:
    """A random tiny ALBERT (MLM weights, the real spiece.model): what fine-tuning starts from."""
    require_spiece()
    d = tmp_path_factory.mktemp("tiny_init")
    save_hf_model(d, "AlbertForMaskedLM", **TINY)
    return d


def load_config(task: str, workdir: Path, *overrides: str):
    config, _ = cli.parse_config_args(
        ["--config", str(CONFIGS / f"{task}.py"), "--workdir", str(workdir), *overrides])
    return config


def tiny_overrides(init: Path, tfds: Path, steps: int = 4, **extra) -> list[str]:
    values = {
        "init": init, "num_train_steps": steps, "global_batch_size": 8, "eval_batch_size": 8,
        "max_seq_length": 32, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
        "mesh.data": 1, "optimizer.warmup_steps": 1, "optimizer.learning_rate": 1e-3,
        "data.max_train_examples": 64, "data.max_eval_examples": 24,
        "data.tfds_data_dir": tfds,
    }
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_finetune(task: str, workdir: Path, overrides: list[str]) -> dict:
    return finetune.finetune(load_config(task, workdir, *overrides), workdir, progress=False)


@pytest.mark.parametrize("name", ["sst2", "cola", "mnli", "squad_v1", "squad_v2", "conll2003",
                                  "race"])
def test_every_config_loads_with_its_published_recipe(name, tmp_path):
    config = load_config(name, tmp_path)
    family = tasks.family_for(config)
    assert config.task == name
    assert config.optimizer.name == "adamw"
    assert config.num_train_steps > config.optimizer.warmup_steps
    assert config.eval_every % config.log_every == 0  # evaluations happen on logged steps
    if isinstance(family, glue.GlueFamily) and config.data.manual_dir:
        rc.validate_config(config)  # the local GLUE folders exist
    recipes = {"sst2": (1e-5, 32, 20935, 1256), "cola": (1e-5, 16, 5336, 320),
               "mnli": (3e-5, 128, 10000, 1000)}
    if name in recipes:
        o = config.optimizer
        assert (o.learning_rate, config.global_batch_size, config.num_train_steps,
                o.warmup_steps) == recipes[name]


@pytest.fixture(scope="module")
def sst2_run(tiny_init, shared_tfds_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One 4-step SST-2 run (dev evaluations at steps 2 and 4): (workdir, its result). The
    tests that use it only read the workdir."""
    if not SST2.is_dir():
        pytest.skip("SST-2 is absent")
    wd = tmp_path_factory.mktemp("sst2") / "run"
    return wd, run_finetune("sst2", wd, tiny_overrides(tiny_init, shared_tfds_dir))


# ------------------------------------------------------------------------------ families
def test_glue_run_writes_best_model_and_metrics(sst2_run):
    wd, result = sst2_run
    assert result["metric"] == "accuracy" and 0.0 <= result["value"] <= 1.0
    records = trainer.read_metrics(wd)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"loss", "accuracy", "learning_rate", "grad_norm"} <= set(r) for r in records)
    assert {r["step"] for r in records if "eval_accuracy" in r} == {2, 4}
    best = json.loads((wd / "best.json").read_text())
    assert best["value"] == max(r["eval_accuracy"] for r in records if "eval_accuracy" in r)
    cfg = json.loads((wd / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}
    assert cfg["architectures"] == ["AlbertForSequenceClassification"]
    # evaluate gives the dev metric best.json recorded for the same model.
    scores = finetune.evaluate(workdir=str(wd))
    assert scores["accuracy"] == pytest.approx(best["value"], abs=1e-9)


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason="the SQuAD dev file is absent")
def test_squad_run(tiny_init, tmp_path, shared_tfds_dir):
    wd = tmp_path / "run"
    extra = {"data.train_file": SQUAD_DEV, "data.validation_file": SQUAD_DEV,
             "max_seq_length": 96, "data.doc_stride": 48, "data.max_query_length": 24,
             "data.max_train_examples": 16, "data.max_eval_examples": 8}
    result = run_finetune("squad_v1", wd, tiny_overrides(tiny_init, shared_tfds_dir, **extra))
    assert result["metric"] == "f1"
    assert set(result["eval"]) == {"exact_match", "f1"}
    assert 0.0 <= result["eval"]["f1"] <= 100.0
    out = tmp_path / "preds.jsonl"
    n = finetune.predict(out, workdir=str(wd), split="validation")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == len(lines) == 8 and all({"id", "answer"} == set(r) for r in lines)


def _write_conll(path: Path, sentences: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["Paris", "London", "John", "Smith", "visited", "the", "city", "of", "Acme", "Inc"]
    tags = ["B-LOC", "B-LOC", "B-PER", "I-PER", "O", "O", "O", "O", "B-ORG", "I-ORG"]
    lines = ["-DOCSTART- -X- O O", ""]
    for _ in range(sentences):
        for i in rng.integers(0, len(words), rng.integers(3, 9)):
            lines.append(f"{words[i]} NNP O {tags[i]}")
        lines.append("")
    path.write_text("\n".join(lines))


def test_token_classification_run(tiny_init, tmp_path, shared_tfds_dir):
    _write_conll(tmp_path / "train.txt", 40, 0)
    _write_conll(tmp_path / "dev.txt", 12, 1)
    wd = tmp_path / "run"
    extra = {"data.train_file": tmp_path / "train.txt",
             "data.validation_file": tmp_path / "dev.txt"}
    result = run_finetune("conll2003", wd, tiny_overrides(tiny_init, shared_tfds_dir, **extra))
    assert {"precision", "recall", "f1", "accuracy"} <= set(result["eval"])
    cfg = json.loads((wd / "best" / "config.json").read_text())
    assert cfg["id2label"]["0"] == "O" and len(cfg["id2label"]) == 6
    out = tmp_path / "tags.jsonl"
    finetune.predict(out, workdir=str(wd), path=str(tmp_path / "dev.txt"))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 12
    assert all(len(r["tokens"]) == len(r["tags"]) for r in rows)
    assert {t for r in rows for t in r["tags"]} <= set(cfg["id2label"].values())


def _write_mc(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "id": f"q{i}", "context": "The cat sat on the mat. It was red.",
                "question": "What colour was the mat?" if i % 2 else "The mat was _ .",
                "choices": ["red", "blue", "green", "black"],
                "label": int(rng.integers(0, 4))}) + "\n")


def test_multiple_choice_run(tiny_init, tmp_path, shared_tfds_dir):
    _write_mc(tmp_path / "train.jsonl", 32, 0)
    _write_mc(tmp_path / "dev.jsonl", 10, 1)
    wd = tmp_path / "run"
    extra = {"data.train_file": tmp_path / "train.jsonl",
             "data.validation_file": tmp_path / "dev.jsonl"}
    result = run_finetune("race", wd, tiny_overrides(tiny_init, shared_tfds_dir, **extra))
    assert set(result["eval"]) == {"accuracy"}
    out = tmp_path / "mc.jsonl"
    finetune.predict(out, workdir=str(wd), split="validation")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(10)]
    assert all(len(r["probabilities"]) == 4 and 0 <= r["label"] < 4 for r in rows)
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)


def test_encoding_of_each_family(tiny_init, tmp_path):
    """Token labels sit on each word's first piece; multiple choice fills the blank."""
    from albert_jax.tokenizer import AlbertTokenizer

    tok = AlbertTokenizer.from_pretrained(tiny_init)
    _write_conll(tmp_path / "t.txt", 3, 2)
    config = load_config("conll2003", tmp_path, f"--config.data.train_file={tmp_path / 't.txt'}")
    fam = tasks.family_for(config)
    fam.setup()
    enc = fam.load("train", tok, training=True)
    for row, (tokens, tags) in enumerate(enc.examples):
        starts = enc.extra[row]
        labels = enc.arrays["labels"][row]
        assert [fam.label_names[labels[p]] for p in starts] == tags
        assert int((labels >= 0).sum()) == len(tokens)
        for p, word in zip(starts, tokens, strict=True):
            piece = tok.convert_ids_to_tokens(int(enc.arrays["input_ids"][row, p]))
            assert piece.startswith("▁") and word.lower().startswith(piece[1:2])
    _write_mc(tmp_path / "m.jsonl", 2, 3)
    config = load_config("race", tmp_path, f"--config.data.train_file={tmp_path / 'm.jsonl'}",
                         "--config.max_seq_length=32")
    enc = tasks.family_for(config).load("train", tok, training=True)
    assert enc.arrays["input_ids"].shape == (2, 4, 32)
    text = tok.decode(enc.arrays["input_ids"][0, 1], skip_special_tokens=True)
    assert text == "the cat sat on the mat. it was red. the mat was blue."


# ------------------------------------------------------------------------------ trainer
@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is absent")
def test_sharded_run_equals_single_device(tiny_init, tmp_path, shared_tfds_dir):
    losses = {}
    for data in (1, 8):
        wd = tmp_path / f"d{data}"
        run_finetune("sst2", wd, tiny_overrides(tiny_init, shared_tfds_dir, steps=3,
                                                eval_every=0, max_seq_length=16,
                                                **{"mesh.data": data}))
        losses[data] = [r["loss"] for r in trainer.read_metrics(wd)]
    np.testing.assert_allclose(losses[8], losses[1], rtol=1e-5)


def test_batches_resume_and_cover_each_epoch():
    arrays = {"x": np.arange(10)}
    b = finetune.Batches(arrays, 4, seed=3)
    first = [next(b)["x"] for _ in range(2)]
    assert len(set(np.concatenate(first))) == 8  # no repeats within an epoch
    state = b.get_state()
    rest = [next(b)["x"] for _ in range(3)]
    b2 = finetune.Batches(arrays, 4, seed=3)
    b2.set_state(state)
    assert all((next(b2)["x"] == r).all() for r in rest)
    halves = [finetune.Batches(arrays, 4, seed=3, process_index=i, process_count=2)
              for i in range(2)]
    both = np.concatenate([next(h)["x"] for h in halves])
    assert (both == first[0]).all()


def _env(tmp: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONUNBUFFERED="1")
    env.pop("HF_HUB_OFFLINE", None)
    return env


@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is absent")
def test_resume_from_an_earlier_checkpoint_is_exact(tiny_init, tmp_path, shared_tfds_dir):
    """What a kill leaves on disk: the checkpoint of step 2, metrics and best.json of later
    steps. The rerun resumes at step 2 (data position, dropout keys) and replays the rest
    bit-identically, including the dev evaluations and the best-model choice."""
    import shutil

    wd = tmp_path / "run"
    over = tiny_overrides(tiny_init, shared_tfds_dir, steps=6, eval_every=3,
                          checkpoint_every=2, **{"model.classifier_dropout_prob": 0.1})
    run_finetune("sst2", wd, over)
    want = trainer.read_metrics(wd)
    best = json.loads((wd / "best.json").read_text())
    for step in ("4", "6"):
        shutil.rmtree(wd / "checkpoints" / step)
    run_finetune("sst2", wd, over)
    assert trainer.read_metrics(wd) == want
    assert json.loads((wd / "best.json").read_text()) == best


@pytest.mark.slow
@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is absent")
def test_kill_and_resume_is_exact(tiny_init, tmp_path, shared_tfds_dir):
    steps = 10
    over = tiny_overrides(tiny_init, shared_tfds_dir, steps=steps, eval_every=5,
                          **{"model.classifier_dropout_prob": 0.1})

    def command(wd):
        return [sys.executable, "-m", "albert_jax.cli", "finetune", "--config",
                str(CONFIGS / "sst2.py"), "--workdir", str(wd), *over]

    # Prepare the TFDS data once so the two runs do not race to build it.
    family = tasks.family_for(load_config("sst2", tmp_path, *over))
    family.setup()
    family.load("validation", _tokenizer(tiny_init))
    ref = subprocess.run(command(tmp_path / "ref"), cwd=REPO, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run), cwd=REPO, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            ckpts = run / "checkpoints"
            done = [p for p in ckpts.glob("[0-9]*") if p.name.isdigit()] if ckpts.is_dir() \
                else []
            if any(int(p.name) >= 4 for p in done):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    again = subprocess.run(command(run), cwd=REPO, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    got, want = trainer.read_metrics(run), trainer.read_metrics(tmp_path / "ref")
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert got == want  # bit-identical: losses, accuracies, eval scores
    assert json.loads((run / "best.json").read_text()) == json.loads(
        (tmp_path / "ref" / "best.json").read_text())


def _tokenizer(init: Path):
    from albert_jax.tokenizer import AlbertTokenizer

    return AlbertTokenizer.from_pretrained(init)


# ------------------------------------------------------------------------------ export
def test_export_to_hf_gives_identical_logits(sst2_run, tmp_path):
    import torch
    import transformers

    from albert_jax.pretrained import load_pretrained

    wd, _ = sst2_run
    dest = tmp_path / "hf"
    assert cli.main(["export", str(wd), str(dest), "--to", "hf"]) == 0
    hf = transformers.AlbertForSequenceClassification.from_pretrained(dest).eval()
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    model, params, tok = load_pretrained(wd / "best", head="sequence_classification")
    enc = tok(["a charming and often affecting journey .", "unflinchingly bleak"],
              padding=True, return_tensors="np")
    ours = np.asarray(model.apply(params, enc["input_ids"], enc["attention_mask"],
                                  enc["token_type_ids"]).logits)
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # And the albert_jax export keeps the run config (evaluate --model works on it).
    assert cli.main(["export", str(wd), str(tmp_path / "aj")]) == 0
    assert finetune.evaluate(model_dir=str(tmp_path / "aj"))["accuracy"] == pytest.approx(
        json.loads((wd / "best.json").read_text())["value"])


# ------------------------------------------------------------------------------ bad input
def test_bad_configs_and_files_are_one_line_errors(tiny_init, tmp_path, capsys):
    base = ["finetune", "--config", str(CONFIGS / "sst2.py"), "--workdir", str(tmp_path / "w")]
    cases = [
        (["--config.task=nope"], "unknown task 'nope'"),
        (["--config.data.manual_dir=/no/such/dir"], "data.manual_dir '/no/such/dir' does not"),
        (["--config.init=/no/such/model", "--config.mesh.data=1"], "cannot load init model"),
        (["--config.global_batch_size=6", "--config.accumulation_steps=4"], "multiple of"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
    bad = tmp_path / "bad.jsonl"
    line = '{"context": "c", "question": "q", "choices": ["a", "b", "c", "d"], "label": %d}\n'
    bad.write_text(line % 1 + line % 5)
    over = [f"--config.init={tiny_init}", f"--config.data.train_file={bad}",
            f"--config.data.validation_file={bad}", "--config.mesh.data=1"]
    assert cli.main(["finetune", "--config", str(CONFIGS / "race.py"), "--workdir",
                     str(tmp_path / "r"), *over]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}, line 2" in err and "label" in err and "\n" not in err, err
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
    assert "not a fine-tuning workdir" in capsys.readouterr().err


# ------------------------------------------------------------------------------ albert-mini
@pytest.mark.slow
@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is absent")
def test_albert_mini_learns_sst2_slice(tmp_path, shared_tfds_dir):
    """The shipped albert-mini fine-tuned on the first 128 SST-2 training sentences: the loss
    falls and accuracy on that slice rises well above its majority class. (Dev accuracy
    needs far more steps: benchmarks/bench_finetune_sst2.py.) Slow, and in CI proved more
    strongly by tests/test_notebooks.py::test_02_finetune_sst2: albert-mini fine-tuned
    through the same command line beats the majority class on the whole SST-2 dev set."""
    wd = tmp_path / "mini"
    over = [
        "--config.init=albert-mini", "--config.num_train_steps=24", "--config.max_seq_length=32",
        "--config.global_batch_size=32", "--config.eval_batch_size=64", "--config.log_every=6",
        "--config.eval_every=24", "--config.checkpoint_every=24", "--config.mesh.data=1",
        "--config.optimizer.learning_rate=1e-3", "--config.optimizer.warmup_steps=3",
        "--config.data.max_train_examples=128", "--config.data.max_eval_examples=128",
        "--config.data.eval_split=train", f"--config.data.tfds_data_dir={shared_tfds_dir}",
    ]
    result = run_finetune("sst2", wd, over)
    records = trainer.read_metrics(wd)
    labels = [int(line.split("\t")[1]) for line in
              (SST2 / "train.tsv").read_text().splitlines()[1:129]]
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert records[-1]["loss"] < records[0]["loss"] - 0.2, records
    assert result["eval"]["accuracy"] > majority + 0.1, (result, majority)


@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 is absent")
def test_eval_every_on_its_own_console_metrics_and_data_under_workdir(tiny_init, tmp_path,
                                                                      capsys):
    """eval_every need not fall on a log_every step; each evaluation is printed on the
    console; with no data.tfds_data_dir, GLUE is prepared under the workdir."""
    wd = tmp_path / "run"
    over = tiny_overrides(tiny_init, tmp_path, steps=4, log_every=3, eval_every=2,
                          **{"data.tfds_data_dir": ""})
    run_finetune("sst2", wd, over)
    records = trainer.read_metrics(wd)
    assert [r["step"] for r in records] == [2, 3, 4]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [2, 4]
    err = capsys.readouterr().err
    assert "albert-jax: step 2: eval_accuracy" in err and "albert-jax: step 4: eval_" in err
    assert (wd / "tfds" / "local_glue").is_dir()
    saved = json.loads((wd / "finetune_config.json").read_text())
    assert saved["data"]["tfds_data_dir"] == str(wd / "tfds")
