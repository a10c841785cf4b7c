"""A shortlist from a searched supernet: its K most probable architectures within a budget.

The budgeted derivation (``nas.budget.derive_within``) is a multiple-choice knapsack solved
exactly by dynamic programming over Pareto-optimal partial choices. Keeping, at every step, each
partial choice that fewer than K others beat at no more cost makes the same program exact for
the K best (``nas.budget.best_choices``): a choice that K others dominate cannot be among the K
best, since each of them, completed the same way, fits and scores at least as well. Without a
budget it is the K most probable architectures.

Two architectures that compute the same function are one candidate. A space may say when that
is so (``ISOMORPHISM``): for NAS-Bench-201, cells with the same ``UniqueString`` of the table
(``nb201_unique``: an edge from a zero is zero, a skip is its input, a node is the sorted sum of
its edges). Elsewhere only equal genotypes are (a node's edges compared in any order). Each class
is represented by its most probable member.

With ``spend`` the shortlist is size-matched: only architectures whose network, counting just the
ops that compute something (``pruned``), costs at least ``spend`` times the costliest network that
fits, in every bounded metric. Short trainings from scratch rank small networks first (they
converge sooner), so candidates of unequal size are not compared fairly; of equal size, they
are. A best-first enumeration lists them exactly, most probable first (``by_probability``).
"""
from __future__ import annotations

import heapq
import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from .budget import Option, assemble, best_choices, choice_groups, unwound
from .cost import CostTable
from .errors import InputError
from .genotype import Genotype
from .supernet import Supernet

ZERO = "#"  # the table's name of a zero feature map
NONE = "none"  # the op that outputs zeros


def nb201_unique(genotype: Genotype) -> str:
    """The NAS-Bench-201 table's ``UniqueString`` of a cell: equal for isomorphic cells."""
    nodes = {0: "0"}
    for i, edges in enumerate(genotype.cells["cell"]):
        terms = []
        for op, src in edges:
            x = nodes[src]
            if op == "none" or x == ZERO:
                terms.append(ZERO)
            elif op == "skip_connect":
                terms.append(x)
            else:
                terms.append(f"({x})@{op}")
        nodes[i + 1] = "+".join(sorted(terms))
    return nodes[len(genotype.cells["cell"])]


def exact_key(genotype: Genotype) -> str:
    """A genotype's cells, concat and inputs as one string, each node's edges sorted."""
    cells = {k: [sorted(map(list, node)) for node in nodes]
             for k, nodes in sorted(genotype.cells.items())}
    return json.dumps([cells, sorted((k, list(v)) for k, v in genotype.concat.items()),
                       sorted(genotype.inputs.items())])


ISOMORPHISM: dict[str, Callable[[Genotype], str]] = {"nasbench201": nb201_unique}


def architecture_key(genotype: Genotype, space: str) -> str:
    """What identifies ``genotype``'s function in ``space``: its isomorphism class where the
    space defines one, else the genotype itself."""
    return ISOMORPHISM.get(space, exact_key)(genotype)


def pruned(genotype: Genotype, space: str) -> Genotype:
    """``genotype`` with ``none`` on every edge whose op leaves its class (``architecture_key``)
    unchanged when removed: an op reading only zeros, or feeding nothing the cell outputs. Where
    the space defines no isomorphism, ``genotype`` itself."""
    key = architecture_key(genotype, space)
    cells = {kind: [list(node) for node in nodes] for kind, nodes in genotype.cells.items()}
    changed = True
    while changed:
        changed = False
        for nodes in cells.values():
            for node in nodes:
                for i, (op, src) in enumerate(node):
                    if op == NONE:
                        continue
                    node[i] = (NONE, src)
                    trial = Genotype(cells, genotype.concat, space=genotype.space,
                                     inputs=genotype.inputs)
                    if architecture_key(trial, space) == key:
                        changed = True
                    else:
                        node[i] = (op, src)
    return Genotype(cells, genotype.concat, space=genotype.space, inputs=genotype.inputs)


def live_cost(genotype: Genotype, space: str, table: CostTable) -> dict[str, float]:
    """What ``genotype``'s network costs by ``table``, counting only the ops that compute
    something (``pruned``; as it is where the table has no ``none`` op)."""
    if any(NONE not in names for names in table.op_names.values()):
        return table.of(genotype)
    return table.of(pruned(genotype, space))


def _rescored(groups: list[tuple[str, int, list[Option]]],
              score: Callable[[Option], float]) -> list[tuple[str, int, list[Option]]]:
    return [(kind, node, [(score(o), o[1], o[2]) for o in options]) for kind, node, options in groups]


def costliest(groups: list[tuple[str, int, list[Option]]], cap: list[float]) -> list[float]:
    """Per metric of ``cap``, the most any one choice of ``groups`` within ``cap`` adds (0 where
    none fits)."""
    out = []
    for m in range(len(cap)):
        best = best_choices(_rescored(groups, lambda o: o[1][m]), cap)
        out.append(best[0][0] if best else 0.0)
    return out


@dataclass(frozen=True)
class Candidate:
    """A shortlisted architecture: its genotype, log-probability under the supernet, class key."""

    genotype: Genotype
    log_prob: float
    key: str


