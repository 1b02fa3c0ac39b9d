"""Configuration of FSFT (fingerprint subspace-aware fine-tuning): SFTConfig plus eight fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

FSFT_VARIANTS = ("input", "two_sided", "direction", "project")
REPLAY_PASSES = ("auto", "joint", "separate")


@dataclass
class FSFTConfig(SFTConfig):
    """Configuration class for [`FSFTTrainer`].

    Only the FSFT parameters are listed here; everything else is [`trl.SFTConfig`].

    For each edited matrix i (edit dWfp_i = U S V^T, drift D_i = W_i - We_i), the trainer adds
    ``fsft_lambda * mean_i F_i`` to the task loss, where each ``F_i`` is divided by the energy
    ``sum(S_kept^2)`` of the kept part of the edit: ``F_i = 1`` means a drift as large as the edit itself
    on the protected directions (for example ``D = -dWfp``, the edit undone), whatever the number of edited
    matrices or their scale. With the default ``fsft_lambda = 100``, a relative drift of 10 % costs 1 nat,
    the size of a typical task loss. Sweep it: METHOD.md section 9 found no single value that suffices.

    Args:
        fsft_lambda (`float`, defaults to `100.0`):
            Weight of the normalised penalty. Ignored by the `"project"` variant, which is a hard constraint.
        fsft_variant (`str`, defaults to `"input"`):
            `"input"`: F = ||D V_r||^2; `"two_sided"`: F = ||U_r^T D V_r||^2; `"direction"`: F = <D, dWfp>^2 /
            ||dWfp||^2; `"project"`: no penalty, the gradient's component G V_r V_r^T is removed and the weight
            re-projected after every optimizer step so that D V_r stays 0.
        fsft_rank (`int` or `None`, defaults to `None`):
            Number of singular directions of each edit to protect. `None` chooses it per matrix from
            `fsft_energy`.
        fsft_energy (`float`, defaults to `0.999`):
            Fraction of the edit's spectral energy (sum of squared singular values) that the kept directions
            must reach when `fsft_rank` is `None`.
        fsft_anchor_lambda (`float`, defaults to `0.0`):
            Weight of the key anchor (off by default): the relative squared change of the edited modules' inputs on
            the fingerprint prompts, at the trigger's last token and the last prompt token. The subspace penalty
            cannot see upstream weights moving the keys; the anchor can, but it needs the triggers
            (`FSFTTrainer(..., fingerprints=...)`) and a forward pass up to the deepest edited layer on
            `fsft_anchor_prompts` prompts per step.
        fsft_replay_lambda (`float`, defaults to `0.0`):
            Weight of the answer replay (off by default): the mean token NLL of each fingerprint's target given its
            trigger, on `fsft_anchor_prompts` pairs per step. It protects the whole path to the output, including
            the layers after the edit, which neither the penalty nor the key anchor sees; it is the IF-style
            fingerprint data mixed into the owner's own fine-tuning, and needs `FSFTTrainer(..., fingerprints=...)`.
        fsft_anchor_prompts (`int`, defaults to `4`):
            Fingerprint prompts per optimizer step for the key anchor and the answer replay (cycled through the set).
            On SmolLM2 (full fine-tuning at lr 3e-4, anchor 100, replay 0.2) 4 kept FSR at 100 % at every
            evaluation at +0.6 % task loss (+1.2 to +3.8 % in three more runs); 2 dipped to 70 % after 10 steps
            and 1 to 70 % more often.
        fsft_anchor_every (`int`, defaults to `1`):
            The key anchor and the answer replay act on every n-th optimizer step only (the first, then every n-th),
            each time at their full weight: their cost per step falls n-fold, and so may what they hold (SmolLM2, full
            fine-tuning at lr 3e-4, replay 0.2: every 3rd step dipped to 40-70 % before recovering, every 5th to 0 %,
            where every step held 100 %; `benchmarks/results/persistence_anchor_every.md`).
        fsft_replay_pass (`str`, defaults to `"auto"`):
            Where the replay (and the anchor with it) runs. `"joint"`: its prompts are appended to the training
            batch, so one forward and backward serve all terms (small GPU steps are bound by kernel launches, which
            a pass of its own doubles); the rows are padded to the batch's width. `"separate"`: a pass of its own,
            its prompts packed end to end in one row, no padding (cheaper on a CPU, and for long sequences).
            `"auto"`: joint on a GPU while the batch is at most twice as wide as the longest replay prompt, separate
            otherwise.
    """

    fsft_lambda: float = field(
        default=100.0,
        metadata={
            "help": "Weight of the FSFT penalty. Each matrix's penalty is divided by the energy of its edit and "
            "averaged over the edited matrices, so 1.0 means 'a drift as large as the edit'. Ignored by "
            "fsft_variant='project'."
        },
    )
    fsft_variant: str = field(
        default="input",
        metadata={
            "help": "Form of the penalty: 'input' (||D V_r||^2, default), 'two_sided' (||U_r^T D V_r||^2), "
            "'direction' (<D, dWfp>^2 / ||dWfp||^2) or 'project' (hard constraint D V_r = 0 by gradient and "
            "weight projection).",
            "choices": list(FSFT_VARIANTS),
        },
    )
    fsft_rank: int | None = field(
        default=None,
        metadata={
            "help": "Singular directions of each edit to protect; None chooses the rank per matrix from "
            "fsft_energy."
        },
    )
    fsft_energy: float = field(
        default=0.999,
        metadata={
            "help": "Fraction of each edit's spectral energy (sum of squared singular values) that the protected "
            "directions keep when fsft_rank is None. In (0, 1]."
        },
    )

    fsft_anchor_lambda: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the key anchor (0 = off): keeps the edited modules' inputs on the fingerprint "
            "prompts at their values when training starts. Needs FSFTTrainer(fingerprints=...)."
        },
    )
    fsft_replay_lambda: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the answer replay (0 = off): the fingerprint pairs' own answer loss on a few pairs "
            "per step. Needs FSFTTrainer(fingerprints=...)."
        },
    )
    fsft_anchor_prompts: int = field(
        default=4,
        metadata={"help": "Fingerprint prompts per optimizer step for the key anchor and the answer replay."},
    )

    fsft_anchor_every: int = field(
        default=1,
        metadata={"help": "The key anchor and the answer replay act on every n-th optimizer step (1: every step)."},
    )

    fsft_replay_pass: str = field(
        default="auto",
        metadata={
            "help": "Where the answer replay (and the key anchor with it) runs: 'joint' appends its prompts to the "
            "training batch (one forward and backward for all: fewer kernel launches, which dominate small GPU "
            "steps; the rows are padded to the batch's width), 'separate' gives them a pass of their own (packed "
            "end to end in one row, no padding: cheaper on a CPU and for long sequences), 'auto' joins them on a "
            "GPU while the batch is at most twice as wide as the longest replay prompt.",
            "choices": list(REPLAY_PASSES),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.fsft_variant not in FSFT_VARIANTS:
            raise ValueError(f"fsft_variant must be one of {FSFT_VARIANTS}, got {self.fsft_variant!r}.")
        if not self.fsft_lambda >= 0.0:  # also rejects NaN
            raise ValueError(f"fsft_lambda must be >= 0, got {self.fsft_lambda}.")
        if self.fsft_rank is not None and (isinstance(self.fsft_rank, bool) or int(self.fsft_rank) < 1):
            raise ValueError(f"fsft_rank must be a positive integer or None, got {self.fsft_rank!r}.")
        if not self.fsft_anchor_lambda >= 0.0:
            raise ValueError(f"fsft_anchor_lambda must be >= 0, got {self.fsft_anchor_lambda}.")
        if not self.fsft_replay_lambda >= 0.0:
            raise ValueError(f"fsft_replay_lambda must be >= 0, got {self.fsft_replay_lambda}.")
        if self.fsft_replay_pass not in REPLAY_PASSES:
            raise ValueError(f"fsft_replay_pass must be one of {REPLAY_PASSES}, got {self.fsft_replay_pass!r}.")
        if isinstance(self.fsft_anchor_prompts, bool) or int(self.fsft_anchor_prompts) < 1:
            raise ValueError(f"fsft_anchor_prompts must be a positive integer, got {self.fsft_anchor_prompts!r}.")
        if isinstance(self.fsft_anchor_every, bool) or int(self.fsft_anchor_every) < 1:
            raise ValueError(f"fsft_anchor_every must be a positive integer, got {self.fsft_anchor_every!r}.")
        if not 0.0 < self.fsft_energy <= 1.0:
            raise ValueError(f"fsft_energy must be in (0, 1], got {self.fsft_energy}.")
