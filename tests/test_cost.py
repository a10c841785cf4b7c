"""The cost table in process: its saved form read back, its device copies and edge weights, the
smallest cost, the whole network's multiply-adds and the latency fit, against values by hand."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import nas
import nas.cost
from nas.cost import (CostTable, _calibrate, _cells_of, _chain_sites, _measured, _params,
                      _whole_macs, build_cost_table, count_cost, count_macs, format_cost,
                      probe_genotypes)
from nas.errors import InputError
from nas.genotype import Genotype
from nas.network import GenotypeCell
from nas.ops import Zero
from nas.spaces import build_network, build_supernet

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# nas.canonical_order of NB201_OPS: the columns by op name (avg_pool, none, nor_conv_1x1, ...)
NB201_BY_NAME = [4, 0, 2, 3, 1]
META = torch.device("meta")


def nb201(metrics=("params", "macs")):
    """A one-cell-per-stage NB201 supernet (C=4) and its table on 8x8 images."""
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    table = build_cost_table(model, lambda g: build_network(
        "nasbench201", g, 10, {"C": 4, "cells_per_stage": 1}), 8, list(metrics),
        torch.device("cpu"), "nasbench201")
    return model, table


def darts_like(ops=("none", "skip", "conv"), keep=2, edge_topk=0):
    """A one-kind DARTS-family supernet (2 cell inputs, 4 nodes: 14 edges) keeping ``keep``
    inputs per node, with a hand-made table: op o on edge e costs 10 * e + o params (``none``
    is not allowed where inputs are kept), base 100."""
    model = nas.Supernet(cells={"normal": (14, list(ops))}, cell_inputs=2)
    model.inputs_kept = keep
    model.enable_edge_topk(edge_topk)
    cost = torch.tensor([[10.0 * e + o for o in range(len(ops))] for e in range(14)])
    allowed = torch.tensor([keep is None or op != "none" for op in ops])
    table = CostTable({"params": 100.0}, {"params": {"normal": cost}}, {"normal": tuple(ops)},
                      2, keep, {"normal": allowed})
    return model, table


# -- the saved table ----------------------------------------------------------------------------
def test_to_dict_holds_every_field_as_json_lists():
    _, table = nb201()
    saved = table.to_dict()
    assert set(saved) == {"space", "image_size", "base", "how", "op_names", "ops"}  # no points
    assert (saved["space"], saved["image_size"]) == ("nasbench201", 8)
    assert saved["base"] == table.base and saved["how"] == table.how
    assert saved["op_names"] == {"cell": list(NB201_OPS)}
    assert set(saved["ops"]) == {"params", "macs"}
    for m in ("params", "macs"):
        assert saved["ops"][m]["cell"] == table.ops[m]["cell"].tolist()
        assert isinstance(saved["ops"][m]["cell"][0], list)
    assert json.loads(json.dumps(saved)) == saved
    saved["base"]["params"] = 0.0  # the saved form is a copy: the table keeps its own
    saved["how"]["params"] = ""
    assert table.base["params"] > 0 and table.how["params"].startswith("counted")


def test_a_chains_table_saves_its_choice_points():
    table = CostTable({"params": 1.0}, {"params": {"g": torch.zeros(2, 2)}}, {"g": ("a", "b")},
                      None, None, {"g": torch.ones(2, dtype=torch.bool)},
                      points={"l0": ("g", 0), "l1": ("g", 1)})
    assert table.to_dict()["points"] == {"l0": ["g", 0], "l1": ["g", 1]}


def test_a_saved_metric_is_read_back_and_replaces_the_device_copies():
    model, table = nb201()
    before = table.expected(model)["macs"].detach()
    saved = json.loads(json.dumps(table.to_dict()))
    macs = [[1000 * e + 10 * o for o in range(5)] for e in range(6)]  # JSON integers
    saved["ops"]["macs"] = {"cell": macs, "other": [[1.0]]}  # a kind it does not have: ignored
    saved["base"]["macs"] = "250"
    saved["how"]["macs"] = "counted"
    table.load_metric(saved, "macs")
    assert table.base["macs"] == 250.0
    assert table.ops["macs"]["cell"].dtype == torch.float32
    assert table.ops["macs"]["cell"].tolist() == macs
    assert set(table.ops["macs"]) == {"cell"}
    assert table.how["macs"] == "counted (read from the run's costs.json)"
    # expected() reads the new table, not a copy of the old one
    p = model.probabilities()["cell"].double()
    by_hand = 250.0 + float((p * torch.tensor(macs, dtype=torch.float64)).sum())
    after = table.expected(model)["macs"].detach()
    assert float(after) == pytest.approx(by_hand, rel=1e-6)
    assert float(after) != pytest.approx(float(before), rel=1e-3)


def test_a_saved_metric_without_how_says_only_where_it_was_read():
    _, table = nb201()
    saved = json.loads(json.dumps(table.to_dict()))
    del saved["how"]
    table.load_metric(saved, "params")
    assert table.how["params"] == " (read from the run's costs.json)"


@pytest.mark.parametrize("damage,error", [
    (lambda s: s["ops"].pop("latency_ms"), "KeyError"),                       # no such metric
    (lambda s: s["base"].pop("latency_ms"), "KeyError"),                      # no base for it
    (lambda s: s["ops"]["latency_ms"].update(cell=[[1.0] * 5] * 5), "ValueError: shapes differ"),
    (lambda s: s["ops"]["latency_ms"].update(cell=[[1.0] * 4] * 6), "ValueError: shapes differ"),
    (lambda s: s["ops"]["latency_ms"].update(cell=[[1.0, "x"] * 3] * 6), "TypeError"),
    (lambda s: s["base"].update(latency_ms=None), "TypeError"),
    (lambda s: s["base"].update(latency_ms="fast"), "ValueError"),
    (lambda s: s.update(ops=[]), "TypeError"),
])
def test_a_saved_table_that_does_not_fit_fails_in_one_line_and_changes_nothing(damage, error):
    _, table = nb201()
    saved = json.loads(json.dumps(table.to_dict()))
    saved["ops"]["latency_ms"] = {"cell": [[0.5] * 5 for _ in range(6)]}
    saved["base"]["latency_ms"] = 1.0
    damage(saved)
    with pytest.raises(InputError) as caught:
        table.load_metric(saved, "latency_ms")
    message = str(caught.value)
    assert message.startswith("the run's cost table has no latency_ms table that fits this search (")
    assert error in message and message.endswith("); remove costs.json to measure it again")
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "latency_ms" not in table.ops and "latency_ms" not in table.base
    assert "latency_ms" not in table.how


# -- the device copies and the edge weights -------------------------------------------------------
def test_device_tables_hold_the_columns_in_op_name_order_once_per_kind_and_device():
    model, table = nb201()
    t = table._on_device(model, "cell", torch.device("cpu"))
    assert t.cols.tolist() == NB201_BY_NAME
    for m in ("params", "macs"):
        assert torch.equal(t.cost[m], table.ops[m]["cell"][:, NB201_BY_NAME])
    assert torch.equal(t.fixed, torch.ones(6))  # NB201 keeps every input
    assert table._on_device(model, "cell", torch.device("cpu")) is t  # copied once
    assert list(table._device_tables) == [("cell", torch.device("cpu"))]
    m = table._on_device(model, "cell", META)
    assert m is not t and set(table._device_tables) == {("cell", torch.device("cpu")), ("cell", META)}
    assert {m.cols.device, m.allowed.device, m.fixed.device, m.cost["macs"].device} == {META}
    assert m.cost["params"].shape == (6, 5) and m.fixed.shape == (6,)


def test_the_allowed_mask_follows_the_columns_in_name_order():
    ops = ("skip", "none", "conv")  # by name: conv, none, skip
    model, table = darts_like(ops)
    t = table._on_device(model, "normal", torch.device("cpu"))
    assert t.cols.tolist() == [2, 1, 0]
    assert t.allowed.tolist() == [True, False, True]
    assert torch.equal(t.cost["params"], table.ops["params"]["normal"][:, [2, 1, 0]])


def test_fixed_edge_weights_are_keep_over_the_nodes_inputs():
    model, table = darts_like()
    # node i has 2 + i inputs and keeps 2 of them: weights 1, 2/3, 1/2, 2/5
    by_hand = [1.0] * 2 + [2 / 3] * 3 + [1 / 2] * 4 + [2 / 5] * 5
    assert table.edge_weights(model)["normal"].tolist() == pytest.approx(by_hand)
    assert table._on_device(model, "normal", META).fixed.device == META
    _, one = darts_like(keep=1)
    assert one.edge_weights(model)["normal"].tolist() == pytest.approx(
        [1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4 + [1 / 5] * 5)
    _, three = darts_like(keep=3)  # more than the first node's two inputs: at most 1
    assert three.edge_weights(model)["normal"].tolist() == pytest.approx(
        [1.0] * 2 + [1.0] * 3 + [3 / 4] * 4 + [3 / 5] * 5)


def test_learned_edge_weights_are_k_times_the_nodes_softmax_at_most_one():
    model, table = darts_like(edge_topk=2)
    logits = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 2.0, 0.5, -1.0, 0.0, 1.0, 2.0])
    with torch.no_grad():
        model.edge_logits["normal"].copy_(logits)
    assert table._on_device(model, "normal", torch.device("cpu")).fixed is None
    by_hand, start = [], 0
    for count in (2, 3, 4, 5):
        p = logits[start:start + count].double().softmax(0)
        by_hand += [min(1.0, 2 * float(q)) for q in p]
        start += count
    assert max(by_hand) == 1.0 and sum(w == 1.0 for w in by_hand) == 4  # four are clamped
    weights = table.edge_weights(model)["normal"]
    assert weights.tolist() == pytest.approx(by_hand, rel=1e-6)
    weights.sum().backward()  # the weights carry the edge logits' gradient
    assert model.edge_logits["normal"].grad is not None
    on_meta = table.edge_weights(model.to(META))["normal"]
    assert on_meta.device == META and on_meta.shape == (14,)


def test_expected_cost_weights_each_edge_by_how_likely_it_is_kept():
    model, table = darts_like()
    with torch.no_grad():
        model.arch_logits["normal"].copy_(torch.randn(14, 3, generator=torch.Generator().manual_seed(1)))
    p = model.arch_logits["normal"].detach().double()[:, 1:].softmax(-1)  # `none` never kept
    cost = table.ops["params"]["normal"].double()[:, 1:]
    w = torch.tensor([1.0] * 2 + [2 / 3] * 3 + [1 / 2] * 4 + [2 / 5] * 5, dtype=torch.float64)
    by_hand = 100.0 + float((w * (p * cost).sum(-1)).sum())
    assert float(table.expected(model)["params"].detach()) == pytest.approx(by_hand, rel=1e-6)
    on_meta = table.expected(model.to(META))["params"]
    assert on_meta.device == META and on_meta.shape == ()


# -- the smallest network and the cost of one ---------------------------------------------------
def test_the_minimum_keeps_each_nodes_cheapest_inputs():
    _, table = darts_like(ops=("none", "skip", "conv"))
    cost = torch.tensor([[0.0, 7.0, 3.0], [0.0, 2.0, 9.0],                          # node 0
                         [0.0, 5.0, 6.0], [0.0, 1.0, 8.0], [0.0, 4.0, 4.0],         # node 1
                         [0.0, 9.0, 9.0], [0.0, 3.0, 8.0], [0.0, 6.0, 2.0], [0.0, 7.0, 7.0],
                         [0.0, 8.0, 5.0], [0.0, 1.0, 9.0], [0.0, 9.0, 1.0], [0.0, 6.0, 6.0],
                         [0.0, 2.0, 3.0]])
    table.ops["params"]["normal"] = cost
    # cheapest allowed op per edge: 3 2 | 5 1 4 | 9 3 2 7 | 5 1 1 6 2; two cheapest per node
    assert table.minimum() == {"params": 100.0 + (3 + 2) + (1 + 4) + (2 + 3) + (1 + 1)}
    table.keep, table.allowed["normal"] = None, torch.ones(3, dtype=torch.bool)
    assert table.minimum() == {"params": 100.0}  # every edge `none`
    table.ops["params"]["normal"] = cost[:, 1:]
    table.op_names["normal"], table.allowed["normal"] = ("skip", "conv"), torch.ones(2, dtype=torch.bool)
    assert table.minimum() == {"params": 100.0 + 5 + 10 + 21 + 15}  # all inputs kept


def test_the_cost_of_a_genotype_adds_its_edges_to_the_base():
    _, table = darts_like(ops=("none", "skip", "conv"))
    cells = [[("conv", 1), ("skip", 0)], [("skip", 2)], [("conv", 0), ("conv", 3)],
             [("skip", 4), ("conv", 1)]]
    g = Genotype({"normal": cells}, inputs={"normal": 2})
    # edges: node 0 inputs 0-1 are 0-1, node 1 2-4, node 2 5-8, node 3 9-13; cost 10 e + o
    by_hand = 100.0 + 12 + 1 + 41 + 52 + 82 + 131 + 102
    assert table.of(g) == {"params": by_hand}


def test_the_cost_of_a_chain_genotype_adds_each_layers_op():
    ops = {"params": {"g": torch.tensor([[1.0, 2.0], [30.0, 40.0]])},
           "macs": {"g": torch.tensor([[5.0, 6.0], [70.0, 80.0]])}}
    table = CostTable({"params": 100.0, "macs": 1000.0}, ops, {"g": ("a", "b")}, None, None,
                      {"g": torch.ones(2, dtype=torch.bool)}, points={"l0": ("g", 0), "l1": ("g", 1)})
    g = Genotype({}, layers={"l0": "b", "l1": "a"})
    assert table.of(g) == {"params": 100.0 + 2 + 30, "macs": 1000.0 + 6 + 70}
    assert table.minimum() == {"params": 131.0, "macs": 1075.0}


# -- counting -----------------------------------------------------------------------------------
def test_counts_are_whole_multiply_adds_per_image():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    macs = count_macs(conv, (4, 3, 6, 6))
    assert type(macs) is int and macs == 8 * 36 * 3 * 9
    cost = count_cost(conv, 6)
    assert cost == {"params": 8 * 3 * 9, "macs": 8 * 36 * 3 * 9}
    assert type(cost["macs"]) is int and type(cost["params"]) is int


def test_format_cost_units():
    assert format_cost("macs", 1_050_001) == "1.1M multiply-adds"  # millions: / 1e6
    assert format_cost("macs", 220_100_000) == "220.1M multiply-adds"
    assert format_cost("latency_ms", 3.21449) == "3.214 ms"
    assert format_cost("params", 1_531_545.6) == "1,531,546 parameters"


class _Recorder(nn.Module):
    """Passes its input on and records the device it was on."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(x.device)
        return x


