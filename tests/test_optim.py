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
