import copy
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tinylm.checkpoint import load_checkpoint
from tinylm.config import load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.model import Transformer, generate
from tinylm.model.generate import generate_batch
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import spin as spin_module
from tinylm.train import train
from tinylm.train.objectives import Batch, sequence_logprobs, spin, spin_loss
from tinylm.train.spin import PairData, SpinSettings, model_hash, run_spin, sample_metrics

from conftest import write_corpus
from test_train import StopAt

P, C = 12, 8  # prefix and continuation tokens of the tiny runs


@pytest.fixture(scope="module")
def start_run(tmp_path_factory):
    """A 2-layer byte model trained briefly on a small text (its own prepared data), as SPIN's starting point."""
    root = tmp_path_factory.mktemp("spin")
    write_corpus(root / "corpus.txt", n_lines=300)
    cfg = load_config(overrides=[
        f"data.path={root / 'corpus.txt'}", "data.tokenizer=byte", f"data.cache_dir={root / 'cache'}",
        "model.n_layer=2", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=8", "train.max_steps=20", "train.lr=1e-2", "train.warmup_steps=2", "train.eval_every=0",
        "train.ckpt_every=0", "train.device=cpu", "train.peak_tflops=1"])
    data_dir = prepare_cached(cfg.data, progress=False)
    train(cfg, TokenData.load(data_dir), byte_tokenizer(), root / "start", progress=False)
    return root / "start"


def settings(**changes) -> SpinSettings:
    base = dict(iterations=2, prefixes=16, prefix_tokens=P, continuation_tokens=C, batch_size=8, lr=1e-3,
                eval_prefixes=8, eval_tokens=256, generate_batch=10, max_bpb_rise=1.0)
    return SpinSettings(**(base | changes))


def iteration_rows(out):
    timing = ("seconds_generate", "seconds_train")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_spin_loss_equals_its_formula_on_a_hand_computed_example():
    # rewards β·(policy − reference): real 0.5·[1, 0], synthetic 0.5·[−1, 1]; margins [1, −0.5]
    loss, numbers = spin_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -9.0]),
                              torch.tensor([-11.0, -12.0]), torch.tensor([-10.0, -10.0]), beta=0.5)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert numbers["reward_accuracy"].item() == 0.5
    assert numbers["reward_margin"].item() == pytest.approx(0.25)
    assert numbers["reward_real"].item() == pytest.approx(0.25)
    assert numbers["reward_synthetic"].item() == pytest.approx(0.0)


def test_sequence_logprobs_sum_only_the_scored_targets():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))
    targets = torch.tensor([[-1, 1, 2]])
    assert sequence_logprobs(logits, targets).item() == pytest.approx(math.log(0.6) + math.log(0.6), rel=1e-6)


def test_the_spin_objective_is_the_loss_on_summed_continuation_logprobs_plus_the_nll_anchor(small_cfg):
    model, reference = Transformer(small_cfg), Transformer(small_cfg)
    rows = torch.randint(1, 97, (4, 20))
    x, y = spin_module.pair_batch(rows[:2], rows[2:], prefix_tokens=6)
    logps, ref = sequence_logprobs(model(x), y), sequence_logprobs(reference(x), y)
    expected, _ = spin_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.3)
    nll = -logps[:2].sum() / (2 * 14)  # 14 continuation tokens per real row
    assert spin(model, Batch(x, y, 0), reference, 0.3, 0.0)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert spin(model, Batch(x, y, 0), reference, 0.3, 1.0)[0].item() == pytest.approx((expected + nll).item(),
                                                                                       rel=1e-5)