MAX_WIDENING = 256  # at most K x this many architectures are ranked to find K distinct classes


def shortlist(model: Supernet, k: int, space: str, table: CostTable | None = None,
              limits: Mapping[str, float] | None = None, spend: float = 0.0) -> list[Candidate]:
    """The ``k`` most probable architectures of ``model`` whose network fits ``limits`` (by
    ``table``; none: every architecture), one per class, most probable first; with ``spend``,
    only those whose live cost reaches ``spend`` of the costliest that fits (module docstring).
    Fewer when fewer classes fit (or are among the ``k`` x ``MAX_WIDENING`` most probable
    architectures)."""
    if model.cell_inputs is None:
        raise InputError(f"a shortlist needs a DARTS-family supernet (one whose cells take "
                         f"cell_inputs); {type(model).__name__} is not")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not 0.0 <= spend <= 1.0:
        raise ValueError(f"spend must be from 0 to 1, got {spend}")
    limits = dict(limits or {})
    if (limits or spend) and table is None:
        raise ValueError("a budget's limits and spend need its cost table")
    if spend and not limits:
        raise ValueError("spend is a share of the budget: it needs limits")
    metrics = list(limits)
    groups = choice_groups(model, table, metrics)
    cap = [limits[m] - table.base[m] for m in metrics]  # no metrics without a table
    like = model.genotype()
    like = Genotype(like.cells, like.concat, space=like.space or space, inputs=like.inputs)
    if spend:
        return _size_matched(groups, cap, like, k, space, table, limits, spend)
    want = k
    while True:
        best = best_choices(groups, cap, want)
        seen: dict[str, Candidate] = {}
        for score, chain in best:
            genotype = assemble(groups, chain, like)
            key = architecture_key(genotype, space)
            if key not in seen:
                seen[key] = Candidate(genotype, score, key)
        if len(seen) >= k or len(best) < want or want >= k * MAX_WIDENING:
            return list(seen.values())[:k]
        want *= 4  # isomorphic duplicates took places: rank more


MAX_POPS = 1_000_000  # partial choices the best-first enumeration may expand before it stops


def _size_matched(groups: list[tuple[str, int, list[Option]]], cap: list[float], like: Genotype,
                  k: int, space: str, table: CostTable, limits: Mapping[str, float],
                  spend: float) -> list[Candidate]:
    base = [table.base[m] for m in limits]
    floor = [spend * (b + most) - b for b, most in zip(base, costliest(groups, cap))]  # above base
    found: dict[str, Candidate] = {}
    for score, chain in by_probability(groups, cap, floor):
        genotype = assemble(groups, chain, like)
        key = architecture_key(genotype, space)
        if key in found:
            continue
        live = live_cost(genotype, space, table)
        if all(live[m] - b >= f for m, b, f in zip(limits, base, floor)):
            found[key] = Candidate(genotype, score, key)
            if len(found) == k:
                break
    return list(found.values())


def by_probability(groups: list[tuple[str, int, list[Option]]], cap: list[float],
                   floor: list[float]) -> Iterator[tuple[float, list[tuple[tuple[str, int], ...]]]]:
    """Every way to take one option of each group whose summed cost is within ``cap`` and at
    least ``floor`` (per metric), most probable first (best-first search: a partial choice is
    ranked by its score plus the best the remaining groups can add, and dropped once it cannot
    fit or reach the floor)."""
    n = len(cap)
    best = [max(o[0] for o in g) for _, _, g in groups]
    least = [[min(o[1][i] for o in g) for i in range(n)] for _, _, g in groups]
    most = [[max(o[1][i] for o in g) for i in range(n)] for _, _, g in groups]
    rest_best = [sum(best[g:]) for g in range(len(groups) + 1)]
    rest_least = [[sum(v[i] for v in least[g:]) for i in range(n)] for g in range(len(groups) + 1)]
    rest_most = [[sum(v[i] for v in most[g:]) for i in range(n)] for g in range(len(groups) + 1)]

    def open_(g: int, spent: Sequence[float]) -> bool:
        return all(spent[i] + rest_least[g][i] <= cap[i] + 1e-9 * max(1.0, abs(cap[i])) and
                   spent[i] + rest_most[g][i] >= floor[i] - 1e-9 * max(1.0, abs(floor[i]))
                   for i in range(n))

    heap: list[tuple[float, int, int, float, tuple[float, ...], Any]] = []
    tie = itertools.count()  # equal priorities: the earlier pushed first
    if open_(0, [0.0] * n):
        heap.append((-rest_best[0], next(tie), 0, 0.0, (0.0,) * n, None))
    for _ in range(MAX_POPS):
        if not heap:
            return
        _, _, g, score, spent, back = heapq.heappop(heap)
        if g == len(groups):
            yield score, unwound(back)
            continue
        for o_score, o_cost, edges in groups[g][2]:
            total = tuple(a + b for a, b in zip(spent, o_cost))
            if open_(g + 1, total):
                heapq.heappush(heap, (-(score + o_score + rest_best[g + 1]), next(tie), g + 1,
                                      score + o_score, total, (back, edges)))
