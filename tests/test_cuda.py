"""The GPU paths: bf16 autocast, channels-last, data on the device, resume, retraining, edge
top-k, the estimators, the budget, export and the host syncs of a step, on a CUDA device.

Marked ``cuda``: they run on CUDA where there is a device, else on the CPU (see conftest), so
that CI, on CPUs, runs them too. ``scripts/gpu_check.py`` runs them on a GPU. Tests record what they found (``record_property``), which the
check puts in its report.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import nas
import nas.lifecycle
import nas.search
from nas.cli import build_parser, main
from nas.config import build_config
from nas.runtime import in_layout
from nas.search import arch_step, search, weight_step
from nas.steps import draw_step_samples

from conftest import DARTS_V2, TINY_SEARCH, cuda_tests_device

# cuBLAS reads this when CUDA first runs it (after collection, which imports this module):
# deterministic matrix products for the resume test
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.cuda, pytest.mark.slow]  # slow: about 35 s on 2 CPU cores in all

NB201 = {"C": 4, "cells_per_stage": 1}
NONDETERMINISTIC = "does not have a deterministic implementation"


@pytest.fixture(scope="module")
def device() -> torch.device:
    return cuda_tests_device()


def tiny(cifar_root: Path, device: torch.device, overrides: list[str] = (), space: str = "darts"):
    """The tiny search of conftest (DARTS: C=4, 3 cells; NAS-Bench-201: C=4, one cell per stage;
    8x8 images, 2 steps) on ``device``, one epoch."""
    cfg = {**TINY_SEARCH, "device": str(device),
           "data": {**TINY_SEARCH["data"], "root": str(cifar_root)},
           "search": {**TINY_SEARCH["search"], "epochs": 1}}
    if space == "nasbench201":
        cfg.update(space=space, supernet=NB201, network=NB201)
    return build_config(cfg, list(overrides))


def checked_search(cfg, run_dir: Path) -> dict:
    """Run a search; check its losses are finite and both optimisers stepped on finite gradients.
    Returns its checkpoint."""
    result = search(cfg, run_dir, quiet=True)
    assert math.isfinite(result.metrics["train_loss"]) and math.isfinite(result.metrics["arch_loss"])
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    arch = state["a_opt"]["state"]
    assert len(arch) == len(state["a_opt"]["param_groups"][0]["params"])  # every logit tensor
    for s in arch.values():  # the architecture steps ran, with gradients that reached the logits
        assert bool(torch.isfinite(s["exp_avg"]).all()) and bool((s["exp_avg"] != 0).any())
    weights = [s["momentum_buffer"] for s in state["w_opt"]["state"].values()]
    assert weights and all(bool(torch.isfinite(b).all()) for b in weights)
    nas.Genotype.load(run_dir / "genotype.json")
    return state


# -- precision and memory format ----------------------------------------------------------------
def gdas_step(device: torch.device, amp: bool, channels_last: bool) -> dict:
    """One weight step and one architecture step of the same NAS-Bench-201 supernet, samples
    and batch, in the given precision and memory format: what they computed and how."""
    torch.manual_seed(0)
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=0, options=NB201)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    seen: list[tuple[torch.dtype, bool]] = []

    def record(module, inputs, out):
        seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(record)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 8, 8, generator=gen).to(device)
    y = torch.randint(0, 10, (8,), generator=gen).to(device)
    x = in_layout(x, channels_last)
    # both steps read their gradients at the initial weights and logits (learning rates 0), so
    # that only the precision and the layout differ between two calls
    a_opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.0)
    arch_loss, _ = arch_step(model, a_opt, x, y, amp)
    loss, _ = weight_step(model, w_opt, x, y, 5.0, amp)
    conv = model.stem[0]
    return {"loss": float(loss), "arch_loss": float(arch_loss),
            "conv_grad": conv.weight.grad.detach().float().cpu(),
            "arch_grad": model.arch_logits["cell"].grad.detach().float().cpu(),
            "grad_dtype": model.arch_logits["cell"].grad.dtype, "seen": seen}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("amp,channels_last", [(False, True), (True, False), (True, True)],
                         ids=["fp32-channels-last", "bf16", "bf16-channels-last"])
def test_a_gdas_step_in_bf16_and_channels_last_matches_float32(device, amp, channels_last,
                                                                record_property):
    """bf16 autocast runs the convolutions in bf16 and channels-last keeps their outputs in that
    format, and both compute what float32 in the contiguous format does, within rounding:
    relative 2e-2 (loss) and 0.4 (gradients, by norm: 0.21 and 0.13 measured on a CPU, for the
    stem's weights and the logits of this tiny supernet at its initial weights) in bf16; 1e-3 and
    2e-2 in float32, where CUDA convolutions may use TF32."""
    ref = gdas_step(device, False, False)
    got = gdas_step(device, amp, channels_last)
    assert got["seen"] and {dtype for dtype, _ in got["seen"]} == {
        torch.bfloat16 if amp else torch.float32}
    if channels_last:
        assert all(cl for _, cl in got["seen"])
    assert got["grad_dtype"] == torch.float32  # the logits stay float32 under autocast
    loss_tol, grad_tol = (2e-2, 0.4) if amp else (1e-3, 2e-2)
    for key in ("loss", "arch_loss"):
        assert math.isfinite(got[key]) and abs(got[key] - ref[key]) <= loss_tol * abs(ref[key])
    for key in ("conv_grad", "arch_grad"):
        assert bool(torch.isfinite(got[key]).all()) and ref[key].norm() > 0
        error = relative(got[key], ref[key])
        record_property(f"{key}_relative_error", f"{error:.2e}")
        assert error <= grad_tol, f"{key}: relative error {error:.3g} > {grad_tol}"


@pytest.mark.parametrize("amp,channels_last,on_device", [
    (False, False, True), (True, True, True), (False, False, False)],
    ids=["fp32-data-on-device", "bf16-channels-last-data-on-device", "fp32-dataloader"])
def test_a_search_runs_on_the_device(tmp_path, cifar_root, device, monkeypatch, amp,
                                     channels_last, on_device):
    seen = []

    class Spy(nas.search.Batches):  # where the search's batches keep their images
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.on_device, self.images.device.type))

    monkeypatch.setattr(nas.search, "Batches", Spy)
    cfg = tiny(cifar_root, device, [f"search.amp={amp}", f"search.channels_last={channels_last}",
                                    f"data.on_device={on_device}"])
    checked_search(cfg, tmp_path / "run")
    where = device.type if on_device else "cpu"
    assert seen == [(on_device, where)] * 2  # the weights' and the architecture's batches


# -- resume ------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic():
    """``torch.use_deterministic_algorithms`` on (warning, not failing, where an op has no
    deterministic implementation); yields the warnings raised meanwhile."""
    was, warn_only = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def saved_model(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    return {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}


def test_resume_equals_straight_through_on_the_device(tmp_path, cifar_root, device, monkeypatch,
                                                     capsys, record_property):
    """Bitwise equal when no op of the run lacks a deterministic implementation on the device;
    otherwise within 1e-5 + 1e-3 x |value| (absolute + relative), and the same genotype."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SEARCH, "device": str(device), "data": {
        **TINY_SEARCH["data"], "root": str(cifar_root)}}))
    args = ["search", "--config", str(path), "--quiet"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    real_save = nas.lifecycle.save_checkpoint

    def save_then_interrupt(state, where):  # Ctrl-C right after the first epoch's checkpoint
        real_save(state, where)
        raise KeyboardInterrupt

    with deterministic() as caught:
        assert main([*args, "--run-dir", str(straight)]) == 0
        monkeypatch.setattr(nas.lifecycle, "save_checkpoint", save_then_interrupt)
        assert main([*args, "--run-dir", str(broken)]) == 130
        monkeypatch.setattr(nas.lifecycle, "save_checkpoint", real_save)
        assert main(["search", "--resume", str(broken), "--quiet"]) == 0
    capsys.readouterr()
    ops = sorted({str(w.message).split(NONDETERMINISTIC)[0].strip() for w in caught
                  if NONDETERMINISTIC in str(w.message)})
    a, b = saved_model(straight), saved_model(broken)
    assert a.keys() == b.keys()
    bitwise = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    record_property("resume", "bitwise equal" if bitwise else f"max difference {diff:.2e}")
    record_property("nondeterministic_ops", ", ".join(ops) or "none")
    if not ops:
        assert bitwise, f"no nondeterministic op, yet the runs differ by up to {diff:.3g}"
    else:
        assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-3, atol=1e-5) for k in a)
    assert nas.Genotype.load(straight / "genotype.json") == nas.Genotype.load(broken / "genotype.json")