def test_a_policy_equal_to_its_reference_has_loss_log_2_and_no_margin(small_cfg):
    model = Transformer(small_cfg)
    rows = torch.randint(1, 97, (6, 16))
    x, y = spin_module.pair_batch(rows[:3], rows[3:], prefix_tokens=5)
    loss, numbers = spin(model, Batch(x, y, 0), copy.deepcopy(model), 0.1, 0.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert numbers["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)


def test_training_moves_the_policy_and_leaves_the_reference_frozen(small_cfg):
    model = Transformer(small_cfg)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = spin_module.pair_batch(torch.randint(1, 97, (2, 16)), torch.randint(1, 97, (2, 16)), prefix_tokens=5)
    for _ in range(3):
        loss, numbers = spin(model, Batch(x, y, 0), reference, 0.5, 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert numbers["reward_margin"].item() > 0  # the policy now prefers the real rows more than the reference does
    assert not torch.equal(model.embed.weight, reference.embed.weight)


def test_pair_batches_put_real_rows_first_and_mask_the_prompt():
    real, synthetic = torch.arange(40).view(4, 10), 100 + torch.arange(40).view(4, 10)
    data = PairData(torch.zeros(0), torch.zeros(0), {}, 257, 256, real, synthetic, prefix_tokens=4)
    x, y = data.batch(2, 32, seed=0, step=0)
    assert x.shape == (4, 9) and y.shape == (4, 9)
    assert torch.equal(x[2:] - x[:2], torch.full((2, 9), 100))  # row i's synthetic side is pair i's
    assert (y[:, :3] == -1).all() and (y[:, 3:] >= 0).all()  # the continuation's 6 tokens are scored
    firsts = {int(data.batch(2, 32, 0, step)[0][row, 0]) for step in (0, 1) for row in (0, 1)}
    assert firsts == {0, 10, 20, 30}  # an epoch sees every pair once


def test_batched_greedy_generation_matches_one_prompt_at_a_time(small_cfg):
    model = Transformer(small_cfg).eval()
    prompts = torch.randint(0, 97, (3, 7))
    batched = generate_batch(model, prompts, 9, temperature=0)
    for row, out in zip(prompts, batched):
        assert out.tolist() == generate(model, row.tolist(), 9, temperature=0)


def test_a_suppressed_token_is_never_sampled_and_every_row_has_its_length(small_cfg):
    model = Transformer(small_cfg).eval()
    favourite = int(model(torch.zeros(1, 1, dtype=torch.long))[0, -1].argmax())
    out = generate_batch(model, torch.zeros(16, 3, dtype=torch.long), 20, temperature=2.0, suppress=(favourite,),
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 20) and not (out == favourite).any()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate_batch(model, torch.zeros(1, 20, dtype=torch.long), 13)


def test_sample_metrics_on_a_hand_counted_sample():
    m = sample_metrics(torch.tensor([[1, 2, 1, 2, 1, 2]]))
    assert m["distinct_2"] == pytest.approx(2 / 5)  # (1,2) (2,1) (1,2) (2,1) (1,2)
    assert m["distinct_3"] == pytest.approx(2 / 4)
    assert m["repetition_rate"] == pytest.approx(1 / 3)  # (1,2,1,2) comes back once among three 4-grams


def test_pairs_carry_the_sampling_models_hash_and_equal_length_continuations_without_eos(start_run, tmp_path):
    out = tmp_path / "spin"
    result = run_spin(start_run, out, settings(), progress=False)
    assert [r["iteration"] for r in result.rows] == [0, 1, 2] and result.kept == 2 and not result.stopped
    opponents = [load_checkpoint(start_run).path, out / "iterations" / "1" / "run" / "checkpoint"]
    for t, opponent in zip((1, 2), opponents):
        pairs = torch.load(out / "iterations" / str(t) / "pairs.pt", weights_only=True)
        assert pairs["model_sha256"] == model_hash(opponent)
        real, synthetic = pairs["real"], pairs["synthetic"]
        assert real.shape == synthetic.shape == (16, P + C)
        assert torch.equal(real[:, :P], synthetic[:, :P])  # the same prompts
        assert not (synthetic[:, P:] == 256).any() and not (real == 256).any()  # 256: the byte tokenizer's EOS
        assert not torch.equal(real[:, P:], synthetic[:, P:])
    kept = load_file(out / "checkpoint" / "model.safetensors")
    last = load_file(out / "iterations" / "2" / "run" / "checkpoint" / "model.safetensors")
    assert kept.keys() == last.keys() and all(torch.equal(kept[k], last[k]) for k in kept)
    rows = iteration_rows(out)
    for key in ("val_bpb", "logp_real", "distinct_2", "distinct_3", "repetition_rate"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all(0 <= r["reward_accuracy"] <= 1 for r in rows[1:]) and "reward_accuracy" not in rows[0]
    assert (out / "spin.png").is_file() and "| 2 (kept) |" in (out / "spin.md").read_text()


def test_a_finished_run_reuses_its_pairs_and_refuses_pairs_of_another_model(start_run, tmp_path, monkeypatch):
    out = tmp_path / "spin"
    run_spin(start_run, out, settings(iterations=1), progress=False)
    before = iteration_rows(out)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(spin_module, "generate_batch", no_sampling)
    run_spin(start_run, out, settings(iterations=1), progress=False)
    assert iteration_rows(out) == before
    pairs_file = out / "iterations" / "1" / "pairs.pt"
    pairs = torch.load(pairs_file, weights_only=True)
    torch.save(pairs | {"model_sha256": "0" * 64}, pairs_file)
    (out / "iterations" / "1" / "train.json").unlink()
    with pytest.raises(TinyLMError, match="sampled by another model"):
        run_spin(start_run, out, settings(iterations=1), progress=False)


def test_resume_at_any_point_ends_where_an_uninterrupted_run_does(start_run, tmp_path, monkeypatch):
    run_spin(start_run, tmp_path / "whole", settings(), progress=False)
    # killed while sampling iteration 2's second chunk: calls are the start model's samples, iteration 1's three
    # chunks (24 prompts, 10 a chunk), iteration 1's samples, then iteration 2's chunks
    calls, real_generate = [], generate_batch

    def dies_on_the_seventh_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(spin_module, "generate_batch", dies_on_the_seventh_call)
    with pytest.raises(KeyboardInterrupt):
        run_spin(start_run, tmp_path / "split", settings(), progress=False)
    monkeypatch.setattr(spin_module, "generate_batch", real_generate)
    assert [p.name for p in (tmp_path / "split" / "iterations" / "2" / "pairs").iterdir()] == ["chunk-00000.pt"]
    # then killed in iteration 2's training, after its first of two steps
    with pytest.raises(KeyboardInterrupt):
        run_spin(start_run, tmp_path / "split", settings(), progress=False, callbacks=(StopAt(1),))
    assert (tmp_path / "split" / "iterations" / "2" / "run" / "checkpoint" / "state.pt").is_file()
    run_spin(start_run, tmp_path / "split", settings(), progress=False)
    assert iteration_rows(tmp_path / "split") == iteration_rows(tmp_path / "whole")
    split, whole = (load_file(d / "checkpoint" / "model.safetensors") for d in (tmp_path / "split", tmp_path / "whole"))
    assert all(torch.equal(split[k], whole[k]) for k in whole)


def test_the_stop_rule_keeps_the_iteration_before_a_rise_in_bits_per_byte(start_run, tmp_path):
    # a learning rate far too high wrecks the model in the first iteration
    result = run_spin(start_run, tmp_path / "spin", settings(lr=0.3, beta=5.0, max_bpb_rise=0.01), progress=False)
    assert len(result.rows) == 2 and result.kept == 0
    assert result.rows[1]["val_bpb"] > 1.01 * result.rows[0]["val_bpb"]
    assert "iteration 1 raised validation bits per byte" in result.stopped
    kept = load_file(tmp_path / "spin" / "checkpoint" / "model.safetensors")
    start = load_file(load_checkpoint(start_run).path / "model.safetensors")
    assert all(torch.equal(kept[k], start[k]) for k in start)
    assert not (tmp_path / "spin" / "iterations" / "2").exists()


def test_cli_runs_spin_and_refuses_to_replace_another_run(start_run, tmp_path, cli):
    args = ["spin", start_run, "--iterations", "1", "--prefixes", "16", "--prefix-tokens", P, "--continuation-tokens",
            C, "--eval-prefixes", "4", "--eval-tokens", "256"]
    code, out, err = cli(*args, "--out", start_run)
    assert code == 2 and "new directory" in err
    code, out, err = cli(*args, "--out", tmp_path / "spin")
    assert code == 0, err
    assert "| 1 (kept) |" in out and (tmp_path / "spin" / "checkpoint" / "model.safetensors").is_file()
    code, out, err = cli(*args[:-1], "512", "--out", tmp_path / "spin")
    assert code == 2 and "other settings" in err and "--overwrite" in err
    code, out, err = cli(*args, "--prefix-tokens", "30", "--out", tmp_path / "other")
    assert code == 2 and "exceed the model's context" in err and not (tmp_path / "other").exists()


def test_the_command_line_defaults_are_the_library_defaults():
    from tinylm.cli import build_parser

    a = build_parser().parse_args(["spin", "run", "--out", "out"])
    for field, value in dataclasses.asdict(SpinSettings()).items():
        if field != "generate_batch":  # how many rows decode at once: not a setting of the method
            assert getattr(a, field) == value, field
