"""The paper reproductions: toy problem (Fig. 1), training loop, data loaders."""
from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from inna_fused.__main__ import main as cli  # noqa: E402
from inna_fused.experiments import data as datasets  # noqa: E402
from inna_fused.experiments import models, toy, train  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny CNN batches only lose to threading (and `train` on digits sets one thread itself);
    put the thread count back so that other test files see the machine's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- toy

@pytest.mark.parametrize("point", [(-1.0, 1.5), (0.3, -0.2), (1.0, 1.0), (0.0, 0.7), (2.0, 1.0)],
                         ids=lambda p: f"theta={p}")
def test_toy_subgradient_matches_autograd(point):
    theta = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    objective = 100 * (theta[1] - theta[0].abs()) ** 2 + (1 - theta[0]).abs()
    objective.backward()
    assert toy.subgradient(*point) == pytest.approx(theta.grad.tolist(), abs=1e-12)
    assert toy.objective(*point) == pytest.approx(objective.item())


def test_toy_alpha_1_3_beta_0_1_reaches_the_minimum_and_beats_the_others():
    # The paper runs 88,000 steps of γ = 1e-4, i.e. the DIN dynamics up to time T = 8.8. This
    # suite covers the same horizon with γ = 1e-3 and 8,800 steps (10x cheaper: the full run costs
    # ~15 s of CPU here, mostly INNA.step overhead on a 2-element param). γ = 1e-3 stays far inside
    # explicit Euler's stable range: across the valley (Hessian eigenvalue λ = 400) the linearised
    # DIN has rates s with s² + (α + βλ)s + λ = 0, so |s| ≤ 24 and γ|s| ≤ 0.024 for these (α, β).
    # `python -m inna_fused toy` runs the exact paper setting for the docs.
    runs = toy.run_toy(toy.PAPER_CONFIGS, steps=toy.PAPER_STEPS // 10, lr=toy.PAPER_LR * 10,
                       record_every=100)
    distance = {(r.alpha, r.beta): math.dist(r.final, toy.MINIMUM) for r in runs}
    assert distance[(1.3, 0.1)] < 1e-2
    # The paper's reading of Fig. 1: larger β damps the transverse oscillations, larger α the
    # longitudinal ones, so (1.3, 0.1) ends closest and (0.5, 0.01) farthest.
    assert distance[(1.3, 0.1)] < distance[(0.5, 0.1)] < distance[(0.5, 0.01)], distance
    best = next(r for r in runs if (r.alpha, r.beta) == (1.3, 0.1))
    assert best.objective[-1] < 1e-3 * best.objective[0]


def test_toy_trajectory_is_the_reference_recursion():
    # A few hundred optimizer steps against eq. (12) written out on Python floats.
    alpha, beta, lr, steps = 1.3, 0.1, 1e-3, 300
    (run,) = toy.run_toy([(alpha, beta)], steps=steps, lr=lr, psi_init="zero", record_every=1)
    theta = list(toy.START)
    psi = [(1 - alpha * beta) * t for t in theta]
    for k in range(steps):
        assert run.trajectory[k] == pytest.approx(theta, rel=1e-9, abs=1e-12), f"step {k}"
        grad = toy.subgradient(*theta)
        phase = [(alpha - 1 / beta) * t + s / beta for t, s in zip(theta, psi)]
        psi = [s - lr * ph for s, ph in zip(psi, phase)]
        theta = [t - lr * (ph + beta * g) for t, ph, g in zip(theta, phase, grad)]
    assert run.final == pytest.approx(theta, rel=1e-9, abs=1e-12)