# -- retraining, edge top-k, estimators, budget --------------------------------------------------
def test_retraining_a_few_steps_on_the_device(tmp_path, cifar_root, device):
    from nas.train import evaluate_checkpoint, train

    cfg = tiny(cifar_root, device, ["train.epochs=1", "train.amp=true",
                                    "train.channels_last=true"])
    result = train(cfg, nas.parse_genotype(DARTS_V2), tmp_path / "run", quiet=True)
    assert math.isfinite(result.test_loss) and 0 <= result.test_acc <= 100
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert buffers and all(bool(torch.isfinite(b).all()) for b in buffers)
    assert any(bool((b != 0).any()) for b in buffers)
    again = evaluate_checkpoint(tmp_path / "run", device=str(device))
    assert again["test_loss"] == pytest.approx(result.test_loss, rel=1e-3)
    assert abs(again["test_acc"] - result.test_acc) <= 100 / again["images"] + 1e-9  # one image


def test_edge_topk_search_on_the_device(tmp_path, cifar_root, device):
    state = checked_search(tiny(cifar_root, device, ["search.edge_topk=2"]), tmp_path / "run")
    assert {k for k in state["model"] if k.startswith("edge_logits.")} == {
        "edge_logits.normal", "edge_logits.reduce"}
    assert len(state["a_opt"]["state"]) == 4  # op logits and edge logits of both cell kinds


