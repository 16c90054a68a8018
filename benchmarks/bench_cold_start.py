"""Whole-command start-up: ``albert-jax`` against a transformers pipeline script, cold and warm.

Both sides run as whole processes on the same model directory (wall time of the process,
from exec to exit), one after the other in this one run:

(a) ``albert-jax fill-mask "where is my [MASK]?"`` against a script doing the same with
    ``transformers.pipeline("fill-mask")``, on albert-mini (bundled with the package,
    converted to Hugging Face format with ``albert-jax convert --to hf``);
(b) ``albert-jax score --task fill-mask`` over the 872 SST-2 dev sentences (middle word
    masked) against the pipeline (``batch_size=32``) over the same lines, both writing JSON
    Lines, on a random-weight model with the albert-base-v2 shapes saved by transformers.

*Cold*: albert_jax's persistent compilation cache empty (a fresh ``--cache-dir``), and each
side's first process; *warm*: the same command again (median of ``--repeats`` runs for
(a)). The OS file cache is not dropped (a shared machine): library files are warm after
each side's first process. Each run also prints its CPU seconds (user + system, all
threads): on a machine shared with other work, wall time stretches with the load, CPU time
much less. transformers runs with ``USE_TF=0 USE_FLAX=0`` so that it does
not import TensorFlow or Flax when they happen to be installed (as a PyTorch-only user
would run it). Then where the time goes: the same steps timed inside one process per side
(import, load, compile + first call, a second call), and the heaviest top-level imports
of ``albert-jax fill-mask`` (``python -X importtime``).

    python benchmarks/bench_cold_start.py [--repeats 3] [--skip-b] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import mask_one_word, random_base_checkpoint, sst2_sentences

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "albert_jax" / "models" / "albert-mini"
TEXT = "where is my [MASK]?"
TORCH_ENV = {"USE_TF": "0", "USE_FLAX": "0", "USE_TORCH": "1"}

# The transformers side: what a user of the pipeline would write (slow sentencepiece
# tokenizer, as albert_jax's, so neither side converts a tokenizer).
TRANSFORMERS_A = """
import sys
import torch, transformers
d = sys.argv[1]
tok = transformers.AlbertTokenizer.from_pretrained(d)
model = transformers.AlbertForMaskedLM.from_pretrained(d).eval()
pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
with torch.inference_mode():
    for r in pipe(sys.argv[2]):
        print(f"{r['sequence']} ({r['score']:.2f})")
"""
TRANSFORMERS_B = """
import json, sys
import torch, transformers
d, src, dst = sys.argv[1:4]
tok = transformers.AlbertTokenizer.from_pretrained(d)
model = transformers.AlbertForMaskedLM.from_pretrained(d).eval()
pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
lines = open(src, encoding="utf-8").read().splitlines()
with torch.inference_mode(), open(dst, "w", encoding="utf-8") as f:
    for n, (text, preds) in enumerate(zip(lines, pipe(lines, top_k=5, batch_size=32)), 1):
        preds = [{k: (float(v) if k == "score" else v) for k, v in p.items()} for p in preds]
        f.write(json.dumps({"line": n, "input": text, "predictions": preds}) + "\\n")
"""
# The same steps as the commands, timed inside one process.
PHASES_JAX = """
import sys, time
t0 = time.perf_counter()
import albert_jax.cli  # noqa: F401
from albert_jax import compile_cache
from albert_jax.inference import FillMask
t1 = time.perf_counter()
compile_cache.enable(sys.argv[2])
fm = FillMask.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
fm(sys.argv[3])
t3 = time.perf_counter()
fm(sys.argv[3])
t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2 - (t4 - t3):.2f} {t4 - t3:.3f}")
"""
PHASES_TORCH = """
import sys, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
tok = transformers.AlbertTokenizer.from_pretrained(sys.argv[1])
model = transformers.AlbertForMaskedLM.from_pretrained(sys.argv[1]).eval()
pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
t2 = time.perf_counter()
with torch.inference_mode():
    pipe(sys.argv[3])
    t3 = time.perf_counter()
    pipe(sys.argv[3])
    t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2 - (t4 - t3):.2f} {t4 - t3:.3f}")
