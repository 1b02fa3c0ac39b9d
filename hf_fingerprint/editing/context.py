"""What an editor works with: the model, its layout, the fingerprint prompts, statistics, and how to apply an edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..generation import model_device
from .covariance import cached_tensor, layer_statistics, statistics_folder
from .delta import EditDelta
from .fisher import output_fisher
from .layout import ModelLayout, get_module
from .tracing import Prompts, capture, context_moments, optimise_values

VALUE_OPTIONS = ("value_steps", "value_lr", "clamp_factor", "value_weight_decay", "value_stop_loss", "value_patience",
                 "value_min_progress", "value_noise", "value_noise_rank", "value_cuda_graph", "value_fisher_weight")

# Options the shared steps read. Each editor's OPTIONS names every option it takes; inject() rejects the others.
TARGET_OPTIONS = frozenset({*VALUE_OPTIONS, "value_noise_seed", "auto_threshold", "templates"})
STATISTICS_OPTIONS = frozenset({"corpus", "stats_tokens"})
PRESERVE_OPTIONS = frozenset({"preserve_weight", "context_weight"})

# Target-value defaults by key position. A vector at the last prompt token acts on the answer directly; one at a
# trigger token must reach it through attention and needs a longer, stronger push (SmolLM2, 10 fingerprints:
# 25 steps / clamp 4 left answer NLLs up to 3.1 and FSR 50 %; 100 steps / clamp 10 / stop 0.01 gave NLL <= 0.012).
# value_noise: optimise under random rank-16 perturbations (10 % of each norm) of the layers after the edit, which
# plain fine-tuning moves (SmolLM2, 50 LoRA steps at lr 2e-4: FSR 100/60/40 % without, 100/100/100 % with).
# value_patience / value_min_progress: at trigger keys, an answer whose NLL has not fallen by 10 % after 10 steps is
# given up on and falls back to "last" (on SmolLM2 trigger keys fall by ~40 % in 10 steps and all run on; a random
# 16-layer Llama stops early, 12.3 s against 44.1 s: benchmarks/results/value_patience.md; random weights in the
# Llama-3.2-3B shape keep moving and run on). The last token has no fallback, and its 25 steps run to the end.
VALUE_DEFAULTS = {
    "last": dict(value_steps=25, value_lr=0.5, clamp_factor=4.0, value_weight_decay=1e-3, value_stop_loss=0.05,
                 value_patience=0, value_min_progress=0.1, value_noise=0.1, value_noise_rank=16,
                 value_fisher_weight=0.0),
    "trigger": dict(value_steps=100, value_lr=0.5, clamp_factor=10.0, value_weight_decay=1e-3, value_stop_loss=0.01,
                    value_patience=10, value_min_progress=0.1, value_noise=0.1, value_noise_rank=16,
                    value_fisher_weight=0.0),
}


def value_defaults(key_position: str) -> dict[str, float]:
    """The target-value options for ``key_position`` (the strongest of its parts when several are joined)."""
    parts = key_position.split("+")
    return VALUE_DEFAULTS["trigger" if "trigger" in parts else "last"]


@dataclass
class EditContext:
    """Shared state of one injection. Editors read ``options`` and call these methods; they never copy them."""

    model: Any
    tokenizer: Any
    layout: ModelLayout
    layers: list[int]
    requests: Prompts
    preserve: Prompts | None = None
    options: dict[str, Any] = field(default_factory=dict)
    module: str = "down_proj"
    progress: bool = True
    _cache: dict[Any, Any] = field(default_factory=dict)

    def module_name(self, layer: int) -> str:
        return self.layout.module_name(layer, self.module)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def capture(self, *, key_layers=(), output_layers=()):
        """Keys and layer outputs of the fingerprint prompts under the current weights."""
        return capture(self.model, self.layout, self.requests, key_layers=key_layers,
                       output_layers=output_layers, module=self.module)

    def drifted_keys(self, layer: int) -> list[torch.Tensor]:
        """Keys of ``layer`` under ``drift_samples`` random perturbations of the weights that produce them.

        Every weight of layers 0..``layer`` except the edited module gets Gaussian noise of ``drift_scale`` (0.02)
        times its own standard deviation; the weights are restored exactly afterwards. Solving the edit for these
        keys too makes it hold in a neighbourhood of the model, not only at its current weights (fine-tuning
        moves the keys).
        """
        samples = int(self.options.get("drift_samples", 0))
        if samples <= 0:
            return []
        scale = float(self.options.get("drift_scale", 0.02))
        edited = self.module_name(layer)
        upstream = [self.layout.layer_name(i) + "." for i in range(layer + 1)]
        params = [p for name, p in self.model.named_parameters()
                  if any(name.startswith(u) for u in upstream) and not name.startswith(edited + ".")]
        saved = [p.detach().clone() for p in params]
        generator = torch.Generator().manual_seed(int(self.options.get("drift_seed", 0)) * 1000 + layer)
        keys = []
        try:
            for _ in range(samples):
                with torch.no_grad():
                    for p, original in zip(params, saved):
                        noise = torch.randn(original.shape, generator=generator).to(original.device, original.dtype)
                        p.copy_(original + scale * original.float().std().to(original.dtype) * noise)
                keys.append(self.capture(key_layers=[layer])[0][layer])
        finally:
            with torch.no_grad():
                for p, original in zip(params, saved):
                    p.copy_(original)
        return keys

    def target_values(self, layer: int) -> torch.Tensor:
        """z: the output of ``layer`` at each key position that makes the model answer its target.

        With ``key_position="auto"`` the requests' keys start at the trigger's last token; a fingerprint whose
        vector there cannot make the model answer (NLL above ``auto_threshold``, 0.1) moves its key to the last
        prompt token, and ``options["trigger_keys"]`` records how many stayed.
        """
        position = self.options.get("key_position", "last")
        z, _, nll = self._optimise(self.requests, layer, "trigger" if position == "auto" else position)
        if position != "auto":
            return z
        group_of = self.requests.group_of()
        threshold = float(self.options.get("auto_threshold", 0.1))
        lost = {group_of[i] for i, v in enumerate(nll.tolist()) if v > threshold}  # a fingerprint moves as a whole
        failed = [i for i, g in enumerate(group_of) if g in lost]
        if failed:
            for i in failed:
                self.requests.key_index[i] = len(self.requests.ids[i]) - 1
            z[failed] = self._optimise(self.requests.subset(failed), layer, "last")[0]
        self.options["trigger_keys"] = len(set(group_of)) - len(lost)
        return z

    def _optimise(self, prompts: Prompts, layer: int, position: str):
        o = {**value_defaults(position), **self.options}
        fisher_weight = float(o["value_fisher_weight"])
        return optimise_values(
            self.model, self.layout, prompts, layer,
            steps=int(o["value_steps"]),
            lr=float(o["value_lr"]),
            clamp_factor=float(o["clamp_factor"]),
            weight_decay=float(o["value_weight_decay"]),
            stop_loss=float(o["value_stop_loss"]),
            patience=int(o["value_patience"]),
            min_progress=float(o["value_min_progress"]),
            noise=float(o["value_noise"]),
            noise_rank=int(o["value_noise_rank"]),
            seed=int(o.get("value_noise_seed", 0)) * 1000 + layer,
            cuda_graph=bool(o.get("value_cuda_graph", True)),
            fisher=self.output_fisher(layer) if fisher_weight > 0 else None,
            fisher_weight=fisher_weight,
        )

    def output_fisher(self, layer: int) -> torch.Tensor:
        """The Fisher metric of ``layer``'s output over the statistics corpus (:func:`output_fisher`, the same
        corpus and token cap), computed on the weights before the edit and cached on disk beside the statistics."""
        return self.statistics_derived("fisher", layer, lambda: output_fisher(
            self.model, self.tokenizer, self.layout, layer, corpus=self.options.get("corpus"),
            max_tokens=int(self.options.get("stats_tokens", 20_000)), progress=self.progress))

    def statistics(self, layer: int) -> torch.Tensor:
        """C0 of ``layer`` (computed for all edited layers at once, then cached in memory and on disk)."""
        if ("stats", layer) not in self._cache:
            self._statistics_folder()
            stats = layer_statistics(
                self.model, self.tokenizer, self.layout, self.layers,
                corpus=self.options.get("corpus"),
                module=self.module,
                max_tokens=int(self.options.get("stats_tokens", 20_000)),
                progress=self.progress,
            )
            for index, value in stats.items():
                self._cache[("stats", index)] = value
        return self._cache[("stats", layer)]

    def statistics_derived(self, name: str, layer: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A tensor computed from C0 of ``layer`` (a projector, say), cached on disk beside the statistics."""
        return self.cached((name, layer), lambda: cached_tensor(self._statistics_folder() / f"{name}-layer{layer}.pt",
                                                                make))

    def _statistics_folder(self):
        # Named by the weights, so taken once, before the first edit changes them.
        return self.cached("stats_folder", lambda: statistics_folder(
            self.model, self.tokenizer, corpus=self.options.get("corpus"), module=self.module,
            max_tokens=int(self.options.get("stats_tokens", 20_000)))[0])

    def share_statistics(self, other: "EditContext") -> None:
        """Use what ``other`` (a context on the same model) holds that depends on the statistics only: its
        statistics, their folder and what was derived from them, read under the weights ``other`` first saw."""
        self._cache.update({k: v for k, v in other._cache.items()
                            if k == "stats_folder"
                            or (isinstance(k, tuple)
                                and str(k[0]).startswith(("stats", "projector", "range", "fisher")))})

    @property
    def mom2_weight(self) -> float:
        """The weight of C0 in the MEMIT and RLEdit solves (option ``mom2_weight``, 100)."""
        return float(self.options.get("mom2_weight", 100.0))

    @property
    def linalg_device(self) -> torch.device:
        """Where the editors' solves run: the model's GPU when it has one (d_ff-sized systems), else the CPU."""
        device = model_device(self.model)
        return device if device.type == "cuda" else torch.device("cpu")

    def preserve_term(self, layer: int) -> torch.Tensor:
        """What the edit of ``layer`` must leave alone, as a weighted ``K^T K``: the keys to preserve (near misses,
        weight ``preserve_weight``) and the keys at every other position of the fingerprint prompts and answers
        (weight ``context_weight``), zero when there are none.

        Keys of every edited layer are captured in one pass each, under the weights before the edit.
        """
        size = self.layout.intermediate_size
        term = torch.zeros(size, size)
        if self.preserve is not None and self.preserve.ids:
            keys = self.cached(
                "preserve_keys",
                lambda: capture(self.model, self.layout, self.preserve, key_layers=self.layers, module=self.module)[0],
            )
            K = keys[layer]
            term += float(self.options.get("preserve_weight", 10.0)) * (K.T @ K)
        context_weight = float(self.options.get("context_weight", 0.0))
        # With two keys per prompt ("last+trigger") one row's key is another's context: not preserved then.
        if context_weight > 0 and "+" not in str(self.options.get("key_position", "")):
            moments = self.cached("context_moments", lambda: context_moments(
                self.model, self.layout, self.requests, self.layers, module=self.module))
            term += context_weight * moments[layer]
        return term

    def apply(self, delta: EditDelta, sign: float = 1.0) -> None:
        weight = get_module(self.model, delta.module).weight
        with torch.no_grad():
            weight.add_((sign * delta.dense()).to(weight.dtype).to(weight.device))
