"""A complete search-space plugin in one file: a new op, a supernet, its genotype and network.

The space: a 3x3 conv stem, then ``cells`` cells in a row, each with one input and two nodes
(three mixed edges), a reduction (stride-2 conv) halfway, global pooling and a classifier. It
searches over four ops, one of them defined here. Use it from a config without packaging:

    space: scripts/example_plugin.py:SPACE

or package it and declare it in your setup.cfg, which is how the built-in spaces register:

    [options.entry_points]
    nas.search_spaces =
        tiny_chain = my_package.example_plugin:SPACE
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import nas

CANDIDATES = ("skip_connect", "avg_pool_3x3", "nor_conv_3x3", "mbconv_3x3")  # names in nas.OPS


@nas.OPS.register("mbconv_3x3")
def mbconv_3x3(C: int, stride: int, affine: bool, track: bool) -> nn.Module:
    """An inverted bottleneck: expand 3x, depthwise 3x3, project back (C -> C channels)."""
    return nn.Sequential(
        nn.Conv2d(C, 3 * C, 1, bias=False), nas.ops.batch_norm(3 * C, affine, track), nn.ReLU(),
        nn.Conv2d(3 * C, 3 * C, 3, stride, 1, groups=3 * C, bias=False),
        nas.ops.batch_norm(3 * C, affine, track), nn.ReLU(),
        nn.Conv2d(3 * C, C, 1, bias=False), nas.ops.batch_norm(C, affine, track))


def _skeleton(C: int, cells: int, make_cell) -> tuple[nn.ModuleList, int]:
    layers = nn.ModuleList()
    for i in range(cells):
        if i == cells // 2:  # reduce once, halfway
            layers.append(nn.Sequential(nn.Conv2d(C, 2 * C, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * C)))
            C *= 2
        layers.append(make_cell(C))
    return layers, C


class ChainSupernet(nas.Supernet):
    """The search network: every cell shares one set of logits, [3 edges, 4 ops]."""

    def __init__(self, num_classes: int = 10, mode: str = "gdas", seed: int = 0, C: int = 8,
                 cells: int = 2) -> None:
        super().__init__(mode, {"cell": (3, CANDIDATES)}, seed, cell_inputs=1)
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.layers, C = _skeleton(C, cells, lambda c: nas.SearchCell(CANDIDATES, c, num_inputs=1, num_nodes=2))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()["cell"]  # one sample per forward, shared by every cell
        x = self.stem(x)
        for layer in self.layers:
            x = layer((x,), sample) if isinstance(layer, nas.SearchCell) else layer(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ChainNetwork(nn.Module):
    """The network to retrain: the same skeleton with the genotype's ops."""

    def __init__(self, genotype: nas.Genotype, num_classes: int = 10, C: int = 16,
                 cells: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.layers, C = _skeleton(C, cells, lambda c: nas.GenotypeCell(
            genotype.cells["cell"], c, num_inputs=1))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:  # `nas train` sets each GenotypeCell's drop path itself
            x = layer((x,)) if isinstance(layer, nas.GenotypeCell) else layer(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


SPACE = nas.SearchSpace(supernet=ChainSupernet, network=ChainNetwork,
                        description="example: chain of 1-input, 2-node cells over 4 ops")
