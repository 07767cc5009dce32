"""The fine-tuning scenario's starting point: a model pre-trained centrally on a public split.

The public split is ``fedfish.partition.holdout_indices(N, holdout_fraction)`` of the training
set; runs with the same ``holdout-fraction`` leave it out of every client's partition, so
no client holds a sample the checkpoint saw. Training is seeded (model init, shuffling,
single-threaded torch), so the same arguments give the same checkpoint bit for bit on the
same CPU kernels; :func:`pretrain_pinned` (what sweeps use) also pins those kernels and, where
Linux can trap CPUID, shows the libraries one CPU identity (``simulations.cpu_identity``), so that
x86-64 machines of different generations and vendors agree::

    python -m simulations.pretrain --holdout-fraction 0.1 --epochs 2 --out results/pretrained/cnn-fmnist.pt

The saved ``state_dict`` is what the run-config key ``initial-model`` loads; a JSON
sidecar (``<out>.json``) records the arguments, split size and test accuracy. A sweep keeps
:func:`checkpoint_record` of it (the sidecar and a digest of the weights) as
``pretrained.json`` and refuses to go on from a checkpoint with other weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedfish.dataconfig import DataConfig
from fedfish.datasource import data_info, load_split
from fedfish.layout import params_digest
from fedfish.models import seeded_model
from fedfish.training import TrainConfig, evaluate, masked_train
from simulations import cpu_identity
from simulations.results import save_state_dict, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORD_FILE = "pretrained.json"
# ATen, oneDNN and MKL each dispatch to the widest vector instructions the CPU has (AVX-512,
# AMX), and wider kernels sum in another order: the crossdevice checkpoint pretrained on an
# AVX-512 machine reached 0.7703 test accuracy where an AVX2 machine's reached 0.8027 (same
# seed, same code, measured). Pinning all three to AVX2, which every x86-64 CPU since 2013
# has, reproduced the AVX2 machine's weights bit for bit on the AVX-512 one; no single pin did.
PINNED_X86_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# The pins do not make an Intel CPU agree with an AMD one: MKL and oneDNN also choose by vendor
# and model. Pinned, an Intel Sapphire Rapids CPU gives f6616c924e69a503 (0.7953) where the
# crossdevice checkpoint is 8cdd3e82dab27a23 (0.8027), and gives 8cdd3e82dab27a23 when CPUID
# answers as this AMD EPYC (measured), so sweeps pretrain with that identity where they can.
PRETRAIN_CPU_IDENTITY = "amd-epyc-rome"


class CheckpointMismatchError(ValueError):
    """A sweep's checkpoint is not the one its finished points started from."""


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


def pinned_kernel_env(machine: str | None = None) -> dict[str, str]:
    """The environment variables that pin torch's CPU kernels on ``machine`` (default: this
    one's ``platform.machine()``): :data:`PINNED_X86_KERNELS` on x86-64, none elsewhere."""
    machine = (machine or platform.machine()).lower()
    return dict(PINNED_X86_KERNELS) if machine in ("x86_64", "amd64") else {}


def pretrain_pinned(out: str | Path, **kwargs: Any) -> PretrainResult:
    """:func:`pretrain` in a fresh interpreter with :func:`pinned_kernel_env` (the kernels are
    chosen when torch loads, so the pins cannot be set from inside this process) and, where
    ``simulations.cpu_identity`` can give it one, :data:`PRETRAIN_CPU_IDENTITY`'s CPUID.

    Parameters
    ----------
    out : str | Path
        As for :func:`pretrain`.
    **kwargs : Any
        :func:`pretrain`'s keyword arguments (JSON-serialisable).

    Returns
    -------
    PretrainResult

    Raises
    ------
    RuntimeError
        The pretraining process failed; its last output lines are in the message.
    """
    env = dict(os.environ) | pinned_kernel_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    arguments = json.dumps({"out": str(out), **kwargs})
    with tempfile.TemporaryDirectory(prefix="fedfish-cpuid-") as folder:
        if cpu_identity.unavailable_reason() is None:
            env = cpu_identity.identity_env(PRETRAIN_CPU_IDENTITY, folder, env)
        process = subprocess.run([sys.executable, "-m", "simulations.pretrain", "--kwargs", arguments],
                                 capture_output=True, text=True, env=env, check=False)
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"pretraining {out} failed (exit status {process.returncode}):\n{tail}")
    sidecar = json.loads(Path(f"{out}.json").read_text())
    return PretrainResult(str(out), sidecar["holdout_samples"], sidecar["test_accuracy"])


def weights_digest(path: str | Path) -> str:
    """``fedfish.layout.params_digest`` of a saved ``state_dict``'s floating tensors (fp32,
    in ``state_dict`` order): what says whether two checkpoints are the same model."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return params_digest(torch.cat([t.reshape(-1).float() for t in state.values() if t.is_floating_point()]))


def checkpoint_record(path: str | Path) -> dict[str, Any]:
    """A checkpoint's sidecar (how it was made) with ``weights-digest``; ``path`` is the file's
    name only, since the machine's own folder would mislead a reader elsewhere."""
    path = Path(path)
    record = json.loads(path.with_name(path.name + ".json").read_text())
    return {**record, "path": path.name, "weights-digest": weights_digest(path)}


def check_record(expected: dict[str, Any], actual: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint whose ``weights-digest`` differs from the recorded one.

    Raises
    ------
    CheckpointMismatchError
        Naming both digests, ``where`` the record lives and what to do.
    """
    want, got = expected.get("weights-digest"), actual.get("weights-digest")
    if want != got:
        reason = cpu_identity.unavailable_reason()
        unavailable = f" (not here: {reason})" if reason else ""
        raise CheckpointMismatchError(
            f"checkpoint {actual.get('path')} has weights digest {got} (test accuracy {actual.get('test_accuracy')}), "
            f"but the points recorded in {where} started from {want} (test accuracy {expected.get('test_accuracy')}). "
            "Pretraining is bit-reproducible only on the same CPU kernels; sweeps pin them on x86-64 "
            f"({' '.join(f'{k}={v}' for k, v in PINNED_X86_KERNELS.items())}) and show them the CPU identity "
            f"{PRETRAIN_CPU_IDENTITY} where Linux can trap CPUID{unavailable}; other CPUs differ. Put the "
            "original checkpoint back, or run the sweep into a new results folder.")


def hold_to_record(record: dict[str, Any], target: str | Path) -> None:
    """Hold a checkpoint's ``record`` to the one a sweep folder keeps at ``target``: refuse it if
    that names another checkpoint (:func:`check_record`), write it there if there is none yet.

    Raises
    ------
    CheckpointMismatchError
        ``target`` records another checkpoint; nothing is written.
    """
    target = Path(target)
    if target.is_file():
        check_record(json.loads(target.read_text()), record, str(target))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, record)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m simulations.pretrain --out PATH [options]`` (or ``--kwargs JSON``:
    :func:`pretrain`'s keyword arguments with ``out``, as :func:`pretrain_pinned` passes them)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--kwargs"] and len(argv) == 2:
        result = pretrain(**json.loads(argv[1]))
        print(f"test accuracy {result.test_accuracy:.4f} -> {result.path}")
        return
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