"""


CPU_TIMES: dict[float, float] = {}  # Wall seconds of a run -> its CPU seconds.


def run(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one whole process (its CPU seconds, user + system of every thread,
    go to CPU_TIMES); fails loudly if it fails."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_TIMES[seconds] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):  # score exits 1 when some line failed.
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc


def albert_jax(*args: str) -> list[str]:
    return [sys.executable, "-m", "albert_jax.cli", *args]


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def cold_warm(name: str, ours: list[str], theirs: list[str], cache: str, repeats: int,
              target_cold: float | None, target_warm: float) -> dict:
    """Runs both sides cold, then warm ``repeats`` times; prints the comparison."""
    env = {"ALBERT_JAX_CACHE_DIR": cache}
    print(f"\n{name}  [wall s (CPU s)]", flush=True)

    def timed(label: str, cmd: list[str], run_env: dict) -> tuple[float, float, Any]:
        seconds, proc = run(cmd, run_env)
        cpu = CPU_TIMES[seconds]
        print(f"  {label:26} {seconds:7.2f} s  ({cpu:6.2f} s CPU)", flush=True)
        return seconds, cpu, proc

    jax_cold, jax_cold_cpu, proc = timed("albert_jax, cold", ours, env)
    tail = [line for line in proc.stderr.splitlines() if "scored" in line]
    torch_cold, torch_cold_cpu, _ = timed("transformers, cold", theirs, TORCH_ENV)
    warm_runs = [timed(f"albert_jax, warm {r + 1}", ours, env)[:2] for r in range(repeats)]
    torch_runs = [timed(f"transformers, warm {r + 1}", theirs, TORCH_ENV)[:2]
                  for r in range(repeats)]
    jax_warm = statistics.median(w for w, _ in warm_runs)
    torch_warm = statistics.median(w for w, _ in torch_runs)
    jax_warm_cpu = statistics.median(c for _, c in warm_runs)
    torch_warm_cpu = statistics.median(c for _, c in torch_runs)
    entries = len(list(Path(cache).glob("*-cache")))

    def verdict(ratio: float, target: float | None) -> str:
        if target is None:
            return ""
        return f" (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"

    print(f"  cold: albert_jax {jax_cold:6.2f} s   transformers {torch_cold:6.2f} s   "
          f"ratio {torch_cold / jax_cold:5.2f}x{verdict(torch_cold / jax_cold, target_cold)}; "
          f"CPU seconds {jax_cold_cpu:.2f} vs {torch_cold_cpu:.2f}: "
          f"{torch_cold_cpu / jax_cold_cpu:.2f}x")
    print(f"  warm: albert_jax {jax_warm:6.2f} s   transformers {torch_warm:6.2f} s   "
          f"ratio {torch_warm / jax_warm:5.2f}x{verdict(torch_warm / jax_warm, target_warm)}"
          f"; CPU seconds {jax_warm_cpu:.2f} vs {torch_warm_cpu:.2f}: "
          f"{torch_warm_cpu / jax_warm_cpu:.2f}x   (medians of {repeats})")
    print(f"  compilation cache after the runs: {entries} entries")
    if tail:
        print(f"  albert_jax cold run says: {tail[-1]}")
    return {"jax_cold": jax_cold, "torch_cold": torch_cold, "jax_warm": jax_warm,
            "torch_warm": torch_warm, "jax_cold_cpu": jax_cold_cpu,
            "torch_cold_cpu": torch_cold_cpu, "jax_warm_cpu": jax_warm_cpu,
            "torch_warm_cpu": torch_warm_cpu}


def phases(model_dir: str, cache: str) -> None:
    """import / load / compile / run inside one process per side (cold, then warm cache)."""
    print("\nwhere the time goes in (a), seconds (import | load | compile + first-call "
          "overhead | one call):")
    for label, cache_dir in (("cold cache", tempfile.mkdtemp(prefix="albert_phase_")),
                             ("warm cache", cache)):
        _, proc = run(python(PHASES_JAX, model_dir, cache_dir, TEXT))
        print(f"  albert_jax, {label}:   " + " | ".join(proc.stdout.split()))
        if cache_dir != cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    _, proc = run(python(PHASES_TORCH, model_dir, "", TEXT), TORCH_ENV)
    print("  transformers:           " + " | ".join(proc.stdout.split()))
    # The heaviest imports of the command itself.
    _, proc = run([sys.executable, "-X", "importtime", "-m", "albert_jax.cli", "fill-mask",
                   "--model", model_dir, "--cache-dir", cache, TEXT])
    top = []
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        cumulative, name = parts[1].strip(), parts[2]
        if cumulative.isdigit() and name.startswith(" ") and not name.startswith("  "):
            top.append((int(cumulative) / 1e6, name.strip()))
    top.sort(reverse=True)
    print("  albert-jax fill-mask, top-level imports (cumulative s): " + ", ".join(
        f"{name} {s:.2f}" for s, name in top[:8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm runs of (a), median")
    parser.add_argument("--repeats-b", type=int, default=1, help="warm runs of (b), median")
    parser.add_argument("--skip-b", action="store_true", help="only (a) and the phases")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences in (b)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="albert_cold_")
    try:
        print(f"machine: {os.cpu_count()} cores (shared: other work may run at the same "
              f"time); python {sys.version.split()[0]}")
        mini_hf = os.path.join(work, "albert-mini-hf")
        run(albert_jax("convert", str(MINI), mini_hf, "--to", "hf"))
        results = {"a": cold_warm(
            "(a) fill-mask of one text, albert-mini",
            albert_jax("fill-mask", "--model", mini_hf, TEXT),
            python(TRANSFORMERS_A, mini_hf, TEXT),
            os.path.join(work, "cache_a"), args.repeats, None, 2.0)}
        phases(mini_hf, os.path.join(work, "cache_a"))
        if not args.skip_b:
            base_dir, _ = random_base_checkpoint()
            try:
                src = os.path.join(work, "sst2_masked.txt")
                texts = [mask_one_word(s) for s in sst2_sentences(args.limit)]
                Path(src).write_text("\n".join(texts) + "\n", encoding="utf-8")
                out_jax, out_torch = (os.path.join(work, f"out_{s}.jsonl")
                                      for s in ("jax", "torch"))
                results["b"] = cold_warm(
                    f"(b) score --task fill-mask, {len(texts)} SST-2 dev sentences, "
                    "albert-base-v2 shapes (random weights)",
                    albert_jax("score", "--task", "fill-mask", "--model", base_dir, "--input",
                               src, "--output", out_jax, "--quiet"),
                    python(TRANSFORMERS_B, base_dir, src, out_torch),
                    os.path.join(work, "cache_b"), args.repeats_b, 4.0, 6.0)
                ours = [json.loads(x) for x in Path(out_jax).read_text().splitlines()]
                theirs = [json.loads(x) for x in Path(out_torch).read_text().splitlines()]
                agree = sum(a["predictions"][0]["token"] == b["predictions"][0]["token"]
                            for a, b in zip(ours, theirs, strict=True))
                print(f"  top-1 agreement: {agree}/{len(texts)}")
            finally:
                shutil.rmtree(base_dir, ignore_errors=True)
        print("\n" + json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
