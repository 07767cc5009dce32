"""Sweeps: a grid of runs from a small TOML file, one results folder per point, resumable.

    python -m simulations.sweep simulations/sweeps/quick.toml [--set num-server-rounds=3] [--dry-run]

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
checkpoint first, if it is not there yet.

Each point runs in its own process (``python -m simulations.run``), so a crash or a
hung Ray worker costs that point only: it is reported and the sweep goes on. Results go
to ``<results-dir>/<name>/<point>/`` with ``sweep-point.json`` saying ``running``,
``done`` or ``failed``; on a rerun, ``done`` points whose config is unchanged are
skipped and every other point is redone from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.analysis import POINT_FILE
from simulations.config import RunConfig
from simulations.results import write_json
from simulations.run import parse_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEP_KEYS = ("name", "description", "base", "axes", "pretrain")
RESERVED_KEYS = ("run-name", "results-dir", "resume")
ROUND_LINE = "[fedfish] round "
# What runs one point: ``python -m <POINT_MODULE> key=value ...``.
POINT_MODULE = "simulations.run"
LOG_FILE = "run.log"


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


@dataclass
class SweepReport:
    """What :func:`run_sweep` did: point names per outcome."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


# A point runner gets the point and a callback for its output lines; it returns an
# error description, or None on success.
Runner = Callable[[Point, Callable[[str], None]], str | None]


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


def point_status(point: Point) -> str:
    """``done`` (finished with this very config), ``stale`` (folder from another config or a
    half-written run) or ``new``.

    A point recorded before a run-config key existed counts as run with that key's default
    (new keys default to the old behaviour), so adding a key does not redo a sweep.
    """
    marker = point.run_dir / POINT_FILE
    if not marker.is_file():
        return "stale" if point.run_dir.exists() else "new"
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return "stale"
    recorded = info.get("config")
    if info.get("status") != "done" or not isinstance(recorded, dict):
        return "stale"
    current = point.config.to_mapping()
    defaults = RunConfig().to_mapping()
    done = all(recorded.get(key, defaults[key]) == value for key, value in current.items())
    return "done" if done else "stale"


def run_sweep(sweep: Sweep, runner: Runner | None = None, *, progress: bool = True) -> SweepReport:
    """Run every point not yet done; a failing point is reported and the sweep goes on.

    Parameters
    ----------
    sweep : Sweep
        From :func:`load_sweep`.
    runner : Runner | None (default: None)
        Runs one point; defaults to one ``python -m simulations.run`` process per point.
    progress : bool (default: True)
        A tqdm bar over points (stderr) and each round's line.

    Returns
    -------
    SweepReport
    """
    from tqdm import tqdm  # noqa: PLC0415 - only the interactive path needs it

    runner = runner or run_point_subprocess
    report = SweepReport()
    if sweep.pretrain and not Path(sweep.pretrain["out"]).is_file():
        from simulations.pretrain import pretrain  # noqa: PLC0415 - torch training, only when needed

        result = pretrain(**sweep.pretrain)
        print(f"pretrained checkpoint: {result.path} (test accuracy {result.test_accuracy:.4f})", flush=True)
    bar = tqdm(sweep.points, desc=sweep.name, unit="point", disable=not progress, file=sys.stderr)
    say: Callable[[str], None] = bar.write if progress else (lambda line: None)
    for point in bar:
        bar.set_postfix_str(point.name)
        status = point_status(point)
        if status == "done":
            report.skipped.append(point.name)
            continue
        if status == "stale":
            say(f"redoing {point.name}: its folder is half-written, failed or from another config")
            shutil.rmtree(point.run_dir)
        started = time.time()
        _mark(point, "running")
        say(f"--- {point.name}")
        try:
            error = runner(point, lambda line: say(f"    {line}") if line.startswith(ROUND_LINE) else None)
        except Exception as err:  # noqa: BLE001 - any failure of one point must not end the sweep
            error = f"{type(err).__name__}: {err}"
        if error is None:
            error = _check_complete(point)
        seconds = round(time.time() - started, 1)
        _remove_client_state(point)
        if error is None:
            _mark(point, "done", seconds=seconds)
            report.done.append(point.name)
        else:
            _mark(point, "failed", seconds=seconds, error=error)
            report.failed.append((point.name, error))
            say(f"FAILED {point.name}: {error}")
    bar.close()
    return report


