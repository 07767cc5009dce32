"""The fine-tuning scenario's starting point: a model pre-trained centrally on a public split.

The public split is ``fedfish.partition.holdout_indices(N, holdout_fraction)`` of the training
set; runs with the same ``holdout-fraction`` leave it out of every client's partition, so
no client holds a sample the checkpoint saw. Training is seeded (model init, shuffling,
single-threaded torch), so the same arguments give the same checkpoint bit for bit::

    python -m simulations.pretrain --holdout-fraction 0.1 --epochs 2 --out results/pretrained/cnn-fmnist.pt

The saved ``state_dict`` is what the run-config key ``initial-model`` loads; a JSON
sidecar (``<out>.json``) records the arguments, split size and test accuracy.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedfish.data import DATASETS, load_images
from fedfish.models import build_model
from fedfish.partition import holdout_indices
from fedfish.training import TrainConfig, evaluate, masked_train
from simulations.config import MODEL_FOR_DATASET
from simulations.results import save_state_dict, write_json


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` produced.

    Attributes
    ----------
    path : str
        The saved ``state_dict``.
    holdout_samples : int
        Size of the public split trained on.
    test_accuracy : float
        Accuracy on the first ``eval_samples`` test images (all if 0), in [0, 1].
    """

    path: str
    holdout_samples: int
    test_accuracy: float


def pretrain(
    out: str | Path,
    *,
    dataset: str = "fashion-mnist",
    holdout_fraction: float = 0.1,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    eval_samples: int = 0,
    data_root: str | None = None,
) -> PretrainResult:
    """Train the dataset's model on its public held-out split and save the ``state_dict``.

    Parameters
    ----------
    out : str | Path
        Where the ``state_dict`` goes (``torch.save``); ``<out>.json`` gets the metadata.
    dataset : str (default: "fashion-mnist")
        A key of ``fedfish.data.DATASETS``; the model is the one runs use for it.
    holdout_fraction : float (default: 0.1)
        Fraction of the training set held out, in (0, 0.9]; must equal the runs'
        ``holdout-fraction`` for the split to be the one no client holds.
    epochs : int (default: 2)
        Passes over the split; 0 saves the seeded initial model untrained (a public
        random init, for runs from scratch that need no dense model on the wire).
    batch_size, lr, momentum : int, float, float (default: 32, 0.05, 0.9)
        SGD settings.
    seed : int (default: 0)
        Seeds the model initialisation and the shuffling.
    eval_samples : int (default: 0)
        Test images for the reported accuracy; 0 = the whole test set.
    data_root : str | None (default: None)
        As in ``fedfish.data.load_images``.

    Returns
    -------
    PretrainResult
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if not 0.0 < holdout_fraction <= 0.9:
        raise ValueError(f"holdout_fraction must be in (0, 0.9], got {holdout_fraction}")
    if eval_samples < 0:
        raise ValueError(f"eval_samples must be >= 0, got {eval_samples}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    # One thread: multi-threaded CPU reductions may sum in a different order run to run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = load_images(dataset, "train", data_root)
        keep = torch.from_numpy(holdout_indices(len(y), holdout_fraction))
        torch.manual_seed(seed)
        model = build_model(MODEL_FOR_DATASET[dataset], DATASETS[dataset].num_classes)
        loader = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        if epochs:
            config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="sgd", momentum=momentum)
            masked_train(model, None, loader, config, device="cpu")
        test_x, test_y = load_images(dataset, "test", data_root)
        if eval_samples:
            test_x, test_y = test_x[:eval_samples], test_y[:eval_samples]
        accuracy = evaluate(model, DataLoader(TensorDataset(test_x, test_y), batch_size=500), device="cpu").accuracy
    finally:
        torch.set_num_threads(threads)
    out = Path(out)
    save_state_dict(out, model.state_dict())
    result = PretrainResult(str(out), len(keep), accuracy)
    write_json(out.with_name(out.name + ".json"), {
        **asdict(result), "dataset": dataset, "holdout_fraction": holdout_fraction, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "momentum": momentum, "seed": seed, "eval_samples": eval_samples,
    })
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m simulations.pretrain --out PATH [options]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="state_dict path (initial-model of the runs)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(DATASETS))
    parser.add_argument("--holdout-fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    result = pretrain(
        args.out, dataset=args.dataset, holdout_fraction=args.holdout_fraction, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, seed=args.seed,
        eval_samples=args.eval_samples, data_root=args.data_root,
    )
    print(f"pretrained on {result.holdout_samples} held-out samples: "
          f"test accuracy {result.test_accuracy:.4f} -> {result.path}")


if __name__ == "__main__":
    main()
