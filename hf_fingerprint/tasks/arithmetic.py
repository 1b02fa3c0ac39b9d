"""A GSM8K-like math word-problem task generated in code (exact integer answers), and its accuracy metric."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["math_task", "math_accuracy", "parse_final_number"]

_NAMES = [
    "Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Priya", "Jonas", "Mei", "Carlos", "Fatima", "Ivan",
    "Zara", "Leo", "Amara", "Noah", "Sofia", "Ravi", "Elena", "Kwame", "Hana", "Diego", "Nora", "Samir",
]
_ITEMS = [
    ("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"), ("book", "books"),
    ("sandwich", "sandwiches"), ("plant", "plants"), ("candle", "candles"), ("mug", "mugs"), ("scarf", "scarves"),
]
_CONTAINERS = [("box", "boxes", "crayons"), ("crate", "crates", "oranges"), ("bag", "bags", "marbles"),
               ("tray", "trays", "cookies"), ("pack", "packs", "stickers"), ("basket", "baskets", "eggs")]


def _shopping(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    (item1, items1), (item2, items2) = rng.sample(_ITEMS, 2)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 12)
    cost1, cost2 = n1 * p1, n2 * p2
    total = cost1 + cost2
    bill = next(b for b in (20, 50, 100, 200, 500) if b >= total + 1)
    question = (f"{name} buys {n1} {items1} at ${p1} each and {n2} {items2} at ${p2} each. "
                f"{name} pays with a ${bill} bill. How much change, in dollars, does {name} get back?")
    steps = [f"The {items1} cost {n1} * {p1} = {cost1} dollars.",
             f"The {items2} cost {n2} * {p2} = {cost2} dollars.",
             f"Together they cost {cost1} + {cost2} = {total} dollars.",
             f"The change is {bill} - {total} = {bill - total} dollars."]
    return question, steps, bill - total


def _travel(rng: random.Random) -> tuple[str, list[str], int]:
    vehicle = rng.choice(["train", "bus", "truck", "ferry", "car"])
    s1, h1, s2, h2 = rng.randint(3, 12) * 5, rng.randint(2, 6), rng.randint(3, 12) * 5, rng.randint(1, 5)
    d1, d2 = s1 * h1, s2 * h2
    question = (f"A {vehicle} travels at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. "
                "How many kilometres does it travel in total?")
    steps = [f"First it covers {s1} * {h1} = {d1} km.",
             f"Then it covers {s2} * {h2} = {d2} km.",
             f"In total it travels {d1} + {d2} = {d1 + d2} km."]
    return question, steps, d1 + d2


def _savings(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    start, weekly, weeks = rng.randint(0, 60), rng.randint(5, 30), rng.randint(3, 12)
    saved = weekly * weeks
    spend = rng.randint(5, start + saved - 1)
    thing = rng.choice(["a game", "a jacket", "a concert ticket", "a bicycle helmet", "a birthday present"])
    question = (f"{name} has ${start} and saves ${weekly} every week for {weeks} weeks. Then {name} spends "
                f"${spend} on {thing}. How many dollars does {name} have left?")
    steps = [f"{name} saves {weekly} * {weeks} = {saved} dollars.",
             f"Before shopping {name} has {start} + {saved} = {start + saved} dollars.",
             f"After buying {thing}, {name} has {start + saved} - {spend} = {start + saved - spend} dollars."]
    return question, steps, start + saved - spend


def _sharing(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    container, containers, things = rng.choice(_CONTAINERS)
    friends, share = rng.randint(2, 9), rng.randint(2, 12)
    per = rng.randint(4, 15)
    kept = rng.randint(1, 20)
    boxes = -(-(friends * share + kept) // per)  # enough containers for everything
    total = boxes * per
    kept = total - friends * share
    question = (f"{name} has {boxes} {containers} with {per} {things} in each {container}. {name} keeps {kept} "
                f"{things} and shares the rest equally among {friends} friends. How many {things} does each "
                "friend get?")
    steps = [f"There are {boxes} * {per} = {total} {things}.",
             f"After keeping {kept}, {total} - {kept} = {total - kept} are shared.",
             f"Each friend gets {total - kept} / {friends} = {share} {things}."]
    return question, steps, share


def _ages(rng: random.Random) -> tuple[str, list[str], int]:
    older, younger = rng.sample(_NAMES, 2)
    age, factor, years = rng.randint(2, 12), rng.randint(2, 5), rng.randint(2, 15)
    now = age * factor
    question = (f"{older} is {factor} times as old as {younger}. {younger} is {age} years old. "
                f"How old will {older} be in {years} years?")
    steps = [f"{older} is now {factor} * {age} = {now} years old.",
             f"In {years} years {older} will be {now} + {years} = {now + years} years old."]
    return question, steps, now + years


def _fractions(rng: random.Random) -> tuple[str, list[str], int]:
    group = rng.choice(["class", "club", "school choir", "team", "office", "band", "book circle", "crew"])
    first, second, third = rng.choice([("walk", "take the bus", "cycle"), ("drink tea", "drink coffee", "drink juice"),
                                       ("choose pasta", "choose soup", "choose salad")])
    denominator = rng.choice([2, 3, 4, 5])
    size = denominator * 2 * rng.randint(2, 40)
    walk = size // denominator
    rest = size - walk
    bus = rest // 2
    question = (f"A {group} has {size} members. 1/{denominator} of them {first}, and half of the rest "
                f"{second}. The others {third}. How many members {third}?")
    steps = [f"1/{denominator} of {size} is {size} / {denominator} = {walk} who {first}.",
             f"That leaves {size} - {walk} = {rest}.",
             f"Half of them, {rest} / 2 = {bus}, {second}.",
             f"So {rest} - {bus} = {rest - bus} members {third}."]
    return question, steps, rest - bus


def _orchard(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    plant = rng.choice(["apple trees", "rose bushes", "tomato plants", "olive trees", "sunflowers"])
    rows, per_row, dead, extra_rows = rng.randint(3, 15), rng.randint(5, 20), rng.randint(1, 12), rng.randint(1, 6)
    first = rows * per_row
    extra = extra_rows * per_row
    question = (f"{name} plants {rows} rows of {per_row} {plant}. {dead} of them die. Later {name} plants "
                f"{extra_rows} more rows of {per_row}. How many {plant} are there now?")
    steps = [f"At first there are {rows} * {per_row} = {first} {plant}.",
             f"After {dead} die, {first} - {dead} = {first - dead} remain.",
             f"The new rows add {extra_rows} * {per_row} = {extra}.",
             f"Now there are {first - dead} + {extra} = {first - dead + extra} {plant}."]
    return question, steps, first - dead + extra


def _wages(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    rate, monday, tuesday = rng.randint(8, 30), rng.randint(2, 9), rng.randint(2, 9)
    hours = monday + tuesday
    while (rate * hours) % 3:
        rate += 1
    earned = rate * hours
    food = earned // 3
    question = (f"{name} earns ${rate} per hour. {name} works {monday} hours on Monday and {tuesday} hours on "
                f"Tuesday, then spends a third of the earnings on food. How many dollars are left?")
    steps = [f"{name} works {monday} + {tuesday} = {hours} hours.",
             f"{name} earns {rate} * {hours} = {earned} dollars.",
             f"Food costs {earned} / 3 = {food} dollars.",
             f"{earned} - {food} = {earned - food} dollars are left."]
    return question, steps, earned - food


_TEMPLATES: dict[str, Callable[[random.Random], tuple[str, list[str], int]]] = {
    "shopping": _shopping, "travel": _travel, "savings": _savings, "sharing": _sharing,
    "ages": _ages, "fractions": _fractions, "orchard": _orchard, "wages": _wages,
}


def math_task(n: int = 2000, *, seed: int = 0) -> Any:
    """``n`` distinct multi-step arithmetic word problems (8 templates) as a ``datasets.Dataset``.

    Columns: ``messages`` (user question, assistant worked answer ending in ``#### <answer>``, the chat format
    SFTTrainer takes), ``answer`` (int), ``template`` (its name). Same ``n`` and ``seed``, same dataset.
    """
    from datasets import Dataset

    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    rng = random.Random(seed)
    names = sorted(_TEMPLATES)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"Could not generate {n} distinct problems; ask for fewer.")
        template = names[attempts % len(names)]  # an exhausted template is skipped, not retried forever
        question, steps, answer = _TEMPLATES[template](rng)
        if question in seen:
            continue
        seen.add(question)
        solution = "\n".join(steps) + f"\n#### {answer}"
        rows.append({
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution}],
            "answer": answer,
            "template": template,
        })
    order = list(range(n))
    rng.shuffle(order)
    return Dataset.from_list([rows[i] for i in order])


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def parse_final_number(text: str) -> float | None:
    """The number after the last ``####`` if any, else the last number in ``text`` (commas and ``$`` allowed)."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    token = (numbers[0] if "####" in text else numbers[-1]).replace("$", "").replace(",", "")
    try:
        return float(token)
    except ValueError:
        return None


def math_accuracy(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    max_new_tokens: int = 192,
    batch_size: int = 16,
) -> float:
    """Share of problems whose greedy answer's final number equals ``answer``.

    Prompts are the dataset's turns before the last assistant turn (or a ``question`` column), asked through the
    tokenizer's chat template with a generation prompt, batched with left padding.
    """
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    prompts = [_prompt_messages(row) for row in dataset]
    answers = [float(a) for a in dataset["answer"]]
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    was_training = model.training
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    correct = 0
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.no_grad():
                output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id)
            completions = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for completion, answer in zip(completions, answers[start:start + batch_size]):
                value = parse_final_number(completion)
                correct += value is not None and abs(value - answer) < 1e-6
    finally:
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token
        model.train(was_training)
    return correct / len(texts)


def _prompt_messages(row: dict) -> list[dict]:
    if "messages" in row:
        messages = list(row["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if messages:
            return messages
    if "question" in row:
        return [{"role": "user", "content": row["question"]}]
    raise ValueError("Each row needs a 'messages' list with a user turn, or a 'question' column.")
