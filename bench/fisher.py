"""Diagonal Fisher speed on FedAvgCNN: batched vs the batch-1 loop vs a plain backward.

For each kind (empirical, expected, sampled with M=1) on ``--n`` Fashion-MNIST training
images (random images if the dataset is absent), times side by side in one process:

- ours: ``diagonal_fisher`` with its default backend and ``chunk_size``;
- loop: ``diagonal_fisher_loop`` (one forward/backward per sample, one backward per class
  for expected) on the first ``--loop-n`` samples, scaled linearly to ``--n``;
- plain: one forward + backward of the mean cross-entropy over the same ``--n`` samples,
  in the same chunks (gradients accumulated), i.e. the cost of one ordinary gradient.

``speedup = loop / ours``, ``over_backward = ours / plain``. ``max_rel_err`` compares ours
with the loop on the ``--loop-n`` samples both computed: ``max |a - b| / max |b|``.
Ours and plain are the median of ``--repeats`` interleaved runs; the loop runs once.
All variants use ``torch.set_num_threads(--threads)`` (default: all cores). Run: ``python -m bench.fisher``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from bench.timing import interleaved_medians
from fedfish.fisher import KINDS, diagonal_fisher, diagonal_fisher_loop
from fedfish.models import FedAvgCNN

CHUNK_SIZE = 256  # diagonal_fisher's default; plain uses the same chunks
SEED = 0


def _inputs(n: int) -> tuple[Tensor, Tensor, str]:
    """First ``n`` Fashion-MNIST training images and labels, or random ones if absent."""
    try:
        from fedfish.data import load_images

        x, y = load_images("fashion-mnist", "train")
        return x[:n], y[:n], "Fashion-MNIST train"
    except (FileNotFoundError, ImportError) as err:
        gen = torch.Generator().manual_seed(SEED)
        note = f"random N(0,1) images ({type(err).__name__}: Fashion-MNIST not loaded)"
        return torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen), note


def _plain_backward(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Gradient of the mean cross-entropy over all samples, chunk by chunk."""
    model.zero_grad(set_to_none=True)
    for start in range(0, x.shape[0], CHUNK_SIZE):
        logits = model(x[start : start + CHUNK_SIZE])
        loss = nn.functional.cross_entropy(logits, y[start : start + CHUNK_SIZE], reduction="sum")
        (loss / x.shape[0]).backward()


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="samples (default 1024)")
    parser.add_argument(
        "--loop-n", type=int, default=0,
        help="samples the loop runs on, scaled to --n (default: 256; 128 for expected)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours and plain (median)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(),
        help="torch threads for every variant (default: torch's default, all cores, as users run it; "
        "--threads 1 shows the single-core picture, where the batch-1 loop suffers far less from "
        "per-op threading overhead)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = FedAvgCNN().eval()
    x, y, source = _inputs(args.n)
    print(
        f"FedAvgCNN ({sum(p.numel() for p in model.parameters()):,} params), N={x.shape[0]} {source}, "
        f"chunk_size={CHUNK_SIZE}, threads={torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'kind':>9} {'ours s':>8} {'plain s':>8} {'loop s':>8} {'loop_n':>6} "
          f"{'speedup':>8} {'over_bwd':>8} {'max_rel_err':>11}")
    results: dict[str, tuple[float, float, float]] = {}
    for kind in KINDS:
        med = interleaved_medians(
            {
                "ours": lambda kind=kind: diagonal_fisher(model, x, y, kind, generator=_generator()),
                "plain": lambda: _plain_backward(model, x, y),
            },
            args.repeats,
        )
        loop_n = min(x.shape[0], args.loop_n or (128 if kind == "expected" else 256))
        start = time.perf_counter()
        loop = diagonal_fisher_loop(model, x[:loop_n], y[:loop_n], kind, generator=_generator())
        loop_s = (time.perf_counter() - start) * x.shape[0] / loop_n
        ours_sub = diagonal_fisher(model, x[:loop_n], y[:loop_n], kind, generator=_generator())
        err = float((ours_sub - loop).abs().max() / loop.abs().max())
        speedup, over = loop_s / med["ours"], med["ours"] / med["plain"]
        results[kind] = (speedup, over, err)
        print(f"{kind:>9} {med['ours']:>8.2f} {med['plain']:>8.2f} {loop_s:>8.2f} {loop_n:>6} "
              f"{speedup:>8.1f} {over:>8.2f} {err:>11.2e}")
    print(f"loop s is measured on the first loop_n samples and scaled linearly to N={x.shape[0]}; "
          "max_rel_err is on those loop_n samples.")
    (s_e, o_e, e_e), (s_x, o_x, e_x), (s_s, o_s, e_s) = (results[k] for k in KINDS)
    print(
        f"RESULT fisher_speedup={s_e:.2f} fisher_over_backward={o_e:.2f} max_rel_err={e_e:.2e} "
        f"expected_speedup={s_x:.2f} expected_over_backward={o_x:.2f} expected_max_rel_err={e_x:.2e} "
        f"sampled_speedup={s_s:.2f} sampled_over_backward={o_s:.2f} sampled_max_rel_err={e_s:.2e}"
    )


if __name__ == "__main__":
    main()