def test_an_ops_multiply_adds_are_per_image_on_the_given_device():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    cache: dict = {}
    assert _measured(conv, (2, 3, 5, 5), "macs", torch.device("cpu"), cache) == 4 * 3 * 25
    assert list(cache.values()) == [4 * 3 * 25]
    seen = []
    on_meta = nn.Sequential(_Recorder(seen), nn.Conv2d(3, 4, 1, bias=False, device=META))
    assert _measured(on_meta, (1, 3, 5, 5), "macs", META, {}) == 4 * 3 * 25
    assert seen == [META]  # its input is made there too
    assert _measured(conv, None, "macs", torch.device("cpu"), cache) == 0.0  # never ran
    calls = []
    timer = lambda module, x, runs: calls.append((tuple(x.shape), runs)) or 1.5  # noqa: E731
    assert _measured(conv, (2, 3, 5, 5), "latency_ms", torch.device("cpu"), cache, 7, timer) == 1.5
    assert calls == [((2, 3, 5, 5), 7)]


# -- the whole network's multiply-adds ------------------------------------------------------------
class _NeedsRealTensors(nn.Module):
    """A 3 -> 8 channel 3x3 convolution whose forward reads a value, as the meta device cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x) * (1.0 + float(x.sum()) * 0)


def test_whole_macs_counts_a_network_built_on_the_meta_device():
    g = Genotype({"cell": [[("nor_conv_3x3", 0)], [("skip_connect", 0), ("none", 1)],
                           [("none", 0), ("none", 1), ("nor_conv_1x1", 2)]]}, space="nasbench201")
    built = []

    def build(genotype):
        built.append(torch.empty(()).device)
        return build_network("nasbench201", genotype, 10, {"C": 4, "cells_per_stage": 1})

    real = build(g)
    other = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # what a fallback to `net` would count
    assert _whole_macs(build, g, other, 8) == count_macs(real, (1, 3, 8, 8))
    assert built[-1] == META and count_macs(real, (1, 3, 8, 8)) != count_macs(other, (1, 3, 8, 8))


class _NB201NeedsRealTensors(nn.Module):
    """An NB201 network (C=4, one cell per stage) whose forward reads a value first."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.net = build_network("nasbench201", genotype, 10, {"C": 4, "cells_per_stage": 1})

    def forward(self, x):
        return self.net(x * (1.0 + float(x.sum()) * 0))


