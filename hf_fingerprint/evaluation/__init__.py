"""Evaluation harness: model modifications a fingerprint must survive, the suppression attack, harmlessness
measures, the near-miss study, and ``evaluate`` over the five dimensions of METHOD.md section 7.

Every modification returns a modified copy (``inplace=True`` to change the model itself). ``finetune`` imports
TRL on first use.
"""

from ._common import EvaluationError, relative_weight_change
from .attacks import STRATEGIES, AttackReport, SuppressedModel, measure_attack, suppression_attack
from .deployment import PLAIN_CHAT_TEMPLATE, SYSTEM_PROMPTS, DeploymentSetting, deployment_settings, with_chat_template
from .evaluate import (
    DEFAULT_DIMENSIONS,
    DIMENSIONS,
    PERSISTENCE_RUNS,
    EvaluationReport,
    PersistenceRun,
    evaluate,
    robustness_modifications,
)
from .finetuning import finetune
from .harmlessness import (
    Agreement,
    AnswerAgreement,
    agreement,
    answer_agreement,
    held_out_texts,
    math_score,
    perplexity,
)
from .merging import merge_dare, merge_linear, merge_ties
from .near_miss import NearMissBucket, NearMissStudy, near_miss_study
from .pruning import prune_magnitude
from .quantization import fake_quantize, quantize_4bit, quantize_int8

__all__ = [
    "Agreement", "AnswerAgreement", "AttackReport", "DEFAULT_DIMENSIONS", "DIMENSIONS", "DeploymentSetting",
    "EvaluationError", "EvaluationReport", "NearMissBucket", "NearMissStudy", "PERSISTENCE_RUNS", "PLAIN_CHAT_TEMPLATE",
    "PersistenceRun", "STRATEGIES",
    "SYSTEM_PROMPTS", "SuppressedModel", "agreement", "answer_agreement", "deployment_settings", "evaluate",
    "fake_quantize", "finetune", "held_out_texts", "math_score", "measure_attack", "merge_dare", "merge_linear",
    "merge_ties", "near_miss_study", "perplexity", "prune_magnitude", "quantize_4bit", "quantize_int8",
    "relative_weight_change", "robustness_modifications", "suppression_attack", "with_chat_template",
]
