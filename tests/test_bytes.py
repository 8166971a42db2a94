import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinylm.config import ModelConfig, load_config
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.eval import utf8_text
from tinylm.eval.likelihood import loglikelihoods
from tinylm.model import ByteCache, ByteTransformer, build_model, generate
from tinylm.model.bytes import PatchPool, embedding_report, patch_layout, patch_starts, to_slots
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train

from test_train import StopAt  # stops a run with Ctrl-C at a step

RULES = [("space", "mean"), ("space", "attention"), ("space", "last"), ("stride", "mean"), ("stride", "last")]
TEXT = "Hello world,  a b\u00e9t\u00e9 ok!! the quick brownfoxjumps\tover\nthe dog \u2014 \u65e5\u672c\u8a9e."


def byte_cfg(patching="space", pooling="mean", patch_size=5, **kw) -> ModelConfig:
    return ModelConfig(kind="byte", vocab_size=257, n_layer=2, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=96,
                       patching=patching, pooling=pooling, patch_size=patch_size, d_local=16, n_local_heads=2, **kw)


def random_model(cfg: ModelConfig) -> ByteTransformer:
    """Weights far from init (query and first context are zeros there), so no path is trivially silent."""
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor([list(text.encode())])


def starts_of(text: str, patching="space", size=16) -> list[str]:
    data = text.encode()
    starts = patch_starts(ids_of(text), patching, size)[0].tolist()
    cuts = [j for j in range(len(data)) if starts[j]] + [len(data)]
    return [data[a:b].decode("utf-8", "replace") for a, b in zip(cuts, cuts[1:])]


def test_space_patches_start_after_the_first_spacelike_byte_of_a_run():
    assert starts_of("hello world") == ["hello ", "world"]
    assert starts_of("a  b, c") == ["a ", " b,", " c"]
    assert starts_of("x\n\ny") == ["x\n", "\ny"]


def test_space_patches_keep_utf8_characters_whole():
    assert starts_of("b\u00e9t\u00e9 \u65e5\u672c") == ["b\u00e9t\u00e9 ", "\u65e5\u672c"]
    ids = ids_of(TEXT)
    starts = patch_starts(ids, "space", 64)[0, :-1]
    continuation = (ids[0] >= 0x80) & (ids[0] < 0xC0)
    assert not (starts & continuation).any()


def test_long_words_are_cut_at_patch_size_and_stride_is_fixed():
    assert starts_of("abcdefghij k", size=4) == ["abcd", "efgh", "ij ", "k"]
    assert starts_of("abcdefghij", "stride", 3) == ["abc", "def", "ghi", "j"]
    starts = patch_starts(ids_of(TEXT), "space", 5)
    _, offset = patch_layout(starts)
    assert int(offset.max()) == 4


def test_the_first_byte_always_starts_a_patch():
    for text in (" x", "x", "\u00e9"):
        assert bool(patch_starts(ids_of(text), "space", 8)[0, 0])


@pytest.mark.parametrize("kind", ["mean", "attention", "last"])
def test_pooling_ignores_padding(kind):
    pool = PatchPool(kind, 8)
    if kind == "attention":
        torch.nn.init.normal_(pool.query)
    h = torch.randn(3, 6, 5, 8)
    mask = torch.arange(5) < torch.tensor([[5, 1, 3, 2, 4, 0]] * 3)[..., None]  # the last patch is empty
    junk = torch.where(mask[..., None], h, torch.randn_like(h) * 100)
    a, b = pool(h * mask[..., None], mask), pool(junk, mask)
    torch.testing.assert_close(a, b)
    assert (a[:, -1] == 0).all()  # an empty patch (batch padding) pools to zeros, not NaN
    if kind == "mean":
        torch.testing.assert_close(a[:, 2], h[:, 2, :3].mean(1))
    if kind == "last":
        torch.testing.assert_close(a[:, 3], h[:, 3, 1])


@pytest.mark.parametrize("patching, pooling", RULES)
def test_changing_a_byte_changes_no_earlier_prediction(patching, pooling):
    model = random_model(byte_cfg(patching, pooling))
    ids = ids_of(TEXT)
    with torch.no_grad():
        full = model(ids)
        for j in range(ids.size(1)):
            for replacement in (32, 97):  # a space and a letter: both move patch boundaries
                changed = ids.clone()
                changed[0, j] = replacement if ids[0, j] != replacement else 46
                out = model(changed)
                # logits at t predict byte t + 1: positions t < j read bytes <= t only. Not bit-equal: a moved patch
                # boundary changes how many patches the global blocks see, and on some CPUs (AVX-512 here) the
                # matmul kernels then sum in another order, up to ~5e-7 apart (measured); the changed byte itself moves ~1
                torch.testing.assert_close(out[:, :j], full[:, :j], rtol=0, atol=1e-5, msg=f"{(j, replacement)}")
                assert not torch.allclose(out[:, j], full[:, j])


