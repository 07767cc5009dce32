"""One local epoch of FedAvgCNN: masked (density 5%) vs dense training, side by side.

Both runs go through ``fedfish.training.masked_train`` (``mask=None`` is dense), on
the same Fashion-MNIST-shaped random data (1x28x28, 10 classes), batch 32, SGD with
momentum 0.9. The mask is ``top_k_mask`` over |standard normal| scores with the
classifier head always included, so, like a Fisher mask, it touches every tensor
(no tensor is entirely frozen, which is the hardest case for saving time).
Dense and masked epochs alternate (the order flips every repeat); the figure is the
median over repeats of the masked/dense ratio of each adjacent pair, so drift in machine
load hits both alike. It is taken on process CPU time (single-threaded by default), which
time spent waiting for a shared CPU does not inflate; the wall-clock ratio is printed too.

Run: ``python -m bench.masked_step [--samples 1024] [--repeats 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedfish.layout import ParamLayout
from fedfish.masks import Mask, top_k_mask
from fedfish.models import FedAvgCNN
from fedfish.training import TrainConfig, masked_train


def _time_epoch(
    model: FedAvgCNN,
    initial: dict[str, torch.Tensor],
    mask: Mask | None,
    loader: DataLoader,
    config: TrainConfig,
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``masked_train`` epoch from ``initial`` weights."""
    model.load_state_dict(initial)
    cpu, wall = time.process_time(), time.perf_counter()
    masked_train(model, mask, loader, config)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="examples per epoch")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per variant")
    parser.add_argument("--density", type=float, default=0.05, help="mask density in (0, 1]")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = FedAvgCNN()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    layout = ParamLayout.of(model)
    head = layout.indicator(FedAvgCNN.head_names)
    scores = torch.randn(layout.num_params, generator=torch.Generator().manual_seed(1)).abs()
    mask = top_k_mask(scores, args.density, always_include=head)

    g = torch.Generator().manual_seed(2)
    data = TensorDataset(
        torch.randn(args.samples, 1, 28, 28, generator=g),
        torch.randint(0, 10, (args.samples,), generator=g),
    )
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=g)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9)

    variants: dict[str, Mask | None] = {"dense": None, "masked": mask}
    for variant in variants.values():  # warm-up: allocator, oneDNN kernel selection
        _time_epoch(model, initial, variant, loader, config)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            cpu_s, wall_s = _time_epoch(model, initial, variants[name], loader, config)
            cpu[name].append(cpu_s)
            wall[name].append(wall_s)

    steps = -(-args.samples // 32)
    print(
        f"FedAvgCNN, {layout.num_params} params, mask k={mask.k} (density {mask.density:.4f}), "
        f"{args.samples} samples, {steps} steps, {args.threads} thread(s), {args.repeats} repeats"
    )
    print(f"{'variant':<8} {'clock':<5} {'median s/epoch':>15} {'ms/step':>9}   all runs (s)")
    for name in variants:
        for clock, table in (("cpu", cpu), ("wall", wall)):
            median = statistics.median(table[name])
            runs = " ".join(f"{t:.3f}" for t in table[name])
            print(f"{name:<8} {clock:<5} {median:>15.3f} {median / steps * 1e3:>9.2f}   {runs}")
    ratio = {
        clock: statistics.median(
            m / d for m, d in zip(table["masked"], table["dense"], strict=True)
        )
        for clock, table in (("cpu", cpu), ("wall", wall))
    }
    print(f"RESULT masked_over_dense={ratio['cpu']:.3f} masked_over_dense_wall={ratio['wall']:.3f}")


if __name__ == "__main__":
    main()
