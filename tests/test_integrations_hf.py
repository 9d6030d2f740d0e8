"""INNA and INNAprop in Hugging Face transformers' Trainer (examples/hf_trainer.py): a tiny
randomly initialised GPT-2 built from a config (no hub access), `optimizer_cls_and_kwargs=(INNA,
...)`; resuming from a saved checkpoint reaches the same params, bit for bit, as a straight
run."""
import importlib.util
import os
import pathlib
import shutil

import pytest
import torch

from inna_fused import INNA, INNAprop

# optimizer name: (class, its hyper-parameters as the example sets them, its state keys)
OPTIMIZERS = {"inna": (INNA, dict(alpha=0.5, beta=0.1), {"step", "phase"}),
              "innaprop": (INNAprop, dict(alpha=0.1, beta=0.9, sigma=0.999),
                           {"step", "phase", "exp_avg_sq"})}

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
MAX_STEPS, SAVE_STEPS = 4, 2


@pytest.fixture(scope="module")
def hf_trainer():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # no network at test time
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        for name in ("transformers", "accelerate"):
            pytest.importorskip(name, reason=f"{name} is not installed "
                                "(pip install 'inna_fused[integrations]')")
        spec = importlib.util.spec_from_file_location("example_hf_trainer",
                                                      EXAMPLES / "hf_trainer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def optimizer(request):
    return request.param


@pytest.fixture(scope="module")
def straight(hf_trainer, optimizer, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"hf_straight_{optimizer}")
    trainer = hf_trainer.main(str(out), max_steps=MAX_STEPS, save_steps=SAVE_STEPS, log=False,
                              optimizer=optimizer)
    return trainer, out


def unwrap(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it


def test_trainer_uses_the_optimizer_with_its_param_groups(straight, optimizer):
    trainer, out = straight
    cls, hyper, state_keys = OPTIMIZERS[optimizer]
    opt = unwrap(trainer.optimizer)
    assert type(opt) is cls
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01}
    assert all(g[k] == v for g in opt.param_groups for k, v in hyper.items())
    p = next(trainer.model.parameters())
    assert set(opt.state[p]) == state_keys and float(opt.state[p]["step"]) == MAX_STEPS
    assert (out / f"checkpoint-{SAVE_STEPS}" / "optimizer.pt").is_file()


def test_resume_from_checkpoint_matches_straight_run(straight, hf_trainer, optimizer, tmp_path):
    trainer, out = straight
    resumed = hf_trainer.main(str(tmp_path / "resumed"), max_steps=MAX_STEPS,
                              save_steps=SAVE_STEPS, log=False, optimizer=optimizer,
                              resume_from_checkpoint=str(out / f"checkpoint-{SAVE_STEPS}"))
    want = dict(trainer.model.named_parameters())
    for name, got in resumed.model.named_parameters():
        assert torch.equal(got, want[name]), f"{name} differs after resuming"
    opt, p = unwrap(resumed.optimizer), next(resumed.model.parameters())
    assert float(opt.state[p]["step"]) == MAX_STEPS


def test_resume_without_optimizer_state_differs(straight, hf_trainer, optimizer, tmp_path):
    # The control: the match above is due to the restored optimizer state, not to the model
    # weights alone.
    trainer, out = straight
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out / f"checkpoint-{SAVE_STEPS}", ckpt)
    os.remove(ckpt / "optimizer.pt")
    resumed = hf_trainer.main(str(tmp_path / "resumed"), max_steps=MAX_STEPS,
                              save_steps=MAX_STEPS, log=False, optimizer=optimizer,
                              resume_from_checkpoint=str(ckpt))
    want = dict(trainer.model.named_parameters())
    assert any(not torch.equal(got, want[name])
               for name, got in resumed.model.named_parameters())
