"""The name and layout map between revjax parameters and onanchat's PyTorch state_dict.

onanchat names (no prefixes): ``transformer.wte.weight`` (V, d), ``transformer.h.{i}.attn.c_{q,k,v,proj}.weight``,
``transformer.h.{i}.mlp.c_{fc,proj}.weight``, ``lm_head.weight``. PyTorch Linear weights are ``(out, in)``;
revjax kernels are ``(in, out)``, so every Linear is transposed; the embedding is ``(V, d)`` in both.
Arrays here are numpy; torch itself is not needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax.config import ModelConfig
from revjax.errors import RevjaxError


class StateDictError(RevjaxError, ValueError):
    """A state_dict that does not fit the model, described in one sentence."""


Path = tuple[Any, ...]


def name_map(config: ModelConfig) -> list[tuple[str, Path, bool]]:
    """(torch name, revjax parameter path, transposed?) for every parameter, in onanchat's state_dict order."""
    entries: list[tuple[str, Path, bool]] = [("transformer.wte.weight", ("wte",), False)]
    for i in range(config.n_layer):
        for part, sub in (("attn", "c_q"), ("attn", "c_k"), ("attn", "c_v"), ("attn", "c_proj"),
                          ("mlp", "c_fc"), ("mlp", "c_proj")):
            entries.append((f"transformer.h.{i}.{part}.{sub}.weight", ("blocks", i, part, sub, "kernel"), True))
    entries.append(("lm_head.weight", ("lm_head", "kernel"), True))
    return entries


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """PyTorch-layout shape of every tensor in an onanchat state_dict for this config."""
    d, hd, V = config.n_embd, config.head_dim, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, d)}
    for i in range(config.n_layer):
        p = f"transformer.h.{i}"
        shapes[f"{p}.attn.c_q.weight"] = (config.n_head * hd, d)
        shapes[f"{p}.attn.c_k.weight"] = (config.n_kv_head * hd, d)
        shapes[f"{p}.attn.c_v.weight"] = (config.n_kv_head * hd, d)
        shapes[f"{p}.attn.c_proj.weight"] = (d, d)
        shapes[f"{p}.mlp.c_fc.weight"] = (4 * d, d)
        shapes[f"{p}.mlp.c_proj.weight"] = (d, 4 * d)
    shapes["lm_head.weight"] = (V, d)
    return shapes


def _get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_torch_layout(params: Mapping[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """revjax parameters (``nnx.to_pure_dict`` of the model's Params) → onanchat state_dict arrays."""
    out: dict[str, np.ndarray] = {}
    for name, path, transposed in name_map(config):
        array = np.asarray(_get(params, path))
        out[name] = np.ascontiguousarray(array.T if transposed else array)
    return out


def check_finite(state_dict: Mapping[str, Any]) -> None:
    """Raise a StateDictError naming the first tensor that holds a NaN or an infinity."""
    for name, array in state_dict.items():
        bad = np.size(array) - np.count_nonzero(np.isfinite(array))
        if bad:
            raise StateDictError(
                f"tensor '{name}' holds {bad} NaN or infinite value(s); the weights are damaged or come from a "
                "diverged run, so convert an earlier checkpoint instead"
            )


def check_state_dict(state_dict: Mapping[str, Any], config: ModelConfig) -> None:
    """Raise a StateDictError if names or shapes disagree with the config (onanchat's ``_orig_mod.`` is not
    allowed) or a tensor is not finite."""
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in state_dict]
    extra = [k for k in state_dict if k not in shapes]
    if missing:
        raise StateDictError(
            f"the state_dict lacks {len(missing)} tensor(s) the model needs, e.g. '{missing[0]}'; "
            "it was not saved from an onanchat/nanochat GPT with this model_config"
        )
    if extra:
        raise StateDictError(
            f"the state_dict has {len(extra)} tensor(s) this model does not use, e.g. '{extra[0]}'; "
            "it comes from a different architecture (upstream nanochat after 4a87a0d is not compatible)"
        )
    for name, shape in shapes.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise StateDictError(
                f"tensor '{name}' has shape {got} but model_config gives {shape}; check model_config against the weights"
            )
    check_finite(state_dict)


def from_torch_layout(state_dict: Mapping[str, Any], config: ModelConfig) -> dict:
    """onanchat state_dict arrays (numpy, any float dtype) → a nested dict of fp32 revjax parameters."""
    check_state_dict(state_dict, config)
    params: dict = {}
    for name, path, transposed in name_map(config):
        array = np.asarray(state_dict[name], dtype=np.float32)
        _set(params, path, np.ascontiguousarray(array.T if transposed else array))
    return params


def model_params(model: nnx.Module) -> dict:
    """The model's parameters as a nested dict of arrays (paths as in :func:`name_map`)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def load_params(model: nnx.Module, params: Mapping) -> None:
    """Write a nested dict of parameters (e.g. from :func:`from_torch_layout`) into the model in place."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def build_model(config: ModelConfig, params: Mapping) -> nnx.Module:
    """A GPT holding ``params`` (nested dict, paths as in :func:`name_map`), built without random initialisation."""
    from revjax.model import GPT

    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
    return nnx.merge(graphdef, state)