def test_a_tables_whole_networks_are_counted_on_the_meta_device_where_they_build():
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    devices = []

    def build(genotype):
        devices.append(torch.empty(()).device)
        return build_network("nasbench201", genotype, 10, {"C": 4, "cells_per_stage": 1})

    table = build_cost_table(model, build, 8, ["macs"], torch.device("cpu"))
    assert devices.count(META) == 2  # the base probe and the first with multiply-adds
    # a network that cannot run there is counted as built: the same table
    real = build_cost_table(model, _NB201NeedsRealTensors, 8, ["macs"], torch.device("cpu"))
    assert real.base == table.base and torch.equal(real.ops["macs"]["cell"], table.ops["macs"]["cell"])


def test_whole_macs_counts_the_real_network_when_the_meta_device_cannot_run_it():
    net = _NeedsRealTensors()
    assert _whole_macs(lambda g: _NeedsRealTensors(), Genotype({}), net, 6) == 8 * 36 * 3 * 9


# -- networks a table cannot be built from --------------------------------------------------------
def test_networks_whose_ops_cannot_be_found_fail_in_one_line():
    chain = build_supernet("mbconv", 10, "gdas", 0, {"stem": 4, "widths": [4], "layers": [1],
                                                     "strides": [1], "head": 8})
    with pytest.raises(InputError) as caught:
        _chain_sites(nn.Sequential(nn.Identity()), chain)
    assert str(caught.value) == (
        "search.budget: the chain network's layers could not be matched to the supernet's choice "
        "points; budgets need networks that build each layer as nas.ChainLayer(point, op, "
        "module), one per choice point")
    g = Genotype({"cell": [[("skip_connect", 0)]]})
    with pytest.raises(InputError) as caught:
        _cells_of(nn.Sequential(nn.Identity()), g)
    assert str(caught.value) == (
        "search.budget: the space's network has no nas.GenotypeCell, so the cost of its ops "
        "cannot be told apart from the rest")
    other = GenotypeCell([[("nor_conv_1x1", 0)]], 4, 1)
    with pytest.raises(InputError) as caught:
        _cells_of(nn.Sequential(GenotypeCell([[("skip_connect", 0)]], 4, 1), other), g)
    assert str(caught.value) == (
        "search.budget: the network's cells could not be matched to the genotype's cell kinds; "
        "budgets need networks built from nas.GenotypeCell with the genotype's nodes")
    plain = nas.Supernet(cells={"cell": (3, ["a", "b"])})  # no cell_inputs: not DARTS-family
    with pytest.raises(InputError) as caught:
        probe_genotypes(plain, {}, "")
    assert str(caught.value) == (
        "search.budget needs a DARTS-family supernet (one whose cells take cell_inputs and whose "
        "genotype() is nas.Supernet's); Supernet is not")


