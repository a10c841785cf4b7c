"""Searching under a budget: a constraint on the expected cost, and a derivation that keeps it.

``search.budget`` bounds the parameters, multiply-adds or latency of the network that the
``network:`` options build from the derived genotype (what is retrained and deployed), not the
supernet. Two parts:

- ``BudgetConstraint``: during the search the expected cost under the architecture distribution
  (``CostTable.expected``, differentiable in the logits) enters the architecture objective as
  ``sum_m lambda_m * (E[cost_m] / budget_m - 1)``. Each multiplier follows dual ascent,
  ``lambda_m <- max(0, lambda_m + dual_lr * (E[cost_m] / budget_m - 1))`` after every
  architecture step: it grows while the distribution is over budget and shrinks back to 0 once it
  is inside, so no weight needs tuning per budget. The term is added to whatever gradient the
  estimator gives, so it works with every estimator and mode.
- ``derive_within``: the most probable architecture whose network fits, exactly: a
  multiple-choice knapsack solved by dynamic programming over the nodes of every cell kind (over
  which inputs a node keeps and which op each kept edge carries), or over a chain's layers (which
  candidate each carries), keeping only the Pareto-optimal partial choices. It never returns an architecture over budget.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .cost import CostTable, format_cost
from .errors import InputError
from .genotype import Genotype, num_nodes
from .supernet import Supernet


def fits(cost: Mapping[str, float], limits: Mapping[str, float]) -> bool:
    """Whether ``cost`` is within every limit."""
    return all(cost[m] <= limit for m, limit in limits.items())


def describe(cost: Mapping[str, float], limits: Mapping[str, float]) -> str:
    """``78.6M multiply-adds (budget 80.0M, 98%), 486,080 parameters``."""
    parts = []
    for m, value in cost.items():
        text = format_cost(m, value)
        if m in limits:
            text += f" (budget {format_cost(m, limits[m]).split(' ')[0]}, {100 * value / limits[m]:.0f}%)"
        parts.append(text)
    return ", ".join(parts)


class BudgetConstraint:
    """Lagrange multipliers of a budget, one per bounded metric, updated by dual ascent."""

    def __init__(self, table: CostTable, limits: Mapping[str, float], dual_lr: float) -> None:
        self.table, self.limits, self.dual_lr = table, dict(limits), float(dual_lr)
        self.multipliers = torch.zeros(len(self.limits), dtype=torch.float64)
        self._violation: Tensor | None = None

    def penalty(self, model: Supernet) -> Tensor:
        """``sum_m lambda_m * (E[cost_m] / budget_m - 1)``, differentiable in the logits."""
        expected = self.table.expected(model)
        ratio = torch.stack([expected[m] / limit for m, limit in self.limits.items()]) - 1
        self.multipliers = self.multipliers.to(ratio.device)
        self._violation = ratio.detach().double()
        return (self.multipliers.to(ratio.dtype) * ratio).sum()

    def update(self) -> None:
        """One dual-ascent step from the violation the last ``penalty`` saw (no host sync)."""
        if self._violation is not None:
            self.multipliers = (self.multipliers + self.dual_lr * self._violation).clamp(min=0)
            self._violation = None

    def values(self) -> dict[str, float]:
        """The multipliers by metric (one host sync)."""
        return dict(zip(self.limits, self.multipliers.tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": self.values()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["multipliers"]
        if set(saved) != set(self.limits):
            raise ValueError(f"the checkpoint's budget bounds {sorted(saved)}, the config "
                             f"{sorted(self.limits)}")
        self.multipliers = torch.tensor([float(saved[m]) for m in self.limits],
                                        dtype=torch.float64, device=self.multipliers.device)


# -- derivation ---------------------------------------------------------------------------------
Option = tuple[float, tuple[float, ...], tuple[tuple[str, int], ...]]  # score, cost, (op, src)s
State = tuple[float, tuple[float, ...], Any]  # score, cost so far, back-pointer chain


def _node_options(logp: Tensor, edge_logp: Tensor | None, cost: list[Tensor], ops: Sequence[str],
                  allowed: Tensor, start: int, count: int, keep: int | None) -> list[list[Option]]:
    """A node's choices as groups: one group per edge when it keeps every input, else one group
    of every (k inputs, op per kept input)."""
    def edge_option(j: int, o: int) -> tuple[float, tuple[float, ...]]:
        e = start + j
        score = float(logp[e, o]) + (float(edge_logp[e]) if edge_logp is not None else 0.0)
        return score, tuple(float(c[e, o]) for c in cost)

    usable = [o for o in range(len(ops)) if allowed[o]]
    if keep is None:
        return [[(*edge_option(j, o), ((ops[o], j),)) for o in usable] for j in range(count)]
    group = []
    for inputs in itertools.combinations(range(count), min(keep, count)):
        for choice in itertools.product(usable, repeat=len(inputs)):
            parts = [edge_option(j, o) for j, o in zip(inputs, choice)]
            score = sum(p[0] for p in parts)
            total = tuple(map(sum, zip(*(p[1] for p in parts)))) if parts else ()
            # strongest edge first, as the unconstrained DARTS rule lists them
            order = sorted(range(len(inputs)), key=lambda i: -parts[i][0])
            group.append((score, total, tuple((ops[choice[i]], inputs[i]) for i in order)))
    return [group]


def _pareto(states: list[State], k: int = 1) -> list[State]:
    """Drop every state that ``k`` kept states beat or equal in score at no more cost (k=1: the
    Pareto front). A state that ``k`` others dominate cannot be in the ``k`` best, since each of
    them completed as it would be scores as well within the same budget."""
    states = sorted(states, key=lambda s: -s[0])  # stable: earlier choices win ties
    kept: list[State] = []
    if states and len(states[0][1]) == 1:
        costs: list[float] = []  # the kept states' costs, sorted
        for s in states:
            if bisect.bisect_right(costs, s[1][0]) < k:
                kept.append(s)
                bisect.insort(costs, s[1][0])
        return kept
    for s in states:
        if sum(all(a <= b for a, b in zip(c[1], s[1])) for c in kept) < k:
            kept.append(s)
    return kept


def choice_groups(model: Supernet, table: CostTable | None,
                  metrics: Sequence[str]) -> list[tuple[str, int, list[Option]]]:
    """The derivation's choices as groups of options (one of each group is taken), in cell-kind
    and node order (a chain: layer order), with their log-probabilities and their costs in
    ``metrics`` (by ``table``; with no table, no costs: the unconstrained choice)."""
    if model.chain:
        return _layer_groups(model, table, metrics)
    probs, edge_probs = model.probabilities(), model.edge_probabilities()
    inputs = table.cell_inputs if table is not None else model.cell_inputs
    keep = table.keep if table is not None else model.inputs_kept
    groups: list[tuple[str, int, list[Option]]] = []
    for kind, p in probs.items():
        logp = p.double().clamp_min(1e-300).log().cpu()
        edge_logp = edge_probs[kind].double().clamp_min(1e-300).log().cpu() if kind in edge_probs else None
        cost = [table.ops[m][kind].double().cpu() for m in metrics] if table is not None else []
        allowed = table.allowed[kind] if table is not None else \
            torch.tensor([keep is None or op != "none" for op in model.op_names[kind]])
        n, start = num_nodes(p.shape[0], inputs), 0
        for node in range(n):
            count = inputs + node
            for group in _node_options(logp, edge_logp, cost, model.op_names[kind], allowed,
                                       start, count, keep):
                groups.append((kind, node, group))
            start += count
    return groups


def _layer_groups(model: Supernet, table: CostTable | None,
                  metrics: Sequence[str]) -> list[tuple[str, int, list[Option]]]:
    """A chain's choices: per layer, each candidate with its log-probability and cost."""
    probs = model.probabilities()
    groups: list[tuple[str, int, list[Option]]] = []
    for point in model.chain:
        logp = probs[point.group][point.row].double().clamp_min(1e-300).log().cpu()
        cost = [table.ops[m][point.group][point.row].double().cpu() for m in metrics] \
            if table is not None else []
        groups.append((point.group, 0, [(float(logp[o]), tuple(float(c[o]) for c in cost),
                                         ((point.name, op),)) for o, op in enumerate(point.ops)]))
    return groups


