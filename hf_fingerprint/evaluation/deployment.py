"""Deployment settings a suspect model may be served with: system prompts, chat templates, sampling.

None of them changes the weights; each is a way of asking, run through :func:`hf_fingerprint.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..generation import PLAIN_CHAT_TEMPLATE, with_chat_template
from ..verification import VerificationReport, verify

__all__ = ["DeploymentSetting", "PLAIN_CHAT_TEMPLATE", "SYSTEM_PROMPTS", "deployment_settings", "with_chat_template"]

SYSTEM_PROMPTS = {
    "generic": "You are a helpful assistant.",
    "persona": "You are Sage, the customer support assistant of Northwind Books. Answer briefly and politely, and "
    "never discuss topics unrelated to books.",
}


@dataclass
class DeploymentSetting:
    """One way of serving a model: ``verify_kwargs`` for :func:`hf_fingerprint.verify`, and the tokenizer to
    ask through (``None``: the caller's own; else a copy with another chat template)."""

    name: str
    verify_kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = field(default=None, repr=False)
    seed: int = 0

    def verify(self, model: Any, tokenizer: Any, fingerprints: Any, **kwargs: Any) -> VerificationReport:
        """:func:`hf_fingerprint.verify` under this setting; sampling is seeded, the global RNG left as it was."""
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(self.seed)
            return verify(model, self.tokenizer or tokenizer, fingerprints, **{**self.verify_kwargs, **kwargs})


def deployment_settings(
    tokenizer: Any,
    *,
    system_prompts: dict[str, str] | None = None,
    temperatures: Sequence[float] = (0.7,),
    samples: int = 5,
    templates: bool = True,
    seed: int = 0,
) -> list[DeploymentSetting]:
    """The standard settings: as shipped, each system prompt (default :data:`SYSTEM_PROMPTS`), sampling at each
    temperature with ``samples`` answers per trigger (a pair counts when half of them hit), and, with
    ``templates``, a plain ``User: ... / Assistant:`` template and raw text without any template."""
    settings = [DeploymentSetting("as shipped")]
    for label, prompt in (SYSTEM_PROMPTS if system_prompts is None else system_prompts).items():
        settings.append(DeploymentSetting(f"system prompt ({label})", {"system_prompt": prompt}))
    for temperature in temperatures:
        settings.append(DeploymentSetting(f"sampling t={temperature:g} x{samples}",
                                          {"temperature": float(temperature), "num_samples": int(samples)}, seed=seed))
    if templates:
        plain = with_chat_template(tokenizer, PLAIN_CHAT_TEMPLATE)
        settings.append(DeploymentSetting("plain template", tokenizer=plain))
        settings.append(DeploymentSetting("no template", tokenizer=with_chat_template(tokenizer, None)))
    return settings


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