def test_an_op_that_never_ran_must_be_a_parameter_free_none():
    assert _params(Zero(), None) == 0.0
    assert _params(nn.Conv2d(2, 3, 1), (1, 2, 4, 4)) == 9.0
    for module in (nn.Identity(), nn.Conv2d(2, 3, 1)):
        with pytest.raises(InputError) as caught:
            _params(module, None)
        assert str(caught.value) == (f"search.budget: op {type(module).__name__} never ran in "
                                     "the probe network")
    zero = Zero()
    zero.register_parameter("w", nn.Parameter(torch.ones(2)))
    with pytest.raises(InputError, match="op Zero never ran"):
        _params(zero, None)


# -- the probes and a latency table -------------------------------------------------------------
def test_probes_put_every_op_on_every_edge_and_tell_the_kinds_apart():
    model = nas.Supernet(cells={"normal": (5, ["a", "b", "c"]), "reduce": (5, ["a", "b", "c", "d"])},
                         cell_inputs=2)
    concat = {"normal": (2, 3), "reduce": (2, 3)}
    probes = probe_genotypes(model, concat, "sp")

    def cell(op):  # 2 nodes: 2 inputs, then 3
        return [[(op, 0), (op, 1)], [(op, 0), (op, 1), (op, 2)]]

    # probe k: normal takes op k mod 3, reduce op k + 1 mod 4
    assert probes == [Genotype({"normal": cell(n), "reduce": cell(r)}, concat, space="sp",
                               inputs={"normal": 2, "reduce": 2})
                      for n, r in (("a", "b"), ("b", "c"), ("c", "d"), ("a", "a"))]
    assert all(g.inputs == {"normal": 2, "reduce": 2} and g.space == "sp" for g in probes)
    chain = build_supernet("mbconv", 10, "gdas", 0, {"stem": 4, "widths": [4, 8], "layers": [1, 1],
                                                     "strides": [1, 2], "head": 8})
    points = chain.choice_points()
    width = max(len(p.ops) for p in points)
    assert {len(p.ops) for p in points} == {width, width - 1}  # a layer that may skip, one not
    probes = probe_genotypes(chain, {}, "mbconv")
    assert probes == [Genotype({}, space="mbconv", layers={p.name: p.ops[k % len(p.ops)] for p in points})
                      for k in range(width)]


