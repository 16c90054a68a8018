"""Logical axis names -> mesh axes, and parameter shardings on a device mesh.

Every parameter of ``albert_jax.model`` is boxed with logical names (``vocab``,
``embedding``, ``embed``, ``joined_kv``, ``mlp``, ...); activations are constrained with
separate names (``act_batch``, ``act_len``, ``act_embed``) so that the hidden dimension of
activations is never sharded by accident. The rules below map both onto a mesh with axes
``("data", "fsdp", "tensor")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None). Parameters: fsdp shards the hidden ("embed")
# dimension, tensor parallelism shards heads, FFN and vocabulary.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embedding", None),
    ("embed", "fsdp"),
    ("joined_kv", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", "tensor"),
    ("classes", None),
    ("max_len", None),
    ("type_vocab", None),
)


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh; ``-1`` for ``data`` takes the remaining devices.

    Axes are Auto (not Explicit) so that Linen's logical constraints apply.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise ValueError(
                f"{len(devices)} devices cannot be split into fsdp={fsdp} x tensor={tensor}"
            )
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {data * fsdp * tensor} "
            f"devices, but {len(devices)} are available"
        )
    grid = np.asarray(devices).reshape(data, fsdp, tensor)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_partition_specs(boxed_tree: Any) -> Any:
    """The logical PartitionSpec of every leaf of a boxed (``nn.Partitioned``) tree."""
    return nn.get_partition_spec(boxed_tree)


def param_shardings(
    boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES
) -> Any:
    """NamedShardings for a boxed tree (or its ``jax.eval_shape``) under ``rules``."""
    return nn.logical_to_mesh_sharding(logical_partition_specs(boxed_tree), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shards the leading (batch) dimension over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))
