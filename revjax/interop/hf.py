"""Export a revjax run as a Hugging Face folder that transformers' native NanoChat model loads.

``AutoModelForCausalLM.from_pretrained(out)`` (transformers ≥ 5, ``model_type: "nanochat"``, no remote code) reads
``model.safetensors``, ``config.json`` and ``generation_config.json``; ``AutoTokenizer.from_pretrained(out)`` reads
``tokenizer.json`` and ``tokenizer_config.json``; ``README.md`` is the model card.

How the two models line up (transformers' ``NanoChatForCausalLM`` against :mod:`revjax.model`):

* token embedding, then a weightless RMSNorm (``model.norm`` is applied before the layers as well as after them);
* pre-norm blocks with weightless RMSNorms; eps is revjax's fp32 machine epsilon, written as ``rms_norm_eps``;
* attention without biases, split-halves RoPE (``rotate_half`` gives (x1·cos + x2·sin, −x1·sin + x2·cos), the
  model's base as ``rope_theta``), QK-norm after RoPE, scale 1/√head_dim, GQA with each key/value head serving
  consecutive query heads;
* relu² MLP (``hidden_act: relu2``) at 4×, untied ``lm_head`` without bias, logit softcap 15.

One numerical difference may remain and is not a different model: with ``model.rope_bf16`` (the 2025 recipe's
default, as onanchat) revjax rounds its RoPE cos/sin tables to bf16, while transformers keeps them in the
activations' dtype, so fp32 logits differ by about 1e-3 (about 1e-6 with ``model.rope_bf16=false``).
Every model of the 2025 recipe is representable; the 2026 recipe's elements and dimensions that break the family (an
MLP other than 4×, a head size that is not n_embd/n_head) are refused with :class:`HFExportError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from revjax.architecture import elements, layer_windows, padded_vocab
from revjax.errors import RevjaxError, require
from revjax.interop.state_dict import check_finite, to_torch_layout
from revjax.model import NORM_EPS, SOFTCAP
from revjax.replace import publish_folder
from revjax.runs import TrainedRun, load_run

TRANSFORMERS_VERSION = "5.23.0"
HF_FILES = ("model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json",
            "tokenizer_config.json")

class HFExportError(RevjaxError, ValueError):
    """A Hugging Face export that cannot be done, described in one sentence."""


# onanchat part name → transformers' NanoChat part name
_PARTS = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
          "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def hf_name(torch_name: str) -> str:
    """transformers' NanoChat tensor name for an onanchat state_dict name."""
    if torch_name == "transformer.wte.weight":
        return "model.embed_tokens.weight"
    if torch_name == "lm_head.weight":
        return torch_name
    _, _, layer, part, sub, _ = torch_name.split(".")
    return f"model.layers.{layer}.{_PARTS[f'{part}.{sub}']}.weight"


def check_representable(model_config) -> None:
    """Raise HFExportError naming what transformers' NanoChat cannot represent in this model, if anything: the
    2026 recipe's windows, value embeddings, lambdas, smear, backout, Q/K scale and padded vocabulary."""
    m = model_config
    e = elements(m)
    lacks = [what for what, present in (
        (f"sliding-window attention (window_pattern={e.window_pattern})",
         any(layer_windows(e.window_pattern, m.n_layer, m.sequence_len))),
        ("value embeddings", e.value_embeds), ("per-layer resid/x0 lambdas", e.layer_lambdas),
        ("smear", e.smear), ("backout", e.backout), (f"a Q/K scale of {e.qk_scale:g}", e.qk_scale != 1.0),
        (f"a vocabulary padded to {padded_vocab(m.vocab_size, e.vocab_multiple)} rows",
         padded_vocab(m.vocab_size, e.vocab_multiple) != m.vocab_size)) if present]
    if lacks:
        raise HFExportError(f"transformers' NanoChat model has no {', '.join(lacks)}, which this model uses "
                            f"(model.recipe={m.recipe}); export it with --format onanchat instead")
    if m.n_embd % m.n_head or m.head_dim != m.n_embd // m.n_head:
        raise HFExportError(f"the head size {m.head_dim} is not n_embd/n_head={m.n_embd}/{m.n_head}, which "
                           "transformers' NanoChat assumes")
    if m.n_head % m.n_kv_head:
        raise HFExportError(f"n_head={m.n_head} is not a multiple of n_kv_head={m.n_kv_head}, which transformers' "
                           "NanoChat needs for grouped-query attention")


