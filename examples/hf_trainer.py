"""INNA (or INNAprop) in Hugging Face transformers' Trainer, on a tiny randomly initialised GPT-2
(no download).

    python examples/hf_trainer.py --output-dir /tmp/inna_hf --max-steps 20 --save-steps 10
    python examples/hf_trainer.py --output-dir /tmp/inna_hf --max-steps 20 --save-steps 10 \
        --resume-from-checkpoint /tmp/inna_hf/checkpoint-10
    python examples/hf_trainer.py --optimizer innaprop --output-dir /tmp/innaprop_hf

Trainer takes the optimizer class and its kwargs (`optimizer_cls_and_kwargs`) and builds it on
its own param groups (weight decay off for biases and LayerNorms, as with its own optimizers);
its LR scheduler drives INNA's `lr`. Checkpoints hold INNA's state (the phase and step of each
param) in optimizer.pt, so `resume_from_checkpoint` continues exactly where the run stopped.
Needs: pip install transformers accelerate (or pip install 'inna_fused[integrations]').
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally

import torch  # noqa: E402

from inna_fused import INNA, INNAprop  # noqa: E402

VOCAB, SEQ = 64, 16
INNA_KWARGS = dict(lr=0.05, alpha=0.5, beta=0.1, decaypower=0.0)
INNAPROP_KWARGS = dict(lr=1e-3, alpha=0.1, beta=0.9, sigma=0.999, eps=1e-8)  # the authors'
OPTIMIZERS = {"inna": (INNA, INNA_KWARGS), "innaprop": (INNAprop, INNAPROP_KWARGS)}


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def random_token_dataset(n=32, seed=1):
    """A list of {'input_ids', 'labels'} rows (a list is a valid map-style dataset)."""
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row} for row in ids]


def main(output_dir, max_steps=20, save_steps=10, resume_from_checkpoint=None, batch_size=4,
         weight_decay=0.01, log=True, optimizer="inna"):
    """Train (or resume) and return the Trainer; its `model` holds the trained weights."""
    from transformers import Trainer, TrainingArguments
    cls, kwargs = OPTIMIZERS[optimizer]  # Trainer adds the groups' weight_decay (decoupled)
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, save_steps=save_steps,
        per_device_train_batch_size=batch_size, weight_decay=weight_decay,
        lr_scheduler_type="linear", warmup_steps=0, seed=0, data_seed=0, use_cpu=True,
        report_to=[], logging_steps=1 if log else max_steps, disable_tqdm=not log,
        dataloader_num_workers=0)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=random_token_dataset(),
                      optimizer_cls_and_kwargs=(cls, dict(kwargs)))
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="inna_hf_trainer")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--resume-from-checkpoint", default=None)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="inna")
    a = parser.parse_args()
    trainer = main(a.output_dir, a.max_steps, a.save_steps, a.resume_from_checkpoint,
                   optimizer=a.optimizer)
    print("optimizer:", type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__)