def test_toy_cli_writes_both_pictures_and_the_table(tmp_path, capsys):
    assert cli(["toy", "--steps", "1000", "--lr", "1e-3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("toy_trajectories.png", "toy_loss.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    table = [line.split() for line in out.splitlines()]
    rows = [r for r in table if len(r) == 7 and r[2] == "zero"]
    assert [(float(r[0]), float(r[1])) for r in rows] == list(toy.PAPER_CONFIGS)
    assert all(math.isfinite(float(x)) for r in rows for x in r[3:])


@pytest.mark.parametrize("argv,culprit", [
    (["--configs", "0.5-0.1"], "--configs"),
    (["--steps", "-1"], "steps"),
    (["--record-every", "0"], "record_every"),
], ids=["configs", "steps", "record-every"])
def test_toy_bad_options_are_named(tmp_path, argv, culprit):
    with pytest.raises(ValueError, match=culprit):
        cli(["toy", *argv, "--out", str(tmp_path)])
    assert not (tmp_path / "toy_loss.png").exists()


# -------------------------------------------------------------------------------- training

def _train_args(**overrides):
    import argparse

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--epochs", "1", "--seeds", "1", "--no-progress"])
    for key, value in overrides.items():
        setattr(args, key, value)
    train._fill_defaults(args)
    return args


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


def test_digits_split_is_fixed_and_standardised(digits):
    assert digits.train_x.shape == (1437, 1, 8, 8) and digits.test_x.shape == (360, 1, 8, 8)
    assert set(digits.train_y.tolist()) == set(range(10))
    assert abs(digits.train_x.mean().item()) < 1e-5
    assert abs(digits.train_x.std().item() - 1) < 1e-2
    assert torch.equal(datasets.load_digits().test_y, digits.test_y)


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
def test_one_epoch_on_digits_reduces_training_loss(optimizer, digits):
    args = _train_args()
    result = train.train_run(optimizer, train.DEFAULT_LRS[optimizer], 0, digits, args,
                             progress=False)
    before, after = result["train_loss"]
    assert len(result["test_acc"]) == 2
    assert after < 0.95 * before, f"{optimizer}: training loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("state_dtype", [None, "bfloat16"], ids=["state-fp32", "state-bf16"])
def test_bfloat16_model_trains_with_inna(state_dtype, digits):
    """`train --dtype bfloat16`: the whole model in bfloat16, INNA's defaults (stochastic
    rounding); one epoch lowers the loss about as much as in float32."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        args = _train_args(dtype=dtype, state_dtype=state_dtype if dtype == "bfloat16" else None)
        result = train.train_run("inna", train.DEFAULT_LRS["inna"], 0, digits, args,
                                 progress=False)
        losses[dtype] = result["train_loss"]
    assert losses["bfloat16"][1] < 0.95 * losses["bfloat16"][0], losses
    assert losses["bfloat16"][1] < 1.5 * losses["float32"][1], losses


def test_same_seed_gives_same_initialisation_and_order(digits):
    args = _train_args(max_batches=5)
    first = train.train_run("inna", 0.5, 3, digits, args, progress=False)
    second = train.train_run("inna", 0.5, 3, digits, args, progress=False)
    other_optimizer = train.train_run("adam", 1e-3, 3, digits, args, progress=False)
    assert first["train_loss"] == second["train_loss"]
    assert other_optimizer["train_loss"][0] == first["train_loss"][0]  # same initial network


def test_train_cli_writes_curves_and_summary(tmp_path, capsys):
    argv = ["train", "--epochs", "1", "--seeds", "1", "--max-batches", "2", "--no-progress",
            "--out", str(tmp_path)]
    assert cli(argv) == 0
    import json

    result = json.loads((tmp_path / "train_results.json").read_text())
    assert set(result["summary"]) == set(train.OPTIMIZERS)
    assert [r["optimizer"] for r in result["runs"]] == list(train.OPTIMIZERS)
    assert all(len(r["train_loss"]) == 2 for r in result["runs"])
    assert (tmp_path / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert all(name in out for name in train.OPTIMIZERS)


def test_train_grid_writes_heatmap(tmp_path):
    argv = ["train", "--grid", "--alphas", "0.5,1", "--betas", "0.1", "--epochs", "1",
            "--seeds", "1", "--max-batches", "3", "--no-progress", "--out", str(tmp_path)]
    assert cli(argv) == 0
    import json

    cells = json.loads((tmp_path / "grid_results.json").read_text())["cells"]
    assert [(c["alpha"], c["beta"]) for c in cells] == [(0.5, 0.1), (1.0, 0.1)]
    assert (tmp_path / "grid_heatmap.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------- loaders

def _cifar_batch(rng, n, label_key):
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 100 if label_key == b"fine_labels" else 10, size=n).tolist()
    return images, labels, {b"data": images.reshape(n, -1), label_key: labels}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_loader_reads_python_pickles(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_images, train_labels = [], []
    for i in range(1, 6):
        images, labels, batch = _cifar_batch(rng, 3 + i, b"labels")
        _dump(folder / f"data_batch_{i}", batch)
        train_images.append(images)
        train_labels += labels
    test_images, test_labels, batch = _cifar_batch(rng, 4, b"labels")
    _dump(folder / "test_batch", batch)

    loaded = datasets.load("cifar10", str(tmp_path))  # finds the standard sub-folder
    assert loaded.train_x.shape == (sum(3 + i for i in range(1, 6)), 3, 32, 32)
    assert loaded.test_x.shape == (4, 3, 32, 32) and loaded.num_classes == 10
    assert loaded.train_y.tolist() == train_labels and loaded.test_y.tolist() == test_labels
    # Standardisation is per channel and monotone: pixel order within a channel is preserved.
    raw = np.concatenate(train_images).astype(np.float32)
    for c in range(3):
        expected = (raw[:, c] - raw[:, c].mean()) / raw[:, c].std()
        np.testing.assert_allclose(loaded.train_x[:, c].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("in_channels,classes,side", [(3, 10, 32), (3, 100, 32), (1, 10, 28)],
                         ids=["cifar10", "cifar100", "mnist"])
def test_network_in_network_has_the_papers_size(in_channels, classes, side):
    model = models.network_in_network(in_channels, classes)
    assert 0.9e6 < models.count_parameters(model) < 1.1e6
    assert model(torch.zeros(2, in_channels, side, side)).shape == (2, classes)


def test_train_cli_runs_the_nin_on_cifar_files(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for i in range(1, 6):
        _dump(tmp_path / f"data_batch_{i}", _cifar_batch(rng, 4, b"labels")[2])
    _dump(tmp_path / "test_batch", _cifar_batch(rng, 4, b"labels")[2])
    out = tmp_path / "out"
    assert cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
                "--seeds", "1", "--batch-size", "4", "--max-batches", "1", "--optimizers",
                "inna,sgd", "--no-progress", "--out", str(out)]) == 0
    assert "966,986 params" in capsys.readouterr().out
    assert (out / "train_curves.png").exists()


def test_cifar100_loader_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    _, train_labels, train_batch = _cifar_batch(rng, 7, b"fine_labels")
    train_batch[b"coarse_labels"] = [0] * 7
    _, test_labels, test_batch = _cifar_batch(rng, 5, b"fine_labels")
    _dump(tmp_path / "train", train_batch)
    _dump(tmp_path / "test", test_batch)
    loaded = datasets.load("cifar100", str(tmp_path))
    assert loaded.train_x.shape == (7, 3, 32, 32) and loaded.test_x.shape == (5, 3, 32, 32)
    assert loaded.num_classes == 100
    assert loaded.train_y.tolist() == train_labels and loaded.test_y.tolist() == test_labels


def _write_idx(path, array: np.ndarray, compress: bool):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_mnist_loader_reads_idx_files(tmp_path, compress):
    rng = np.random.default_rng(2)
    train_images = rng.integers(0, 256, size=(6, 28, 28))
    train_labels = rng.integers(0, 10, size=6)
    test_images = rng.integers(0, 256, size=(3, 28, 28))
    test_labels = rng.integers(0, 10, size=3)
    for name, array in zip(datasets.MNIST_FILES,
                           (train_images, train_labels, test_images, test_labels)):
        _write_idx(tmp_path / name, array, compress)
    assert datasets.read_idx(str(tmp_path / (datasets.MNIST_FILES[0] + (".gz" if compress else "")))
                             ).tolist() == train_images.tolist()
    loaded = datasets.load("mnist", str(tmp_path))
    assert loaded.train_x.shape == (6, 1, 28, 28) and loaded.test_x.shape == (3, 1, 28, 28)
    assert loaded.train_y.tolist() == train_labels.tolist()
    assert loaded.test_y.tolist() == test_labels.tolist()


def test_idx_with_wrong_size_is_rejected(tmp_path):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 10) + bytes(4))
    with pytest.raises(ValueError, match="header says shape"):
        datasets.read_idx(str(path))


@pytest.mark.parametrize("dataset,missing", [("cifar10", "data_batch_1"), ("cifar100", "train"),
                                             ("mnist", "train-images-idx3-ubyte")])
def test_missing_files_give_a_clear_error(tmp_path, dataset, missing):
    with pytest.raises(FileNotFoundError, match=missing) as info:
        datasets.load(dataset, str(tmp_path))
    assert "nothing is downloaded" in str(info.value)


def test_missing_directory_and_missing_data_dir_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        datasets.load("mnist", None)


def test_train_cli_reports_missing_data_without_traceback(tmp_path, capsys):
    assert cli(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-progress",
                "--out", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
