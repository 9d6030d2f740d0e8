"""In-memory image classification data for `python -m inna_fused train`; nothing is downloaded.

- digits: scikit-learn's bundled 8×8 digits (1,797 images), a fixed stratified 80/20 split.
- cifar10 / cifar100: the "python version" pickles (cifar-10-batches-py/data_batch_1..5 and
  test_batch with b"data" and b"labels"; cifar-100-python/train and test with b"fine_labels").
- mnist: the idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte), plain or .gz.

Images become float32 N×C×H×W tensors standardised per channel with the training set's statistics.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("digits", "mnist", "cifar10", "cifar100")


@dataclass
class ImageData:
    name: str
    train_x: torch.Tensor   # float32, N×C×H×W, standardised
    train_y: torch.Tensor   # int64 labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    train = train.astype(np.float32)
    test = test.astype(np.float32)
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return torch.from_numpy((train - mean) / std), torch.from_numpy((test - mean) / std)


def _make(name, train_x, train_y, test_x, test_y, num_classes) -> ImageData:
    train_x, test_x = _standardised(train_x, test_x)
    return ImageData(name, train_x, torch.tensor(np.asarray(train_y), dtype=torch.int64),
                     test_x, torch.tensor(np.asarray(test_y), dtype=torch.int64), num_classes)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8×8 digits with a fixed stratified split (same for every run)."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=split_seed,
        stratify=digits.target)
    return _make("digits", train_x, train_y, test_x, test_y, 10)


def _find_dir(data_dir: str, subdirs: tuple[str, ...], wanted: list[list[str]], what: str) -> str:
    """The first of data_dir, data_dir/<subdir>... holding one name of every group in `wanted`."""
    if data_dir is None:
        raise FileNotFoundError(f"{what}: pass --data-dir DIR (nothing is downloaded)")
    candidates = [data_dir] + [os.path.join(data_dir, s) for s in subdirs]
    for directory in candidates:
        if all(any(os.path.isfile(os.path.join(directory, n)) for n in names) for names in wanted):
            return directory
    existing = next((d for d in candidates if os.path.isdir(d)), None)
    if existing is None:
        raise FileNotFoundError(f"{what}: directory {data_dir!r} does not exist")
    missing = [names[0] for names in wanted
               if not any(os.path.isfile(os.path.join(d, n)) for d in candidates for n in names)]
    missing = missing or [names[0] for names in wanted]
    raise FileNotFoundError(
        f"{what}: missing {', '.join(missing)} in {' or '.join(map(repr, candidates))} "
        f"(nothing is downloaded; put the files there)")


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_images(batch: dict, path: str) -> np.ndarray:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(data_dir: str) -> ImageData:
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    directory = _find_dir(data_dir, ("cifar-10-batches-py",),
                          [[n] for n in train_names + ["test_batch"]], "CIFAR-10")
    parts = [_unpickle(os.path.join(directory, n)) for n in train_names]
    test = _unpickle(os.path.join(directory, "test_batch"))
    train_x = np.concatenate([_cifar_images(p, n) for p, n in zip(parts, train_names)])
    train_y = np.concatenate([np.asarray(p[b"labels"]) for p in parts])
    return _make("cifar10", train_x, train_y, _cifar_images(test, "test_batch"),
                 np.asarray(test[b"labels"]), 10)


def load_cifar100(data_dir: str) -> ImageData:
    directory = _find_dir(data_dir, ("cifar-100-python",), [["train"], ["test"]], "CIFAR-100")
    train = _unpickle(os.path.join(directory, "train"))
    test = _unpickle(os.path.join(directory, "test"))
    return _make("cifar100", _cifar_images(train, "train"), np.asarray(train[b"fine_labels"]),
                 _cifar_images(test, "test"), np.asarray(test[b"fine_labels"]), 100)


def read_idx(path: str) -> np.ndarray:
    """An idx file (the MNIST format) of unsigned bytes, plain or gzip-compressed."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an idx header")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(data_dir: str) -> ImageData:
    directory = _find_dir(data_dir, ("MNIST/raw", "mnist"),
                          [[n, n + ".gz"] for n in MNIST_FILES], "MNIST")

    def read(name):
        path = os.path.join(directory, name)
        return read_idx(path if os.path.isfile(path) else path + ".gz")

    train_x, train_y, test_x, test_y = (read(n) for n in MNIST_FILES)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"MNIST in {directory}: image and label counts differ")
    return _make("mnist", train_x[:, None], train_y, test_x[:, None], test_y, 10)


def load(name: str, data_dir: str = None) -> ImageData:
    if name == "digits":
        return load_digits()
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10, "cifar100": load_cifar100}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return loaders[name](data_dir)
