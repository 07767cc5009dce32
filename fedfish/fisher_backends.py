"""Sums of squared per-sample gradients: the two backends behind :func:`fedfish.fisher.diagonal_fisher`.

Both take the ``(x, y)`` pairs of the Fisher's mean as a sample index and a label per pair
and return the SUM over pairs of ``(d log p(y | x) / d theta) ** 2``, float64 ``(P,)`` on the
model's device; the caller divides by the number of pairs once.

``"backpack"`` (:func:`backpack_sums`): BackPACK extensions on a private copy of the model
(the caller's model never carries BackPACK hooks): ``SumGradSquared`` on the summed
cross-entropy for empirical/sampled, ``DiagGGNExact`` for expected. For softmax
cross-entropy the GGN is the exact Fisher, ``J^T (diag(p) - p p^T) J = sum_c p_c J^T (e_c -
p)(e_c - p)^T J``, and ``J^T (e_c - p)`` is the gradient of ``log p(c | x)``, so its diagonal
is the expected Fisher. It needs a model whose parameters all sit in Linear/Conv/BatchNorm
modules (:func:`backpack_unsupported` names the others), each called once per forward,
wired module to module (no functional ops between them, no in-place op on a module's
output, e.g. torchvision's ResNet blocks).

``"func"`` (:func:`func_sums`): ``torch.func`` (``functional_call`` + ``vmap(grad)``,
``jacrev`` over the classes for expected). Works for any model ``vmap`` supports; it
materialises per-sample gradients, so its chunks are further capped to keep them under
``FUNC_MEMORY_BYTES``.

Also the model helpers both backends and :mod:`fedfish.fisher` share: :func:`eval_mode`,
:func:`device_dtype`, :func:`to_model_input`, :func:`param_count`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from backpack import backpack, extend
from backpack.context import CTX
from backpack.core.derivatives.convnd import weight_jac_t_save_memory
from backpack.extensions import DiagGGNExact, SumGradSquared
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

# Per-sample gradients the torch.func backend may hold at once (bytes).
FUNC_MEMORY_BYTES: int = 512 * 2**20
# Modules BackPACK's SumGradSquared and DiagGGNExact both know how to handle when they own parameters.
_BACKPACK_PARAM_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


class BackpackFirstChunkError(Exception):
    """BackPACK raised on the first chunk: the model is one it cannot handle."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def backpack_sums(
    model: nn.Module,
    inputs: Tensor,
    pair_index: Tensor,
    pair_labels: Tensor | None,
    kind: str,
    chunk_size: int,
) -> Tensor:
    """Sum over all pairs of the squared per-sample gradients, float64 ``(P,)`` on the model's device.

    ``pair_labels`` is None for ``kind="expected"`` (the GGN needs no labels). Raises
    :class:`BackpackFirstChunkError` when BackPACK fails on the first chunk; a failure on a
    later chunk propagates as is.
    """
    device, dtype = device_dtype(model)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        # BackPACK fills only parameters that require grad; the copy's flags are ours to set.
        p.requires_grad_(True)
        p.grad = None
    expected = kind == "expected"
    extension = DiagGGNExact() if expected else SumGradSquared()
    field = "diag_ggn_exact" if expected else "sum_grad_squared"
    # reduction="sum": SumGradSquared then sums g_n**2 (a mean would give (g_n / N)**2), and
    # DiagGGNExact sums the per-sample GGNs; the mean over pairs is taken once at the end.
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    first_handle = len(CTX.hook_handles)
    total = torch.zeros(param_count(model), dtype=torch.float64, device=device)
    try:
        extend(work)
        extend(loss_fn)
        for start, stop in _chunks(pair_index.numel(), chunk_size):
            x = to_model_input(inputs[pair_index[start:stop]], device, dtype)
            # The GGN does not depend on the labels; any valid class keeps the loss defined.
            if expected:
                y = torch.zeros(stop - start, dtype=torch.long)
            else:
                y = pair_labels[start:stop]  # type: ignore[index]
            try:
                # save_memory: BackPACK's conv per-sample rule via one higher-dimensional
                # conv instead of an input repeated C_in times (less memory, faster on CPU).
                with (
                    backpack(extension),
                    weight_jac_t_save_memory(save_memory=True),
                    warnings.catch_warnings(),
                ):
                    # The first module's input is data without grad; torch warns about that.
                    warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                    loss_fn(work(x), y.to(device)).backward()
            except torch.OutOfMemoryError:
                raise
            except (NotImplementedError, RuntimeError, AssertionError) as err:
                if start > 0:
                    raise
                raise BackpackFirstChunkError(err) from err
            total += torch.cat([getattr(p, field).reshape(-1) for p in work.parameters()])
            for p in work.parameters():
                p.grad = None
    finally:
        # extend() registered the copy's hooks in BackPACK's global list; drop ours only.
        for handle in CTX.hook_handles[first_handle:]:
            handle.remove()
        del CTX.hook_handles[first_handle:]
    return total


