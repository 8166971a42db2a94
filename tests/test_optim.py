import pytest
import torch

from tinylm.config import ModelConfig, load_config
from tinylm.errors import TinyLMError
from tinylm.model import Transformer
from tinylm.train.optim import MuonAdamW, build_optimizer, orthogonalize


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_newton_schulz_approximates_the_polar_factor(shape):
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1.3, 0, k)) @ v.T  # singular values from 0.05 to 1
    out = orthogonalize(g)
    # singular vectors are kept and every singular value is pushed into roughly [0.7, 1.2]
    s_out = torch.diag(u.T @ out @ v)
    assert torch.allclose(out, u @ torch.diag(s_out) @ v.T, atol=1e-4)
    assert s_out.min() > 0.6 and s_out.max() < 1.25


def test_muon_covers_block_matrices_and_adamw_the_rest():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16))
    opt = build_optimizer(model, load_config(overrides=["train.optimizer=muon"]), torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in muon}
    assert names == {n for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_muon_matrices_decay_only_when_asked():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16))
    for overrides, expected in ([], 0.0), (["train.muon_weight_decay=0.3"], 0.3):
        cfg = load_config(overrides=["train.optimizer=muon", "train.weight_decay=0.1", *overrides])
        groups = build_optimizer(model, cfg, torch.device("cpu")).param_groups
        assert [g["weight_decay"] for g in groups if g["use_muon"]] == [expected]
        assert [g["weight_decay"] for g in groups if not g["use_muon"]] == [0.1, 0.0]  # AdamW's edges, gains
    # one step from the same weights and gradient: the decayed result is the plain one minus lr * wd * w
    w = torch.randn(8, 8)
    steps = []
    for wd in (0.0, 0.5):
        p = torch.nn.Parameter(w.clone())
        p.grad = torch.ones(8, 8)
        MuonAdamW([{"params": [p], "use_muon": True, "lr": 0.02, "weight_decay": wd}]).step()
        steps.append(p.detach())
    assert torch.allclose(steps[1], steps[0] - 0.02 * 0.5 * w, atol=1e-6)


def test_muon_trains_a_model_down():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16))
    opt = build_optimizer(model, load_config(overrides=["train.optimizer=muon", "train.lr=1e-2"]), torch.device("cpu"))
    x = torch.randint(0, 50, (4, 16))
    first = None
    for _ in range(60):
        loss = model(x[:, :-1], x[:, 1:])
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4


def test_unknown_optimizer_is_rejected():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16))
    with pytest.raises(TinyLMError, match="adamw, muon"):
        build_optimizer(model, load_config(overrides=["train.optimizer=sgd"]), torch.device("cpu"))


@torch.no_grad()
def reference_step(opt: MuonAdamW) -> None:
    """MuonAdamW's step as its formulas read, one parameter at a time: the specification the batched step meets."""
    for group in opt.param_groups:
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            state = opt.state.setdefault(p, {})
            if group["use_muon"]:
                buf = state.setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - lr * wd).add_(orthogonalize(g, group["ns_steps"]), alpha=-lr * scale)
            else:
                beta1, beta2 = group["betas"]
                state["step"] = state.get("step", 0) + 1
                state.setdefault("exp_avg", torch.zeros_like(p)).lerp_(p.grad, 1 - beta1)
                state.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(beta2).addcmul_(p.grad, p.grad,
                                                                                         value=1 - beta2)
                t = state["step"]
                denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.mul_(1 - lr * wd).addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


def test_batched_step_equals_the_per_parameter_formulas():
    # three same-shape square matrices and a tall and a wide one (batched Newton-Schulz by shape), AdamW matrices
    # with decay and gains without
    shapes = [(16, 16), (16, 16), (16, 16), (24, 8), (8, 24)]
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in shapes] + [torch.randn(10, 16), torch.randn(16), torch.randn(16)]
    mine, reference = ([w.clone().requires_grad_() for w in weights] for _ in range(2))

    def optimizer(params):
        return MuonAdamW([{"params": params[:5], "use_muon": True, "lr": 0.02, "weight_decay": 0.1},
                          {"params": params[5:6], "lr": 3e-3, "weight_decay": 0.1},
                          {"params": params[6:], "lr": 3e-3}], betas=(0.9, 0.95))

    opt, ref = optimizer(mine), optimizer(reference)
    for _ in range(4):
        grads = [torch.randn(s.shape) for s in weights]
        for params in (mine, reference):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        opt.step()
        reference_step(ref)
    # AdamW: the same elementwise ops in the same order, so equal to the bit; Muon: a batched matmul may sum in
    # another order, so equal to fp32 rounding
    for p, q in zip(mine[5:], reference[5:]):
        assert torch.equal(p, q)
    for p, q in zip(mine[:5], reference[:5]):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    assert all(opt.state[p]["step"] == 4 for p in mine[5:])


def test_a_checkpointed_tensor_step_count_still_resumes():
    p = torch.nn.Parameter(torch.ones(3))
    opt = MuonAdamW([{"params": [p], "lr": 0.1}])
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["step"] = torch.tensor(1.0)  # as checkpoints before the count was a Python int hold it
    resumed = MuonAdamW([{"params": [p], "lr": 0.1}])
    resumed.load_state_dict(saved)
    resumed.step()
    assert resumed.state[p]["step"] == 2
