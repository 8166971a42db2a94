"""Multi-token prediction (model/mtp.py, train/objectives.py multi_token) and self-speculative decoding
(model/generate.py generate_speculative)."""

import dataclasses

import pytest
import torch
from safetensors import safe_open

from tinylm.checkpoint import load_checkpoint, save_checkpoint
from tinylm.config import Config, ModelConfig, load_config
from tinylm.errors import TinyLMError
from tinylm.export import export
from tinylm.formats import load_model
from tinylm.model import Transformer, build_model, generate
from tinylm.model.generate import acceptance_probability, generate_speculative, residual
from tinylm.model.mtp import parallel_logits, sequential_logits, without_mtp
from tinylm.tokenizer import byte_tokenizer
from tinylm.train.objectives import Batch, backpropagates, build_objective, future_targets, multi_token_losses
from tinylm.train.schedule import mtp_weight_at

VARIANTS = ("sequential", "parallel")
EOS = 0


def mtp_cfg(mtp: str = "sequential", heads: int = 2, **kw) -> ModelConfig:
    base = dict(vocab_size=23, n_layer=2, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=32, mtp=mtp,
                mtp_heads=heads)
    return ModelConfig(**{**base, **kw})


def run_config(model: ModelConfig, **train) -> Config:
    cfg = Config()
    cfg.model = model
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


class Tok:  # what build_objective reads of a tokenizer
    eos_id = EOS


def batch(seed: int = 0, B: int = 3, T: int = 16, V: int = 23, eos: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(1 if not eos else 0, V, (B, T + 1), generator=g)
    return Batch(w[:, :-1], w[:, 1:], 0)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_future_targets_are_the_input_shifted_by_k():
    x = torch.arange(10).view(1, 10)
    y = x + 1
    for k in (1, 2, 3):
        t = future_targets(y, k, eos_id=None)[0]
        assert t[:10 - k + 1].tolist() == list(range(k, 11))  # position t learns x_{t+k}
        assert t[10 - k + 1:].tolist() == [-1] * (k - 1)  # past the window: ignored, not wrapped


def test_future_targets_do_not_cross_a_document_end():
    y = torch.tensor([[5, 6, EOS, 7, 8, 9]])  # y[t] = x_{t+1}; x_{t+3} = EOS ends a document
    assert future_targets(y, 1, EOS)[0].tolist() == [5, 6, EOS, 7, 8, 9]
    # k = 2 at t: x_{t+2} = y[t+1], dropped when y[t] (= x_{t+1}) is the EOS: position 2 only
    assert future_targets(y, 2, EOS)[0].tolist() == [6, EOS, -1, 8, 9, -1]
    # k = 3: dropped when EOS is among y[t], y[t+1]: positions 1 and 2; the EOS itself stays a target
    assert future_targets(y, 3, EOS)[0].tolist() == [EOS, -1, -1, 9, -1, -1]


def test_sequential_depth_k_reads_token_i_plus_k_and_nothing_later():
    torch.manual_seed(0)
    model = Transformer(mtp_cfg("sequential", heads=2)).eval()
    x = torch.randint(1, 23, (1, 12))
    s = 8
    x2 = x.clone()
    x2[0, s] = (x[0, s] + 1) % 23
    for k, (a, b) in enumerate(zip(sequential_logits(model, model.hidden(x), x),
                                   sequential_logits(model, model.hidden(x2), x2)), start=1):
        assert torch.equal(a[0, :s - k], b[0, :s - k])  # positions i with i + k < s never see token s
        assert not torch.allclose(a[0, s - k], b[0, s - k])  # position s - k reads token s itself


def test_parallel_heads_are_causal():
    torch.manual_seed(0)
    model = Transformer(mtp_cfg("parallel", heads=2)).eval()
    x = torch.randint(1, 23, (1, 12))
    x2 = x.clone()
    x2[0, 8] += 1
    z, z2 = model.hidden(x, 1), model.hidden(x2, 1)
    for k in (1, 2, 3):
        a, b = parallel_logits(model, z, k), parallel_logits(model, z2, k)
        assert torch.equal(a[0, :8], b[0, :8])
        assert not torch.allclose(a[0, 8], b[0, 8])


def test_parallel_head_one_is_the_models_own_next_token_prediction():
    torch.manual_seed(0)
    model = Transformer(mtp_cfg("parallel")).eval()
    x = torch.randint(0, 23, (2, 10))
    assert torch.equal(parallel_logits(model, model.hidden(x, 1), 1), model(x))


@pytest.mark.parametrize("mtp", VARIANTS)
def test_the_trunk_starts_from_the_weights_the_seed_gives_without_mtp(mtp):
    torch.manual_seed(3)
    plain = Transformer(mtp_cfg("none")).state_dict()
    torch.manual_seed(3)
    with_mtp = Transformer(mtp_cfg(mtp)).state_dict()
    assert all(torch.equal(plain[name], with_mtp[name]) for name in plain)


@pytest.mark.parametrize("mtp", VARIANTS)
def test_weight_zero_trains_the_trunk_exactly_as_next_token_ce(mtp):
    torch.manual_seed(0)
    baseline = Transformer(mtp_cfg("none"))
    torch.manual_seed(0)
    model = Transformer(mtp_cfg(mtp))
    b = batch()
    expected = baseline(b.x, b.y)
    expected.backward()
    objective = build_objective(run_config(mtp_cfg(mtp), mtp_weight=0.0), Tok(), torch.device("cpu"))
    loss, numbers = objective(model, b)
    if not backpropagates(objective):
        loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6) and torch.allclose(numbers["next_token_loss"], expected)
    got, want = grads(model), grads(baseline)
    for name, g in want.items():
        assert torch.allclose(got[name], g, atol=1e-6), name


