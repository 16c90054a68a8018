"""`albert-jax serve`: a real server process on 127.0.0.1, real HTTP (httpx), a real
SQLite ledger, a real browser. Tiny random models; answers checked against FillMask."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from conftest import child_env  # noqa: E402
from serve_util import (  # noqa: E402
    REPO,
    Server,
    chromium,
    cli,
    free_port,
    jax_cache_dir,
    tiny_model,
)

from albert_jax.inference import FillMask  # noqa: E402

PRICE = 0.002
TEXTS = [
    "where is my [MASK]?",
    "The capital of France is [MASK].",
    "[MASK] is a word at the start",
    "a much longer sentence, with commas, numbers like 3,000 and more words, ends with a "
    "[MASK] and then keeps going for a while so that it lands in a longer bucket.",
    "Hello I'm a [MASK] model.",
    "one [MASK] two",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two servers sharing one SQLite file.

    A: two models ("tiny" by alias, "short" by directory name, 32 positions), batches of
    up to 2 (few shapes to compile), inputs of up to 16 tokens packed (longer ones padded
    to a bucket: both paths), anonymous calls open. B: no anonymous calls, 2 KB
    bodies, inputs up to 32 tokens, a batch of 4 that waits up to 3 s to fill, at most 2
    rows waiting, 1 s timeout (queue full and timeouts happen on purpose).
    """
    root = tmp_path_factory.mktemp("serve")
    tiny = tiny_model(root / "tiny-model")
    short = tiny_model(root / "short", max_position_embeddings=32, seed=5)
    db = f"sqlite:///{root / 'ledger.db'}"
    keys = {name: cli("keys", "create", "--db", db, "--name", name).stdout.strip()
            for name in ("alice", "bob", "carol")}
    keys["limited"] = cli("keys", "create", "--db", db, "--name", "limited",
                          "--rate-limit", "3").stdout.strip()
    cache = ["--cache-dir", str(jax_cache_dir(tmp_path_factory))]
    a = Server(["--model", f"tiny={tiny}", "--model", str(short), "--db", db,
                "--price-per-second", str(PRICE), "--max-batch-size", "2",
                "--length-buckets", "32", "--pack-length", "16", "--allow-anonymous", *cache],
               root, "a")
    b = None
    try:
        a.wait_ready()
        # B's shapes are some of A's: it starts from the persistent compilation cache.
        b = Server(["--model", f"tiny={tiny}", "--db", db, "--max-batch-size", "4",
                    "--length-buckets", "32", "--max-length", "32", "--max-wait-ms", "3000",
                    "--max-queue", "2", "--request-timeout-s", "1", "--max-body-bytes",
                    "2000", *cache], root, "b")
        b.wait_ready()
        yield dict(a=a, b=b, db=db, keys=keys, tiny=tiny, short=short, root=root)
    finally:
        a.kill()
        if b is not None:
            b.kill()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post(server, path, body, key=None, **kwargs):
    return httpx.post(server.url + path, json=body, headers=auth(key) if key else {},
                      timeout=30, **kwargs)


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type, body
    assert "Traceback" not in body["error"]
    return body


@pytest.fixture(scope="module")
def reference(env):
    """The unbatched answers: FillMask on the same checkpoint, one text per call."""
    fm = FillMask.from_pretrained(str(env["tiny"]), batch_size=1)
    return lambda text, **kw: fm(text, **kw)


