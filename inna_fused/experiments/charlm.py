"""`python -m inna_fused charlm`: INNAprop vs AdamW vs INNA on a tiny character-level GPT.

Nothing is downloaded: the corpus is the Python standard library's own source, the `*.py` files
directly under `sysconfig.get_paths()["stdlib"]` (not its subpackages, so neither `test/` nor
`site-packages/`), taken in sorted order until `--max-bytes`. The vocabulary is the 256 byte
values. Every tenth file (the 10th, 20th, ... of that sorted list) is held out for validation,
so validation text comes from files the model never trains on. The corpus depends on the Python
version, which is recorded in the results with the corpus's size and SHA-256.

The model is a small GPT: token and position embeddings, pre-LN blocks of causal self-attention
(`scaled_dot_product_attention`) and a GELU MLP, a final LayerNorm and a separate (untied) output
layer; GPT-2's initialisation. Matrices (dim ≥ 2) get weight decay, biases and
LayerNorm weights do not (the usual two param groups).

For each seed every optimizer starts from the same initialisation and sees the same batches
(random windows of the training text); all use the same schedule, a linear warmup then a cosine
decay to `--min-lr-ratio` of the peak lr (a torch LambdaLR stepped per batch). The validation loss
is measured every `--eval-every` steps on a fixed set of held-out windows and reported in bits
per byte (cross-entropy in nats / ln 2; Python source is nearly all ASCII, so ≈ bits per char).

`--dtype bfloat16` casts the whole model to bfloat16 (no float32 master copy). INNA and INNAprop
then store their params with stochastic rounding (their default; their phase stays float32);
AdamW runs as torch does it, with bfloat16 params and bfloat16 moments and round-to-nearest.

`--grid` trains seed 0 only, `--grid-steps` steps, for every entry of `GRID` (of the optimizers in
`--optimizers`) in the first `--dtype` and draws nothing:
it prints and saves the final validation loss per setting (how DEFAULT_LRS were chosen, see
docs/CHARLM.md).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OPTIMIZERS = ("innaprop", "adamw", "inna")
DISPLAY_NAMES = {"innaprop": "INNAprop", "adamw": "AdamW", "inna": "INNA"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VOCAB = 256
# Peak learning rates for the default setting, chosen by `--grid` (seed 0, half-length runs,
# lowest final validation loss); the grid and its outcome are in docs/CHARLM.md.
DEFAULT_LRS = {"innaprop": 1e-3, "adamw": 1e-3, "inna": 0.1}
# INNAprop's (α, β): the authors' defaults (0.1, 0.9) beat their GPT-2 setting (2, 2) in the grid
# (3.67 against 3.73 bits/byte at the best lr of each; one seed, so a small margin).
DEFAULT_INNAPROP = {"alpha": 0.1, "beta": 0.9}
DEFAULT_INNA = {"alpha": 0.5, "beta": 0.1}
# The learning-rate grid of `--grid`: (optimizer, lr, extra hyper-parameters).
GRID = (
    [("adamw", lr, {}) for lr in (3e-4, 1e-3, 3e-3, 1e-2)]
    + [("innaprop", lr, {"alpha": 0.1, "beta": 0.9}) for lr in (3e-4, 1e-3, 3e-3, 1e-2)]
    + [("innaprop", lr, {"alpha": 2.0, "beta": 2.0}) for lr in (3e-4, 1e-3, 3e-3)]
    + [("inna", lr, {}) for lr in (0.03, 0.1, 0.3, 1.0)]
)


# ------------------------------------------------------------------------------------- corpus

def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(directory: str | None = None) -> list[str]:
    """The sorted names of the `*.py` files directly under `directory` (default: the stdlib)."""
    directory = stdlib_dir() if directory is None else directory
    return sorted(name for name in os.listdir(directory)
                  if name.endswith(".py") and os.path.isfile(os.path.join(directory, name)))


@dataclass
class Corpus:
    train: torch.Tensor               # uint8, the training files concatenated
    val: torch.Tensor                 # uint8, the validation files concatenated
    train_files: list[str]
    val_files: list[str]
    directory: str
    python_version: str = field(default_factory=lambda: sys.version.split()[0])

    def describe(self) -> dict:
        digest = hashlib.sha256(self.train.numpy().tobytes() + self.val.numpy().tobytes())
        return {"directory": self.directory, "python_version": self.python_version,
                "train_files": len(self.train_files), "val_files": len(self.val_files),
                "train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel()),
                "first_file": (self.train_files + self.val_files)[0],
                "last_file": max(self.train_files + self.val_files),
                "val_file_names": self.val_files, "sha256": digest.hexdigest()}


def load_corpus(max_bytes: int = 3_000_000, val_every: int = 10,
                directory: str | None = None) -> Corpus:
    """The first files of `stdlib_files` whose total stays within `max_bytes` (at least one);
    file i (0-based) of those goes to validation when (i + 1) % val_every == 0."""
    directory = stdlib_dir() if directory is None else directory
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2, got {val_every}")
    chosen, total = [], 0
    for name in stdlib_files(directory):
        with open(os.path.join(directory, name), "rb") as f:
            text = f.read()
        if chosen and total + len(text) > max_bytes:
            break
        chosen.append((name, text))
        total += len(text)
    if len(chosen) < val_every:
        raise ValueError(f"only {len(chosen)} files fit in {max_bytes} bytes; need >= {val_every}")
    train = [(n, t) for i, (n, t) in enumerate(chosen) if (i + 1) % val_every]
    val = [(n, t) for i, (n, t) in enumerate(chosen) if (i + 1) % val_every == 0]

    def stream(parts):
        joined = b"".join(t for _, t in parts)
        return torch.frombuffer(bytearray(joined), dtype=torch.uint8)

    return Corpus(stream(train), stream(val), [n for n, _ in train], [n for n, _ in val],
                  directory)


def batch_offsets(length: int, context: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """steps × batch_size random window starts in a stream of `length` bytes (one generator per
    seed, so every optimizer sees the same batches)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, length - context - 1, (steps, batch_size), generator=generator)