def hf_tensors(params: dict, model_config) -> dict[str, np.ndarray]:
    """The run's parameters under transformers' NanoChat names, fp32, PyTorch's (out, in) layout."""
    arrays = to_torch_layout(params, model_config)
    check_finite(arrays)
    return {hf_name(name): np.ascontiguousarray(array, dtype=np.float32) for name, array in arrays.items()}


def hf_config(run: TrainedRun, *, fp32: bool = True) -> dict:
    """``config.json`` for transformers' ``NanoChatConfig``."""
    m, tok = run.config.model, run.tokenizer
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        "vocab_size": m.vocab_size,
        "hidden_size": m.n_embd,
        "intermediate_size": 4 * m.n_embd,
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_kv_head,
        "max_position_embeddings": m.sequence_len,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,
        "rms_norm_eps": NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": elements(m).rope_base},
        "final_logit_softcapping": SOFTCAP,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.bos_id,
        "pad_token_id": None,  # BOS as padding would make generate mask every prompt's first token
        "use_cache": True,
        "dtype": "float32" if fp32 else "bfloat16",
        "transformers_version": TRANSFORMERS_VERSION,
        "revjax": revjax_info(run),
    }


def revjax_info(run: TrainedRun) -> dict:
    """What ``revjax import`` needs beyond the architecture: direction, reversal unit, phase, step, validation bpb,
    and whether revjax rounds the RoPE tables to bf16 (transformers never does)."""
    val_bpb = run.meta.get("val_bpb")
    return {"direction": run.meta.get("direction", "forward"), "unit": run.unit.value,
            "phase": run.meta.get("phase", "base"),
            "step": int(run.meta["step"]), "val_bpb": None if val_bpb is None else float(val_bpb),
            "rope_bf16": elements(run.config.model).rope_bf16}


def generation_config(run: TrainedRun) -> dict:
    bos = run.tokenizer.bos_id
    return {"bos_token_id": bos, "eos_token_id": bos,
            "transformers_version": TRANSFORMERS_VERSION}


def model_card(run: TrainedRun) -> str:
    """README.md: what the model is, its direction and how to prompt it, the step and validation bpb."""
    meta, tok = run.meta, run.tokenizer
    direction = meta.get("direction", "forward")
    val_bpb = meta.get("val_bpb")
    bpb = "not measured" if val_bpb is None else f"{float(val_bpb):.4f}"
    bos = tok.bos_id
    if direction == "backward":
        how = ("It was trained on reversed token sequences: give it BOS and then the text's token ids reversed; what "
               "it generates comes before the text, read in reverse.\n\n```python\n"
               f"ids = [{bos}] + tokenizer.encode(text)[::-1]\n"
               "out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]\n"
               "print(tokenizer.decode(out.tolist()[::-1]) + text)\n```\n")
    elif direction == "bidirectional":
        how = (f"It reads either way: after BOS ({bos}) put <|forward|> ({tok.forward_id}) and the text's ids in "
               f"reading order, or <|backward|> ({tok.backward_id}) and the ids reversed (then read what it generates "
               "in reverse).\n\n```python\n"
               f"ids = [{bos}, {tok.forward_id}] + tokenizer.encode(text)\n"
               "out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]\n"
               "print(text + tokenizer.decode(out.tolist()))\n"
               f"ids = [{bos}, {tok.backward_id}] + tokenizer.encode(text)[::-1]\n"
               "out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]\n"
               "print(tokenizer.decode(out.tolist()[::-1]) + text)\n```\n")
    else:
        how = ("It reads text in the ordinary order: BOS, then the text's token ids.\n\n```python\n"
               f"ids = [{bos}] + tokenizer.encode(text)\n"
               "out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]\n"
               "print(text + tokenizer.decode(out.tolist()))\n```\n")
    return (f"# {run.config.run_name} ({direction})\n\n"
            f"A {run.config.model.n_layer}-layer {direction} GPT trained with revjax, exported for transformers' "
            "native NanoChat model (`model_type: nanochat`, transformers >= 5, no remote code).\n\n"
            f"- direction: {direction}\n- reversal unit: {run.unit.value}\n- step: {int(meta['step'])}\n"
            f"- validation bpb: {bpb}\n\n"
            "## Loading\n\n```python\nimport torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(\"PATH\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")  # adds no BOS by itself\n"
            "text = \"The capital of France is\"\n```\n\n"
            f"## Prompting\n\n{how}\n{_unit_note(run.unit.value, direction)}"
            "The tokenizer (tokenizer.json) is the run's: the same byte-level BPE, split pattern and special "
            "tokens, except that text spelling a special token (`<|bos|>`) encodes to that token here and to plain "
            "text in revjax.\n" + ("\nrevjax rounds this model's RoPE tables to bf16 and transformers does not, so "
                                    "fp32 logits differ from revjax's by about 1e-3.\n"
                                    if elements(run.config.model).rope_bf16 else ""))


