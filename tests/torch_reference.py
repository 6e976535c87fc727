"""A PyTorch GPT written from onanchat's specification, used as the parity reference in tests.

Same module names as onanchat's ``gpt.py`` so its ``state_dict`` keys are ``transformer.wte.weight``,
``transformer.h.{i}.attn.c_q.weight``, …, ``lm_head.weight``, with PyTorch's ``(out, in)`` Linear layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RefConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int


def rms(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos + b * sin, -a * sin + b * cos], dim=-1).to(x.dtype)


class RefAttention(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.h, self.kvh, self.hd = c.n_head, c.n_kv_head, c.n_embd // c.n_head
        self.c_q = nn.Linear(c.n_embd, self.h * self.hd, bias=False)
        self.c_k = nn.Linear(c.n_embd, self.kvh * self.hd, bias=False)
        self.c_v = nn.Linear(c.n_embd, self.kvh * self.hd, bias=False)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)

    def forward(self, x, cos, sin, past=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.h, self.hd)
        k = self.c_k(x).view(B, T, self.kvh, self.hd)
        v = self.c_v(x).view(B, T, self.kvh, self.hd)
        q, k = rms(rotary(q, cos, sin)), rms(rotary(k, cos, sin))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if past is not None:  # past: (k, v) of earlier positions, (B, H_kv, T0, D)
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        Tq, Tk = q.size(2), k.size(2)
        gqa = self.h != self.kvh
        if Tq == Tk:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1)), (k, v)


class RefMLP(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class RefBlock(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.attn = RefAttention(c)
        self.mlp = RefMLP(c)

    def forward(self, x, cos, sin, past=None):
        y, kv = self.attn(rms(x), cos, sin, past)
        x = x + y
        return x + self.mlp(rms(x)), kv


class RefGPT(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(
            {"wte": nn.Embedding(c.vocab_size, c.n_embd), "h": nn.ModuleList(RefBlock(c) for _ in range(c.n_layer))}
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        hd = c.n_embd // c.n_head
        t = torch.arange(10 * c.sequence_len, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(t, inv)
        self.register_buffer("cos", freqs.cos().bfloat16()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin().bfloat16()[None, :, None, :], persistent=False)

    def forward(self, idx, targets=None, past=None):
        T0 = 0 if past is None else past[0][0].size(2)
        T = idx.size(1)
        cos, sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]
        x = rms(self.transformer.wte(idx))
        new_past = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, cos, sin, None if past is None else past[i])
            new_past.append(kv)
        logits = self.lm_head(rms(x))
        logits = 15 * torch.tanh(logits / 15)
        if targets is not None:
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, new_past


def newton_schulz5(g: torch.Tensor, steps: int = 5, dtype=torch.bfloat16) -> torch.Tensor:
    """nanochat's quintic Newton–Schulz in ``dtype`` (its bf16) on an (out, in) matrix (transposed when tall)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class RefMuon(torch.optim.Optimizer):
    """nanochat's Muon: fp32 lerp momentum, Nesterov, bf16 NS5, step lr·√max(1, rows/cols); no weight decay."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5, ns_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_dtype=ns_dtype))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            m = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p, dtype=torch.float32))
                buf.lerp_(p.grad.float(), 1 - m)
                update = newton_schulz5(p.grad.float().lerp(buf, m), group["ns_steps"], group["ns_dtype"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


def nanochat_optimizers(model: RefGPT, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, betas=(0.8, 0.95),
                        eps=1e-10, momentum=0.95) -> list[torch.optim.Optimizer]:
    """nanochat's ``setup_optimizers``: AdamW for wte and lm_head (lrs ×(n_embd/768)^−0.5), Muon for the blocks."""
    s = (model.config.n_embd / 768) ** -0.5
    adam = torch.optim.AdamW([{"params": [model.transformer.wte.weight], "lr": embedding_lr * s},
                              {"params": [model.lm_head.weight], "lr": unembedding_lr * s}],
                             betas=betas, eps=eps, weight_decay=0.0)
    return [adam, RefMuon(list(model.transformer.h.parameters()), lr=matrix_lr, momentum=momentum)]
