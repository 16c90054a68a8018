"""Runs ``albert-jax`` command lines in processes forked from one preloaded interpreter.

A command line that fails on its input costs little more than an interpreter start, and that
start is mostly importing JAX and Flax (2-3 s on a 2-core machine). :class:`ForkRunner`
starts one server interpreter that imports the heavy third-party libraries once; each
:meth:`ForkRunner.run` forks it into a fresh process that runs ``python -m albert_jax.cli``
as a real interpreter would: its own environment, working directory, stdin, stdout and
stderr (files), exit status, ``atexit`` handlers and traceback printing.

What the fork does not redo is importing the libraries listed in ``PRELOAD``, so only
settings those libraries read at import time are shared: none of the environment variables
the tests set per command (JAX's own ``JAX_*`` settings are the server's, which :meth:`run`
checks; the package's own modules and huggingface_hub are imported in the child). The server
never starts a JAX backend or a thread, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

from conftest import REPO, child_env

# Third-party libraries only: their import is what a start spends its time on.
PRELOAD = ("numpy", "jax", "jax.numpy", "flax.linen", "optax", "safetensors.numpy",
           "sentencepiece", "ml_collections", "torch")

_SERVER = r"""
import importlib, io, json, os, select, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
requests, results = sys.stdin.buffer, sys.stdout.buffer
children = {}  # pid -> request id
print(json.dumps({"ready": True}), flush=True)
open_input = True
while open_input or children:
    if open_input and select.select([requests], [], [], 0.02)[0]:
        line = requests.readline()
        if not line:
            open_input = False
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the command's process
            code = 1
            try:
                os.setpgid(0, 0)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                for fd, (path, flags) in enumerate(
                        [(request["stdin"], os.O_RDONLY),
                         (request["stdout"], os.O_WRONLY | os.O_TRUNC),
                         (request["stderr"], os.O_WRONLY | os.O_TRUNC)]):
                    os.dup2(os.open(path, flags), fd)
                # Fresh stream objects (the server's may hold buffered bytes), configured
                # as the interpreter configured the server's own.
                for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"),
                                       (2, "stderr", "w")):
                    like = getattr(sys, f"__{name}__")
                    stream = io.TextIOWrapper(
                        open(fd, mode + "b", closefd=False), encoding=like.encoding,
                        errors=like.errors, line_buffering=like.line_buffering,
                        write_through=like.write_through)
                    setattr(sys, name, stream)
                    setattr(sys, f"__{name}__", stream)
                sys.argv = ["-m", *request["argv"]]
                import atexit, runpy
                code = 0
                try:
                    runpy.run_module("albert_jax.cli", run_name="__main__", alter_sys=True)
                except SystemExit as exit_:
                    if exit_.code is None:
                        code = 0
                    elif isinstance(exit_.code, int):
                        code = exit_.code
                    else:
                        print(exit_.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    sys.excepthook(*sys.exc_info())
                    code = 1
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:  # a fault of this runner, not of the command
                import traceback
                os.write(2, ("forkrun: " + traceback.format_exc()).encode())
            finally:
                os._exit(code)
        children[pid] = request["id"]
        results.write((json.dumps({"id": request["id"], "pid": pid}) + "\n").encode())
        results.flush()
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        code = os.waitstatus_to_exitcode(status)
        results.write((json.dumps({"id": children.pop(pid), "returncode": code}) + "\n")
                      .encode())
        results.flush()
"""


class ForkRunner:
    """A server interpreter with :data:`PRELOAD` imported; :meth:`run` is thread-safe."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self._env = child_env(env)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(PRELOAD)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=self._env, cwd=REPO)
        assert json.loads(self._proc.stdout.readline()) == {"ready": True}, "server died"
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._pids: dict[int, Future] = {}
        self._next = 0
        self._files = tempfile.TemporaryDirectory(prefix="albert_jax_forkrun_")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._lock:
                if "pid" in message:
                    self._pids.pop(message["id"]).set_result(message["pid"])
                else:
                    self._pending.pop(message["id"]).set_result(message["returncode"])

    def run(self, argv: list[str], *, env: Mapping[str, str], cwd: Path,
            stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """``python -m albert_jax.cli *argv`` with exactly ``env`` as its environment.

        JAX reads its ``JAX_*`` settings when it is imported, in the server: they must be
        the server's."""
        differ = sorted(k for k in set(env) | set(self._env) if k.startswith(("JAX_", "XLA_"))
                        and env.get(k) != self._env.get(k))
        if differ:
            raise ValueError(f"start a ForkRunner with these settings: {differ}")
        with self._lock:
            rid, self._next = self._next, self._next + 1
            done, started = Future(), Future()
            self._pending[rid], self._pids[rid] = done, started
        base = Path(self._files.name) / str(rid)
        paths = {k: f"{base}.{k}" for k in ("stdin", "stdout", "stderr")}
        Path(paths["stdin"]).write_bytes(stdin or b"")
        Path(paths["stdout"]).touch()
        Path(paths["stderr"]).touch()
        request = dict(id=rid, argv=list(argv), env=dict(env), cwd=str(cwd), **paths)
        with self._lock:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        pid = started.result(timeout=60)
        try:
            code = done.result(timeout=timeout)
        except TimeoutError:
            os.killpg(pid, 9)
            raise
        out, err = (Path(paths[k]).read_bytes() for k in ("stdout", "stderr"))
        for path in paths.values():
            os.unlink(path)
        return subprocess.CompletedProcess(argv, code, out, err)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._reader.join(timeout=10)
        self._files.cleanup()
