"""The logic behind the benchmarks: bytes accounting, workload shapes, interleaved timing, the
ratios and target checks (INNAprop's ratios too), and `python -m inna_fused bench --json/--plot`
on a tiny run."""
import json
import math
import re

import pytest
import torch

import inna_fused
from inna_fused import bench as B
from inna_fused import _ops, kernel_available
from inna_fused.__main__ import main
from inna_fused.bench import report
from inna_fused.bench.command import MAX_REPEATS
from inna_fused.bench.providers import _random_params

innaprop_kernel = _ops.op_kernel_available(_ops.INNAPROP_OP_NAME, "cpu")
requires_innaprop_kernel = pytest.mark.skipif(
    not innaprop_kernel, reason="the CPU kernel of inna_fused::fused_innaprop_ is not built")

# ----------------------------------------------------------------------------------------------
# Bytes per element: reads + writes of one step


def _size(dtype):
    return torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("provider", B.INNA_PROVIDERS)
def test_inna_moves_theta_grad_psi_in_and_theta_psi_out(provider, dtype):
    # The state (phase) is float32 for 16-bit params, float64 for float64, bfloat16 when asked.
    state = 2 if provider == "fused-bf16state" else 8 if dtype == torch.float64 else 4
    expected = (_size(dtype) + _size(dtype) + state) + (_size(dtype) + state)
    assert B.bytes_per_element(provider, dtype) == expected


def test_documented_byte_counts():
    # bench/NOTES.md: INNA 20 (fp32) / 14 (bf16 with fp32 ψ), Adam 28, SGD momentum 20,
    # stream 12; bf16 Adam keeps its moments in bf16 (torch's choice): 7 × 2.
    assert B.bytes_per_element("fused", torch.float32) == 20
    assert B.bytes_per_element("fused", torch.bfloat16) == 14
    assert B.bytes_per_element("fused-bf16state", torch.bfloat16) == 10
    assert B.bytes_per_element("fused-bf16state", torch.float32) == 16
    assert B.bytes_per_element("adam", torch.float32) == 28
    assert B.bytes_per_element("adamw", torch.bfloat16) == 14
    assert B.bytes_per_element("sgd", torch.float32) == 20
    assert B.bytes_per_element("stream", torch.bfloat16) == 12  # the yardstick is always fp32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("provider", B.INNAPROP_PROVIDERS)
def test_innaprop_moves_theta_grad_phase_and_exp_avg_sq(provider, dtype):
    # Reads θ, g, the phase, exp_avg_sq; writes θ, the phase, exp_avg_sq. The state is float32
    # for 16-bit and float32 params, float64 for float64 ones, unless bfloat16 (both tensors).
    state = 2 if provider == "innaprop-bf16state" else 8 if dtype == torch.float64 else 4
    reads = _size(dtype) + _size(dtype) + 2 * state
    writes = _size(dtype) + 2 * state
    assert B.bytes_per_element(provider, dtype) == reads + writes


def test_innaprop_and_adamw_move_as_many_bytes_in_float32():
    # Both keep two float32 tensors of state: θ, g, phase, v against θ, g, m, v (7 × 4 bytes).
    assert B.bytes_per_element("innaprop", torch.float32) == \
        B.bytes_per_element("adamw", torch.float32) == 7 * _size(torch.float32)
    # The bf16 state saves 4 × 2 bytes (phase and v, each read + written); bf16 params save 3 × 2
    # (θ read + written, g read).
    f32 = B.bytes_per_element("innaprop", torch.float32)
    assert B.bytes_per_element("innaprop-bf16state", torch.float32) == f32 - 4 * 2
    assert B.bytes_per_element("innaprop", torch.bfloat16) == f32 - 3 * 2
    assert B.bytes_per_element("innaprop-bf16state", torch.bfloat16) == f32 - 3 * 2 - 4 * 2
    # The authors' loop and the foreach path are charged what the fused step must move.
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert (B.bytes_per_element("innaprop-loop", dtype)
                == B.bytes_per_element("innaprop-foreach", dtype)
                == B.bytes_per_element("innaprop", dtype))


