"""A second example plugin, of another shape than ``example_plugin.py``: one-input cells of three
nodes whose output is the concatenation of two of them through a 1x1 conv, in a normal /
reduction / normal layout, over three ops defined here.

A cell's states: 0 is its input, 1-3 its nodes (node 1 reads state 0, node 2 states 0-1, node 3
states 0-2: six mixed edges). Its output concatenates states 2 and 3 (2C channels), and a 1x1
conv maps them to the cell's output channels: C in a normal cell, 2C in a reduction cell, whose
edges leaving its input have stride 2. Normal and reduction cells have logits of their own. The
supernet declares the concat (``concat=CONCAT``), so its genotypes, their JSON and their
pictures show the output. Use it by its file path, from a config:

    space: scripts/example_plugin_concat.py:SPACE

or packaged (tests/test_plugins.py installs it both ways), through an entry point:

    [options.entry_points]
    nas.search_spaces =
        concat_cells = my_package.example_plugin_concat:SPACE
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import nas

NODES = 3
CONCAT = (2, 3)  # the states the cell outputs, concatenated: its nodes 2 and 3
CANDIDATES = ("skip_connect", "dw_sep_5x5", "dil3_conv_3x3", "avg_pool_2x2")  # names in nas.OPS


@nas.OPS.register("dw_sep_5x5")
def dw_sep_5x5(C: int, stride: int, affine: bool, track: bool) -> nn.Module:
    """A depthwise-separable 5x5 conv: ReLU, depthwise 5x5 (it carries the stride), 1x1, BN."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 5, stride, 2, groups=C, bias=False),
                         nn.Conv2d(C, C, 1, bias=False), nas.ops.batch_norm(C, affine, track))


@nas.OPS.register("dil3_conv_3x3")
def dil3_conv_3x3(C: int, stride: int, affine: bool, track: bool) -> nn.Module:
    """A 3x3 conv with dilation 3 (a 7x7 field of view): ReLU, conv, BN."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride, 3, dilation=3, bias=False),
                         nas.ops.batch_norm(C, affine, track))


class AvgPool2x2(nn.Module):
    """A 2x2 average pool. At stride 1 the input is first padded by one row and column (edge
    values repeated), so the size is kept; at stride 2 it halves the size, rounding up as the
    convs do."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        return F.avg_pool2d(x, 2, self.stride, ceil_mode=True)


@nas.OPS.register("avg_pool_2x2")
def avg_pool_2x2(C: int, stride: int, affine: bool, track: bool) -> nn.Module:
    """A 2x2 average pool (no weights)."""
    return AvgPool2x2(stride)


def layout(cells_per_stage: int) -> list[str]:
    """The cell kinds in order: ``cells_per_stage`` normal cells, a reduction cell, as many normal."""
    return ["normal"] * cells_per_stage + ["reduce"] + ["normal"] * cells_per_stage


def _stem(C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


def _project(C_in: int, C_out: int, affine: bool, track: bool) -> nn.Sequential:
    """The 1x1 conv from the concatenated states to the cell's output channels."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C_in, C_out, 1, bias=False),
                         nas.ops.batch_norm(C_out, affine, track))


class ConcatSearchCell(nn.Module):
    """The mixed edges of one cell (``nas.SearchCell``), then the 1x1 conv over its concat."""

    def __init__(self, C_in: int, C_out: int, reduction: bool, track: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.cell = nas.SearchCell(CANDIDATES, C_in, num_inputs=1, num_nodes=NODES,
                                   reduction=reduction, concat=CONCAT, affine=False,
                                   track_running_stats=track)
        self.project = _project(len(CONCAT) * C_in, C_out, False, track)

    def forward(self, x: Tensor, sample: nas.ArchSample) -> Tensor:
        return self.project(self.cell((x,), sample))  # [N, C_in, H, W] -> [N, C_out, H', W']


class ConcatSupernet(nas.Supernet):
    """The search network: a stem, the cells of ``layout``, global pooling, a classifier."""

    def __init__(self, num_classes: int = 10, C: int = 8, cells_per_stage: int = 1,
                 track_running_stats: bool = True) -> None:
        nas.check_positive("supernet", C=C, cells_per_stage=cells_per_stage)
        edges = len(nas.edge_inputs(1, NODES))  # 6
        super().__init__(cells={"normal": (edges, CANDIDATES), "reduce": (edges, CANDIDATES)},
                         cell_inputs=1, concat=CONCAT)
        self.stem = _stem(C)
        self.cells = nn.ModuleList()
        for kind in layout(cells_per_stage):
            C_out = 2 * C if kind == "reduce" else C
            self.cells.append(ConcatSearchCell(C, C_out, kind == "reduce", track_running_stats))
            C = C_out
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()  # one per forward, shared by every cell of a kind
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, sample["reduce" if cell.reduction else "normal"])
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    # genotype(): nas.Supernet's default (cell_inputs=1: every edge keeps its strongest op; the
    # declared concat (2, 3) is the cells' output)


class ConcatCell(nn.Module):
    """A cell of the network to retrain: the genotype's ops (``nas.GenotypeCell``), then the 1x1 conv."""

    def __init__(self, genotype: nas.Genotype, kind: str, C_in: int, C_out: int) -> None:
        super().__init__()
        self.cell = nas.GenotypeCell(genotype.cells[kind], C_in, num_inputs=1,
                                     reduction=kind == "reduce",
                                     concat=genotype.concat.get(kind) or CONCAT, where=f"{kind} cell")
        self.project = _project(len(self.cell.concat) * C_in, C_out, True, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.cell((x,)))  # `nas train` sets the GenotypeCell's drop path


class ConcatNetwork(nn.Module):
    """The network to retrain: the supernet's skeleton with the genotype's cells."""

    def __init__(self, genotype: nas.Genotype, num_classes: int = 10, C: int = 16,
                 cells_per_stage: int = 1) -> None:
        super().__init__()
        nas.check_positive("network", C=C, cells_per_stage=cells_per_stage)
        if set(genotype.cells) != {"normal", "reduce"} or any(
                genotype.inputs[kind] != 1 for kind in genotype.cells):
            raise nas.InputError(f"the genotype does not fit the concat-cells space: it has cells "
                                 f"{sorted(genotype.cells)} with inputs {genotype.inputs}, but "
                                 "needs one-input 'normal' and 'reduce' cells")
        self.stem = _stem(C)
        self.cells = nn.ModuleList()
        for kind in layout(cells_per_stage):
            C_out = 2 * C if kind == "reduce" else C
            self.cells.append(ConcatCell(genotype, kind, C, C_out))
            C = C_out
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


SPACE = nas.SearchSpace(supernet=ConcatSupernet, network=ConcatNetwork,
                        description="example: 1-input cells of 3 nodes, output = 1x1 conv of "
                                    "nodes 2+3 concatenated; normal / reduce / normal; 4 ops")
