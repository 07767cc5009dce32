"""The tiny tabular dataset and the user's loader module that the datasource tests write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedfish.datasource import DataConfig

FEATURES = [f"x{i}" for i in range(6)]
N_TRAIN, N_TEST, N_WRITERS, N_CLASSES = 200, 40, 8, 4


@dataclass(frozen=True)
class Tabular:
    """Tiny tabular data on disk: the frames written and their data-files strings."""

    train: pd.DataFrame
    test: pd.DataFrame
    parquet: str
    csv: str


def write_tabular(directory: Path) -> Tabular:
    """200 train / 40 test rows: 6 float features, 4 classes, 8 writers (25 train rows each)."""
    rng = np.random.default_rng(0)
    frames = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        frame = pd.DataFrame(rng.normal(3.0, 2.0, size=(n, len(FEATURES))), columns=FEATURES)
        frame["label"] = rng.permutation(np.arange(n) % N_CLASSES)
        frame["writer_id"] = rng.permutation(np.arange(n) % N_WRITERS)
        frame.to_parquet(directory / f"{split}.parquet", index=False)
        frame.to_csv(directory / f"{split}.csv", index=False)
        frames[split] = frame
    return Tabular(frames["train"], frames["test"], data_files_table(directory, "parquet"),
                   data_files_table(directory, "csv"))


def data_files_table(directory: Path, ext: str) -> str:
    """The data-files table of ``train.<ext>`` and ``test.<ext>`` in ``directory``."""
    return f"{{train = '{directory}/train.{ext}', test = '{directory}/test.{ext}'}}"


def parquet_config(tabular: Tabular, **kwargs: object) -> DataConfig:
    """A DataConfig reading ``tabular``'s parquet files (all six features, 5 partitions), with ``kwargs`` on top."""
    defaults = {"dataset": "parquet", "data_files": tabular.parquet, "feature_column": ",".join(FEATURES),
                "num_partitions": 5}
    return DataConfig(**defaults | kwargs)


LOADER_MODULE = """
import numpy as np

def blobs(cfg):
    rng = np.random.default_rng(cfg.seed)
    return {split: (rng.normal(size=(n, 3)), np.arange(n) % 2) for split, n in (("train", 40), ("test", 10))}

def broken(cfg):
    return {"train": (np.zeros((4, 3)), np.zeros(4))}

def failing(cfg):
    raise OSError("disk on fire")
"""