def test_provider_sets():
    assert set(B.PROVIDERS) == set(B.INNA_PROVIDERS) | set(B.INNAPROP_PROVIDERS) | set(
        B.BASELINE_PROVIDERS)
    assert len(B.PROVIDERS) == len(set(B.PROVIDERS))
    assert set(B.PROVIDER_LABELS) == set(B.PROVIDERS)
    # The default run shows fused INNAprop beside AdamW(fused) and the authors' loop (for the
    # speed-up); INNAprop's foreach path is opt-in, as is round-to-nearest.
    assert {"innaprop", "innaprop-loop", "innaprop-bf16state", "adamw"} <= set(B.DEFAULT_PROVIDERS)
    assert set(B.OPT_IN_PROVIDERS) == {"fused-nearest", "innaprop-foreach"}
    assert set(B.DEFAULT_PROVIDERS) | set(B.OPT_IN_PROVIDERS) == set(B.PROVIDERS)
    assert B.PROVIDER_LABELS["innaprop"] == "INNAprop fused"
    assert B.PROVIDER_LABELS["innaprop-loop"] == "INNAprop authors' loop"
    # The slow INNAprop paths get the caps of INNA's.
    assert MAX_REPEATS["innaprop-loop"] == MAX_REPEATS["reference"] == \
        B.DEFAULT_MAX_REPEATS["reference"]
    assert MAX_REPEATS["innaprop-foreach"] == MAX_REPEATS["foreach"]


def test_bytes_per_step_scales_with_elements():
    workload = B.make_workload("resnet50")
    assert B.bytes_per_step("fused", torch.float32, workload) == 20 * workload.numel


def test_unknown_provider_is_named():
    with pytest.raises(ValueError, match="lion"):
        B.bytes_per_element("lion", torch.float32)
    with pytest.raises(ValueError, match="innaprop-lion"):
        B.make_runner("innaprop-lion", B.make_workload("flat-100"))
    with pytest.raises(ValueError, match="innaprop-lion"):
        B.make_optimizer("innaprop-lion", [torch.nn.Parameter(torch.ones(3))])


# ----------------------------------------------------------------------------------------------
# Workloads


@pytest.mark.parametrize("name, numel, tensors", [
    ("resnet50", 25_557_032, 161),     # torchvision's ResNet-50
    ("gpt2-small", 124_439_808, 148),  # Hugging Face GPT2Model ("124M")
    ("bert-base", 109_482_240, 199),   # Hugging Face BertModel, uncased ("110M")
], ids=["resnet50", "gpt2-small", "bert-base"])
def test_model_shapes_match_published_sizes(name, numel, tensors):
    workload = B.make_workload(name)
    assert workload.kind == "list"
    assert workload.numel == numel
    assert workload.tensors == tensors


@pytest.mark.parametrize("name, embeddings", [
    ("gpt2-small", [(50257, 768), (1024, 768)]),
    ("bert-base", [(30522, 768), (512, 768), (2, 768)]),
])
def test_transformer_layers_match_torch_encoder_layer(name, embeddings):
    # Independent count: one torch encoder layer with the same width has the same parameters
    # (fused or separate q/k/v, two layer norms, the MLP) as one GPT-2 / BERT layer.
    layer = torch.nn.TransformerEncoderLayer(768, 12, 3072)
    per_layer = sum(p.numel() for p in layer.parameters())
    shapes = B.make_workload(name).shapes
    rest = sum(math.prod(s) for s in shapes) - sum(math.prod(s) for s in embeddings)
    head = 2 * 768 if name == "gpt2-small" else 2 * 768 + 768 * 768 + 768  # ln_f / norm + pooler
    assert rest == 12 * per_layer + head
    assert list(shapes[:len(embeddings)]) == embeddings


