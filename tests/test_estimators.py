"""Gumbel-Rao and ReinMax: conditional Gumbel noise, their gradients, and their place in a search."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import nas
from nas import gumbel
from nas.cli import main
from nas.experiments import reference, step_cost

EULER = 0.5772156649


def test_conditional_gumbel_has_the_right_argmax_and_marginals():
    theta = torch.tensor([0.5, -1.0, 0.2, 1.0])
    gen = torch.Generator().manual_seed(0)
    z = gumbel.conditional_gumbel(theta, torch.tensor(1), 40000, generator=gen)
    assert z.shape == (40000, 4) and bool((z.argmax(-1) == 1).all())
    # the maximum of theta + g is Gumbel around logsumexp(theta): mean lse + Euler's constant
    # (relative to the largest logit, which conditional_gumbel subtracts first)
    assert z[:, 1].mean().item() == pytest.approx(
        torch.logsumexp(theta - theta.max(), 0).item() + EULER, abs=0.03)
    # drawing the index from softmax(theta) first and the noise given it recovers plain Gumbels
    n, total = 60000, torch.zeros(4)
    counts = torch.multinomial(theta.softmax(0), n, replacement=True, generator=gen).bincount(minlength=4)
    for k in range(4):
        total += gumbel.conditional_gumbel(theta, torch.tensor(k), int(counts[k]), generator=gen).sum(0)
    assert torch.allclose(total / n, theta - theta.max() + EULER, atol=0.03)


def test_conditional_gumbel_keeps_masked_entries_out_and_works_per_row():
    theta = torch.tensor([[0.0, float("-inf"), 1.0], [2.0, 0.0, -1.0]])
    z = gumbel.conditional_gumbel(theta, torch.tensor([2, 1]), 500)
    assert bool(torch.isneginf(z[:, 0, 1]).all()) and bool(torch.isfinite(z[:, 1]).all())
    assert z.argmax(-1).eq(torch.tensor([2, 1])).all()


def test_gumbel_rao_is_straight_through_rao_blackwellised():
    """Same mean as straight-through Gumbel-softmax (the noise is averaged out), lower variance:
    6,000 single-draw gradients of v . D at once (a batch of rows). A loss non-linear in D,
    where conditioning matters, is in test_toy_estimators.py."""
    theta, v, tau, n = torch.tensor([0.3, -0.5, 1.0, 0.0]), torch.tensor([1.0, -2.0, 0.5, 3.0]), 0.7, 6000
    gen = torch.Generator().manual_seed(1)
    t = theta.expand(n, 4).clone().requires_grad_(True)
    d, index = gumbel.gumbel_softmax(t, tau, hard=True, generator=gen)
    (d * v).sum().backward()
    st = t.grad
    t = theta.expand(n, 4).clone().requires_grad_(True)
    d = gumbel.gumbel_rao(t, index, tau, samples=8, generator=gen)
    assert torch.equal(d, torch.nn.functional.one_hot(index, 4).float())  # the same one-hot
    (d * v).sum().backward()
    rao = t.grad
    assert torch.allclose(st.mean(0), rao.mean(0), atol=0.04), (st.mean(0), rao.mean(0))
    assert (rao.var(0).sum() < 0.8 * st.var(0).sum()).item()


def test_reinmax_gradient_is_the_papers_formula():
    """Hand-computed: grad = 2 J(pi1) v - J(pi0) v / 2, J(p) = diag(p) - p p^T."""
    theta = torch.tensor([0.2, -0.4, 0.9])
    v, tau, index = torch.tensor([1.5, -1.0, 0.25]), 2.0, torch.tensor(1)
    t = theta.clone().requires_grad_(True)
    d = gumbel.reinmax(t, index, tau)
    assert torch.equal(d, torch.tensor([0.0, 1.0, 0.0]))
    (d * v).sum().backward()
    pi0 = theta.softmax(0)
    pi1 = (torch.tensor([0.0, 1.0, 0.0]) + (theta / tau).softmax(0)) / 2

    def jvp(p):
        return p * v - p * (p * v).sum()

    assert torch.allclose(t.grad, 2 * jvp(pi1) - jvp(pi0) / 2, atol=1e-6)


@pytest.mark.parametrize("estimator", ["gumbel_rao", "reinmax"])
def test_supernet_estimators_run_the_gdas_sample_and_reach_every_logit(estimator):
    opts = {"C": 4, "cells_per_stage": 1}
    x = torch.randn(2, 3, 8, 8)
    ref = nas.build_supernet("nasbench201", 10, "gdas", seed=5, options=opts)
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=5, options=opts)
    model.load_state_dict(ref.state_dict())
    model.estimator, ref.tau, model.tau = estimator, 2.0, 2.0
    for _ in range(3):  # the same one-hot sample as gdas, step after step
        ref.sample()
        model(x).sum().backward()
        assert torch.equal(model.last_index["cell"], ref.last_index["cell"])
    grad = model.arch_logits["cell"].grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).all())


@pytest.mark.parametrize("estimator", ["gumbel_rao", "reinmax"])
def test_a_search_runs_with_each_estimator(tmp_path, tiny_config, capsys, estimator):
    run = tmp_path / "run"
    assert main(["search", "--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                 "--set", f"search.estimator={estimator}", "search.samples=3"]) == 0
    capsys.readouterr()
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert all(math.isfinite(v) for k, t in state.items() if k.startswith("arch_logits")
               for v in t.flatten().tolist())


def test_estimators_need_a_hard_sample():
    with pytest.raises(nas.InputError, match="needs a hard sample"):
        nas.config.build_config({}, ["search.estimator=reinmax", "search.mode=gumbel"])


def _load_script(name: str):
    """A module of scripts/, loaded from its file."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return _load_script("estimators")


