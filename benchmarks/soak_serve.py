"""Soak test of `albert-jax serve`: mixed normal and hostile traffic for ``--minutes``,
with the server's resident memory, latency and the ledger reported over time.

One real server process (the packaged albert-mini, SQLite ledger, anonymous calls on)
and one load process on loopback: ``--clients`` keyed clients sending fill-mask requests
(single inputs, lists of up to 8, targets now and then), and hostile clients alongside:
junk paths (long, NUL, encoded newlines and escapes), wrong keys, requests over the caps
(inputs, targets, top_k), bodies over the size limit, anonymous floods with spoofed
X-Forwarded-For headers, and bursts of usage reads. Every ``--every`` seconds it prints the
server's resident memory (VmRSS), the p50/p99 latency of the normal requests answered in
that window, the counts by status, and the ledger: the answered (200) requests' rows
found, against the answers received (they must be equal: rows are committed before the
answer leaves).

    python benchmarks/soak_serve.py [--minutes 10] [--clients 16] [--every 60]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["where is my [MASK]?", "The capital of France is [MASK].",
         "Hello I'm a [MASK] model.", "the cat sat on the [MASK].",
         "a much longer sentence, with commas and numbers like 3,000, that ends with a [MASK]"]
JUNK = ["/models/" + "x" * 3000, "/v1/inference/a%00b", "/models/%0d%0aFORGED%20line",
        "/v1/inference/%1b%5b2J", "/models/%e2%80%aeevil", "/v1/inference/../../etc/passwd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Stats:
    def __init__(self) -> None:
        self.window: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.answered: list[str] = []  # request ids of 200 answers

    def add(self, kind: str, r: httpx.Response | None, seconds: float,
            error: str | None = None) -> None:
        self.statuses[f"{kind}:{r.status_code if r is not None else error}"] += 1
        if kind == "normal" and r is not None and r.status_code == 200:
            self.window.append(seconds)
            self.answered.append(r.headers["x-request-id"])


async def normal(client, key, stats, until) -> None:
    rng = random.Random(id(client) ^ hash(key))
    while time.monotonic() < until:
        kind = rng.random()
        if kind < 0.6:
            body = {"inputs": rng.choice(TEXTS), "parameters": {"top_k": rng.randint(1, 10)}}
        elif kind < 0.9:
            body = {"inputs": rng.sample(TEXTS * 2, rng.randint(2, 8))}
        else:
            body = {"inputs": rng.choice(TEXTS), "parameters": {"targets": ["▁paris", "home",
                                                                            "zzqx"]}}
        start = time.perf_counter()
        try:
            r = await client.post("/models/m", json=body, headers={"Authorization": key})
        except httpx.HTTPError as e:
            stats.add("normal", None, 0.0, type(e).__name__)
            continue
        stats.add("normal", r, time.perf_counter() - start)


async def hostile(client, stats, until) -> None:
    rng = random.Random(7)
    while time.monotonic() < until:
        choice = rng.randrange(7)
        headers: dict[str, str] = {}
        try:
            if choice == 0:
                r = await client.post(rng.choice(JUNK), json={"inputs": "a [MASK]"})
            elif choice == 1:
                r = await client.post("/models/m", json={"inputs": "a [MASK]"},
                                      headers={"Authorization": f"Bearer ajk_wrong{rng.random()}"})
            elif choice == 2:
                r = await client.post("/models/m", json={"inputs": ["a [MASK]"] * 5000})
            elif choice == 3:
                r = await client.post("/models/m", json={
                    "inputs": "a [MASK]", "parameters": {"targets": [f"t{i}" for i in
                                                                     range(20000)]}})
            elif choice == 4:
                r = await client.post("/models/m", content=b"x" * 2_000_000,
                                      headers={"content-type": "application/json"})
            elif choice == 5:
                headers["X-Forwarded-For"] = f"10.{rng.randrange(256)}.0.1"
                r = await client.post("/models/m", json={"inputs": "a [MASK]"}, headers=headers)
            else:
                r = await client.post("/models/m", json={"inputs": "a [MASK]",
                                                         "parameters": {"top_k": 1000}})
        except httpx.HTTPError as e:
            stats.add("hostile", None, 0.0, type(e).__name__)
            continue
        stats.add("hostile", r, 0.0)
        await asyncio.sleep(0.01)


async def usage_reads(client, key, stats, until) -> None:
    while time.monotonic() < until:
        r = await client.get("/v1/usage", headers={"Authorization": key})
        stats.add("usage", r, 0.0)
        await asyncio.sleep(0.2)


def ledger_found(db_url: str, ids: list[str]) -> int:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = {r[0] for r in conn.execute(sa.text(
                "select request_id from usage where status = 200"))}
    finally:
        engine.dispose()
    return sum(i in stored for i in ids)


async def run(url: str, keys: list[str], db_url: str, pid: int, args) -> None:
    stats = Stats()
    until = time.monotonic() + args.minutes * 60
    limits = httpx.Limits(max_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(normal(client, keys[i % len(keys)], stats, until))
                 for i in range(args.clients)]
        tasks += [asyncio.create_task(hostile(client, stats, until)) for _ in range(2)]
        tasks.append(asyncio.create_task(usage_reads(client, keys[0], stats, until)))
        print("| minute | RSS MiB | normal answered | p50 ms | p99 ms | ledger rows / answers "
              "| statuses |\n|---:|---:|---:|---:|---:|---:|---|", flush=True)
        start = time.monotonic()
        while not all(t.done() for t in tasks):
            await asyncio.sleep(min(args.every, max(0.1, until - time.monotonic() + 0.5)))
            window = sorted(stats.window)
            stats.window = []
            ids = list(stats.answered)
            found = await asyncio.to_thread(ledger_found, db_url, ids)

            def pct(q: float, w=window) -> float:
                return w[min(len(w) - 1, int(q * len(w)))] * 1000 if w else float("nan")

            print(f"| {(time.monotonic() - start) / 60:.1f} | {rss_mib(pid):.0f} | "
                  f"{len(window)} | {pct(0.5):.0f} | {pct(0.99):.0f} | {found} / {len(ids)} | "
                  f"{dict(sorted(stats.statuses.items()))} |", flush=True)
            stats.statuses.clear()
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--every", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak_serve_"))
    db_url = f"sqlite:///{work / 'ledger.db'}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cli = [sys.executable, "-m", "albert_jax.cli"]
    keys = ["Bearer " + subprocess.run([*cli, "keys", "create", "--db", db_url, "--name",
                                        f"k{i}"], env=env, capture_output=True, text=True,
                                       check=True).stdout.strip() for i in range(4)]
    port = free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*cli, "serve", "--model", "m=albert-mini", "--db", db_url,
                             "--port", str(port), "--allow-anonymous",
                             "--cache-dir", str(work / "cache")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        print(f"server ready (pid {proc.pid}, RSS {rss_mib(proc.pid):.0f} MiB); "
              f"{args.minutes:g} minutes, {args.clients} keyed clients, 2 hostile, 1 usage "
              "reader", flush=True)
        asyncio.run(run(url, keys, db_url, proc.pid, args))
        metrics = httpx.get(url + "/metrics").text
        commits = sum(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("albert_ledger_commit_seconds_count"))
        answered = sum(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("albert_requests_total") and 'status="200"' in line)
        print(f"\nledger transactions {commits:.0f} for {answered:.0f} answered requests "
              f"(and the failed requests' rows)", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        log.close()
        lines = (work / "server.log").read_text().splitlines()
        print(f"\nserver exit status {code} after SIGTERM; {len(lines)} log lines; "
              f"longest {max(map(len, lines))} characters; raw escape characters in the log: "
              f"{sum(chr(27) in line for line in lines)}")


if __name__ == "__main__":
    main()
