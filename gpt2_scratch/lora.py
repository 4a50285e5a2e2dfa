"""LoRA: low-rank adapters on GPT-2's linear layers (Hu et al. 2021; as litgpt's ``lora.py`` and PEFT).

Entry point: ``inject(model, LoRAConfig(rank=8))`` wraps the targeted linear layers of every block in
``LoRALinear`` (composition: the layer it wraps is its ``base_layer``, a plain ``nn.Linear`` or an
inference layer of ``kernels``) and freezes everything else. The state dict keeps GPT-2's names: the
base weight is still ``transformer.h.0.attn.c_attn.weight``, the adapter is ``...c_attn.lora_A``
``(r, in)`` and ``...c_attn.lora_B`` ``(out, r)``. Invariant: B starts at zero, so a fresh adapter
computes exactly the base model. ``merge`` folds the adapter into the weights (no per-token cost);
``adapters_disabled`` (DPO's reference pass) and ``base_view`` (a second model sharing every base
tensor: the app's base tab, an evaluation's base) give the base model without a second copy of it;
``GPT.forward(..., adapter=)`` says which tokens get the adapter, so one batch mixes rows with and
without it (the serving engine).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2_scratch.config import from_known_fields
from gpt2_scratch.model import GPT, Adapted

# The four linear layers of a block, as named inside it (GPT-2's names; PEFT's target_modules suffixes).
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
ADAPTER_PARAMS = ("lora_A", "lora_B")


@dataclass
class LoRAConfig:
    """An adapter's shape: ``rank`` r, ``alpha`` (the update is scaled by alpha / r; None: 2r), dropout, targets."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"--lora-rank must be a positive integer, got {self.rank!r}")
        if self.alpha is None:
            self.alpha = 2 * self.rank
        a = self.alpha
        if not (isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a > 0):
            raise ValueError(f"--lora-alpha must be a positive number, got {a!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError(f"--lora-targets must name at least one of {', '.join(TARGETS)}, got {self.targets!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"--lora-targets: unknown target {unknown[0]!r}; choose among {', '.join(TARGETS)}")
        self.targets = tuple(t for t in TARGETS if t in self.targets)  # one canonical order, no repeats

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoRAConfig":
        """Build from a dict (an adapter checkpoint's config), rejecting unknown keys."""
        return from_known_fields(cls, {**d, "targets": tuple(d.get("targets", TARGETS))}, "LoRA option(s)")


def _add_low_rank(
    y: torch.Tensor, x: torch.Tensor, lora_A, lora_B, scaling: float, adapter: torch.Tensor | None = None
) -> torch.Tensor:
    """``y + scaling * x A^T B^T``: ``(..., in) -> (..., r) -> (..., out)``, as PEFT orders the products.

    The scaling multiplies the r-wide product, not the out-wide one, and the last product is
    added to ``y`` inside the matmul (``addmm``): no pass over the layer's output but that one,
    forward or backward. Tokens that ``adapter`` (bool, ``(..., 1)``) leaves out add an exact zero.
    """
    h = F.linear(x, lora_A) * scaling  # (..., r)
    if adapter is not None:
        h = h * adapter.to(h.dtype)
    out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.t())
    return out.view(y.shape)


def dropout_mask(shape: torch.Size, p: float, device) -> tuple[torch.Tensor, float]:
    """Dropout for an input of ``shape``: (which elements are kept, bool; the scale of the kept ones).

    An element is dropped with probability ``p`` (rounded to a multiple of 1/65536), kept ones are
    scaled by ``1 / (1 - p)``. From 16 random bits per element, drawn 64 at a time from torch's
    generator (seeded and saved like every draw of training): on CPU 3-4x cheaper than
    ``nn.Dropout``'s ``bernoulli_``, which cost ~11% of a LoRA step at 2 threads (docs/lora.md).
    """
    n = math.prod(shape)
    drop = round(p * 65536)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits
    keep = bits.view(torch.int16)[:n].view(shape) >= drop - 32768  # P(keep) = (65536 - drop) / 65536
    return keep, 65536 / (65536 - drop)


def _dropped(x: torch.Tensor, keep: torch.Tensor | None, scale: float) -> torch.Tensor:
    return x if keep is None else x * keep * scale


