"""Cost-aware search: exact costs, the per-op table, the constrained derivation, the constraint."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
import yaml

import nas
from nas.budget import BudgetConstraint, check_feasible, derive_within, fits
from nas.config import build_config
from nas.cost import build_cost_table, count_cost, count_macs, format_cost
from nas.errors import InputError
from nas.genotype import Genotype
from nas.spaces import build_network, build_supernet

from conftest import ROOT, TINY_SEARCH

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def nb201_table(C: int = 4, per_stage: int = 1, size: int = 8, metrics=("params", "macs")):
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    table = build_cost_table(model, lambda g: build_network(
        "nasbench201", g, 10, {"C": C, "cells_per_stage": per_stage}), size, list(metrics),
        torch.device("cpu"), "nasbench201")
    return model, table


def nb201_cell(ops: list[str]) -> Genotype:
    it = iter(ops)
    return Genotype({"cell": [[(next(it), j) for j in range(i + 1)] for i in range(3)]},
                    space="nasbench201")


def test_multiply_adds_of_a_conv_by_hand():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 6, 6)) == 8 * 36 * 3 * 9
    assert count_macs(conv, (4, 3, 6, 6)) == 8 * 36 * 3 * 9  # per image


def test_nb201_conv3x3_edge_costs_what_its_convs_do():
    _, table = nb201_table(C=4, per_stage=2, size=8)
    ops = list(NB201_OPS)
    # a nor_conv_3x3 edge: a C->C 3x3 conv in every cell of every stage (C, 2C, 4C channels;
    # 8, 4, 2 pixels), two cells per stage; its batch norm has 2C affine parameters
    macs = sum(2 * (c * c * 9) * (s * s) for c, s in ((4, 8), (8, 4), (16, 2)))
    params = sum(2 * (c * c * 9 + 2 * c) for c in (4, 8, 16))
    for e in range(6):
        assert table.ops["macs"]["cell"][e, ops.index("nor_conv_3x3")] == macs
        assert table.ops["params"]["cell"][e, ops.index("nor_conv_3x3")] == params
        for free in ("none", "skip_connect", "avg_pool_3x3"):
            assert table.ops["macs"]["cell"][e, ops.index(free)] == 0


def test_the_table_adds_up_to_the_counted_network_for_random_cells():
    _, table = nb201_table(C=4, per_stage=2, size=8)
    rng = torch.Generator().manual_seed(0)
    for _ in range(6):
        ops = [NB201_OPS[i] for i in torch.randint(5, (6,), generator=rng).tolist()]
        g = nb201_cell(ops)
        net = build_network("nasbench201", g, 10, {"C": 4, "cells_per_stage": 2})
        assert table.of(g) == {k: float(v) for k, v in count_cost(net, 8).items()}


def test_darts_table_matches_published_darts_v2_count():
    model = build_supernet("darts", 10, "gdas", 0, {"C": 4, "cells": 3})
    table = build_cost_table(model, lambda g: build_network("darts", g, 10, {"C": 36, "cells": 20}),
                             32, ["params"], torch.device("cpu"), "darts")
    assert table.of(nas.parse_genotype("DARTS_V2"))["params"] == 3_349_342  # as DARTS counts it


def brute_force(model, table, limits):
    """The best NB201 cell within limits by enumerating all 5^6 of them."""
    logp = model.probabilities()["cell"].double().log()
    best = None
    for combo in itertools.product(range(5), repeat=6):
        g = nb201_cell([NB201_OPS[o] for o in combo])
        score = sum(float(logp[e, o]) for e, o in enumerate(combo))
        if fits(table.of(g), limits) and (best is None or score > best[0] + 1e-12):
            best = (score, g)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nb201_derivation_is_the_most_probable_cell_within_budget(seed):
    model, table = nb201_table()
    largest = table.of(nb201_cell(["nor_conv_3x3"] * 6))
    smallest = table.base
    torch.manual_seed(seed)
    with torch.no_grad():
        model.arch_logits["cell"].copy_(2 * torch.randn(6, 5))
        model.arch_logits["cell"][:, NB201_OPS.index("nor_conv_3x3")] += 5  # the largest cell is likely
    for frac in (0.2, 0.45):
        limits = {"macs": smallest["macs"] + frac * (largest["macs"] - smallest["macs"])}
        if seed == 2:
            limits["params"] = smallest["params"] + 0.3 * (largest["params"] - smallest["params"])
        g = derive_within(model, table, limits)
        assert fits(table.of(g), limits)
        assert not fits(table.of(model.genotype()), limits)  # the budget binds
        assert (g.space, g.inputs, g.concat) == ("nasbench201", {"cell": 1}, {})
        score, best = brute_force(model, table, limits)
        assert g.cells == best.cells


def small_darts():
    """A one-kind DARTS-family space small enough to enumerate: 3 ops, fixed reduction; its
    ops, supernet (seeded logits), params table and a budget 60% of the way down to the least."""
    ops = ["none", "skip_connect", "sep_conv_3x3"]
    model = build_supernet("darts", 10, "gdas", 0, {"C": 4, "cells": 3, "ops": ops,
                                                      "fixed_reduction": True})
    table = build_cost_table(model, lambda g: build_network("darts", g, 10, {"C": 4, "cells": 3}),
                             8, ["params"], torch.device("cpu"), "darts")
    torch.manual_seed(3)
    with torch.no_grad():
        model.arch_logits["normal"].copy_(torch.randn(14, 3))
        model.arch_logits["normal"][:, 2] += 1.5
    free = table.of(model.genotype())["params"]
    return ops, model, table, {"params": free - 0.6 * (free - table.minimum()["params"])}


@pytest.mark.parametrize("edge_topk", [0, 2])
def test_darts_derivation_keeps_two_inputs_and_is_optimal(edge_topk):
    ops, model, table, limits = small_darts()
    edge_logp = torch.zeros(14)
    if edge_topk:  # the inputs' own probabilities add to the score of the inputs a node keeps
        model.enable_edge_topk(edge_topk)
        with torch.no_grad():
            for v in model.edge_logits.values():
                v.copy_(3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4)))
        edge_logp = model.edge_probabilities()["normal"].log()
    g = derive_within(model, table, limits)
    assert all(len(node) == 2 for node in g.cells["normal"])
    assert fits(table.of(g), limits)
    assert (g.concat, g.inputs) == (model.genotype().concat, model.genotype().inputs)
    logp = model.probabilities()["normal"].log() + edge_logp[:, None]
    # enumerate: each node keeps 2 inputs, each with skip_connect or sep_conv_3x3
    per_node, start = [], 0
    for node in range(4):
        count = 2 + node
        options = []
        for pair in itertools.combinations(range(count), 2):
            for choice in itertools.product((1, 2), repeat=2):
                score = sum(float(logp[start + j, o]) for j, o in zip(pair, choice))
                cost = sum(float(table.ops["params"]["normal"][start + j, o]) for j, o in zip(pair, choice))
                options.append((score, cost, sorted((ops[o], j) for j, o in zip(pair, choice))))
        per_node.append(options)
        start += count
    best = max((opt for opt in itertools.product(*per_node)
                if table.base["params"] + sum(o[1] for o in opt) <= limits["params"]),
               key=lambda opt: sum(o[0] for o in opt))
    assert [sorted(node) for node in g.cells["normal"]] == [o[2] for o in best]
    start = 0
    for node, edges in enumerate(g.cells["normal"]):  # the more probable kept edge first
        first, second = (float(logp[start + j, ops.index(o)]) for o, j in edges)
        assert first >= second
        start += 2 + node


def test_expected_cost_is_the_table_mean_and_its_gradient_is_exact():
    model, table = nb201_table()
    with torch.no_grad():  # seeded: float32 finite differences of a 36k total miss for some logits
        model.arch_logits["cell"].copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))
    p = model.probabilities()["cell"].double()
    exp = table.expected(model)["macs"]
    by_hand = table.base["macs"] + float((p * table.ops["macs"]["cell"].double()).sum())
    assert exp.item() == pytest.approx(by_hand, rel=1e-5)
    assert nas.budget.expected_cost(table, model) == {m: float(v) for m, v in table.expected(model).items()}
    grad, = torch.autograd.grad(exp, model.arch_logits["cell"])
    eps = 1e-3
    for e, o in [(0, 3), (4, 2), (5, 0)]:
        with torch.no_grad():
            model.arch_logits["cell"][e, o] += eps
            up = float(table.expected(model)["macs"])
            model.arch_logits["cell"][e, o] -= 2 * eps
            down = float(table.expected(model)["macs"])
            model.arch_logits["cell"][e, o] += eps
        assert float(grad[e, o]) == pytest.approx((up - down) / (2 * eps), rel=2e-2)


def test_multipliers_rise_over_budget_and_fall_back_to_zero():
    model, table = nb201_table()
    with torch.no_grad():
        model.arch_logits["cell"].zero_()
        model.arch_logits["cell"][:, 3] = 10.0  # almost surely the largest cell
    limit = table.expected(model)["macs"].item() / 2
    c = BudgetConstraint(table, {"macs": limit}, dual_lr=0.1)
    penalty = c.penalty(model)
    assert penalty.item() == 0.0  # lambda starts at 0
    c.update()
    assert c.values()["macs"] == pytest.approx(0.1 * (2.0 - 1.0), rel=1e-4)
    grad, = torch.autograd.grad(c.penalty(model), model.arch_logits["cell"])
    assert float(grad[0, 3]) > 0  # descending the penalty makes the conv less likely
    c.update()
    with torch.no_grad():
        model.arch_logits["cell"][:, 3] = -10.0  # now far under budget
    for _ in range(10):
        c.penalty(model)
        c.update()
    assert c.values()["macs"] == 0.0
    state = c.state_dict()
    other = BudgetConstraint(table, {"macs": limit}, dual_lr=0.1)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.values() == c.values()


def budget_config(tmp_path, cifar_root, **budget):
    cfg = {"space": "nasbench201", "data": {"root": str(cifar_root), "image_size": 8, "pad": 1,
                                           "workers": 0},
           "supernet": {"C": 4, "cells_per_stage": 1},
           "network": {"C": 4, "cells_per_stage": 1},
           "search": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 2, "arch_lr": 0.5,
                      "budget": budget}}
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def nas_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                                        "OMP_NUM_THREADS": "1"})


def test_search_under_budget_keeps_every_epoch_within_budget(tmp_path, cifar_root):
    _, table = nb201_table(C=4, per_stage=1, size=8)
    limit = table.base["macs"] + float(table.ops["macs"]["cell"][0, 3])  # one 3x3 conv
    cfg = budget_config(tmp_path, cifar_root, macs=limit)
    straight = tmp_path / "straight"
    out = nas_cli("search", "--config", str(cfg), "--run-dir", str(straight))
    assert out.returncode == 0, out.stderr
    assert "budget: macs <=" in out.stdout + out.stderr
    assert "cost of the network:" in out.stdout and "(budget" in out.stdout
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["cost_macs"] <= limit
        assert fits(table.of(nas.parse_genotype(line["genotype"])), {"macs": limit})
        assert line["cost_macs"] == table.of(nas.parse_genotype(line["genotype"]))["macs"]
    assert any(line["budget_lambda_macs"] > 0 for line in lines)  # uniform cells are over budget
    assert json.loads((straight / "costs.json").read_text())["base"]["macs"] == table.base["macs"]
    # resuming exactly: tests/test_cli.py::test_interrupted_then_resumed_equals_straight_through[budget]


def test_a_budget_below_the_smallest_network_fails_before_the_run(tmp_path, cifar_root):
    cfg = budget_config(tmp_path, cifar_root, params=100)
    run = tmp_path / "run"
    out = nas_cli("search", "--config", str(cfg), "--run-dir", str(run))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "smallest network has" in out.stderr
    assert "search.budget.params" in out.stderr and not run.exists()


@pytest.mark.parametrize("value", ["-5", "0", "abc"])
def test_bad_budget_values_are_one_line(tmp_path, cifar_root, value):
    cfg = budget_config(tmp_path, cifar_root)
    out = nas_cli("search", "--config", str(cfg), "--run-dir", str(tmp_path / "r"),
                  "--set", f"search.budget.macs={value}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "search.budget.macs" in out.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("mode,estimator", [("gdas", "gdas"), ("gdas", "reinforce"),
                                            ("gdas", "gumbel_rao"), ("st", "reinmax"),
                                            ("gumbel", "gdas"), ("softmax", "gdas")])
def test_the_budget_moves_the_logits_with_every_estimator(mode, estimator, cifar_root):
    """The same batch and sample: a positive multiplier changes the architecture gradient by
    exactly the penalty's gradient."""
    from nas.data import Batches, load_split
    from nas.search import arch_step, reinforce_step

    cfg = build_config({"space": "nasbench201", "data": {"root": str(cifar_root), "image_size": 8},
                        "supernet": {"C": 4, "cells_per_stage": 1},
                        "network": {"C": 4, "cells_per_stage": 1},
                        "search": {"mode": mode, "estimator": estimator, "budget": {"macs": 1e5}}})
    data = load_split(cfg.data, train=True)
    x, y = next(iter(Batches(data, 8, train=False, device=torch.device("cpu"))))
    grads = []
    _, table = nb201_table()
    for lam in (0.0, 3.0):
        torch.manual_seed(0)
        model = build_supernet("nasbench201", 10, mode, 0, cfg.supernet)
        model.estimator = estimator if estimator in ("gumbel_rao", "reinmax") else "gdas"
        c = BudgetConstraint(table, {"macs": 1e5}, 0.1)
        c.multipliers.fill_(lam)
        opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)  # keep the logits: read the grads
        if estimator == "reinforce":
            reinforce_step(model, opt, x, y, 3, False, lambda: c.penalty(model))
        else:
            arch_step(model, opt, x, y, False, lambda: c.penalty(model))
        grads.append(model.arch_logits["cell"].grad.clone())
        penalty_grad, = torch.autograd.grad(c.penalty(model), model.arch_logits["cell"])
    assert torch.allclose(grads[1] - grads[0], penalty_grad, atol=1e-5)
    assert penalty_grad.abs().max() > 0


