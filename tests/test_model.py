import dataclasses

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.model import KVCache, Transformer, filter_logits, generate, resolved_ffn_hidden
from tinylm.model.llama import MATMUL_ATTENTION_MAX_LEN, causal_attention


def closed_form_params(cfg: ModelConfig) -> tuple[int, int]:
    d, hd, f = cfg.d_model, cfg.d_model // cfg.n_heads, resolved_ffn_hidden(cfg)
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, o and k, v
    per_layer = attn + 3 * d * f + 2 * d  # SwiGLU's three matrices, two RMSNorm gains
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return embedding, cfg.n_layer * per_layer + d  # final norm


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_matches_closed_form(small_cfg, tie):
    cfg = dataclasses.replace(small_cfg, tie_embeddings=tie, ffn_hidden=96)
    counts = Transformer(cfg).param_counts()
    embedding, non_embedding = closed_form_params(cfg)
    assert counts["embedding"] == embedding
    assert counts["non_embedding"] == non_embedding
    assert counts["total"] == embedding + non_embedding


def test_default_ffn_hidden_is_eight_thirds_rounded_to_32():
    assert resolved_ffn_hidden(ModelConfig(d_model=256)) == 704  # 682.7 -> 704
    assert resolved_ffn_hidden(ModelConfig(d_model=256, ffn_hidden=500)) == 500


def test_future_tokens_never_change_past_logits(small_cfg):
    model = Transformer(small_cfg).eval()
    x = torch.randint(0, small_cfg.vocab_size, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, small_cfg.vocab_size, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_cached_decoding_reproduces_full_forward_logits(small_cfg):
    model = Transformer(small_cfg).eval()
    x = torch.randint(0, small_cfg.vocab_size, (3, 24))
    cache = KVCache(small_cfg, 3, small_cfg.max_seq_len, "cpu", torch.float32)
    with torch.no_grad():
        full = model(x)
        parts = [model(x[:, :10], cache=cache, start=0)]  # a prompt, then one token at a time
        parts += [model(x[:, t:t + 1], cache=cache, start=t) for t in range(10, 20)]
        parts.append(model(x[:, 20:], cache=cache, start=20))  # and a multi-token chunk after the cache
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5


def test_greedy_generation_equals_argmax_of_full_forward(small_cfg):
    model = Transformer(small_cfg).eval()
    prompt = [5, 17, 3]
    out = generate(model, prompt, 12, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt):]


def test_generation_past_the_context_slides_by_re_prefilling_the_last_half(small_cfg):
    model = Transformer(dataclasses.replace(small_cfg, max_seq_len=16)).eval()
    prompt = [5, 17, 3]
    out = generate(model, prompt, 40, temperature=0)
    assert len(out) == 40
    slid = 16 - len(prompt) + 1  # tokens out when the 16-token cache is full
    assert out[slid:] == generate(model, (prompt + out[:slid])[-8:], 40 - slid, temperature=0)


def test_generation_stops_at_eos(small_cfg):
    model = Transformer(small_cfg).eval()
    first = generate(model, [1, 2], 1, temperature=0)[0]
    assert generate(model, [1, 2], 10, temperature=0, eos_id=first) == [first]


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # 0.5 + 0.3 = 0.8 < 0.85, so the third token is needed to reach top_p
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]


def test_tied_embeddings_share_one_tensor(small_cfg):
    model = Transformer(small_cfg)
    assert model.lm_head.weight is model.embed.weight
    untied = Transformer(dataclasses.replace(small_cfg, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight


def test_small_model_overfits_one_batch(small_cfg):
    model = Transformer(small_cfg)
    x = torch.randint(0, small_cfg.vocab_size, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # from ln(97) = 4.57


def test_residual_projections_are_scaled_down_at_init(small_cfg):
    model = Transformer(dataclasses.replace(small_cfg, n_layer=8, d_model=256, n_heads=4))
    std_q = model.layers[0].attn.wq.weight.std().item()
    std_o = model.layers[0].attn.wo.weight.std().item()
    assert std_q == pytest.approx(0.02, rel=0.05)
    assert std_o == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)


def test_bad_shapes_are_rejected(small_cfg):
    with pytest.raises(ValueError, match="n_kv_heads"):
        Transformer(dataclasses.replace(small_cfg, n_kv_heads=3))
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(small_cfg)(torch.zeros(1, 33, dtype=torch.long))


def attention_inputs(heads: int, kv_heads: int, T: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, heads, T, 16), (3, kv_heads, T, 16), (3, kv_heads, T, 16)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_bf16_matmul_attention_is_as_close_to_fp32_as_sdpa_in_bf16(heads, kv_heads):
    """The two-matmul path (CPU, bf16, short causal sequences) against SDPA in fp32 on the same bf16 inputs: its
    output and input gradients are within the error SDPA's own bf16 kernel makes."""
    gqa = heads != kv_heads
    grad = torch.randn(3, heads, 40, 16, generator=torch.Generator().manual_seed(1))

    def run(fn, dtype):
        q, k, v = attention_inputs(heads, kv_heads, 40, torch.bfloat16)
        q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        y = fn(q, k, v)
        y.backward(grad.to(dtype))
        return [t.float() for t in (y, q.grad, k.grad, v.grad)]

    sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    reference = run(sdpa, torch.float32)
    matmuls = run(lambda q, k, v: causal_attention(q, k, v, 0.0, gqa), torch.bfloat16)
    kernel = run(sdpa, torch.bfloat16)
    for ours, theirs, exact in zip(matmuls, kernel, reference):
        assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-2


def test_matmul_attention_only_replaces_sdpa_for_short_reduced_precision_cpu_sequences(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    for dtype, T, dropout, uses_sdpa in [(torch.bfloat16, 40, 0.0, False), (torch.float16, 40, 0.0, False),
                                         (torch.float32, 40, 0.0, True), (torch.bfloat16, 40, 0.1, True),
                                         (torch.bfloat16, MATMUL_ATTENTION_MAX_LEN + 2, 0.0, True)]:
        calls.clear()
        causal_attention(*attention_inputs(2, 2, T, dtype), dropout, False)
        assert bool(calls) == uses_sdpa, (dtype, T, dropout)


def test_bf16_autocast_logits_follow_fp32(small_cfg):
    model = Transformer(small_cfg).eval()
    x = torch.randint(0, small_cfg.vocab_size, (2, 24))
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approx = model(x).float()
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9
