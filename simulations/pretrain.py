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

from fedfish.dataconfig import DataConfig
from fedfish.datasource import data_info, load_split
from fedfish.models import seeded_model
from fedfish.training import TrainConfig, evaluate, masked_train
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
    model: str = "cnn",
    holdout_fraction: float = 0.1,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    eval_samples: int = 0,
    **data_settings: str,
) -> PretrainResult:
    """Train a model on the data's public held-out split and save the ``state_dict``.

    Parameters
    ----------
    out : str | Path
        Where the ``state_dict`` goes (``torch.save``); ``<out>.json`` gets the metadata.
    model : str (default: "cnn")
        The runs' ``model`` (``fedfish.models.build_model``), initialised with ``seed``.
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
    **data_settings : str
        The runs' data keys, snake-cased (``dataset``, ``data_root``, ``data_files``,
        ``label_column``, ...; ``fedfish.dataconfig.DataConfig``); default Fashion-MNIST.

    Returns
    -------
    PretrainResult
    """
    if not 0.0 < holdout_fraction <= 0.9:
        raise ValueError(f"holdout_fraction must be in (0, 0.9], got {holdout_fraction}")
    if eval_samples < 0:
        raise ValueError(f"eval_samples must be >= 0, got {eval_samples}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    settings = {("root" if key == "data_root" else key): value for key, value in data_settings.items()}
    data = DataConfig(holdout_fraction=holdout_fraction, **settings)  # type: ignore[arg-type]
    # One thread: multi-threaded CPU reductions may sum in a different order run to run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = load_split(data, "public")
        info = data_info(data)
        net = seeded_model(model, seed, info.num_classes, tuple(info.input_shape))
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        if epochs:
            config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="sgd", momentum=momentum)
            masked_train(net, None, loader, config, device="cpu")
        test_x, test_y = load_split(data, "test")
        if eval_samples:
            test_x, test_y = test_x[:eval_samples], test_y[:eval_samples]
        accuracy = evaluate(net, DataLoader(TensorDataset(test_x, test_y), batch_size=500), device="cpu").accuracy
    finally:
        torch.set_num_threads(threads)
    out = Path(out)
    save_state_dict(out, net.state_dict())
    result = PretrainResult(str(out), len(y), accuracy)
    write_json(out.with_name(out.name + ".json"), {
        **asdict(result), "dataset": data.dataset, "model": model, "holdout_fraction": holdout_fraction,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum, "seed": seed,
        "eval_samples": eval_samples,
    })
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m simulations.pretrain --out PATH [options]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="state_dict path (initial-model of the runs)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="cnn", help="a registered model or package.module:callable")
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
        args.out, dataset=args.dataset, model=args.model, holdout_fraction=args.holdout_fraction, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, seed=args.seed,
        eval_samples=args.eval_samples, data_root=args.data_root or "",
    )
    print(f"pretrained on {result.holdout_samples} held-out samples: "
          f"test accuracy {result.test_accuracy:.4f} -> {result.path}")


if __name__ == "__main__":
    main()