def test_the_estimator_script_measures_against_the_exact_gradient(tmp_path, capsys):
    est = _script()
    gen = torch.Generator().manual_seed(0)
    probs = est.problems(gen)
    theta, loss = probs["categorical"]
    f = loss(torch.eye(6).unsqueeze(1)).squeeze()  # the loss of each outcome
    p = theta.softmax(0)
    assert torch.allclose(est.exact_gradient(theta, loss), p * (f - (p * f).sum()), atol=1e-6)
    theta, loss = probs["cell"]
    exact = est.exact_gradient(theta, loss)
    g = est.estimate("reinforce", theta, loss, 1.0, 4000, gen)
    assert g.shape == (4000, 3, 5)
    # unbiased: the mean of 4000 draws is within a few standard errors of the exact gradient
    assert (g.mean(0) - exact).norm() < 4 * (g.var(0).sum() / 4000).sqrt()
    assert est.main(["--draws", "50", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "estimators.md").read_text()
    assert text.count("| toy |") == 6 and "| cell | reinmax |" in text and "| cell | decoupled_f2 |" in text
    from PIL import Image
    assert Image.open(tmp_path / "estimators.png").size[0] > 600


@pytest.mark.parametrize("row", ["gdas+gumbel_rao", "gdas+reinmax", "gdas+reinforce", "gdas+topk2"])
def test_the_benchmark_times_a_step_with_each_estimator(row):
    assert row in step_cost.ROWS
    space = "darts" if row in step_cost.TOPK else "nasbench201"
    r = step_cost.measure(space, row, batch=2, steps=1, warmup=0, device_name="cpu",
                          amp=False, channels_last=False)
    assert r["mode"] == row and r["steps"] == 1 and r["median_s"] > 0
    assert f"| {space} | {row} |" in step_cost.table([r])


def test_the_benchmark_measures_each_row_in_a_process_of_its_own():
    (r,) = step_cost.measure_rows(["nasbench201"], ["gdas", "gdas+topk2"], {  # topk2: DARTS only
        "batch": 2, "steps": 2, "warmup": 0, "device_name": "cpu", "amp": False,
        "channels_last": False, "threads": 1, "image_size": 8,
        "options": {"C": 4, "cells_per_stage": 1}})
    assert (r["space"], r["mode"], r["steps"], r["threads"]) == ("nasbench201", "gdas", 2, 1)
    assert r["median_s"] > 0 and r["peak_mb"] > 0


# -- decoupled temperatures ---------------------------------------------------------------------
def _nb201(seed: int = 3) -> nas.Supernet:
    torch.manual_seed(0)
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=seed,
                               options={"C": 4, "cells_per_stage": 1})
    with torch.no_grad():
        model.arch_logits["cell"].copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)))
    return model


def test_decoupled_temperatures_hand_computed():
    """The one-hot is argmax(theta / tau_f + g); the gradient is that of
    softmax((theta / tau_f + g) / tau_b): J(s) v / (tau_f * tau_b), J(s) = diag(s) - s s^T."""
    model = _nb201()
    model.tau, model.tau_forward = 0.7, 2.5
    theta = model.arch_logits["cell"].detach().clone()
    g = torch.empty_like(theta)  # drawn with the ops in name order: column j is op order[j]'s
    order = nas.supernet.canonical_order(model.op_names["cell"])
    g[:, order] = gumbel.gumbel_noise(theta.shape, generator=model._generator(torch.device("cpu")))
    sample = model.sample()["cell"]
    z = theta / 2.5 + g
    assert sample.index == z.argmax(-1).tolist()
    v = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    (sample.weights * v).sum().backward()
    s = (z / 0.7).softmax(-1)
    expected = (s * v - s * (s * v).sum(-1, keepdim=True)) / (2.5 * 0.7)
    assert torch.allclose(model.arch_logits["cell"].grad, expected, atol=1e-6)


