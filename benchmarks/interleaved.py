"""Trainers timed step by step in turn on one model: the step-time harness of fsft_overhead.py and paper_shapes.py.

Each trainer trains in a thread of its own and a :class:`Baton` lets one optimizer step run at a time, each trainer
once per round, so every trainer is timed in the same minutes and a drift of the host's speed (+-25 % between
processes run one after another on the lent GPU machine, up to 1.5x on the shared CPU) falls on all alike. The
paired ratio, the median over rounds of a trainer's step over the SFTTrainer step of the same round, cancels the
drift within a round.
"""

from __future__ import annotations

import gc
import random
import statistics
import threading
import time
import traceback
from typing import Any

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Baton:
    """Whose turn it is to run an optimizer step, over trainers that each train in a thread of their own: one step
    at a time, every trainer once per round. With ``shuffle`` each round takes the trainers in a fresh random order
    (seeded): a step's time depends a little on the step before it (on a CPU the step after a heavier trainer's
    was ~10 % slower), and a fixed order would charge that to the same trainer every round."""

    def __init__(self, count: int, *, shuffle: bool = False, seed: int = 0):
        self.condition = threading.Condition()
        self.finished = [False] * count
        self.shuffle = shuffle
        self.random = random.Random(seed)
        self.order: list[int] = []
        self._new_round()

    def _new_round(self) -> None:
        order = list(range(len(self.finished)))
        if self.shuffle:
            self.random.shuffle(order)
        self.order = [i for i in order if not self.finished[i]]

    @property
    def turn(self) -> int | None:
        return self.order[0] if self.order else None

    def wait(self, index: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == index)

    def pass_on(self, index: int, *, finished: bool = False) -> None:
        with self.condition:
            self.finished[index] |= finished
            if self.turn == index:
                self.order.pop(0)
            self.order = [i for i in self.order if not self.finished[i]]
            if not self.order:
                self._new_round()
            self.condition.notify_all()


def make_trainer(model: Any, tokenizer: Any, config: dict | None, *, settings: dict, data: Any, deltas: Any,
                 fingerprints: Any, callbacks: list) -> Any:
    """TRL's SFTTrainer (``config`` None) or an FSFTTrainer with the FSFT options ``config``, given the fingerprint
    pairs only when its anchor or replay uses them."""
    from trl import SFTConfig, SFTTrainer

    from hf_fingerprint.fsft import FSFTConfig, FSFTTrainer

    if config is None:
        return SFTTrainer(model, args=SFTConfig(**settings), train_dataset=data, processing_class=tokenizer,
                          callbacks=callbacks)
    uses_pairs = config.get("fsft_anchor_lambda", 0) > 0 or config.get("fsft_replay_lambda", 0) > 0
    return FSFTTrainer(model, args=FSFTConfig(**settings, **config), train_dataset=data, processing_class=tokenizer,
                       callbacks=callbacks, fingerprint_subspace=deltas,
                       fingerprints=fingerprints if uses_pairs else None)


def interleaved_step_times(
    model: Any,
    tokenizer: Any,
    configs: dict[str, dict | None],
    *,
    settings: dict,
    data: Any,
    deltas: Any,
    fingerprints: Any,
    shuffle: bool = True,
) -> dict[str, list[float]]:
    """Seconds of every optimizer step of each trainer, the trainers interleaved step by step on ``model``.

    ``configs`` maps a name to FSFT options (``None``: TRL's SFTTrainer, named "SFTTrainer" for :func:`summarise`);
    ``settings`` are the SFTConfig arguments all share. Each trainer has its own optimizer; the model is shared, so
    use a learning rate that barely moves it. ``shuffle``: each round in a fresh random order (:class:`Baton`); a
    garbage collection runs before every timed step. Raises with every trainer's traceback if one failed.
    """
    from transformers import TrainerCallback

    baton = Baton(len(configs), shuffle=shuffle)

    class Turn(TrainerCallback):
        """Times its trainer's steps, one at a time among all trainers: the baton passes on when the trainer is
        about to start its next step (or has returned from ``train``), so what a trainer does between two steps
        (the next batch, logging, releasing hooks) never runs beside another trainer's timed step."""

        def __init__(self, index: int):
            self.index = index
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            if self.times:
                baton.pass_on(self.index)
            baton.wait(self.index)
            gc.collect()  # not inside the timed step, whoever left the garbage
            sync()
            self.began = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync()
            self.times.append(time.perf_counter() - self.began)

    turns = [Turn(index) for index in range(len(configs))]
    trainers = [make_trainer(model, tokenizer, config, settings=settings, data=data, deltas=deltas,
                             fingerprints=fingerprints, callbacks=[turn])
                for turn, config in zip(turns, configs.values())]
    errors: dict[str, str] = {}

    def train(index: int, name: str) -> None:
        try:
            trainers[index].train()
        except Exception:
            errors[name] = traceback.format_exc()[-2000:]
        finally:
            baton.pass_on(index, finished=True)

    threads = [threading.Thread(target=train, args=(i, name)) for i, name in enumerate(configs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(f"{name}: {text}" for name, text in errors.items()))
    for trainer in trainers:
        trainer.accelerator.free_memory()  # accelerate keeps references to the model and optimizer otherwise
    return {name: turn.times for name, turn in zip(configs, turns)}


def summarise(times: dict[str, list[float]], warmup: int) -> list[dict]:
    """Median step, its ratio to SFTTrainer's median and the paired ratio (median over rounds), per trainer."""
    kept = {name: t[warmup:] for name, t in times.items()}
    base = kept["SFTTrainer"]
    return [dict(config=name, median_s=statistics.median(t), ratio=statistics.median(t) / statistics.median(base),
                 mean_s=statistics.mean(t), mean_ratio=statistics.mean(t) / statistics.mean(base),
                 paired_ratio=statistics.median(a / b for a, b in zip(t, base)), steps=len(t), times=t)
            for name, t in kept.items()]
