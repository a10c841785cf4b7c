"""The shortlist: the K most probable architectures within a budget, one per isomorphism class,
checked against enumerating every cell (nas/shortlist.py, nas/budget.py)."""
from __future__ import annotations

import csv
import itertools

import pytest
import torch

from nas.budget import derive_within, fits
from nas.cost import build_cost_table
from nas.errors import InputError
from nas.genotype import Genotype, parse_genotype
from nas.shortlist import architecture_key, exact_key, live_cost, nb201_unique, pruned, shortlist
from nas.spaces import build_network, build_supernet

from conftest import ROOT
from test_budget import small_darts

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
TABLE = ROOT.parent / "shared" / "benchmarks" / "nats_tss_200ep.csv"
COMBOS = torch.tensor(list(itertools.product(range(5), repeat=6)))  # all 15,625 cells


def cell(combo) -> Genotype:
    it = iter(int(o) for o in combo)
    return Genotype({"cell": [[(OPS[next(it)], j) for j in range(i + 1)] for i in range(3)]},
                    space="nasbench201")


@pytest.fixture(scope="module")
def nb201():
    model = build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    table = build_cost_table(model, lambda g: build_network(
        "nasbench201", g, 10, {"C": 4, "cells_per_stage": 1}), 8, ["params", "macs"],
        torch.device("cpu"), "nasbench201")
    return model, table


