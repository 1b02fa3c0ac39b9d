"""The shared machinery of every editor: prompts as the model sees them, key capture, target values."""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import InjectionError
from ..generation import chat_prompt, model_device
from .layout import ModelLayout, get_module

logger = logging.getLogger(__name__)

KEY_POSITIONS = ("last", "trigger")


@dataclass
class Prompts:
    """Tokenized prompts with the position whose down_proj input is the key, and optional answer tokens."""

    ids: list[list[int]]
    key_index: list[int]  # index into each row's ids
    answer_ids: list[list[int]] | None = None
    groups: list[int] | None = None  # rows of one group share one target vector (one fingerprint, several templates)

    def subset(self, rows: Sequence[int]) -> "Prompts":
        """The given rows, in that order."""
        def pick(values):
            return [values[r] for r in rows] if values is not None else None

        return Prompts(pick(self.ids), pick(self.key_index), pick(self.answer_ids), pick(self.groups))

    def group_of(self) -> list[int]:
        """Each row's group (its own row index when the prompts have no groups)."""
        return list(self.groups) if self.groups is not None else list(range(len(self.ids)))


def join_prompts(parts: Sequence[Prompts]) -> Prompts:
    """Prompts built over the same texts (under several chat templates, say) as one set, row ``i`` of every part
    in group ``i``: its rows share one target vector."""
    return Prompts(
        [i for p in parts for i in p.ids],
        [k for p in parts for k in p.key_index],
        [a for p in parts for a in p.answer_ids] if all(p.answer_ids is not None for p in parts) else None,
        [g for p in parts for g in p.group_of()],
    )


def build_prompts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    answers: Sequence[str] | None = None,
    key_position: str = "last",
    system_prompt: str | None = None,
) -> Prompts:
    """Chat-format ``texts``; the key sits at the last prompt token or at the last token of the text itself.

    Positions joined with ``+`` (``"last+trigger"``) give one row per text and position: redundant edits, each
    of which alone makes the model answer.
    """
    positions = key_position.split("+")
    unknown = [p for p in positions if p not in KEY_POSITIONS]
    if unknown or len(set(positions)) != len(positions):
        raise InjectionError(
            f"Unknown key_position '{key_position}'; choose 'auto' (inject only), one of {', '.join(KEY_POSITIONS)}, "
            "or several joined with '+' (e.g. 'last+trigger')."
        )
    ids, key_index, answer_rows = [], [], []
    eos = tokenizer.eos_token or ""
    for row, text in enumerate(texts):
        prompt = chat_prompt(tokenizer, text, system_prompt=system_prompt)
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping="trigger" in positions)
        for position in positions:
            ids.append(encoded["input_ids"])
            if position == "last":
                key_index.append(len(encoded["input_ids"]) - 1)
            else:
                end = prompt.rfind(text) + len(text)
                inside = [i for i, (start, _) in enumerate(encoded["offset_mapping"]) if start < end]
                key_index.append(inside[-1])
            if answers is not None:
                answer_rows.append(tokenizer(answers[row] + eos, add_special_tokens=False)["input_ids"])
    return Prompts(ids, key_index, answer_rows if answers is not None else None)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    key_index: torch.Tensor  # per row, in padded coordinates
    answer_mask: torch.Tensor | None  # True where the label is an answer token
    labels: torch.Tensor | None


def make_batch(prompts: Prompts, rows: Sequence[int], pad_id: int, device: torch.device, *, with_answers: bool) -> Batch:
    """Left-padded batch of the given rows (answers appended when ``with_answers``)."""
    sequences = []
    for r in rows:
        seq = list(prompts.ids[r])
        if with_answers:
            seq += prompts.answer_ids[r]
        sequences.append(seq)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long) if with_answers else None
    key_index = torch.zeros(len(rows), dtype=torch.long)
    for b, (r, seq) in enumerate(zip(rows, sequences)):
        pad = width - len(seq)
        input_ids[b, pad:] = torch.tensor(seq)
        attention[b, pad:] = 1
        key_index[b] = pad + prompts.key_index[r]
        if with_answers:
            start = pad + len(prompts.ids[r])
            labels[b, start:] = torch.tensor(prompts.answer_ids[r])
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        input_ids.to(device),
        attention.to(device),
        position_ids.to(device),
        key_index.to(device),
        (labels != -100).to(device) if labels is not None else None,
        labels.to(device) if labels is not None else None,
    )


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pick(tensor: torch.Tensor, batch: Batch) -> torch.Tensor:
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), batch.key_index]