def _fake_timer(calls):
    """A deterministic timer on any device: an op takes 0.25 ms + 1 ms per 1000 parameters, a
    network (it holds cells) 5 ms + 2 ms per 1000 parameters; it records what it was given."""
    def timer(module, x, runs):
        calls.append((module, x, runs))
        params = sum(p.numel() for p in module.parameters())
        if any(isinstance(m, GenotypeCell) for m in module.modules()):
            return 5.0 + 2 * params / 1000
        return 0.25 + params / 1000
    return timer


@pytest.mark.parametrize("calibrate", [False, True])
def test_a_latency_table_on_a_device_is_fitted_to_the_probes_times(calibrate):
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    calls, steps = [], []
    fit = {} if calibrate else {"calibrate": False}  # fitted by default
    table = build_cost_table(model, lambda g: build_network(
        "nasbench201", g, 10, {"C": 4, "cells_per_stage": 1}), 8, ["params", "latency_ms"], META,
        "nasbench201", progress=steps.append, timer=_fake_timer(calls), **fit)
    assert steps == [f"probe {k}/5" for k in range(1, 6)]
    assert calls and all(x.device == META and runs == 30 and x.shape[0] == 1 for _, x, runs in calls)
    assert all(p.device == META for module, _, _ in calls for p in module.parameters())
    wholes = [x for module, x, _ in calls if x.dim() == 4 and x.shape[1] == 3]
    assert [tuple(x.shape) for x in wholes] == [(1, 3, 8, 8)] * 5
    # each op runs in the 3 cells, 0.25 ms each plus 1 ms per 1000 parameters; but a node whose
    # inputs are all `none` runs only its first one (edges 0, 1, 3) for its zeros
    params = table.ops["params"]["cell"].double()
    ran = torch.ones(6, 5, dtype=torch.float64)
    ran[:, 0] = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    raw = params / 1000 + 0.75 * ran
    probes = probe_genotypes(model, {}, "nasbench201")  # probe k: op k on every edge
    op_sums = [float(raw[:, k].sum()) for k in range(5)]
    totals = [5.0 + 2 * table.of(g)["params"] / 1000 for g in probes]
    if calibrate:
        scale, base = _calibrate(op_sums, totals)
        assert scale != pytest.approx(1.0)
    else:
        scale, base = 1.0, sorted(t - s for t, s in zip(totals, op_sums))[2]
    assert table.base["latency_ms"] == pytest.approx(base, rel=1e-9)
    assert torch.allclose(table.ops["latency_ms"]["cell"].double(), scale * raw, rtol=1e-6, atol=0)
    assert table.ops["latency_ms"]["cell"].dtype == torch.float32
    assert set(table.how) == {"params", "latency_ms"}
    assert "measured on meta" in table.how["latency_ms"] and "batch 1, 8x8" in table.how["latency_ms"]
    assert "median of 30 timed runs" in table.how["latency_ms"]


