"""`python -m inna_fused toy`: the paper's non-smooth 2-D toy problem (Castera et al. 2021, Fig. 1).

    J(θ1, θ2) = 100 (θ2 − |θ1|)² + |1 − θ1|

has a V-shaped valley along θ2 = |θ1| and its minimum at (1, 1). From (−1, 1.5) with a constant
step γ = 1e-4 the paper runs INNA for about 88,000 steps with (α, β) ∈ {(0.5, 0.01), (0.5, 0.1),
(1.3, 0.1)}: β damps the oscillations across the valley, α those along it.

Each run is the `INNA` optimizer itself (fused kernel when built) on one 2-element float64
parameter. The three runs advance together, one param group each, so one `step()` serves all of
them; the subgradient is computed by hand on numpy views of the params (same values as autograd,
whose |x| has derivative 0 at 0) because on a 2-element problem torch op overhead would dominate.

ψ₀ defaults to the authors' code convention ψ₀ = (1 − αβ)θ₀ (initial velocity −β∇J(θ₀), a gentle
start, which gives the paper's pictures). The paper's deep-learning convention (Sec. 5.2.1) starts
with velocity −∇J(θ₀) ≈ (−99, −100) here: with β = 0.01 that kick is barely damped and carries the
iterate up the other arm of the valley (`--psi-init paper` shows it).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

START = (-1.0, 1.5)
MINIMUM = (1.0, 1.0)
PAPER_CONFIGS = ((0.5, 0.01), (0.5, 0.1), (1.3, 0.1))
PAPER_STEPS = 88_000
PAPER_LR = 1e-4


def objective(theta1, theta2):
    """J(θ1, θ2) = 100 (θ2 − |θ1|)² + |1 − θ1| (works on floats and numpy arrays)."""
    return 100.0 * (theta2 - np.abs(theta1)) ** 2 + np.abs(1.0 - theta1)


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def subgradient(theta1: float, theta2: float) -> tuple[float, float]:
    """An element of ∂J, with sign(0) = 0 as torch's autograd of abs() gives."""
    valley = 200.0 * (theta2 - abs(theta1))
    return -valley * _sign(theta1) - _sign(1.0 - theta1), valley


@dataclass
class ToyRun:
    alpha: float
    beta: float
    lr: float
    psi_init: str
    iterations: np.ndarray    # the step counts at which the trajectory was recorded
    trajectory: np.ndarray    # (len(iterations), 2): θ after that many steps
    objective: np.ndarray     # J along the trajectory

    @property
    def final(self) -> np.ndarray:
        return self.trajectory[-1]


def run_toy(configs=PAPER_CONFIGS, *, steps: int = PAPER_STEPS, lr: float = PAPER_LR,
            psi_init: str = "zero", record_every: int = 10, fused=None) -> list[ToyRun]:
    """Run INNA from START for each (α, β) in `configs`; return the recorded trajectories."""
    from inna_fused import INNA

    if steps < 0 or record_every < 1:
        raise ValueError(f"need steps >= 0 and record_every >= 1, got {steps} and {record_every}")
    params = [torch.tensor(START, dtype=torch.float64, requires_grad=True) for _ in configs]
    for p in params:
        p.grad = torch.zeros_like(p)
    groups = [{"params": [p], "alpha": a, "beta": b} for p, (a, b) in zip(params, configs)]
    optimizer = INNA(groups, lr=lr, psi_init=psi_init, fused=fused)
    # numpy views share memory with the params and grads: reading θ and writing the subgradient
    # costs nanoseconds instead of a torch op each.
    thetas = [p.detach().numpy() for p in params]
    grads = [p.grad.numpy() for p in params]
    recorded = list(range(0, steps + 1, record_every))
    if recorded[-1] != steps:
        recorded.append(steps)
    trajectories = np.empty((len(configs), len(recorded), 2))
    slot = 0
    for k in range(steps + 1):
        if k == recorded[slot]:
            for i, theta in enumerate(thetas):
                trajectories[i, slot] = theta
            slot += 1
            if k == steps:
                break
        for theta, grad in zip(thetas, grads):
            grad[:] = subgradient(*theta.tolist())
        optimizer.step()
    iterations = np.asarray(recorded)
    return [ToyRun(a, b, lr, psi_init, iterations, traj, objective(traj[:, 0], traj[:, 1]))
            for (a, b), traj in zip(configs, trajectories)]