def test_darts_quick_search_with_a_params_budget_prints_the_count_under_it(tmp_path, cifar_root):
    cfg = {**TINY_SEARCH, "data": {**TINY_SEARCH["data"], "root": str(cifar_root)},
           "network": {"C": 36, "cells": 20, "auxiliary": True}}
    cfg["search"] = {**cfg["search"], "weight_sampling": "uniform", "estimator": "reinforce",
                     "budget": {"params": 2.0e6, "image_size": 32}}
    path = tmp_path / "darts.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = nas_cli("search", "--config", str(path), "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("cost of the network:"))
    count = int(line.split(":")[1].split(" parameters")[0].replace(",", ""))
    assert count <= 2.0e6 and "(budget 2,000,000" in line
    g = Genotype.load(tmp_path / "run" / "genotype.json")
    net = build_network("darts", g, 10, {"C": 36, "cells": 20, "auxiliary": True})
    assert nas.count_parameters(net) == count


def test_latency_table_is_measured_once_and_reused_on_resume(tmp_path, cifar_root, monkeypatch):
    from nas import cost
    from nas.config import load_config
    from nas.search import search

    calls = []
    real = cost.measure_latency
    monkeypatch.setattr(cost, "measure_latency",
                        lambda module, x, runs=30, warmup=5: calls.append(1) or real(module, x, 3, 1))
    path = budget_config(tmp_path, cifar_root, latency_ms=1e3)
    cfg = load_config(path, ["search.epochs=1"])
    result = search(cfg, tmp_path / "run", quiet=True)
    assert calls and result.cost["latency_ms"] <= 1e3
    saved = json.loads((tmp_path / "run" / "costs.json").read_text())
    assert "latency_ms" in saved["base"] and "measured on cpu" in saved["how"]["latency_ms"]
    calls.clear()
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace("epochs: 1", "epochs: 2", 1))
    from nas.config import read_yaml
    result = search(build_config(read_yaml(tmp_path / "run" / "config.yaml")), tmp_path / "run",
                    resume=True, quiet=True)
    assert calls == []  # the saved table's numbers, not a new measurement
    lat = saved["ops"]["latency_ms"]["cell"]
    edges = [(op, src) for node in result.genotype.cells["cell"] for op, src in node]
    by_table = saved["base"]["latency_ms"] + sum(
        lat[e][NB201_OPS.index(op)] for e, (op, _) in enumerate(edges))
    assert result.cost["latency_ms"] == pytest.approx(by_table, rel=1e-5)