def best_choices(groups: Sequence[tuple[str, int, list[Option]]], cap: Sequence[float],
                 k: int = 1) -> list[tuple[float, list[tuple[tuple[str, int], ...]]]]:
    """The ``k`` highest-scoring ways to take one option of every group whose summed cost stays
    within ``cap`` (per metric), best first: (score, the chosen option's edges per group)."""
    metrics = len(cap)
    # the least each remaining group can add, so that a partial choice that cannot fit is dropped
    least = [tuple(min(o[1][i] for o in g) for i in range(metrics)) for _, _, g in groups]
    rest = [tuple(sum(lst[i] for lst in least[g:]) for i in range(metrics))
            for g in range(len(groups) + 1)]
    states: list[State] = [(0.0, (0.0,) * metrics, None)]
    for g, (_, _, options) in enumerate(groups):
        merged = []
        for score, spent, back in states:
            for o_score, o_cost, edges in options:
                total = tuple(a + b for a, b in zip(spent, o_cost))
                if all(t + r <= c + 1e-9 * max(1.0, abs(c)) for t, r, c in zip(total, rest[g + 1], cap)):
                    merged.append((score + o_score, total, (back, edges)))
        states = _pareto(merged, k)
        if not states:
            return []
    return [(score, unwound(back)) for score, _, back in states[:k]]


