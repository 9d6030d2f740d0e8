"""`python -m inna_fused charlm`: the stdlib corpus, the tiny GPT, the optimizers on it, the CLI."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("matplotlib")

from inna_fused.__main__ import main as cli  # noqa: E402
from inna_fused.experiments import charlm  # noqa: E402

SMALL = 300_000  # bytes: a dozen-odd files, enough for ten-file validation split


@pytest.fixture(autouse=True)
def restore_threads():
    """`charlm.run` sets one thread; put the count back for the other test files."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _args(*argv):
    parser = argparse.ArgumentParser()
    charlm.add_arguments(parser)
    args = parser.parse_args(["--quick", *argv])
    charlm._fill_defaults(args)
    return args


# -------------------------------------------------------------------------------------- corpus

def test_corpus_is_deterministic_and_split_by_file():
    a, b = charlm.load_corpus(SMALL), charlm.load_corpus(SMALL)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.describe()["sha256"] == b.describe()["sha256"]
    chosen = charlm.stdlib_files()[:len(a.train_files) + len(a.val_files)]
    assert chosen == sorted(a.train_files + a.val_files)
    assert not set(a.train_files) & set(a.val_files)
    assert a.val_files == chosen[9::10]  # every tenth file is held out
    directory = charlm.stdlib_dir()

    def read(names):
        return b"".join(open(os.path.join(directory, n), "rb").read() for n in names)

    assert bytes(a.train.numpy()) == read(a.train_files)
    assert bytes(a.val.numpy()) == read(a.val_files)
    assert a.train.numel() + a.val.numel() <= SMALL
    # Only top-level modules: no test/ or site-packages/ files.
    assert all("/" not in n and n.endswith(".py") for n in chosen)


def test_corpus_rejects_too_few_files():
    with pytest.raises(ValueError, match="files fit"):
        charlm.load_corpus(1)


def test_batches_repeat_per_seed_and_targets_are_the_next_byte():
    stream = torch.arange(200, dtype=torch.uint8)
    first = charlm.batch_offsets(len(stream), 16, 5, 4, seed=3)
    assert torch.equal(first, charlm.batch_offsets(len(stream), 16, 5, 4, seed=3))
    assert not torch.equal(first, charlm.batch_offsets(len(stream), 16, 5, 4, seed=4))
    x, y = charlm.windows(stream, first[0], 16)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert int(first.max()) + 17 <= len(stream)


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [charlm.lr_factor(k, 100, 10, 0.1) for k in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert charlm.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


# --------------------------------------------------------------------------------------- model

def test_model_shapes_causality_and_param_groups():
    torch.manual_seed(0)
    model = charlm.TinyGPT(context=16, d_model=32, n_layers=2, n_heads=4)
    idx = torch.randint(0, 256, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 256)
    assert model(idx[:, :5]).shape == (3, 5, 256)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    # Causal: positions before the change see the same logits.
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    decay, no_decay = charlm.param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == charlm.count_parameters(model)


def test_same_seed_same_initialisation():
    args = _args()
    a, b = charlm.build_model(args, 5), charlm.build_model(args, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = charlm.build_model(args, 6)
    assert not torch.equal(a.tok.weight, c.tok.weight)


# ---------------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("state_dtype", ["default", "bfloat16"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", charlm.OPTIMIZERS)
def test_each_optimizer_fits_a_repeated_batch(name, dtype, state_dtype):
    if state_dtype != "default" and name == "adamw":
        pytest.skip("--state-dtype applies to INNA and INNAprop")
    args = _args("--dtype", dtype, "--state-dtype", state_dtype)
    model = charlm.build_model(args, 0)
    # Constant lrs a notch above the defaults (tuned for 400 scheduled steps): 30 steps here.
    lr = {"innaprop": 1e-2, "adamw": 1e-2, "inna": 0.1}[name]
    optimizer = charlm.make_optimizer(name, model, lr, args)
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (4, 17), generator=generator)
    x, y = idx[:, :-1], idx[:, 1:]

    def loss_now():
        return F.cross_entropy(model(x).float().reshape(-1, 256), y.reshape(-1))

    first = loss_now().item()
    assert first == pytest.approx(math.log(256), abs=0.1)  # GPT-2 init: near uniform
    for _ in range(30):
        loss = loss_now()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    last = loss_now().item()
    # 64 random bytes: memorising them takes the loss well below ln 256 ≈ 5.55 nats.
    assert last < first - 1.0, (name, dtype, first, last)
    assert all(p.dtype == charlm.DTYPES[dtype] for p in model.parameters())
    if state_dtype == "bfloat16":
        assert all(t.dtype == torch.bfloat16 for st in optimizer.state.values()
                   for key, t in st.items() if key != "step")


# ----------------------------------------------------------------------------------------- CLI

def test_cli_writes_json_and_png(tmp_path, capsys):
    assert cli(["charlm", "--quick", "--steps", "8", "--seeds", "2", "--eval-every", "4",
                "--val-windows", "8", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "INNAprop" in out and "AdamW" in out and "INNA " in out
    assert (tmp_path / "charlm.png").stat().st_size > 10_000
    result = json.loads((tmp_path / "charlm.json").read_text())
    assert result["corpus"]["python_version"] == sys.version.split()[0]
    assert [row["optimizer"] for row in result["summary"]] == list(charlm.OPTIMIZERS)
    runs = result["runs"]
    assert len(runs) == 6
    for run in runs:
        assert run["val_steps"] == [0, 4, 8] and len(run["train_loss"]) == 8
        assert all(math.isfinite(v) for v in run["val_loss"])
    # Same initialisation per seed: every optimizer starts at the same validation loss.
    for seed in (0, 1):
        starts = {r["val_loss"][0] for r in runs if r["seed"] == seed}
        assert len(starts) == 1


def test_cli_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="--optimizers"):
        cli(["charlm", "--quick", "--optimizers", "adamw,sgd"])


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "inna_fused", "charlm", "--help"],
                            capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert "--steps" in result.stdout and "--dtype" in result.stdout
