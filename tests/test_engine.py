"""The generation engine: prefill + cached decode against a naive full-forward loop, sampling, streaming, the tool."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from revjax.config import ModelConfig
from revjax.calculator import calculate
from revjax.engine import Context, Engine, _decode, _prefill, generate, sample_logits
from revjax.model import GPT
from revjax.tokenizer import SPECIAL_TOKENS

CONFIG = ModelConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                     compute_dtype="float32")
PROMPTS = [[5, 17, 99], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], [200, 201, 7, 42, 8]]
NEW = 12
CHUNK = 4  # small, so that generations cross several chunk boundaries


def tiny_model(head: bool):
    """(graphdef, params) of a tiny model with random parameters, built without compiling an initialiser."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(CONFIG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), nnx.to_pure_dict(state))
    if not head:
        params["lm_head"]["kernel"] = np.zeros_like(params["lm_head"]["kernel"])
    nnx.replace_by_pure_dict(state, params)
    return graphdef, state


@pytest.fixture(scope="module")
def uniform():
    """A model whose head is zero: every logit is 0, so sampling is uniform and greedy always picks id 0."""
    return tiny_model(head=False)


@pytest.fixture(scope="module")
def peaked():
    """A model whose predictions depend on the context."""
    return tiny_model(head=True)


@jax.jit
def _full_logits(graphdef, params, ids):
    return nnx.merge(graphdef, params)(ids)


def full_logits(graphdef, params, seq):
    """Full-forward logits (no cache) of one sequence, padded to the model's length (causal: padding is inert)."""
    ids = np.zeros((1, CONFIG.sequence_len), np.int32)
    ids[0, : len(seq)] = seq
    return np.asarray(_full_logits(graphdef, params, ids))[0, : len(seq)]


def naive_greedy(graphdef, params, prompt, new):
    seq = list(prompt)
    for _ in range(new):
        seq.append(int(full_logits(graphdef, params, seq)[-1].argmax()))
    return seq[len(prompt):]


def test_greedy_equals_naive_full_forward_loop(peaked):
    engine = Engine(*peaked, chunk_size=CHUNK)
    out = engine.generate(PROMPTS, NEW).tokens
    assert out == [naive_greedy(*peaked, p, NEW) for p in PROMPTS]
    assert engine.timings["steps"] == len(PROMPTS[1]) + NEW - len(PROMPTS[0])  # from the shortest prompt on
    assert generate(*peaked, PROMPTS, NEW) == out  # the functional entry point


def test_prefill_and_decode_logprobs_equal_full_forward(peaked):
    engine = Engine(*peaked, chunk_size=CHUNK)
    out = engine.generate(PROMPTS, NEW, temperature=1.0, seed=3)
    for prompt, tokens, logprobs in zip(PROMPTS, out.tokens, out.logprobs):
        seq = prompt + tokens
        logits = full_logits(*peaked, seq)
        expected = jax.nn.log_softmax(jnp.asarray(logits[len(prompt) - 1: -1]), axis=-1)
        expected = np.take_along_axis(np.asarray(expected), np.array(tokens)[:, None], axis=-1)[:, 0]
        np.testing.assert_allclose(logprobs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, CHUNK])
def test_prefill_and_cached_decode_logits_equal_full_forward(peaked, steps):
    """The engine's own programs, teacher-forced: every position is given, so each step feeds a known token.

    With one step per chunk the logits are compared at every position, so also at each row's last prompt position
    (3, 5 and 18 here): what predicts that row's first generated token."""
    seqs = [p + list(range(10, 10 + NEW)) for p in PROMPTS]
    m, rows = min(map(len, PROMPTS)), len(seqs)
    tokens = np.zeros((rows, 64 + CHUNK + 32), np.int32)
    batch = np.zeros((rows, 16), np.int32)
    for i, seq in enumerate(seqs):
        tokens[i, : len(seq)] = seq
        batch[i, : min(len(seq), 16)] = seq[:16]
    given = np.array([len(s) for s in seqs], np.int32)
    state = _prefill(*peaked, batch, np.int32(m), tokens, given, jax.random.key(0), cache_len=64, num_samples=1)
    ctx = Context(given - 1, np.full(8, -1, np.int32), np.full(rows, -1, np.int32), np.float32(0), np.int32(0),
                  np.float32(1))
    full = [full_logits(*peaked, seq) for seq in seqs]
    pos = m
    while True:
        np.testing.assert_allclose(np.asarray(state.logits), [f[pos - 1] for f in full], atol=1e-5, rtol=0)
        if pos >= len(seqs[0]):
            break
        state, (_, _, n) = _decode(*peaked, state, np.zeros((rows, 32), np.int32), np.zeros(rows, np.int32), ctx,
                                   steps=steps)
        pos += int(n)