def test_tiny_and_flat_workloads():
    tiny = B.make_workload("tiny-10000")
    assert tiny.tensors == 10_000 and tiny.numel == 10_000 * 1_000
    assert B.make_workload("flat-2^20").shapes == ((1 << 20,),)
    assert B.make_workload("flat-1000").numel == 1000
    flat = B.make_workload("resnet50-flat")
    assert flat.kind == "flat" and flat.tensors == 1
    assert flat.numel == B.make_workload("resnet50").numel
    assert B.flat_name(1 << 25) == "flat-2^25"


def test_unknown_workload_is_named():
    with pytest.raises(ValueError, match="vgg16"):
        B.make_workload("vgg16")


def test_shrink_keeps_name_and_kind_and_is_tiny():
    small = B.shrink(B.make_workload("tiny-10000"), max_tensors=5, max_numel=7)
    assert (small.name, small.kind, small.tensors) == ("tiny-10000", "list", 5)
    assert small.numel <= 35


# ----------------------------------------------------------------------------------------------
# Providers: each runner really runs its optimizer


def test_runners_of_all_inna_providers_take_the_same_step():
    workload = B.Workload("small", ((3, 5), (17,), (0,), (1, 1)), "list")
    # A bfloat16 state rounds the phase: that provider takes its own, nearby step.
    providers = [p for p in B.INNA_PROVIDERS
                 if p != "fused-bf16state" and (p != "fused" or kernel_available("cpu"))]
    params = {}
    for provider in providers:
        runner = B.make_runner(provider, workload, "cpu", torch.float64, seed=3)  # one step taken
        runner.step()
        optimizer = runner._step.__self__
        params[provider] = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    start = _random_params(workload.shapes, "cpu", torch.float64,
                             torch.Generator().manual_seed(3))
    for provider in providers:
        assert any(not torch.equal(a, b) for a, b in zip(params[provider], start)), provider
        for a, b in zip(params[provider], params["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not kernel_available("cpu"), reason="the CPU kernel is not built")
def test_bf16_state_runner_keeps_a_bf16_phase_and_steps_like_the_others():
    workload = B.Workload("small", ((3, 5), (17,)), "list")
    runs = {}
    for provider in ("fused", "fused-bf16state"):
        runner = B.make_runner(provider, workload, "cpu", torch.float32, seed=3)
        runner.step()
        optimizer = runner._step.__self__
        runs[provider] = optimizer
    phases = [runs["fused-bf16state"].state[p]["phase"]
              for p in runs["fused-bf16state"].param_groups[0]["params"]]
    assert all(ph.dtype == torch.bfloat16 for ph in phases)
    for a, b in zip(runs["fused-bf16state"].param_groups[0]["params"],
                    runs["fused"].param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def _innaprop_runs(providers, dtype, steps, seed=3):
    workload = B.Workload("small", ((3, 5), (17,), (0,), (1, 1)), "list")
    runs = {}
    for provider in providers:
        runner = B.make_runner(provider, workload, "cpu", dtype, seed=seed)  # one step taken
        for _ in range(steps - 1):
            runner.step()
        runs[provider] = runner._step.__self__
    return workload, runs


def test_innaprop_runners_take_the_authors_step():
    # float64: the authors' literal step and ours (phase form) agree to rounding.
    providers = ["innaprop-loop", "innaprop-foreach"] + (["innaprop"] if innaprop_kernel else [])
    workload, runs = _innaprop_runs(providers, torch.float64, steps=4)
    start = _random_params(workload.shapes, "cpu", torch.float64, torch.Generator().manual_seed(3))
    authors = runs["innaprop-loop"]
    assert isinstance(authors, B.AuthorsINNAprop)
    alpha, beta = B.INNAPROP_HYPER["alpha"], B.INNAPROP_HYPER["beta"]
    for provider in providers[1:]:
        ours = runs[provider]
        assert isinstance(ours, inna_fused.INNAprop)
        for p, q, p0 in zip(ours.param_groups[0]["params"], authors.param_groups[0]["params"],
                            start):
            if p.numel():
                assert not torch.equal(p, p0), provider
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
            # ψ = (1 − αβ)θ + β·w, the authors' state
            psi = (1 - alpha * beta) * p.detach() + beta * ours.state[p]["phase"]
            torch.testing.assert_close(psi, authors.state[q]["psi"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ours.state[p]["exp_avg_sq"], authors.state[q]["exp_avg_sq"],
                                       rtol=1e-12, atol=1e-12)
            assert int(ours.state[p]["step"]) == authors.state[q]["step"] == 4


def test_authors_loop_keeps_their_state_and_skips_params_without_grad():
    workload = B.Workload("small", ((4,), (2, 3)), "list")
    runner = B.make_runner("innaprop-loop", workload, "cpu", torch.bfloat16)
    opt = runner._step.__self__
    first, second = opt.param_groups[0]["params"]
    second.grad = None
    before = second.detach().clone()
    runner.step()
    assert opt.state[first]["step"] == 2 and isinstance(opt.state[first]["step"], int)
    assert opt.state[second]["step"] == 1
    assert torch.equal(second, before)
    # Their state is in the param's dtype.
    assert opt.state[first]["psi"].dtype == opt.state[first]["exp_avg_sq"].dtype == torch.bfloat16


@requires_innaprop_kernel
def test_innaprop_bf16_state_runner_keeps_bf16_state_and_steps_like_the_others():
    _, runs = _innaprop_runs(["innaprop", "innaprop-bf16state"], torch.float32, steps=2)
    bf16 = runs["innaprop-bf16state"]
    for p in bf16.param_groups[0]["params"]:
        assert bf16.state[p]["phase"].dtype == bf16.state[p]["exp_avg_sq"].dtype == torch.bfloat16
    for a, b in zip(bf16.param_groups[0]["params"], runs["innaprop"].param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_fused_innaprop_without_its_kernel_is_unavailable(monkeypatch):
    monkeypatch.setattr(_ops, "op_kernel_available",
                        lambda name, device: name != _ops.INNAPROP_OP_NAME)
    for provider in ("innaprop", "innaprop-bf16state"):
        with pytest.raises(B.ProviderUnavailable):
            B.make_runner(provider, B.make_workload("flat-100"), "cpu")
    B.make_runner("innaprop-loop", B.make_workload("flat-100"), "cpu")  # needs no kernel


def test_stream_runner_adds_in_place():
    runner = B.make_runner("stream", B.make_workload("flat-1000"), "cpu", torch.float32)
    assert runner.bytes_per_step == 12 * 1000


# ----------------------------------------------------------------------------------------------
# Interleaved timing


def _fake_clock(durations):
    """A timer that runs the callable and reports a fixed duration per name's call."""
    def timer(fn):
        before = len(log)
        fn()
        return sum(durations[name] for name in log[before:])
    log = []
    return timer, log


def test_round_robin_interleaves_rotates_and_caps():
    timer, log = _fake_clock({"a": 1.0, "b": 1.0, "c": 1.0})
    calls = {name: (lambda n=name: log.append(n)) for name in "abc"}
    times = B.round_robin(calls, 4, max_repeats={"c": 2}, timer=timer)
    assert log[:3] == ["a", "b", "c"]  # warm-up, once each
    assert log[3:] == ["a", "b", "c", "b", "c", "a", "a", "b", "a", "b"]
    assert [len(times[n]) for n in "abc"] == [4, 4, 2]
    assert times["a"] == [1.0] * 4


def test_round_robin_batches_fast_calls_to_min_time():
    timer, log = _fake_clock({"fast": 0.001, "slow": 0.5})
    calls = {name: (lambda n=name: log.append(n)) for name in ("fast", "slow")}
    times = B.round_robin(calls, 3, min_time=0.01, timer=timer)
    assert log.count("fast") == 1 + 3 * 10 and log.count("slow") == 1 + 3
    assert times["fast"] == pytest.approx([0.001] * 3)
    assert B.calls_in_round_robin(["fast", "slow"], 3, {"slow": 1}) == 4


def test_round_robin_without_warmup_for_slow_calls():
    timer, log = _fake_clock({"fast": 0.001, "slow": 0.5})
    calls = {name: (lambda n=name: log.append(n)) for name in ("fast", "slow")}
    times = B.round_robin(calls, 2, min_time=0.002, no_warmup={"slow"}, timer=timer)
    assert log == ["fast"] + ["fast", "fast", "slow", "slow", "fast", "fast"]
    assert times == {"fast": pytest.approx([0.001] * 2), "slow": [0.5, 0.5]}


# ----------------------------------------------------------------------------------------------
# Ratios and target checks on synthetic results


def _row(provider, workload, numel, median_s, kind="flat"):
    return {"provider": provider, "workload": workload, "numel": numel, "kind": kind,
            "dtype": "float32", "device": "cpu", "median_s": median_s,
            "gbps": B.effective_gbps(B.bytes_per_element(provider, torch.float32) * numel,
                                     median_s)}


def test_ratios_and_targets():
    n, r = 1 << 25, 25_557_032
    rows = [_row("fused", "flat-2^25", n, 1.0), _row("sgd", "flat-2^25", n, 1.0),
            _row("adam", "flat-2^25", n, 2.0), _row("stream", "flat-2^25", n, 0.75),
            _row("fused", "flat-2^24", n // 2, 0.1), _row("sgd", "flat-2^24", n // 2, 1.0),
            _row("fused", "resnet50", r, 1.5, "list"),
            _row("reference", "resnet50", r, 30.0, "list"),
            _row("foreach", "resnet50", r, 3.0, "list"), _row("fused", "resnet50-flat", r, 1.0)]
    report.add_ratios(rows)
    fused = rows[0]
    assert fused["speedup"]["adam"] == pytest.approx(2.0)
    assert fused["speedup"]["reference"] is None  # no reference row for that workload
    # 20 bytes in 1 s against 12 bytes in 0.75 s
    assert fused["pct_stream"] == pytest.approx(100 * 20 / 16)
    checks = {c["name"]: c for c in report.check_targets(rows)}
    assert checks["fused_vs_sgd"]["workload"] == "flat-2^25"  # the largest flat one
    assert checks["fused_vs_sgd"]["value"] == pytest.approx(1.0)
    assert checks["fused_vs_sgd"]["meets_accepted"] and checks["fused_vs_sgd"]["meets_goal"]
    assert checks["fused_vs_adam"]["value"] == pytest.approx(0.5)
    assert checks["list_vs_flat"]["value"] == pytest.approx(1.5)
    assert checks["list_vs_flat"]["meets_accepted"] is False
    assert checks["speedup_vs_reference"]["value"] == pytest.approx(20.0)
    assert checks["speedup_vs_foreach"]["value"] == pytest.approx(2.0)
    assert checks["speedup_vs_foreach"]["meets_accepted"] is False
    table = report.format_table([dict(row, label=row["provider"]) for row in rows])
    assert "flat-2^25" in table and "resnet50-flat" in table
    assert "MISSED" in report.format_checks(list(checks.values()))
    # Columns only for the baselines that ran: no AdamW or INNAprop rows here.
    assert re.split(r"\s{2,}", table.splitlines()[0])[-4:] == ["x vs ref", "x vs foreach",
                                                                "x vs SGD", "x vs Adam"]
    assert report.innaprop_ratios(rows) == [] and report.format_innaprop([]) == ""


def test_innaprop_ratios():
    n, r = 1 << 24, 25_557_032
    rows = [_row("innaprop", "flat-2^24", n, 0.9), _row("adamw", "flat-2^24", n, 1.2),
            _row("innaprop-loop", "flat-2^24", n, 18.0), _row("stream", "flat-2^24", n, 0.5),
            _row("innaprop-bf16state", "flat-2^24", n, 0.72), _row("fused", "flat-2^24", n, 0.6),
            _row("innaprop", "resnet50", r, 1.0, "list"), _row("adamw", "resnet50", r, 0.8, "list"),
            _row("innaprop-foreach", "resnet50", r, 6.0, "list"),
            _row("adamw", "resnet50-flat", r, 0.7)]  # no INNAprop row: no ratio row
    report.add_ratios(rows)
    innaprop = rows[0]
    assert innaprop["speedup"]["adamw"] == pytest.approx(1.2 / 0.9)
    assert innaprop["speedup"]["innaprop-loop"] == pytest.approx(20.0)
    ratios = {r["workload"]: r for r in report.innaprop_ratios(rows)}
    assert set(ratios) == {"flat-2^24", "resnet50"}
    flat, listed = ratios["flat-2^24"], ratios["resnet50"]
    assert flat["innaprop_vs_adamw"] == pytest.approx(0.75)
    assert flat["loop_vs_innaprop"] == pytest.approx(20.0)
    assert flat["bf16state_vs_innaprop"] == pytest.approx(0.8)
    assert flat["innaprop_vs_inna"] == pytest.approx(1.5)
    assert flat["foreach_vs_innaprop"] is None
    # 28 bytes in 0.9 s against 12 bytes in 0.5 s
    assert flat["innaprop_pct_stream"] == pytest.approx(100 * (28 / 0.9) / (12 / 0.5))
    assert listed["innaprop_vs_adamw"] == pytest.approx(1.25)
    assert listed["foreach_vs_innaprop"] == pytest.approx(6.0)
    assert listed["loop_vs_innaprop"] is None and listed["innaprop_pct_stream"] is None
    text = report.format_innaprop(list(ratios.values()))
    assert "INNAprop / AdamW time" in text and "authors' loop / INNAprop time" in text
    assert "0.75" in text and "20.00" in text and "1.25" in text
    table = report.format_table([dict(row, label=row["provider"]) for row in rows])
    assert "x vs AdamW" in table and "x vs authors" in table and "x vs prop-foreach" in table
    assert "x vs ref" not in table  # INNA's per-param loop did not run
    checks = {c["name"]: c for c in report.check_targets(rows)}
    assert checks["innaprop_vs_adamw"]["value"] == pytest.approx(0.75)
    assert checks["innaprop_vs_adamw"]["meets_accepted"] is True
    assert checks["innaprop_vs_adamw_resnet50"]["value"] == pytest.approx(1.25)
    assert checks["innaprop_vs_adamw_resnet50"]["meets_accepted"] is False
    assert "innaprop_vs_adamw_gpt2" not in checks  # no GPT-2 rows
    assert "innaprop_speedup_vs_authors" not in checks  # no authors' loop on the ResNet-50 list
    rows.append(_row("innaprop-loop", "resnet50", r, 9.0, "list"))
    report.add_ratios(rows)
    checks = {c["name"]: c for c in report.check_targets(rows)}
    assert checks["innaprop_speedup_vs_authors"]["value"] == pytest.approx(9.0)
    assert checks["innaprop_speedup_vs_authors"]["meets_accepted"] is False


# ----------------------------------------------------------------------------------------------
# The command on a tiny run


def test_bench_command_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "plot" / "bench.png"
    rc = main(["bench", "--device", "cpu", "--workloads", "flat-2^10,flat-2^12", "--repeats", "2",
               "--min-time", "0", "--dtype", "float32,bf16", "--no-progress", "--json", str(out),
               "--plot", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "INNA fused" in printed and "flat-2^12" in printed
    result = json.loads(out.read_text())
    assert result["schema"] == "inna_fused.bench/2"
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["device"] == "cpu" and env["device_name"]
    assert env["inna_fused_build"]["cpu_kernel"] == kernel_available("cpu")
    rows = result["results"]
    assert len(rows) == 2 * 2 * len(B.DEFAULT_PROVIDERS)
    assert result["settings"]["max_repeats"] == MAX_REPEATS
    assert {(r["dtype"], r["workload"]) for r in rows} == {
        (d, w) for d in ("float32", "bfloat16") for w in ("flat-2^10", "flat-2^12")}
    for row in rows:
        if (row["provider"] == "fused" and not kernel_available("cpu")
                or row["provider"].startswith("innaprop") and "loop" not in row["provider"]
                and not innaprop_kernel):
            assert row["median_s"] is None and row["skipped"]
            continue
        cap = MAX_REPEATS.get(row["provider"], 2)
        assert len(row["times_s"]) == min(2, cap)
        assert row["median_s"] == pytest.approx(sorted(row["times_s"])[len(row["times_s"]) // 2]
                                                if len(row["times_s"]) % 2 else
                                                sum(row["times_s"]) / 2)
        assert row["gbps"] == pytest.approx(row["bytes_per_step"] / row["median_s"] / 1e9)
        assert row["bytes_per_step"] == row["bytes_per_element"] * row["numel"]
        assert set(row["speedup"]) == {b for b, _ in report.SPEEDUP_BASELINES}
    assert isinstance(result["targets"], list)
    assert {(r["dtype"], r["workload"]) for r in result["innaprop"]} == (
        {(d, w) for d in ("float32", "bfloat16") for w in ("flat-2^10", "flat-2^12")}
        if innaprop_kernel else set())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_innaprop_kernel
def test_bench_command_innaprop_against_adamw(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--device", "cpu", "--workloads", "flat-2^10,flat-2^11",
               "--providers", "innaprop,adamw", "--repeats", "3", "--min-time", "0",
               "--no-progress", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "INNAprop fused" in printed and "torch AdamW(fused)" in printed
    assert "x vs AdamW" in printed and "x vs ref" not in printed
    table = printed[printed.index("INNAprop fused against AdamW(fused)"):]
    assert "INNAprop / AdamW time" in table
    assert "authors' loop" not in table.splitlines()[1]  # that column only when the loop ran
    result = json.loads(out.read_text())
    medians = {(r["workload"], r["provider"]): r["median_s"] for r in result["results"]}
    assert {r["bytes_per_element"] for r in result["results"]} == {28}
    ratios = {r["workload"]: r for r in result["innaprop"]}
    assert set(ratios) == {"flat-2^10", "flat-2^11"}
    for workload, ratio in ratios.items():
        expected = medians[workload, "innaprop"] / medians[workload, "adamw"]
        assert ratio["innaprop_vs_adamw"] == pytest.approx(expected)
        assert ratio["loop_vs_innaprop"] is None
        row = table.splitlines()[[line.split()[0] if line.split() else ""
                                  for line in table.splitlines()].index(workload)]
        assert f"{expected:.2f}" in row


@requires_innaprop_kernel
def test_bench_command_authors_loop_speedup(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--device", "cpu", "--workloads", "flat-2^10", "--providers",
               "innaprop-loop,innaprop", "--repeats", "5", "--min-time", "0", "--no-progress",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "INNAprop authors' loop" in printed and "authors' loop / INNAprop time" in printed
    result = json.loads(out.read_text())
    rows = {r["provider"]: r for r in result["results"]}
    assert len(rows["innaprop-loop"]["times_s"]) == MAX_REPEATS["innaprop-loop"] == 3
    assert len(rows["innaprop"]["times_s"]) == 5
    (ratio,) = result["innaprop"]
    assert ratio["loop_vs_innaprop"] == pytest.approx(
        rows["innaprop-loop"]["median_s"] / rows["innaprop"]["median_s"])
    assert rows["innaprop"]["speedup"]["innaprop-loop"] == pytest.approx(ratio["loop_vs_innaprop"])
    assert ratio["innaprop_vs_adamw"] is None


def test_bench_command_rejects_unknown_provider(capsys):
    assert main(["bench", "--providers", "innaprop,lion", "--workloads", "flat-2^10",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lion" in err and "innaprop-loop" in err  # names the choices


def test_bench_command_rejects_unknown_workload(capsys):
    assert main(["bench", "--workloads", "flat-2^10,vgg16", "--no-progress"]) == 2
    assert "vgg16" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# bench/gpu_bench.py: its CPU smoke run (the GPU check runs it on a GPU)


def _gpu_bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_byte_counts_match_the_providers():
    gpu_bench = _gpu_bench_module()
    assert gpu_bench.BYTES_PER_ELEMENT["innaprop_f32"] == B.bytes_per_element("innaprop",
                                                                              torch.float32)
    assert gpu_bench.BYTES_PER_ELEMENT["adam_f32"] == B.bytes_per_element("adamw", torch.float32)
    for dtype, phase_dtype, bpe in gpu_bench.INNAPROP_STATE_DTYPE_PAIRS.values():
        provider = "innaprop-bf16state" if phase_dtype == torch.bfloat16 else "innaprop"
        assert bpe == B.bytes_per_element(provider, dtype)
    for dtype, phase_dtype, bpe in gpu_bench.STATE_DTYPE_PAIRS.values():
        provider = "fused-bf16state" if phase_dtype == torch.bfloat16 else "fused"
        assert bpe == B.bytes_per_element(provider, dtype)
    assert gpu_bench.INNAPROP_HYPER == B.INNAPROP_HYPER


@pytest.mark.skipif(not (kernel_available("cpu") and innaprop_kernel),
                    reason="the CPU kernels are not built")
def test_gpu_bench_cpu_smoke_run(tmp_path, capsys, monkeypatch):
    gpu_bench = _gpu_bench_module()
    monkeypatch.setattr(gpu_bench, "free", lambda: None)  # gc.collect() is most of a tiny run
    md, out = tmp_path / "table.md", tmp_path / "results.json"
    rc = gpu_bench.main(["--device", "cpu", "--layers", "1", "--d-model", "16", "--vocab", "32",
                         "--ctx", "8", "--small-count", "10", "--small-numel", "10", "--reps",
                         "1", "--warmup", "1", "--md", str(md), "--json", str(out)])
    assert rc == 0
    table = md.read_text()
    assert "fused INNAprop step (28 B/elem), eager" in table
    assert "AdamW(fused=True) step (28 B/elem), eager" in table
    assert "fused INNAprop time / AdamW(fused) time, eager" in table
    assert "authors' loop time / fused INNAprop time, eager" in table
    for name, (_, _, bpe) in gpu_bench.INNAPROP_STATE_DTYPE_PAIRS.items():
        assert f"INNAprop op alone, {name} ({bpe} B/elem, SR on), eager" in table
    results = json.loads(out.read_text())
    prop = results["innaprop"]
    assert prop["elements"] == sum(math.prod(s) for s in gpu_bench.gpt2_shapes(1, 16, 32, 8))
    assert prop["innaprop_GBps"] == pytest.approx(
        28 * prop["elements"] / prop["innaprop_ms"] / 1e6)
    assert "graph_ms" not in results["innaprop_state_dtypes"]["fp32 θ,g + fp32 state"]  # no GPU
    assert prop["authors_ms"] > 0
    capsys.readouterr()
    assert gpu_bench.main(["--device", "cpu", "--layers", "1", "--d-model", "16", "--vocab", "32",
                           "--ctx", "8", "--small-count", "10", "--small-numel", "10", "--reps",
                           "1", "--warmup", "1", "--no-innaprop", "--no-bf16"]) == 0
    assert "fused INNAprop | skipped: --no-innaprop" in capsys.readouterr().out
