"""Training quality in low precision: INNA with bfloat16 params against float32, and against torch's
optimizers in bfloat16. Three small real problems (the ones that showed INNA freezing in bf16):

  1. least squares: A = randn(512, 256)/16, y = A·x* + 0.01·noise, θ₀ = 1, minibatches of 64 rows,
     INNA(lr=0.1, alpha=0.5, beta=0.1, psi_init="zero"), 3000 steps;
  2. the package's small CNN on scikit-learn's digits, whole model cast, batch 32, 15 epochs, lr 0.1;
  3. a 64-128-10 MLP on the digits (flattened, /16), lr 0.3, 30 epochs, batch 32.

Variants of INNA: float32; bfloat16 params with the literal eq. (12) in ψ (what 0.1 computed);
bfloat16 params rounded to nearest (`stochastic_rounding=False`);
bfloat16 with the defaults (stochastic rounding); bfloat16 + `state_dtype=torch.bfloat16`; and a
Kahan-compensated bfloat16 variant (torch-optimi's approach: a bfloat16 buffer keeps what the
rounding of θ lost), written here in plain torch to measure it, not shipped. torch's SGD(momentum
0.9) and AdamW run in float32 and bfloat16 on problems 2 and 3 for comparison.

Also on problem 1: the float32 trajectory's distance from the float64 one, for the phase form
the kernels compute and for the literal eq. (12) in ψ (`inna_fused.reference`).

    python bench/lowprec_quality.py [--quick] [--json out.json] [--plot docs/lowprec_digits.png]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from inna_fused import INNA
from inna_fused.reference import inna_reference_

INNA_VARIANTS = {
    # name: (param dtype, INNA keyword arguments or "kahan")
    "fp32": (torch.float32, {}),
    "bf16 nearest": (torch.bfloat16, {"stochastic_rounding": False}),
    "bf16 default": (torch.bfloat16, {}),
    "bf16 + bf16 state": (torch.bfloat16, {"state_dtype": torch.bfloat16}),
    "bf16 Kahan": (torch.bfloat16, "kahan"),
    "bf16 eq. (12) in ψ": (torch.bfloat16, "psi"),
}


class LiteralINNA(torch.optim.Optimizer):
    """The literal eq. (12) in ψ (`inna_fused.reference`, float32 ψ and arithmetic, θ rounded to
    nearest): what inna_fused 0.1 computed, kept here to show what the phase form changed."""

    def __init__(self, params, lr=0.1, alpha=0.5, beta=0.1):
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["psi"] = torch.empty_like(p, dtype=torch.float32)
                    state["step"] = 0
                inna_reference_(p, state["psi"], p.grad, state["step"], lr=group["lr"],
                                alpha=group["alpha"], beta=group["beta"], psi_init="zero")
                state["step"] += 1


class KahanINNA(torch.optim.Optimizer):
    """INNA in the phase form (float32 phase) on 16-bit params, with Kahan compensation of θ's
    rounding in a 16-bit buffer: θ is read as param + compensation, and the compensation keeps
    what writing the new θ to the param lost. Constant lr, no weight decay, psi_init="zero"."""

    def __init__(self, params, lr=0.1, alpha=0.5, beta=0.1):
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, alpha, beta = group["lr"], group["alpha"], group["beta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["phase"] = torch.zeros_like(p, dtype=torch.float32)
                    state["compensation"] = torch.zeros_like(p)
                phase, comp = state["phase"], state["compensation"]
                theta = p.float() + comp.float()
                v = p.grad.float()
                new_theta = theta - lr * (phase + beta * v)
                phase.mul_(1 - alpha * lr).add_(v, alpha=(1 - alpha * beta) * lr)
                p.copy_(new_theta)
                comp.copy_(new_theta - p.float())


def make_inna(params, dtype_kwargs, **hyper):
    if dtype_kwargs == "kahan":
        return KahanINNA(params, lr=hyper["lr"], alpha=hyper["alpha"], beta=hyper["beta"])
    if dtype_kwargs == "psi":
        return LiteralINNA(params, lr=hyper["lr"], alpha=hyper["alpha"], beta=hyper["beta"])
    return INNA(params, psi_init="zero", **hyper, **dtype_kwargs)


# ---- Problem 1: least squares -------------------------------------------------------------------

def least_squares_data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 256, generator=g, dtype=torch.float64) / 16
    x_star = torch.randn(256, generator=g, dtype=torch.float64)
    y = a @ x_star + 0.01 * torch.randn(512, generator=g, dtype=torch.float64)
    batches = torch.randint(0, 8, (3000,), generator=g)  # which 64-row block each step sees
    return a, y, batches


def least_squares_loss(theta, a, y) -> float:
    return float(((a @ theta.double() - y) ** 2).mean())


def least_squares_run(dtype, kwargs, steps, data, lr=0.1):
    """Final full-batch loss of INNA on problem 1 and the trajectory (θ after every step)."""
    a, y, batches = data
    theta = torch.ones(256, dtype=dtype, requires_grad=True)
    opt = make_inna([theta], kwargs, lr=lr, alpha=0.5, beta=0.1)
    a_d, y_d = a.to(dtype), y.to(dtype)
    trajectory = []
    for k in range(steps):
        rows = slice(64 * int(batches[k]), 64 * int(batches[k]) + 64)
        opt.zero_grad()
        loss = ((a_d[rows] @ theta - y_d[rows]) ** 2).mean()
        loss.backward()
        opt.step()
        trajectory.append(theta.detach().double().clone())
    return least_squares_loss(theta.detach(), a, y), torch.stack(trajectory)


def literal_eq12_trajectory(dtype, steps, data, lr=0.1, alpha=0.5, beta=0.1):
    """The same run with the literal eq. (12) in ψ (the package's oracle) in `dtype`."""
    a, y, batches = data
    theta = torch.ones(256, dtype=dtype)
    psi = torch.empty(256, dtype=dtype)
    a_d, y_d = a.to(dtype), y.to(dtype)
    trajectory = []
    for k in range(steps):
        rows = slice(64 * int(batches[k]), 64 * int(batches[k]) + 64)
        residual = a_d[rows] @ theta - y_d[rows]
        grad = 2 * a_d[rows].T @ residual / 64
        inna_reference_(theta, psi, grad, k, lr=lr, alpha=alpha, beta=beta, psi_init="zero")
        trajectory.append(theta.double().clone())
    return torch.stack(trajectory)


def problem1(steps):
    data = least_squares_data()
    rows = []
    for name, (dtype, kwargs) in INNA_VARIANTS.items():
        loss, _ = least_squares_run(dtype, kwargs, steps, data)
        rows.append({"problem": 1, "variant": f"INNA {name}", "loss": loss})
    loss, _ = least_squares_run(torch.float16, {}, steps, data)
    rows.append({"problem": 1, "variant": "INNA fp16 default", "loss": loss})
    loss, _ = least_squares_run(torch.float16, {"stochastic_rounding": False}, steps, data)
    rows.append({"problem": 1, "variant": "INNA fp16 nearest", "loss": loss})
    # float32 drift from the float64 trajectory: phase form vs the literal eq. (12).
    _, phase64 = least_squares_run(torch.float64, {}, steps, data)
    _, phase32 = least_squares_run(torch.float32, {}, steps, data)
    literal64 = literal_eq12_trajectory(torch.float64, steps, data)
    literal32 = literal_eq12_trajectory(torch.float32, steps, data)
    drift = {
        "phase form (this package)": float((phase32 - phase64).norm(dim=1).max()),
        "literal eq. (12) in ψ": float((literal32 - literal64).norm(dim=1).max()),
        "float64 phase form vs float64 literal": float((phase64 - literal64).norm(dim=1).max()),
    }
    return rows, drift


# ---- Problems 2 and 3: the digits -------------------------------------------------------------

def digits():
    """The package's digits split (standardised 1×8×8 images) for the CNN of problem 2."""
    from inna_fused.experiments import data as datasets
    return datasets.load_digits()


def raw_digits():
    """The same split (the loader's stratified 80/20, seed 0) with raw pixels / 16, in [0, 1],
    for the MLP of problem 3."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    from inna_fused.experiments.data import ImageData
    d = sklearn_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        d.images.reshape(-1, 1, 8, 8) / 16, d.target, test_size=0.2, random_state=0,
        stratify=d.target)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return ImageData("digits/16", as_x(train_x), as_y(train_y), as_x(test_x), as_y(test_y), 10)


def mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 10))


def cnn():
    from inna_fused.experiments.models import small_cnn
    return small_cnn(1, 10)


BASELINES = ("SGD-m", "AdamW")


def make_baseline(name, params, lr):
    if name == "SGD-m":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"unknown baseline {name!r}")


def train_digits(build, optimizer, dtype, lr, epochs, data, seed, scale_inputs=1.0):
    """Train on the digits; returns per-epoch (train loss, test acc) curves (index 0: before)."""
    torch.manual_seed(seed)
    model = build().to(dtype)
    if optimizer in BASELINES:
        opt = make_baseline(optimizer, model.parameters(), lr)
    else:
        opt = make_inna(model.parameters(), optimizer, lr=lr, alpha=0.5, beta=0.1)
    train_x = data.train_x.to(dtype) * scale_inputs
    test_x = data.test_x.to(dtype) * scale_inputs
    order = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def measure():
        train_loss = F.cross_entropy(model(train_x).float(), data.train_y).item()
        acc = (model(test_x).argmax(1) == data.test_y).float().mean().item()
        return train_loss, acc

    curve = [measure()]
    n = len(train_x)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for b in range(0, n, 32):
            idx = perm[b:b + 32]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(train_x[idx]).float(), data.train_y[idx]).backward()
            opt.step()
        curve.append(measure())
    return curve


def problem_digits(problem, seeds, epochs_scale, data):
    if problem == 2:
        build, epochs, lr, scale = cnn, 15, 0.1, 1.0
        baselines = {"SGD-m": 0.05, "AdamW": 1e-3}
    else:
        build, epochs, lr, scale = mlp, 30, 0.3, 1.0
        baselines = {"SGD-m": 0.03, "AdamW": 1e-3}
    epochs = max(1, round(epochs * epochs_scale))
    rows, curves = [], {}
    runs = [(f"INNA {name}", dtype, kwargs, lr) for name, (dtype, kwargs) in INNA_VARIANTS.items()]
    for name, base_lr in baselines.items():
        runs += [(f"torch {name} fp32", torch.float32, name, base_lr),
                 (f"torch {name} bf16", torch.bfloat16, name, base_lr)]
    for variant, dtype, optimizer, run_lr in runs:
        per_seed = [train_digits(build, optimizer, dtype, run_lr, epochs, data, seed, scale)
                    for seed in range(seeds)]
        losses = [c[-1][0] for c in per_seed]
        accs = [c[-1][1] for c in per_seed]
        rows.append({"problem": problem, "variant": variant, "lr": run_lr,
                     "loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs)})
        curves[variant] = [[c[e][0] for c in per_seed] for e in range(epochs + 1)]
    return rows, curves


def ratio_rows(rows):
    """Each row's final loss divided by the float32 loss of the same optimizer and problem."""
    reference = {}
    for r in rows:
        family = r["variant"].split(" fp32")[0].split(" bf16")[0].split(" fp16")[0]
        if r["variant"].endswith("fp32"):
            reference[(r["problem"], family)] = r
    for r in rows:
        family = r["variant"].split(" fp32")[0].split(" bf16")[0].split(" fp16")[0]
        ref = reference.get((r["problem"], family))
        if ref is not None:
            r["loss_ratio"] = r["loss"] / ref["loss"]
            if "acc" in r:
                r["acc_delta_points"] = 100 * (r["acc"] - ref["acc"])
    return rows


def format_rows(rows) -> str:
    lines = [f"{'problem':<8}{'variant':<24}{'final loss':>12}{'× fp32':>9}{'test acc':>10}"
             f"{'Δ pts':>8}"]
    for r in rows:
        acc = f"{r['acc']:.4f}" if "acc" in r else ""
        delta = f"{r['acc_delta_points']:+.2f}" if "acc_delta_points" in r else ""
        ratio = f"{r['loss_ratio']:.2f}" if "loss_ratio" in r else ""
        lines.append(f"{r['problem']:<8}{r['variant']:<24}{r['loss']:>12.4e}{ratio:>9}{acc:>10}"
                     f"{delta:>8}")
    return "\n".join(lines)


def plot(curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    shown = ["INNA fp32", "INNA bf16 eq. (12) in ψ", "INNA bf16 nearest", "INNA bf16 default",
             "INNA bf16 + bf16 state"]
    styles = {"INNA fp32": "k-", "INNA bf16 eq. (12) in ψ": "C1-.", "INNA bf16 nearest": "C3--",
              "INNA bf16 default": "C0-", "INNA bf16 + bf16 state": "C2:"}
    for name in shown:
        per_epoch = curves[name]
        mean = [sum(v) / len(v) for v in per_epoch]
        label = {"INNA bf16 eq. (12) in ψ": "bf16, literal eq. (12) in ψ (inna_fused 0.1)",
                 "INNA bf16 nearest": "INNA bf16, phase form, round to nearest",
                 "INNA bf16 default": "INNA bf16, defaults (stochastic rounding)",
                 "INNA bf16 + bf16 state": "INNA bf16, state_dtype=bfloat16",
                 "INNA fp32": "INNA float32"}[name]
        ax.semilogy(range(len(mean)), mean, styles[name], label=label, lw=1.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title("small CNN on the digits, whole model in bfloat16 vs float32")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100 least-squares steps, 1 epoch, 1 seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--problems", default="1,2,3")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="PNG of problem 2's training curves")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny batches: threads only add overhead
    problems = {int(p) for p in args.problems.split(",")}
    steps = 100 if args.quick else 3000
    epochs_scale = 0.04 if args.quick else 1.0
    seeds = 1 if args.quick else args.seeds
    start = time.perf_counter()
    rows, drift, curves = [], None, {}
    if 1 in problems:
        p1, drift = problem1(steps)
        rows += p1
    for problem in sorted(problems & {2, 3}):
        data = digits() if problem == 2 else raw_digits()
        more, c = problem_digits(problem, seeds, epochs_scale, data)
        rows += more
        if problem == 2:
            curves = c
    ratio_rows(rows)
    print(format_rows(rows))
    if drift:
        print(f"\nproblem 1, {steps} steps: max over steps of ‖θ_fp32 − θ_fp64‖")
        for name, value in drift.items():
            print(f"  {name:<40} {value:.3e}")
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "drift": drift, "steps": steps, "seeds": seeds,
                       "curves_problem2": curves}, f, indent=1)
    if args.plot and curves:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
