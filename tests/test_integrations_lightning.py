"""INNA in Lightning: returned by configure_optimizers, and chosen on the LightningCLI command line
with --optimizer=inna_fused.INNA --optimizer.lr=..., as the README shows ("Using INNA with timm,
HF Trainer, Lightning and DCP"), INNAprop likewise. Both must train exactly like a plain loop with
the same optimizer."""
import sys

import pytest
import torch

from inna_fused import INNA, INNAprop

HYPER = dict(lr=0.05, alpha=0.5, beta=0.1)
PROP_HYPER = dict(lr=0.01, alpha=0.1, beta=0.9, sigma=0.99)
OPTIMIZERS = {"INNA": (INNA, HYPER), "INNAprop": (INNAprop, PROP_HYPER)}
STEPS = 4
# Lightning's and jsonargparse's own deprecation notices, not about INNA.
pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
              pytest.mark.filterwarnings(
                  "ignore:(?s).*(deprecated in v4|JSONARGPARSE_DEPRECATION_WARNINGS)")]
TRAINER_FLAGS = dict(accelerator="cpu", devices=1, max_steps=STEPS, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)


@pytest.fixture(scope="module")
def L():
    return pytest.importorskip("lightning", reason="lightning is not installed "
                               "(pip install 'inna_fused[integrations]')")


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def net():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def plain_loop(cls=INNA, hyper=HYPER):
    model = net()
    opt = cls(model.parameters(), **hyper)
    x, y = data()
    for i in range(STEPS):
        xb, yb = x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    return model


def module_classes(L):
    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()),
                                               batch_size=8, shuffle=False)

    class WithINNA(Regression):
        def configure_optimizers(self):
            return INNA(self.parameters(), **HYPER)

    return Regression, WithINNA


def assert_same_params(got, want):
    for a, b in zip(got.parameters(), want.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_configure_optimizers(L):
    _, WithINNA = module_classes(L)
    model = WithINNA()
    trainer = L.Trainer(**TRAINER_FLAGS)
    trainer.fit(model)
    assert type(trainer.optimizers[0]) is INNA
    assert_same_params(model.net, plain_loop())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_lightning_cli_optimizer_flag(L, monkeypatch, name):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own flags are not the CLI's
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")
    cli_module = pytest.importorskip("lightning.pytorch.cli")
    Regression, _ = module_classes(L)
    cls, hyper = OPTIMIZERS[name]
    args = ["fit", f"--optimizer=inna_fused.{name}"]
    args += [f"--optimizer.{k}={v}" for k, v in hyper.items()]
    args += ["--optimizer.state_dtype=torch.float32"]  # a torch.dtype parses from the command line
    args += [f"--trainer.{k}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in TRAINER_FLAGS.items()]
    cli = cli_module.LightningCLI(Regression, args=args, save_config_callback=None,
                                  seed_everything_default=False)
    opt = cli.trainer.optimizers[0]
    assert type(opt) is cls
    assert all(opt.param_groups[0][k] == v for k, v in hyper.items())
    assert opt.param_groups[0]["state_dtype"] is torch.float32  # as None gives float32 params
    assert_same_params(cli.model.net, plain_loop(cls, hyper))
