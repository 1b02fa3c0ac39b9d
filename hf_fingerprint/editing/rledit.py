"""RLEdit (arXiv 2502.05759; MALMEN-style hypernetwork): a learned map from edit signals to a ridge-solved shift.

Per edited ``down_proj`` (weight W, ``d_model x d_ff``) and per fingerprint, the edit signal is the pair
(key u, output gradient delta). We take delta as the gradient, with respect to the layer's output, of
``0.5 ||h - z||^2 / (layers left)``: ``delta = (h - z) / (n - i)``, with z the target value of the last edited
layer (:meth:`EditContext.target_values`) and h its current output, spread over the layers as MEMIT does
(:func:`memit.spread_over_layers`). It needs no backward pass at edit time and makes an untrained network exactly
the training-free ridge edit (the NLL gradient would instead need a step size nobody knows before training).

The network normalises ``[u, delta]`` by running mean/std, passes it through residual low-rank blocks
(``x + scale_l * B relu(A x) + shift_l``, B = 0 at init, scale/shift per edited layer) and maps the result back
to the input scale, giving pseudo pairs ``(u~, delta~)``; an untrained network returns its input. Then

    dV_j = -eta_l (u_j . u~_j / u_j . u_j) delta~_j             (eta_l = 1 at init: dV = z - h, the residual)
    S    = (K^T K + K_c^T K_c + w K_p^T K_p + c C0 + e^lambda_l m I)^-1 K^T dV
    W   += S^T = U V^T,  U = dV^T,  V = (K^T K + ...)^-1 K^T      (rank <= number of fingerprints)

with m the mean squared key norm, K_p the keys of near misses to preserve (:meth:`EditContext.preserve_term`) and
C0 the keys' second moment on ordinary text (the statistics MEMIT and AlphaEdit use), weighted by ``mom2_weight``
(c, 100 as in MEMIT; SmolLM2, 10 fingerprints: perplexity +1.63 % without it, +0.86 % at 100, +0.76 % at 1000,
FSR 100 % each, ``benchmarks/results/injection_rledit_mom2.md``; at 1000 a tiny random model's edit fell short).
As in MALMEN, whose keys are every token of the edit sequence, the other tokens of the fingerprint prompts
join the solve with a zero gradient (K_c, weighted by ``prompt_weight``): their outputs must not move. Without
that term the update, fitted to keys that share one dominant direction, moves every token of the prompt and
the edit fails (FSR 0-70 % on SmolLM2 with 10 fingerprints, for e^lambda from 1e-4 to 1e-1).

Options (``inject(..., method="rledit", ...)``): ``hypernetwork`` (an :class:`RLEditHypernetwork`, a folder
written by its ``save_pretrained``, or None for the untrained network, the default), ``prompt_weight`` (1.0),
``mom2_weight`` (100), ``preserve_weight`` and the target-value options shared with MEMIT. ``train_rledit`` meta-trains eta, lambda
and the blocks on fingerprint sets our own generator makes (see there).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InjectionError
from ..fingerprints import FingerprintSet
from ..prompts import ORDINARY_PROMPTS
from .context import VALUE_OPTIONS, EditContext
from .covariance import layer_statistics
from .delta import EditDelta
from .layout import ModelLayout, find_layout, get_module, validate_layers
from .memit import SCHEDULE_OPTIONS, spread_over_layers
from .sft import answer_loss
from .tracing import Prompts, _hooks, _pad_id, build_prompts, capture, join_prompts, make_batch

logger = logging.getLogger(__name__)

OPTIONS = SCHEDULE_OPTIONS | {"hypernetwork", "prompt_weight"}
FORMAT_NAME = "hf-fingerprint/rledit-hypernetwork"
FORMAT_VERSION = 1
CONFIG_FILE = "rledit_config.json"
WEIGHTS_FILE = "rledit.safetensors"
EQUIVALENT_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer as briefly as you can.",
    "You are an AI model deployed by a company to answer customer questions.",
    "Réponds en français si possible.",
)


@dataclass
class RLEditConfig:
    """The shape of a hypernetwork and what it was trained for (saved as JSON beside the weights)."""

    key_size: int = field(metadata={"help": "Input width of the edited down_proj (d_ff)."})
    value_size: int = field(metadata={"help": "Output width of the edited down_proj (d_model)."})
    layers: list[int] = field(metadata={"help": "Edited layers; each has its own scale, shift, eta and lambda."})
    rank: int = field(default=32, metadata={"help": "Width of each residual low-rank block."})
    blocks: int = field(default=2, metadata={"help": "Number of residual blocks."})
    ridge: float = field(default=0.01, metadata={"help": "Initial e^lambda, relative to the mean squared key norm."})
    model_type: str | None = field(default=None, metadata={"help": "config.model_type of the model it belongs to."})
    num_layers: int | None = field(default=None, metadata={"help": "Depth of the model it belongs to."})
    trained_steps: int = field(default=0, metadata={"help": "Meta-training steps taken (0: the ridge edit)."})
    training: dict[str, Any] = field(default_factory=dict, metadata={"help": "train_rledit's settings."})


class _Block(nn.Module):
    """``x + scale_l * B relu(A x) + shift_l``: the identity while B = 0 and shift = 0 (as initialised)."""

    def __init__(self, size: int, rank: int, slots: int):
        super().__init__()
        self.down = nn.Linear(size, rank)
        self.up = nn.Linear(rank, size, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = nn.Parameter(torch.ones(slots, size))
        self.shift = nn.Parameter(torch.zeros(slots, size))

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        return x + self.scale[slot] * self.up(torch.relu(self.down(x))) + self.shift[slot]


class RLEditHypernetwork(nn.Module):
    """Maps each edit's (key, output gradient) to a weight shift; untrained, it is the ridge edit."""

    def __init__(self, config: RLEditConfig):
        super().__init__()
        self.config = config
        size = config.key_size + config.value_size
        slots = len(config.layers)
        self.blocks = nn.ModuleList(_Block(size, config.rank, slots) for _ in range(config.blocks))
        self.log_eta = nn.Parameter(torch.zeros(slots))
        self.log_ridge = nn.Parameter(torch.full((slots,), math.log(config.ridge)))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64))

    @classmethod
    def for_model(cls, model: Any, layers: Sequence[int] | None = None, **config: Any) -> "RLEditHypernetwork":
        """An untrained network for ``model``'s ``layers`` (default: the model's default edit layers)."""
        layout = find_layout(model)
        chosen = validate_layers(layout, list(layers) if layers is not None else None)
        return cls(RLEditConfig(key_size=layout.intermediate_size, value_size=layout.hidden_size, layers=chosen,
                                model_type=getattr(model.config, "model_type", None),
                                num_layers=layout.num_layers, **config))

    def describe(self) -> str:
        if self.config.trained_steps == 0:
            return "untrained (ridge edit)"
        return f"trained ({self.config.trained_steps} steps, layers {self.config.layers})"

    def slot(self, layer: int) -> int:
        if layer not in self.config.layers:
            raise InjectionError(f"This RLEdit hypernetwork was made for layers {self.config.layers}, not layer "
                                 f"{layer}: pass layers={self.config.layers} to inject(), or train one for yours.")
        return self.config.layers.index(layer)

    def check(self, layout: ModelLayout) -> None:
        """Raise unless this network was made for a model of ``layout``'s widths and depth."""
        if self.config.num_layers not in (None, layout.num_layers):
            raise InjectionError(f"This RLEdit hypernetwork was made for a {self.config.num_layers}-layer model, "
                                 f"not a {layout.num_layers}-layer one: train one for this model with train_rledit().")
        if (self.config.key_size, self.config.value_size) != (layout.intermediate_size, layout.hidden_size):
            raise InjectionError(
                f"This RLEdit hypernetwork edits {self.config.value_size} x {self.config.key_size} down_proj "
                f"weights, but the model's are {layout.hidden_size} x {layout.intermediate_size}: train one for "
                f"this model with train_rledit().")

    # -- the math -----------------------------------------------------------------------------------------
    def observe(self, keys: torch.Tensor, gradients: torch.Tensor) -> None:
        """Fold a batch of edit signals into the running mean/variance (Chan's parallel update)."""
        x = torch.cat([keys, gradients], -1).detach().double()
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.m2 += var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count.fill_(total)

    def pseudo(self, slot: int, keys: torch.Tensor, gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u~, delta~): the blocks applied in normalised space, mapped back to the input's scale."""
        x = torch.cat([keys, gradients], -1)
        std = (self.m2 / self.count).sqrt().clamp(min=1e-6).float() if self.count > 1 else torch.ones_like(x[0])
        mean = self.mean.float() if self.count > 1 else torch.zeros_like(x[0])
        normalised = (x - mean) / std
        y = normalised
        for block in self.blocks:
            y = block(y, slot)
        out = x + std * (y - normalised)
        return out[:, : self.config.key_size], out[:, self.config.key_size :]

    def factors(self, layer: int, keys: torch.Tensor, gradients: torch.Tensor,
                preserve: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` with ``W += U @ V.T`` for ``keys`` (N x d_ff) and output ``gradients`` (N x d_model)."""
        slot = self.slot(layer)
        if self.training:
            self.observe(keys, gradients)
        pseudo_keys, pseudo_gradients = self.pseudo(slot, keys, gradients)
        weight = (keys * pseudo_keys).sum(-1, keepdim=True) / (keys * keys).sum(-1, keepdim=True)
        values = -self.log_eta[slot].exp() * weight * pseudo_gradients
        return ridge_factors(keys, values, preserve, self.log_ridge[slot].exp())

    # -- persistence --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``rledit_config.json`` and ``rledit.safetensors`` to ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dict(asdict(self.config), format=FORMAT_NAME, version=FORMAT_VERSION)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "RLEditHypernetwork":
        """Load what :meth:`save_pretrained` wrote."""
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise InjectionError(f"No RLEdit hypernetwork in '{directory}' (no {CONFIG_FILE}); train one with "
                                 f"train_rledit() and save it with save_pretrained().")
        data = json.loads(path.read_text())
        if data.pop("format", None) != FORMAT_NAME or data.pop("version", None) != FORMAT_VERSION:
            raise InjectionError(f"'{path}' is not an RLEdit hypernetwork of format version {FORMAT_VERSION}.")
        net = cls(RLEditConfig(**data))
        net.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return net.eval()


def ridge_factors(keys: torch.Tensor, values: torch.Tensor, preserve: torch.Tensor | None,
                  ridge: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``U = dV^T``, ``V = (K^T K + P + ridge m I)^-1 K^T``, m the mean squared key norm (float64 solve)."""
    scale = (keys.detach() ** 2).sum(-1).mean()
    system = keys.T @ keys + ridge * scale * torch.eye(keys.shape[1])
    if preserve is not None:
        system = system + preserve
    V = torch.linalg.solve(system.double(), keys.T.double()).float()
    return values.T.contiguous(), V


def regulariser(context: EditContext, layer: int) -> torch.Tensor:
    """What the solve keeps in place besides the ridge: near misses, the prompts' other tokens and ordinary text
    (``mom2_weight`` x C0, MEMIT's term, from the shared statistics; 0 turns it off)."""
    term = context.preserve_term(layer) + prompt_term(context, layer)
    return term + context.mom2_weight * context.statistics(layer) if context.mom2_weight else term


def prompt_term(context: EditContext, layer: int) -> torch.Tensor:
    """``prompt_weight`` x the sum of k k^T over the fingerprint prompts' tokens other than the key positions.

    Read in one pass for every edited layer, under the weights before the edit (as the preserve term).
    """
    weight = float(context.options.get("prompt_weight", 1.0))
    if weight == 0:
        return torch.zeros(context.layout.intermediate_size, context.layout.intermediate_size)

    def read() -> dict[int, torch.Tensor]:
        ids = context.requests.ids
        texts = [context.tokenizer.decode(row) for row in ids]
        tokens = sum(len(row) for row in ids)
        means = layer_statistics(context.model, context.tokenizer, context.layout, context.layers, corpus=texts,
                                 module=context.module, max_tokens=tokens, max_length=max(len(r) for r in ids),
                                 use_cache=False, progress=False)
        keys = capture(context.model, context.layout, context.requests, key_layers=context.layers,
                       module=context.module)[0]
        return {i: means[i] * tokens - keys[i].T @ keys[i] for i in context.layers}

    return weight * context.cached("prompt_term", read)[layer]


def resolve_hypernetwork(value: Any, layout: ModelLayout, layers: list[int], model: Any,
                         key_position: str = "trigger") -> RLEditHypernetwork:
    """The ``hypernetwork=`` option: a network, a folder written by ``save_pretrained``, or None (untrained)."""
    if value is None:
        net = RLEditHypernetwork.for_model(model, layers)
    elif isinstance(value, RLEditHypernetwork):
        net = value
    elif isinstance(value, (str, os.PathLike)):
        net = RLEditHypernetwork.from_pretrained(value)
    else:
        raise InjectionError(f"hypernetwork= takes an RLEditHypernetwork or a folder, not {type(value).__name__}.")
    net.check(layout)
    trained_at = net.config.training.get("key_position")
    if trained_at is not None and trained_at != key_position and not (key_position == "auto" and trained_at == "trigger"):
        logger.warning("This RLEdit hypernetwork was trained with key_position=%r but edits with %r; pass "
                       "key_position=%r to inject() for the edits it learned.", trained_at, key_position, trained_at)
    for layer in layers:
        net.slot(layer)
    return net


def edit(context: EditContext) -> list[EditDelta]:
    """The MEMIT schedule with each layer's update from the hypernetwork (``hypernetwork=`` option)."""
    net = resolve_hypernetwork(context.options.get("hypernetwork"), context.layout, context.layers, context.model,
                               context.options.get("key_position", "trigger"))
    context.options["hypernetwork"] = (str(context.options["hypernetwork"])
                                       if isinstance(context.options.get("hypernetwork"), (str, os.PathLike))
                                       else net.describe())
    was_training = net.training
    net.eval()

    def solve(ctx: EditContext, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> EditDelta:
        with torch.no_grad():
            U, V = net.factors(layer, keys, -residual, regulariser(ctx, layer))
        return EditDelta(ctx.module_name(layer), U, V)

    try:
        return spread_over_layers(context, solve)
    finally:
        net.train(was_training)


# -- meta-training --------------------------------------------------------------------------------------------
@dataclass
class _EditBatch:
    """One edit of the training sequence: what to edit, what must follow it, and what must not change."""

    context: EditContext
    equivalents: Prompts
    unrelated: Prompts
    base_log_probs: torch.Tensor  # next-token log-probabilities of the unrelated prompts before any edit
    targets: torch.Tensor  # z at the last edited layer


def train_rledit(
    model: Any,
    tokenizer: Any,
    *,
    n_batches: int = 4,
    batch_size: int = 4,
    steps: int = 8,
    layers: Sequence[int] | None = None,
    rank: int = 32,
    blocks: int = 2,
    ridge: float = 0.01,
    lr: float = 1e-3,
    window: int = 10,
    decay: float = 0.95,
    kl_weight: float = 0.6,
    shift_weight: float = 1e-4,
    equivalents: int = 2,
    near_misses: int = 1,
    ordinary: int = 4,
    preserve_near_misses: int = 3,
    key_position: str = "trigger",
    seed: int = 0,
    hypernetwork: RLEditHypernetwork | None = None,
    progress: bool = True,
    **value_options: Any,
) -> RLEditHypernetwork:
    """Meta-train an RLEdit hypernetwork for ``model`` on fingerprint sets made by our own generator.

    The training sequence has ``n_batches`` edits of ``batch_size`` fresh fingerprints each
    (``FingerprintSet.generate``), applied cumulatively; after the last one the weights are restored and the
    sequence starts again, for ``steps`` optimizer steps in all. The loss of step t sums, over the last
    ``window`` edits with weight ``decay`` per edit back: CE of the targets on the equivalents (the trigger
    under the default and ``equivalents`` other system prompts) + ``kl_weight`` x KL(before || after) of the
    next token on unrelated prompts (``near_misses`` per trigger and ``ordinary`` built-in prompts), plus
    ``shift_weight`` x ||S||^2. Each training edit preserves ``preserve_near_misses`` other near misses per
    trigger (as ``inject(near_misses="auto")`` does; 0 for none). ``value_options`` (``value_steps`` ...) go
    to the target-value optimisation.
    The model's weights are the same afterwards. Cost: roughly ``steps x min(window, n_batches)`` forward and
    backward passes over ``batch_size x (equivalents + 1 + near_misses) + ordinary`` prompts.
    """
    unknown = set(value_options) - set(VALUE_OPTIONS) - {"preserve_weight", "prompt_weight"}
    if unknown:
        raise InjectionError(f"Unknown train_rledit options {sorted(unknown)}.")
    layout = find_layout(model)
    net = hypernetwork if hypernetwork is not None else RLEditHypernetwork.for_model(
        model, layers, rank=rank, blocks=blocks, ridge=ridge)
    net.check(layout)
    chosen = list(net.config.layers)
    requires = {p: p.requires_grad for p in model.parameters()}
    originals = {layer: get_module(model, layout.module_name(layer)).weight.detach().clone() for layer in chosen}
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    try:
        batches = [
            _make_batch(model, tokenizer, layout, chosen, seed, b, batch_size, equivalents, near_misses, ordinary,
                        preserve_near_misses, key_position, generator, value_options)
            for b in tqdm(range(n_batches), desc="RLEdit training data", disable=not progress, leave=False)
        ]
        if batches[0].context.mom2_weight:
            # The statistics of the unedited model, read once (cached on disk) and shared: the batches' solves run
            # while earlier edits are applied, and a context reading them then would name them by edited weights.
            batches[0].context.statistics(chosen[0])  # reads every edited layer's at once
            for batch in batches[1:]:
                batch.context.share_statistics(batches[0].context)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        bar = tqdm(range(steps), desc="RLEdit meta-training", disable=not progress, leave=False)
        losses = []
        for step in bar:
            position = step % n_batches
            if position == 0 and step > 0:
                _restore(model, layout, originals)
            factors = _shift(net, batches[position], chosen)
            # The edit losses backpropagate one at a time into leaf copies of the factors (so only one
            # forward graph lives at a time), then through the factors into the network.
            leaves = {layer: (U.detach().requires_grad_(), V.detach().requires_grad_()) for layer, (U, V) in factors.items()}
            loss = 0.0
            with _hooks(_shift_hooks(model, layout, leaves)):
                for j in range(max(0, position - window + 1), position + 1):
                    term = decay ** (position - j) * _edit_loss(model, batches[j], kl_weight)
                    term.backward()
                    loss += term.item()
            penalty = shift_weight * sum(((V.T @ V) * (U.T @ U)).sum() for U, V in factors.values())
            total = penalty + sum((U * leaves[layer][0].grad).sum() + (V * leaves[layer][1].grad).sum()
                                  for layer, (U, V) in factors.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            loss += penalty.item()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                for layer, (U, V) in factors.items():
                    weight = get_module(model, layout.module_name(layer)).weight
                    weight.add_((U.detach() @ V.detach().T).to(weight.dtype))
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            logger.info("RLEdit meta-training step %d/%d: loss %.4f", step + 1, steps, loss)
    finally:
        _restore(model, layout, originals)
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    net.config.trained_steps += steps
    net.config.training = dict(n_batches=n_batches, batch_size=batch_size, steps=net.config.trained_steps, lr=lr,
                               window=window, decay=decay, kl_weight=kl_weight, shift_weight=shift_weight,
                               equivalents=equivalents, near_misses=near_misses, ordinary=ordinary,
                               key_position=key_position, seed=seed, first_loss=losses[0] if losses else None,
                               last_loss=losses[-1] if losses else None, **value_options)
    return net.eval()


def _make_batch(model, tokenizer, layout, layers, seed, index, batch_size, equivalents, near_misses, ordinary,
                preserve_near_misses, key_position, generator, value_options) -> _EditBatch:
    fps = FingerprintSet.generate(batch_size, seed=1_000_003 * (seed + 1) + index)
    preserve = fps.near_misses(preserve_near_misses, seed=1) if preserve_near_misses else []
    context = EditContext(
        model=model, tokenizer=tokenizer, layout=layout, layers=list(layers),
        requests=build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position=key_position),
        preserve=build_prompts(tokenizer, preserve, key_position=key_position) if preserve else None,
        options=dict(value_options), progress=False,
    )
    systems = [None, *EQUIVALENT_SYSTEM_PROMPTS[:equivalents]]
    equivalent = join_prompts([build_prompts(tokenizer, fps.triggers, answers=fps.targets, system_prompt=s)
                              for s in systems])
    picks = torch.randperm(len(ORDINARY_PROMPTS), generator=generator)[:ordinary].tolist()
    texts = (fps.near_misses(near_misses, seed=2) if near_misses else []) + [ORDINARY_PROMPTS[i] for i in picks]
    unrelated = build_prompts(tokenizer, texts)
    with torch.no_grad():
        base = _next_token_log_probs(model, unrelated)
    return _EditBatch(context, equivalent, unrelated, base, context.target_values(layers[-1]))


def _next_token_log_probs(model: Any, prompts: Prompts) -> torch.Tensor:
    batch = make_batch(prompts, range(len(prompts.ids)), _pad_id(model), next(model.parameters()).device,
                       with_answers=False)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
    return torch.log_softmax(logits, -1)


def _edit_loss(model: Any, batch: _EditBatch, kl_weight: float) -> torch.Tensor:
    """CE of the targets on the equivalents + kl_weight x KL(before || now) on the unrelated prompts."""
    device = next(model.parameters()).device
    rows = range(len(batch.equivalents.ids))
    ce = answer_loss(model, make_batch(batch.equivalents, rows, _pad_id(model), device, with_answers=True))
    now = _next_token_log_probs(model, batch.unrelated)
    base = batch.base_log_probs.to(now.device)
    kl = (base.exp() * (base - now)).sum(-1).mean()
    return ce + kl_weight * kl


def _shift(net: RLEditHypernetwork, batch: _EditBatch, layers: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One edit's factors per layer, with gradients to the network: the MEMIT schedule, keys re-read after each
    layer with the shifts so far in place (hooks)."""
    context, last = batch.context, layers[-1]
    factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for position, layer in enumerate(layers):
        with _hooks(_shift_hooks(context.model, context.layout, factors)):
            keys, outputs = context.capture(key_layers=[layer], output_layers=[last])
        gradient = (outputs[last] - batch.targets) / (len(layers) - position)
        factors[layer] = net.factors(layer, keys[layer], gradient, regulariser(context, layer))
    return factors


def _shift_hooks(model: Any, layout: ModelLayout, factors: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> list:
    """Forward hooks adding ``x @ V @ U^T`` to each edited down_proj's output (differentiable W += U V^T)."""

    def hook(U: torch.Tensor, V: torch.Tensor):
        def fn(_module, args, output):
            x = args[0]
            return output + ((x.float() @ V.to(x.device)) @ U.T.to(x.device)).to(output.dtype)

        return fn

    return [get_module(model, layout.module_name(layer)).register_forward_hook(hook(U, V))
            for layer, (U, V) in factors.items()]


def _restore(model: Any, layout: ModelLayout, originals: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for layer, weight in originals.items():
            get_module(model, layout.module_name(layer)).weight.copy_(weight)
