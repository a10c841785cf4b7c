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
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

from .budget import assemble, best_choices, choice_groups
from .cost import CostTable
from .errors import InputError
from .genotype import Genotype
from .supernet import Supernet

ZERO = "#"  # the table's name of a zero feature map


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


@dataclass(frozen=True)
class Candidate:
    """A shortlisted architecture: its genotype, log-probability under the supernet, class key."""

    genotype: Genotype
    log_prob: float
    key: str


MAX_WIDENING = 256  # at most K x this many architectures are ranked to find K distinct classes


def shortlist(model: Supernet, k: int, space: str, table: CostTable | None = None,
              limits: Mapping[str, float] | None = None) -> list[Candidate]:
    """The ``k`` most probable architectures of ``model`` whose network fits ``limits`` (by
    ``table``; none: every architecture), one per class, most probable first. Fewer when fewer
    classes fit (or are among the ``k`` x ``MAX_WIDENING`` most probable architectures)."""
    if model.cell_inputs is None:
        raise InputError(f"a shortlist needs a DARTS-family supernet (one whose cells take "
                         f"cell_inputs); {type(model).__name__} is not")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    limits = dict(limits or {})
    if limits and table is None:
        raise ValueError("a budget's limits need its cost table")
    metrics = list(limits)
    groups = choice_groups(model, table, metrics)
    cap = [limits[m] - table.base[m] for m in metrics]  # no metrics without a table
    like = model.genotype()
    like = Genotype(like.cells, like.concat, space=like.space or space, inputs=like.inputs)
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
