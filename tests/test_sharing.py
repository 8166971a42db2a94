"""Weight sharing: FFN sharing (with and without adapters), block and stack repetition."""

import dataclasses

import pytest
import torch
from safetensors import safe_open

from tinylm.arch.shapes import param_count
from tinylm.checkpoint import load_checkpoint, save_checkpoint
from tinylm.config import Config, ModelConfig
from tinylm.errors import TinyLMError
from tinylm.export import export
from tinylm.inherit import ChildShape, child_config
from tinylm.model import KVCache, Transformer
from tinylm.model.llama import parameter_names, resolved_ffn_hidden, unshare
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train

from test_dropout import tiny_config  # the same tiny byte-level training setup
from test_train import byte_data

SHARED = [dict(ffn_sharing="all"), dict(ffn_sharing="interior"), dict(ffn_sharing="interior", ffn_adapter_rank=4),
          dict(block_repeat=2), dict(stack_repeat=2), dict(ffn_sharing="all", block_repeat=2, stack_repeat=2),
          dict(ffn_sharing="interior", ffn_sharing_keep=1, ffn_adapter_rank=2, block_repeat=3, tie_embeddings=False)]


def config(**overrides) -> ModelConfig:
    shape = dict(vocab_size=byte_tokenizer().vocab_size, n_layer=4, d_model=32, n_heads=2, n_kv_heads=1,
                 max_seq_len=32, init_std=0.2)
    return ModelConfig(**shape | overrides)


def ffn_params(cfg: ModelConfig) -> int:
    return 3 * cfg.d_model * resolved_ffn_hidden(cfg)


def randomised(cfg: ModelConfig) -> Transformer:
    """A model whose adapters are not zero, so a test of them sees them."""
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter_up" in name:
                p.normal_(0.0, 0.2)
    return model


def logits(model, x):
    with torch.no_grad():
        return model(x)


def test_every_sharing_switch_off_builds_the_plain_model():
    model = Transformer(config(tie_embeddings=False))
    assert len(model.layers) == 4 and len({id(block) for block in model.layers}) == 4
    assert list(model.state_dict()) == parameter_names(model.cfg)  # no name for a second use of anything


@pytest.mark.parametrize("sharing", SHARED)
def test_parameter_count_counts_shared_weights_once_and_matches_the_closed_form(sharing):
    cfg = config(**sharing)
    assert Transformer(cfg).param_counts()["total"] == param_count(cfg)


def test_parameter_counts_of_each_kind_of_sharing():
    plain = Transformer(config()).param_counts()["total"]
    ffn = ffn_params(config())
    assert Transformer(config(ffn_sharing="all")).param_counts()["total"] == plain - 3 * ffn
    assert Transformer(config(ffn_sharing="interior")).param_counts()["total"] == plain - ffn  # blocks 1, 2 share
    adapters = 2 * (2 * 32 * 4)  # blocks 1 and 2, each d_model x rank twice
    assert Transformer(config(ffn_sharing="interior", ffn_adapter_rank=4)).param_counts()["total"] == plain - ffn + adapters
    assert Transformer(config(block_repeat=3, stack_repeat=2)).param_counts()["total"] == plain


def test_block_repeat_runs_each_block_in_place_and_stack_repeat_cycles_the_stack():
    def first_uses(model):
        layers = list(model.layers)
        return [layers.index(block) for block in layers]

    assert first_uses(Transformer(config(n_layer=2, block_repeat=2))) == [0, 0, 2, 2]
    assert first_uses(Transformer(config(n_layer=2, stack_repeat=2))) == [0, 1, 0, 1]


def test_residual_projections_are_scaled_by_the_unrolled_depth():
    model = Transformer(config(n_layer=2, d_model=256, n_heads=4, init_std=0.02, block_repeat=2, stack_repeat=2))
    assert model.layers[0].attn.wo.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)


def test_ffn_sharing_hands_blocks_one_ffn():
    interior = Transformer(config(ffn_sharing="interior"))
    ffns = [block.ffn for block in interior.layers]
    assert ffns[1] is ffns[2] and len({id(f) for f in ffns}) == 3


@pytest.mark.parametrize("sharing", SHARED)
def test_checkpoint_stores_one_copy_and_reloads_the_same_logits(tmp_path, sharing):
    cfg = Config(model=config(**sharing))
    model = randomised(cfg.model)
    save_checkpoint(tmp_path, model, cfg, byte_tokenizer())
    with safe_open(tmp_path / "checkpoint" / "model.safetensors", "pt") as f:
        stored = sum(f.get_tensor(name).numel() for name in f.keys())
    assert stored == model.param_counts()["total"]
    x = torch.randint(0, 257, (2, 16))
    assert torch.equal(logits(load_checkpoint(tmp_path).model.eval(), x), logits(model, x))


def test_adapters_at_init_compute_plain_ffn_sharing():
    cfg = config(ffn_sharing="all", ffn_adapter_rank=4)
    adapted = Transformer(cfg).eval()
    plain = Transformer(dataclasses.replace(cfg, ffn_adapter_rank=0)).eval()
    plain.load_state_dict({name.replace("ffn.shared.", "ffn."): w for name, w in adapted.state_dict().items()
                           if "adapter_" not in name})
    x = torch.randint(0, 257, (2, 16))
    assert torch.equal(logits(adapted, x), logits(plain, x))


def test_flops_count_every_use_of_a_shared_weight():
    cfg = config(ffn_sharing="interior", block_repeat=2, stack_repeat=2)
    unrolled = unshare(Transformer(cfg))
    assert unrolled.cfg.n_layer == 16
    assert Transformer(cfg).flops_per_token(32) == unrolled.flops_per_token(32)
    assert Transformer(config(ffn_sharing="all")).flops_per_token(32) == Transformer(config()).flops_per_token(32)


@pytest.mark.parametrize("sharing", [dict(block_repeat=2, stack_repeat=2, ffn_sharing="all"),
                                     dict(ffn_sharing="interior", ffn_adapter_rank=2, block_repeat=2)])
def test_cached_decoding_of_repeated_blocks_reproduces_full_forward_logits(sharing):
    model = randomised(config(**sharing))
    x = torch.randint(0, 257, (2, 24))
    cache = KVCache(model.cfg, 2, model.cfg.max_seq_len, "cpu", torch.float32)
    assert len(cache.k) == len(model.layers)  # one slot per application
    with torch.no_grad():
        parts = [model(x[:, :10], cache=cache, start=0)]
        parts += [model(x[:, t:t + 1], cache=cache, start=t) for t in range(10, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), logits(model, x), atol=1e-4, rtol=1e-4)


def test_unshare_copies_shared_weights_into_a_plain_model_with_the_same_logits():
    model = randomised(config(ffn_sharing="interior", block_repeat=2, stack_repeat=2))
    plain = unshare(model)
    x = torch.randint(0, 257, (2, 16))
    torch.testing.assert_close(logits(plain, x), logits(model, x))
    assert plain.param_counts()["total"] > model.param_counts()["total"]


def test_hf_export_of_a_shared_model_is_unrolled_and_reproduces_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = Config(model=config(ffn_sharing="interior", block_repeat=2, stack_repeat=2))
    model = randomised(cfg.model)
    save_checkpoint(tmp_path / "run", model, cfg, byte_tokenizer())
    done = export(tmp_path / "run", "hf", tmp_path / "hf")
    assert any("unrolled: 16 layers" in note for note in done.notes)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_hidden_layers == 16
    x = torch.randint(0, 257, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, logits(model, x), atol=1e-4, rtol=1e-4)


def test_gguf_export_of_a_shared_model_is_unrolled_and_reads_back_with_the_same_logits(tmp_path):
    pytest.importorskip("gguf")
    from tinylm.formats import load_model

    cfg = Config(model=config(ffn_sharing="all", block_repeat=2))
    model = randomised(cfg.model)
    save_checkpoint(tmp_path / "run", model, cfg, byte_tokenizer())
    export(tmp_path / "run", "gguf", tmp_path / "m.gguf")
    loaded = load_model(tmp_path / "m.gguf").model.eval()
    assert loaded.cfg.n_layer == 8
    x = torch.randint(0, 257, (1, 20))
    torch.testing.assert_close(logits(loaded, x), logits(model, x), atol=1e-4, rtol=1e-4)


def test_onnx_export_keeps_adapters_and_repeated_blocks(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = Config(model=config(ffn_sharing="interior", ffn_adapter_rank=2, block_repeat=2))
    model = randomised(cfg.model)
    save_checkpoint(tmp_path / "run", model, cfg, byte_tokenizer())
    export(tmp_path / "run", "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 257, (2, 12))
    (theirs,) = session.run(None, {"input_ids": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(theirs), logits(model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_export_of_ffn_adapters_to_a_llama_format_is_refused(tmp_path, fmt):
    cfg = Config(model=config(ffn_sharing="all", ffn_adapter_rank=2))
    save_checkpoint(tmp_path / "run", Transformer(cfg.model), cfg, byte_tokenizer())
    with pytest.raises(TinyLMError, match=f"--format {fmt} cannot hold this model: model.ffn_adapter_rank=2"):
        export(tmp_path / "run", fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_shared_model_trains_and_its_checkpoint_reloads(tmp_path, text_file, optimizer):
    cfg = tiny_config("model.ffn_sharing=all", "model.ffn_adapter_rank=2", "model.block_repeat=2",
                      "train.max_steps=4", f"train.optimizer={optimizer}")
    result = train(cfg, byte_data(text_file.read_text()), byte_tokenizer(), tmp_path, progress=False)
    assert result.params["total"] == param_count(cfg.model)
    trained = load_checkpoint(tmp_path).model
    assert trained.layers[0] is trained.layers[1] and trained.layers[0].ffn.shared is trained.layers[2].ffn.shared


def test_inherit_refuses_a_shared_parent():
    with pytest.raises(TinyLMError, match="tinylm inherit needs a parent without weight sharing"):
        child_config(config(block_repeat=2), ChildShape(n_layer=2), 257)


@pytest.mark.parametrize("sharing, message", [
    (dict(ffn_sharing="some"), "model.ffn_sharing='some' is not one of none, all, interior"),
    (dict(ffn_sharing="interior", ffn_sharing_keep=2), "leaves 0 interior blocks"),
    (dict(ffn_sharing="interior", ffn_sharing_keep=0), "keep at least 1 at each end"),
    (dict(ffn_adapter_rank=4), "set model.ffn_sharing=all or interior"),
    (dict(block_repeat=0), "model.block_repeat=0 must be at least 1"),
    (dict(stack_repeat=0), "model.stack_repeat=0 must be at least 1"),
])
def test_bad_sharing_settings_are_rejected_by_name(sharing, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Transformer(config(**sharing))
