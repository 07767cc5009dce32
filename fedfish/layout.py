"""One stable order for a model's parameters as a single flat vector.

Masks, Fisher scores, codecs and the wire all index the same flat vector; this
module is the only place that decides the order (``model.named_parameters()``
order, each tensor flattened row-major), so every component agrees on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a model's parameters in the flat vector.

    Parameters
    ----------
    names : tuple[str, ...]
        Parameter names in ``model.named_parameters()`` order.
    shapes : tuple[torch.Size, ...]
        Shape of each parameter tensor.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        """Layout of ``model``'s parameters (buffers are not part of it)."""
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of entries of each tensor."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start offset of each tensor in the flat vector (length ``len(names) + 1``)."""
        out = [0]
        for n in self.numels:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def num_params(self) -> int:
        """Length of the flat vector."""
        return self.offsets[-1]

    def slice_of(self, name: str) -> slice:
        """The flat-vector slice that holds parameter ``name``."""
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def indicator(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Boolean flat vector that is True on every entry of the named tensors.

        Raises
        ------
        ValueError
            If a name is not a parameter of this layout.
        """
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ValueError(f"ParamLayout.indicator: unknown parameter names {unknown}")
        out = torch.zeros(self.num_params, dtype=torch.bool)
        for name in names:
            out[self.slice_of(name)] = True
        return out

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` (shape ``(num_params,)``) reshaped to each tensor's shape."""
        self._check_flat(flat, "split")
        return [
            chunk.view(shape)
            for chunk, shape in zip(torch.split(flat, self.numels), self.shapes, strict=True)
        ]

    def _check_flat(self, flat: torch.Tensor, who: str) -> None:
        if flat.dim() != 1 or flat.numel() != self.num_params:
            raise ValueError(
                f"ParamLayout.{who}: expected a flat vector of {self.num_params} entries, "
                f"got shape {tuple(flat.shape)}"
            )


def flatten_params(model: nn.Module) -> torch.Tensor:
    """Copy of all parameters as one detached fp32 CPU vector, in layout order."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


def load_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Write a flat vector (layout order) into ``model``'s parameters in place."""
    layout = ParamLayout.of(model)
    with torch.no_grad():
        for p, chunk in zip(model.parameters(), layout.split(flat), strict=True):
            p.copy_(chunk.to(device=p.device, dtype=p.dtype))


def buffer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the model's persistent buffers (BatchNorm running statistics and counters),
    in ``state_dict`` order: the part of a model's state that is not a parameter."""
    parameters = {name for name, _ in model.named_parameters()}
    return tuple(name for name in model.state_dict() if name not in parameters)


def flatten_buffers(model: nn.Module) -> torch.Tensor:
    """All persistent buffers as one fp32 CPU vector (integer counters included), in
    :func:`buffer_names` order; empty for a model without buffers."""
    state = model.state_dict()
    names = buffer_names(model)
    if not names:
        return torch.zeros(0)
    return torch.cat([state[name].detach().reshape(-1).float().cpu() for name in names])


def load_flat_buffers(model: nn.Module, flat: torch.Tensor) -> None:
    """Write a :func:`flatten_buffers` vector back; integer buffers are rounded."""
    state = model.state_dict()
    names = buffer_names(model)
    sizes = [state[name].numel() for name in names]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"load_flat_buffers: expected {sum(sizes)} entries, got shape {tuple(flat.shape)}")
    with torch.no_grad():
        for name, chunk in zip(names, torch.split(flat, sizes), strict=True):
            target = state[name]
            value = chunk.round() if not target.is_floating_point() else chunk
            target.copy_(value.reshape(target.shape).to(device=target.device, dtype=target.dtype))


def params_digest(flat: torch.Tensor) -> str:
    """16 hex chars of the sha256 of a flat parameter vector's fp32 bytes: names a model."""
    data = flat.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
