"""tinylm export: each format reproduces tinylm's logits (and token ids) in the runtime that reads it."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tinylm.checkpoint import save_checkpoint
from tinylm.cli import main
from tinylm.config import Config, ModelConfig
from tinylm.errors import TinyLMError
from tinylm.export import export
from tinylm.model import Transformer
from tinylm.model.generate import generate
from tinylm.tokenizer import byte_tokenizer, train_bpe

TEXT = [f"Line {i}: the quick brown fox jumps over the lazy dog, and the cat sat on mat number {i % 7}."
        for i in range(200)] + ["Numbers 12345 and (parens), 'quotes' -- don't stop!\n\n  Indented    spaces."]
PROMPT = "the quick brown fox (number 4207) jumps"
TRICKY = "Line 123: 4567 the   quick\n\nbrown's (fox) -- DON'T café "
F32_TOL = 1e-4
# rounded weights: max |logit difference| as a share of the largest |logit|, about 3x what these random models
# show (f16 0.2-0.6%, bf16 1-3%, q8_0 3-5%: the per-weight rounding errors, 2^-11, 2^-8 and ~1/250 of a block's
# largest value, summed over two layers); a misplaced tensor or a wrong Q/K permutation is off by over 50%
RELATIVE_TOL = {"f16": 1e-2, "bf16": 5e-2, "q8_0": 1e-1}


def make_run(root, tokenizer, **overrides):
    """A 2-layer, 64-wide run with random weights; returns (run dir, model)."""
    cfg = Config()
    # ffn_hidden=80: the FFN down projection's rows are not whole q8_0 blocks of 32
    cfg.model = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, d_model=64, n_heads=4, n_kv_heads=2,
                            ffn_hidden=80, max_seq_len=64, init_std=0.2, **overrides)
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    with torch.no_grad():  # move norm gains and biases off their 1 / 0 init, so a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(root, model, cfg, tokenizer)
    return root, model.eval()


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(TEXT), 400)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, bpe):
    return make_run(tmp_path_factory.mktemp("llama"), bpe)


@pytest.fixture(scope="module")
def qwen2_run(tmp_path_factory, bpe):
    return make_run(tmp_path_factory.mktemp("qwen2"), bpe, qkv_bias=True)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_hf_export_reproduces_logits_tokens_and_greedy_generation(llama_run, bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    run, model = llama_run
    export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert hf_tok(TRICKY)["input_ids"] == bpe.encode(TRICKY)
    assert hf_tok.eos_token == bpe.eos_token
    ids = bpe.encode(PROMPT)
    assert max_diff(hf_logits(hf, ids), logits(model, ids)) <= F32_TOL
    ours = generate(model, ids, 20, temperature=0, eos_id=bpe.eos_id)
    theirs = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    assert theirs == ours and len(set(ours)) > 1


def test_hf_export_of_a_tied_model_stores_the_embedding_once(llama_run, tmp_path):
    export(llama_run[0], "hf", tmp_path / "hf")
    config = json.loads((tmp_path / "hf/config.json").read_text())
    with safe_open(tmp_path / "hf/model.safetensors", "pt") as f:
        names = set(f.keys())
    assert config["tie_word_embeddings"] and "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_hf_export_of_a_qkv_bias_model_is_qwen2(qwen2_run, bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    run, model = qwen2_run
    result = export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert "PreTrainedTokenizerFast" in result.notes[0]  # AutoTokenizer swaps in Qwen2's own pre-tokenizer
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    assert tok(TRICKY)["input_ids"] == bpe.encode(TRICKY)
    ids = bpe.encode(PROMPT)
    assert max_diff(hf_logits(hf, ids), logits(model, ids)) <= F32_TOL


def test_hf_export_of_an_untied_model_with_its_own_head_dim(tmp_path, bpe):
    transformers = pytest.importorskip("transformers")
    run, model = make_run(tmp_path / "run", bpe, tie_embeddings=False, head_dim=32)
    export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not hf.config.tie_word_embeddings and hf.config.head_dim == 32
    ids = bpe.encode(PROMPT)
    assert max_diff(hf_logits(hf, ids), logits(model, ids)) <= F32_TOL


@pytest.mark.parametrize("dtype, torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_hf_export_in_half_precision_stays_close(llama_run, bpe, tmp_path, dtype, torch_dtype):
    transformers = pytest.importorskip("transformers")
    run, model = llama_run
    export(run, "hf", tmp_path / "hf", dtype=dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with safe_open(tmp_path / "hf/model.safetensors", "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch_dtype
    ids = bpe.encode(PROMPT)
    ref = logits(model, ids)
    assert max_diff(hf_logits(hf, ids), ref) <= RELATIVE_TOL[dtype] * ref.abs().max().item()


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_gguf_f32_reproduces_logits_in_transformers_and_tinylm(llama_run, qwen2_run, bpe, tmp_path, which):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    from tinylm.formats import load_model

    run, model = llama_run if which == "llama" else qwen2_run
    export(run, "gguf", tmp_path / "m.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    loaded = load_model(tmp_path / "m.gguf")
    assert hf.config.model_type == which
    ids = bpe.encode(PROMPT)
    assert max_diff(hf_logits(hf, ids), logits(model, ids)) <= F32_TOL
    assert max_diff(logits(loaded.model, ids), logits(model, ids)) <= F32_TOL
    assert hf_tok(TRICKY)["input_ids"] == bpe.encode(TRICKY) == loaded.tokenizer.encode(TRICKY)


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_gguf_quantized_weights_stay_close(llama_run, bpe, tmp_path, dtype):
    gguf = pytest.importorskip("gguf")
    from tinylm.formats import load_model

    run, model = llama_run
    export(run, "gguf", tmp_path / "m.gguf", dtype=dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    matrix = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    assert types["output_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == matrix
    assert types["blk.0.ffn_down.weight"] == ("F16" if dtype == "q8_0" else matrix)  # rows of 80: no whole blocks
    ids = bpe.encode(PROMPT)
    ref = logits(model, ids)
    assert max_diff(logits(load_model(tmp_path / "m.gguf").model, ids), ref) <= RELATIVE_TOL[dtype] * ref.abs().max()


def test_gguf_of_a_byte_tokenizer_model_keeps_its_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from tinylm.formats import load_model

    tokenizer = byte_tokenizer()
    run, model = make_run(tmp_path / "run", tokenizer)
    export(run, "gguf", tmp_path / "m.gguf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    loaded = load_model(tmp_path / "m.gguf")
    assert hf_tok(TRICKY)["input_ids"] == tokenizer.encode(TRICKY) == loaded.tokenizer.encode(TRICKY)
    ids = tokenizer.encode(PROMPT)
    assert max_diff(logits(loaded.model, ids), logits(model, ids)) <= F32_TOL


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_gguf_runs_in_llama_cpp(llama_run, qwen2_run, bpe, tmp_path, which):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: scripts/setup.sh --dev "
                                    "builds it from source (cmake and a C++ compiler); where that build fails, "
                                    "this check skips")
    run, model = llama_run if which == "llama" else qwen2_run
    export(run, "gguf", tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # its default KV cache is f16
    assert llm.tokenize(TRICKY.encode(), add_bos=True) == bpe.encode(TRICKY)  # and no BOS is added
    ids = bpe.encode(PROMPT)
    llm.eval(ids)
    assert np.abs(np.array(llm.scores[:len(ids)]) - logits(model, ids)[0].numpy()).max() <= F32_TOL


def test_gguf_refuses_a_tokenizer_it_cannot_express(tmp_path, bpe):
    pytest.importorskip("gguf")
    from tokenizers import normalizers

    tokenizer = train_bpe(iter(TEXT), 300)
    tokenizer.hf.normalizer = normalizers.NFKC()
    run, _ = make_run(tmp_path / "run", tokenizer)
    with pytest.raises(TinyLMError, match="NFKC normalizer"):
        export(run, "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".*export-tmp"))


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_onnx_reproduces_logits_for_two_shapes(llama_run, bpe, tmp_path, dtype):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, model = llama_run
    export(run, "onnx", tmp_path / "model.onnx", dtype=dtype)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == json.loads(bpe.hf.to_str())
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch, seq in [(1, 7), (3, model.cfg.max_seq_len)]:
        ids = torch.randint(0, bpe.vocab_size, (batch, seq), generator=generator)
        (theirs,) = session.run(None, {"input_ids": ids.numpy()})
        with torch.no_grad():
            ours = model(ids).numpy()
        tol = F32_TOL if dtype == "f32" else RELATIVE_TOL[dtype] * np.abs(ours).max()
        assert theirs.shape == ours.shape and np.abs(theirs.astype(np.float32) - ours).max() <= tol


def test_export_refuses_to_overwrite_unless_asked(llama_run, tmp_path):
    run, _ = llama_run
    export(run, "hf", tmp_path / "hf")
    (tmp_path / "hf/config.json").write_text("{}")
    with pytest.raises(TinyLMError, match="already exists.*--overwrite"):
        export(run, "hf", tmp_path / "hf")
    assert (tmp_path / "hf/config.json").read_text() == "{}"
    export(run, "hf", tmp_path / "hf", overwrite=True)
    assert json.loads((tmp_path / "hf/config.json").read_text())["model_type"] == "llama"


def test_export_never_writes_over_the_run(llama_run):
    run, _ = llama_run
    with pytest.raises(TinyLMError, match="checkpoint"):
        export(run, "hf", run, overwrite=True)
    assert (run / "checkpoint/model.safetensors").is_file()


def cli_error(capsys, *args) -> str:
    """Run `tinylm export ARGS`, expecting a user error; returns its one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("tinylm: error: ")
    return err


