"""Helpers of the serving tests: tiny models, real server processes, a real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import FAST_COMPILE, TINY, child_env, require_spiece, save_hf_model

REPO = Path(__file__).resolve().parents[1]
CARD = """# tiny-test

A **tiny random** ALBERT for the serving tests.

| field | value |
|---|---|
| hidden | 32 |
| layers | 4 |
"""


def tiny_model(directory: Path, max_position_embeddings: int = 64, seed: int = 3) -> Path:
    """A random 4-layer ALBERT (hidden 32) with the real spiece.model and a model card."""
    require_spiece()
    config = dict(TINY, initializer_range=0.5, max_position_embeddings=max_position_embeddings)
    save_hf_model(directory, "AlbertForMaskedLM", seed=seed, **config)
    (directory / "README.md").write_text(CARD, encoding="utf-8")
    return directory


def jax_cache_dir(tmp_path_factory) -> Path:
    """One persistent compilation cache for every test server of the session."""
    path = tmp_path_factory.getbasetemp() / "jax-compilation-cache"
    path.mkdir(exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``albert-jax ARGS`` run in this process (``cli.main``), stdout and stderr captured."""
    import io

    from albert_jax import cli as albert_cli

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = albert_cli.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    out = subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())
    if check and out.returncode != 0:
        raise AssertionError(f"albert-jax {' '.join(args)}: {out.returncode}\n{out.stderr}")
    return out


def _env() -> dict[str, str]:
    # One CPU device (the server's default), compiled fast.
    return child_env(XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")


class Server:
    """``albert-jax serve ...`` as a real process on 127.0.0.1 and a free port."""

    def __init__(self, args: list[str], log_dir: Path, name: str = "server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "albert_jax.cli", "serve", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=_env())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------- Chromium
def chromium(profile_dir: Path, browser_log: bool = False):
    """Headless Debian Chromium under selenium (a fresh profile in ``profile_dir``, no
    background networking: this machine's network is closed); skips when not installed.
    ``browser_log``: the console and CSP messages can be read (``driver.get_log``)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed "
                    "(apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1200,800",
                 f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    if browser_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path),
                            options=options)


# ---------------------------------------------------------------------- PostgreSQL
def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """A throwaway PostgreSQL server in a temporary directory (initdb + pg_ctl).

    initdb refuses to run as root, so as root the server runs as the unprivileged user
    ``nobody`` (``runuser``) in a directory it owns; otherwise as the current user.
    """

    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="albert_pg_"))
        self.port = free_port()
        self.prefix: list[str] = []
        self.user = os.environ.get("USER") or "postgres"
        if os.geteuid() == 0:
            import pwd

            self.user = "nobody"
            nobody = pwd.getpwnam("nobody")
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            self.prefix = ["runuser", "-u", "nobody", "--"]
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -h 127.0.0.1 -F", "start")
        self.url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bindir / tool), *args], check=True,
                       cwd=self.dir, capture_output=True, timeout=120)

    def halt(self) -> None:
        """Stops the server at once (as a crash or an outage would), keeping its data."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Starts the halted server again on the same port and data."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                  "-t", "60", "-o", f"-p {self.port} -k {self.dir} -h 127.0.0.1 -F", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