def test_a_latency_tables_batch_and_runs_reach_the_timer_and_its_description():
    chain = build_supernet("mbconv", 10, "gdas", 0, {"stem": 4, "widths": [4], "layers": [1],
                                                     "strides": [1], "head": 8})
    calls, spaces = [], []

    def build(g):
        spaces.append(g.space)
        return build_network("mbconv", g, 10, {"stem": 4, "widths": [4], "layers": [1],
                                               "strides": [1], "head": 8})

    table = build_cost_table(chain, build, 8, ["latency_ms"], torch.device("cpu"), "mbconv",
                             latency_batch=2, latency_runs=3,
                             timer=lambda module, x, runs: calls.append((x.shape[0], runs)) or 1.0)
    assert calls and set(calls) == {(2, 3)}
    assert spaces and set(spaces) == {"mbconv"}  # the probes are the space's genotypes
    assert "batch 2, 8x8" in table.how["latency_ms"] and "median of 3 timed runs" in table.how["latency_ms"]
    assert table.points == {p.name: (p.group, 0) for p in chain.choice_points()}
    assert table.space == "mbconv" and table.image_size == 8 and table.cell_inputs is None


def test_a_table_keeps_the_supernets_layout():
    model = build_supernet("darts", 10, "gdas", 0, {"C": 4, "cells": 3, "ops": ["none", "skip_connect",
                                                                                  "sep_conv_3x3"]})
    table = build_cost_table(model, lambda g: build_network("darts", g, 10, {"C": 4, "cells": 3}),
                             8, ["params"], torch.device("cpu"))  # no space given: ""
    g = model.genotype()
    assert (table.cell_inputs, table.keep, table.space, table.image_size) == (2, 2, "", 8)
    assert table.concat == g.concat and table.concat
    assert table.op_names == model.op_names and table.points == {}
    assert {k: v.tolist() for k, v in table.allowed.items()} == {
        "normal": [False, True, True], "reduce": [False, True, True]}
    assert table.of(g)["params"] == count_cost(build_network("darts", g, 10, {"C": 4, "cells": 3}),
                                               8)["params"]


