"""Sweeps: one results folder per point of a sweep file, resumable, evidence exportable.

    python -m simulations.sweep simulations/sweeps/quick.toml [--set num-server-rounds=3] [--dry-run]
    python -m simulations.sweep simulations/sweeps/crossdevice.toml --export docs/results
    python -m simulations.sweep simulations/sweeps/crossdevice.toml --import docs/results   # elsewhere

The file format is :mod:`simulations.sweep_file`'s. Each point runs in its own process
(``python -m simulations.run``), so a crash or a hung Ray worker costs that point only: it
is reported and the sweep goes on. ``--workers N`` runs N points at once, each pinned to its
own share of the cores (Ray's workers included), for machines with many cores or a GPU that
one small model leaves idle. Results go to ``<results-dir>/<name>/<point>/`` with
``sweep-point.json`` saying ``running``, ``done`` or ``failed``. On a rerun, ``done`` points
whose config is unchanged are skipped; a point that was stopped mid-run (the sweep killed,
the machine gone) continues from its last complete round (``resume=true``: its server
checkpoint and its clients' on-disk state), so a long point may span sessions; every other
point is redone from scratch.
``--export`` copies the evidence of the finished points (``config.json``, ``rounds.csv``,
``sweep-point.json``: no models, no client state) to a folder meant to be committed, and
the pretrained checkpoint's record (how it was made, a digest of its weights) beside them;
``--import`` brings such points into a sweep folder on another machine, and they are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.analysis import POINT_FILE
from simulations.checkpoint import CHECKPOINT_NAME
from simulations.config import RunConfig
from simulations.point_process import environment, run_point_subprocess, split_cores, stop_running_points
from simulations.pretrain import RECORD_FILE, checkpoint_record, hold_to_record, pretrain_pinned
from simulations.results import write_json
from simulations.run import parse_overrides
from simulations.sweep_evidence import export_evidence, export_pretrain_record, import_evidence
from simulations.sweep_file import Point, Sweep, load_sweep

ROUND_LINE = "[fedfish] round "
# Keys that say how a point is carried out, not what it computes: a finished point stays
# finished when they change (a longer round timeout does not redo a 5-hour sweep), and
# ``resume``, which an interrupted point is continued with.
OPERATIONAL_KEYS = frozenset({"round-timeout", "client-state-dir", "results-dir", "resume"})


@dataclass
class SweepReport:
    """What :func:`run_sweep` did: point names per outcome."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


# A point runner gets the point and a callback for its output lines, and ``cores=[...]``
# when points run side by side; it returns an error description, or None on success.
Runner = Callable[..., str | None]


def point_status(point: Point) -> str:
    """``done`` (finished with this very config), ``interrupted`` (stopped mid-run with this
    very config, after at least one round it can continue from), ``stale`` (a folder from
    another config, a failed run, or one stopped before its first checkpoint) or ``new``.

    A point recorded before a run-config key existed counts as run with that key's default
    (new keys default to the old behaviour), so adding a key does not redo a sweep; keys in
    ``OPERATIONAL_KEYS`` are not compared.
    """
    marker = point.run_dir / POINT_FILE
    if not marker.is_file():
        return "stale" if point.run_dir.exists() else "new"
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return "stale"
    recorded, status = info.get("config"), info.get("status")
    if status not in ("done", "running") or not isinstance(recorded, dict):
        return "stale"
    current = _relative_to_results(point.config.to_mapping())
    recorded = _relative_to_results(recorded)
    defaults = RunConfig().to_mapping()
    same = all(recorded.get(key, defaults[key]) == value
               for key, value in current.items() if key not in OPERATIONAL_KEYS)
    if not same:
        return "stale"
    if status == "running":
        return "interrupted" if (point.run_dir / CHECKPOINT_NAME).is_file() else "stale"
    return "done"


def _relative_to_results(config: dict[str, Any]) -> dict[str, Any]:
    # Files the sweep made beside its results ({results-dir} in the sweep file, e.g. its
    # pre-trained checkpoint) are named relative to them, so that points imported from a
    # machine with another results folder still match.
    root = str(Path(config.get("results-dir", "") or ".").parent) + os.sep
    return {key: "{results-dir}" + os.sep + value[len(root):] if isinstance(value, str) and value.startswith(root)
            else value for key, value in config.items()}