def _log10(values):
    # J reaches exactly 0 only at the minimum; clip so the log stays finite.
    return np.log10(np.maximum(values, 1e-300))


def plot_trajectories(runs: list[ToyRun], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = np.concatenate([r.trajectory for r in runs] + [np.array([START, MINIMUM])])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    pad = 0.1 * (hi - lo).max()
    t1 = np.linspace(lo[0] - pad, hi[0] + pad, 400)
    t2 = np.linspace(lo[1] - pad, hi[1] + pad, 400)
    grid1, grid2 = np.meshgrid(t1, t2)
    levels = np.quantile(objective(grid1, grid2), np.linspace(0.01, 0.9, 18))
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4), sharey=True,
                             squeeze=False)
    for ax, run, letter in zip(axes[0], runs, "abcdefgh"):
        ax.contour(grid1, grid2, objective(grid1, grid2), levels=np.unique(levels),
                   colors="0.6", linewidths=0.6)
        ax.plot(run.trajectory[:, 0], run.trajectory[:, 1], color="C3", lw=0.9)
        ax.plot(*START, "ko", ms=4)
        ax.plot(*MINIMUM, "k*", ms=10)
        ax.set_title(f"({letter}) α = {run.alpha:g}, β = {run.beta:g}")
        ax.set_xlabel("θ1")
    axes[0][0].set_ylabel("θ2")
    fig.suptitle(f"INNA on J(θ) = 100(θ2 − |θ1|)² + |1 − θ1|, constant γ = {runs[0].lr:g}, "
                 f"{runs[0].iterations[-1]:,} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_objective(runs: list[ToyRun], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(run.iterations, _log10(run.objective), lw=1.0,
                label=f"α = {run.alpha:g}, β = {run.beta:g}")
    ax.set_xlabel("iteration k")
    ax.set_ylabel("log10 J(θ_k)")
    ax.set_title("(d) objective along the trajectories")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(runs: list[ToyRun]) -> str:
    lines = [f"{'alpha':>6} {'beta':>6} {'psi_init':>8} {'final theta1':>13} {'final theta2':>13} "
             f"{'dist to (1,1)':>13} {'final log10 J':>14}"]
    for r in runs:
        distance = math.dist(r.final, MINIMUM)
        lines.append(f"{r.alpha:>6g} {r.beta:>6g} {r.psi_init:>8} {r.final[0]:>13.6f} "
                     f"{r.final[1]:>13.6f} {distance:>13.2e} {_log10(r.objective[-1]):>14.3f}")
    return "\n".join(lines)


def _parse_configs(text: str):
    configs = []
    for item in text.split(","):
        try:
            alpha, beta = (float(x) for x in item.split(":"))
        except ValueError:
            raise ValueError(f"--configs: expected ALPHA:BETA pairs separated by commas, got "
                             f"{item!r}") from None
        configs.append((alpha, beta))
    return tuple(configs)


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=PAPER_STEPS, help="iterations (paper: 88000)")
    parser.add_argument("--lr", type=float, default=PAPER_LR, help="constant step γ (paper: 1e-4)")
    parser.add_argument("--psi-init", choices=("paper", "zero"), default="zero",
                        help="ψ₀ convention (default zero: start nearly at rest, as in Fig. 1)")
    parser.add_argument("--configs", default=",".join(f"{a:g}:{b:g}" for a, b in PAPER_CONFIGS),
                        help="ALPHA:BETA pairs, comma separated (default: the paper's three)")
    parser.add_argument("--record-every", type=int, default=10,
                        help="record θ every N steps for the plots")
    parser.add_argument("--out", default=".", help="directory for toy_trajectories.png and "
                        "toy_loss.png")


def run(args) -> int:
    configs = _parse_configs(args.configs)
    start, start_cpu = time.perf_counter(), time.process_time()
    runs = run_toy(configs, steps=args.steps, lr=args.lr, psi_init=args.psi_init,
                   record_every=args.record_every)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    os.makedirs(args.out, exist_ok=True)
    trajectories_png = os.path.join(args.out, "toy_trajectories.png")
    loss_png = os.path.join(args.out, "toy_loss.png")
    plot_trajectories(runs, trajectories_png)
    plot_objective(runs, loss_png)
    print(f"INNA on the toy problem from {START}, γ = {args.lr:g}, {args.steps} steps "
          f"({elapsed:.1f} s, {elapsed_cpu:.1f} s CPU)")
    print(format_table(runs))
    print(f"wrote {trajectories_png} and {loss_png}")
    return 0
