"""lm-evaluation-harness adapter: any model `load_model` reads, as lm_eval's model type `tinylm`.

    tinylm-lm-eval --model tinylm --model_args path=RUN --batch_size 32 --tasks TASKS ...
    lm_eval --model tinylm ...      (after `tinylm-lm-eval --install-hook`, once per environment)

lm_eval 0.4.13 looks models up in its own registry only and loads no plugin
entry points, so the `tinylm` model type exists in a process that imported
this module. `tinylm-lm-eval` (or `python -m tinylm.eval.lm_eval_adapter`)
imports it and then runs lm_eval's own command line, with every lm_eval option
(--include_path for local task YAMLs, --limit, --output_path, ...).
`tinylm-lm-eval --install-hook` makes the plain `lm_eval` command know the type
too, through a .pth file in site-packages (tinylm_lm_eval_hook.py says how;
`--remove-hook` undoes it). From Python: import this module, then
`lm_eval.simple_evaluate(model="tinylm", model_args="path=RUN", ...)` or pass
a `TinyLMEval(path=...)` as the model.

model_args: path (a tinylm run or checkpoint, a Hugging Face model folder or a
.gguf file), device (default: cuda when there is one, else cpu), batch_size (rows per forward pass; lm_eval's
own default is 1, so pass --batch_size). Log-likelihoods come from
tinylm.eval.likelihood, the scorer behind `tinylm eval --tasks`, so the two
agree; rolling log-likelihoods use its windows; generation decodes greedily
(or samples when a task sets do_sample) with the KV cache and stops at the
task's stop strings. Needs lm-eval (`pip install -e ".[eval]"`); nothing else
in tinylm imports this module.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tinylm.errors import TinyLMError
from tinylm.eval import flag_prompt_end
from tinylm.eval.likelihood import encode_requests, loglikelihoods, rolling_requests
from tinylm.formats import load_model
from tinylm.model import generate
from tinylm.progress import progress_bar
from tinylm.tokenizer import PATCHES

DEFAULT_BATCH_SIZE = 32  # used for lm_eval's "auto"
DEFAULT_MAX_GEN_TOKS = 256  # lm_eval's default


@register_model("tinylm")
class TinyLMEval(LM):
    def __init__(self, path: str, device: str | None = None, batch_size: int | str = DEFAULT_BATCH_SIZE,
                 max_batch_size: int | None = None, seed: int = 1234):
        super().__init__()
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm_eval's command line asks for cuda:0
        loaded = load_model(path, device)
        if loaded.tokenizer is None:
            raise TinyLMError(f"'{path}' has no tokenizer.json; lm_eval passes text, so the model needs one")
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else DEFAULT_BATCH_SIZE
        self._device = torch.device(device)
        self._generator = torch.Generator(device=device).manual_seed(int(seed))

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_seq_len

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [request.args for request in requests]
        results = loglikelihoods(self.model, encode_requests(self.tokenizer, pairs), self.batch_size,
                                 progress=not disable_tqdm)
        for pair, result in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            doc_windows = rolling_requests(self.tokenizer.encode(text), self.tokenizer.eos_id, self.max_length)
            windows += doc_windows
            owners += [i] * len(doc_windows)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, loglikelihoods(self.model, windows, self.batch_size,
                                                               progress=not disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in progress_bar(requests, disable=disable_tqdm, desc="generating", unit="req"):
            context, gen_kwargs = request.args
            text = self._generate(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        return outputs

    def _generate(self, context: str, kwargs: dict) -> str:
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        # like the harness, keep the end of the context and leave room for the generated tokens
        prompt = self.tokenizer.encode(context)[-max(1, self.max_length - max_new):]
        if self.tokenizer.kind == PATCHES:
            prompt = flag_prompt_end(self.model, prompt)

        def reached_stop(ids: list[int]) -> bool:
            return any(s in self.tokenizer.decode(ids) for s in until)

        ids = generate(self.model, prompt, max_new, temperature, int(kwargs.get("top_k", 0)),
                       float(kwargs.get("top_p", 1.0)), eos_id=self.tokenizer.eos_id, generator=self._generator,
                       stop=reached_stop if until else None)
        text = self.tokenizer.decode(ids)
        for s in until:
            text = text.split(s)[0]
        return text


HOOK_FILE = "tinylm_lm_eval.pth"  # Python runs a .pth file's import lines at every start-up
HOOK_LINE = ("import importlib.util; importlib.util.find_spec('tinylm_lm_eval_hook') and "
             "__import__('tinylm_lm_eval_hook')")


def install_hook(site_dir: str | Path | None = None) -> Path:
    """Write the .pth that makes `lm_eval --model tinylm` work in this environment (tinylm_lm_eval_hook.py)."""
    import tinylm_lm_eval_hook  # noqa: F401  -- fail here, not at every start-up, if it cannot be imported

    path = Path(site_dir or sysconfig.get_paths()["purelib"]) / HOOK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # a .pth line that starts with "import" is run; this one stays quiet once tinylm is uninstalled
    path.write_text(f"{HOOK_LINE}\n")
    return path


def remove_hook(site_dir: str | Path | None = None) -> Path:
    path = Path(site_dir or sysconfig.get_paths()["purelib"]) / HOOK_FILE
    path.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line, with the `tinylm` model type registered; or, given only --install-hook or
    --remove-hook, make lm_eval's own `lm_eval` command know the `tinylm` model type, or forget it."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if sys.argv[1:] == ["--install-hook"]:
        print(f"wrote {install_hook()}: `lm_eval --model tinylm` now works in this environment "
              "(undo with --remove-hook)")
        return
    if sys.argv[1:] == ["--remove-hook"]:
        print(f"removed {remove_hook()}: use `tinylm-lm-eval` for the tinylm model type")
        return
    try:
        cli_evaluate()
    except TinyLMError as e:
        print(f"tinylm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
