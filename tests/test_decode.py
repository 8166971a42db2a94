import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model import ByteTransformer, Transformer, generate

# every distinct shape compiles once (seconds), so the tests share a few tiny ones
PLAIN = ModelConfig(vocab_size=61, n_layer=2, d_model=32, n_heads=2, n_kv_heads=2, max_seq_len=24,
                    tie_embeddings=False, init_std=0.2)
PROMPT = [5, 17, 3, 9]


def model_of(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


def both(model: Transformer, prompt: list[int], n: int, **kw) -> tuple[list[int], list[int]]:
    return generate(model, prompt, n, compile=False, **kw), generate(model, prompt, n, compile=True, **kw)


@pytest.mark.parametrize("cfg", [
    PLAIN,
    dataclasses.replace(PLAIN, n_heads=4, n_kv_heads=2, qkv_bias=True, tie_embeddings=True, init_std=0.5),
    dataclasses.replace(PLAIN, n_layer=2, block_repeat=2, ffn_sharing="all"),
], ids=["plain", "gqa-qkv-bias-tied", "repeated-blocks"])
def test_compiled_greedy_decoding_gives_the_eager_tokens(cfg):
    model = model_of(cfg)
    if cfg.qkv_bias:  # biases start at zero; make them matter
        for layer in model.layers:
            for proj in (layer.attn.wq, layer.attn.wk, layer.attn.wv):
                torch.nn.init.normal_(proj.bias, 0.0, 0.5)
    eager, compiled = both(model, PROMPT, 15, temperature=0)
    assert compiled == eager and len(set(eager)) > 3  # a varied continuation, not one token repeated


def test_compiled_decoding_slides_past_the_context_as_eager_does():
    eager, compiled = both(model_of(PLAIN), PROMPT, 3 * PLAIN.max_seq_len, temperature=0)
    assert len(compiled) == 3 * PLAIN.max_seq_len and compiled == eager


def test_compiled_sampling_draws_the_eager_tokens_from_one_seed():
    # logits agree to float rounding, so the same uniform draws pick the same tokens
    model = model_of(PLAIN)
    eager, compiled = [generate(model, PROMPT, 40, temperature=1.0, top_k=20, top_p=0.95, compile=c,
                                generator=torch.Generator().manual_seed(7)) for c in (False, True)]
    assert compiled == eager and len(set(eager)) > 5


def test_another_model_of_the_same_shape_reuses_the_compiled_step_and_its_own_weights():
    generate(model_of(PLAIN), PROMPT, 3, temperature=0, compile=True)  # compiled here at the latest
    graphs = counters["stats"]["unique_graphs"]
    other = model_of(PLAIN, seed=1)
    eager, compiled = both(other, PROMPT, 10, temperature=0)
    assert compiled == eager != generate(model_of(PLAIN), PROMPT, 10, temperature=0)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_step_sees_weights_changed_in_place():
    model = model_of(PLAIN)
    before = generate(model, PROMPT, 10, temperature=0, compile=True)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # the greedy token becomes the least likely one
    eager, compiled = both(model, PROMPT, 10, temperature=0)
    assert compiled == eager and compiled[0] != before[0]


def test_a_byte_model_cannot_be_compiled_and_says_so():
    cfg = ModelConfig(kind="byte", vocab_size=257, n_layer=1, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=32)
    with pytest.raises(TinyLMError, match="token Transformer, not ByteTransformer; decode without compile"):
        generate(ByteTransformer(cfg), [1, 2, 3], 4, compile=True)


def test_sample_compile_flag_prints_the_eager_text(cli, text_file, tmp_path):
    run = tmp_path / "run"
    assert cli("train", f"data.path={text_file}", "model.n_layer=1", "model.d_model=32", "model.n_heads=2",
               "model.n_kv_heads=1", "model.max_seq_len=32", "train.batch_size=4", "train.max_steps=4",
               "train.warmup_steps=1", "train.eval_every=0", "train.device=cpu", "train.peak_tflops=1",
               "data.tokenizer=byte", "data.workers=1", "--out", run)[0] == 0
    args = ("sample", run, "--prompt", "The quick", "--max-tokens", "40", "--temperature", "0")
    code, eager, _ = cli(*args)
    assert code == 0 and eager.startswith("The quick") and len(eager) > len("The quick\n")
    assert cli(*args, "--compile") == (0, eager, "")


def test_sample_refuses_compile_with_speculative_decoding(cli, tmp_path):
    code, _, err = cli("sample", tmp_path / "any-run", "--speculative", "--compile")
    assert code == 2 and "--speculative and --compile do not combine" in err


@pytest.mark.parametrize("bias", [False, True])
def test_one_row_linear_computes_what_linear_does(bias):
    from tinylm.model.decode import OneRowLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(1, 1, 48)
    with OneRowLinear():
        rows = layer(x)
        other = torch.tanh(x)  # every other function passes through untouched
    assert rows.shape == (1, 1, 80) and torch.allclose(rows, layer(x), atol=1e-5, rtol=0)
    assert torch.equal(other, torch.tanh(x))