def run_sweep(sweep: Sweep, runner: Runner | None = None, *, progress: bool = True, workers: int = 1
              ) -> SweepReport:
    """Run every point not yet done; a failing point is reported and the sweep goes on.

    Parameters
    ----------
    sweep : Sweep
        From :func:`load_sweep`.
    runner : Runner | None (default: None)
        Runs one point; defaults to one ``python -m simulations.run`` process per point.
    progress : bool (default: True)
        A tqdm bar over points (stderr) and each round's line.
    workers : int (default: 1)
        Points run at once, each on its own share of this process's cores (a machine with
        many cores, or a GPU that one point leaves mostly idle).

    Returns
    -------
    SweepReport
        Point names per outcome, in the sweep's order.

    Raises
    ------
    ValueError
        ``workers`` is below 1 or above the number of cores.
    """
    from tqdm import tqdm  # noqa: PLC0415 - only the interactive path needs it

    runner = runner or run_point_subprocess
    core_sets: list[list[int] | None] = [*split_cores(workers)] if workers > 1 else [None]
    report = SweepReport()
    bar = tqdm(total=len(sweep.points), desc=sweep.name, unit="point", disable=not progress, file=sys.stderr)
    say: Callable[[str], None] = bar.write if progress else (lambda line: None)
    todo = []
    for point in sweep.points:
        status = point_status(point)
        if status == "done":
            report.skipped.append(point.name)
            bar.update()
            continue
        if status == "stale":
            say(f"redoing {point.name}: its folder is half-written, failed or from another config")
            shutil.rmtree(point.run_dir)
        if status == "interrupted":
            say(f"continuing {point.name} from its last complete round")
            point = dataclasses.replace(point, config=point.config.replace(resume=True))
        todo.append(point)
    if any(_starts_from_checkpoint(sweep, point) for point in todo):
        _pretrained_checkpoint(sweep)
    free_cores: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
    for cores in core_sets:
        free_cores.put(cores)
    stopping = threading.Event()

    def run_one(point: Point) -> None:
        cores = free_cores.get()
        try:
            _run_point(point, runner, cores, say, report, stopping)
        finally:
            free_cores.put(cores)
            bar.update()

    with ThreadPoolExecutor(max_workers=len(core_sets), thread_name_prefix="sweep-point") as pool:
        try:
            for _ in pool.map(run_one, todo):
                pass
        except BaseException:
            # Interrupted (SIGINT/SIGTERM): start no other point and stop the running ones,
            # which stay "running" and continue from their last complete round next time.
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            stop_running_points()
            raise
    bar.close()
    order = {point.name: index for index, point in enumerate(sweep.points)}
    report.done.sort(key=order.__getitem__)
    report.failed.sort(key=lambda failure: order[failure[0]])
    return report


def _run_point(point: Point, runner: Runner, cores: list[int] | None, say: Callable[[str], None],
               report: SweepReport, stopping: threading.Event) -> None:
    started = time.time()
    _mark(point, "running")
    say(f"--- {point.name}" + (f" (cores {cores[0]}-{cores[-1]})" if cores else ""))
    on_line = (lambda line: say(f"    {point.name}: {line}" if cores else f"    {line}")
               if line.startswith(ROUND_LINE) else None)
    try:
        error = runner(point, on_line) if cores is None else runner(point, on_line, cores=cores)
    except Exception as err:  # noqa: BLE001 - any failure of one point must not end the sweep
        error = f"{type(err).__name__}: {err}"
    if stopping.is_set():
        return
    if error is None:
        error = _check_complete(point)
    seconds = round(time.time() - started, 1)
    _remove_client_state(point)
    # A continued point's seconds are those of its last stretch; "resumed" says so.
    resumed = {"resumed": True} if point.config.resume else {}
    if error is None:
        _mark(point, "done", seconds=seconds, environment=environment(cores), **resumed)
        report.done.append(point.name)
    else:
        _mark(point, "failed", seconds=seconds, error=error, environment=environment(cores), **resumed)
        report.failed.append((point.name, error))
        say(f"FAILED {point.name}: {error}")


def _starts_from_checkpoint(sweep: Sweep, point: Point) -> bool:
    # Only such points need the checkpoint: a machine that cannot pretrain it bit for bit
    # (other CPU kernels) can still run the sweep's other points.
    out = sweep.pretrain.get("out") if sweep.pretrain else None
    return bool(out and point.config.initial_model) and Path(point.config.initial_model) == Path(out)


def _pretrained_checkpoint(sweep: Sweep) -> None:
    """Pretrain the sweep's checkpoint unless it exists, and hold it to the sweep folder's
    record: the first checkpoint a sweep runs from is recorded, any other is refused."""
    out = Path(sweep.pretrain["out"])
    if not out.is_file():
        result = pretrain_pinned(**sweep.pretrain)
        print(f"pretrained checkpoint: {result.path} (test accuracy {result.test_accuracy:.4f})", flush=True)
    hold_to_record(checkpoint_record(out), sweep.folder / RECORD_FILE)


def _remove_client_state(point: Point) -> None:
    # A finished or failed point is never continued (a failed one is redone), so its
    # clients' on-disk state (~7 MB per client) is of no further use; an interrupted
    # point keeps it, to continue without a dense resync.
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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run N points at once, each pinned to its share of the cores (default: 1)")
    parser.add_argument("--export", default="", metavar="DIR",
                        help="copy the finished points' evidence to DIR/<name>/ and run nothing")
    parser.add_argument("--import", dest="import_dir", default="", metavar="DIR",
                        help="first copy the exported points of DIR/<name>/ in, so that they are not run again")
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT, which background jobs ignore) unwinds like Ctrl-C, so the running
    # point's process group is stopped too; the point stays "running" and continues next time.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sweep = load_sweep(args.sweep, args.results_dir, parse_overrides(args.set))
    if args.only:
        sweep = dataclasses.replace(sweep, points=[p for p in sweep.points if re.search(args.only, p.name)])
    if args.export:
        dest = Path(args.export) / sweep.name
        names = export_evidence(sweep.folder, dest)
        print(f"exported {len(names)} finished points of {len(sweep.points)} to {dest}")
        if record := export_pretrain_record(sweep, dest):
            print(f"pretrained checkpoint's record -> {record}")
        return 0
    if args.import_dir:
        names = import_evidence(Path(args.import_dir) / sweep.name, sweep.folder)
        print(f"imported {len(names)} finished points from {Path(args.import_dir) / sweep.name}")
    if args.dry_run:
        for point in sweep.points:
            print(f"{point_status(point):>11}  {point.name}")
        return 0
    try:
        report = run_sweep(sweep, progress=not args.no_progress, workers=args.workers)
    except ValueError as err:
        parser.error(str(err))
    print(f"sweep {sweep.name}: {len(report.done)} run, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed -> {sweep.folder}")
    for name, error in report.failed:
        print(f"  failed: {name}: {error.splitlines()[0]}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