def assert_same(ours: list[dict], theirs: list[dict]) -> None:
    assert [r["token"] for r in ours] == [r["token"] for r in theirs]
    assert [r["sequence"] for r in ours] == [r["sequence"] for r in theirs]
    assert [r["token_str"] for r in ours] == [r["token_str"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        assert abs(x["score"] - y["score"]) < 1e-5


# ---------------------------------------------------------------------- public endpoints
def test_public_endpoints(env):
    a = env["a"]
    assert httpx.get(a.url + "/health").json() == {"status": "ok"}
    assert httpx.get(a.url + "/ready").status_code == 200
    models = {m["id"]: m for m in httpx.get(a.url + "/v1/models").json()}
    assert set(models) == {"tiny", "short"}
    assert models["tiny"]["max_length"] == 64 and models["short"]["max_length"] == 32
    assert models["tiny"]["price_per_second"] == PRICE
    assert models["tiny"]["parameters"] > 0 and models["tiny"]["hidden_size"] == 32
    assert httpx.get(a.url + "/docs").status_code == 200
    spec = httpx.get(a.url + "/openapi.json").json()
    assert {"/v1/inference/{model}", "/models/{model}", "/v1/models", "/v1/usage"} <= set(
        spec["paths"])  # (FastAPI shows {model:path} as {model})
    page = httpx.get(a.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "where is my [MASK]?" in page.text and "$0.002 / sec" in page.text
    assert "<table>" in page.text and "<strong>tiny random</strong>" in page.text  # the card
    assert "short" in httpx.get(a.url + "/models/short").text
    # The page shows the served model's parameter count, as /v1/models does.
    assert f'<span id="parameters">{models["tiny"]["parameters"]:,}</span>' in page.text
    assert_error(httpx.get(a.url + "/models/nope"), 404, "not_found")
    assert httpx.get(a.url + "/static/page.js").status_code == 200
    assert_error(httpx.get(a.url + "/no/such/route"), 404, "not_found")


def test_metrics(env):
    a = env["a"]
    post(a, "/v1/inference/tiny", {"input": TEXTS[0]}, env["keys"]["alice"])
    text = httpx.get(a.url + "/metrics").text
    for name in ("albert_requests_total", "albert_queue_size", "albert_batch_size_bucket",
                 "albert_batch_tokens_bucket", "albert_queue_seconds_bucket",
                 "albert_inference_seconds_bucket", "albert_request_seconds_bucket",
                 "albert_device_seconds_total"):
        assert name in text, name
    assert 'albert_requests_total{model="tiny",status="200"}' in text


# ---------------------------------------------------------------------- answers
def test_concurrent_mixed_lengths_equal_unbatched(env, reference):
    """40 concurrent requests of mixed lengths, both API shapes: each gets exactly its own
    answer, equal to FillMask's unbatched one within 1e-5; they did share batches."""
    a, key = env["a"], env["keys"]["alice"]

    def batches() -> tuple[float, float]:
        text = httpx.get(a.url + "/metrics").text
        values = {}
        for line in text.splitlines():
            for name in ("albert_batch_size_count", "albert_batch_size_sum"):
                if line.startswith(name + '{model="tiny"}'):
                    values[name] = float(line.split()[-1])
        return values["albert_batch_size_count"], values["albert_batch_size_sum"]

    before = batches()

    async def run():
        async with httpx.AsyncClient(base_url=a.url, headers=auth(key), timeout=60) as client:
            jobs = []
            for i in range(40):
                text = TEXTS[i % len(TEXTS)]
                if i % 4 == 3:  # Hugging Face shape, list input
                    body = {"inputs": [text, TEXTS[(i + 1) % len(TEXTS)]],
                            "parameters": {"top_k": 3}}
                    jobs.append(client.post("/models/tiny", json=body))
                else:
                    jobs.append(client.post("/v1/inference/tiny",
                                            json={"input": text, "top_k": 1 + i % 5}))
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        text = TEXTS[i % len(TEXTS)]
        if i % 4 == 3:
            got = r.json()
            assert len(got) == 2
            assert_same(got[0], reference(text, top_k=3))
            assert_same(got[1], reference(TEXTS[(i + 1) % len(TEXTS)], top_k=3))
        else:
            body = r.json()
            assert body["request_id"] == r.headers["x-request-id"]
            assert_same(body["results"], reference(text, top_k=1 + i % 5))
    count, rows = (x - y for x, y in zip(batches(), before, strict=True))
    assert rows == 50 and count < rows, (count, rows)  # Rows of different requests shared


def test_hf_shape_headers_and_targets(env, reference):
    a, key = env["a"], env["keys"]["alice"]
    r = post(a, "/models/tiny", {"inputs": TEXTS[0]}, key)
    assert r.status_code == 200
    assert_same(r.json(), reference(TEXTS[0]))  # a list of records for a string input
    assert len(r.headers["x-request-id"]) == 32
    assert float(r.headers["x-compute-time"]) > 0
    assert int(r.headers["x-compute-tokens"]) == 8
    targets = ["▁father", "▁mother", "city"]
    r = post(a, "/models/tiny", {"inputs": TEXTS[0], "parameters": {"targets": targets}}, key)
    assert_same(r.json(), reference(TEXTS[0], targets=targets))
    r = post(a, "/v1/inference/tiny", {"input": TEXTS[1], "top_k": 2, "targets": "▁paris"}, key)
    assert_same(r.json()["results"], reference(TEXTS[1], top_k=2, targets="▁paris"))
    status = r.json()["inference_status"]
    assert status["status"] == "succeeded" and status["tokens_input"] == 10
    assert status["cost"] == pytest.approx(status["runtime_ms"] / 1000 * PRICE, rel=1e-12)
    bad = post(a, "/models/tiny", {"inputs": "no mask"}, key)  # errors carry the headers too
    assert bad.status_code == 400 and "x-request-id" in bad.headers
    assert bad.headers["x-compute-time"] == "0.000000"


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/inference/tiny", {"input": "no mask here"}, 400, "no [MASK]"),
    ("/v1/inference/tiny", {"input": "[MASK] and [MASK]"}, 400, "2 [MASK]"),
    ("/v1/inference/tiny", {"input": "  "}, 400, "empty"),
    ("/v1/inference/tiny", {"input": "[MASK] " + "word " * 80}, 400, "at most 64"),
    ("/v1/inference/short", {"input": "[MASK] " + "word " * 40}, 400, "at most 32"),
    ("/v1/inference/tiny", {"input": "a [MASK]", "targets": [""]}, 400, "unknown target"),
    ("/v1/inference/tiny", {"input": "a [MASK]", "targets": []}, 400, "empty"),
    ("/models/tiny", {"inputs": []}, 400, "empty"),
    ("/models/tiny", {"inputs": ["a [MASK]", "no mask"]}, 400, "input 1"),
    ("/v1/inference/tiny", {"input": "a [MASK]", "top_k": 0}, 422, "top_k"),
    ("/v1/inference/tiny", {"input": "a [MASK]", "top_k": "many"}, 422, "top_k"),
    ("/v1/inference/tiny", {"text": "a [MASK]"}, 422, "input"),
    ("/v1/inference/tiny", {"input": 5}, 422, "input"),
    ("/models/tiny", {"inputs": "a [MASK]", "parameters": {"top_k": -1}}, 422, "top_k"),
])
def test_validation_errors(env, path, body, status, message):
    r = post(env["a"], path, body, env["keys"]["alice"])
    got = assert_error(r, status, "invalid_input" if status == 400 else "validation")
    assert message in got["error"], got


def test_malformed_json_is_422(env):
    r = httpx.post(env["a"].url + "/v1/inference/tiny", content=b"{not json",
                   headers={**auth(env["keys"]["alice"]), "content-type": "application/json"})
    assert_error(r, 422, "validation")


def test_unknown_model_is_404(env):
    body = assert_error(post(env["a"], "/v1/inference/nope", {"input": "a [MASK]"},
                             env["keys"]["alice"]), 404, "not_found")
    assert "tiny" in body["error"]  # names what is served


# ---------------------------------------------------------------------- keys
def test_missing_wrong_and_revoked_keys(env):
    a, b = env["a"], env["b"]
    r = post(b, "/v1/inference/tiny", {"input": "a [MASK]"})
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(post(b, "/v1/inference/tiny", {"input": "a [MASK]"}, "ajk_wrong"), 401,
                 "unauthorized")
    assert_error(httpx.post(b.url + "/models/tiny", json={"inputs": "a [MASK]"},
                            headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    assert_error(httpx.get(a.url + "/v1/usage"), 401, "unauthorized")  # even if anonymous
    key = cli("keys", "create", "--db", env["db"], "--name", "temp").stdout.strip()
    assert post(a, "/v1/inference/tiny", {"input": "a [MASK]"}, key).status_code == 200
    cli("keys", "revoke", "--db", env["db"], "--name", "temp")
    for server in (a, b):  # Both servers see the shared database at once.
        body = assert_error(post(server, "/v1/inference/tiny", {"input": "a [MASK]"}, key),
                            403, "forbidden")
        assert "revoked" in body["error"]


def test_anonymous_only_where_allowed(env):
    assert post(env["a"], "/v1/inference/tiny", {"input": "a [MASK]"}).status_code == 200
    assert post(env["b"], "/v1/inference/tiny", {"input": "a [MASK]"}).status_code == 401


def test_keys_cli(env, tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    out = subprocess.run([sys.executable, "-m", "albert_jax.cli", "keys", "create", "--db", db,
                          "--name", "k1", "--rate-limit", "10"], capture_output=True,
                         text=True, timeout=120, env=child_env())
    assert out.returncode == 0, out.stderr
    key = out.stdout
    assert key.endswith("\n") and key.count("\n") == 1 and key.startswith("ajk_")
    assert len(key.strip()) > 40
    listing = cli("keys", "list", "--db", db).stdout
    assert "k1" in listing and "10" in listing and key.strip() not in listing
    import sqlite3

    stored = sqlite3.connect(tmp_path / "keys.db").execute(
        "select key_hash from api_keys").fetchall()
    assert key.strip() not in str(stored)  # only the hash is stored
    dup = cli("keys", "create", "--db", db, "--name", "k1", check=False)
    assert dup.returncode == 2 and dup.stdout == ""
    assert dup.stderr.strip().count("\n") == 0 and "already exists" in dup.stderr
    gone = cli("keys", "revoke", "--db", db, "--name", "nobody", check=False)
    assert gone.returncode == 2 and "no key named" in gone.stderr
    cli("keys", "revoke", "--db", db, "--name", "k1")
    assert "revoked" in cli("keys", "list", "--db", db).stdout
    bad = cli("keys", "create", "--db", db, "--name", "k2", "--rate-limit", "0", check=False)
    assert bad.returncode == 2 and "--rate-limit" in bad.stderr


def test_serve_bad_arguments_are_one_line(env, tmp_path):
    out = cli("serve", "--model", str(tmp_path / "missing"), "--db",
              f"sqlite:///{tmp_path / 'x.db'}", check=False)
    assert out.returncode == 2 and out.stderr.startswith("albert-jax: error:")
    assert "Traceback" not in out.stderr
    out = cli("serve", "--model", str(env["tiny"]), "--max-batch-size", "0", check=False)
    assert out.returncode == 2 and "--max-batch-size" in out.stderr


# ---------------------------------------------------------------------- limits
def test_rate_limit(env):
    key = env["keys"]["limited"]  # 3 requests per minute
    codes = [post(env["a"], "/v1/inference/tiny", {"input": "a [MASK]"}, key)
             for _ in range(4)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    assert_error(codes[3], 429, "rate_limited")
    assert int(codes[3].headers["retry-after"]) >= 1


def test_body_limit(env):
    b, key = env["b"], env["keys"]["alice"]
    big = {"input": "a [MASK] " + "x" * 3000}
    assert_error(post(b, "/v1/inference/tiny", big, key), 413, "payload_too_large")

    def chunks():  # No Content-Length: counted as it streams.
        yield b'{"input": "a [MASK] '
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    r = httpx.post(b.url + "/v1/inference/tiny", content=chunks(),
                   headers={**auth(key), "content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_queue_full_is_fast_429_and_timeout_504(env):
    """B waits up to 3 s to fill a batch of 4 but holds 2 rows at most, and one caller
    alone half of them: alice's and bob's requests queue, alice's second one is refused at
    once (429: her share), so is carol's (the queue is full); the two queued wait past the
    1 s timeout (504)."""
    b, keys = env["b"], env["keys"]

    async def run():
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as client:
            async def one(i, name):
                start = time.perf_counter()
                r = await client.post("/v1/inference/tiny", json={"input": f"{i} [MASK]"},
                                      headers=auth(keys[name]))
                return r, time.perf_counter() - start
            first = [asyncio.create_task(one(i, name)) for i, name in enumerate(("alice",
                                                                                   "bob"))]
            await asyncio.sleep(0.3)  # Both are queued now.
            again = await one(2, "alice")
            third = await one(3, "carol")
            return [*(await asyncio.gather(*first)), again, third]

    (r1, t1), (r2, t2), (ra, ta), (r3, t3) = asyncio.run(run())
    assert "share" in assert_error(ra, 429, "queue_full")["error"] and ta < 0.5
    assert_error(r3, 429, "queue_full")
    assert r3.headers["retry-after"] == "1" and t3 < 0.5
    for r, t in ((r1, t1), (r2, t2)):
        assert_error(r, 504, "timeout")
        assert 0.9 < t < 2.5
    time.sleep(3)  # Let the abandoned batch run before other tests use B.


# ---------------------------------------------------------------------- usage
def test_usage_endpoint_and_cli(env):
    a, key = env["a"], env["keys"]["bob"]
    before = httpx.get(a.url + "/v1/usage", headers=auth(key)).json()
    ok = [post(a, "/v1/inference/tiny", {"input": t}, key) for t in TEXTS[:3]]
    # Answered requests' rows are committed before their answers: there at once.
    after = httpx.get(a.url + "/v1/usage", headers=auth(key)).json()
    assert after["key"] == "bob"

    def total(usage, field):
        return sum(d[field] for d in usage["days"] if d["model"] == "tiny")

    assert total(after, "requests") - total(before, "requests") == 3
    post(a, "/v1/inference/tiny", {"input": "no mask"}, key)
    deadline = time.monotonic() + 10  # A failed request's row is written after its answer.
    while total(after, "requests") - total(before, "requests") < 4 and \
            time.monotonic() < deadline:
        time.sleep(0.05)
        after = httpx.get(a.url + "/v1/usage", headers=auth(key)).json()
    assert total(after, "requests") - total(before, "requests") == 4
    assert total(after, "failed") - total(before, "failed") == 1
    billed = sum(r.json()["inference_status"]["runtime_ms"] for r in ok) / 1000
    assert total(after, "runtime_s") - total(before, "runtime_s") == pytest.approx(billed)
    assert total(after, "cost") - total(before, "cost") == pytest.approx(billed * PRICE)
    rows = json.loads(cli("usage", "--db", env["db"], "--name", "bob", "--json").stdout)
    assert sum(r["requests"] for r in rows if r["model"] == "tiny") == total(after, "requests")
    table = cli("usage", "--db", env["db"]).stdout
    assert "bob" in table and "alice" in table and "total" in table


# ---------------------------------------------------------------------- browser
def test_page_in_headless_chromium(env):
    """Types a prompt and a key into the model page, submits, reads the ranked lines."""
    driver = chromium(env["root"] / "chromium-profile")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(env["a"].url + "/models/tiny")
        assert "tiny" in driver.find_element(By.ID, "model-name").text
        assert driver.find_element(By.ID, "price").text == "$0.002 / sec"
        prompt = driver.find_element(By.ID, "prompt")
        assert prompt.get_attribute("value") == "where is my [MASK]?"
        prompt.clear()
        prompt.send_keys("The capital of France is [MASK].")
        driver.find_element(By.ID, "api-key").send_keys(env["keys"]["alice"])
        driver.find_element(By.ID, "compute").click()
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        lines = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#results li")]
        expected = post(env["a"], "/v1/inference/tiny",
                        {"input": "The capital of France is [MASK]."},
                        env["keys"]["alice"]).json()["results"]
        assert lines == [f"{r['sequence']} ({r['score']:.2f})" for r in expected]
        assert "ms" in driver.find_element(By.ID, "runtime").text
        assert "cost $" in driver.find_element(By.ID, "runtime").text
        bars = driver.find_elements(By.CSS_SELECTOR, "#results .bar")
        assert len(bars) == len(lines) and bars[0].size["width"] > 0
        screenshot = REPO / "docs" / "serve_page.png"
        screenshot.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(screenshot))
        # A wrong key: the page shows the service's error line.
        key_field = driver.find_element(By.ID, "api-key")
        key_field.clear()
        key_field.send_keys("ajk_wrong")
        driver.find_element(By.ID, "compute").click()
        WebDriverWait(driver, 30).until(
            lambda d: "unknown API key" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()


def test_batcher_bounds_shapes_and_admission(env):
    """The batcher compiles exactly the shapes it can form and refuses, at admission, a row
    longer than any batch holds (here 40 tokens: 1 x 40 fits 40 tokens, 1 x 48 does not)."""
    import jax

    from albert_jax.engine import Row
    from albert_jax.serving.batcher import Batcher, QueueFull

    fm = FillMask.from_pretrained(str(env["tiny"]), batch_size=4, data=1,
                                  devices=jax.devices()[:1])
    batcher = Batcher(fm.engine, name="t", max_batch_size=4, max_batch_tokens=40,
                      max_queue=3)
    assert batcher.max_length == 40
    assert all(b * n <= 40 or b == 1 for b, n in batcher.shapes)
    assert (2, 16) in batcher.shapes and (4, 16) not in batcher.shapes
    with pytest.raises(ValueError, match="tokens"):
        batcher.submit([Row([1] * 41)])
    # Of 3 rows, one caller alone holds 2 (a share is kept for a newcomer)...
    batcher.submit([Row([1] * 8)] * 2, owner="a")
    with pytest.raises(QueueFull, match="share"):
        batcher.submit([Row([1] * 8)], owner="a")
    batcher.submit([Row([1] * 8)], owner="b")  # ...which a newcomer gets,
    with pytest.raises(QueueFull, match="at most 3"):  # and then the queue is full.
        batcher.submit([Row([1] * 8)], owner="c")

    # Fair order: a caller that queued 6 rows is served in turn with one that queued 2.
    batcher = Batcher(fm.engine, name="t", max_batch_size=4, max_wait_s=0.0)
    batcher.submit([Row([1] * 10, position=i) for i in range(6)], owner="a")
    batcher.submit([Row([2] * 10, position=i) for i in range(2)], owner="b")
    first = [(i.owner, i.row.position) for i in batcher._next_batch()]
    assert first == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert [(i.owner, i.row.position) for i in batcher._next_batch()] == [
        ("a", p) for p in (2, 3, 4, 5)]

    # The oldest row sets the length bucket; shorter rows join, longer ones go next, in order.
    batcher = Batcher(fm.engine, name="t", max_batch_size=4, max_wait_s=0.0)
    futures = batcher.submit([Row([1] * n) for n in (10, 30, 12, 20, 14)])
    # 3 rows of bucket 16 fill batch bucket 2: the third leads the next batch.
    assert [len(i.row.ids) for i in batcher._next_batch()] == [10, 12]
    assert [len(i.row.ids) for i in batcher._next_batch()] == [14]
    assert [len(i.row.ids) for i in batcher._next_batch()] == [30, 20]
    assert batcher.queued == 0 and all(f.running() for f in futures)


def test_a_bug_is_a_500_without_traceback(env, tmp_path, caplog):
    """A failing engine (a bug stand-in: run_batch and run_packed raise) gives 500 {"error_type":
    "internal"} over real HTTP, the traceback only in the log, and a ledger row."""
    import threading

    import uvicorn

    from albert_jax.serving import db
    from albert_jax.serving.app import create_app
    from albert_jax.serving.server import ServeConfig, build_service

    url = f"sqlite:///{tmp_path / 'bug.db'}"
    key = db.create_key(db.connect(url), "bug")
    service = build_service(ServeConfig(models=[f"tiny={env['tiny']}"], db=url,
                                        max_batch_size=1, length_buckets=(32,),
                                        max_length=32))
    service.start()
    served = service.models["tiny"]
    assert served.batcher.ready.wait(120)

    def broken(kind, rows, **kwargs):
        raise RuntimeError("boom: a bug in the engine")

    served.batcher.engine.run_batch = broken
    served.batcher.engine.run_packed = broken
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with caplog.at_level("ERROR", logger="albert_jax.serving"):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/inference/tiny",
                           json={"input": "a [MASK]"}, headers=auth(key), timeout=30)
        body = assert_error(r, 500, "internal")
        assert "boom" not in body["error"] and r.headers["x-request-id"] in body["error"]
        assert "boom: a bug in the engine" in caplog.text  # the traceback is logged
    finally:
        server.should_exit = True
        thread.join(30)
        service.close()
    rows = db.usage_summary(db.connect(url), "bug")
    assert [(r["requests"], r["failed"], r["cost"]) for r in rows] == [(1, 1, 0.0)]


def test_a_model_that_cannot_compile_stops_the_server(env, tmp_path):
    """Compiling a shape fails (a bug stand-in, planted in the server process): the server
    does not sit at /ready 503 for ever; it stops with exit status 1, naming the model and
    the error."""
    script = """
import sys
from albert_jax import cli
from albert_jax.engine import Engine
def broken(self, *args, **kwargs):
    raise RuntimeError("boom while compiling")
Engine.compile_shape = Engine.run_batch = Engine.run_packed = broken
sys.exit(cli.main(sys.argv[1:]))
"""
    argv = ["serve", "--model", f"tiny={env['tiny']}", "--db", f"sqlite:///{tmp_path / 'x.db'}",
            "--port", str(free_port()), "--max-batch-size", "1", "--length-buckets", "32",
            "--max-length", "32"]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env=child_env())
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "ERROR albert_jax.serving.server: compiling model tiny failed: boom while " \
        "compiling" in proc.stderr
