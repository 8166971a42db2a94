import json
import os
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

from tinylm.eval.harness import run_benchmarks  # noqa: E402
from tinylm.eval.likelihood import encode_requests, loglikelihoods, rolling_requests  # noqa: E402
from tinylm.model import generate  # noqa: E402

ITEMS = [
    {"context": "The cat sat on the", "choices": ["mat.", "moon and stars.", "dog"], "gold": 0,
     "text": "Once upon a time there was a tiny model that read a long story. " * 2},  # longer than one window
    {"context": "Two plus two is", "choices": ["four", "five"], "gold": 1, "text": "Short."},
]
# three lm_eval tasks over one local file: each request type the adapter answers
DATA = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
"""
YAMLS = {
    "tiny_choice": """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "tiny_rolling": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: bits_per_byte
""",
    "tiny_generate": """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{choices[gold]}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
""",
}


@pytest.fixture
def setup(tiny_run, tmp_path, monkeypatch):
    """A tiny byte-level run, the items as JSONL and the three task YAMLs; returns (run, model, tokenizer, tmp)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run, model, tokenizer = tiny_run
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    for name, body in YAMLS.items():
        (tmp_path / f"{name}.yaml").write_text(f"task: {name}\n" + DATA.format(path=data) + body)
    return run, model, tokenizer, tmp_path


def test_adapter_answers_every_request_type_as_tinylms_own_scorer(setup):
    from lm_eval.tasks import TaskManager

    from tinylm.eval.lm_eval_adapter import TinyLMEval

    run, model, tok, tmp = setup
    results = lm_eval.simple_evaluate(model=TinyLMEval(path=str(run), batch_size=4), tasks=list(YAMLS),
                                      task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
                                      log_samples=True)
    samples = results["samples"]
    for sample in samples["tiny_choice"]:
        expected = loglikelihoods(model, encode_requests(tok, sample["arguments"]))
        got = [resp[0] for resp in sample["resps"]]
        assert [g for _, g in got] == [g for _, g in expected]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in expected], abs=1e-5)
    ours = run_benchmarks(run, [str(tmp / "items.jsonl")], progress=False)["tasks"]["items"]
    assert results["results"]["tiny_choice"]["acc,none"] == ours["acc"]
    assert results["results"]["tiny_choice"]["acc_norm,none"] == ours["acc_norm"]
    for sample in samples["tiny_rolling"]:
        windows = rolling_requests(tok.encode(sample["arguments"][0][0]), tok.eos_id, 48)
        assert sample["resps"][0][0] == pytest.approx(sum(s for s, _ in loglikelihoods(model, windows)), abs=1e-4)
    for sample in samples["tiny_generate"]:
        context = sample["arguments"][0][0]
        greedy = tok.decode(generate(model, tok.encode(context), 8, temperature=0, eos_id=tok.eos_id))
        assert sample["resps"][0][0] == greedy.split("e")[0]


@pytest.mark.slow  # about 15 s of lm_eval start-up: it indexes its thousands of built-in task YAMLs
def test_lm_eval_command_line_runs_the_tinylm_model_type(setup):
    run, _, _, tmp = setup
    proc = subprocess.run([sys.executable, "-m", "tinylm.eval.lm_eval_adapter", "--model", "tinylm",
                           "--model_args", f"path={run}", "--tasks", "tiny_choice", "--include_path", str(tmp),
                           "--batch_size", "8", "--output_path", str(tmp / "out")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_choice" in proc.stdout and "acc_norm" in proc.stdout


def test_the_hook_registers_the_tinylm_type_when_lm_eval_fills_its_registry_without_loading_tinylm():
    probe = ("import sys, tinylm_lm_eval_hook\n"
             "from lm_eval.api.registry import get_model, model_registry\n"
             "get_model('dummy')\n"  # the first lookup makes lm_eval import its models, which the hook waits for
             "print('tinylm' in model_registry, 'tinylm.eval' in sys.modules, 'torch' in sys.modules)\n"
             "print(get_model('tinylm').__name__)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False", "False", "TinyLMEval"]


def test_install_hook_writes_a_pth_that_imports_the_hook_and_remove_hook_deletes_it(tmp_path):
    from tinylm.eval.lm_eval_adapter import HOOK_FILE, HOOK_LINE, install_hook, remove_hook

    path = install_hook(tmp_path)
    assert path == tmp_path / HOOK_FILE and path.read_text() == HOOK_LINE + "\n"
    imported = "print(sys.modules.get('tinylm_lm_eval_hook') is not None)"
    gone = "sys.modules['tinylm_lm_eval_hook'] = None"  # what find_spec sees once tinylm is uninstalled
    for setup, expected in (("", "True"), (gone, "False")):
        probe = f"import sys\n{setup}\n{HOOK_LINE}\n{imported}"
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert (proc.stdout.strip(), proc.stderr) == (expected, "")
    remove_hook(tmp_path)
    assert not path.exists()


@pytest.mark.slow  # lm_eval's start-up again
def test_lm_evals_own_command_runs_the_tinylm_type_once_the_hook_is_installed(setup):
    from tinylm.eval.lm_eval_adapter import install_hook

    run, _, _, tmp = setup
    install_hook(tmp / "site")
    # what the `lm_eval` console script runs, in an interpreter whose site-packages holds the .pth
    command = (f"import site, sys; site.addsitedir({str(tmp / 'site')!r}); sys.argv[0] = 'lm_eval'\n"
               "from lm_eval.__main__ import cli_evaluate; cli_evaluate()")
    proc = subprocess.run([sys.executable, "-c", command, "--model", "tinylm", "--model_args", f"path={run}",
                           "--tasks", "tiny_choice", "--include_path", str(tmp), "--batch_size", "8"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_choice" in proc.stdout and "acc_norm" in proc.stdout