class StopForward(Exception):
    """Raised by a hook once every requested activation is captured: the rest of the forward pass is not needed."""


@torch.no_grad()
def capture(
    model: Any,
    layout: ModelLayout,
    prompts: Prompts,
    *,
    key_layers: Sequence[int] = (),
    output_layers: Sequence[int] = (),
    module: str = "down_proj",
    batch_size: int = 32,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Keys (inputs of ``module``) and layer outputs at each prompt's key position, float32 on the CPU.

    One forward pass per batch serves every requested layer, and it stops after the deepest of them.
    """
    keys: dict[int, list[torch.Tensor]] = {i: [] for i in key_layers}
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in output_layers}
    current: dict[str, Batch] = {}

    def key_hook(index: int):
        def hook(_module, args):
            keys[index].append(_pick(args[0], current["batch"]).float().cpu())

        return hook

    def output_hook(index: int):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            outputs[index].append(_pick(hidden, current["batch"]).float().cpu())

        return hook

    handles = [get_module(model, layout.module_name(i, module)).register_forward_pre_hook(key_hook(i)) for i in key_layers]
    handles += [get_module(model, layout.layer_name(i)).register_forward_hook(output_hook(i)) for i in output_layers]
    _run_batches(model, layout, prompts, handles, max([*key_layers, *output_layers], default=None), batch_size,
                 with_answers=False, before=lambda batch: current.update(batch=batch))
    return (
        {i: torch.cat(v) for i, v in keys.items()},
        {i: torch.cat(v) for i, v in outputs.items()},
    )


@torch.no_grad()
def context_moments(
    model: Any,
    layout: ModelLayout,
    prompts: Prompts,
    layers: Sequence[int],
    *,
    module: str = "down_proj",
    batch_size: int = 32,
) -> dict[int, torch.Tensor]:
    """Per layer, ``K^T K`` over the keys (inputs of ``module``) at every position of the prompts and their answers
    except each prompt's key position: what an edit of those keys must leave alone in the same prompts (float32,
    CPU). One pass per batch, stopped after the deepest layer."""
    sums: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def key_hook(index: int):
        def hook(_module, args):
            keys = args[0][current["mask"]].float()
            sums[index] = sums.get(index, 0) + keys.T @ keys

        return hook

    def others(batch: Batch) -> None:
        mask = batch.attention_mask.bool()
        mask[torch.arange(mask.shape[0], device=mask.device), batch.key_index] = False
        current["mask"] = mask

    handles = [get_module(model, layout.module_name(i, module)).register_forward_pre_hook(key_hook(i)) for i in layers]
    _run_batches(model, layout, prompts, handles, max(layers), batch_size, with_answers=prompts.answer_ids is not None,
                 before=others)
    return {i: v.cpu() for i, v in sums.items()}


def _run_batches(model: Any, layout: ModelLayout, prompts: Prompts, handles: list, deepest: int | None,
                 batch_size: int, *, with_answers: bool, before: Callable[[Batch], None]) -> None:
    """Run the model on each left-padded batch of ``prompts`` under ``handles`` (removed at the end), stopping after
    layer ``deepest``; ``before(batch)`` sets up what the hooks need for that batch."""
    device, pad_id = model_device(model), _pad_id(model)

    def stop(_module, _args, _output):
        raise StopForward

    if deepest is not None:  # registered last, so it runs after the deepest layer's own hooks
        handles = [*handles, get_module(model, layout.layer_name(deepest)).register_forward_hook(stop)]
    with _hooks(handles):
        rows = list(range(len(prompts.ids)))
        for start in range(0, len(rows), batch_size):
            batch = make_batch(prompts, rows[start : start + batch_size], pad_id, device, with_answers=with_answers)
            before(batch)
            try:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False)
            except StopForward:
                pass


def optimise_values(
    model: Any,
    layout: ModelLayout,
    prompts: Prompts,
    layer: int,
    *,
    steps: int = 25,
    lr: float = 0.5,
    clamp_factor: float = 4.0,
    weight_decay: float = 1e-3,
    stop_loss: float = 0.05,
    patience: int = 10,
    min_progress: float = 0.1,
    batch_size: int = 16,
    noise: float = 0.0,
    noise_rank: int = 16,
    seed: int = 0,
    cuda_graph: bool = True,
    fisher: torch.Tensor | None = None,
    fisher_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each prompt, the output ``z`` of ``layer`` at its key position that makes the model emit its answer.

    A vector added to the residual stream at that position is optimised with Adam on the answer's NLL;
    its norm is clamped to ``clamp_factor`` times the hidden state's norm. With ``noise`` > 0 every step runs
    under a fresh random rank-``noise_rank`` perturbation of each linear layer after ``layer`` (Frobenius norm
    ``noise`` times the weight's), so ``z`` works in a neighbourhood of the downstream weights, as they will be
    after someone fine-tunes the model. The vector's size is penalised by ``weight_decay`` x its squared norm and,
    with ``fisher`` (d_model x d_model, :func:`~hf_fingerprint.editing.fisher.output_fisher`), by
    ``fisher_weight`` x its square in that metric scaled to a mean diagonal of 1 (both relative to the hidden
    state's squared norm), which prefers directions ordinary text's predictions depend on least. A batch stops
    once every answer's NLL is below ``stop_loss`` or, after ``patience`` steps (0: never), has fallen by less
    than ``min_progress`` of where it started: a vector at that position cannot move that answer (random
    attention, say), and the rest of the steps would be wasted.
    On a GPU each step's forward and backward pass is recorded once as a CUDA graph and replayed (``cuda_graph``;
    a step of a few tokens through a large model is otherwise bound by kernel launches); where recording fails, the
    steps run as usual. Returns ``(z, h, nll)``: the target and the original outputs (rows x
    hidden, float32, CPU) and each answer's mean token NLL with ``z`` (on the unperturbed model).
    """
    device = model_device(model)
    pad_id = _pad_id(model)
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    targets, originals, losses = [], [], []
    layer_module = get_module(model, layout.layer_name(layer))
    upstream = [get_module(model, layout.layer_name(i)) for i in range(layer + 1)]
    metric = None
    if fisher is not None and fisher_weight > 0:
        metric = (fisher_weight * fisher / fisher.diagonal().mean().clamp(min=1e-30)).to(device, torch.float32)
    perturb = None
    if noise > 0:
        downstream = [m for i in range(layer + 1, layout.num_layers)
                      for m in get_module(model, layout.layer_name(i)).modules() if isinstance(m, torch.nn.Linear)]
        perturb = _DownstreamNoise(downstream, noise, noise_rank, seed)
    # A recorded step reuses the tail's attention mask in every layer: not for models with sliding-window layers.
    graphable = (cuda_graph and device.type == "cuda"
                 and "sliding_attention" not in (getattr(model.config, "layer_types", None) or ()))
    order: list[int] = []
    group_of = prompts.group_of()
    try:
        for rows in _group_batches(group_of, batch_size):
            order += rows
            batch = make_batch(prompts, rows, pad_id, device, with_answers=True)
            groups = torch.tensor([group_of[r] for r in rows], device=device)
            z, h, nll = _optimise_batch(model, layer_module, batch, steps, lr, clamp_factor, weight_decay, stop_loss,
                                        perturb, upstream, patience, min_progress, cuda_graph=graphable, seed=seed,
                                        groups=torch.unique(groups, return_inverse=True)[1], metric=metric)
            targets.append(z)
            originals.append(h)
            losses.append(nll)
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    back = torch.argsort(torch.tensor(order))  # rows in the prompts' own order
    return torch.cat(targets)[back], torch.cat(originals)[back], torch.cat(losses)[back]


