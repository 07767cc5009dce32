"""Sweep files: a grid of run configs from a small TOML file, every point checked up front.

A sweep file names the sweep, the run-config keys every point shares (``[base]``) and
the axes whose product is the grid (``[axes]``), outermost first::

    name = "quick"
    [base]
    num-partitions = 3
    [axes]
    seed = [0, 1]                 # a scalar axis: one run-config key, one value per point
    [[axes.method]]               # a table axis: each entry sets several keys
    label = "fedfish 2%"          # required; names the entry in folders, tables and plots
    strategy = "fedfish"
    density = 0.02
    tags = {family = "fisher"}    # optional: extra columns for the analysis loader

``{results-dir}`` in a string value is replaced by the results dir (checkpoints
made by the sweep live beside its results). An optional ``[pretrain]`` table (the keyword arguments of
:func:`simulations.pretrain.pretrain`, kebab-case, with ``out``) makes the fine-tuning
checkpoint first, if it is not there yet. :mod:`simulations.sweep` runs the points.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.config import RunConfig

SWEEP_KEYS = ("name", "description", "base", "axes", "pretrain")
RESERVED_KEYS = ("run-name", "results-dir", "resume")


@dataclass(frozen=True)
class Point:
    """One run of a sweep.

    Attributes
    ----------
    name : str
        Folder name (the run's ``run-name``): axis labels joined by ``_``.
    axes : dict[str, str]
        Axis name -> this point's label on it (``seed`` -> ``"seed0"``, ``method`` -> ``"fedfish 2%"``).
    tags : dict[str, Any]
        Extra columns from table-axis entries.
    config : RunConfig
        The validated run config (``results-dir`` = the sweep folder, ``run-name`` = ``name``).
    """

    name: str
    axes: dict[str, str]
    tags: dict[str, Any]
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        """``<results-dir>/<name>``."""
        return Path(self.config.results_dir) / self.name


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file.

    Attributes
    ----------
    name : str
        Folder under the results dir.
    points : list[Point]
        The grid, first axis outermost.
    pretrain : dict[str, Any]
        Keyword arguments of :func:`simulations.pretrain.pretrain` (empty: none).
    description : str
        Free text.
    """

    name: str
    points: list[Point]
    pretrain: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def folder(self) -> Path:
        """``<results-dir>/<name>``."""
        return Path(self.points[0].config.results_dir) if self.points else Path()


def load_sweep(path: str | Path, results_dir: str | Path = "results", overrides: dict[str, Any] | None = None) -> Sweep:
    """Parse and validate a sweep file; every point's run config is checked up front.

    Parameters
    ----------
    path : str | Path
        The TOML file.
    results_dir : str | Path (default: "results")
        Points go to ``<results_dir>/<name>/<point>``.
    overrides : dict[str, Any] | None (default: None)
        Run-config keys set on every point, after the axes (e.g. fewer rounds for a smoke run).

    Raises
    ------
    ValueError
        Unknown top-level keys, a missing name, an empty axis, a table entry without
        ``label``, two axes setting the same key, or a reserved key (``run-name``,
        ``results-dir``, ``resume``); :class:`simulations.config.ConfigError` (a
        ValueError) for any invalid run-config key or value, naming the point.
    """
    data = tomllib.loads(Path(path).read_text())
    return parse_sweep(data, results_dir, overrides, source=str(path))


def parse_sweep(
    data: dict[str, Any],
    results_dir: str | Path = "results",
    overrides: dict[str, Any] | None = None,
    source: str = "sweep",
) -> Sweep:
    """:func:`load_sweep` on an already parsed TOML document."""
    data = {key: _expand(value, str(results_dir)) if key in ("base", "axes", "pretrain") else value
            for key, value in data.items()}
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {unknown}; allowed: {list(SWEEP_KEYS)}")
    name = data.get("name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"{source}: name must be a plain folder name, got {name!r}")
    base = dict(data.get("base", {}))
    _check_reserved(source, "base", base)
    overrides = dict(overrides or {})
    _check_reserved(source, "overrides", overrides)
    axes = [(axis, _axis_entries(source, axis, values)) for axis, values in data.get("axes", {}).items()]
    folder = Path(results_dir) / name
    points = []
    for combo in itertools.product(*(entries for _, entries in axes)) if axes else [()]:
        keys: dict[str, Any] = dict(base)
        owner: dict[str, str] = {}
        labels: dict[str, str] = {}
        tags: dict[str, Any] = {}
        for (axis, _), (label, values, entry_tags) in zip(axes, combo, strict=True):
            for key in values:
                if key in owner:
                    raise ValueError(f"{source}: axes {owner[key]!r} and {axis!r} both set {key!r}")
                owner[key] = axis
            keys |= values
            labels[axis] = label
            tags |= entry_tags
        keys |= overrides
        point_name = "_".join(_folder_part(label) for label in labels.values()) or "run"
        try:
            config = RunConfig.from_mapping(keys | {"run-name": point_name, "results-dir": str(folder)})
        except ValueError as err:
            raise type(err)(f"{source}: point {point_name!r}: {err}") from err
        points.append(Point(point_name, labels, tags, config))
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: several points share the folder names {duplicates}; make the labels unique")
    pretrain = {k.replace("-", "_"): v for k, v in data.get("pretrain", {}).items()}
    if pretrain and "out" not in pretrain:
        raise ValueError(f"{source}: [pretrain] needs out = <checkpoint path>")
    return Sweep(name, points, pretrain, str(data.get("description", "")))


def _expand(value: Any, results_dir: str) -> Any:
    """``{results-dir}`` in any string, so a sweep's files (checkpoints) live beside its results."""
    if isinstance(value, str):
        return value.replace("{results-dir}", results_dir)
    if isinstance(value, dict):
        return {k: _expand(v, results_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, results_dir) for v in value]
    return value


def _check_reserved(source: str, where: str, keys: dict[str, Any]) -> None:
    reserved = sorted(set(keys) & set(RESERVED_KEYS))
    if reserved:
        raise ValueError(f"{source}: {where} must not set {reserved}: the sweep sets them per point")


def _axis_entries(source: str, axis: str, values: Any) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(label, run-config keys, tags)`` for each value of one axis."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{source}: axis {axis!r} must be a non-empty list")
    entries = []
    for value in values:
        if isinstance(value, dict):
            entry = dict(value)
            label = entry.pop("label", None)
            if not isinstance(label, str) or not label:
                raise ValueError(f"{source}: every entry of axis {axis!r} needs a label, got {value!r}")
            tags = entry.pop("tags", {})
            if not isinstance(tags, dict):
                raise ValueError(f"{source}: tags of {label!r} on axis {axis!r} must be a table")
            _check_reserved(source, f"axis {axis!r}", entry)
            entries.append((label, entry, tags))
        else:
            _check_reserved(source, f"axis {axis!r}", {axis: value})
            entries.append((f"{axis}{value}", {axis: value}, {}))
    return entries


def _folder_part(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", label.replace("%", "pct")).strip("-") or "x"