class _OnlyKindA(nn.Module):
    """A 1x1 stem (3 -> 4 channels) and one cell of kind "a" (one node on one input): kind "b"
    of the supernet is not built at all."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.cell = GenotypeCell(genotype.cells["a"], 4, 1)

    def forward(self, x):
        return self.cell([self.stem(x)])


def test_a_kind_the_network_does_not_build_costs_nothing():
    model = nas.Supernet(cells={"a": (1, ["skip_connect", "nor_conv_1x1"]),
                                "b": (1, ["skip_connect", "nor_conv_3x3"])}, cell_inputs=1)
    table = build_cost_table(model, _OnlyKindA, 8, ["params", "macs"], torch.device("cpu"))
    assert table.base == {"params": 3 * 4 + 4, "macs": 3 * 4 * 64}  # the stem
    # nor_conv_1x1: ReLU, a 4 -> 4 convolution (16 weights, 16 x 64 multiply-adds), a batch norm
    assert table.ops["params"]["a"].tolist() == [[0.0, 16.0 + 8.0]]
    assert table.ops["macs"]["a"].tolist() == [[0.0, 16.0 * 64]]
    assert table.ops["params"]["b"].tolist() == [[0.0, 0.0]]
    assert table.ops["macs"]["b"].tolist() == [[0.0, 0.0]]


# -- the additivity check ------------------------------------------------------------------------
@pytest.mark.parametrize("corrupt", [None, "none", "nor_conv_1x1"])
def test_the_base_probe_and_the_first_with_multiply_adds_are_counted_whole_and_checked(
        monkeypatch, corrupt):
    counted = []

    def whole_macs(build, genotype, net, image_size):  # one multiply-add more for `corrupt`
        op = genotype.cells["cell"][0][0][0]
        counted.append(op)
        return _whole_macs(build, genotype, net, image_size) + (op == corrupt)

    monkeypatch.setattr(nas.cost, "_whole_macs", whole_macs)
    if corrupt is None:
        model, table = nb201()
        net = build_network("nasbench201", model.genotype(), 10, {"C": 4, "cells_per_stage": 1})
        assert table.of(model.genotype())["macs"] == count_macs(net, (1, 3, 8, 8))
    else:
        with pytest.raises(InputError, match="the multiply-adds of this space's network are not a sum "
                                             "over its edges' ops"):
            nb201()
    # the probes put none, skip_connect, nor_conv_1x1, ... on every edge: the all-none probe
    # gives the base, the all-skip one carries no multiply-adds, the nor_conv_1x1 one checks
    assert counted == ["none", "nor_conv_1x1"]


def test_a_chains_first_probe_with_multiply_adds_after_the_base_is_the_last_counted_whole(monkeypatch):
    chain = build_supernet("mbconv", 10, "gdas", 0, {"stem": 4, "widths": [4], "layers": [1],
                                                     "strides": [1], "head": 8})
    counted = []

    def whole_macs(build, genotype, net, image_size):
        counted.append(dict(genotype.layers))
        return _whole_macs(build, genotype, net, image_size)

    monkeypatch.setattr(nas.cost, "_whole_macs", whole_macs)
    build_cost_table(chain, lambda g: build_network(
        "mbconv", g, 10, {"stem": 4, "widths": [4], "layers": [1], "strides": [1], "head": 8}),
        8, ["macs"], torch.device("cpu"), "mbconv")
    # every block carries multiply-adds: probe 0 gives the base, probe 1 checks it
    assert counted == [{p.name: p.ops[k] for p in chain.choice_points()} for k in (0, 1)]


class _GrowsWithParameters(nn.Module):
    """An NB201 network plus an unused parameter vector as long as the square of its cell's
    convolution edges: parameters that are not a sum over the edges."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.net = build_network("nasbench201", genotype, 10, {"C": 4, "cells_per_stage": 1})
        convs = sum(op.startswith("nor_conv") for node in genotype.cells["cell"] for op, _ in node)
        self.extra = nn.Parameter(torch.zeros(convs * convs))

    def forward(self, x):
        return self.net(x)