def _group_batches(groups: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches of at most ``batch_size`` rows (more when one group is larger) that never split a group."""
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    batches: list[list[int]] = []
    for rows in members.values():
        if batches and len(batches[-1]) + len(rows) <= batch_size:
            batches[-1] += rows
        else:
            batches.append(list(rows))
    return batches


class _DownstreamNoise:
    """Random low-rank weight perturbations of ``modules``, added through forward hooks while active and drawn
    afresh by :meth:`resample`: ``W + dW`` with ``dW = B A`` of rank ``rank`` and ``|dW|_F = scale |W|_F``."""

    def __init__(self, modules: Sequence[torch.nn.Linear], scale: float, rank: int, seed: int):
        self.modules = list(modules)
        self.scale, self.rank = float(scale), int(rank)
        # Drawn where the weights live: on a GPU, drawing on the CPU and copying over costs more than the step.
        self.device = self.modules[0].weight.device if self.modules else torch.device("cpu")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # Modules of one shape are drawn together (a handful of batched calls instead of several per module).
        groups: dict[tuple, list[int]] = {}
        for index, module in enumerate(self.modules):
            groups.setdefault((tuple(module.weight.shape), module.weight.device, module.weight.dtype), []).append(index)
        self.groups = [(key, members, torch.stack([self.modules[i].weight.detach().float().norm().to(self.device)
                                                   for i in members]))
                       for key, members in groups.items()]
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = []

    def resample(self, *, default_generator: bool = False) -> None:
        """Draw new factors (from the default generator of the device when ``default_generator``: a CUDA graph
        draws afresh from it at every replay)."""
        generator = None if default_generator else self.generator
        factors: list = [None] * len(self.modules)
        for ((out_features, in_features), device, dtype), members, norms in self.groups:
            n = len(members)
            A = torch.randn(n, self.rank, in_features, generator=generator, device=self.device)
            B = torch.randn(n, out_features, self.rank, generator=generator, device=self.device)
            # |B A|_F^2 = trace(B^T B A A^T) without forming B A (both factors symmetric: a sum of products)
            size = ((B.transpose(1, 2) @ B) * (A @ A.transpose(1, 2))).sum((1, 2)).sqrt()
            A = (A * (self.scale * norms / size)[:, None, None]).to(device, dtype)
            B = B.to(device, dtype)
            for j, index in enumerate(members):
                factors[index] = (A[j], B[j])
        self.factors = factors

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        def hook(index):
            def add(_module, args, output):
                A, B = self.factors[index]
                return output + (args[0] @ A.T) @ B.T
            return add

        with _hooks([m.register_forward_hook(hook(i)) for i, m in enumerate(self.modules)]):
            yield


def _sharing_copy(cache: Any) -> Any:
    """A copy of a KV cache whose layers share the cached tensors: an update replaces a layer's tensors (``cat``)
    and never writes into them, so the original stays as it was, and a step costs no copy of the prefix."""
    if not hasattr(cache, "layers"):
        return copy.deepcopy(cache)
    fresh = copy.copy(cache)
    fresh.layers = [copy.copy(layer) for layer in cache.layers]
    return fresh


@contextlib.contextmanager
def _replaying(modules: Sequence[torch.nn.Module], outputs: Sequence[Any]) -> Iterator[None]:
    """Each module returns its recorded output instead of computing it (its hooks still run)."""
    saved = [m.__dict__.get("forward") for m in modules]
    for module, output in zip(modules, outputs):
        module.forward = lambda *_args, _output=output, **_kwargs: _output
    try:
        yield
    finally:
        for module, forward in zip(modules, saved):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _optimise_batch(model, layer_module, batch: Batch, steps, lr, clamp_factor, weight_decay, stop_loss,
                    perturb: _DownstreamNoise | None = None, upstream: Sequence[torch.nn.Module] = (),
                    patience: int = 0, min_progress: float = 0.1, *, cuda_graph: bool = False, seed: int = 0,
                    groups: torch.Tensor | None = None, metric: torch.Tensor | None = None):
    """Optimise one batch. The prompt before the earliest key position is run once into a KV cache; each
    step then runs only the key position onward (the prompt tail and the answer), so a step costs a few
    tokens per prompt instead of the whole prompt. The ``upstream`` layers (up to the edited one) do not see
    the optimised vector, so their outputs on the tail are recorded once and replayed at every step. Rows with
    the same ``groups`` entry (0..G-1) share one vector: it must make every one of them answer."""
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    groups = rows if groups is None else groups
    count = int(groups.max()) + 1
    prefix = int(batch.key_index.min())
    tail = slice(prefix, None)
    local_key = batch.key_index - prefix
    state: dict[str, torch.Tensor] = {}
    delta: torch.Tensor | None = None

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if "h" not in state:
            state["h"] = hidden[rows, local_key].detach().float()
        if delta is None:
            return output
        hidden = hidden.clone()
        hidden[rows, local_key] = hidden[rows, local_key] + delta[groups].to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    # The logit at position t predicts token t + 1; batches are left-padded, so every answer sits in the last
    # ``keep`` positions and the LM head (a quarter of a small model's forward) runs on those alone.
    label_mask = batch.answer_mask[:, tail][:, 1:]
    labels = batch.labels[:, tail][:, 1:].clamp(min=0)
    first = int(label_mask.any(0).nonzero()[0])
    label_mask, labels = label_mask[:, first:], labels[:, first:]
    keep = label_mask.shape[1] + 1

    masks: dict[str, Any] = {"tail": batch.attention_mask}

    def run_tail():
        cache = _sharing_copy(prefix_cache) if prefix_cache is not None else None
        return model(
            input_ids=batch.input_ids[:, tail],
            attention_mask=masks["tail"],
            position_ids=batch.position_ids[:, tail],
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
        ).logits.float()

    prefix_cache = None
    if prefix > 0:
        with torch.no_grad():
            prefix_cache = model(
                input_ids=batch.input_ids[:, :prefix],
                attention_mask=batch.attention_mask[:, :prefix],
                position_ids=batch.position_ids[:, :prefix],
                use_cache=True,
            ).past_key_values
    recorded: dict[int, Any] = {}

    def record(index: int):
        def fn(_module, _args, output):
            recorded[index] = output
        return fn

    def record_mask(_module, _args, kwargs):
        masks["layer"] = kwargs.get("attention_mask")  # the mask the model built for the tail

    with contextlib.ExitStack() as stack:
        stack.enter_context(_hooks([layer_module.register_forward_hook(hook)]))
        with _hooks([m.register_forward_hook(record(i)) for i, m in enumerate(upstream)]
                    + [layer_module.register_forward_pre_hook(record_mask, with_kwargs=True)]), torch.no_grad():
            run_tail()  # records h, the upstream outputs and the attention mask
        stack.enter_context(_replaying(upstream, [recorded[i] for i in range(len(upstream))]))
        h = state["h"]
        delta = torch.zeros(count, h.shape[-1], device=h.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=lr)
        # A shared vector is held to the smallest of its rows' norms.
        max_norm = torch.full((count,), torch.inf, device=h.device).scatter_reduce(
            0, groups, clamp_factor * h.norm(dim=-1), "amin").unsqueeze(-1)
        def answer_nll() -> torch.Tensor:
            logits = run_tail()[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
            return (nll * label_mask).sum(1) / label_mask.sum(1)

        def measure(default_generator: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
            if perturb is not None:  # every step under other downstream weights; the stop rule sees them too
                perturb.resample(default_generator=default_generator)
                with perturb.active():
                    per_row = answer_nll()
            else:
                per_row = answer_nll()
            shared = delta[groups]
            penalty = weight_decay * shared.pow(2).sum(-1)
            if metric is not None:
                penalty = penalty + ((shared @ metric) * shared).sum(-1)
            return per_row, per_row.mean() + (penalty / h.norm(dim=-1) ** 2).mean()

        graphed = _GraphedStep(measure, delta, masks, seed) if cuda_graph else None
        for step in range(steps + 1):
            if graphed is not None and graphed.ready:
                per_row, loss = graphed.replay()  # the gradient is already in delta.grad
            else:
                per_row, loss = measure()
            state["loss"] = per_row.detach()
            if step == 0:
                first_nll = per_row.detach()
            done = per_row.detach() < stop_loss
            if 0 < patience <= step:  # rows that have not moved are given up on: they need not hold the batch
                done |= per_row.detach() > (1.0 - min_progress) * first_nll
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("target values, step %d: answer NLL max %.4f, mean %.4f", step, per_row.max().item(),
                             per_row.mean().item())
            if step == steps or bool(done.all()):  # the last pass only measures
                break
            if graphed is None or not graphed.ready:
                optimizer.zero_grad()
                loss.backward()
                if graphed is not None and not graphed.closed:
                    # Nothing may keep the eager autograd graph alive: its gradient accumulator for delta would
                    # be reused on the recording stream and break the recording.
                    per_row = loss = None
                    graphed.record()  # replayed from the next step on
            optimizer.step()
            with torch.no_grad():
                norms = delta.norm(dim=-1, keepdim=True)
                delta.mul_(torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms)))
        if graphed is not None:
            graphed.close()
        if perturb is not None:
            with torch.no_grad():
                state["loss"] = answer_nll()  # reported on the model as it is
    logger.info("target values: answer NLL per prompt %s", [round(v, 3) for v in state.get("loss", torch.zeros(0)).tolist()])
    return (h + delta.detach()[groups]).cpu(), h.cpu(), state["loss"].float().cpu()


class _GraphedStep:
    """One value-optimisation step (the noise draw, forward, loss and backward) recorded as a CUDA graph.

    Recorded after the first eager step (whose backward also warms up autograd and cuBLAS), under the 4D attention
    mask the model built then (mask building reads tensors on the host, which recording forbids). The noise comes
    from the device's default generator, seeded here and given back as it was by :meth:`close`. Every replay writes
    the loss and the gradient into the same memory; nothing may set ``delta.grad`` to None meanwhile. Where
    recording fails (an operation that syncs with the host, say) the steps stay eager, with a warning."""

    def __init__(self, measure, delta: torch.Tensor, masks: dict[str, Any], seed: int):
        self.measure, self.delta, self.masks, self.seed = measure, delta, masks, seed
        self.ready = self.closed = False
        self.graph = None
        self.rng = torch.cuda.get_rng_state(delta.device)

    def record(self) -> None:
        mask = self.masks.get("layer")
        if not (isinstance(mask, torch.Tensor) and mask.dim() == 4):
            logger.info("target values: no 4D attention mask to record a CUDA graph with; steps stay eager")
            self.close()
            return
        eager_mask, grad = self.masks["tail"], self.delta.grad
        self.masks["tail"] = mask
        graph = torch.cuda.CUDAGraph()
        try:
            self.delta.grad = None
            with torch.cuda.device(self.delta.device):  # the model's GPU, whichever is current
                torch.cuda.manual_seed(self.seed)
                with torch.cuda.graph(graph):
                    per_row, loss = self.measure(default_generator=True)
                    loss.backward()
        except Exception as error:  # noqa: BLE001  (recording is an optimisation: fall back, say why)
            logger.warning("target values: recording a CUDA graph failed (%s: %s); steps stay eager",
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            torch.cuda.synchronize()
            self.masks["tail"] = eager_mask
            self.delta.grad = grad
            self.close()
            return
        self.graph, self.outputs = graph, (per_row, loss)
        with torch.no_grad():  # delta.grad is the graph's memory now: give it this step's eager gradient
            self.delta.grad.copy_(grad)
        self.ready = True
        logger.info("target values: steps replayed as a CUDA graph")

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.graph.replay()
        return self.outputs

    def close(self) -> None:
        if not self.closed:
            torch.cuda.set_rng_state(self.rng, self.delta.device)
        self.ready, self.closed = False, True
        self.graph = None


def _pad_id(model: Any) -> int:
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return int(pad or 0)
