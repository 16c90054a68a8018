"""Serving load test: `albert-jax serve` against transformers' pipeline behind FastAPI.

A bounded loopback load generator (httpx, async, a fixed number of requests per level)
sends fill-mask requests from 1, 16, 64 and 256 concurrent clients to, one after the other:

(a) `albert-jax serve` (continuous dynamic batching, batches up to 32 inputs / 8192 tokens,
    inputs packed several to a row: the default ``--pack-length 64``),
(b) the same server with batching off (`--max-batch-size 1`),
(e) (a) without packing (``--pack-length 0``: each input padded to its length bucket),
(c) transformers' fill-mask pipeline behind a minimal FastAPI app that calls it one
    request at a time (what Hugging Face's inference toolkit does).

All three run the same checkpoint: albert-base-v2 shapes with RANDOM weights (transformers
``AlbertForMaskedLM``, float32, the real spiece.model), so the speed is albert-base-v2's
and the answers are meaningless. Inputs: SST-2 dev sentences of at most 30 tokens with
their middle word masked; the servers compile length buckets 16, 24 and 32 (``--max-length
32``). Every answer is checked against the 1-client answer for the same text on the same
server (tokens equal, scores within 1e-5): a lost or mismatched response is counted. The
servers get ``--request-timeout-s 300``: the 256-client level queues for longer than the
default 30 s on a 2-core CPU, and a 504 would count as lost.

    python benchmarks/bench_serve.py [--requests 1:32,16:128,64:256,256:512] [--only abec]
    # (a) and (c) twice, alternating: a fair pair when the machine's other load varies
    python benchmarks/bench_serve.py --only acac
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import mask_one_word, random_base_checkpoint, sst2_sentences

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- (c): the anchor
def hf_app(model_dir: str):
    """A minimal FastAPI app over transformers' fill-mask pipeline, one call at a time."""
    import threading

    import transformers
    from fastapi import FastAPI

    tokenizer = transformers.AlbertTokenizer(vocab_file=os.path.join(model_dir, "spiece.model"),
                                             clean_up_tokenization_spaces=True)
    model = transformers.AlbertForMaskedLM.from_pretrained(model_dir).eval()
    pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/models/{model}")
    def infer(model: str, body: dict) -> list:
        with lock:  # One request at a time through the pipeline.
            return pipe(body["inputs"], top_k=5)

    return app


