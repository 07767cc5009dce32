"""A local dataset in files: synthetic activity recognition from wearable sensors, as parquet.

Each of 24 devices (one client each: ``partitioner = "NaturalIdPartitioner"`` with
``partition_by = 'device_id'``) records 16 sensor features; the label is the activity, a
string. Devices differ in which activities they see (a Dirichlet mix) and in a per-device
sensor offset, so the federation is non-IID the way real wearables are.

    python -m examples.custom_model_and_data.data /tmp/activity   # prints the data-files value
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ACTIVITIES = ("sit", "stand", "walk", "run", "cycle", "climb")
NUM_FEATURES = 16


def make_frames(num_devices: int = 24, rows_per_device: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames: ``f0..f15``, ``activity`` (str) and ``device_id`` (int) columns."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.5, size=(len(ACTIVITIES), NUM_FEATURES))
    frames = []
    for device in range(num_devices):
        mix = rng.dirichlet(np.full(len(ACTIVITIES), 0.7))
        labels = rng.choice(len(ACTIVITIES), size=rows_per_device, p=mix)
        offset = rng.normal(0.0, 0.3, size=NUM_FEATURES)
        features = centres[labels] + offset + rng.normal(0.0, 1.0, size=(rows_per_device, NUM_FEATURES))
        frame = pd.DataFrame(features.astype(np.float32), columns=[f"f{i}" for i in range(NUM_FEATURES)])
        frame["activity"] = [ACTIVITIES[i] for i in labels]
        frame["device_id"] = device
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    test = rows.sample(frac=0.2, random_state=seed)
    return rows.drop(test.index).reset_index(drop=True), test.reset_index(drop=True)


def write(folder: str | Path, seed: int = 0) -> str:
    """Write ``train.parquet`` and ``test.parquet`` into ``folder``; returns the ``data-files`` value."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = make_frames(seed=seed)
    train.to_parquet(folder / "train.parquet")
    test.to_parquet(folder / "test.parquet")
    return f"{{train = '{folder.resolve() / 'train.parquet'}', test = '{folder.resolve() / 'test.parquet'}'}}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    print(write(parser.parse_args().folder))