def test_filters_sample_inside_top_k_and_top_p(peaked):
    engine = Engine(*peaked, chunk_size=CHUNK)
    for kwargs in (dict(top_k=3), dict(top_p=0.3), dict(top_k=5, top_p=0.5)):
        out = engine.generate(PROMPTS, NEW, temperature=1.0, seed=4, **kwargs).tokens
        for prompt, tokens in zip(PROMPTS, out):
            probs = np.asarray(jax.nn.softmax(full_logits(*peaked, prompt + tokens)[len(prompt) - 1: -1], axis=-1))
            for p, token in zip(probs, tokens):
                rank = (p > p[token]).sum()
                assert rank < kwargs.get("top_k", 256)
                assert p[p > p[token]].sum() < kwargs.get("top_p", 1.0)


# ---- sampling against its exact distributions ---------------------------------------------------------------

PROBS = np.array([0.1, 0.4, 0.05, 0.3, 0.15])  # hand-set; in sorted order: ids 1, 3, 4, 0, 2
DRAWS = 20_000


def nucleus(probs, top_k=0, top_p=1.0):
    """Reference filter: the top_k most likely ids (0: all), renormalised; then the shortest prefix of those whose
    renormalised mass reaches top_p, renormalised again."""
    order = np.argsort(-probs, kind="stable")[: top_k or len(probs)]
    mass = probs[order] / probs[order].sum()
    kept = order[np.cumsum(mass) - mass < top_p]
    out = np.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def assert_follows(samples, expected, vocab):
    """Ids outside the support never drawn; inside it, a chi-square test of the counts at the 0.1% level."""
    counts = np.bincount(np.asarray(samples).ravel(), minlength=vocab)
    support = expected > 0
    assert counts[~support].sum() == 0, f"drawn outside the support: {np.flatnonzero(counts * ~support)}"
    if support.sum() > 1:
        test = stats.chisquare(counts[support], counts.sum() * expected[support])
        assert test.pvalue > 1e-3, (counts[support] / counts.sum(), expected[support], test)


