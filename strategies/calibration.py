"""Calibration: the sampled clients' mask scores, checked and combined into one score vector.

A data-based mask source (Fisher, saliency) computed by clients comes back as one score
payload per client: dense (fp32/fp16) or sparse (each client's top-k' entries). Each is
decoded and checked here (finite, non-negative, the model's length) before anything is
combined; a client's scores are a mean over its examples, so they are weighted by how
many examples it used.
"""

from __future__ import annotations

import torch

from fedfish import codec
from strategies.records import Reply
from strategies.replies import ReplyBatch


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


def combine_scores(batch: ReplyBatch) -> torch.Tensor | None:
    """The example-weighted mean of the accepted clients' scores; None if none was accepted."""
    if not batch.accepted:
        return None
    total = sum(reply.num_examples for reply, _ in batch.accepted)
    return sum(scores * (reply.num_examples / total) for reply, scores in batch.accepted)  # type: ignore[return-value]