def test_cli_export_of_a_missing_run_is_one_line(capsys, tmp_path):
    assert "does not exist" in cli_error(capsys, tmp_path / "missing", "--format", "hf", "--out", tmp_path / "hf")


def test_cli_export_of_q8_0_to_hf_is_one_line(capsys, llama_run, tmp_path):
    err = cli_error(capsys, llama_run[0], "--format", "hf", "--dtype", "q8_0", "--out", tmp_path / "hf")
    assert "q8_0 is GGUF only" in err and not (tmp_path / "hf").exists()


def test_cli_export_writes_gguf(capsys, llama_run, tmp_path):
    pytest.importorskip("gguf")
    main(["export", str(llama_run[0]), "--format", "gguf", "--dtype", "q8_0", "--out", str(tmp_path / "m.gguf")])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_a_quickstart_model_exports_to_every_format_and_runs_in_each_runtime(tmp_path, monkeypatch):
    """The quickstart recipe (its model, BPE tokenizer and optimizer), trained briefly on text written here,
    then exported three ways: transformers, transformers' GGUF loader and ONNX Runtime reproduce its logits."""
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pathlib import Path

    from tinylm.checkpoint import load_checkpoint

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXT * 5))
    main(["train", str(recipe), "data.path=corpus.txt", "data.vocab_size=600", "train.max_seconds=0",
          "train.max_steps=3", "train.batch_size=2", "train.eval_every=0", "train.ckpt_every=0", "--out", "run"])
    run = load_checkpoint("run")
    assert (run.model.cfg.n_layer, run.model.cfg.d_model) == (4, 128)
    ids = run.tokenizer.encode(PROMPT)
    ours = logits(run.model, ids)
    main(["export", "run", "--format", "hf", "--out", "hf"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(hf_logits(hf, ids), ours) <= F32_TOL
    main(["export", "run", "--format", "gguf", "--out", "gguf/model.gguf"])
    from_gguf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf",
                                                                  dtype=torch.float32).eval()
    assert max_diff(hf_logits(from_gguf, ids), ours) <= F32_TOL
    main(["export", "run", "--format", "onnx", "--out", "onnx/model.onnx"])
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"input_ids": np.array([ids], dtype=np.int64)})
    assert np.abs(theirs - ours.numpy()).max() <= F32_TOL
