"""`albert-jax serve --model albert-mini`: seconds from the process's start to ``/ready``.

Two servers in this one run, each started twice on a fresh compilation cache (cold: it
fills the cache; warm: a restart, loading from it):

(a) this checkout;
(b) the anchor: the same command from another commit (default ``aaf77c7``, the server
    before it compiled ahead of time: it ran one batch of every shape to compile it, 62
    shapes for albert-mini), checked out with ``git worktree`` in a temporary directory.

Both serve the packaged albert-mini with the default settings, a fresh SQLite file and
``--cache-dir`` pointing at their own empty directory; they run one after the other. The
targets: warm within 10 s, cold within 30 s, on 2 cores.

    python benchmarks/bench_serve_start.py [--anchor COMMIT] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_ready(checkout: Path, cache: Path, work: Path, name: str) -> tuple[float, str]:
    """(seconds to /ready, the server's compile line) of one start of ``checkout``."""
    port = free_port()
    log = work / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(checkout), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "albert_jax.cli", "serve", "--model", "albert-mini",
             "--db", f"sqlite:///{work / (name + '.db')}", "--port", str(port),
             "--cache-dir", str(cache)], stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=checkout)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}:\n"
                                     f"{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            seconds = time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    text = log.read_text()  # "62 shapes compiled in 51.5 s" (b), "32/32 shapes compiled" (a)
    found = (re.search(r"(\d+) shapes compiled in", text)
             or re.search(r"\d+/(\d+) shapes compiled", text))
    return seconds, found.group(1) if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", default="aaf77c7", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="cold+warm pairs per server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_serve_start_"))
    anchor = work / "anchor"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(anchor),
                    args.anchor], check=True, capture_output=True)
    rows = []
    try:
        for repeat in range(args.repeats):
            for tag, checkout in (("(a) this checkout", ROOT),
                                  (f"(b) anchor {args.anchor}", anchor)):
                cache = work / f"cache-{tag[1]}-{repeat}"
                cold, shapes = time_to_ready(checkout, cache, work, f"{tag[1]}-cold-{repeat}")
                warm, _ = time_to_ready(checkout, cache, work, f"{tag[1]}-warm-{repeat}")
                rows.append((tag, shapes, cold, warm))
                print(f"{tag}: {shapes} shapes, cold {cold:.1f} s, warm {warm:.1f} s",
                      flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(anchor)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| server | shapes | cold start to /ready (s) | warm start to /ready (s) |\n"
          "|---|---:|---:|---:|")
    for tag, shapes, cold, warm in rows:
        print(f"| {tag} | {shapes} | {cold:.1f} | {warm:.1f} |")
    ours = [r for r in rows if r[0].startswith("(a)")]
    print(f"\ntargets: warm <= 10 s ({max(r[3] for r in ours):.1f}), cold <= 30 s "
          f"({max(r[2] for r in ours):.1f})")


if __name__ == "__main__":
    main()