def set_logits(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        model.arch_logits["cell"].copy_(2 * torch.randn(6, 5))
        model.arch_logits["cell"][:, OPS.index("nor_conv_3x3")] += 2


def enumerated(model, table, limits, k, key):
    """Every cell scored and costed at once; the k best fitting, the first of each class."""
    logp = model.probabilities()["cell"].double().log()
    edges = torch.arange(6)
    score = logp[edges, COMBOS].sum(1)
    ok = torch.ones(len(COMBOS), dtype=torch.bool)
    for m, limit in limits.items():
        cost = table.base[m] + table.ops[m]["cell"].double()[edges, COMBOS].sum(1)
        ok &= cost <= limit
    out, seen = [], set()
    for i in torch.argsort(score, descending=True, stable=True).tolist():
        if not ok[i]:
            continue
        g = cell(COMBOS[i])
        if key(g) not in seen:
            seen.add(key(g))
            out.append((float(score[i]), g))
        if len(out) == k:
            break
    return out


def between(table, frac: float, metric: str = "macs") -> float:
    largest = table.of(cell([3] * 6))[metric]
    return table.base[metric] + frac * (largest - table.base[metric])


@pytest.mark.parametrize("seed,frac,k", [(0, 0.3, 12), (1, 0.5, 40), (2, 0.15, 25)])
def test_k_best_within_budget_is_the_enumeration_top_k(nb201, seed, frac, k):
    model, table = nb201
    set_logits(model, seed)
    limits = {"macs": between(table, frac)}
    got = shortlist(model, k, "darts-like", table, limits)  # no isomorphism: exact duplicates only
    want = enumerated(model, table, limits, k, exact_key)
    assert [c.genotype.cells for c in got] == [g.cells for _, g in want]
    assert [c.log_prob for c in got] == pytest.approx([s for s, _ in want], abs=1e-9)
    assert all(fits(table.of(c.genotype), limits) for c in got)
    assert all(a.log_prob >= b.log_prob for a, b in zip(got, got[1:]))
    assert len({exact_key(c.genotype) for c in got}) == k
    assert got[0].genotype.cells == derive_within(model, table, limits).cells


@pytest.mark.parametrize("seed", [3, 4])
def test_k_best_is_one_cell_per_nb201_isomorphism_class(nb201, seed):
    model, table = nb201
    set_logits(model, seed)
    with torch.no_grad():  # likely zeros and skips: many isomorphic cells near the top
        model.arch_logits["cell"][:, :2] += 2.5
    limits = {"macs": between(table, 0.4), "params": between(table, 0.5, "params")}
    got = shortlist(model, 30, "nasbench201", table, limits)
    want = enumerated(model, table, limits, 30, nb201_unique)
    plain = enumerated(model, table, limits, 30, exact_key)
    assert [c.genotype.cells for c in got] == [g.cells for _, g in want]
    assert [c.genotype.cells for c in got] != [g.cells for _, g in plain]  # duplicates were dropped
    assert len({c.key for c in got}) == 30
    assert all(fits(table.of(c.genotype), limits) for c in got)
    assert all(c.genotype.space == "nasbench201" for c in got)


def test_without_a_budget_the_k_most_probable_cells(nb201):
    model, table = nb201
    set_logits(model, 5)
    got = shortlist(model, 20, "nasbench201")
    want = enumerated(model, table, {}, 20, nb201_unique)
    assert [c.genotype.cells for c in got] == [g.cells for _, g in want]
    assert got[0].genotype.cells == model.genotype().cells


def test_a_budget_that_few_cells_meet_gives_fewer(nb201):
    model, table = nb201
    set_logits(model, 6)
    limits = {"macs": table.base["macs"]}  # only cells without convolutions
    got = shortlist(model, 10_000, "darts-like", table, limits)
    assert len(got) == 3 ** 6  # none, skip or pool on every edge
    assert all(fits(table.of(c.genotype), limits) for c in got)
    assert shortlist(model, 10_000, "nasbench201", table, limits) == \
        shortlist(model, 10_000, "nasbench201", table, limits)
    assert len(shortlist(model, 10_000, "nasbench201", table, limits)) < 3 ** 6


def test_darts_k_best_keeps_two_inputs_and_matches_enumeration():
    ops, model, table, limits = small_darts()
    got = shortlist(model, 15, "darts", table, limits)
    logp = model.probabilities()["normal"].log()
    per_node, start = [], 0
    for node in range(4):
        options = []
        for pair in itertools.combinations(range(2 + node), 2):
            for choice in itertools.product((1, 2), repeat=2):
                options.append((sum(float(logp[start + j, o]) for j, o in zip(pair, choice)),
                                sum(float(table.ops["params"]["normal"][start + j, o])
                                    for j, o in zip(pair, choice)),
                                sorted((ops[o], j) for j, o in zip(pair, choice))))
        per_node.append(options)
        start += 2 + node
    fitting = sorted((opt for opt in itertools.product(*per_node)
                      if table.base["params"] + sum(o[1] for o in opt) <= limits["params"]),
                     key=lambda opt: -sum(o[0] for o in opt))[:15]
    assert [[sorted(n) for n in c.genotype.cells["normal"]] for c in got] == \
        [[o[2] for o in opt] for opt in fitting]
    assert all(len(node) == 2 for c in got for node in c.genotype.cells["normal"])
    assert all(fits(table.of(c.genotype), limits) for c in got)


def test_nb201_unique_by_hand():
    a = parse_genotype("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|")
    b = parse_genotype("|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|")
    c = parse_genotype("|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|")
    assert nb201_unique(a) == "#+#+#+0"  # two zeros, then node 2 (a zero + x0) by a skip
    assert nb201_unique(a) != nb201_unique(b) and nb201_unique(a) == nb201_unique(c)
    assert architecture_key(a, "nasbench201") == architecture_key(c, "nasbench201")
    assert architecture_key(a, "darts") != architecture_key(c, "darts")
    swapped = Genotype({"normal": [[("sep_conv_3x3", 1), ("skip_connect", 0)]]})
    same = Genotype({"normal": [[("skip_connect", 0), ("sep_conv_3x3", 1)]]})
    assert exact_key(swapped) == exact_key(same)


@pytest.mark.skipif(not TABLE.is_file(), reason="the NAS-Bench-201 table is not here")
def test_nb201_unique_is_the_tables_unique_string():
    with TABLE.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15_625
    assert all(nb201_unique(parse_genotype(r["ArchitectureString"])) == r["UniqueString"]
               for r in rows)


def test_a_supernet_without_cell_inputs_is_refused(nb201):
    model, _ = nb201
    saved, model.cell_inputs = model.cell_inputs, None
    try:
        with pytest.raises(InputError, match="DARTS-family supernet .*; NB201Supernet is not"):
            shortlist(model, 3, "nasbench201")
    finally:
        model.cell_inputs = saved


def test_k_and_limits_are_checked(nb201):
    model, table = nb201
    set_logits(model, 7)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        shortlist(model, 0, "nasbench201")
    assert len(shortlist(model, 1, "nasbench201")) == 1
    with pytest.raises(ValueError, match="a budget's limits and spend need its cost table"):
        shortlist(model, 2, "nasbench201", None, {"macs": 1e6})
    with pytest.raises(ValueError, match="spend must be from 0 to 1, got 1.5"):
        shortlist(model, 2, "nasbench201", None, {"macs": 1e6}, 1.5)
    with pytest.raises(ValueError, match="spend must be from 0 to 1, got -0.1"):
        shortlist(model, 2, "nasbench201", None, {"macs": 1e6}, -0.1)
    with pytest.raises(ValueError, match="spend is a share of the budget: it needs limits"):
        shortlist(model, 2, "nasbench201", table, {}, 0.5)


# -- the size-matched shortlist -----------------------------------------------------------------
def test_pruned_drops_ops_that_read_zeros_or_feed_nothing():
    dead = parse_genotype(  # node 1 is zero: the convs reading it and node 2 (feeding 3 by none)
        "|none~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    assert pruned(dead, "nasbench201") == parse_genotype(
        "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    live = parse_genotype(
        "|nor_conv_1x1~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|")
    assert pruned(live, "nasbench201") == live
    # an avg pool reading a zero is zero; a skip from x0 stays
    pool = parse_genotype("|none~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|")
    assert pruned(pool, "nasbench201") == parse_genotype(
        "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|")
    assert pruned(dead, "darts-like") == dead  # no isomorphism defined: nothing is known dead


def test_live_cost_counts_only_live_ops(nb201):
    _, table = nb201
    dead = parse_genotype(
        "|none~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    assert live_cost(dead, "nasbench201", table) == table.of(pruned(dead, "nasbench201"))
    assert live_cost(dead, "nasbench201", table)["macs"] == table.base["macs"]
    assert table.of(dead)["macs"] > table.base["macs"]
    assert live_cost(dead, "darts-like", table) == table.of(dead)


def size_matched(model, table, limits, spend, k):
    """Every cell enumerated: the k most probable (one per class) of those that fit and whose
    live cost reaches spend times the costliest fitting cell's cost."""
    fitting = [g for _, g in enumerated(model, table, limits, 15_625, exact_key)]
    floor = {m: spend * max(table.of(g)[m] for g in fitting) for m in limits}
    out, seen = [], set()
    for g in fitting:  # most probable first
        live = live_cost(g, "nasbench201", table)
        if all(live[m] >= floor[m] for m in limits) and nb201_unique(g) not in seen:
            seen.add(nb201_unique(g))
            out.append(g)
    return out[:k], floor


@pytest.mark.parametrize("seed,frac,spend,k", [(0, 0.3, 0.9, 6), (1, 0.5, 0.8, 8), (8, 0.15, 0.9, 5)])
def test_size_matched_shortlist_is_the_most_probable_that_spend(nb201, seed, frac, spend, k):
    model, table = nb201
    set_logits(model, seed)
    with torch.no_grad():  # cheap ops likely, as under a tight budget
        model.arch_logits["cell"][:, OPS.index("nor_conv_3x3")] -= 3
    limits = {"macs": between(table, frac)}
    got = shortlist(model, k, "nasbench201", table, limits, spend)
    want, floor = size_matched(model, table, limits, spend, k)
    assert [c.genotype.cells for c in got] == [g.cells for g in want]
    assert all(fits(table.of(c.genotype), limits) for c in got)
    assert all(live_cost(c.genotype, "nasbench201", table)["macs"] >= floor["macs"] for c in got)
    logp = model.probabilities()["cell"].double().log()
    for c in got:  # the untilted log-probability, whatever tilt found it
        ops = [op for node in c.genotype.cells["cell"] for op, _ in node]
        assert c.log_prob == pytest.approx(sum(float(logp[e, OPS.index(o)]) for e, o in enumerate(ops)),
                                           abs=1e-9)
    plain = shortlist(model, k, "nasbench201", table, limits)
    assert min(table.of(c.genotype)["macs"] for c in got) > min(table.of(c.genotype)["macs"] for c in plain)


def test_size_matched_shortlist_with_spend_0_is_the_plain_one(nb201):
    model, table = nb201
    set_logits(model, 9)
    limits = {"macs": between(table, 0.4)}
    assert shortlist(model, 7, "nasbench201", table, limits, 0.0) == \
        shortlist(model, 7, "nasbench201", table, limits)