def test_memory_saving_backward_gives_the_gradients_of_the_summed_loss():
    torch.manual_seed(0)
    model = Transformer(mtp_cfg("parallel", heads=3))
    b = dataclasses.replace(batch(eos=True), loss_scale=0.5, progress=0.3)
    objective = build_objective(run_config(mtp_cfg("parallel", heads=3), mtp_weight=0.3), Tok(),
                                torch.device("cpu"))
    assert backpropagates(objective)
    loss, _ = objective(model, b)
    memory_saving = grads(model)
    model.zero_grad()
    main, extra = multi_token_losses(model, b, EOS)
    naive = main + 0.3 * torch.stack(extra).mean()
    (naive * 0.5).backward()
    assert torch.allclose(loss, naive.detach(), atol=1e-6)  # the total, not the last head's loss
    assert memory_saving.keys() == grads(model).keys()
    for name, g in grads(model).items():
        assert torch.allclose(memory_saving[name], g, atol=1e-6), name


def test_the_two_variants_and_their_heads_learn_different_losses():
    b = batch()
    extras = {}
    for mtp in VARIANTS:
        torch.manual_seed(0)
        main, extras[mtp] = multi_token_losses(Transformer(mtp_cfg(mtp, heads=2)), b, EOS)
        assert len(extras[mtp]) == 2 and not torch.allclose(extras[mtp][0], extras[mtp][1])
    assert not torch.allclose(torch.stack(extras["sequential"]), torch.stack(extras["parallel"]))


def test_the_weight_follows_its_schedule():
    assert mtp_weight_at(0.7, weight=0.3, schedule="constant") == 0.3
    assert mtp_weight_at(0.0, weight=0.3, schedule="decay", final=0.1) == 0.3
    assert mtp_weight_at(1.0, weight=0.3, schedule="decay", final=0.1) == pytest.approx(0.1)
    assert mtp_weight_at(0.0, weight=0.1, schedule="curriculum", ramp=0.25) == 0.0
    assert mtp_weight_at(0.125, weight=0.1, schedule="curriculum", ramp=0.25) == pytest.approx(0.05)
    assert mtp_weight_at(0.9, weight=0.1, schedule="curriculum", ramp=0.25) == 0.1
    torch.manual_seed(0)
    objective = build_objective(run_config(mtp_cfg(), mtp_weight=0.2, mtp_schedule="curriculum"), Tok(), "cpu")
    _, numbers = objective(Transformer(mtp_cfg()), dataclasses.replace(batch(), progress=0.125))
    assert numbers["mtp_weight"].item() == pytest.approx(0.1)


def test_bad_mtp_settings_are_named():
    with pytest.raises(TinyLMError, match="train.mtp_schedule"):
        build_objective(run_config(mtp_cfg(), mtp_schedule="cosine"), Tok(), "cpu")
    with pytest.raises(ValueError, match="model.mtp='deep'"):
        Transformer(mtp_cfg("deep"))
    with pytest.raises(ValueError, match="token models"):
        build_model(mtp_cfg(kind="byte", vocab_size=257))
    with pytest.raises(TinyLMError, match="model.mtp_heads=0"):
        load_config(overrides=["model.mtp=parallel", "model.mtp_heads=0"])


@pytest.mark.parametrize("mtp", VARIANTS)
def test_extra_parameters_are_left_out_of_the_inference_count(mtp):
    counts = Transformer(mtp_cfg(mtp)).param_counts()
    plain = Transformer(mtp_cfg("none")).param_counts()
    assert counts["mtp"] > 0 and plain["mtp"] == 0
    assert counts["inference"] == plain["total"] == plain["inference"]
    assert counts["total"] == plain["total"] + counts["mtp"]