def test_the_byte_decoder_reads_earlier_bytes_of_its_patch():
    # no encoder blocks and stride patches of 4: the prediction at 4m + 2 reads byte 4m + 1 only through the
    # decoder's attention within its patch (the global context there covers bytes < 4m)
    model = random_model(byte_cfg("stride", "mean", patch_size=4, n_encoder_layers=0))
    ids = ids_of(TEXT)
    changed = ids.clone()
    changed[0, 9] = 33 if ids[0, 9] != 33 else 34
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9], b[:, 9])  # 9 = 4 * 2 + 1: itself
    assert not torch.allclose(a[:, 10], b[:, 10])  # 10 = 4 * 2 + 2: through the decoder


@pytest.mark.parametrize("patching, pooling", RULES)
def test_cached_decoding_reproduces_full_forward_logits(patching, pooling):
    model = random_model(byte_cfg(patching, pooling))
    ids = ids_of(TEXT)
    T = ids.size(1)
    cache = ByteCache(model.cfg, 1, model.cfg.max_seq_len, "cpu", torch.float32)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, :7], cache=cache, start=0)]
        parts += [model(ids[:, t:t + 1], cache=cache, start=t) for t in range(7, T)]
    assert T > 4 * model.cfg.patch_size  # several global steps
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-4


def test_greedy_generation_equals_argmax_of_full_forward():
    model = random_model(byte_cfg())
    seq = list(b"The cat ")
    out = generate(model, seq, 30, temperature=0)
    with torch.no_grad():
        for token in out:
            assert token == int(model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(token)


def test_byte_generation_past_the_context_slides_by_re_prefilling_the_last_half():
    model = random_model(dataclasses.replace(byte_cfg(), max_seq_len=16))
    prompt = list(b"The cat ")
    out = generate(model, prompt, 40, temperature=0)
    assert len(out) == 40
    slid = 16 - len(prompt) + 1  # bytes out when the 16-byte cache is full
    assert out[slid:] == generate(model, (prompt + out[:slid])[-8:], 40 - slid, temperature=0)


def test_padding_is_never_a_target():
    model = random_model(byte_cfg())
    ids = ids_of(TEXT)
    T = ids.size(1)
    # the decoder's slots: every position exactly once; every other slot is padding that no logit reads
    patch, offset = patch_layout(patch_starts(ids, "space", 5))
    target = patch[:, 1:]
    _, mask = to_slots(torch.zeros(1, T, 1), target, offset[:, 1:] - (target == 0).long(), int(target.max()) + 1, 5)
    assert int(mask.sum()) == T
    # a batch padded at the end: the padded positions' targets are ignored, and exactly those
    padded = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    y = torch.cat([ids[:, 1:], torch.full((1, 10), -1)], dim=1)
    with torch.no_grad():
        logits = model(padded)
        loss = model(padded, y)
        torch.testing.assert_close(logits[:, :T], model(ids), atol=1e-5, rtol=1e-5)
    real = F.cross_entropy(logits[0, :T - 1], ids[0, 1:], reduction="sum")
    assert int((y != -1).sum()) == T - 1
    torch.testing.assert_close(loss, real / (T - 1))


def test_byte_continuations_score_as_the_full_forward():
    model = random_model(byte_cfg())
    context = list(b"The quick brown")
    requests = [(context, list(b" fox")), (context, list(b" dog jumps")), (list(b"A"), list(b" b"))]
    scores = loglikelihoods(model, requests, batch_size=2)
    for (ctx, cont), (logprob, _) in zip(requests, scores):
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont[:-1]]))[0, len(ctx) - 1:].log_softmax(-1)
        assert logprob == pytest.approx(float(logits.gather(-1, torch.tensor(cont)[:, None]).sum()), abs=1e-4)


def test_param_counts_and_flops():
    model = build_model(byte_cfg())
    counts = model.param_counts()
    assert counts["embedding"] == 257 * 16
    assert counts["total"] == counts["embedding"] + counts["non_embedding"] == sum(
        p.numel() for p in model.parameters())
    untied = build_model(byte_cfg(tie_embeddings=False)).param_counts()
    assert untied["embedding"] == 2 * 257 * 16
    # the global blocks run once per patch: stride 5 costs less per byte than stride 1
    assert model.flops_per_token(96) > 0
    assert build_model(byte_cfg("stride")).flops_per_token(96) < build_model(
        byte_cfg("stride", patch_size=1)).flops_per_token(96)