def run_hf_app(model_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(hf_app(model_dir), host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------------- servers
def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks")]))
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 1800) -> float:
    import httpx

    start_time = time.monotonic()
    while time.monotonic() - start_time < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return time.monotonic() - start_time
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


# ---------------------------------------------------------------------- load
async def load(url: str, headers: dict, texts: list[str], clients: int, total: int,
               expected: dict | None) -> dict:
    import httpx

    latencies: list[float] = []
    answers: dict[str, list] = {}
    errors = mismatched = 0
    statuses: dict[str, int] = {}  # what the errors were
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, mismatched
        for i in counter:
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/models/m", json={"inputs": text})
            except httpx.HTTPError as e:
                errors += 1
                statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                continue
            got = r.json()
            answers.setdefault(text, got)
            if expected is not None:
                want = expected[text]
                if ([g["token"] for g in got] != [w["token"] for w in want]
                        or any(abs(g["score"] - w["score"]) > 1e-5
                               for g, w in zip(got, want, strict=True))):
                    mismatched += 1

    async with httpx.AsyncClient(headers=headers, timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies \
            else float("nan")

    return dict(clients=clients, requests=total, rps=(total - errors) / wall, p50=pct(0.50),
                p99=pct(0.99), errors=errors, mismatched=mismatched, answers=answers,
                statuses=statuses)


def measure(name: str, url: str, headers: dict, texts: list[str],
            levels: list[tuple[int, int]]) -> list[dict]:
    # Warm-up, and the reference answers (one client, one request per distinct text).
    reference = asyncio.run(load(url, headers, texts, 1, len(texts), None))["answers"]
    rows = []
    for clients, total in levels:
        row = asyncio.run(load(url, headers, texts, clients, total, reference))
        row["server"] = name
        rows.append(row)
        print(f"  {name}: {clients:>3} clients, {total} requests: {row['rps']:.1f} req/s, "
              f"p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, errors {row['errors']}, "
              f"mismatched {row['mismatched']} {row['statuses'] or ''}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="1:32,16:128,64:256,256:512",
                        help="clients:requests per level")
    parser.add_argument("--only", default="abec",
                        help="which servers to run, in order (default abec; d: (a) in "
                        "bfloat16; a tag may repeat)")
    args = parser.parse_args()
    levels = [tuple(int(x) for x in level.split(":")) for level in args.requests.split(",")]

    import transformers

    tok = transformers.AlbertTokenizer(
        vocab_file=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "albert_spm"
                       / "spiece.model"))
    texts = [mask_one_word(s) for s in sst2_sentences()]
    texts = [t for t in texts if len(tok(t)["input_ids"]) <= 30][:64]
    model_dir, _ = random_base_checkpoint()
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    print(f"albert-base-v2 shapes, random weights; {len(texts)} distinct prompts of "
          f"{min(len(tok(t)['input_ids']) for t in texts)}-"
          f"{max(len(tok(t)['input_ids']) for t in texts)} tokens; levels {levels}", flush=True)
    db = f"sqlite:///{work / 'bench.db'}"
    cli = [sys.executable, "-m", "albert_jax.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    key = subprocess.run([*cli, "keys", "create", "--db", db, "--name", "bench"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    common = ["--model", f"m={model_dir}", "--db", db, "--length-buckets", "16,24,32",
              "--max-length", "32", "--max-queue", "4096", "--request-timeout-s", "300",
              "--cache-dir", str(work / "cache")]
    servers = {
        "a": ("(a) albert-jax serve", [*cli, "serve", *common, "--max-batch-size", "32"], auth),
        "b": ("(b) batching off", [*cli, "serve", *common, "--max-batch-size", "1"], auth),
        # (a) without packing: each input padded to its length bucket, one per row.
        "e": ("(e) = (a) with --pack-length 0",
              [*cli, "serve", *common, "--max-batch-size", "32", "--pack-length", "0"], auth),
        # Not part of the comparison (different numbers): the same server in bfloat16.
        "d": ("(d) = (a) with --dtype bfloat16",
              [*cli, "serve", *common, "--max-batch-size", "32", "--dtype", "bfloat16"], auth),
        "c": ("(c) transformers pipeline", [sys.executable, __file__, "--hf-app", model_dir],
              {}),
    }
    results = []
    for tag in args.only:
        name, cmd, headers = servers[tag]
        port = free_port()
        cmd = [*cmd, "--port", str(port)]
        log = work / f"{tag}.log"
        proc = start(cmd, log)
        ready = wait_ready(f"http://127.0.0.1:{port}", proc, log)
        print(f"{name}: ready in {ready:.0f} s", flush=True)
        try:
            results += measure(name, f"http://127.0.0.1:{port}", headers, texts, levels)
        finally:
            code = stop(proc)
            print(f"{name}: exit status {code} after SIGTERM", flush=True)

    print("\n| server | clients | requests | requests/s | p50 ms | p99 ms | errors | "
          "mismatched |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | "
              f"{r['p50']:.0f} | {r['p99']:.0f} | {r['errors']} | {r['mismatched']} |")
    by = {(r["server"][:3], r["clients"]): r for r in results}
    if ("(a)", 64) in by and ("(c)", 64) in by:
        a, c = by[("(a)", 64)], by[("(c)", 64)]
        print(f"\n64 clients: (a) / (c) = {a['rps'] / c['rps']:.2f}x (target >= 4x), "
              f"(a) p99 {a['p99'] / 1000:.2f} s (target < 2 s)")
    if ("(a)", 256) in by:
        a = by[("(a)", 256)]
        print(f"256 clients: (a) lost {a['errors']}, mismatched {a['mismatched']} "
              "(target 0 and 0)")
    shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--hf-app":
        run_hf_app(sys.argv[2], int(sys.argv[sys.argv.index("--port") + 1]))
    else:
        main()