# settings → the distribution worked out by hand from PROBS (temperature T raises each probability to 1/T)
HAND = [
    (dict(temperature=1.0), PROBS),
    (dict(temperature=0.5), np.array([0.01, 0.16, 0.0025, 0.09, 0.0225]) / 0.285),
    (dict(temperature=2.0), np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
    (dict(temperature=1.0, top_k=2), np.array([0, 4, 0, 3, 0]) / 7),
    (dict(temperature=1.0, top_k=4), np.array([0.1, 0.4, 0, 0.3, 0.15]) / 0.95),
    (dict(temperature=1.0, top_p=0.6), np.array([0, 4, 0, 3, 0]) / 7),  # mass before id 3 is 0.4 < 0.6
    (dict(temperature=1.0, top_p=0.75), np.array([0, 0.4, 0, 0.3, 0.15]) / 0.85),  # before id 0: 0.85
    (dict(temperature=1.0, top_p=0.3), np.array([0, 1, 0, 0, 0])),
    # top_p reads the top_k-renormalised mass: before id 0 it is 0.85/0.95 = 0.895 ≥ 0.87 (0.85 alone is not)
    (dict(temperature=1.0, top_k=4, top_p=0.87), np.array([0, 0.4, 0, 0.3, 0.15]) / 0.85),
    (dict(temperature=0.5, top_p=0.6), np.array([0, 0.16, 0, 0.09, 0]) / 0.25),  # 0.16/0.285 = 0.56 < 0.6
]


@pytest.mark.parametrize("settings,expected", HAND, ids=[str(h[0]) for h in HAND])
def test_sampling_follows_temperature_top_k_and_top_p(settings, expected):
    np.testing.assert_allclose(expected, nucleus(PROBS ** (1 / settings["temperature"]) /
                                                 (PROBS ** (1 / settings["temperature"])).sum(),
                                                 settings.get("top_k", 0), settings.get("top_p", 1.0)), rtol=1e-12)
    logits = np.tile(np.log(PROBS).astype(np.float32) + 3.0, (DRAWS, 1))  # shifted: only differences matter
    draw = jax.jit(sample_logits)  # settings traced: one program for every case
    samples = draw(logits, jax.random.key(11), np.float32(settings["temperature"]),
                   np.int32(settings.get("top_k", 0)), np.float32(settings.get("top_p", 1.0)))
    assert samples.dtype == jnp.int32
    assert_follows(samples, expected, len(PROBS))


def test_sampling_at_temperature_zero_is_argmax():
    logits = np.log(np.array([[0.1, 0.4, 0.05, 0.3, 0.15], [0.5, 0.1, 0.1, 0.2, 0.1]], np.float32))
    for top_k, top_p in ((0, 1.0), (3, 0.5)):
        assert sample_logits(logits, jax.random.key(0), np.float32(0), top_k, top_p).tolist() == [1, 0]


@pytest.mark.parametrize("settings", [dict(temperature=0.25, top_k=4), dict(temperature=1.0, top_p=0.1)],
                         ids=["T0.25-top_k4", "top_p0.1"])
def test_first_token_follows_the_last_prompt_position(peaked, settings):
    """Through the engine, prompts of three lengths in one batch, many samples each: every first token follows
    the (filtered) full-forward distribution at its own prompt's last position, and reports that position's
    log-probability. A pad (id 0, outside every support here) fed or emitted at the boundary would fail this."""
    samples = 1024
    out = Engine(*peaked, chunk_size=CHUNK).generate(PROMPTS, 1, num_samples=samples, seed=7, **settings)
    for i, prompt in enumerate(PROMPTS):
        logits = full_logits(*peaked, prompt)[-1].astype(np.float64)
        probs = np.exp((logits - logits.max()) / settings["temperature"])
        expected = nucleus(probs / probs.sum(), settings.get("top_k", 0), settings.get("top_p", 1.0))
        assert expected[0] == 0 and 2 <= (expected > 0).sum() <= 12
        rows = range(i * samples, (i + 1) * samples)
        first = [out.tokens[r][0] for r in rows]
        assert all(len(out.tokens[r]) == 1 for r in rows)
        assert_follows(first, expected, CONFIG.vocab_size)
        logprobs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
        np.testing.assert_allclose([out.logprobs[r][0] for r in rows], logprobs[first], atol=1e-5, rtol=0)


def test_max_len_bounds_prompt_and_continuation(peaked):
    out = generate(*peaked, PROMPTS, NEW, max_len=24)
    assert [len(o) for o in out] == [NEW, 24 - len(PROMPTS[1]), NEW]
    assert out[1] == naive_greedy(*peaked, PROMPTS[1], 24 - len(PROMPTS[1]))


def test_samples_draw_their_own_first_token(uniform):
    out = Engine(*uniform, chunk_size=CHUNK).generate([[1, 2, 3]], 3, num_samples=8, temperature=1.0, seed=0)
    assert len(out.tokens) == 8
    assert len({row[0] for row in out.tokens}) >= 2
    assert len({tuple(row) for row in out.tokens}) == 8
    np.testing.assert_allclose(out.logprobs, np.full((8, 3), -np.log(256)), atol=1e-5)


def test_seed_reproduces_and_filters_reduce_to_greedy(peaked):
    engine = Engine(*peaked, chunk_size=CHUNK)
    greedy = engine.generate(PROMPTS, NEW).tokens
    a = engine.generate(PROMPTS, NEW, temperature=1.0, seed=1).tokens
    assert engine.generate(PROMPTS, NEW, temperature=1.0, seed=1).tokens == a
    assert engine.generate(PROMPTS, NEW, temperature=1.0, seed=2).tokens != a
    assert a != greedy
    assert engine.generate(PROMPTS, NEW, temperature=1.0, top_k=1, seed=1).tokens == greedy
    assert engine.generate(PROMPTS, NEW, temperature=1.0, top_p=1e-6, seed=1).tokens == greedy


def test_stop_ids_cut_before_the_stop(peaked):
    greedy = generate(*peaked, PROMPTS, NEW)
    stop = greedy[0][4]
    cut = generate(*peaked, PROMPTS, NEW, stop_ids=[stop])
    for full, short in zip(greedy, cut):
        assert short == (full[: full.index(stop)] if stop in full else full)
    assert len(cut[0]) <= 4


def test_stream_yields_the_same_tokens_in_chunks(peaked):
    engine = Engine(*peaked, chunk_size=CHUNK)
    expected = engine.generate(PROMPTS, NEW, temperature=1.0, seed=5).tokens
    chunks = list(engine.stream(PROMPTS, NEW, temperature=1.0, seed=5))
    assert len(chunks) > 3 and all(chunks[-1].done) and not any(chunks[0].done)
    assert all(len(new) <= CHUNK for c in chunks for new in c.tokens)
    assert [sum((c.tokens[i] for c in chunks), []) for i in range(len(PROMPTS))] == expected


# ---- the calculator tool -----------------------------------------------------------------------------------

def test_calculator_hand_cases():
    assert calculate("2+3*4") == 14
    assert calculate("(1 + 2) * -3") == -9
    assert calculate("7 // 2") == 3 and calculate("7 % 4") == 3 and calculate("10 / 4") == 2.5
    assert calculate("2**10") == 1024 and calculate("-3**2") == -9
    assert calculate("1,234 + 1") == 1235
    assert calculate("'strawberry'.count('r')") == 3
    for refused in ["__import__('os')", "().__class__", "open('f')", "x + 1", "2**100000", "9**9**9",
                    "'a' * 10**9", "1/0", "True + 1", "'abc'", "", "1" * 300, "[1][0]", "1 if 1 else 2",
                    "'a'.upper()", "2 < 3"]:
        assert calculate(refused) is None, refused


class ByteTokenizer:
    """Bytes as ids, specials at 240+; ``zero`` names the special that gets id 0 (what the fresh model emits)."""

    def __init__(self, zero: str):
        self.special = {name: 240 + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.special[zero] = 0

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()

    def encode_special(self, name):
        return self.special[name]


def test_tool_forward_layout(uniform):
    tok = ByteTokenizer("<|python_end|>")
    bos, ps, os_, oe = (tok.special[n] for n in ("<|bos|>", "<|python_start|>", "<|output_start|>", "<|output_end|>"))
    engine = Engine(*uniform, tokenizer=tok, chunk_size=CHUNK)
    prompts = [[bos, ps, *b"1+2", 0], [bos, ps, *b"12*12"], [bos, ps, *b"12*12"]]
    out = engine.generate(prompts, 10, tool_order=["forward", "forward", None]).tokens
    assert out[0][:5] == [os_, *b"3", oe, 0, 0]  # given by the prompt; then 0 = python_end with no expression
    assert out[1] == [0, os_, *b"144", oe, 0, 0, 0, 0]  # the model wrote python_end; the host forced the result
    assert out[2] == [0] * 10  # tool off


def test_tool_backward_layout(uniform):
    tok = ByteTokenizer("<|python_start|>")
    bos, pe, os_, oe = (tok.special[n] for n in ("<|bos|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"))
    engine = Engine(*uniform, tokenizer=tok, chunk_size=CHUNK)
    prompts = [[bos, pe, *b"2+1", 0], [bos, pe, *b"21*21"], [bos, pe, *b"21*21"]]  # "1+2", "12*12" read backward
    out = engine.generate(prompts, 10, tool_order=["backward", "backward", None]).tokens
    assert out[0][:5] == [oe, *b"3", os_, 0, 0]
    assert out[1] == [0, oe, *b"441", os_, 0, 0, 0, 0]
    assert out[2] == [0] * 10
    reading = (prompts[1] + out[1][:6])[::-1]  # each piece well-formed once read the other way
    assert reading == [os_, *b"144", oe, 0, *b"12*12", pe, bos]