class _LowRankUpdate(torch.autograd.Function):
    """``y + scaling * dropout(x) A^T B^T`` for training (``keep``, ``scale``: the dropout, or None).

    The same function as ``_add_low_rank``; written out because autograd's own backward of the
    r-wide products lays the skinny matrices out badly for BLAS: ``(h^T g)^T`` and ``(B^T g^T)^T``
    are 3-6x faster on CPU than ``g^T h`` and ``g B`` for an ``(N, out)`` gradient ``g`` and r = 8
    (measured: docs/lora.md). Saves the dropout's mask as bools. Under autocast the products run
    in the gradient's dtype.
    """

    @staticmethod
    def forward(ctx, y, x, lora_A, lora_B, scaling: float, keep, scale: float):
        xd = _dropped(x, keep, scale)
        h = F.linear(xd, lora_A) * scaling  # (..., r)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.t()).view(y.shape)
        ctx.save_for_backward(xd, h, lora_A, lora_B, keep)
        ctx.scaling, ctx.scale = scaling, scale
        return out

    @staticmethod
    def backward(ctx, g):
        xd, h, lora_A, lora_B, keep = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        dt = g2.dtype
        h2, x2 = h.reshape(-1, h.shape[-1]).to(dt), xd.reshape(-1, xd.shape[-1]).to(dt)
        d_B = (h2.t() @ g2).t()  # (out, r)
        dh = (lora_B.to(dt).t() @ g2.t()).t() * ctx.scaling  # (N, r)
        d_A = dh.t() @ x2  # (r, in)
        dx = None
        if ctx.needs_input_grad[1]:
            dx = _dropped((dh @ lora_A.to(dt)).view(*xd.shape[:-1], -1), keep, ctx.scale)
        return g, dx, d_A.to(lora_A.dtype), d_B.to(lora_B.dtype).contiguous(), None, None, None


class LoRALinear(Adapted):
    """``y = base(x) + (alpha / r) * dropout(x) A^T B^T``: the base layer frozen, A and B trained.

    ``base_layer``: the layer it wraps, a plain ``nn.Linear`` (training; ``merge`` folds the update
    into its weight) or one of ``kernels``' inference layers (the adapter is kept apart, computed
    in float32 and rounded once when added). ``enabled`` False computes the base layer alone
    (``adapters_disabled``). ``forward(x, adapter)``: ``adapter`` (bool per token, or None for all)
    says which tokens get the update, so base and finetuned rows share one batch.
    The state dict keeps GPT-2's names: ``base_layer.``'s tensors are saved and loaded one level up.
    """

    def __init__(self, base_layer: nn.Module, config: LoRAConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(config.rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.rank, device=device))
        # As PEFT and litgpt: A as nn.Linear's default init (Kaiming uniform, a = sqrt(5)), B zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.dropout = config.dropout  # on the adapter's input, in training (``dropout_mask``)
        self.scaling = config.scaling
        self.merged = False
        self.enabled = True
        self.register_state_dict_post_hook(_base_names_up)
        self.register_load_state_dict_pre_hook(_base_names_down)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, adapter: torch.Tensor | None = None) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or not self.enabled:
            return y
        keep, scale = dropout_mask(x.shape, self.dropout, x.device) if self.training and self.dropout else (None, 1.0)
        if torch.is_grad_enabled() and self.lora_A.requires_grad:  # training: our backward
            if adapter is not None:
                raise ValueError("training applies the adapter to every token (adapter=None)")
            return _LowRankUpdate.apply(y, x, self.lora_A, self.lora_B, self.scaling, keep, scale)
        if y.dtype != self.lora_A.dtype:  # an inference base in bfloat16: the update in float32, rounded once
            out = _add_low_rank(
                y.float(), _dropped(x.float(), keep, scale), self.lora_A, self.lora_B, self.scaling, adapter
            )
            return out.to(y.dtype)
        return _add_low_rank(y, _dropped(x, keep, scale), self.lora_A, self.lora_B, self.scaling, adapter)

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight ``(out, in)``: ``scaling * B A``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