def test_the_forward_temperature_sets_the_sampled_distribution():
    model = _nb201(seed=5)
    theta = model.arch_logits["cell"].detach()
    for tau_f in (1.0, 0.5, 3.0):
        model.tau_forward = tau_f
        with torch.no_grad():
            idx = torch.stack([model.sample()["cell"].weights.argmax(-1) for _ in range(3000)])
        freq = F.one_hot(idx, 5).float().mean(0)
        exact = (theta / tau_f).softmax(-1)
        assert (freq - exact).abs().max() < 4.5 * math.sqrt(0.25 / 3000), tau_f
    # REINFORCE scores the sample under the distribution it was drawn from
    index = {"cell": idx[-1]}
    expected = (theta / 3.0).log_softmax(-1).gather(1, idx[-1].unsqueeze(1)).sum()
    assert torch.allclose(model.log_prob(index), expected)


def test_forward_temperature_one_is_gdas(tmp_path, tiny_config, capsys):
    """A forward temperature scheduled at 1 (checkpointed, logged) samples exactly what gdas does."""
    runs = {}
    for name, extra in (("gdas", ["seed=0"]), ("tau_f_1", ["search.tau_forward.schedule=linear",
                                                                  "search.tau_forward.max=1.0"])):
        runs[name] = tmp_path / name
        assert main(["search", "--config", str(tiny_config), "--run-dir", str(runs[name]),
                     "--quiet", "--set", *extra]) == 0
    capsys.readouterr()
    a, b = (torch.load(runs[n] / "checkpoint.pt", weights_only=False) for n in runs)
    assert "tau_forward" not in a and b["tau_forward"]["last_step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if k.startswith("arch_"))


def test_forward_temperature_schedule_is_logged(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert main(["search", "--config", str(tiny_config), "--run-dir", str(run), "--quiet", "--set",
                 "search.tau_forward.schedule=linear", "search.tau_forward.max=3",
                 "search.tau_forward.min=0.5"]) == 0
    capsys.readouterr()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["tau_forward"] for l in lines] == [3.0, 0.5] and [l["tau"] for l in lines][0] == 10.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run))
    events.Reload()
    assert [round(e.value, 4) for e in events.Scalars("tau_forward")] == [3.0, 0.5]


@pytest.mark.parametrize("overrides, message", [
    (["search.tau_forward.max=2", "search.mode=softmax"], "forward temperature needs a hard sample"),
    (["search.tau_forward.min=0"], "search.tau_forward.min: must be positive"),
    (["search.tau_forward.schedule=linear", "search.tau_forward.max=0.5"],
     "search.tau_forward.max: must be >= search.tau_forward.min"),
])
def test_forward_temperature_is_checked(overrides, message):
    with pytest.raises(nas.InputError, match=message):
        nas.config.build_config({}, overrides)


def test_the_interleaved_benchmark_pins_the_same_subnetworks_for_every_row(tmp_path, capsys):
    bench = reference
    model = nas.build_supernet("darts", 10, "gdas", seed=3, options={"C": 4, "cells": 3})
    model.train()
    ops = model.op_names["normal"]
    index = {"normal": [i % 8 for i in range(14)], "reduce": [(3 * i) % 8 for i in range(14)]}
    bench.pin(model.arch_logits, ops, index)
    for tau in (10.0, 0.1):  # no Gumbel draw overturns the pinned op
        model.tau = tau
        for _ in range(20):
            assert {k: s.index for k, s in model.sample().items()} == index
    # the reference names the separable convolutions otherwise: columns follow its names
    logits = {"normal": torch.zeros(14, 8)}
    names = ("none", "skip_connect", "dua_sepc_3x3", "dua_sepc_5x5", "dil_sepc_3x3",
             "dil_sepc_5x5", "avg_pool_3x3", "max_pool_3x3")
    bench.pin(logits, ops, {"normal": [ops.index("sep_conv_5x5")] * 14}, names)
    assert (logits["normal"].argmax(1) == 3).all()

    r = bench.interleaved("nasbench201", None, batch=2, rounds=2, samples=2, device_name="cpu",
                          amp=False, channels_last=False, options={"C": 4, "cells_per_stage": 1})
    assert set(r["median_s"]) == {"lower", "gdas", "reference"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["times_s"].values())
    assert "| nasbench201 (C=4, cells_per_stage=1) |" in bench.interleaved_table([r])
    assert "networks in contiguous memory format" in bench.interleaved_table([r])

    capsys.readouterr()
    bench = _load_script("benchmark")  # the command
    assert bench.main(["--reference", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no xautodl/models/cell_searchs/search_model_gdas.py" in err
    assert not list(tmp_path.iterdir())  # nothing written
    assert bench.main(["--device", "tpu", "--interleave", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'tpu'" in err
    assert not list(tmp_path.iterdir())
