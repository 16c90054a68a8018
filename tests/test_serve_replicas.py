"""Two `albert-jax serve` replicas sharing one database (SQLite file, then a real
PostgreSQL started by the fixture): every request is one ledger row, none lost or counted
twice, the cost arithmetic holds, and SIGTERM under load drains without losing a request."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")
import sqlalchemy as sa  # noqa: E402
from serve_util import Postgres, Server, cli, jax_cache_dir, tiny_model  # noqa: E402

PRICE = 0.0005
TEXTS = ["where is my [MASK]?", "The capital of France is [MASK].",
         "[MASK] is a word at the start of a somewhat longer sentence than the others",
         "Hello I'm a [MASK] model."]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"replicas-{request.param}")
    model = tiny_model(root / "tiny")
    pg = None
    if request.param == "postgresql":
        pg = Postgres()
        url = pg.url
    else:
        url = f"sqlite:///{root / 'ledger.db'}"
    key = cli("keys", "create", "--db", url, "--name", "team").stdout.strip()
    args = ["--model", f"tiny={model}", "--db", url, "--max-batch-size", "4",
            "--length-buckets", "32", "--cache-dir", str(jax_cache_dir(tmp_path_factory))]
    replicas = []
    try:
        for name in ("r1", "r2"):  # One after the other: r2 reuses r1's compiled steps.
            replicas.append(Server(args, root, name))
            replicas[-1].wait_ready()
        yield dict(url=url, key=key, replicas=replicas, kind=request.param)
    finally:
        for r in replicas:
            r.kill()
        if pg is not None:
            pg.stop()


def ledger_rows(url: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("select * from usage")).mappings()]
    finally:
        engine.dispose()


def wait_rows(url: str, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger_rows(url)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


async def _send(client: httpx.AsyncClient, url: str, i: int):
    """Request ``i``: mostly good, every 7th without a [MASK] (a failed, unbilled row)."""
    text = "no mask" if i % 7 == 6 else TEXTS[i % len(TEXTS)]
    return await client.post(url + "/v1/inference/tiny", json={"input": text},
                             headers={"Connection": "close"})


def test_two_replicas_share_one_ledger(cluster):
    url, key = cluster["url"], cluster["key"]
    r1, r2 = cluster["replicas"]
    before = len(ledger_rows(url))

    async def run():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                     timeout=60) as client:
            return await asyncio.gather(*(_send(client, (r1, r2)[i % 2].url, i)
                                          for i in range(60)))

    responses = asyncio.run(run())
    assert sorted({r.status_code for r in responses}) == [200, 400]
    rows = wait_rows(url, before + 60)
    rows = {row["request_id"]: row for row in rows}
    sent = {r.headers["x-request-id"]: r for r in responses}
    assert len(rows) == before + 60 and set(sent) <= set(rows)  # none lost, none doubled
    assert len({rows[i]["replica"] for i in sent}) == 2
    for request_id, response in sent.items():
        row = rows[request_id]
        assert row["key_name"] == "team" and row["model"] == "tiny"
        assert row["status"] == response.status_code
        if response.status_code == 200:
            status = response.json()["inference_status"]
            assert row["tokens"] == status["tokens_input"]
            assert row["runtime_ms"] == pytest.approx(status["runtime_ms"], rel=1e-9)
            assert row["runtime_ms"] > 0
            assert row["cost"] == pytest.approx(row["runtime_ms"] / 1000 * PRICE, rel=1e-9)
            assert row["cost"] == pytest.approx(status["cost"], rel=1e-9)
        else:
            assert row["error_type"] == "invalid_input"
            assert row["runtime_ms"] == 0 and row["cost"] == 0
    usage = json.loads(cli("usage", "--db", url, "--name", "team", "--json").stdout)
    assert sum(u["requests"] for u in usage) == len(rows)
    assert sum(u["cost"] for u in usage) == pytest.approx(sum(r["cost"] for r in rows.values()))


def test_drain_under_load_loses_nothing(cluster):
    """SIGTERM replica 1 while 32 clients keep sending: every request it accepted gets its
    full answer or a 503 "draining"; no connection is cut; it exits 0 with the ledger
    flushed (one row per answer). Each client stops sending to it at its first 503, as a
    load balancer takes a draining replica out."""
    url, key = cluster["url"], cluster["key"]
    r1 = cluster["replicas"][0]
    answers: list[httpx.Response] = []
    cut: list[Exception] = []
    refused = 0
    at_signal: list[int] = []

    async def client_loop(client: httpx.AsyncClient, start: int, stop: asyncio.Event):
        nonlocal refused
        i = start
        while not stop.is_set():
            try:
                answers.append(await _send(client, r1.url, i))
                if answers[-1].status_code == 503:
                    return
            except httpx.ConnectError:
                refused += 1  # The listener is closed: the drain is over.
                await asyncio.sleep(0.05)
            except httpx.HTTPError as e:  # Accepted, then lost: must never happen.
                cut.append(e)
            i += 32

    async def run():
        stop = asyncio.Event()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                     timeout=60) as client:
            tasks = [asyncio.create_task(client_loop(client, j, stop)) for j in range(32)]
            while len(answers) < 64:
                await asyncio.sleep(0.01)
            at_signal.append(len(answers))
            r1.proc.send_signal(15)
            while r1.proc.poll() is None:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    assert r1.proc.returncode == 0, r1.log()
    assert not cut, cut[:3]
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 400, 503}, set(codes)
    before, after = codes[: at_signal[0]], codes[at_signal[0]:]
    assert set(before) == {200, 400} and 503 in after  # It drained under load...
    assert after.count(200) >= 1  # ...answering the requests it had accepted.
    for a in answers:
        if a.status_code == 503:
            assert a.json()["error_type"] == "draining"
        elif a.status_code == 200:
            assert len(a.json()["results"]) == 5
    mine = {r["request_id"] for r in ledger_rows(url)}  # Flushed before exit: no waiting.
    assert {a.headers["x-request-id"] for a in answers} <= mine
    assert "usage ledger flushed" in r1.log()