def test_each_estimator_on_the_device(tmp_path, cifar_root, device):
    """Each estimator runs on the device and is the one applied: on the same seed, batches and
    weights, the architecture logits each ends with differ from every other's."""
    logits = {}
    for estimator in ("gdas", "gumbel_rao", "reinmax", "reinforce"):
        state = checked_search(tiny(cifar_root, device, [f"search.estimator={estimator}"]),
                               tmp_path / estimator)
        assert state["config"]["search"]["estimator"] == estimator
        logits[estimator] = torch.cat([v.flatten() for k, v in sorted(state["model"].items())
                                       if k.startswith("arch_logits.")])
    for a, b in itertools.combinations(logits, 2):
        assert not torch.allclose(logits[a], logits[b], rtol=0, atol=1e-7), (a, b)


def test_a_budget_on_the_device(tmp_path, cifar_root, device, monkeypatch, record_property):
    """Parameters, multiply-adds and latency bounds at once, on NAS-Bench-201 (the DARTS
    derivation under three bounds takes tens of seconds on a CPU); the latency table is measured
    on the device, and the derived network fits every bound."""
    from nas import cost

    if device.type == "cpu":  # the dry run: the same path with 2 timed runs per op, not 30
        real = cost.measure_latency
        monkeypatch.setattr(cost, "measure_latency",
                            lambda module, x, runs=30, warmup=5: real(module, x, 2, 1))
    model = nas.build_supernet("nasbench201", 10, "gdas", 0, NB201)
    table = cost.build_cost_table(model, lambda g: nas.build_network("nasbench201", g, 10, NB201),
                                  8, ["params", "macs"], torch.device("cpu"), "nasbench201")
    conv3 = nas.parse_genotype("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                               "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    least, most = table.minimum(), table.of(conv3)
    # a tenth of the way from the smallest network to the largest: uniform logits are over it
    limits = {m: least[m] + 0.1 * (most[m] - least[m]) for m in ("params", "macs")}
    limits["latency_ms"] = 1e3
    cfg = tiny(cifar_root, device, [*(f"search.budget.{k}={v}" for k, v in limits.items()),
                                    "search.budget.dual_lr=0.5"], space="nasbench201")
    result = search(cfg, tmp_path / "run", quiet=True)
    assert result.cost is not None and result.budget == pytest.approx(limits)
    for metric, limit in limits.items():
        assert 0 <= result.cost[metric] <= limit, (metric, result.cost[metric], limit)
    how = json.loads((tmp_path / "run" / "costs.json").read_text())["how"]["latency_ms"]
    assert f"measured on {device.type}" in how
    record_property("latency_ms", f"{result.cost['latency_ms']:.3f}")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert any(v > 0 for v in state["budget"]["multipliers"].values())  # the bounds pushed back


# -- export ------------------------------------------------------------------------------------
def cli_verbs() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


@pytest.mark.parametrize("fmt", ["torchscript", "exported"])
def test_export_of_a_network_trained_on_the_device(tmp_path, cifar_root, device, fmt):
    if "export" not in cli_verbs():
        pytest.skip("not present: this tree has no `nas export`")
    from nas.train import train

    cfg = tiny(cifar_root, device, ["train.epochs=1"])
    train(cfg, nas.parse_genotype(DARTS_V2), tmp_path / "run", quiet=True)
    out = tmp_path / f"net.{fmt}"
    assert main(["export", str(tmp_path / "run"), "--format", fmt, "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0


# -- host syncs --------------------------------------------------------------------------------
def test_a_gdas_step_syncs_with_the_host_once(device, record_property):
    """Counted by CUDA's sync debug mode: a step's two samples are drawn together and read once
    (``.tolist()`` in ``Supernet.drawing_ahead``), and nothing else in a weight step plus an
    architecture step waits."""
    if device.type != "cuda":
        pytest.skip("CUDA's sync debug mode needs a CUDA device")
    torch.manual_seed(0)
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=0, options=NB201).to(device).train()
    x, y = torch.randn(8, 3, 8, 8, device=device), torch.randint(0, 10, (8,), device=device)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, nesterov=True)
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999))

    def step() -> None:  # as nas.search.run_epoch takes one
        draw_step_samples(model, None, False, False, device)
        weight_step(model, w_opt, x, y, 5.0, False)
        arch_step(model, a_opt, x, y, False)
        model.drop_drawn()

    step()  # the first steps allocate; count the second
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught
             if "synchroniz" in str(w.message)]
    record_property("syncs_per_step", f"{len(syncs)} ({', '.join(syncs)})")
    assert len(syncs) <= 1, syncs
    assert all(s.startswith("supernet.py:") for s in syncs), syncs
