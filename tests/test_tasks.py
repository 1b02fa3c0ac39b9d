"""Offline downstream tasks: the generated math task, its accuracy metric, the stdlib-docs instruction task."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import torch
from torch import nn

from hf_fingerprint.models import tiny_model
from hf_fingerprint.tasks import (
    instruction_task,
    math_accuracy,
    math_task,
    parse_final_number,
    stdlib_documentation,
    train_eval_split,
)

# Tiny models run faster on one thread, and the test machine's cores are shared (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


_STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_math_task_is_deterministic_distinct_and_arithmetically_right():
    data = math_task(400, seed=3)
    assert len(data) == 400
    assert data["messages"] == math_task(400, seed=3)["messages"]
    assert data["messages"] != math_task(400, seed=4)["messages"]
    questions = [m[0]["content"] for m in data["messages"]]
    assert len(set(questions)) == 400
    assert set(data["template"]) == {
        "shopping", "travel", "savings", "sharing", "ages", "fractions", "orchard", "wages"
    }
    for messages, answer in zip(data["messages"], data["answer"]):
        assert [m["role"] for m in messages] == ["user", "assistant"]
        solution = messages[1]["content"]
        steps = _STEP.findall(solution)
        assert len(steps) >= 2, solution  # multi-step
        for a, op, b, result in steps:
            a, b, result = int(a), int(b), int(result)
            expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
            assert expected == result, solution
        assert solution.endswith(f"#### {answer}")
        assert isinstance(answer, int) and answer > 0
        assert int(steps[-1][3]) == answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7\n#### 7", 7.0),
        ("#### 1,234 dollars", 1234.0),
        ("The answer is $56.", 56.0),
        ("first 12 then -5", -5.0),
        ("#### 8\nthen 99", 8.0),
        ("no number here", None),
    ],
)
def test_parse_final_number(text, expected):
    assert parse_final_number(text) == expected


class _Oracle(nn.Module):
    """A stand-in language model that answers each prompt with the true answer (or a wrong one), and checks that
    prompts arrive left-padded."""

    def __init__(self, tokenizer, answers_by_question: dict[str, int], offset: int = 0):
        super().__init__()
        self.tokenizer, self.answers, self.offset = tokenizer, answers_by_question, offset
        self.anchor = nn.Parameter(torch.zeros(1))
        self.batches = 0

    @property
    def device(self):
        return self.anchor.device

    def generate(self, input_ids, attention_mask, **kwargs):
        assert kwargs["do_sample"] is False
        self.batches += 1
        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded"
        rows = []
        for ids in input_ids:
            prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
            answer = next(a for q, a in self.answers.items() if q in prompt) + self.offset
            rows.append(self.tokenizer(f"Let me think.\n#### {answer}", add_special_tokens=False)["input_ids"])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        completions = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, completions], dim=1)


def test_math_accuracy_scores_batches_with_left_padding():
    _, tokenizer = tiny_model()
    tokenizer.padding_side = "right"
    data = math_task(10, seed=1)
    answers = {m[0]["content"]: a for m, a in zip(data["messages"], data["answer"])}
    right = _Oracle(tokenizer, answers)
    assert math_accuracy(right, tokenizer, data, batch_size=4) == 1.0
    assert right.batches == 3
    assert math_accuracy(_Oracle(tokenizer, answers, offset=1), tokenizer, data, batch_size=4) == 0.0
    assert tokenizer.padding_side == "right"  # restored


def test_math_accuracy_runs_a_real_model_greedily():
    model, tokenizer = tiny_model()
    model.train()
    data = math_task(3, seed=2)
    first = math_accuracy(model, tokenizer, data, max_new_tokens=4, batch_size=2)
    assert first == math_accuracy(model, tokenizer, data, max_new_tokens=4, batch_size=3)
    assert 0.0 <= first <= 1.0
    assert model.training  # restored


def test_instruction_task_answers_are_real_docstrings():
    entries = stdlib_documentation()
    assert len(entries) >= 2000
    data = instruction_task(300, seed=5)
    assert len(data) == 300
    assert data["messages"] == instruction_task(300, seed=5)["messages"]
    assert set(data["kind"]) >= {"function", "class", "method"}
    assert len(instruction_task(100_000)) == len(entries)  # asking for more returns all
    checked = 0
    for row in data.select(range(60)):
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        assert f"{row['name']}" in question
        assert len(answer) >= 40
        if row["kind"] in ("topic", "module"):
            continue
        obj = _resolve(row["module"], row["name"])
        doc = " ".join(inspect.getdoc(obj).split())
        assert " ".join(answer.split()) in doc
        checked += 1
    assert checked >= 30


def _resolve(module_name: str, name: str):
    module = importlib.import_module(module_name)
    parts = name.split(".")
    for start in range(len(parts)):  # the display name may be an alias of the module (os for posix)
        obj = module
        try:
            for part in parts[start:]:
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError(f"cannot resolve {name} in {module_name}")


def test_train_eval_split_keeps_groups_apart():
    data = math_task(200, seed=0)
    parts = train_eval_split(data, eval_fraction=0.2, seed=1, group_column="template")
    train_groups, eval_groups = set(parts["train"]["template"]), set(parts["eval"]["template"])
    assert not train_groups & eval_groups
    assert len(parts["train"]) + len(parts["eval"]) == 200
    assert len(parts["eval"]) >= 40
    plain = train_eval_split(data, eval_fraction=0.25, seed=1)
    assert (len(plain["train"]), len(plain["eval"])) == (150, 50)
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(data, eval_fraction=1.5)
