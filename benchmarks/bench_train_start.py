"""A training command's start-up: the compilation cache of a rerun, and tensorboardX's import.

(a) ``albert-jax pretrain`` with the tiny config (``--steps`` steps, a checkpoint every 4,
    on a fresh workdir each time, the corpus prepared once beforehand), three whole
    processes one after the other in this one run: with ``--no-compile-cache`` (the anchor:
    every training command before it used the cache), then with an empty cache (it fills
    it), then the same command again (a rerun or a resume: it loads the compiled steps).
    Wall and CPU seconds (user + system, every thread) of each process.
(b) Importing tensorboardX as ``MetricsLog`` does (without torch) against a plain
    ``import tensorboardX`` (which imports torch), each in a fresh interpreter (median of
    ``--repeats``).

    python benchmarks/bench_train_start.py [--steps 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.py"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process; fails loudly if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_start_"))
    tfds = tmp / "tfds"

    def pretrain(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "albert_jax.cli", "pretrain", "--config", str(TINY),
                "--workdir", str(tmp / name), f"--config.num_train_steps={args.steps}",
                "--config.log_every=1", "--config.checkpoint_every=4",
                "--config.eval_every=0", "--config.mesh.data=1",
                "--config.data.file_pattern=[cms]*.txt",
                f"--config.data.tfds_data_dir={tfds}", *extra]

    print(f"(a) albert-jax pretrain, tiny config, {args.steps} steps, whole processes")
    timed(pretrain("prepare", "--config.num_train_steps=1", "--no-compile-cache"), env)
    cache = str(tmp / "xla")
    rows = [("no compilation cache (anchor)", pretrain("off", "--no-compile-cache")),
            ("empty cache (fills it)", pretrain("cold", "--cache-dir", cache)),
            ("the cache filled (a rerun)", pretrain("warm", "--cache-dir", cache))]
    results = [(label, *timed(cmd, env)) for label, cmd in rows]
    anchor = results[0][1]
    for label, wall, cpu in results:
        print(f"  {label:32s} {wall:6.1f} s wall {cpu:6.1f} s CPU  {anchor / wall:4.2f}x")

    print(f"(b) importing tensorboardX in a fresh interpreter, median of {args.repeats}")
    plain = "import time; t = time.perf_counter(); import tensorboardX; " \
            "print(time.perf_counter() - t)"
    ours = "import time; from albert_jax.training import trainer; t = time.perf_counter(); " \
           "trainer._summary_writer_class(); print(time.perf_counter() - t)"
    for label, code in (("import tensorboardX (anchor)", plain),
                        ("as MetricsLog does (no torch)", ours)):
        seconds = [float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        text=True, env=env, check=True).stdout)
                   for _ in range(args.repeats)]
        print(f"  {label:32s} {statistics.median(seconds):6.3f} s")


if __name__ == "__main__":
    main()