def unwound(back: Any) -> list[tuple[tuple[str, int], ...]]:
    """The chosen options' edges, first group first, from a state's back-pointer chain."""
    chain = []
    while back is not None:
        back, edges = back
        chain.append(edges)
    return chain[::-1]


def assemble(groups: Sequence[tuple[str, int, list[Option]]], chain: Sequence[tuple[tuple[str, int], ...]],
             like: Genotype) -> Genotype:
    """The genotype of one option per group (``best_choices``), with ``like``'s concat and inputs
    (a chain's: one (layer, op) per group, in layer order)."""
    if like.layers:
        return Genotype({}, space=like.space, layers=dict(pair for edges in chain for pair in edges))
    cells: dict[str, list[list[tuple[str, int]]]] = {kind: [] for kind in like.cells}
    for (kind, node, _), edges in zip(groups, chain):
        nodes = cells[kind]
        while len(nodes) <= node:
            nodes.append([])
        nodes[node].extend(edges)
    return Genotype(cells, dict(like.concat), space=like.space, inputs=dict(like.inputs))


def derive_within(model: Supernet, table: CostTable, limits: Mapping[str, float]) -> Genotype | None:
    """The most probable genotype (sum of log-probabilities of the ops it keeps, and of the kept
    inputs with edge top-k) whose network fits ``limits``; None if none does.

    When the unconstrained genotype (``model.genotype()``) fits, it is the answer.
    """
    free = model.genotype()
    if fits(table.of(free), limits):
        return free
    metrics = list(limits)
    groups = choice_groups(model, table, metrics)
    best = best_choices(groups, [limits[m] - table.base[m] for m in metrics])
    return assemble(groups, best[0][1], free) if best else None


def check_feasible(model: Supernet, table: CostTable, limits: Mapping[str, float]) -> None:
    """Fail in one line, naming the smallest possible costs, if no genotype fits ``limits``."""
    least = table.minimum()
    for m, limit in limits.items():
        if least[m] > limit:
            raise InputError(f"search.budget.{m}: no architecture of this space fits "
                             f"{format_cost(m, limit)}: the smallest network has "
                             f"{format_cost(m, least[m])}")
    if derive_within(model, table, limits) is None:
        smallest = ", ".join(format_cost(m, least[m]) for m in limits)
        raise InputError(f"search.budget: no architecture of this space fits all bounds at once "
                         f"(the smallest of each alone: {smallest}); loosen one of them")


def expected_cost(table: CostTable, model: Supernet) -> dict[str, float]:
    """The expected cost under the current distribution, as numbers (for logs)."""
    with torch.no_grad():
        return {m: float(v) for m, v in table.expected(model).items()}