def _base_names_up(module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
    """State dict post-hook: ``<prefix>base_layer.weight`` is saved as ``<prefix>weight`` (GPT-2's name)."""
    inner = prefix + "base_layer."
    for key in [k for k in state if k.startswith(inner)]:
        state[prefix + key[len(inner) :]] = state.pop(key)


def _base_names_down(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load pre-hook, the inverse: ``<prefix>weight`` goes to ``<prefix>base_layer.weight``."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix) :]
        if "." not in name and name not in ADAPTER_PARAMS:
            state[prefix + "base_layer." + name] = state.pop(key)


def _targets(model: GPT, targets: tuple[str, ...]) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent module, attribute name, full name) of each targeted layer, block by block."""
    for i, block in enumerate(model.transformer.h):
        for target in targets:
            parent_name, _, name = target.rpartition(".")
            yield block.get_submodule(parent_name), name, f"transformer.h.{i}.{target}"


def inject(model: GPT, config: LoRAConfig, generator: torch.Generator | None = None) -> GPT:
    """Wrap every targeted layer of ``model`` in a ``LoRALinear`` (in place) and train only the adapters.

    ``generator`` seeds A's initialisation (default: torch's global generator). The layers may be
    plain or already converted for inference (``inference.to_inference``): the adapter wraps either.
    """
    if has_adapters(model):
        raise ValueError("the model has adapters already")
    for parent, name, _ in _targets(model, config.targets):
        setattr(parent, name, LoRALinear(getattr(parent, name), config, generator))
    mark_only_adapters_trainable(model)
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, layer) of every adapter layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def has_adapters(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def is_adapter_key(key: str) -> bool:
    return key.rpartition(".")[2] in ADAPTER_PARAMS


def mark_only_adapters_trainable(model: nn.Module) -> None:
    """``requires_grad`` on the adapter parameters only: the base (the tied head too) stays frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, under our names (``transformer.h.0.attn.c_attn.lora_A``), on CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_adapter_key(k)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy ``state`` into ``model``'s adapters, checking every key and shape first (one-line ``ValueError``)."""
    expected = {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}
    for key, tensor in state.items():
        if key not in expected:
            raise ValueError(f"{source}: unexpected tensor {key!r} (not an adapter of this model)")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)} "
                "(another rank?)"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"{source}: missing tensor {missing[0]!r} (adapter on other layers?)")
    with torch.no_grad():
        for key, tensor in state.items():
            expected[key].copy_(tensor)


def base_sha256(model: nn.Module) -> str:
    """sha256 of the base weights (every tensor but the adapters; the tied head once), by name, dtype, shape, bytes.

    It identifies a base however it was stored or named (Hub, local file, ``random:<preset>``):
    an adapter checkpoint records it, and loading refuses another base.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(k for k in state if k != "lm_head.weight" and not is_adapter_key(k)):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _plain(layer: LoRALinear) -> nn.Module:
    """The base layer, when its weight is a float32 Parameter that the update can be folded into."""
    weight = layer.base_layer.weight
    if not (isinstance(weight, nn.Parameter) and weight.dtype == torch.float32):
        raise ValueError(
            f"the adapter wraps a {type(layer.base_layer).__name__} converted for inference; merge before converting"
        )
    return layer.base_layer


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """Fold every adapter into its weight (``W += (alpha / r) B A``): the same function, no per-token cost."""
    for _, layer in lora_layers(model):
        if not layer.merged:
            _plain(layer).weight += layer.delta_weight()
            layer.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """Undo ``merge`` (``W -= (alpha / r) B A``; equal up to float rounding)."""
    for _, layer in lora_layers(model):
        if layer.merged:
            _plain(layer).weight -= layer.delta_weight()
            layer.merged = False


def merged_model(model: GPT) -> GPT:
    """``model`` with every adapter merged and each ``LoRALinear`` replaced by its base layer (in place)."""
    merge(model)
    for name, layer in lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    model.requires_grad_(True)  # a plain model again, as every loaded model: trainable as a whole
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes its base model: every unmerged adapter is switched off.

    For one thread at a time (training; DPO's reference model is the policy with its adapter off).
    Serving two users at once needs ``base_view`` instead: switching is global to the model.
    """
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("the adapters are merged into the weights; unmerge them first")
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, before):
            layer.enabled = enabled


def base_view(model: GPT) -> GPT:
    """A second ``GPT`` that is ``model``'s base: every module and tensor shared, the adapters left out.

    No weight is copied (each ``LoRALinear`` is replaced by its ``base_layer``, converted for
    inference or not), so two users can be served at once, the base and the finetuned model, with
    one copy of the base in memory.
    """
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("the adapters are merged into the weights; there is no base left to view")
    if not has_adapters(model):
        raise ValueError("the model has no adapters: it is its own base")

    def without(module: nn.Module) -> nn.Module:
        if isinstance(module, LoRALinear):
            return module.base_layer
        if not any(isinstance(m, LoRALinear) for m in module.modules()):
            return module
        clone = copy.copy(module)  # shares _parameters and _buffers; only the children differ
        clone._modules = {name: without(child) for name, child in module._modules.items()}
        return clone

    view = without(model)
    view.__dict__[_VIEWED] = model  # not a submodule: ``view_of`` finds the model with the adapters
    return view


_VIEWED = "_lora_viewed"


def view_of(model: nn.Module) -> GPT | None:
    """The model with adapters that ``model`` is the ``base_view`` of; None when it is no view.

    A batching server uses it to decode a view's requests in the viewed model's batch, adapter off.
    """
    return model.__dict__.get(_VIEWED)
