"""Several processes (one per host) on JAX's multi-host runtime, for batch scoring.

``albert-jax score --distributed`` starts one process per host. :func:`initialize` joins
them (``jax.distributed.initialize``): ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` when set, as the trainer's processes do, otherwise JAX's own
detection (TPU pod slices, SLURM, Open MPI). Each process then scores its contiguous share
of the input lines (:func:`share`) on its own devices, and :func:`gather_bytes` /
:func:`gather_rows` bring every share to every process through JAX's collectives (gloo
between CPU processes), so that process 0 writes the one output file, in input order,
identical to what a single process writes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


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
    """Every process's ``data``, in process order, on every process."""
    from jax.experimental import multihost_utils

    sizes = multihost_utils.process_allgather(np.asarray([len(data)], np.int64))
    sizes = np.asarray(sizes).reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return [stacked[p, : int(n)].tobytes() for p, n in enumerate(sizes)]


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every process's [n_p, ...] float32 rows concatenated in process order: [sum n_p, ...]."""
    from jax.experimental import multihost_utils

    rows = np.asarray(rows, np.float32)
    counts = np.asarray(multihost_utils.process_allgather(
        np.asarray([rows.shape[0]], np.int64))).reshape(-1)
    padded = np.zeros((max(int(counts.max()), 1), *rows.shape[1:]), np.float32)
    padded[: rows.shape[0]] = rows
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([stacked[p, : int(n)] for p, n in enumerate(counts)])
