"""Discrete networks from genotypes: the cell, drop path, and building a space's network.

A search space supplies its own network builder (``SearchSpace.network``); this module holds
what those builders share, and the counts reported after retraining.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import InputError
from .genotype import Nodes
from .ops import Zero, build_op, node_sum
from .registry import OPS


def drop_path(x: Tensor, prob: float) -> Tensor:
    """Zero whole samples of ``x`` with probability ``prob``, scaling the rest by 1/(1-prob)."""
    if prob <= 0.0:
        return x
    keep = 1.0 - prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * (mask / keep)


class GenotypeCell(nn.Module):
    """A cell with the ops a genotype names: node = sum of its edges' ops on earlier states.

    States are the ``num_inputs`` cell inputs then the nodes; the output concatenates
    ``concat`` or is the last node. Drop path applies, in training, to every op but identity,
    with ``drop_prob`` when given, else ``self.drop_prob``, which ``nas train`` sets on every
    ``GenotypeCell`` of the network each epoch (``set_drop_path``).
    """

    def __init__(self, nodes: Nodes, C: int, num_inputs: int, reduction: bool = False,
                 concat: Sequence[int] = (), affine: bool = True, track_running_stats: bool = True,
                 wrap: Callable[[str, nn.Module, int], nn.Module] | None = None,
                 where: str = "cell") -> None:
        """``nodes`` lists, per node, its ``(op name, input state)`` edges (``genotype.cells[kind]``);
        every op is ``nas.ops.build_op(name, C, stride, affine, track_running_stats)``, stride 2
        on a reduction cell's edges from the cell inputs.

        ``wrap(op_name, op, C) -> nn.Module``, when given, replaces each op as it is built by
        what it returns, as in the search cell (``nas.MixedEdge``), so a space can retrain the
        ops it searched (e.g. a pooling op followed by a batch-norm). ``where`` names the cell
        in error messages (``genotype normal: node 1 reads state 5 ...``).
        """
        super().__init__()
        self.num_inputs, self.reduction, self.concat = num_inputs, reduction, tuple(concat)
        # the genotype's nodes, as built: what a cost table matches a cell's kind by
        self.nodes = tuple(tuple((op, int(src)) for op, src in node) for node in nodes)
        self.where = where
        self.drop_prob = 0.0
        self.node_inputs: list[list[int]] = []
        self.op_names: list[str] = []  # per op, in node order: its name and stride
        self.strides: list[int] = []
        ops = []
        for i, node in enumerate(nodes):
            available = num_inputs + i
            if not node:
                raise InputError(f"genotype {where}: node {i} has no incoming edge")
            for op_name, src in node:
                if not 0 <= src < available:
                    raise InputError(f"genotype {where}: node {i} reads state {src}, but only "
                                     f"states 0..{available - 1} exist before it")
                if op_name not in OPS:
                    raise InputError(f"genotype {where}: {OPS.unknown_message(op_name)}")
                stride = 2 if reduction and src < num_inputs else 1
                op = build_op(op_name, C, stride, affine, track_running_stats)
                ops.append(wrap(op_name, op, C) if wrap is not None else op)
                self.op_names.append(op_name)
                self.strides.append(stride)
            self.node_inputs.append([src for _, src in node])
        self.ops = nn.ModuleList(ops)
        # What each node runs: (op, input) pairs. A `none` op adds zeros, so it is left out unless
        # the node has nothing else to sum.
        self.node_plan: list[list[tuple[int, int]]] = []
        k = 0
        for sources in self.node_inputs:
            pairs = list(enumerate(sources, k))
            k += len(sources)
            self.node_plan.append([(i, src) for i, src in pairs if not isinstance(self.ops[i], Zero)]
                                  or pairs[:1])
        total = num_inputs + len(nodes)
        for i in self.concat:
            if not 0 <= i < total:
                raise InputError(f"genotype {where}: concat names state {i}, but the cell has "
                                 f"states 0..{total - 1}")

    def forward(self, inputs: Sequence[Tensor], drop_prob: float | None = None) -> Tensor:
        drop_prob = self.drop_prob if drop_prob is None else drop_prob
        states = list(inputs)
        for plan in self.node_plan:
            outs = []
            for k, src in plan:
                op = self.ops[k]
                h = op(states[src])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                outs.append(h)
            states.append(node_sum(outs))
        if self.concat:
            return torch.cat([states[i] for i in self.concat], dim=1)
        return states[-1]


class ResidualBranch(nn.Module):
    """``x + body(x)``, where drop path (in training) zeroes the branch, never the identity.

    A chain space wraps its residual blocks in it: drop path then applies to them alone, and a
    layer without a residual (a stride or a width change) is never dropped.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.drop_prob = 0.0

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.training and self.drop_prob > 0:
            y = drop_path(y, self.drop_prob)
        return x + y


class ChainLayer(nn.Module):
    """A layer of a chain network: the op ``op_name`` that a genotype chose at choice point
    ``point``. Cost tables and ``nas profile`` find a chain's layers by it."""

    def __init__(self, point: str, op_name: str, op: nn.Module) -> None:
        super().__init__()
        self.point, self.op_name, self.op = point, op_name, op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def set_drop_path(model: nn.Module, prob: float) -> int:
    """Set the drop-path probability on every ``GenotypeCell`` and ``ResidualBranch``, and on
    ``model.drop_path_prob``.

    Returns how many places received it (0: the network applies no drop path).
    """
    cells = [m for m in model.modules() if isinstance(m, (GenotypeCell, ResidualBranch))]
    for cell in cells:
        cell.drop_prob = prob
    if hasattr(model, "drop_path_prob"):
        model.drop_path_prob = prob
        return len(cells) + 1
    return len(cells)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no gradients, every module's mode restored after; yields the device."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        param = next(model.parameters(), None)
        with torch.no_grad():
            yield param.device if param is not None else torch.device("cpu")
    finally:
        for m, training in modes.items():
            m.training = training


def count_parameters(model: nn.Module, exclude: str = "auxiliary") -> int:
    """Number of parameters, leaving out those whose name contains ``exclude`` (as DARTS counts)."""
    return sum(p.numel() for name, p in model.named_parameters() if not exclude or exclude not in name)