def test_parameters_that_do_not_add_up_fail_in_one_line():
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    with pytest.raises(InputError) as caught:
        build_cost_table(model, _GrowsWithParameters, 8, ["params"], torch.device("cpu"))
    assert str(caught.value) == (
        "search.budget: the parameters of this space's network are not a sum over its edges' ops "
        "(the rest of the network changes with the genotype), so a budget cannot be kept exactly")


# -- the latency fit ----------------------------------------------------------------------------
def test_the_latency_fit_is_least_squares_through_the_probes():
    # totals = 0.5 + 2 * sums exactly, sums 1, 2, 4
    assert _calibrate([1.0, 2.0, 4.0], [2.5, 4.5, 8.5]) == pytest.approx((2.0, 0.5))
    # a fit with noise: mean x 2, mean y 3; slope sum((x-2)(y-3)) / sum((x-2)^2) = 3.5 / 2
    scale, base = _calibrate([1.0, 2.0, 3.0], [1.5, 3.5, 4.0])
    assert (scale, base) == pytest.approx((1.25, 0.5))
    # a spread below 1 (var 0.5) and a scale below 1 are fits too
    assert _calibrate([1.0, 1.5, 2.0], [2.5, 3.5, 4.5]) == pytest.approx((2.0, 0.5))
    assert _calibrate([1.0, 2.0, 3.0], [2.5, 3.0, 3.5]) == pytest.approx((0.5, 2.0))


def test_the_latency_fit_falls_back_to_scale_one_when_the_probes_cannot_tell():
    # equal op sums: no slope; the base is the median of totals - sums (3, 5, 4): 4
    assert _calibrate([2.0, 2.0, 2.0], [5.0, 7.0, 6.0]) == (1.0, 4.0)
    # a falling line: no positive scale; medians of 2.5, 1.5, 0.5
    assert _calibrate([1.0, 2.0, 3.0], [3.5, 3.5, 3.5]) == (1.0, 1.5)
    # no spread of op sums: scale 1, not a slope of 0 (the base: the median remainder, not the mean)
    assert _calibrate([2.0, 2.0, 2.0], [5.0, 9.0, 6.0]) == (1.0, 4.0)
    # two probes: scale 1 whatever they say, the base their median remainder
    assert _calibrate([1.0, 3.0], [2.0, 7.0]) == (1.0, 2.5)


def test_the_latency_fit_without_a_base_when_it_would_be_negative_or_zero():
    # line through (1, 1) and (3, 5): base -1 < 0, so scale sum(xy) / sum(xx) = 22 / 14
    assert _calibrate([1.0, 3.0, 2.0], [1.0, 5.0, 3.0]) == pytest.approx((22 / 14, 0.0))
    # a median remainder of exactly 0 (1 and -1) is kept: scale 1, not sum(xy) / sum(xx)
    assert _calibrate([1.0, 3.0], [2.0, 2.0]) == (1.0, 0.0)
    # op sums with sum(xx) below 1 (0.75): scale (0.05 + 0.1 + 0.15) / 0.75
    assert _calibrate([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) == pytest.approx((0.4, 0.0))
    # no op time at all and a negative median rest: scale 1, base 0
    assert _calibrate([0.0, 0.0, 0.0], [-1.0, -2.0, -3.0]) == (1.0, 0.0)