def _remove_client_state(point: Point) -> None:
    # A point is never resumed (a half-written one is redone), so its clients' on-disk
    # state (~7 MB per client) is of no further use.
    folder = point.config.client_state_folder()
    if folder:
        shutil.rmtree(Path(folder) / point.config.run_name, ignore_errors=True)


def _mark(point: Point, status: str, **extra: Any) -> None:
    write_json(point.run_dir / POINT_FILE, {
        "status": status, "point": point.name, "axes": point.axes, "tags": point.tags,
        "config": point.config.to_mapping(), **extra,
    })


def _check_complete(point: Point) -> str | None:
    rounds_csv = point.run_dir / "rounds.csv"
    if not rounds_csv.is_file() or not (point.run_dir / "config.json").is_file():
        return "the run wrote no rounds.csv/config.json"
    rounds = rounds_csv.read_text().strip().splitlines()[1:]
    # A run that levelled off early (stop-patience) says where it stopped.
    last_round = json.loads((point.run_dir / "config.json").read_text()).get("last_round")
    expected = (last_round if point.config.stop_patience and last_round else point.config.num_server_rounds) + 1
    if len(rounds) != expected:
        return f"rounds.csv has {len(rounds)} rows, expected {expected}"
    return None


def run_point_subprocess(point: Point, on_line: Callable[[str], None]) -> str | None:
    """Run one point as ``python -m simulations.run key=value ...``; its output goes to
    ``<point>/run.log`` and each line to ``on_line``. Returns None or the error tail."""
    args = [f"{key}={_toml_value(value)}" for key, value in point.config.to_mapping().items()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    point.run_dir.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with (point.run_dir / LOG_FILE).open("w") as log:
        # Own process group: stopping the sweep stops the point's Ray workers with it.
        process = subprocess.Popen(
            [sys.executable, "-m", POINT_MODULE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True,
        )
        try:
            for line in _lines(process):
                log.write(line + "\n")
                tail = (tail + [line])[-20:]
                on_line(line)
            returncode = process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
    if returncode != 0:
        return f"exit status {returncode}; last lines:\n" + "\n".join(tail)
    return None


def _lines(process: subprocess.Popen[str]) -> Iterator[str]:
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("the point process has no stdout pipe")
    for line in stdout:
        yield line.rstrip("\n")


def _toml_value(value: Any) -> str:
    """A value as ``simulations.run.parse_overrides`` reads it back (a TOML scalar)."""
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for any printable text
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 1 if any point failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep file (TOML), e.g. simulations/sweeps/quick.toml")
    parser.add_argument("--results-dir", default="results", help="parent of the sweep folder (default: results)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for every point")
    parser.add_argument("--only", default="", metavar="REGEX", help="run only the points whose name matches")
    parser.add_argument("--dry-run", action="store_true", help="list the points and their status, run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or round lines")
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT, which background jobs ignore) unwinds like Ctrl-C, so the running
    # point's process group is stopped too; the point stays "running" and is redone next time.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sweep = load_sweep(args.sweep, args.results_dir, parse_overrides(args.set))
    if args.only:
        sweep = dataclasses.replace(sweep, points=[p for p in sweep.points if re.search(args.only, p.name)])
    if args.dry_run:
        for point in sweep.points:
            print(f"{point_status(point):>5}  {point.name}")
        return 0
    report = run_sweep(sweep, progress=not args.no_progress)
    print(f"sweep {sweep.name}: {len(report.done)} run, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed -> {sweep.folder}")
    for name, error in report.failed:
        print(f"  failed: {name}: {error.splitlines()[0]}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