def test_embedding_report_against_a_bpe_embedding():
    r = embedding_report(ModelConfig(d_model=512, d_local=128), bpe_vocab_size=50257)
    assert r["bpe_embedding"] == 50257 * 512
    assert r["byte_embedding"] == 257 * 128
    assert r["embedder_head_saving"] > 0.9


def test_invalid_utf8_is_named():
    assert utf8_text("h\u00e9".encode()) == "h\u00e9"
    text = utf8_text(b"ok \xc3")
    assert text.startswith("ok \ufffd") and "c3 at byte 3" in text


def test_unknown_kind_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="model.kind='bytes'"):
        build_model(dataclasses.replace(byte_cfg(), kind="bytes"))
    with pytest.raises(ValueError, match="model.patching"):
        build_model(byte_cfg(patching="entropy"))
    with pytest.raises(ValueError, match="data.tokenizer=byte"):
        build_model(dataclasses.replace(byte_cfg(), vocab_size=100))


# -- training and the commands --

def byte_data(text: str) -> TokenData:
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16)
    cut = int(len(ids) * 0.9)
    return TokenData(ids[:cut], ids[cut:], {"train": cut, "val": len(ids) - cut}, 257, 256)


def tiny_byte_config(*overrides):
    return load_config(overrides=[
        "model.kind=byte", "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1",
        "model.d_local=16", "model.n_local_heads=2", "model.max_seq_len=48", "train.batch_size=4",
        "train.max_steps=6", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=0",
        "train.eval_tokens=256", "train.ckpt_every=0", "train.device=cpu", "train.peak_tflops=1", *overrides])


def test_train_reports_bits_per_byte_and_resumes_exactly(tmp_path, text_file):
    data = byte_data(text_file.read_text())
    result = train(tiny_byte_config(), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    assert result.val_bits_per_byte == pytest.approx(result.val_loss / math.log(2), rel=0.02)  # bytes == tokens
    with pytest.raises(KeyboardInterrupt):
        train(tiny_byte_config(), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(3),))
    train(tiny_byte_config(), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)

    def losses(run):
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_a_byte_model_refuses_a_bpe_tokenizer(text_file):
    from tinylm.tokenizer import train_bpe

    tokenizer = train_bpe(iter([text_file.read_text()]), 300)
    with pytest.raises(TinyLMError, match="data.tokenizer=byte"):
        train(tiny_byte_config(), byte_data(text_file.read_text()), tokenizer, progress=False)


CLI_TINY = ["model.kind=byte", "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1",
            "model.d_local=16", "model.n_local_heads=2", "model.max_seq_len=48", "train.batch_size=4",
            "train.max_steps=4", "train.warmup_steps=1", "train.eval_every=0", "train.ckpt_every=2",
            "train.device=cpu", "train.peak_tflops=1", "data.tokenizer=byte", "data.workers=1", "eval.max_tokens=512"]


def assert_resume_eval_and_sample_work(cli, run: str, text_file, tmp_path) -> None:
    """--resume, eval (validation split, --text, --tasks) and sample on a trained run, each through the CLI."""
    code, out, _ = cli("train", "train.max_steps=6", "--out", run, "--resume")
    assert code == 0 and "bits/byte" in out
    code, out, _ = cli("eval", run)
    assert code == 0 and "bits/byte" in out
    code, out, _ = cli("eval", run, "--text", str(text_file))
    assert code == 0 and "bits/byte" in out
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"context": "the quick brown", "choices": ["fox", "mat"], "gold": 0}) + "\n")
    code, out, _ = cli("eval", run, "--tasks", str(task))
    assert code == 0 and "task" in out
    code, out, _ = cli("sample", run, "--prompt", "The quick", "--max-tokens", "20")
    assert code == 0 and out.startswith("The quick")


def test_every_command_works_with_a_byte_model_or_refuses_in_one_line(cli, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("train", f"data.path={text_file}", *CLI_TINY, "--out", "runs/b")[0] == 0
    assert_resume_eval_and_sample_work(cli, "runs/b", text_file, tmp_path)
    for args in (("export", "runs/b", "--format", "hf", "--out", "hf"),
                 ("export", "runs/b", "--format", "gguf", "--out", "m.gguf"),
                 ("inherit", "--parent", "runs/b", "--out", "child", "--depth", "first-last", "--width", "l1"),
                 ("train", f"data.path={text_file}", *CLI_TINY, "data.tokenizer=bpe", "data.vocab_size=300",
                  "--out", "runs/bpe")):
        code, _, err = cli(*args)
        lines = [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("tinylm: error: "), (args, err)
        assert "kind=byte" in lines[0]
