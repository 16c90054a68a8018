"""albert_jax.training.host_memory: with the setting made before JAX starts, a second
execution of a computation with a large scratch array reuses the freed memory instead of
faulting every page back in (each case in a fresh interpreter: the setting is
process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
if sys.argv[1] == "1":
    from albert_jax.training.host_memory import retain_freed_memory
    assert retain_freed_memory()
import jax, jax.numpy as jnp
# A [160, 160, 1280] float32 intermediate: 125 MiB, far over glibc's mmap threshold.
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x[:, None, :] * x[None, :, :] + 1.0) @ x.T))
x = jnp.ones((160, 1280)) * 0.01
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_call_faults(setting: bool) -> int:
    env = os.environ.copy()
    env.pop("GLIBC_TUNABLES", None)  # glibc's defaults (conftest gives children the setting)
    out = subprocess.run([sys.executable, "-c", PROGRAM, "1" if setting else "0"],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_retained_scratch_is_not_faulted_in_again():
    default = _second_call_faults(False)
    retained = _second_call_faults(True)
    pages = 160 * 160 * 1280 * 4 // 4096
    assert default > pages // 2  # the default allocator faults the scratch in each call
    assert retained < pages // 100


def test_does_nothing_once_jax_has_started():
    import jax

    from albert_jax.training.host_memory import retain_freed_memory

    jax.devices()  # a started backend: the setting could only keep the peak heap now
    assert retain_freed_memory() is False
