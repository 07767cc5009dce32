"""Calibration: the sampled clients' mask scores, checked and combined into one score vector.

A data-based mask source (Fisher, saliency) computed by clients comes back as one score
payload per client: dense (fp32/fp16) or sparse (each client's top-k' entries). Each is
decoded and checked here (finite, non-negative, the model's length) before anything is
combined. Combining must not let one client choose the mask: each client's scores are
scaled to sum 1 (so none outweighs the others by its scale or its claimed examples), then
averaged coordinate by coordinate after dropping the largest and the smallest values
(a trimmed mean), so a client that puts all its mass on positions of its choice moves
the mask by little; tests/test_robustness.py measures how little.
"""

from __future__ import annotations

import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedfish import codec
from strategies.records import Reply
from strategies.replies import ReplyBatch, ReplyRules, check_replies


def decode_scores(reply: Reply, num_params: int) -> torch.Tensor:
    """fp32 ``(P,)`` scores of one reply's ``scores`` payload (zeros where a sparse upload sent none).

    Raises
    ------
    fedfish.codec.CodecError
        The payload does not decode to ``num_params`` finite, non-negative scores.
    """
    payload = reply.payloads["scores"]
    if codec.parse_header(payload).kind == codec.Kind.SPARSE:
        indices, values = codec.decode_sparse(payload, num_params)
        scores = torch.zeros(num_params).index_put_((indices,), values)
    else:
        scores = codec.decode_dense(payload, num_params)
    if (scores < 0).any():
        raise codec.CodecError("scores must be non-negative")
    return scores


def request_scores(grid: Grid, messages: list[Message], num_params: int, rules: ReplyRules, timeout: float
                   ) -> ReplyBatch:
    """Send the calibration queries; the replies sorted out, each accepted one with its
    scores decoded and checked (:func:`decode_scores`)."""
    replies = grid.send_and_receive(messages, timeout=timeout)
    return check_replies(replies, decode=lambda reply: decode_scores(reply, num_params), rules=rules,
                         required_payloads=("scores",))


def combine_scores(batch: ReplyBatch, trim_fraction: float = 0.1, robust: bool = True) -> torch.Tensor | None:
    """The accepted clients' scores combined into one vector; None if none is usable.

    ``robust``: each client's scores scaled to sum 1, then a coordinate-wise trimmed mean that
    drops ``floor(trim_fraction * n)`` values at each end of every coordinate, at least one
    once there are three clients (below three nothing can be trimmed: the plain mean); clients
    whose scores are all zero carry no information and are left out. Otherwise the
    examples-weighted mean (each client's scores are a mean over its examples), which one
    client can steer.
    """
    if not robust:
        if not batch.accepted:
            return None
        total = sum(reply.num_examples for reply, _ in batch.accepted)
        return sum(scores * (reply.num_examples / total) for reply, scores in batch.accepted)  # type: ignore[return-value]
    normalised = [scores / scores.sum() for _, scores in batch.accepted if float(scores.sum()) > 0]
    if not normalised:
        return None
    n = len(normalised)
    cut = max(int(trim_fraction * n), 1) if n >= 3 else 0
    ordered = torch.sort(torch.stack(normalised), dim=0).values
    return ordered[cut : n - cut].mean(dim=0)
