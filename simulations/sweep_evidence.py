"""A sweep's evidence: what a finished point leaves to commit, and the record of the checkpoint
its fine-tuning points started from.

``export_evidence`` copies the finished points' ``config.json``, ``rounds.csv`` and
``sweep-point.json`` (no models, no client state) to a folder meant to be committed, and
``export_pretrain_record`` the checkpoint's record beside them; ``import_evidence`` brings
them into a sweep folder on another machine, whose sweep then skips those points and refuses
a checkpoint other than the recorded one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from simulations.analysis import POINT_FILE
from simulations.pretrain import RECORD_FILE, checkpoint_record, hold_to_record
from simulations.sweep_file import Sweep

# What a finished point leaves to commit: enough for every table and figure.
EVIDENCE_FILES = ("config.json", "rounds.csv", POINT_FILE)


def done_markers(folder: str | Path) -> list[Path]:
    """The ``sweep-point.json`` files under ``folder`` that say ``done``, by point name."""
    done = []
    for marker in sorted(Path(folder).glob(f"*/{POINT_FILE}")):
        try:
            if json.loads(marker.read_text()).get("status") == "done":
                done.append(marker)
        except json.JSONDecodeError:
            continue  # half-written: not done
    return done


def export_evidence(folder: str | Path, dest: str | Path) -> list[str]:
    """Copy every finished point's evidence from a sweep folder to ``dest``.

    A point is finished when its ``sweep-point.json`` says ``done``; its ``config.json``,
    ``rounds.csv`` and ``sweep-point.json`` go to ``<dest>/<point>/`` (models, client state
    and logs stay behind). Points running or failed are left out, and evidence already in
    ``dest`` for other points is kept, so a sweep can be exported as it goes.

    Returns
    -------
    list[str]
        The exported points' names.
    """
    exported = []
    for marker in done_markers(folder):
        target = Path(dest) / marker.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for name in EVIDENCE_FILES:
            shutil.copy2(marker.parent / name, target / name)
        exported.append(marker.parent.name)
    return exported


def import_evidence(source: str | Path, folder: str | Path) -> list[str]:
    """Copy exported points from ``source`` into a sweep folder, so that a sweep resumed on
    another machine (or after its results folder was lost) skips them.

    Only points whose ``sweep-point.json`` says ``done`` are copied, and never over a folder
    the sweep already has; whether each still counts as done is decided, as for any point,
    by :func:`simulations.sweep.point_status` (same config) when the sweep runs. The source's
    record of the pretrained checkpoint comes too, so the sweep refuses to add fine-tuning
    points that start from another one.

    Returns
    -------
    list[str]
        The imported points' names.

    Raises
    ------
    CheckpointMismatchError
        The folder already records another pretrained checkpoint than the source; nothing
        is imported.
    """
    source_record = Path(source) / RECORD_FILE
    if source_record.is_file():
        hold_to_record(json.loads(source_record.read_text()), Path(folder) / RECORD_FILE)
    imported = []
    for marker in done_markers(source):
        target = Path(folder) / marker.parent.name
        if not target.exists():
            shutil.copytree(marker.parent, target)
            imported.append(marker.parent.name)
    return imported


def export_pretrain_record(sweep: Sweep, dest: str | Path) -> Path | None:
    """Write ``<dest>/pretrained.json``: the fine-tuning points' checkpoint's
    :func:`~simulations.pretrain.checkpoint_record` (how it was made, a digest of its weights).

    The checkpoint is a model, not evidence, so it is not exported; a sweep resumed on another
    machine pretrains it again, and the digest says whether that is the model the exported
    points started from. None when the sweep pretrains nothing or has not yet.

    Raises
    ------
    CheckpointMismatchError
        ``dest`` already records another checkpoint: its points started elsewhere.
    """
    if not sweep.pretrain or not Path(sweep.pretrain["out"]).is_file():
        return None
    target = Path(dest) / RECORD_FILE
    hold_to_record(checkpoint_record(sweep.pretrain["out"]), target)
    return target
