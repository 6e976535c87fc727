"""Read a transformers NanoChat folder (what ``revjax export --format hf`` writes) for ``revjax import``.

The folder holds ``config.json`` (``model_type: "nanochat"``), ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and ``tokenizer.json``. Its config must describe a model revjax computes exactly
the same way (:data:`FIXED`); the weights are renamed to onanchat's state_dict names and the byte-level BPE of
``tokenizer.json`` becomes the tiktoken encoding revjax's tokenizer wraps. Direction, phase, step and validation bpb come
from the config's ``revjax`` entry when a revjax export wrote one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tiktoken

from revjax.interop.export import InteropError, torch_for
from revjax.interop.hf import byte_symbols, hf_name
from revjax.interop.state_dict import name_map
from revjax.model import SOFTCAP
from revjax.tokenizer import Tokenizer
from revjax.tokenizer.vocab import TokenizerError

# config.json entries whose value revjax's GPT fixes: (key, revjax's value, what it means)
FIXED = (("hidden_act", "relu2", "the MLP activation"), ("final_logit_softcapping", SOFTCAP, "the logit softcap"),
         ("attention_bias", False, "biases in attention"), ("tie_word_embeddings", False, "tied embeddings"))


def is_hf_folder(folder: Path) -> bool:
    """True when ``folder`` holds a ``config.json`` naming transformers' NanoChat model."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "nanochat"
    except (OSError, ValueError, AttributeError):
        return False


def _rope_theta(config: dict) -> float | None:
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_theta", config.get("rope_theta")) if isinstance(rope, dict) else config.get("rope_theta")


def read_config(folder: Path) -> tuple[dict[str, int], dict, dict]:
    """``(onanchat model_config, further model options, what a revjax export recorded or {})`` of a NanoChat
    ``config.json``, refusing (one sentence) any setting that would make revjax compute something else."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    try:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        model_config = {"sequence_len": int(config["max_position_embeddings"]), "vocab_size": int(config["vocab_size"]),
                        "n_layer": int(config["num_hidden_layers"]), "n_head": heads,
                        "n_kv_head": int(config.get("num_key_value_heads") or heads), "n_embd": d}
    except (KeyError, TypeError, ValueError) as err:
        raise InteropError(f"{path} lacks a usable {err} entry, so it does not describe a NanoChat model") from None
    differs = [f"{what} ({key}={config.get(key)!r}, revjax has {value!r})" for key, value, what in FIXED
               if key in config and config[key] != value]
    if int(config.get("intermediate_size", 4 * d)) != 4 * d:
        differs.append(f"the MLP width (intermediate_size={config['intermediate_size']}, revjax has 4×{d})")
    if config.get("head_dim") not in (None, d // heads) or d % heads:
        differs.append(f"the head size (head_dim={config.get('head_dim')}, revjax has hidden_size/heads)")
    if differs:
        raise InteropError(f"{path} describes a model revjax does not compute the same way: it differs in "
                           f"{'; '.join(differs)}")
    info = config.get("revjax") if isinstance(config.get("revjax"), dict) else {}
    # transformers keeps RoPE tables in the compute dtype: so does revjax, unless a revjax export says otherwise
    options = {"rope_base": float(_rope_theta(config) or 10_000.0), "rope_bf16": bool(info.get("rope_bf16", False))}
    return model_config, options, info


def read_tensors(folder: Path, model_config: dict[str, int]) -> dict[str, np.ndarray]:
    """The safetensors weights as fp32 numpy arrays under onanchat's state_dict names."""
    from revjax.config import ModelConfig

    torch_for("revjax import")  # safetensors' PyTorch reader (numpy has no bfloat16)
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise InteropError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)")
    onanchat_name = {hf_name(name): name for name, _, _ in name_map(ModelConfig(depth=None, **model_config))}
    out: dict[str, np.ndarray] = {}
    for file in files:
        with safe_open(str(folder / file), framework="pt") as f:
            for key in f.keys():
                if key not in onanchat_name:
                    raise InteropError(f"{folder / file} holds the tensor '{key}', which a NanoChat model of this "
                                       "config does not have; it is a different architecture")
                out[onanchat_name[key]] = f.get_tensor(key).float().numpy()
    return out


def _token_bytes(symbols: str, decode: dict[str, int]) -> bytes:
    try:
        return bytes(decode[c] for c in symbols)
    except KeyError:
        raise InteropError(f"the token {symbols!r} in tokenizer.json is not written in byte-level BPE symbols, so "
                           "revjax cannot read this tokenizer") from None


def encoding_from_tokenizer_json(path: Path) -> tiktoken.Encoding:
    """The tiktoken encoding a byte-level BPE ``tokenizer.json`` describes: ranks are token ids, the split pattern
    is its ``Split`` pre-tokenizer, special tokens are its special added tokens."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InteropError(f"{path} is not a BPE tokenizer ({model.get('type')}); revjax reads byte-level BPE only")
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    patterns = [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]
    if len(patterns) != 1 or not any(s.get("type") == "ByteLevel" for s in steps):
        raise InteropError(f"{path} does not split text with one regex before byte-level BPE, as revjax's "
                           "tokenizer does")
    decode = {c: b for b, c in enumerate(byte_symbols())}
    ranks = {_token_bytes(symbols, decode): int(i) for symbols, i in model["vocab"].items()}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise InteropError(f"the vocabulary of {path} does not number its tokens 0…{len(ranks) - 1}")
    merged = [ranks[_token_bytes(a, decode) + _token_bytes(b, decode)]
              for a, b in (m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", []))]
    if merged != sorted(merged):
        raise InteropError(f"the merges of {path} are not in the order of the ids they make, so revjax's tokenizer "
                           "would split text differently")
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    return tiktoken.Encoding(name=f"hf-{path.parent.name}", pat_str=patterns[0], mergeable_ranks=ranks,
                             special_tokens=specials)


def read_tokenizer(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InteropError(f"{folder} has no tokenizer.json")
    try:
        return Tokenizer(encoding_from_tokenizer_json(path))
    except TokenizerError as err:
        raise InteropError(f"{path}: {err}") from None
