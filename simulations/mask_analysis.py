"""The mask itself: how it spreads over the layers, how much clients' Fisher masks agree, and
whether a Fisher mask beats a random one at equal bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulations.savings import accuracy_at_budget

MB = 1e6


def config_of(run_dir: str | Path) -> dict[str, Any]:
    """The run config of one run folder."""
    return json.loads((Path(run_dir) / "config.json").read_text())["config"]


def layer_density(run_dir: str | Path) -> pd.DataFrame:
    """Per layer of a run's final mask (``mask.bin``): parameters, masked count and density.

    Rows in the model's parameter order; columns ``params``, ``masked``, ``density``.
    """
    from fedfish import codec  # noqa: PLC0415 - torch, only mask analysis needs it
    from fedfish.layout import ParamLayout  # noqa: PLC0415

    run_dir = Path(run_dir)
    mask = codec.decode_mask((run_dir / "mask.bin").read_bytes())
    layout = ParamLayout.of(_model(config_of(run_dir)))
    rows = [{"layer": name, "params": part.numel(), "masked": int(part.sum())}
            for name, part in zip(layout.names, layout.split(mask.bits), strict=True)]
    table = pd.DataFrame(rows).set_index("layer")
    table["density"] = table["masked"] / table["params"]
    return table


def client_fisher_masks(
    run_dir: str | Path,
    clients: list[int],
    *,
    weights: str = "initial",
    fisher_samples: int = 64,
    density: float | None = None,
) -> dict[int, Any]:
    """Each client's own Fisher mask, computed here on its partition of the run's data.

    Parameters
    ----------
    run_dir : str | Path
        A run folder (its ``config.json`` gives data, partitioning, seed and model).
    clients : list[int]
        Partition ids.
    weights : str (default: "initial")
        ``initial`` (the run's starting model: ``initial-model`` or the seeded init, as the
        server builds it) or ``final`` (``model.pt``): masks at the first round and at a
        refresh at the end.
    fisher_samples : int (default: 64)
        Samples per client (the first ones of its shard).
    density : float | None (default: None)
        Mask density; defaults to the run's.

    Returns
    -------
    dict[int, fedfish.masks.Mask]
        Partition id -> top-k mask of its empirical Fisher, classifier head included.
    """
    import torch  # noqa: PLC0415 - only mask analysis needs torch

    from fedfish.dataconfig import DataConfig  # noqa: PLC0415
    from fedfish.datasource import load_partition  # noqa: PLC0415
    from fedfish.fisher import diagonal_fisher  # noqa: PLC0415
    from fedfish.layout import ParamLayout  # noqa: PLC0415
    from fedfish.masks import top_k_mask  # noqa: PLC0415
    from fedfish.models import head_names  # noqa: PLC0415

    if weights not in ("initial", "final"):
        raise ValueError(f"weights must be 'initial' or 'final', got {weights!r}")
    run_dir = Path(run_dir)
    cfg = config_of(run_dir)
    model = _model(cfg, seeded=True)
    source = run_dir / "model.pt" if weights == "final" else _resolve(str(cfg["initial-model"]))
    if source is not None:
        model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    head = ParamLayout.of(model).indicator(head_names(model))
    data = DataConfig.from_run_config(cfg)
    masks = {}
    for client in clients:
        x, y = load_partition(data, client)
        n = min(fisher_samples, int(cfg["samples-per-client"]) or len(y), len(y))
        scores = diagonal_fisher(model, x[:n], y[:n], "empirical")
        masks[client] = top_k_mask(scores, density or float(cfg["density"]), always_include=head)
    return masks


def fisher_vs_random(rounds: pd.DataFrame, fisher: str = "fedfish", random: str = "random-fixed") -> pd.DataFrame:
    """Fisher-mask vs random-mask runs of the same setting, density and seed, at equal bytes.

    The byte budget of a pair is the smaller of their final cumulative bytes; each run's
    accuracy is its smoothed (3-round) accuracy at the last round within it.

    Returns
    -------
    pd.DataFrame
        One row per pair: ``fisher_run``, ``random_run``, ``density``, ``mb_budget``,
        ``fisher_accuracy``, ``random_accuracy``, ``gain``.
    """
    finals = rounds.sort_values("round").groupby("run", sort=False).tail(1).set_index("run", drop=False)
    keys = [c for c in ("scenario", "alpha", "seed", "density") if c in finals.columns]
    rows = []
    for _, group in finals.groupby(keys, sort=False, dropna=False):
        for fisher_run in group[group["strategy"] == fisher]["run"]:
            for random_run in group[group["strategy"] == random]["run"]:
                budget = min(float(finals.loc[fisher_run, "cumulative_bytes"]),
                             float(finals.loc[random_run, "cumulative_bytes"]))
                acc_f = accuracy_at_budget(rounds[rounds["run"] == fisher_run], budget)
                acc_r = accuracy_at_budget(rounds[rounds["run"] == random_run], budget)
                rows.append({"fisher_run": fisher_run, "random_run": random_run,
                             "density": finals.loc[fisher_run, "density"], "mb_budget": budget / MB,
                             "fisher_accuracy": acc_f, "random_accuracy": acc_r, "gain": acc_f - acc_r})
    columns = ["fisher_run", "random_run", "density", "mb_budget", "fisher_accuracy", "random_accuracy", "gain"]
    return pd.DataFrame(rows, columns=columns)


def mask_overlap(bits: list[Any]) -> pd.DataFrame:
    """Pairwise Jaccard overlap |A & B| / |A | B| of boolean masks (list of bool tensors/arrays)."""
    arrays = [np.asarray(b, dtype=bool) for b in bits]
    n = len(arrays)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            union = np.logical_or(arrays[i], arrays[j]).sum()
            inter = np.logical_and(arrays[i], arrays[j]).sum()
            out[i, j] = out[j, i] = inter / union if union else 1.0
    return pd.DataFrame(out)


def _model(cfg: dict[str, Any], seeded: bool = False) -> Any:  # noqa: ANN401 - an nn.Module
    """The run's model (class count and input shape from its data), seeded as the server builds it."""
    from fedfish.dataconfig import DataConfig  # noqa: PLC0415
    from fedfish.datasource import data_info  # noqa: PLC0415
    from fedfish.models import build_model, seeded_model  # noqa: PLC0415

    info = data_info(DataConfig.from_run_config(cfg))
    shape = tuple(info.input_shape)
    if seeded:
        return seeded_model(str(cfg["model"]), int(cfg["seed"]), info.num_classes, shape)
    return build_model(str(cfg["model"]), info.num_classes, shape)


def _resolve(path: str) -> Path | None:
    """A run's relative path (``initial-model``) from the working directory or the repo root."""
    if not path:
        return None
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return Path(__file__).resolve().parents[1] / candidate
