"""Choice points: every place where an architecture picks one candidate among several.

A cell's edge is one kind of choice point (``normal/3<-1``: every normal cell's edge from state
1 to node 3, all sharing one row of logits); a layer of a chain network is another
(``stage2.layer1``: its own row). A supernet lists its choice points (``Supernet.choice_points``)
and every view of the architecture works from that list: the cost table and the budgeted
derivation (one entry per choice point and candidate), genotypes, TensorBoard heatmaps,
pictures and ``nas profile``'s block labels.

A choice point's candidates map ``C_in`` channels to ``C_out`` at ``stride``; a chain layer's
candidates may change the width or the resolution (all of one layer's candidates alike). Those
of a cell edge map C to C in every cell of its kind, at widths (and, for the edges leaving a
reduction cell's inputs, strides) that the supernet's layout decides, so its ``C_in``, ``C_out``
and ``stride`` are None.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class ChoicePoint:
    """One choice point: its name, candidate ops, where its logits are and the shapes it maps.

    ``group`` is the logit group (a cell kind, or a chain layer's own name) and ``row`` the row
    of that group's ``[rows, ops]`` logits that this choice point samples from.
    """

    name: str
    ops: tuple[str, ...]
    C_in: int | None = None
    C_out: int | None = None
    stride: int | None = 1
    group: str = ""
    row: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"a choice point needs a non-empty name, got {self.name!r}")
        ops = tuple(self.ops) if not isinstance(self.ops, str) else ()
        if not ops or not all(isinstance(o, str) and o for o in ops) or len(set(ops)) != len(ops):
            raise InputError(f"choice point '{self.name}': its candidates must be a non-empty "
                             f"list of distinct op names, got {self.ops!r}")
        if self.stride is not None and (isinstance(self.stride, bool) or
                                        not isinstance(self.stride, int) or self.stride < 1):
            raise InputError(f"choice point '{self.name}': stride must be a positive whole "
                             f"number, got {self.stride!r}")
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "group", self.group or self.name)

    def describe(self) -> str:
        """``stage2.layer1: 16 -> 24 channels, stride 2, 7 candidates``."""
        shape = f"{self.C_in} -> {self.C_out} channels, " if self.C_in is not None else ""
        stride = f"stride {self.stride}, " if self.stride is not None else ""
        return f"{self.name}: {shape}{stride}{len(self.ops)} candidates"


def chain_ops(points: list[ChoicePoint]) -> list[str]:
    """Every candidate of the chain, in order of first appearance (the heatmap's columns)."""
    seen: dict[str, None] = {}
    for point in points:
        for op in point.ops:
            seen.setdefault(op)
    return list(seen)
