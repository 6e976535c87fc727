"""The name and layout map between revjax parameters and onanchat's (or nanochat's current) PyTorch state_dict.

onanchat names (no prefixes): ``transformer.wte.weight`` (V, d), ``transformer.h.{i}.attn.c_{q,k,v,proj}.weight``,
``transformer.h.{i}.mlp.c_{fc,proj}.weight``, ``lm_head.weight``. PyTorch Linear weights are ``(out, in)``;
revjax kernels are ``(in, out)``, so every Linear is transposed; the embedding is ``(V, d)`` in both.
A model with the nanochat-2026 elements has nanochat 92d63d4's names besides (listed with their revjax paths in
:mod:`revjax.recipe_model`): ``resid_lambdas``, ``x0_lambdas``, ``smear_lambda``, ``backout_lambda``,
``transformer.h.{i}.attn.ve_gate.weight``, ``smear_gate.weight`` and ``value_embeds.{i}.weight``, in nanochat's
order, with the embedding, value embeddings and head padded to the vocabulary multiple (the head's padding rows
are revjax's ``lm_head.padding``). Arrays here are numpy; torch itself is not needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax import architecture
from revjax.config import ModelConfig
from revjax.errors import RevjaxError


class StateDictError(RevjaxError, ValueError):
    """A state_dict that does not fit the model, described in one sentence."""


Path = tuple[Any, ...]


def name_map(config: ModelConfig) -> list[tuple[str, Path, bool]]:
    """(torch name, revjax parameter path, transposed?) for every parameter, in onanchat's (nanochat's) state_dict
    order. ``lm_head.weight`` stands for the head's kernel and, where the vocabulary is padded, its padding."""
    e = architecture.elements(config)
    scalars = [name for name, on in (("resid_lambdas", e.layer_lambdas), ("x0_lambdas", e.layer_lambdas),
                                     ("smear_lambda", e.smear), ("backout_lambda", e.backout)) if on]
    entries: list[tuple[str, Path, bool]] = [(name, (name,), False) for name in scalars]
    entries.append(("transformer.wte.weight", ("wte",), False))
    gates = set(architecture.value_embed_layers(config.n_layer)) if e.value_embeds else set()
    for i in range(config.n_layer):
        parts = [("attn", "c_q"), ("attn", "c_k"), ("attn", "c_v"), ("attn", "c_proj")]
        parts += [("attn", "ve_gate")] * (i in gates) + [("mlp", "c_fc"), ("mlp", "c_proj")]
        for part, sub in parts:
            entries.append((f"transformer.h.{i}.{part}.{sub}.weight", ("blocks", i, part, sub, "kernel"), True))
    entries.append(("lm_head.weight", ("lm_head", "kernel"), True))
    if e.smear:
        entries.append(("smear_gate.weight", ("smear_gate", "kernel"), True))
    entries += [(f"value_embeds.{i}.weight", ("value_embeds", str(i)), False) for i in sorted(gates)]
    return entries


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """PyTorch-layout shape of every tensor in an onanchat (nanochat) state_dict for this config."""
    e = architecture.elements(config)
    d, hd, V = config.n_embd, config.head_dim, architecture.padded_vocab(config.vocab_size, e.vocab_multiple)
    kv = config.n_kv_head * hd
    sizes = {"resid_lambdas": (config.n_layer,), "x0_lambdas": (config.n_layer,), "smear_lambda": (1,),
             "backout_lambda": (1,), "transformer.wte.weight": (V, d), "lm_head.weight": (V, d),
             "smear_gate.weight": (1, architecture.SMEAR_CHANNELS)}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, _, _ in name_map(config):
        if name in sizes:
            shapes[name] = sizes[name]
        elif name.startswith("value_embeds."):
            shapes[name] = (V, kv)
        else:
            part = name.split(".")[-2]
            outputs = {"c_q": config.n_head * hd, "c_k": kv, "c_v": kv, "c_proj": d, "c_fc": 4 * d,
                       "ve_gate": config.n_kv_head}
            inputs = {"ve_gate": architecture.VE_GATE_CHANNELS, "c_proj": 4 * d if ".mlp." in name else d}
            shapes[name] = (outputs[part], inputs.get(part, d))
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
        if name == "lm_head.weight" and "padding" in params["lm_head"]:
            array = np.concatenate([array, np.asarray(params["lm_head"]["padding"])], axis=1)
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
            "it comes from a different architecture (nanochat after 4a87a0d needs model.recipe=nanochat-2026)"
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
        array = np.ascontiguousarray(array.T if transposed else array)
        if name == "lm_head.weight" and array.shape[1] > config.vocab_size:  # the padding rows, kept apart
            _set(params, ("lm_head", "padding"), np.ascontiguousarray(array[:, config.vocab_size:]))
            array = np.ascontiguousarray(array[:, :config.vocab_size])
        _set(params, path, array)
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


GPT_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
# the elements nanochat's checkpoint format fixes (its window pattern is the one element its metadata names)
_FIXED_ELEMENTS = ("value_embeds", "layer_lambdas", "smear", "backout", "qk_scale", "vocab_multiple", "rope_base")


def checkpoint_model_config(config: ModelConfig) -> dict[str, Any]:
    """The ``model_config`` of a PyTorch checkpoint's metadata for this model: onanchat's six GPTConfig keys, plus
    nanochat's ``window_pattern`` for a nanochat-2026 model (which nanochat's current GPTConfig reads). A model
    mixing the two recipes' elements has no such checkpoint: StateDictError."""
    e = architecture.elements(config)
    keys = {k: int(getattr(config, k)) for k in GPT_CONFIG_KEYS}

    def matches(recipe: str) -> bool:
        return all(getattr(e, k) == getattr(architecture.RECIPES[recipe], k) for k in _FIXED_ELEMENTS)

    if matches(architecture.ONANCHAT_2025) and set(e.window_pattern.upper()) == {"L"}:
        return keys
    if matches(architecture.NANOCHAT_2026):
        return {**keys, "window_pattern": e.window_pattern}
    differ = [k for k in _FIXED_ELEMENTS if getattr(e, k) != getattr(architecture.RECIPES[config.recipe], k)]
    raise StateDictError(
        f"this model mixes the recipes' elements ({', '.join(differ) or 'window_pattern'} differ from "
        f"model.recipe={config.recipe}), which neither onanchat's nor nanochat's checkpoint format can hold; "
        "export a model with all of one recipe's elements")


def model_keys_from_checkpoint(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model.*`` keys of a checkpoint's ``model_config``: onanchat's six keys, and for nanochat's (with a
    ``window_pattern``) ``recipe: nanochat-2026`` and that pattern."""
    keys = {k: model_config[k] for k in GPT_CONFIG_KEYS if k in model_config}
    if "window_pattern" in model_config:
        keys.update(recipe=architecture.NANOCHAT_2026, window_pattern=str(model_config["window_pattern"]))
    return keys