def windows(stream: torch.Tensor, starts: torch.Tensor, context: int):
    """Inputs and next-byte targets (int64, len(starts) × context) for the given window starts."""
    index = starts[:, None] + torch.arange(context + 1)
    chunk = stream[index].long()
    return chunk[:, :-1], chunk[:, 1:]


def val_starts(length: int, context: int, count: int) -> torch.Tensor:
    """`count` window starts spread evenly over the validation stream (fixed for every run)."""
    return torch.linspace(0, length - context - 1, count).long()


# -------------------------------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A GPT over bytes; `forward(idx)` maps B × T byte ids to B × T × 256 logits."""

    def __init__(self, context: int = 128, d_model: int = 128, n_layers: int = 2,
                 n_heads: int = 4, vocab: int = VOCAB):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        # Untied: in a 200-step AdamW trial (seed 0, lr 3e-3) the tied model ended at 3.77
        # bits/byte on validation, this one at 3.38.
        self.head = nn.Linear(d_model, vocab, bias=False)
        # GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/√(2·layers).
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for module in (block.proj, block.out):
                nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} longer than the context {self.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (dim ≥ 2: linear weights, embeddings) decay; biases and LayerNorm weights don't."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -------------------------------------------------------------------------------------- train

def make_optimizer(name: str, model: nn.Module, lr: float, args, extra: dict | None = None):
    from inna_fused import INNA, INNAprop

    extra = extra or {}
    state_dtype = None if args.state_dtype == "default" else getattr(torch, args.state_dtype)
    if name == "innaprop":
        return INNAprop(param_groups(model, args.weight_decay), lr=lr,
                        alpha=extra.get("alpha", args.innaprop_alpha),
                        beta=extra.get("beta", args.innaprop_beta), stochastic_rounding=True,
                        state_dtype=state_dtype)
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, args.weight_decay), lr=lr, fused=True)
    if name == "inna":
        return INNA(param_groups(model, args.inna_weight_decay), lr=lr,
                    alpha=extra.get("alpha", args.inna_alpha),
                    beta=extra.get("beta", args.inna_beta), decoupled_weight_decay=True,
                    stochastic_rounding=True, state_dtype=state_dtype)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps (never 0), then cosine from 1 down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, chunk: int = 32) -> float:
    """Mean cross-entropy in bits per byte over the given windows (loss in float32)."""
    model.eval()
    total = 0.0
    for start in range(0, len(xs), chunk):
        logits = model(xs[start:start + chunk]).float()
        total += F.cross_entropy(logits.reshape(-1, VOCAB), ys[start:start + chunk].reshape(-1),
                                 reduction="sum").item()
    model.train()
    return total / ys.numel() / math.log(2)


def build_model(args, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # same initialisation for every optimizer
    return TinyGPT(args.context, args.d_model, args.layers, args.heads).to(DTYPES[args.dtype])


def train_run(name: str, lr: float, seed: int, corpus: Corpus, args, steps: int | None = None,
              extra: dict | None = None, progress: bool = True) -> dict:
    """Train one model; returns the per-step training loss and the validation curve (bits/byte)."""
    steps = args.steps if steps is None else steps
    model = build_model(args, seed)
    optimizer = make_optimizer(name, model, lr, args, extra)
    warmup = max(1, round(args.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: lr_factor(k, steps, warmup, args.min_lr_ratio))
    offsets = batch_offsets(len(corpus.train), args.context, steps, args.batch_size, seed)
    val_x, val_y = windows(corpus.val, val_starts(len(corpus.val), args.context, args.val_windows),
                           args.context)
    eval_every = args.eval_every or max(1, steps // 10)
    val_steps, val_loss, train_loss = [0], [evaluate(model, val_x, val_y)], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        x, y = windows(corpus.train, offsets[step], args.context)
        loss = F.cross_entropy(model(x).float().reshape(-1, VOCAB), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        train_loss.append(loss.item() / math.log(2))
        if not math.isfinite(train_loss[-1]):
            break
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val_steps.append(step + 1)
            val_loss.append(evaluate(model, val_x, val_y))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if progress:
        print(f"  {name:<8} {args.dtype:<8} lr {lr:<6g} seed {seed}: {len(train_loss)} steps, "
              f"train {smooth(train_loss)[-1]:.3f} val {val_loss[-1]:.3f} bits/byte "
              f"({seconds:.0f} s, {cpu_seconds:.0f} s CPU)", file=sys.stderr, flush=True)
    return {"optimizer": name, "dtype": args.dtype, "lr": lr, "seed": seed, "steps": steps,
            **({"extra": extra} if extra else {}),
            "seconds": seconds, "cpu_seconds": cpu_seconds, "train_loss": train_loss,
            "val_steps": val_steps, "val_loss": val_loss}


def smooth(values, weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight ** (i + 1)))
    return out


def final_val(run: dict) -> float:
    value = run["val_loss"][-1] if len(run["train_loss"]) == run["steps"] else float("nan")
    return value if math.isfinite(value) else float("nan")


# ---------------------------------------------------------------------------- summary / plot

def summarise(runs: list[dict]) -> list[dict]:
    groups = {}
    for r in runs:
        groups.setdefault((r["optimizer"], r["dtype"]), []).append(r)
    rows = []
    for (name, dtype), rs in groups.items():
        finals = np.array([final_val(r) for r in rs])
        rows.append({"optimizer": name, "dtype": dtype, "lr": rs[0]["lr"],
                     "seeds": [r["seed"] for r in rs],
                     "final_val_mean": float(finals.mean()),
                     "final_val_std": float(finals.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "final_val": finals.tolist(),
                     "final_train_smoothed_mean": float(np.mean(
                         [smooth(r["train_loss"])[-1] for r in rs])),
                     "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
                     "cpu_seconds_per_run": float(np.mean([r["cpu_seconds"] for r in rs]))})
    return rows


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'optimizer':<9} {'dtype':<8} {'lr':>7} {'final val bits/byte':>22} "
             f"{'train (smoothed)':>17} {'s/run':>6} {'CPU s/run':>9}"]
    for r in rows:
        lines.append(f"{DISPLAY_NAMES[r['optimizer']]:<9} {r['dtype']:<8} {r['lr']:>7g} "
                     f"{r['final_val_mean']:>13.4f} ± {r['final_val_std']:.4f} "
                     f"{r['final_train_smoothed_mean']:>17.4f} {r['seconds_per_run']:>6.1f} "
                     f"{r['cpu_seconds_per_run']:>9.1f}")
    return "\n".join(lines)


def plot_curves(runs: list[dict], title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = list(dict.fromkeys((r["optimizer"], r["dtype"]) for r in runs))
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(k[0] for k in keys))}
    finals = []
    for name, dtype in keys:
        rs = [r for r in runs if (r["optimizer"], r["dtype"]) == (name, dtype)]
        style = "-" if dtype == "float32" else "--"
        label = f"{DISPLAY_NAMES[name]} {dtype} (lr {rs[0]['lr']:g})"
        length = min(len(r["val_loss"]) for r in rs)
        steps = np.array(rs[0]["val_steps"][:length])
        values = np.array([r["val_loss"][:length] for r in rs])
        ax_val.plot(steps, values.mean(0), style, color=colors[name], label=label, lw=1.5)
        ax_val.fill_between(steps, values.min(0), values.max(0), color=colors[name], alpha=0.18,
                            lw=0)
        finals.extend(values[:, -1])
        length = min(len(r["train_loss"]) for r in rs)
        train = np.array([smooth(r["train_loss"][:length]) for r in rs])
        x = np.arange(1, length + 1)
        ax_train.plot(x, train.mean(0), style, color=colors[name], label=label, lw=1.2)
        ax_train.fill_between(x, train.min(0), train.max(0), color=colors[name], alpha=0.18, lw=0)
    # The first steps fall from 8 bits (uniform over 256 bytes); zoom on where they differ.
    finite = [f for f in finals if math.isfinite(f)]
    if finite:
        top = max(finite) + 1.5
        ax_val.set_ylim(min(finite) - 0.1, top)
        ax_train.set_ylim(min(finite) - 0.3, top)
    ax_val.set_ylabel("validation loss (bits per byte)")
    ax_train.set_ylabel("training loss (bits per byte, smoothed)")
    for ax in (ax_val, ax_train):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps per run "
                        "(default 400; 30 with --quick)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--dtype", default="float32",
                        help="float32, bfloat16, or both comma-separated (whole model in that "
                        "dtype; the loss is computed in float32 from the logits)")
    for name in OPTIMIZERS:
        parser.add_argument(f"--lr-{name}", type=float, default=DEFAULT_LRS[name],
                            help=f"peak lr for {DISPLAY_NAMES[name]} (default {DEFAULT_LRS[name]:g})")
    parser.add_argument("--state-dtype", default="default", choices=("default", "bfloat16"),
                        help="INNAprop's and INNA's state_dtype (default: float32 state; "
                        "bfloat16: phase and exp_avg_sq in bfloat16, rounded stochastically)")
    parser.add_argument("--innaprop-alpha", type=float, default=DEFAULT_INNAPROP["alpha"])
    parser.add_argument("--innaprop-beta", type=float, default=DEFAULT_INNAPROP["beta"])
    parser.add_argument("--inna-alpha", type=float, default=DEFAULT_INNA["alpha"])
    parser.add_argument("--inna-beta", type=float, default=DEFAULT_INNA["beta"])
    parser.add_argument("--weight-decay", type=float, default=0.1,
                        help="decoupled weight decay of the matrices for AdamW and INNAprop")
    parser.add_argument("--inna-weight-decay", type=float, default=0.0,
                        help="INNA's decoupled weight decay of the matrices (default 0, the "
                        "authors' default; INNA's lr is ~100x AdamW's, so 0.1 would be ~100x "
                        "stronger per step)")
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the steps")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1,
                        help="the cosine ends at this fraction of the peak lr")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (4 with --quick)")
    parser.add_argument("--context", type=int, default=None, help="default 128 (16 with --quick)")
    parser.add_argument("--d-model", type=int, default=None, help="default 128 (32 with --quick)")
    parser.add_argument("--layers", type=int, default=None, help="default 2 (1 with --quick)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="corpus size limit (default 3,000,000; 300,000 with --quick)")
    parser.add_argument("--eval-every", type=int, default=0, help="default: steps // 10")
    parser.add_argument("--val-windows", type=int, default=None,
                        help="held-out windows evaluated each time (default 128; 16 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and corpus, few steps (a smoke test, not a comparison)")
    parser.add_argument("--grid", action="store_true",
                        help="the learning-rate grid on seed 0 instead (see GRID)")
    parser.add_argument("--grid-steps", type=int, default=None, help="default: steps // 2")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine 2 threads "
                        "ran these small steps up to 10x slower; 0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no per-eval progress lines")
    parser.add_argument("--out", default=".", help="directory for the PNG and JSON outputs")
    parser.add_argument("--name", default="charlm",
                        help="output file stem: <out>/<name>.png and <out>/<name>.json")


