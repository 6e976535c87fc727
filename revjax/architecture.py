"""The model recipes (``model.recipe``) as data: which architectural elements each turns on, and the sizes those
elements imply (padded vocabulary, per-layer attention windows, the layers with value embeddings, parameter counts).

Two recipes: ``onanchat-2025``, nanochat as onanchat forked it (November 2025; every element off, revjax's models
before the switch existed), and ``nanochat-2026``, nanochat's architecture at 92d63d4 (July 2026). Each element is
also a ``model.*`` key of its own; a key left unset (None) takes its recipe's value (:func:`elements`).

The functions read a ``ModelConfig`` or a mapping of the same keys (checkpoint metadata); a mapping that names a
``window_pattern`` but no ``recipe`` is nanochat's own metadata, whose models have every 2026 element. Plain Python
only, so that the size checks below the configuration layer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

ONANCHAT_2025 = "onanchat-2025"
NANOCHAT_2026 = "nanochat-2026"


@dataclass(frozen=True)
class Elements:
    """The architectural elements of one model.

    ``window_pattern``: per-layer attention windows as ``L`` (the whole context) and ``S`` (a quarter of
    ``sequence_len`` rounded up to 128), tiled over the layers, the last layer always ``L``. ``value_embeds``:
    ResFormer value embeddings on alternating layers and always the last, mixed into V by a gate in (0, 3).
    ``layer_lambdas``: learnable per-layer ``resid_lambdas`` (scaling the residual stream) and ``x0_lambdas``
    (mixing the first normalised embedding back in) before each block. ``smear``: the previous token's normalised
    embedding, gated, added to the current one. ``backout``: the residual after layer ``n_layer // 2`` subtracted,
    scaled, before the final norm. ``qk_scale``: Q and K multiplied by it after QK-norm. ``vocab_multiple``: the
    embedding and head rows padded to a multiple of it (logits cut back to the vocabulary). ``rope_base``: the
    rotary base. ``rope_bf16``: rotary tables rounded to bf16 whatever the compute dtype (else kept in it).
    ``init``: which recipe's initialisation the parameters get.
    """

    window_pattern: str
    value_embeds: bool
    layer_lambdas: bool
    smear: bool
    backout: bool
    qk_scale: float
    vocab_multiple: int
    rope_base: float
    rope_bf16: bool
    init: str


RECIPES: dict[str, Elements] = {
    ONANCHAT_2025: Elements(window_pattern="L", value_embeds=False, layer_lambdas=False, smear=False, backout=False,
                            qk_scale=1.0, vocab_multiple=1, rope_base=10_000.0, rope_bf16=True, init=ONANCHAT_2025),
    NANOCHAT_2026: Elements(window_pattern="SSSL", value_embeds=True, layer_lambdas=True, smear=True, backout=True,
                            qk_scale=1.2, vocab_multiple=64, rope_base=100_000.0, rope_bf16=False, init=NANOCHAT_2026),
}
ELEMENT_KEYS = tuple(Elements.__dataclass_fields__)

SMEAR_CHANNELS = 24  # the smear gate reads the first 24 channels of the normalised embedding
VE_GATE_CHANNELS = 12  # a value-embedding gate reads the first 12 channels of the block's normalised input
WINDOW_TILE = 128  # short windows are rounded up to a multiple of this


def _get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def recipe_of(config: Any) -> str:
    """The recipe a config or metadata mapping names (nanochat's metadata, with a window pattern, is the 2026 one)."""
    recipe = _get(config, "recipe")
    if recipe is None:
        return NANOCHAT_2026 if isinstance(config, Mapping) and "window_pattern" in config else ONANCHAT_2025
    return recipe


def elements(config: Any) -> Elements:
    """Every element of ``config``: its own ``model.*`` value where set, else its recipe's."""
    base = RECIPES[recipe_of(config)]
    values = {key: _get(config, key) for key in ELEMENT_KEYS}
    return Elements(**{key: getattr(base, key) if value is None else value for key, value in values.items()})


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple``."""
    return -(-vocab_size // multiple) * multiple


def short_window(sequence_len: int) -> int:
    """The ``S`` window: a quarter of the context, rounded up to a multiple of :data:`WINDOW_TILE`."""
    return -(-sequence_len // 4 // WINDOW_TILE) * WINDOW_TILE


def layer_windows(pattern: str, n_layer: int, sequence_len: int) -> tuple[int | None, ...]:
    """Per layer, how many earlier positions a query may see besides itself (None: every one): ``pattern`` tiled
    over the layers, the last layer always whole."""
    pattern = pattern.upper()
    windows = [short_window(sequence_len) if pattern[i % len(pattern)] == "S" else None for i in range(n_layer)]
    windows[-1] = None
    return tuple(windows)


def has_value_embed(layer: int, n_layer: int) -> bool:
    """Whether ``layer`` has a value embedding: alternating layers, the last one always."""
    return layer % 2 == (n_layer - 1) % 2


def value_embed_layers(n_layer: int) -> tuple[int, ...]:
    return tuple(i for i in range(n_layer) if has_value_embed(i, n_layer))


def backout_layer(n_layer: int) -> int:
    """The layer after which the residual stream is kept for the backout."""
    return n_layer // 2


@dataclass(frozen=True)
class Counts:
    """Parameters by kind: ``matmul`` (every Linear kernel, the head's padding included), ``embeddings`` (token and
    value embeddings) and ``scalars`` (the per-layer lambdas and the smear/backout scalars)."""

    matmul: int
    embeddings: int
    scalars: int

    @property
    def total(self) -> int:
        return self.matmul + self.embeddings + self.scalars


def counts(config: Any) -> Counts:
    """Exact parameter counts of a model of ``config`` (a ModelConfig or a GPTConfig mapping)."""
    e = elements(config)
    n_layer, d, n_head = _get(config, "n_layer"), _get(config, "n_embd"), _get(config, "n_head")
    n_kv_head = _get(config, "n_kv_head") or n_head
    vocab = padded_vocab(_get(config, "vocab_size"), e.vocab_multiple)
    hd, n_ve = d // n_head, len(value_embed_layers(n_layer)) if e.value_embeds else 0
    attention = d * n_head * hd + 2 * d * n_kv_head * hd + d * d
    matmul = n_layer * (attention + 8 * d * d) + d * vocab
    matmul += n_ve * VE_GATE_CHANNELS * n_kv_head + (SMEAR_CHANNELS if e.smear else 0)
    embeddings = vocab * d + n_ve * vocab * n_kv_head * hd
    scalars = (2 * n_layer if e.layer_lambdas else 0) + (1 if e.smear else 0) + (1 if e.backout else 0)
    return Counts(matmul, embeddings, scalars)


def attention_flops(config: Any, seq_len: int) -> int:
    """nanochat's attention FLOPs per token for training: Σ over layers 12·n_head·head_dim·min(window, T)."""
    n_layer, d, n_head = _get(config, "n_layer"), _get(config, "n_embd"), _get(config, "n_head")
    windows = layer_windows(elements(config).window_pattern, n_layer, _get(config, "sequence_len"))
    return sum(12 * n_head * (d // n_head) * (seq_len if w is None else min(w, seq_len)) for w in windows)


def check_window_pattern(pattern: str) -> str | None:
    """What is wrong with a window pattern, or None: a non-empty string of S and L."""
    if not pattern or any(c not in "SL" for c in pattern.upper()):
        return f"model.window_pattern={pattern!r} must be a non-empty string of S (short) and L (long), e.g. SSSL"
    return None


def scan_refusal(config: Any) -> str | None:
    """Why ``model.scan_layers`` (one block program run for every layer) cannot run this model, or None."""
    e = elements(config)
    windows = layer_windows(e.window_pattern, _get(config, "n_layer"), _get(config, "sequence_len"))
    if e.value_embeds or any(windows) or e.layer_lambdas or e.backout:
        return ("model.scan_layers runs one block program for every layer, but value embeddings, short windows, "
                "per-layer lambdas and the backout make layers differ; set model.scan_layers=false")
    return None