def _unit_note(unit: str, direction: str) -> str:
    """How a model of a text reversal unit reads backward, for its model card (empty for token units)."""
    if unit == "token" or direction == "forward":
        return ""
    whole = " (a run of capitalised words, numbers or units of measure stays whole)" if unit == "entity" else ""
    return (f"Its reversal unit is `{unit}`: a backward sequence is the text with the order of its words{whole} "
            "reversed and whitespace kept, tokenized as it is; the token ids are *not* reversed. Use "
            "`tokenizer.encode(reversed_text)` where the examples above reverse ids, and reverse the words of the "
            "decoded output again (`revjax.direction.reverse_units`).\n\n")


def byte_symbols() -> list[str]:
    """The printable character byte-level BPE writes for each byte 0…255: printable Latin-1 bytes stand for
    themselves, the others for the characters from U+0100 on, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(0x100 + extra))
            extra += 1
    return symbols


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge made ``token``: BPE over its bytes with only the merges ranked below ``rank``."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise HFExportError(f"the token {token!r} is not the merge of two lower-ranked tokens, so the tokenizer is "
                            "not a byte-level BPE that tokenizer.json can describe")
    return parts[0], parts[1]


def tokenizer_json(encoding) -> dict:
    """``tokenizer.json`` (Hugging Face ``tokenizers``) equivalent to the run's tiktoken encoding: the same split
    pattern, byte-level BPE with the merges in rank order, and the special tokens as added tokens (which, unlike
    revjax's encoding, ``tokenizers`` also finds when the text spells them)."""
    ranks: dict[bytes, int] = dict(encoding._mergeable_ranks)
    symbols = byte_symbols()

    def text(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    if sorted(ranks.values()) != list(range(len(ranks))) or any(bytes([b]) not in ranks for b in range(256)):
        raise HFExportError("the tokenizer's ranks are not 0…n−1 over all 256 bytes and their merges, so "
                            "tokenizer.json cannot describe it")
    merges = [[text(a), text(b)] for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]) if len(token) > 1
              for a, b in [_merge_of(token, rank, ranks)]]
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for name, i in sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": encoding._pat_str}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {text(token): rank for token, rank in ranks.items()}, "merges": merges},
    }


def tokenizer_config() -> dict:
    """``tokenizer_config.json``: the fast tokenizer class and BOS (which also ends and pads, as in revjax)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|bos|>",
            "pad_token": "<|bos|>", "add_bos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000}


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], fp32: bool) -> None:
    if fp32:
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
        return
    torch = require("torch", "torch", "revjax export --format hf")
    from safetensors.torch import save_file as save_torch

    save_torch({k: torch.from_numpy(v.copy()).to(torch.bfloat16) for k, v in tensors.items()}, str(path),
               metadata={"format": "pt"})


def export_hf(run_dir: str | Path, out: str | Path, *, fp32: bool = True, force: bool = False,
              step: int | None = None) -> Path:
    """Write the run's step ``step`` (default: newest) as a transformers NanoChat folder ``out``; returns ``out``.

    ``fp32`` stores every tensor in fp32 (else bf16). The folder is written beside ``out`` and renamed into place;
    an earlier export there is replaced only with ``force`` and is moved aside (:func:`revjax.replace.publish_folder`).
    """
    source = Path(run_dir).expanduser().resolve()
    if not source.is_dir():
        raise HFExportError(f"{run_dir} is not a folder; give a revjax run's checkpoint folder")
    require("safetensors", "torch", "revjax export --format hf")  # before anything is read or written
    if not fp32:
        require("torch", "torch", "revjax export --format hf --bf16")
    run = load_run(source, step, lock=True, command="export")
    check_representable(run.config.model)
    tensors = hf_tensors(run.arrays, run.config.model)
    files = {"config.json": json.dumps(hf_config(run, fp32=fp32), indent=2) + "\n",
             "generation_config.json": json.dumps(generation_config(run), indent=2) + "\n",
             "README.md": model_card(run),
             "tokenizer.json": json.dumps(tokenizer_json(run.tokenizer.encoding), ensure_ascii=False),
             "tokenizer_config.json": json.dumps(tokenizer_config(), indent=2) + "\n"}

    def fill(tmp: Path) -> None:
        _write_safetensors(tmp / "model.safetensors", tensors, fp32)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    publish_folder(out, "export", fill, force=force, sources=[source],
                   looks_like_old_output=lambda folder: all((folder / n).is_file() for n in HF_FILES[:2]))
    return Path(out)
