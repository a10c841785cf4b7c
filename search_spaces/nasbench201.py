"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020), written as a plugin of `nas`.

One cell of 4 nodes: node i sums an edge from every earlier node (6 edges), each edge one of
5 ops. The macro skeleton stacks ``cells_per_stage`` cells at C, 2C and 4C channels, joined by
residual reduction blocks. Every cell shares one set of logits and one sample per forward. A
genotype is the NAS-Bench-201 string ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+...``.

It uses only the public API of `nas` and is registered through the ``nas.search_spaces``
entry-point group (see setup.cfg), exactly as a third-party package registers its own space.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

import nas
from nas.ops import ReLUConvBN

PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 3  # intermediate nodes after the input node


EDGES = len(nas.edge_inputs(1, NODES))


def cell(ops: Sequence[str]) -> nas.Genotype:
    """The cell with ``ops`` on its 6 edges in string order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""
    if len(ops) != EDGES:
        raise ValueError(f"a NAS-Bench-201 cell has {EDGES} edges, got {len(ops)} ops")
    it = iter(ops)
    return nas.Genotype({"cell": [[(next(it), j) for j in range(i + 1)] for i in range(NODES)]})


def all_cells(ops: Sequence[str] = PRIMITIVES) -> Iterator[nas.Genotype]:
    """Every cell of the space over ``ops`` (15,625 for the built-in five), in product order."""
    return (cell(chosen) for chosen in itertools.product(ops, repeat=EDGES))


class ResidualReduction(nn.Module):
    """The residual block between stages: two 3x3 ReLU-Conv-BNs, avg-pool + 1x1 conv shortcut."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track: bool = True) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, 1, affine, track)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, 1, affine, track)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def _skeleton(C: int, cells_per_stage: int, make_cell) -> tuple[nn.ModuleList, int]:
    layers, C_curr = nn.ModuleList(), C
    for stage in range(3):
        if stage:
            layers.append(ResidualReduction(C_curr, 2 * C_curr))
            C_curr *= 2
        layers.extend(make_cell(C_curr) for _ in range(cells_per_stage))
    return layers, C_curr


def _stem(C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


class NB201Supernet(nas.Supernet):
    """The NAS-Bench-201 search network (batch-norm statistics not tracked by default, as GDAS).

    Its genotype is ``nas.Supernet``'s default: every edge keeps its strongest op.
    """

    space_name = "nasbench201"

    def __init__(self, num_classes: int = 10, mode: str = "gdas", seed: int = 0, C: int = 16,
                 cells_per_stage: int = 5, track_running_stats: bool = False,
                 ops: Sequence[str] = PRIMITIVES, affine: bool = False) -> None:
        nas.check_positive("supernet", C=C, cells_per_stage=cells_per_stage)
        self.ops = tuple(ops)
        super().__init__(mode, {"cell": (EDGES, self.ops)}, seed,
                         cell_inputs=1)
        self.stem = _stem(C)
        self.layers, C_last = _skeleton(C, cells_per_stage, lambda c: nas.SearchCell(
            self.ops, c, num_inputs=1, num_nodes=NODES, affine=affine,
            track_running_stats=track_running_stats))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()["cell"]
        x = self.stem(x)
        for layer in self.layers:
            x = layer((x,), sample) if isinstance(layer, nas.SearchCell) else layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1))

class NB201Network(nn.Module):
    """The NAS-Bench-201 network for a genotype (returns logits).

    ``affine=False, track_running_stats=False`` give the cells the search-time flavour of the
    ops, for comparing with a supernet's sampled subnetwork.
    """

    def __init__(self, genotype: nas.Genotype, num_classes: int = 10, C: int = 16,
                 cells_per_stage: int = 5, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        nas.check_positive("network", C=C, cells_per_stage=cells_per_stage)
        if set(genotype.cells) != {"cell"} or len(genotype.cells["cell"]) != NODES:
            raise nas.InputError(
                f"genotype does not fit the nasbench201 space: it needs one cell 'cell' of "
                f"{NODES} nodes, got cells {sorted(genotype.cells)}")
        for i, node in enumerate(genotype.cells["cell"]):
            if sorted(src for _, src in node) != list(range(i + 1)):
                raise nas.InputError(
                    f"genotype does not fit the nasbench201 space: node {i + 1} must have one "
                    f"edge from each of the nodes 0..{i}, got inputs {[src for _, src in node]}")
        self.drop_path_prob = 0.0
        self.stem = _stem(C)
        self.layers, C_last = _skeleton(C, cells_per_stage, lambda c: nas.GenotypeCell(
            genotype.cells["cell"], c, num_inputs=1, affine=affine,
            track_running_stats=track_running_stats, where="cell"))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer((x,), self.drop_path_prob) if isinstance(layer, nas.GenotypeCell) else layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1))


SPACE = nas.SearchSpace(
    supernet=NB201Supernet, network=NB201Network,
    description="NAS-Bench-201: one 4-node cell, 6 edges, 5 ops; 3 stages of residual cells")
