"""Several processes (one per host) on JAX's multi-host runtime, for batch scoring.

``albert-jax score --distributed`` starts one process per host. :func:`initialize` joins
them (``jax.distributed.initialize``): ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` when set, as the trainer's processes do, otherwise JAX's own
detection (TPU pod slices, SLURM, Open MPI). After that ``jax.devices()`` lists every
process's devices, and the scoring :class:`~albert_jax.engine.Engine` builds one mesh over
all of them (the ``data`` axis across hosts, ``tensor`` within).

How a run goes:

1. every process reads the input, tokenises its contiguous share of the lines
   (:func:`share`) and says whether it got there (:func:`agree`: through the coordination
   service's key-value store, with a timeout, so that one process's failure ends every
   process with one line instead of leaving them blocked in a collective);
2. the token ids (a few bytes per token) are exchanged once (:func:`gather_bytes`), so that
   every process knows every row's length and forms the same batch plan (shapes, order);
3. the processes run the engine's steps in lockstep: each step is one global jitted
   computation into which each process puts the rows its own devices hold, and whose
   outputs are replicated to every process (gloo between CPU processes, the accelerator
   interconnect otherwise);
4. process 0 alone writes the output file, in input order, atomically, per-line errors
   kept: the same bytes as one process with as many devices.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

PEER_TIMEOUT_ENV = "ALBERT_JAX_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 600.0
_agreements = itertools.count()  # The same sequence on every process: unique keys.
_FAILED_KEY = "albert_jax/failed"  # Set by the first process that fails mid-run.


class PeerError(RuntimeError):
    """Another process failed (it said so), or did not reach a synchronisation point in
    time (``late``)."""

    def __init__(self, message: str, late: bool = False) -> None:
        super().__init__(message)
        self.late = late


def initialize() -> None:
    """Joins the other processes (idempotent within a process)."""
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)


def peer_timeout() -> float:
    """Seconds to wait for the other processes at a synchronisation point
    (``ALBERT_JAX_PEER_TIMEOUT_S``, default 600)."""
    text = os.environ.get(PEER_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_PEER_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{PEER_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{PEER_TIMEOUT_ENV} must be positive, got {text!r}")
    return value


def agree(tag: str, error: str | None = None, timeout_s: float | None = None) -> None:
    """Every process calls this at the same point: ``error`` is None when this process got
    there fine, else its one-line reason.

    A process that reports an error returns at once (its caller raises its own error);
    the others raise :class:`PeerError` naming the first failed process and its reason,
    or the first process not heard from within ``timeout_s`` (default
    :func:`peer_timeout`). Goes through the coordination service's key-value store, not a
    collective, so that no process waits forever on one that will never arrive.
    """
    import jax

    count = next(_agreements)
    client = _client()
    if client is None:
        return
    key = f"albert_jax/agree/{count}/{tag}"
    client.key_value_set(f"{key}/{jax.process_index()}",
                         "ok" if error is None else "error:" + (error or "failed"))
    if error is not None:
        return
    timeout = peer_timeout() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    for p in range(jax.process_count()):
        try:
            left = max(int(1000 * (deadline - time.monotonic())), 1)
            value = client.blocking_key_value_get(f"{key}/{p}", left)
        except Exception:  # DEADLINE_EXCEEDED from the coordination service.
            raise PeerError(f"process {p} did not reach {tag!r} within {timeout:g} s",
                            late=True) from None
        if value.startswith("error:"):
            raise PeerError(f"process {p} failed: {value.removeprefix('error:')}")


def _client() -> Any:
    """The coordination service's client (its key-value store), or None on one process.
    JAX exposes it only here (orbax reads it the same way)."""
    import jax
    from jax._src.distributed import global_state

    return global_state.client if jax.process_count() > 1 else None


def report_failure(reason: str, wait_s: float = 10.0) -> None:
    """Tells the other processes that this one is failing (``reason``: one line), and waits
    up to ``wait_s`` for each to acknowledge (their :func:`watch` ends them), so that this
    process may then leave at once (``os._exit``) rather than wait at JAX's shutdown
    barrier for peers blocked in a collective it will never join."""
    import jax

    client = _client()
    if client is None:
        return
    me = jax.process_index()
    with contextlib.suppress(Exception):  # Another process may have failed first.
        client.key_value_set(_FAILED_KEY, f"process {me} failed: {reason}")
    with contextlib.suppress(Exception):  # Failing at once too, a peer waits for this.
        client.key_value_set(f"{_FAILED_KEY}/ack/{me}", "failing")
    deadline = time.monotonic() + wait_s
    for p in range(jax.process_count()):
        left = int(1000 * (deadline - time.monotonic()))
        if p == me or left <= 0:
            continue
        with contextlib.suppress(Exception):  # Gone already, or too slow: leave anyway.
            client.blocking_key_value_get(f"{_FAILED_KEY}/ack/{p}", left)


def leave(code: int, wait_s: float = 5.0) -> None:
    """Ends this process now (``os._exit(code)``, no shutdown barrier), after a failure
    every process knows of. Process 0 holds the coordination service, whose loss makes
    JAX abort the others with a crash report: it leaves last, once each other process
    has said it is leaving (or after ``wait_s``)."""
    import jax

    client = _client()
    if client is not None:
        me = jax.process_index()
        with contextlib.suppress(Exception):
            client.key_value_set(f"{_FAILED_KEY}/gone/{me}", "gone")
        if me == 0:
            deadline = time.monotonic() + wait_s
            for p in range(1, jax.process_count()):
                left = int(1000 * (deadline - time.monotonic()))
                if left > 0:
                    with contextlib.suppress(Exception):
                        client.blocking_key_value_get(f"{_FAILED_KEY}/gone/{p}", left)
            time.sleep(0.2)  # Their os._exit follows the key by microseconds.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def watch(on_failure: Callable[[str], None], interval_s: float = 0.25) -> Iterator[None]:
    """While the block runs, a thread polls for another process's :func:`report_failure`
    and then acknowledges it and calls ``on_failure(message)`` (which should end this
    process: its main thread may be blocked in a collective that will never complete)."""
    import jax

    client = _client()
    if client is None:
        yield
        return
    me = jax.process_index()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval_s):
            try:
                message = client.key_value_try_get(_FAILED_KEY)
            except Exception:  # NOT_FOUND: nobody failed (or the service is gone).
                continue
            if message.startswith(f"process {me} failed:"):
                return  # This process's own failure: its main thread reports it.
            with contextlib.suppress(Exception):
                client.key_value_set(f"{_FAILED_KEY}/ack/{me}", "ok")
            on_failure(message)
            return

    thread = threading.Thread(target=poll, name="albert_jax-peer-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def share(count: int, index: int | None = None, processes: int | None = None) -> range:
    """This process's contiguous share of ``count`` items (the first processes get one
    more when it does not divide)."""
    import jax

    index = jax.process_index() if index is None else index
    processes = jax.process_count() if processes is None else processes
    base, extra = divmod(count, processes)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def gather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data``, in process order, on every process (a collective: every
    process must call it)."""
    from jax.experimental import multihost_utils

    sizes = multihost_utils.process_allgather(np.asarray([len(data)], np.int64))
    sizes = np.asarray(sizes).reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return [stacked[p, : int(n)].tobytes() for p, n in enumerate(sizes)]
