"""Tests for fedfish.data and fedfish.dataset_files: IDX/CIFAR loading, data search order, CLI.

Partitions of the built-in datasets are tested in test_partition.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from fedfish import data, dataset_files
from fedfish.data import DATASETS, load_images
from fedfish.dataset_files import locate_fashion_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]


def _denormalize(x: torch.Tensor, dataset: str) -> np.ndarray:
    """Independent inverse of the loader's normalisation, back to uint8 pixels."""
    spec = DATASETS[dataset]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8).numpy()


@pytest.fixture
def isolated_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $FEDFISH_DATA, ./data and the system directory pointed at empty places."""
    monkeypatch.delenv(dataset_files.DATA_ENV, raising=False)
    monkeypatch.setattr(dataset_files, "DEFAULT_ROOT", tmp_path / "default-root")
    monkeypatch.setattr(dataset_files, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "system")
    return tmp_path


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("split", ["train", "test"])
def test_fmnist_idx_round_trip(tiny_fmnist_dir, split: str) -> None:
    # Prepare
    images, labels = tiny_fmnist_dir.arrays[split]

    # Execute
    x, y = load_images("fashion-mnist", split, root=tiny_fmnist_dir.root)

    # Assert
    assert x.dtype == torch.float32 and x.shape == (len(labels), 1, 28, 28)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal(_denormalize(x, "fashion-mnist"), images)


def test_load_images_returns_tensors_that_do_not_alias_the_cache(tiny_fmnist_dir) -> None:
    # Prepare
    x1, y1 = load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)
    expected_x, expected_y = x1.clone(), y1.clone()

    # Execute
    x1.fill_(7.0)
    y1.fill_(3)
    x2, y2 = load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)

    # Assert
    assert torch.equal(x2, expected_x) and torch.equal(y2, expected_y)


@pytest.mark.skipif(
    not dataset_files.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_real_fmnist_sizes_and_normalisation() -> None:
    # Execute
    x_train, y_train = load_images("fashion-mnist", "train", root=dataset_files.SYSTEM_FASHION_MNIST_DIR)
    x_test, _ = load_images("fashion-mnist", "test", root=dataset_files.SYSTEM_FASHION_MNIST_DIR)

    # Assert: the published constants standardise the training set.
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_train).tolist() == [6000] * 10
    assert abs(x_train.mean().item()) < 1e-2 and abs(x_train.std().item() - 1) < 1e-2


def _install_copy(source: Path, directory: Path) -> Path:
    shutil.copytree(source, directory)
    return directory.resolve()


@pytest.mark.parametrize(
    ("use_root", "use_env", "use_default", "expected"),
    [
        (True, True, True, "root"),
        (False, True, True, "env"),
        (False, False, True, "default"),
        (False, False, False, "system"),
    ],
)
def test_locate_search_order(
    tiny_fmnist_dir, isolated_search, monkeypatch, use_root, use_env, use_default, expected
) -> None:
    # Prepare: root as a flat directory, env and ./data in torchvision's layout.
    tmp = isolated_search
    dirs = {
        "root": _install_copy(tiny_fmnist_dir.root, tmp / "explicit"),
        "env": _install_copy(tiny_fmnist_dir.root, tmp / "env" / "FashionMNIST" / "raw"),
        "default": _install_copy(tiny_fmnist_dir.root, tmp / "default-root" / "FashionMNIST" / "raw"),
        "system": _install_copy(tiny_fmnist_dir.root, tmp / "system"),
    }
    if use_env:
        monkeypatch.setenv(dataset_files.DATA_ENV, str(tmp / "env"))
    if not use_default:
        shutil.rmtree(tmp / "default-root")

    # Execute
    found = locate_fashion_mnist(tmp / "explicit" if use_root else None)

    # Assert
    assert found == dirs[expected]


def test_locate_error_lists_every_place_and_how_to_get_the_data(isolated_search, monkeypatch) -> None:
    # Prepare
    tmp = isolated_search
    monkeypatch.setenv(dataset_files.DATA_ENV, str(tmp / "env"))

    # Execute
    with pytest.raises(FileNotFoundError) as info:
        locate_fashion_mnist(tmp / "explicit")

    # Assert
    message = str(info.value)
    for base in ("explicit", "env", "default-root"):
        assert str((tmp / base).absolute()) + "\n" in message
        assert str((tmp / base / "FashionMNIST" / "raw").absolute()) in message
    assert str((tmp / "system").absolute()) in message
    assert "dataset-fashion-mnist" in message
    assert "python -m fedfish.data download fashion-mnist" in message


def _set_byte(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("file_name", "corrupt", "match"),
    [
        ("train-images-idx3-ubyte", lambda p: _set_byte(p, 2, 0x0D), "train-images.*bad IDX header"),
        ("train-images-idx3-ubyte", lambda p: _set_byte(p, 3, 2), "train-images.*bad IDX header"),
        ("train-labels-idx1-ubyte", lambda p: p.write_bytes(b"\x00\x00"), "train-labels.*bad IDX header"),
        ("train-labels-idx1-ubyte", lambda p: p.write_bytes(p.read_bytes()[:6]), "truncated IDX header"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-1]), "train-images.*body has"),
        ("train-labels-idx1-ubyte", lambda p: _set_byte(p, 7, 99), "train-labels.*body has"),
    ],
)
def test_corrupt_idx_rejected_naming_the_file(tiny_fmnist_dir, file_name, corrupt, match) -> None:
    # Prepare
    corrupt(tiny_fmnist_dir.root / file_name)

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "Compressed file ended"),
        (lambda p: p.write_bytes(b"not gzip at all"), "Not a gzipped file"),
    ],
)
def test_corrupt_gzip_idx_rejected_naming_the_file(tiny_fmnist_dir, corrupt, reason: str) -> None:
    # Prepare: the fixture's test files are gzipped.
    path = tiny_fmnist_dir.root / "t10k-images-idx3-ubyte.gz"
    corrupt(path)

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: truncated or corrupt gzip file \({reason}"):
        load_images("fashion-mnist", "test", root=tiny_fmnist_dir.root)


def test_image_and_label_counts_must_agree(tiny_fmnist_dir) -> None:
    # Prepare: a consistent labels file that holds one label fewer.
    path = tiny_fmnist_dir.root / "train-labels-idx1-ubyte"
    raw = path.read_bytes()
    n = int.from_bytes(raw[4:8], "big")
    path.write_bytes(raw[:4] + (n - 1).to_bytes(4, "big") + raw[8:-1])

    # Execute / Assert
    with pytest.raises(ValueError, match="holds 100 images but .*train-labels.* 99 labels"):
        load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)


@pytest.mark.parametrize(
    ("dataset", "split", "match"),
    [("mnist", "train", "dataset must be one of"), ("fashion-mnist", "val", "split must be one of")],
)
def test_load_images_rejects_unknown_names(tiny_fmnist_dir, dataset, split, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_images(dataset, split, root=tiny_fmnist_dir.root)


def test_download_flag_fetches_then_loads(isolated_search, tiny_fmnist_dir, monkeypatch) -> None:
    # Prepare: a stand-in for torchvision's downloader that writes its raw layout.
    calls = []

    def fake_fashion_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        shutil.copytree(tiny_fmnist_dir.root, Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    target = isolated_search / "fresh"

    # Execute
    with pytest.raises(FileNotFoundError):
        load_images("fashion-mnist", "test", root=target)
    _, y = load_images("fashion-mnist", "test", root=target, download=True)

    # Assert
    assert calls == [(str(target), True)]
    np.testing.assert_array_equal(y.numpy(), tiny_fmnist_dir.arrays["test"][1])


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize(("split", "n"), [("train", 20), ("test", 10)])
def test_cifar_tiny_fixture_loads(tiny_cifar_root, isolated_search, split: str, n: int) -> None:
    # Prepare
    images, labels = tiny_cifar_root.arrays[split]

    # Execute
    x, y = load_images("cifar10", split, root=tiny_cifar_root.root)

    # Assert
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal(_denormalize(x, "cifar10"), images)


def test_cifar_missing_names_the_download_command(isolated_search) -> None:
    with pytest.raises(FileNotFoundError, match="download cifar10"):
        load_images("cifar10", "test", root=isolated_search / "nowhere")


# ----------------------------------------------------------------------------- CLI


def test_cli_locate_prints_dir_or_fails(tiny_fmnist_dir, isolated_search, capsys) -> None:
    # Execute
    found_rc = data.main(["locate", "fashion-mnist", "--root", str(tiny_fmnist_dir.root)])
    found_out = capsys.readouterr().out
    missing_rc = data.main(["locate", "fashion-mnist"])
    missing_err = capsys.readouterr().err

    # Assert
    assert found_rc == 0 and found_out.strip() == str(tiny_fmnist_dir.root.resolve())
    assert missing_rc == 1 and "searched, in order" in missing_err


def test_cli_as_module_uses_fedfish_data_env(tiny_fmnist_dir, tmp_path) -> None:
    # Prepare
    env = {**os.environ, dataset_files.DATA_ENV: str(tiny_fmnist_dir.root)}

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "fedfish.data", "locate", "fashion-mnist"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tiny_fmnist_dir.root.resolve())
