"""Device meshes and the logical-axis rules that place parameters, optimizer state and batches on them.

The mesh has three axes: ``data`` (batch), ``fsdp`` (batch, and parameters sharded along ``embed``) and ``tensor``
(heads / MLP / vocabulary). Parameters carry logical axis names (``revjax.model.PARAM_AXES``); :data:`RULES` maps
each name to mesh axes, so data-parallel, FSDP and tensor-parallel runs differ only in ``MeshConfig``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig
from revjax.errors import RevjaxError
from revjax.model import PARAM_AXES

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis name → mesh axis (None: replicated)
RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
}


class ShardingError(RevjaxError, ValueError):
    """A mesh or array shape that does not fit the devices, described in one sentence."""


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolve −1 entries so that data·fsdp·tensor equals the device count."""
    sizes = [config.data, config.fsdp, config.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ShardingError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if n_devices % fixed:
        raise ShardingError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the {n_devices} devices")
    if free:
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ShardingError(
            f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but {n_devices} are present; "
            "set one axis to -1 to fill the rest"
        )
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all), with Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_axes(path: tuple[Any, ...]) -> tuple[str, ...] | None:
    """Logical axis names of the parameter at ``path`` (e.g. ('blocks', 0, 'attn', 'c_q', 'kernel')), if any."""
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    for key in (".".join(names[-3:-1]), names[-2] if len(names) > 1 else "", names[-1]):
        if key in PARAM_AXES:
            return PARAM_AXES[key]
    return None


def spec_for(path: tuple[Any, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of one parameter, checking that every sharded dimension divides its mesh axis."""
    names = logical_axes(path)
    if names is None or len(names) != len(shape):
        raise ShardingError(f"parameter {'/'.join(map(str, path))} has no logical axes in revjax.model.PARAM_AXES")
    spec = []
    for dim, name in zip(shape, names):
        axis = RULES.get(name)
        if axis is not None and mesh.shape[axis] > 1:
            if dim % mesh.shape[axis]:
                raise ShardingError(
                    f"parameter {'/'.join(map(str, path))} dimension '{name}'={dim} does not divide mesh axis "
                    f"{axis}={mesh.shape[axis]}; choose a mesh size that divides it"
                )
            spec.append(axis)
        else:
            spec.append(None)
    return P(*spec)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedShardings for a parameter pytree (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(tuple(_key(k) for k in path), x.shape, mesh)), params
    )


def _key(k: Any) -> Any:
    return getattr(k, "key", getattr(k, "idx", k))


def opt_state_shardings(opt_state: Any, mesh: Mesh) -> Any:
    """Optimizer-state shardings: a buffer stored under a parameter's path follows that parameter's rule,
    everything else (step counts, hyperparameters) is replicated."""

    def place(path, x):
        keys = tuple(_key(k) for k in path)
        names = logical_axes(keys)
        if names is not None and len(names) == getattr(x, "ndim", 0):
            return NamedSharding(mesh, spec_for(keys, x.shape, mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(place, opt_state)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays: the leading (batch) axis over data×fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def step_batch_sharding(mesh: Mesh) -> NamedSharding:
    """A train step's ``(accum, rows, T)`` batch: micro-batches replicated, rows over data×fsdp."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


class UnderMesh:
    """A jitted function called and lowered under ``jax.set_mesh(mesh)``, so that code traced inside it sees the
    mesh (the Pallas splash kernel runs per shard through ``shard_map``, as it cannot be partitioned
    automatically). ``.lower`` works as on the jitted function."""

    def __init__(self, jitted: Any, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)
