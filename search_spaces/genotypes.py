"""Published genotypes, by name: ``nas genotype show DARTS_V2``, ``nas train --genotype DARTS_V2``.

Each cell list is copied, as data, from the paper's reference code and written in this project's
format; ``source`` says where it comes from and what the paper reports for it. They are registered
in ``nas.GENOTYPES`` through the ``nas.genotypes`` entry-point group (see setup.cfg), the same way a
third-party package adds its own.
"""
from __future__ import annotations

import nas

CONCAT = (2, 3, 4, 5)


def _darts(normal, reduce=None, source: str = "") -> nas.Genotype:
    """A DARTS-space genotype from DARTS-style flat edge lists (two edges per node)."""
    cells = {"normal": [normal[i:i + 2] for i in range(0, len(normal), 2)]}
    if reduce is not None:
        cells["reduce"] = [reduce[i:i + 2] for i in range(0, len(reduce), 2)]
    return nas.Genotype(cells, {kind: CONCAT for kind in cells}, space="darts", source=source)


DARTS_V1 = _darts(
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    source="DARTS first order (Liu et al., ICLR 2019), quark0/darts cnn/genotypes.py DARTS_V1; "
           "3.00 +- 0.14% CIFAR-10 test error, 3.3M parameters")
DARTS_V2 = _darts(
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    source="DARTS second order (Liu et al., ICLR 2019), quark0/darts cnn/genotypes.py DARTS_V2; "
           "2.76 +- 0.09% CIFAR-10 test error, 3.3M parameters")
GDAS = _darts(
    [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)],
    [("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
     ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)],
    source="GDAS (Dong & Yang, CVPR 2019), D-X-Y/AutoDL-Projects GDAS_V1; 2.93% CIFAR-10 test "
           "error, 3.4M parameters")
GDAS_FRC = _darts(
    [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
     ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0), ("sep_conv_3x3", 2)],
    source="GDAS with the fixed reduction cell (Dong & Yang, CVPR 2019), D-X-Y's GDAS code "
           "GDAS_F1 (normal cell only; the network uses GDAS's hand-designed reduction cell); "
           "2.82% CIFAR-10 test error, 2.5M parameters")
PC_DARTS = _darts(
    [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
     ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    source="PC-DARTS (Xu et al., ICLR 2020), yuhuixu1993/PC-DARTS genotypes.py PC_DARTS_cifar; "
           "2.57 +- 0.07% CIFAR-10 test error, 3.6M parameters")
DRNAS_NB201 = nas.parse_genotype(
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
DRNAS_NB201 = nas.Genotype(DRNAS_NB201.cells, space="nasbench201", source=(
    "DrNAS (Chen et al., ICLR 2021) on NAS-Bench-201: the cell with the 94.36 / 73.51 / 46.34% "
    "(CIFAR-10 / CIFAR-100 / ImageNet16-120) test accuracy its paper reports, +- 0.00 over runs"))

PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "GDAS": GDAS, "GDAS_FRC": GDAS_FRC,
             "PC_DARTS": PC_DARTS, "DRNAS_NB201": DRNAS_NB201}
for _name, _genotype in PUBLISHED.items():
    nas.GENOTYPES.register(_name, _genotype, source="built-in", override=True)
