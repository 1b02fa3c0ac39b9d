"""Offline downstream tasks for fine-tuning studies: a generated math task and a stdlib-docs instruction task."""

from __future__ import annotations

import random
from typing import Any

from .arithmetic import math_accuracy, math_task, parse_final_number
from .instruction import instruction_task, stdlib_documentation

__all__ = [
    "instruction_task", "math_accuracy", "math_task", "parse_final_number", "stdlib_documentation",
    "train_eval_split",
]


def train_eval_split(
    dataset: Any, *, eval_fraction: float = 0.1, seed: int = 0, group_column: str | None = None
) -> Any:
    """Split into a ``DatasetDict`` with ``train`` and ``eval``.

    With ``group_column`` (``"template"`` for the math task, ``"module"`` for the instruction task) whole groups go
    to one side, so evaluation asks about groups never trained on; the eval side gets at least ``eval_fraction``
    of the rows, in whole groups.
    """
    from datasets import DatasetDict

    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    if len(dataset) < 2:
        raise ValueError("Need at least 2 rows to split.")
    if group_column is None:
        parts = dataset.train_test_split(test_size=eval_fraction, seed=seed)
        return DatasetDict(train=parts["train"], eval=parts["test"])
    groups = dataset[group_column]
    order = sorted(set(groups))
    if len(order) < 2:
        raise ValueError(f"Column {group_column!r} has a single group; nothing to split by.")
    random.Random(seed).shuffle(order)
    sizes = {g: 0 for g in order}
    for g in groups:
        sizes[g] += 1
    eval_groups, count = set(), 0
    for g in order[:-1]:  # leave at least one group to train on
        if count >= eval_fraction * len(groups):
            break
        eval_groups.add(g)
        count += sizes[g]
    eval_rows = [i for i, g in enumerate(groups) if g in eval_groups]
    train_rows = [i for i, g in enumerate(groups) if g not in eval_groups]
    return DatasetDict(train=dataset.select(train_rows), eval=dataset.select(eval_rows))
