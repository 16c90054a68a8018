"""albert-mini fine-tuned on the full SST-2 training set within a CPU budget, scored on the
full dev set (872 sentences), against the majority-class baseline.

The bundled albert-mini (4.9 M parameters, pretrained here on 6 MB of Gutenberg text, see
its model card) through ``albert-jax finetune`` with configs/finetune/sst2.py: length 48
(SST-2 sentences average 25 pieces), batch 32, AdamW, lr 1e-4 (a small model takes a
larger rate than base's 1e-5), 10% warmup, linear decay; the best of the dev evaluations
every ``--eval-every`` steps is kept. Prints the wall time, the dev accuracy curve and the
best checkpoint.

    python benchmarks/bench_finetune_sst2.py [--steps 600] [--workdir /tmp/bench_sst2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2_DEV = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/albert_jax_bench_sst2")
    parser.add_argument("--keep", action="store_true", help="resume an existing workdir")
    args = parser.parse_args()

    from albert_jax import cli
    from albert_jax.training import finetune, trainer

    workdir = Path(args.workdir)
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)
    config, _ = cli.parse_config_args([
        "--config", str(REPO / "configs" / "finetune" / "sst2.py"), "--workdir", str(workdir),
        "--config.init=albert-mini", f"--config.num_train_steps={args.steps}",
        f"--config.max_seq_length={args.length}", "--config.global_batch_size=32",
        f"--config.optimizer.learning_rate={args.learning_rate}",
        f"--config.optimizer.warmup_steps={args.steps // 10}",
        f"--config.eval_every={args.eval_every}", f"--config.checkpoint_every={args.eval_every}",
        "--config.log_every=20", "--config.eval_batch_size=128", "--config.mesh.data=1",
        f"--config.data.tfds_data_dir={workdir / 'tfds'}",
    ])
    t0 = time.perf_counter()
    result = finetune.finetune(config, workdir)
    wall = time.perf_counter() - t0
    labels = [int(line.split("\t")[1]) for line in SST2_DEV.read_text().splitlines()[1:]]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)
    curve = [(r["step"], r["eval_accuracy"]) for r in trainer.read_metrics(workdir)
             if "eval_accuracy" in r]
    print(f"albert-mini on SST-2: {args.steps} steps of 32 x {args.length}, wall "
          f"{wall / 60:.1f} min (data preparation and compilation included)")
    print("dev accuracy (872 sentences) by step: "
          + ", ".join(f"{s}: {a:.3f}" for s, a in curve))
    print(f"best: step {result['step']}, dev accuracy {result['value']:.3f}; majority class "
          f"{majority:.3f}")
    print(json.dumps({"wall_s": wall, "best": result, "majority": majority, "curve": curve}))


if __name__ == "__main__":
    main()