def _fill_defaults(args) -> None:
    quick = args.quick
    for key, normal, small in (("steps", 400, 30), ("batch_size", 16, 4), ("context", 128, 16),
                               ("d_model", 128, 32), ("layers", 2, 1),
                               ("max_bytes", 3_000_000, 300_000), ("val_windows", 128, 16)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else normal)
    if args.grid_steps is None:
        args.grid_steps = max(1, args.steps // 2)
    for key in ("steps", "seeds", "batch_size", "context", "d_model", "layers", "heads",
                "val_windows", "grid_steps"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")


def _names(text: str, allowed, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {unknown or text!r}; choose from {tuple(allowed)}")
    return names


def run(args) -> int:
    _fill_defaults(args)
    names = _names(args.optimizers, OPTIMIZERS, "--optimizers")
    dtypes = _names(args.dtype, DTYPES, "--dtype")
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(args.max_bytes)
    os.makedirs(args.out, exist_ok=True)
    info = corpus.describe()
    model = TinyGPT(args.context, args.d_model, args.layers, args.heads)
    print(f"Python {info['python_version']} stdlib ({corpus.directory}): "
          f"{info['train_files']} train files ({info['train_bytes']:,} bytes), "
          f"{info['val_files']} validation files ({info['val_bytes']:,} bytes); model "
          f"{count_parameters(model):,} params ({args.layers} layers, d_model {args.d_model}, "
          f"{args.heads} heads, context {args.context}); batch {args.batch_size}; "
          f"{torch.get_num_threads()} threads")
    progress = not args.no_progress
    config = {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}
    json_path = os.path.join(args.out, args.name + ".json")
    started, cpu_started = time.perf_counter(), time.process_time()
    if args.grid:
        return _run_grid(args, corpus, names, dtypes, config, info, json_path, progress)
    runs = []
    for dtype in dtypes:
        args.dtype = dtype
        for seed in range(args.seeds):
            for name in names:
                runs.append(train_run(name, getattr(args, f"lr_{name}"), seed, corpus, args,
                                      progress=progress))
    args.dtype = ",".join(dtypes)
    rows = summarise(runs)
    png_path = os.path.join(args.out, args.name + ".png")
    title = (f"byte-level GPT ({count_parameters(model) / 1e3:.0f}k params) on the Python "
             f"{info['python_version']} stdlib, {args.steps} steps × {args.batch_size}×"
             f"{args.context} bytes: held-out validation loss, mean and min–max over "
             f"{args.seeds} seed{'s' * (args.seeds > 1)}")
    plot_curves(runs, title, png_path)
    total, cpu_total = time.perf_counter() - started, time.process_time() - cpu_started
    with open(json_path, "w") as f:
        json.dump({"config": config, "corpus": info, "total_seconds": total,
                   "total_cpu_seconds": cpu_total, "summary": rows, "runs": runs}, f, indent=1)
    print(format_summary(rows))
    print(f"total {total:.0f} s ({cpu_total:.0f} s CPU); wrote {png_path} and {json_path}")
    return 0


def _run_grid(args, corpus, names, dtypes, config, info, json_path, progress) -> int:
    args.dtype = dtypes[0]
    cells = []
    for name, lr, extra in (entry for entry in GRID if entry[0] in names):
        r = train_run(name, lr, 0, corpus, args, steps=args.grid_steps, extra=extra,
                      progress=progress)
        cells.append({"optimizer": name, "lr": lr, **extra, "final_val": final_val(r),
                      "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "val_steps": r["val_steps"],
                      "val_loss": r["val_loss"]})
        shown = ", ".join(f"{k} {v:g}" for k, v in extra.items())
        print(f"{DISPLAY_NAMES[name]:<9} lr {lr:<7g} {shown:<22} final val "
              f"{cells[-1]['final_val']:.4f} bits/byte ({r['seconds']:.0f} s)", flush=True)
    with open(json_path, "w") as f:
        json.dump({"config": config, "corpus": info, "grid": cells}, f, indent=1)
    print(f"wrote {json_path}")
    return 0
