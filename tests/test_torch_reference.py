"""The benchmark's PyTorch optimizer does revjax's work: the same Muon step and the same group learning rates."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from revjax.config import ModelConfig, OptimizerConfig
from revjax.optim import group_learning_rates, scale_by_muon
from tests.torch_reference import RefConfig, RefGPT, RefMuon, nanochat_optimizers


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_ref_muon_takes_revjax_muon_steps(dtype, tol):
    """Two steps on a wide (out 8, in 24) and a tall (out 24, in 8) matrix, Newton–Schulz in ``dtype`` on both
    sides (bf16 rounds in different places: nanochat's compiled kernel fuses what eager torch rounds)."""
    rng = np.random.default_rng(0)
    shapes = {"wide": (8, 24), "tall": (24, 8)}  # torch (out, in)
    p0 = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(2)]
    lr, m = 0.02, 0.9
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    opt = RefMuon(list(tparams.values()), lr=lr, momentum=m, ns_dtype=getattr(torch, dtype))
    tx = optax.chain(scale_by_muon(m, ns_dtype=getattr(jnp, dtype)), optax.scale_by_learning_rate(lr))
    jparams = {k: jnp.asarray(v.T) for k, v in p0.items()}  # revjax kernels are (in, out)
    state = tx.init(jparams)
    for g in grads:
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k])
        opt.step()
        updates, state = tx.update({k: jnp.asarray(v.T) for k, v in g.items()}, state, jparams)
        jparams = optax.apply_updates(jparams, updates)
    for k in shapes:
        moved_t = tparams[k].detach().numpy() - p0[k]
        moved_j = np.asarray(jparams[k]).T - p0[k]
        # the tall matrix moves √3 more per step (aspect scale); bf16 rounding differs in detail only
        assert np.linalg.norm(moved_t - moved_j) / np.linalg.norm(moved_j) < tol, k
    assert np.linalg.norm(tparams["tall"].detach().numpy() - p0["tall"]) > 1.5 * np.linalg.norm(
        tparams["wide"].detach().numpy() - p0["wide"])


def test_nanochat_optimizers_use_revjax_group_learning_rates():
    model = RefGPT(RefConfig(sequence_len=8, vocab_size=32, n_layer=2, n_head=2, n_kv_head=2, n_embd=192))
    adam, muon = nanochat_optimizers(model)
    lrs = group_learning_rates(OptimizerConfig(), ModelConfig(n_embd=192))
    assert [g["lr"] for g in adam.param_groups] == [lrs["adam_embedding"], lrs["adam_head"]]  # 0.4 and 0.008
    assert muon.param_groups[0]["lr"] == lrs["muon"] == 0.02
    covered = {id(p) for opt in (adam, muon) for g in opt.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}
