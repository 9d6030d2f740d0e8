"""INNA with automatic mixed precision: autocast + torch.amp.GradScaler.

INNA sets `_step_supports_amp_scaling`, so GradScaler hands it `grad_scale` and `found_inf`:
the step divides the gradients by the scale and skips itself when a gradient is inf/nan, inside
the kernel (no separate unscale pass, no host synchronisation on CUDA). ψ stays in float32.

    python examples/amp_training.py [--device cpu|cuda] [--dtype float16|bfloat16] [--steps 40]
"""
import argparse

import torch

from inna_fused import INNA


def main(device: str = "cpu", dtype: str = "float16", steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    amp_dtype = getattr(torch, dtype)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 1)).to(device)
    x = torch.randn(512, 16, device=device)
    y = x[:, :4].sum(dim=1, keepdim=True)

    opt = INNA(model.parameters(), lr=0.05, alpha=0.5, beta=0.1)
    # float16 needs loss scaling (its range is small); bfloat16 does not, the scaler is then off.
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)

    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast(device, dtype=amp_dtype):
            loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        # Gradient clipping needs true gradients: unscale first (the step then skips unscaling).
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    print(f"AMP ({dtype} on {device}): loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps, "
          f"final loss scale {scaler.get_scale() if scaler.is_enabled() else 'off'}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    main(args.device, args.dtype, args.steps)