@pytest.mark.parametrize("mtp", VARIANTS)
def test_export_drops_the_extra_weights_and_keeps_the_trunks_logits(mtp, tmp_path):
    tokenizer = byte_tokenizer()
    cfg = Config()
    cfg.model = mtp_cfg(mtp, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = Transformer(cfg.model).eval()
    save_checkpoint(tmp_path / "run", model, cfg, tokenizer)
    assert load_checkpoint(tmp_path / "run").model.mtp is not None  # the checkpoint keeps them
    result = export(tmp_path / "run", "hf", tmp_path / "hf")
    assert any("left out" in note for note in result.notes)
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert not [name for name in f.keys() if "mtp" in name]
    exported = load_model(tmp_path / "hf").model.eval()
    x = torch.randint(0, tokenizer.vocab_size, (2, 20))
    assert torch.equal(exported(x), model(x))
    assert torch.equal(without_mtp(model)(x), model(x))


def train_on_cycles(mtp: str, heads: int = 2, steps: int = 30) -> Transformer:
    """A tiny model fitted to repeating cycles of random period and content, which its extra predictions
    learn too, so that drafts are often right and both acceptance and rejection happen."""
    torch.manual_seed(0)
    cfg = mtp_cfg(mtp, heads=heads, max_seq_len=24)
    model = Transformer(cfg)
    objective = build_objective(run_config(cfg, mtp_weight=1.0), Tok(), "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        period = int(torch.randint(3, 6, (), generator=g))
        cycle = torch.randint(1, 23, (8, period), generator=g)
        w = cycle.repeat(1, 25 // period + 1)[:, :25]
        loss, _ = objective(model, Batch(w[:, :-1], w[:, 1:], 0))
        if not backpropagates(objective):
            loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module", params=VARIANTS)
def trained(request):
    return train_on_cycles(request.param)


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        period, length = 3 + i % 3, 2 + i % 9
        cycle = torch.randint(1, 23, (period,), generator=g).tolist()
        out.append((cycle * 5)[:length] if i % 4 else torch.randint(0, 23, (length,), generator=g).tolist())
    return out


def test_speculative_greedy_output_is_plain_greedy_output(trained):
    drafted = accepted = 0
    for prompt in prompts(12):
        # 40 new tokens from up to 10 in a context of 24: the context slides at least once
        plain = generate(trained, prompt, 40, temperature=0)
        fast, stats = generate_speculative(trained, prompt, 40, temperature=0)
        assert fast == plain
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert 0 < accepted < drafted  # both kept and rejected drafts were exercised


def test_speculative_decoding_stops_at_eos_and_at_the_token_limit(trained):
    prompt = prompts(2)[1]
    plain = generate(trained, prompt, 30, temperature=0)
    stop_token = plain[7]
    fast, _ = generate_speculative(trained, prompt, 30, temperature=0, eos_id=stop_token)
    assert fast == plain[:plain.index(stop_token) + 1]
    assert generate_speculative(trained, prompt, 5, temperature=0)[0] == plain[:5]


def test_speculative_sampling_with_top_k_one_is_greedy(trained):
    prompt = prompts(3)[2]
    g = torch.Generator().manual_seed(0)
    sampled, stats = generate_speculative(trained, prompt, 30, temperature=0.7, top_k=1, generator=g)
    assert sampled == generate(trained, prompt, 30, temperature=0)
    assert stats.accepted > 0


def test_the_acceptance_rule_keeps_the_target_distribution_exactly():
    """Σ_d q(d)·[a(d)·δ_d + (1 − a(d))·residual]: the distribution of the token kept, enumerated over drafts."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(6, generator=g, dtype=torch.float64).pow(3).softmax(-1)
        q = torch.rand(6, generator=g, dtype=torch.float64).mul(4).softmax(-1)
        q[2] = 0.0 if p[2] > 0.1 else q[2]  # a token the draft never proposes
        q = q / q.sum()
        kept = torch.zeros(6, dtype=torch.float64)
        for d in range(6):
            if q[d] == 0:
                continue
            a = acceptance_probability(p, q, d)
            kept[d] += q[d] * a
            kept += q[d] * (1 - a) * residual(p, q)
        assert torch.allclose(kept, p, atol=1e-12)


def test_speculative_sampling_draws_differ_by_seed_and_repeat_with_it(trained):
    prompt = prompts(3)[2]
    runs = [generate_speculative(trained, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(s))[0]
            for s in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


def test_speculative_needs_extra_predictions():
    with pytest.raises(ValueError, match="model.mtp=none"):
        generate_speculative(Transformer(mtp_cfg("none")), [1, 2], 5)


def test_training_runs_write_checkpoints_that_speculate(cli, tmp_path, text_file):
    code, _, err = cli("train", f"data.path={text_file}", "data.tokenizer=byte", f"data.cache_dir={tmp_path / 'c'}",
                       "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1",
                       "model.max_seq_len=32", "model.mtp=parallel", "model.mtp_heads=2", "train.max_steps=6",
                       "train.batch_size=4", "train.eval_every=0", "train.log_every=2", "train.warmup_steps=2",
                       "data.workers=1",
                       "eval.max_tokens=256", "train.device=cpu", "--out", tmp_path / "run")
    assert code == 0, err
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"mtp_loss"' in log and '"next_token_loss"' in log
    code, out, err = cli("sample", tmp_path / "run", "--prompt", "the ", "--max-tokens", "12", "--temperature", "0",
                         "--speculative")
    assert code == 0, err
    assert out.startswith("the ") and "acceptance" in err and "tokens/s" in err


def test_sample_speculative_refuses_a_model_without_extra_predictions(cli, tiny_run):
    run, _, _ = tiny_run
    code, _, err = cli("sample", run, "--speculative", "--max-tokens", "4")
    assert code != 0 and "model.mtp=none" in err and "Traceback" not in err
