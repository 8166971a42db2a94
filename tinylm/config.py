"""Typed configuration: dataclasses with defaults, YAML recipes, CLI overrides.

A run's configuration is `Config` (model, data, train, eval). Recipes are YAML
files that override the defaults; `key.sub=value` arguments override the
recipe. Every key is checked: an unknown one is an error that names the
closest valid key, and every size, count, rate and share is checked against its
range (`RANGES`) before any command acts on it. This module knows nothing of
models or training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinylm.errors import TinyLMError


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer
    n_layer: int = 6
    d_model: int = 256
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention; must divide n_heads
    head_dim: int = 0  # 0: d_model / n_heads; set it to keep a parent's head size in a narrower child
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    ffn_hidden: int = 0  # 0: 8/3 * d_model rounded up to a multiple of 32 (SwiGLU at ~4x FFN cost)
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0
    # weight sharing (Super Tiny Language Models, MobileLLM)
    ffn_sharing: str = "none"  # none | all: one FFN for every block | interior: all but ffn_sharing_keep at each end
    ffn_sharing_keep: int = 1  # interior: blocks at each end of the stack that keep their own FFN
    ffn_adapter_rank: int = 0  # >0: each FFN-sharing block adds its own rank-r path, zero at init (exact sharing)
    block_repeat: int = 1  # each block runs this many times in a row (MobileLLM's immediate block-wise sharing)
    stack_repeat: int = 1  # the stack of n_layer distinct blocks runs this many times over (MobileLLM's repeat-all-over)
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # byte-level models (model.kind=byte, tinylm/model/bytes.py)
    kind: str = "token"  # token: the Transformer over tokenizer ids | byte: bytes pooled into patches (data.tokenizer=byte)
    patching: str = "space"  # space: a patch starts after a non-alphanumeric byte (SpaceByte) | stride: every patch_size bytes
    # | predicted: BPE tokens, whose ends the model predicts (data.tokenizer=patches:PATH, Super Tiny Language Models)
    patch_size: int = 8  # stride: the patch length; space, predicted: the longest patch (a longer one is cut)
    pooling: str = "mean"  # a patch's byte states -> one vector: mean | attention (a learned query) | last (its last byte)
    d_local: int = 128  # width of the byte embedding, encoder and decoder (the global blocks use d_model)
    n_local_heads: int = 4  # attention heads of the byte encoder and decoder
    n_encoder_layers: int = 1  # causal blocks over all bytes, before pooling
    n_decoder_layers: int = 1  # blocks of the byte decoder, causal within the patch it predicts
    # multi-token prediction (tinylm/model/mtp.py): extra predictions of later tokens, trained by train.mtp_*,
    # used as drafts by `tinylm sample --speculative`, left out of export
    mtp: str = "none"  # none | sequential: DeepSeek-V3's chained modules | parallel: Gloeckle et al.'s independent heads
    mtp_heads: int = 1  # extra tokens predicted: sequential modules (DeepSeek's D) or heads beyond the next-token one


@dataclass
class DataConfig:
    path: str = ""  # text file, folder, .jsonl, .parquet or a prepared shard folder; "" = built-in corpus;
    # hf:NAME[:CONFIG][:SPLIT], a save_to_disk folder or a folder of parquet shards (data/hf.py)
    tokenizer: str = "bpe"  # "byte", "bpe" (trained on the corpus), a tokenizer.json path, or "patches:" and bpe or a
    # path: bytes flagged at that BPE's token ends (for model.patching=predicted)
    vocab_size: int = 4096  # for tokenizer=bpe
    text_field: str = "text"  # the field holding text in .jsonl / .parquet
    val_fraction: float = 0.05
    cache_dir: str = "data_cache"  # where prepared shards are kept, keyed by corpus and tokenizer
    workers: int = 0  # tokenization processes; 0 = one per CPU core


@dataclass
class TrainConfig:
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    # torch.compile the training forward+backward. On CPU: a first step of tens of seconds (inside max_seconds),
    # then ~1.4x tokens/s at ~1M params with AdamW, ~1.2x at the speedrun shape with Muon (README); same losses to
    # fp32 rounding, exact resume. Refused with model.mtp and with a changing dropout schedule.
    compile: bool = False
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    lr: float = 2e-3  # AdamW peak learning rate
    lr_scaling: str = "none"  # none | sqrt: lr and muon_lr scaled by (batch tokens / lr_batch_tokens)^0.5
    lr_batch_tokens: int = 4096  # the batch (sequences x accumulation x context) lr and muon_lr were tuned at
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    # decoupled decay of Muon's matrices (each step w *= 1 - muon_lr * muon_weight_decay); 0: none
    muon_weight_decay: float = 0.0
    # >0: the final weights are the mean of those after every step from this share of training on (SWA)
    average_from: float = 0.0
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr
    schedule: str = "wsd"  # cosine | wsd (warmup-stable-decay) | constant
    warmup_steps: int = 50
    decay_fraction: float = 0.4  # wsd: share of the run spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping
    # a step whose loss or gradient norm is NaN/inf is skipped (weights and optimizer untouched); this many in a
    # row stop the run with the last good checkpoint kept; 0 = never stop
    max_bad_steps: int = 10
    max_steps: int = 2000
    max_tokens: int = 0  # 0: no token limit
    max_seconds: float = 0.0  # 0: no time limit; otherwise the schedule follows wall-clock time
    rounds: int = 1  # multiple-round training: rounds after the first retrain on batches drawn by loss
    refine_ratio: float = 0.5  # batches each later round draws, as a share of the first round's
    refine_temperature: float = 1.0  # tau in p_i = softmax(loss_i / tau) over the first round's batches
    # dropout schedule (Super Tiny Language Models)
    dropout_schedule: str = "constant"  # constant | early | late | triangle, shaping model.dropout (the peak) over training
    dropout_until: float = 0.25  # early: share of training over which dropout ramps linearly from the peak to 0
    dropout_from: float = 0.5  # late: share of training after which dropout is on (0 before)
    dropout_cycles: int = 1  # triangle: rises 0 -> peak -> 0 this many times over training
    eval_every: int = 250
    eval_tokens: int = 65536  # validation tokens per periodic evaluation (0 = whole split)
    ckpt_every: int = 500
    log_every: int = 10
    peak_tflops: float = 0.0  # for MFU; 0 = look up the device
    # experiment tracking beside metrics.jsonl (train/loggers.py): tensorboard, wandb, both, or none
    log_to: list[str] = field(default_factory=list)  # a list or a comma string: "tensorboard,wandb"
    wandb_project: str = "tinylm"
    wandb_mode: str = "offline"  # offline: written to <run>/wandb, uploaded later by `wandb sync` | online
    # knowledge distillation (train/objectives.py)
    distill_teacher: str = ""  # "" = plain next-token CE; else a tinylm run, Hugging Face folder or GGUF file
    distill_loss: str = "forward"  # forward KL(p||q) | reverse KL(q||p) | skew KL(p || s*p + (1-s)*q)
    distill_alpha: float = 0.5  # loss = alpha * CE + (1 - alpha) * temperature^2 * KL
    distill_temperature: float = 1.0  # tau: both distributions are softmax(logits / tau)
    distill_skew: float = 0.1  # s of the skew KL (DistiLLM); 0 = forward KL
    distill_cache: str = ""  # folder of sampled teacher targets, shared by runs with the same data and batching
    distill_samples: int = 8  # with distill_cache: tokens drawn per position from the teacher at tau
    # several processes (torchrun, or `tinylm train --nproc N`; tinylm/distributed.py)
    parallel: str = "ddp"  # ddp: every rank holds the whole model | fsdp: parameters and optimizer state sharded
    parallel_timeout: float = 600.0  # seconds a rank waits for the others in a collective before it gives up
    # multi-token prediction (model.mtp): loss = next-token CE + weight * mean CE of the extra predictions
    mtp_weight: float = 0.1  # lambda, the weight at its peak
    mtp_schedule: str = "constant"  # constant | decay: linear to mtp_weight_final | curriculum: 0 -> mtp_weight
    mtp_weight_final: float = 0.0  # decay: the weight at the end of training
    mtp_ramp: float = 0.25  # curriculum: share of training over which the weight ramps up from 0


@dataclass
class EvalConfig:
    max_tokens: int = 0  # 0: the whole validation split
    batch_size: int = 16
    prompt: str = "ROMEO:"
    sample_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], name + ".")
        else:
            keys.append(name)
    return keys


def _unknown_key(key: str, cls=Config) -> TinyLMError:
    close = difflib.get_close_matches(key, _all_keys(cls), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid sections: {', '.join(f.name for f in dataclasses.fields(cls))}"
    return TinyLMError(f"unknown config key '{key}'{hint}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list[str]: "a list of names or a comma-separated string"}


def _coerce(key: str, value, typ):
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer with hundreds of digits
                raise TinyLMError(f"config key '{key}' is too large: {str(value)[:20]}...") from None
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ == list[str]:
        if isinstance(value, str):  # "a,b" from the command line
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
    raise TinyLMError(f"config key '{key}' needs {_TYPE_NAMES[typ]}, got {value!r}")


def _apply(obj, values: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            raise _unknown_key(key)
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise TinyLMError(f"config key '{key}' is a section; give it a mapping, e.g. {key}.<field>=...")
            _apply(getattr(obj, name), value, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, typ))


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["train.lr=3e-3", "model.n_layer=6"] into a nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise TinyLMError(f"override '{item}' is not of the form key=value (e.g. train.lr=3e-3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:  # not a YAML scalar ("[1,", a tab, a stray quote): the text as written
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string; numbers win
            try:
                value = float(value)
            except ValueError:
                pass
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TinyLMError(f"override '{item}' sets a field inside a non-section key")
        node[parts[-1]] = value
    return tree


@dataclass(frozen=True)
class Range:
    """The values a number may take: low .. high, each end included unless marked open."""
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:  # written so that NaN holds nowhere
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open or self.high == math.inf else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)  # where 0 has a meaning: "derived", "none", "no limit" or "off" (see the field's comment)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)  # [0, 1]
BELOW_1 = Range(0, 1, high_open=True)  # [0, 1)
SHARE = Range(0, 1, low_open=True)  # (0, 1]

# Only ranges a single field fixes on its own. Checks that involve other fields stay where the fields meet:
# divisibility and sharing shapes in model/llama.py check_shape and model/bytes.py check_byte_shape, the
# distillation settings in train/objectives.py, the BPE minimum (257) in tokenizer.train_bpe, the stop
# condition in train/loop.py, train.lr_batch_tokens in train/optim.py (used only with lr_scaling=sqrt).
RANGES: dict[str, Range] = {
    "model.vocab_size": AT_LEAST_0,
    "model.n_layer": AT_LEAST_1,
    "model.d_model": AT_LEAST_1,
    "model.n_heads": AT_LEAST_1,
    "model.n_kv_heads": AT_LEAST_1,
    "model.head_dim": AT_LEAST_0,
    "model.ffn_hidden": AT_LEAST_0,
    "model.max_seq_len": AT_LEAST_1,
    "model.rope_theta": POSITIVE,
    "model.dropout": BELOW_1,
    "model.ffn_sharing_keep": AT_LEAST_0,
    "model.ffn_adapter_rank": AT_LEAST_0,
    "model.block_repeat": AT_LEAST_1,
    "model.stack_repeat": AT_LEAST_1,
    "model.norm_eps": POSITIVE,
    "model.init_std": POSITIVE,
    "model.patch_size": AT_LEAST_1,
    "model.d_local": AT_LEAST_1,
    "model.n_local_heads": AT_LEAST_1,
    "model.n_encoder_layers": AT_LEAST_0,  # 0: patches pool the byte embeddings themselves
    "model.n_decoder_layers": AT_LEAST_0,
    "model.mtp_heads": AT_LEAST_1,
    "data.vocab_size": AT_LEAST_1,
    "data.val_fraction": Range(0, 1, low_open=True, high_open=True),
    "data.workers": AT_LEAST_0,
    "train.batch_size": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.lr": POSITIVE,
    "train.muon_lr": POSITIVE,
    "train.muon_momentum": BELOW_1,
    "train.muon_weight_decay": AT_LEAST_0,
    "train.average_from": FRACTION,
    "train.min_lr_ratio": FRACTION,
    "train.warmup_steps": AT_LEAST_0,
    "train.decay_fraction": FRACTION,
    "train.weight_decay": AT_LEAST_0,
    "train.beta1": BELOW_1,
    "train.beta2": BELOW_1,
    "train.grad_clip": AT_LEAST_0,  # 0: no clipping
    "train.max_bad_steps": AT_LEAST_0,  # 0: never stop on non-finite steps
    "train.max_steps": AT_LEAST_0,
    "train.max_tokens": AT_LEAST_0,
    "train.max_seconds": AT_LEAST_0,
    "train.rounds": AT_LEAST_1,
    "train.refine_ratio": SHARE,
    "train.refine_temperature": POSITIVE,
    "train.dropout_until": FRACTION,
    "train.dropout_from": FRACTION,
    "train.dropout_cycles": AT_LEAST_1,
    "train.eval_every": AT_LEAST_0,
    "train.eval_tokens": AT_LEAST_0,
    "train.ckpt_every": AT_LEAST_0,
    "train.log_every": AT_LEAST_0,  # 0: no loss lines
    "train.peak_tflops": AT_LEAST_0,
    "train.parallel_timeout": POSITIVE,
    "train.mtp_weight": AT_LEAST_0,
    "train.mtp_weight_final": AT_LEAST_0,
    "train.mtp_ramp": FRACTION,
    "eval.max_tokens": AT_LEAST_0,
    "eval.batch_size": AT_LEAST_1,
    "eval.sample_tokens": AT_LEAST_1,
    "eval.temperature": AT_LEAST_0,  # 0: greedy decoding
    "eval.top_k": AT_LEAST_0,
    "eval.top_p": SHARE,
}


def validate(cfg: Config) -> None:
    """Raise a TinyLMError naming the first field of `RANGES` whose value lies outside its range."""
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not allowed.holds(value):
            raise TinyLMError(f"{key}={value} must be {allowed}")


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Defaults, then `base` (a saved config dict), then the YAML recipe, then the overrides; then `validate`."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise TinyLMError(f"recipe '{recipe}' not found; recipes live in recipes/*.yaml")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise TinyLMError(f"recipe '{recipe}' is not valid YAML ({type(e).__name__}); fix or regenerate it")
        if not isinstance(values, dict):
            raise TinyLMError(f"recipe '{recipe}' must be a mapping of sections (model:, data:, train:, eval:)")
        _apply(cfg, values)
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg
