"""Raw columns to model tensors: images, tabular rows and class labels.

The raw arrays are kept compact (uint8 images, float64 tables) and converted on
every request, so a cache of them stays small and the tensors handed out never
alias it:

* images (PIL images, or arrays of shape (N, H, W), (N, H, W, C) or (N, C, H, W))
  become float32 (C, H, W), scaled to [0, 1] (uint8 pixels / 255; float pixels are
  taken as already in [0, 1]) and standardised per channel;
* tabular rows (numeric columns, or one list/array column) become float32 (d,),
  standardised per column;
* labels become int64 class ids: a ``ClassLabel``'s ids as they are, any other
  values (integers or strings) by their rank among the train split's distinct
  values, so the ids are always 0 .. num_classes - 1.

Mean and std are those of the train split (population std; a constant channel or
column gets std 1). Errors are ``ValueError`` without a config key: the caller
knows which key the data came from and adds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import datasets

IMAGE_COLUMNS: tuple[str, ...] = ("image", "img")
_CHANNEL_SIZES = (1, 3, 4)
_STATS_CHUNK = 4096  # rows per step of the mean/std pass (bounds its float64 copy)


@dataclass(frozen=True)
class Standardiser:
    """``(x * scale - mean) / std``, per channel (images) or per column (tables).

    Attributes
    ----------
    mean, std : np.ndarray
        float64, shape (C,) or (d,).
    scale : float
        1/255 for uint8 images, else 1.
    """

    mean: np.ndarray
    std: np.ndarray
    scale: float

    @classmethod
    def fit(cls, raw: np.ndarray) -> Standardiser:
        """Statistics of a raw train array: (N, C, H, W) images or an (N, d) table."""
        scale = 1.0 / 255.0 if raw.dtype == np.uint8 else 1.0
        axes = (0, 2, 3) if raw.ndim == 4 else (0,)
        width = raw.shape[1]
        total = np.zeros(width)
        squares = np.zeros(width)
        for start in range(0, raw.shape[0], _STATS_CHUNK):
            chunk = raw[start : start + _STATS_CHUNK].astype(np.float64) * scale
            total += chunk.sum(axis=axes)
            squares += np.square(chunk).sum(axis=axes)
        count = max(1, raw.size // width)  # values per channel (N*H*W) or per column (N)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        return cls(mean, np.where(std > 1e-12, std, 1.0), scale)

    def apply(self, raw: np.ndarray) -> torch.Tensor:
        """A new float32 tensor of the same shape; ``raw`` is left untouched."""
        if raw.ndim == 4:
            x = raw.astype(np.float32)  # a copy, like fedfish.data
            x *= np.float32(self.scale)
            x -= self.mean.astype(np.float32)[:, None, None]
            x /= self.std.astype(np.float32)[:, None, None]
        else:
            x = ((raw * self.scale - self.mean) / self.std).astype(np.float32)
        return torch.from_numpy(x)


@dataclass(frozen=True)
class LabelEncoder:
    """Class ids of label values: ``classes[i]`` is class ``i``.

    Attributes
    ----------
    classes : np.ndarray
        Sorted distinct train values, or the ``ClassLabel`` names.
    preset : bool
        The values already are ids (a ``ClassLabel``): only their range is checked.
    """

    classes: np.ndarray
    preset: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def fit(cls, train: np.ndarray, names: Sequence[str] | None = None) -> LabelEncoder:
        """From the train split's values; ``names`` of a ``ClassLabel`` fix the classes."""
        if names is not None:
            return cls(np.asarray(names, dtype=object), preset=True)
        values = _label_values(train, "train")
        if values.size == 0:
            raise ValueError("the train split has no labels")
        return cls(np.unique(values))

    def encode(self, values: np.ndarray, split: str) -> np.ndarray:
        """int64 ids, shape (N,); a value the train split lacks is an error naming it."""
        if self.preset:
            ids = np.asarray(values).astype(np.int64)
            bad = (ids < 0) | (ids >= self.num_classes)
            if bad.any():
                raise ValueError(f"{split} labels {sorted(set(ids[bad].tolist()))[:5]} are outside "
                                 f"the {self.num_classes} classes")
            return ids
        values = _label_values(values, split)
        ids = np.searchsorted(self.classes, values).clip(0, self.num_classes - 1)
        unseen = self.classes[ids] != values
        if unseen.any():
            raise ValueError(f"{split} labels {sorted(set(values[unseen].tolist()))[:5]} never "
                             f"occur in the train split (classes: {self.classes.tolist()[:20]})")
        return ids.astype(np.int64)


def from_array(x: np.ndarray) -> np.ndarray:
    """Raw features of an array with one row per example.

    2-D: a table (N, d), as float64. 1-D: one feature. 3-D: greyscale images
    (N, H, W). 4-D: colour images, channels last (N, H, W, C) when C is 1, 3 or 4,
    else channels first. Images come back as (N, C, H, W), uint8 if the input is
    integer (values must lie in [0, 255]), float32 otherwise.
    """
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"features must be numeric, got dtype {x.dtype} (shape {x.shape})")
    if x.ndim in (1, 2):
        table = (x[:, None] if x.ndim == 1 else x).astype(np.float64)
        _check_finite(table, "features")
        return table
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in _CHANNEL_SIZES:
            x = x.transpose(0, 3, 1, 2)
        elif x.shape[1] not in _CHANNEL_SIZES:
            raise ValueError(f"images of shape {x.shape[1:]} have no channel axis of size 1, 3 or 4")
    else:
        raise ValueError(f"features must have 1 to 4 dimensions (N, ...), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"integer pixels must lie in [0, 255], got [{x.min()}, {x.max()}]")
        return np.ascontiguousarray(x, dtype=np.uint8)
    _check_finite(x, "pixels")
    return np.ascontiguousarray(x, dtype=np.float32)


def from_images(images: Sequence[Any]) -> np.ndarray:
    """uint8 (N, C, H, W) of PIL images: greyscale if all are, else RGB; one size for all."""
    images = list(images)
    grey = all(image.mode in ("L", "1") for image in images)
    arrays = [np.asarray(image.convert("L" if grey else "RGB")) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size: {sorted(shapes)[:3]}; resize them to one size")
    if not arrays:
        return np.zeros((0, 1 if grey else 3, 0, 0), dtype=np.uint8)
    return from_array(np.stack(arrays))


def from_dataset(table: datasets.Dataset, columns: Sequence[str]) -> np.ndarray:
    """Raw features of HF dataset columns: one image column, or the table they form.

    One column of PIL images (an ``Image`` feature) or of per-row arrays of 2 or 3
    dimensions gives images; one column of vectors, or several scalar columns,
    give a table. Scalar columns are read from Arrow, so float64 stays exact.
    """
    import datasets  # noqa: PLC0415

    if len(columns) == 1 and isinstance(table.features[columns[0]], datasets.Image):
        return from_images(table[columns[0]])
    arrow = table.with_format("arrow")[:]
    parts = []
    for name in columns:
        column = arrow.column(name)
        if column.null_count:
            raise ValueError(f"column {name!r} has {column.null_count} missing values")
        kind = str(column.type)
        if kind.startswith(("list", "large_list", "fixed_size_list", "extension")):
            values = np.asarray(table.with_format("numpy", columns=[name])[:][name])
            if values.dtype == object:
                raise ValueError(f"column {name!r} holds rows of different shapes")
            if len(columns) == 1:
                return from_array(values)
            if values.ndim != 2:
                raise ValueError(f"column {name!r} holds arrays of shape {values.shape[1:]}; "
                                 "only one such column can be the features")
            parts.append(values)
        elif _arrow_numeric(column.type):
            parts.append(column.to_numpy(zero_copy_only=False)[:, None])
        else:
            raise ValueError(f"column {name!r} is not numeric ({column.type})")
    return from_array(np.concatenate(parts, axis=1))


def labels_of(table: datasets.Dataset, column: str) -> tuple[np.ndarray, list[str] | None]:
    """A label column's values and, for a ``ClassLabel``, its class names."""
    import datasets  # noqa: PLC0415

    feature = table.features[column]
    values = table.with_format("arrow")[:].column(column)
    if values.null_count:
        raise ValueError(f"column {column!r} has {values.null_count} missing labels")
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return values.to_numpy(zero_copy_only=False), names


def image_column(table: datasets.Dataset) -> str | None:
    """The first column holding ``Image`` features, else one named ``image``/``img``."""
    import datasets  # noqa: PLC0415

    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image):
            return name
    return next((name for name in IMAGE_COLUMNS if name in table.column_names), None)


def check_arrays(arrays: Any, what: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits present, each a pair x (N, ...), y (N,) with N > 0."""
    if not isinstance(arrays, Mapping) or not {"train", "test"} <= set(arrays):
        got = f"keys {list(arrays)}" if isinstance(arrays, Mapping) else type(arrays).__name__
        raise ValueError(f"{what} must give {{'train': (x, y), 'test': (x, y)}}, got {got}")
    out = {}
    for split in ("train", "test"):
        pair = arrays[split]
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{what}: {split} must be a pair (x, y)")
        x, y = np.asarray(pair[0]), np.asarray(pair[1])
        if x.ndim == 0 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ValueError(
                f"{what}: {split} needs x (N, ...) and y (N,) with N > 0, got shapes {x.shape} and {y.shape}"
            )
        out[split] = (x, y)
    return out


def _label_values(values: np.ndarray, split: str) -> np.ndarray:
    """Integers as int64, whole floats as int64, strings as str; anything else refused."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{split} labels must be one value per example, got shape {values.shape}")
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        if not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise ValueError(f"{split} labels are not whole numbers (dtype {values.dtype})")
        return values.astype(np.int64)
    if values.dtype.kind in "US" or all(isinstance(v, str) for v in values.tolist()):
        return values.astype(str)
    raise ValueError(f"{split} labels must be integers or strings, got dtype {values.dtype}")


def _arrow_numeric(kind: Any) -> bool:
    import pyarrow as pa  # noqa: PLC0415

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind))


def _check_finite(x: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(f"{what} hold NaN or infinite values in {len(rows)} rows, first {rows[:5].tolist()}")