def test_the_latency_fit_never_prices_a_network_below_zero():
    from nas.cost import _calibrate
    assert _calibrate([1.0, 2.0, 3.0], [2.0, 3.5, 5.0]) == pytest.approx((1.5, 0.5))  # a free fit
    # timings whose line crosses zero above the smallest probe (base -1.1): fit without a base
    scale, base = _calibrate([1.0, 2.0, 3.0], [0.2, 1.5, 2.8])
    assert base == 0.0 and scale == pytest.approx((0.2 + 3.0 + 8.4) / 14)
    scale, base = _calibrate([1.0, 2.0], [0.5, 1.2])  # two probes: scale 1, the median rest < 0
    assert base == 0.0 and scale == pytest.approx((0.5 + 2.4) / 5)


def test_genotype_show_prints_the_cost(tmp_path):
    out = nas_cli("genotype", "show", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                  "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "--set", "space=nasbench201",
                  "network.C=16", "network.cells_per_stage=5")
    assert out.returncode == 0, out.stderr
    assert "1,531,546 parameters, 220.1M multiply-adds" in out.stdout


class _GrowsWithConvolutions(torch.nn.Module):
    """An NB201 network plus a parameter-free 1x1 convolution of the input, 3 -> 3 channels
    per convolution edge of its cell: multiply-adds that are not a sum over the edges."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.net = build_network("nasbench201", genotype, 10, {"C": 4, "cells_per_stage": 1})
        convs = sum(op.startswith("nor_conv") for node in genotype.cells["cell"] for op, _ in node)
        self.register_buffer("kernel", torch.ones(3, 3, 1, 1) / 3)
        self.repeat = 1 + convs * convs  # quadratic in the edges: no per-edge table can hold it

    def forward(self, x):
        for _ in range(self.repeat):
            x = torch.nn.functional.conv2d(x, self.kernel)
        return self.net(x)


def test_multiply_adds_that_do_not_add_up_fail_in_one_line():
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    with pytest.raises(nas.InputError, match="multiply-adds of this space's network are not a sum"):
        build_cost_table(model, _GrowsWithConvolutions, 8, ["macs"], torch.device("cpu"),
                         "nasbench201")
    table = build_cost_table(model, _GrowsWithConvolutions, 8, ["params"], torch.device("cpu"),
                             "nasbench201")  # its parameters do add up
    assert table.base["params"] > 0


def test_check_feasible_accepts_the_smallest_network_and_names_it_below():
    model, table = nb201_table()
    least = table.minimum()
    check_feasible(model, table, {"params": least["params"], "macs": least["macs"]})  # at the bound
    # the first bound is loose, the second below the smallest network: the second is named
    for limits, metric in (({"params": 1e12, "macs": least["macs"] - 1}, "macs"),
                           ({"macs": 1e12, "params": least["params"] - 1}, "params")):
        with pytest.raises(InputError) as caught:
            check_feasible(model, table, limits)
        assert str(caught.value) == (
            f"search.budget.{metric}: no architecture of this space fits "
            f"{format_cost(metric, limits[metric])}: the smallest network has "
            f"{format_cost(metric, least[metric])}")


def test_check_feasible_refuses_bounds_that_only_fit_one_at_a_time():
    model, table = nb201_table()
    # a made-up trade-off: the first op of every edge costs 100 parameters, every other op 100
    # multiply-adds, so each bound alone is met (all first ops, or none of them), never both
    table.ops["params"]["cell"] = torch.zeros_like(table.ops["params"]["cell"])
    table.ops["params"]["cell"][:, 0] = 100.0
    table.ops["macs"]["cell"] = torch.full_like(table.ops["macs"]["cell"], 100.0)
    table.ops["macs"]["cell"][:, 0] = 0.0
    least = table.minimum()
    assert least == table.base
    limits = {"params": table.base["params"] + 50, "macs": table.base["macs"] + 50}
    with pytest.raises(InputError) as caught:
        check_feasible(model, table, limits)
    assert str(caught.value) == (
        "search.budget: no architecture of this space fits all bounds at once (the smallest of "
        f"each alone: {format_cost('params', least['params'])}, {format_cost('macs', least['macs'])}"
        "); loosen one of them")
    check_feasible(model, table, {**limits, "macs": table.base["macs"] + 6 * 100})  # all first ops


def test_describe_names_each_cost_and_its_share_of_its_bound():
    cost = {"macs": 78.56e6, "params": 486080.0, "latency_ms": 0.4512}
    assert nas.budget.describe(cost, {"macs": 8e7, "latency_ms": 0.5}) == (
        "78.6M multiply-adds (budget 80.0M, 98%), 486,080 parameters, "
        "0.451 ms (budget 0.500, 90%)")
    assert nas.budget.describe({"params": 2.5e6}, {"params": 2e6}) == \
        "2,500,000 parameters (budget 2,000,000, 125%)"  # over budget: above 100
    assert nas.budget.describe({"macs": 1e6}, {}) == "1.0M multiply-adds"


def test_two_bounds_keep_a_multiplier_each_and_round_trip_by_name():
    model, table = nb201_table()
    with torch.no_grad():
        model.arch_logits["cell"].normal_(generator=torch.Generator().manual_seed(0))
    expected = {m: v.item() for m, v in table.expected(model).items()}
    # params 25% over its bound, macs 50% under: one multiplier rises, the other stays at 0
    limits = {"params": expected["params"] / 1.25, "macs": expected["macs"] * 2}
    c = BudgetConstraint(table, limits, dual_lr=0.5)
    assert c.values() == {"params": 0.0, "macs": 0.0} and c.multipliers.dtype == torch.float64
    c.update()  # no penalty seen yet: nothing to step from
    assert c.values() == {"params": 0.0, "macs": 0.0}
    for step in (1, 2):
        assert c.penalty(model).item() == pytest.approx((step - 1) * 0.5 * 0.25 * 0.25, rel=1e-5)
        c.update()
        assert c.values()["params"] == pytest.approx(step * 0.5 * 0.25, rel=1e-5)
        assert c.values()["macs"] == 0.0
    c.update()  # a second update without a penalty between: no step
    assert c.values()["params"] == pytest.approx(0.25, rel=1e-5)
    # the state is by name: bounds listed in another order load to the same multipliers
    other = BudgetConstraint(table, {"macs": limits["macs"], "params": limits["params"]}, 0.5)
    other.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert other.values() == c.values() and other.multipliers.dtype == torch.float64
    assert other.penalty(model).dtype == table.expected(model)["macs"].dtype  # the logits' precision
    with pytest.raises(ValueError, match=r"budget bounds \['macs', 'params'\], the config \['macs'\]"):
        BudgetConstraint(table, {"macs": 1.0}, 0.5).load_state_dict(c.state_dict())


def test_the_k_best_are_exact_at_the_bound_when_every_op_costs_something():
    """Made-up costs of 1-5 units for every op (none included), on two metrics: the remaining
    groups' least cost is never zero, and the bounds are exactly the best cell's costs."""
    model, table = nb201_table()
    gen = torch.Generator().manual_seed(5)
    for m, unit in (("macs", 1000.0), ("params", 10.0)):
        table.ops[m]["cell"] = torch.randint(1, 6, (6, 5), generator=gen).double() * unit
    with torch.no_grad():
        model.arch_logits["cell"].copy_(torch.randn(6, 5, generator=gen))
    combos = torch.cartesian_prod(*[torch.arange(5)] * 6)  # every cell, [15625, 6]
    edges = torch.arange(6)
    logp = model.probabilities()["cell"].double().log()
    score = logp[edges, combos].sum(1)
    cost = {m: table.base[m] + table.ops[m]["cell"][edges, combos].sum(1) for m in ("macs", "params")}
    free = int(score.argmax())
    loose = {m: float(c.min()) + 0.4 * (float(c.max()) - float(c.min())) for m, c in cost.items()}
    fit = (cost["macs"] <= loose["macs"]) & (cost["params"] <= loose["params"])
    assert not fit[free] and int(fit.sum()) > 100  # the bounds bind, and many cells fit
    best = int(torch.where(fit, score, -torch.inf).argmax())
    limits = {m: float(c[best]) for m, c in cost.items()}  # the best cell sits on both bounds
    g = derive_within(model, table, limits)
    assert g.cells == nb201_cell([NB201_OPS[o] for o in combos[best]]).cells
    fit = (cost["macs"] <= limits["macs"]) & (cost["params"] <= limits["params"])
    top = torch.where(fit, score, -torch.inf).topk(5).values.tolist()
    groups = nas.budget.choice_groups(model, table, ["macs", "params"])
    found = nas.budget.best_choices(groups, [limits[m] - table.base[m] for m in ("macs", "params")], k=5)
    assert [s for s, _ in found] == pytest.approx(top, abs=1e-9)
    for s, chain in found:  # each is a cell within both bounds with that score
        cell = nas.budget.assemble(groups, chain, model.genotype())
        assert fits(table.of(cell), limits)
        assert sum(float(logp[e, NB201_OPS.index(o)]) for e, (o, _) in enumerate(
            edge for node in cell.cells["cell"] for edge in node)) == pytest.approx(s, abs=1e-9)


def test_without_a_table_the_choices_carry_no_cost_and_darts_never_takes_none():
    """The unconstrained shortlist's choices (``choice_groups`` with no table)."""
    nb201 = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    _, darts, _, _ = small_darts()
    chain = build_supernet("mbconv", 10, "gdas", 0, {"stem": 4, "widths": [4, 8], "layers": [1, 2],
                                                     "strides": [1, 2], "head": 8})
    groups = nas.budget.choice_groups(chain, None, [])  # a chain: one group per layer
    assert [len(g) for _, _, g in groups] == [len(p.ops) for p in chain.choice_points()]
    assert all(cost == () for _, _, g in groups for _, cost, _ in g)
    for model, none_allowed in ((nb201, True), (darts, False)):
        groups = nas.budget.choice_groups(model, None, [])
        options = [o for _, _, group in groups for o in group]
        assert options and all(cost == () for _, cost, _ in options)
        ops = {op for _, _, edges in options for op, _ in edges}
        assert ("none" in ops) == none_allowed and "skip_connect" in ops
