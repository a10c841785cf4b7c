"""A search space without batch norm, for the distributed tests.

Batch norm normalises each rank's slice of the batch by that slice's own statistics, so 2 ranks
x B/2 and 1 rank x B differ by more than rounding; without it they must agree to rounding.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import nas

OPS = ("skip_connect", "avg_pool_3x3", "max_pool_3x3", "plain_conv_3x3")


@nas.OPS.register("plain_conv_3x3", override=True)
def plain_conv_3x3(C: int, stride: int, affine: bool, track: bool) -> nn.Module:
    """ReLU and a 3x3 conv with bias: no batch norm."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride, 1))


class FlatSupernet(nas.Supernet):
    """A conv stem, ``cells`` cells of one input and two nodes sharing one sample, a classifier."""

    def __init__(self, num_classes: int = 10, mode: str = "gdas", seed: int = 0, C: int = 4,
                 cells: int = 2) -> None:
        super().__init__(mode, {"cell": (3, OPS)}, seed, cell_inputs=1)
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.cells = nn.ModuleList(nas.SearchCell(OPS, C, num_inputs=1, num_nodes=2)
                                   for _ in range(cells))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()["cell"]
        x = self.stem(x)
        for cell in self.cells:
            x = cell((x,), sample)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def genotype(self) -> nas.Genotype:
        return nas.Genotype({"cell": nas.derive_cell(self.probabilities()["cell"], OPS,
                                                     num_inputs=1, keep=None)})


SPACE = nas.SearchSpace(supernet=FlatSupernet, description="no batch norm (distributed tests)")