def func_sums(
    model: nn.Module,
    inputs: Tensor,
    pair_index: Tensor,
    pair_labels: Tensor | None,
    kind: str,
    chunk_size: int,
    num_classes: int,
) -> Tensor:
    """torch.func version of :func:`backpack_sums` on the caller's model (in eval mode)."""
    device, dtype = device_dtype(model)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    expected = kind == "expected"

    def log_prob(prm: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (prm, buffers), (x.unsqueeze(0),))  # (1, C)
        return -F.cross_entropy(logits, y.unsqueeze(0))

    def log_probs(prm: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.log_softmax(functional_call(model, (prm, buffers), (x.unsqueeze(0),)), dim=-1)[0]
        return out, out.detach()  # (C,), and the same as aux for the class weights

    def expected_sq(prm: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        jac, logp = jacrev(log_probs, has_aux=True)(prm, x)  # each (C, *shape)
        weights = logp.exp()
        return {name: torch.tensordot(weights, j.square(), dims=1) for name, j in jac.items()}

    per_sample: Callable[..., dict[str, Tensor]] = (
        vmap(expected_sq, in_dims=(None, 0))
        if expected
        else vmap(grad(log_prob), in_dims=(None, 0, 0))
    )
    vectors_per_sample = num_classes if expected else 1
    bytes_per_sample = param_count(model) * vectors_per_sample * torch.finfo(dtype).bits // 8
    step = max(1, min(chunk_size, FUNC_MEMORY_BYTES // bytes_per_sample))
    total = torch.zeros(param_count(model), dtype=torch.float64, device=device)
    with eval_mode(model):
        for start, stop in _chunks(pair_index.numel(), step):
            x = to_model_input(inputs[pair_index[start:stop]], device, dtype)
            if expected:
                out = per_sample(params, x)  # each (B, *shape), already squared and class-weighted
                sq = [out[name].sum(0) for name in params]
            else:
                y = pair_labels[start:stop].to(device)  # type: ignore[index]
                out = per_sample(params, x, y)  # each (B, *shape)
                sq = [out[name].square().sum(0) for name in params]
            total += torch.cat([s.reshape(-1) for s in sq])
    return total


def backpack_unsupported(model: nn.Module) -> list[str]:
    """Names of the module types owning parameters that BackPACK has no rule for."""
    return sorted(
        {
            type(m).__name__
            for m in model.modules()
            if any(True for _ in m.parameters(recurse=False))
            and not isinstance(m, _BACKPACK_PARAM_MODULES)
        }
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every module's own train flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's (first) parameter: where and in what it computes."""
    first = next(model.parameters())
    return first.device, first.dtype


def to_model_input(x: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``x`` on ``device``; floating inputs also cast to the parameters' ``dtype``."""
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def param_count(model: nn.Module) -> int:
    """Number of parameter entries ``P``."""
    return sum(p.numel() for p in model.parameters())


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)
