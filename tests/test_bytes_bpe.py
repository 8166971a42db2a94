"""Byte patches cut where a BPE tokenizer cuts tokens, and the byte model that predicts them (patching=predicted)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from tinylm.config import ModelConfig
from tinylm.data import TokenData, prepare
from tinylm.data.prepare import build_tokenizer
from tinylm.errors import TinyLMError
from tinylm.eval import flag_prompt_end
from tinylm.eval.likelihood import encode_requests
from tinylm.model import ByteCache, build_model, generate
from tinylm.model.bytes import patch_layout, patch_starts
from tinylm.tokenizer import (PATCH_VOCAB, PatchTokenizer, Tokenizer, bytes_to_unicode, patch_tokenizer,
                              train_bpe)
from tinylm.train.distill import vocabulary_map

from test_bytes import assert_resume_eval_and_sample_work  # the same CLI walk as the plain byte model

TEXT = "Hello world,  a b\u00e9t\u00e9 ok!! the quick brownfoxjumps\tover\nthe dog \u2014 \u65e5\u672c\u8a9e \U0001F600."
CORPUS = [TEXT, "the quick brown fox jumps over the lazy dog " * 20, "na\u00efve caf\u00e9 \u65e5\u672c " * 10]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(iter(CORPUS), 320)


def flagged(tokenizer: PatchTokenizer, text: str) -> list[str]:
    """The text cut after every byte whose id carries the patch-end flag."""
    ids = tokenizer.encode(text)
    cuts = [0] + [j + 1 for j, i in enumerate(ids) if i >= 257]
    data = bytes(i % 257 for i in ids)
    return [data[a:b].decode("utf-8", "replace") for a, b in zip(cuts, cuts[1:])]


def test_ids_are_the_bytes_with_flags_at_bpe_token_ends_in_utf8_byte_offsets(bpe):
    tokenizer = patch_tokenizer(bpe)
    ids = tokenizer.encode(TEXT)
    data = TEXT.encode()
    assert [i % 257 for i in ids] == list(data) and max(ids) < PATCH_VOCAB
    # each BPE token's bytes, from its byte-level symbols; an end inside a character moves to that character's end
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ends = np.cumsum([len(bytes(byte_of[c] for c in token)) for token in bpe.hf.encode(TEXT).tokens])
    char_ends = np.cumsum([len(c.encode()) for c in TEXT])
    expected = {int(char_ends[np.searchsorted(char_ends, e)]) - 1 for e in ends}
    assert {j for j, i in enumerate(ids) if i >= 257} == expected
    assert ids[-1] >= 257  # the end of a text ends a token
    assert any(data[j] >= 0x80 for j in expected)  # flags on the last byte of multi-byte characters


def test_a_post_processor_that_trims_offsets_does_not_move_the_cut(bpe):
    trimming = HFTokenizer.from_str(bpe.hf.to_str())
    trimming.post_processor = processors.ByteLevel(trim_offsets=True)
    text = "a  b \n\n the end  " + TEXT
    assert PatchTokenizer(trimming).encode(text) == patch_tokenizer(bpe).encode(text)


@pytest.mark.parametrize("text", [TEXT, "caf\u00e9", "\U0001F600\U0001F600 \u65e5", "plain ascii words", "a", ""])
def test_decoding_drops_the_flags_and_gives_the_text_back(bpe, text):
    tokenizer = patch_tokenizer(bpe)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode_batch([text, TEXT]) == [tokenizer.encode(text), tokenizer.encode(TEXT)]


def test_patches_are_the_bpe_tokens(bpe):
    text = "the quick brown fox jumps over the lazy dog"
    assert flagged(patch_tokenizer(bpe), text) == [bpe.decode([i]) for i in bpe.encode(text)]
    assert " quick" in flagged(patch_tokenizer(bpe), text)


def test_eos_is_flagged_and_ends_every_document_of_prepared_data(tmp_path, bpe):
    tokenizer = patch_tokenizer(bpe)
    assert tokenizer.eos_id == 256 + 257 and tokenizer.vocab_size == 514
    assert tokenizer.decode([104, 105 + 257, tokenizer.eos_id]) == "hi"
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"{i:02d}.txt").write_text(f"document {i}: caf\u00e9 \u65e5\u672c, the quick brown fox.\n")
    out = prepare(str(docs), tmp_path / "out", tokenizer, val_fraction=0.1, workers=2, progress=False)
    data, meta = TokenData.load(out), json.loads((out / "meta.json").read_text())
    ids = np.concatenate([data.train, data.val]).astype(np.int64)
    assert meta["vocab_size"] == 514 and meta["eos_id"] == 513 and meta["tokenizer"] == "patches"
    assert int((ids == 513).sum()) == 20 and not (ids == 256).any()
    assert ids[-1] == 513 and ids.max() < 514
    # every position is one byte of text or an EOS: bits per byte counts the text's bytes
    n_bytes = sum(len(p.read_text().encode()) for p in docs.iterdir())
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == n_bytes == len(ids) - 20
    # the workers rebuilt the patch tokenizer: same ids as encoding here
    first = (docs / "00.txt").read_text()
    assert list(ids[:len(first.encode())]) == tokenizer.encode(first)


def test_save_and_load_give_the_patch_tokenizer_back(tmp_path, bpe):
    tokenizer = patch_tokenizer(bpe)
    tokenizer.save(tmp_path)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = Tokenizer.load(path)
        assert isinstance(loaded, PatchTokenizer) and loaded.kind == "patches"
        assert loaded.vocab_size == 514 and loaded.eos_id == 513 and loaded.encode(TEXT) == tokenizer.encode(TEXT)
    # the file itself is the BPE's standard tokenizer.json, readable by any runtime
    assert HFTokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXT).ids == bpe.hf.encode(TEXT).ids


def test_the_patches_spec_takes_bpe_or_a_tokenizer_json(tmp_path, bpe):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    trained = build_tokenizer("patches:bpe", str(corpus), vocab_size=300)
    assert isinstance(trained, PatchTokenizer) and trained.decode(trained.encode(TEXT)) == TEXT
    bpe.save(tmp_path / "bpe")
    from_file = build_tokenizer(f"patches:{tmp_path / 'bpe' / 'tokenizer.json'}", "")
    assert from_file.encode(TEXT) == patch_tokenizer(bpe).encode(TEXT)
    assert build_tokenizer("patches:byte", "").encode("ab") == [97 + 257, 98 + 257]  # every byte its own patch


def test_choices_are_scored_with_the_flags_of_context_plus_choice(bpe):
    tokenizer = patch_tokenizer(bpe)
    [(context, continuation)] = encode_requests(tokenizer, [("the qu", "ick brown")])
    whole = tokenizer.encode("the quick brown")
    assert context + continuation == whole and len(context) == len("the qu")
    assert context[-1] < 257  # "qu" does not end a token of "the quick brown", though it ends "the qu"
    assert tokenizer.encode("the qu")[-1] >= 257


def test_distillation_needs_the_same_byte_patches_on_both_sides(bpe):
    with pytest.raises(TinyLMError, match="byte patches"):
        vocabulary_map(bpe, patch_tokenizer(bpe), None)
    assert vocabulary_map(patch_tokenizer(bpe), patch_tokenizer(bpe), None) == (None, None)


# -- the model --

def predicted_cfg(patch_size=4, pooling="mean", **kw) -> ModelConfig:
    return ModelConfig(kind="byte", vocab_size=514, n_layer=2, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=96,
                       patching="predicted", pooling=pooling, patch_size=patch_size, d_local=16, n_local_heads=2, **kw)


def random_model(cfg: ModelConfig):
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def patch_ids(bpe) -> torch.Tensor:
    return torch.tensor([patch_tokenizer(bpe).encode(TEXT)])


def test_patches_start_after_flagged_bytes_and_long_ones_are_cut_at_patch_size():
    # "ab|cdefghij|k" flagged after b, j and k; patch_size 4 cuts the long token into cdef, ghij
    flags = {1, 9, 10}
    ids = torch.tensor([[b + 257 * (j in flags) for j, b in enumerate(b"abcdefghijk")]])
    starts = patch_starts(ids, "predicted", 4)[0].tolist()
    assert [j for j, s in enumerate(starts) if s] == [0, 2, 6, 10, 11]
    assert [j for j, s in enumerate(patch_starts(ids, "predicted", 16)[0].tolist()) if s] == [0, 2, 10, 11]
    _, offset = patch_layout(patch_starts(ids, "predicted", 4))
    assert int(offset.max()) == 3


def test_patch_starts_follow_the_flags_of_earlier_ids_only(bpe):
    ids = patch_ids(bpe)
    starts = patch_starts(ids, "predicted", 64)[0]
    assert torch.equal(starts[1:], ids[0] >= 257) and bool(starts[0])
    for j in range(ids.size(1)):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 257) % 514  # flip the flag
        assert torch.equal(patch_starts(changed, "predicted", 64)[0, :j + 1], starts[:j + 1])


@pytest.mark.parametrize("pooling", ["mean", "attention", "last"])
def test_changing_an_id_changes_no_earlier_prediction(bpe, pooling):
    model = random_model(predicted_cfg(pooling=pooling))
    ids = patch_ids(bpe)
    with torch.no_grad():
        full = model(ids)
        assert full.shape == (1, ids.size(1), 514)
        for j in range(ids.size(1)):
            for change in ((int(ids[0, j]) + 257) % 514, 97 + 257 * (int(ids[0, j]) < 257)):  # flag; byte and flag
                changed = ids.clone()
                changed[0, j] = change
                out = model(changed)
                assert torch.equal(out[:, :j], full[:, :j]), (j, change)
                assert not torch.allclose(out[:, j], full[:, j])


@pytest.mark.parametrize("pooling", ["mean", "attention", "last"])
def test_cached_decoding_reproduces_full_forward_logits(bpe, pooling):
    model = random_model(predicted_cfg(pooling=pooling))
    ids = patch_ids(bpe)
    cache = ByteCache(model.cfg, 1, model.cfg.max_seq_len, "cpu", torch.float32)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, :7], cache=cache, start=0)]
        parts += [model(ids[:, t:t + 1], cache=cache, start=t) for t in range(7, ids.size(1))]
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-4


def test_sampled_flags_decide_the_patches_and_cached_generation_equals_uncached(bpe):
    model = random_model(predicted_cfg())
    seq = patch_tokenizer(bpe).encode("The cat ")
    torch.manual_seed(1)
    out = generate(model, seq, 40, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert any(i >= 257 for i in out) and any(i < 257 for i in out)  # both flags were sampled
    with torch.no_grad():
        logits = model(torch.tensor([seq + out]))[0]
        cache = ByteCache(model.cfg, 1, model.cfg.max_seq_len, "cpu", torch.float32)
        cached = model(torch.tensor([seq + out]), cache=cache, start=0)[0]
    assert (cached - logits).abs().max() < 1e-4
    greedy = generate(model, seq, 30, temperature=0)
    with torch.no_grad():
        for token in greedy:
            assert token == int(model(torch.tensor([seq]))[0, -1].argmax())
            seq = seq + [token]


def test_a_prompt_ends_with_the_flag_the_model_predicts(bpe):
    model = random_model(predicted_cfg())
    ids = patch_tokenizer(bpe).encode("the quick")
    out = flag_prompt_end(model, ids)
    assert out[:-1] == ids[:-1] and out[-1] % 257 == ids[-1] % 257
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0, -1]
    assert out[-1] == max((ids[-1] % 257, ids[-1] % 257 + 257), key=lambda i: float(logits[i]))


def test_predicted_patching_needs_the_patch_vocabulary():
    with pytest.raises(ValueError, match="data.tokenizer=patches"):
        build_model(dataclasses.replace(predicted_cfg(), vocab_size=257))


# -- the commands --

TINY = ["model.kind=byte", "model.patching=predicted", "model.patch_size=6", "model.n_layer=1", "model.d_model=32",
        "model.n_heads=2", "model.n_kv_heads=1", "model.d_local=16", "model.n_local_heads=2", "model.max_seq_len=48",
        "train.batch_size=4", "train.max_steps=4", "train.warmup_steps=1", "train.eval_every=0", "train.ckpt_every=2",
        "train.device=cpu", "train.peak_tflops=1", "data.workers=1", "eval.max_tokens=512"]


def one_line_error(err: str) -> str:
    lines = [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]
    assert len(lines) == 1 and lines[0].startswith("tinylm: error: "), err
    return lines[0]


def test_train_resume_eval_and_sample_with_predicted_patches(cli, text_file, tmp_path, monkeypatch, bpe):
    monkeypatch.chdir(tmp_path)
    bpe.save(tmp_path / "bpe")
    spec = f"data.tokenizer=patches:{tmp_path / 'bpe' / 'tokenizer.json'}"
    assert cli("train", f"data.path={text_file}", spec, *TINY, "--out", "runs/p")[0] == 0
    assert isinstance(Tokenizer.load("runs/p/checkpoint"), PatchTokenizer)
    assert_resume_eval_and_sample_work(cli, "runs/p", text_file, tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["data.tokenizer=byte"], "data.tokenizer=patches:PATH"),
    (["data.tokenizer=patches:bpe", "model.patching=space"], "model.patching=predicted reads"),
    (["data.tokenizer=patches:bpe", "model.kind=token"], "model.kind=token"),
])
def test_a_tokenizer_and_patching_that_do_not_match_are_refused_in_one_line(cli, text_file, tmp_path, overrides,
                                                                             message):
    code, _, err = cli("train", f"data.path={text_file}", *TINY, *overrides, "data.vocab_size=300",
                       "--out", str(tmp_path / "run"))
    assert code == 2 and message in one_line_error(err)
