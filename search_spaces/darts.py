"""The DARTS CIFAR search space (Liu et al., ICLR 2019), written as a plugin of `nas`.

Cells have two inputs (the outputs of the two previous cells) and four intermediate nodes:
14 mixed edges over 8 ops. Normal cells keep the resolution; reduction cells, at 1/3 and 2/3
of the depth, halve it and double the channels. All normal cells share one set of logits and
one sample per forward, and so do all reduction cells. ``fixed_reduction=True`` replaces the
searched reduction cell by the hand-designed one of GDAS (GDAS-FRC); its genotype then has a
normal cell only, and the network built from it uses the same fixed reduction cell.

It uses only the public API of `nas` and is registered through the ``nas.search_spaces``
entry-point group (see setup.cfg), exactly as a third-party package registers its own space.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nas
from nas.ops import FactorizedReduce, ReLUConvBN, batch_norm

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NODES = 4
CONCAT = (2, 3, 4, 5)


def reduction_layers(cells: int) -> tuple[int, int]:
    """Indices of the two reduction cells: 1/3 and 2/3 of the depth."""
    if cells < 3:
        raise nas.InputError(f"the darts space needs at least 3 cells (a normal cell and two "
                             f"reduction cells), got cells={cells}")
    return cells // 3, 2 * cells // 3


def _pool_bn(affine: bool, track: bool):
    """DARTS's search edges follow every pooling op with a batch-norm."""
    def wrap(name: str, op: nn.Module, C: int) -> nn.Module:
        return nn.Sequential(op, batch_norm(C, affine, track)) if "pool" in name else op
    return wrap


def _preprocess(C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool,
                track: bool) -> tuple[nn.Module, nn.Module]:
    pre0 = (FactorizedReduce(C_pp, C, affine, track) if reduction_prev
            else ReLUConvBN(C_pp, C, 1, 1, 0, 1, affine, track))
    return pre0, ReLUConvBN(C_p, C, 1, 1, 0, 1, affine, track)


def _stem(C_in: int, C_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(C_in, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out))


class FixedReductionCell(nn.Module):
    """GDAS's hand-designed reduction cell: two grouped 1x3/3x1 conv branches, two max pools."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool = True,
                 track: bool = True) -> None:
        super().__init__()
        self.reduction = True
        self.pre0, self.pre1 = _preprocess(C_pp, C_p, C, reduction_prev, affine, track)

        def conv_branch() -> nn.Sequential:
            return nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, (1, 3), stride=(1, 2), padding=(0, 1), groups=8, bias=not affine),
                nn.Conv2d(C, C, (3, 1), stride=(2, 1), padding=(1, 0), groups=8, bias=not affine),
                batch_norm(C, affine, track), nn.ReLU(inplace=False),
                nn.Conv2d(C, C, 1, bias=not affine), batch_norm(C, affine, track))

        def pool_branch() -> nn.Sequential:
            return nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), batch_norm(C, affine, track))

        self.branches = nn.ModuleList([conv_branch(), conv_branch(), pool_branch(), pool_branch()])

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        s0, s1 = self.pre0(s0), self.pre1(s1)
        outs = [branch(x) for branch, x in zip(self.branches, (s0, s1, s0, s1))]
        if self.training and drop_prob > 0:
            outs = [nas.drop_path(h, drop_prob) for h in outs]
        return torch.cat(outs, dim=1)


# -- search -------------------------------------------------------------------------------------
class DartsSearchCell(nn.Module):
    """Preprocess both inputs to C channels, then the mixed cell of 14 edges."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 ops: Sequence[str], track: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = _preprocess(C_pp, C_p, C, reduction_prev, False, track)
        self.cell = nas.SearchCell(ops, C, num_inputs=2, num_nodes=NODES, reduction=reduction,
                                   concat=CONCAT, affine=False, track_running_stats=track,
                                   wrap=_pool_bn(False, track))

    def forward(self, s0: Tensor, s1: Tensor, sample: nas.ArchSample) -> Tensor:
        return self.cell((self.pre0(s0), self.pre1(s1)), sample)


class DartsSupernet(nas.Supernet):
    """The DARTS search network: a 3C-channel stem, ``cells`` cells, global pool, classifier."""

    inputs_kept = 2  # a derived node keeps 2 inputs: edge top-k may sample 1 or 2 of them
    space_name = "darts"  # genotype(): nas.Supernet's default (cells output nodes 2-5 concatenated)

    def __init__(self, num_classes: int = 10, mode: str = "gdas", seed: int = 0, C: int = 16,
                 cells: int = 8, stem_multiplier: int = 3, fixed_reduction: bool = False,
                 track_running_stats: bool = True, ops: Sequence[str] = PRIMITIVES) -> None:
        nas.check_positive("supernet", C=C, cells=cells, stem_multiplier=stem_multiplier)
        self.ops = tuple(ops)
        edges = len(nas.edge_inputs(2, NODES))
        kinds = ("normal",) if fixed_reduction else ("normal", "reduce")
        super().__init__(mode, {k: (edges, self.ops) for k in kinds}, seed, cell_inputs=2)
        self.fixed_reduction = fixed_reduction
        C_stem = stem_multiplier * C
        self.stem = _stem(3, C_stem)
        C_pp, C_p, C_curr, reduction_prev = C_stem, C_stem, C, False
        self.cells = nn.ModuleList()
        reductions = reduction_layers(cells)
        for i in range(cells):
            reduction = i in reductions
            C_curr = C_curr * 2 if reduction else C_curr
            if reduction and fixed_reduction:
                cell = FixedReductionCell(C_pp, C_p, C_curr, reduction_prev, False,
                                          track_running_stats)
            else:
                cell = DartsSearchCell(C_pp, C_p, C_curr, reduction, reduction_prev, self.ops,
                                  track_running_stats)
            self.cells.append(cell)
            C_pp, C_p, reduction_prev = C_p, len(CONCAT) * C_curr, reduction
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if isinstance(cell, FixedReductionCell):
                s0, s1 = s1, cell(s0, s1)
            else:
                s0, s1 = s1, cell(s0, s1, sample["reduce" if cell.reduction else "normal"])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# -- retraining ---------------------------------------------------------------------------------
class AuxiliaryHead(nn.Module):
    """DARTS's CIFAR auxiliary classifier, fed the 8x8 output of the second reduction cell."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        if x.shape[-2:] == (8, 8):  # DARTS: 5x5 windows, stride 3 -> 2x2
            x = F.avg_pool2d(x, 5, stride=3, count_include_pad=False)
        else:  # other input sizes (small test images): straight to 2x2
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class DartsCell(nn.Module):
    """Preprocess both inputs to C channels, then the cell the genotype names."""

    def __init__(self, genotype: nas.Genotype, kind: str, C_pp: int, C_p: int, C: int,
                 reduction_prev: bool, affine: bool, track: bool, pool_bn: bool) -> None:
        super().__init__()
        self.reduction = kind == "reduce"
        self.pre0, self.pre1 = _preprocess(C_pp, C_p, C, reduction_prev, affine, track)
        self.cell = nas.GenotypeCell(genotype.cells[kind], C, num_inputs=2,
                                     reduction=self.reduction,
                                     concat=genotype.concat.get(kind) or CONCAT, affine=affine,
                                     track_running_stats=track,
                                     wrap=_pool_bn(affine, track) if pool_bn else None,
                                     where=f"{kind} cell")
        self.multiplier = len(self.cell.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        return self.cell((self.pre0(s0), self.pre1(s1)), drop_prob)


class DartsNetwork(nn.Module):
    """The DARTS CIFAR network for a genotype: returns ``(logits, auxiliary logits or None)``.

    ``drop_path_prob`` (set by the trainer) applies to every non-identity op in training. The
    auxiliary head runs only in training. ``affine=False, pool_bn=True`` give the search-time
    flavour of the ops, for comparing with a supernet's sampled subnetwork.
    """

    def __init__(self, genotype: nas.Genotype, num_classes: int = 10, C: int = 36,
                 cells: int = 20, auxiliary: bool = True, stem_multiplier: int = 3,
                 affine: bool = True, track_running_stats: bool = True,
                 pool_bn: bool = False) -> None:
        super().__init__()
        nas.check_positive("network", C=C, cells=cells, stem_multiplier=stem_multiplier)
        kinds = set(genotype.cells)
        if "normal" not in kinds or not kinds <= {"normal", "reduce"}:
            raise nas.InputError(f"genotype does not fit the darts space: it has cells "
                                 f"{sorted(kinds)}, but needs 'normal' and 'reduce' (or 'normal' "
                                 "alone, with GDAS's fixed reduction cell)")
        self.drop_path_prob = 0.0
        self.aux_index = 2 * cells // 3 if auxiliary else -1
        C_stem = stem_multiplier * C
        self.stem = _stem(3, C_stem)
        C_pp, C_p, C_curr, reduction_prev = C_stem, C_stem, C, False
        self.cells = nn.ModuleList()
        C_aux = C_p
        reductions = reduction_layers(cells)
        for i in range(cells):
            reduction = i in reductions
            C_curr = C_curr * 2 if reduction else C_curr
            if reduction and "reduce" not in kinds:
                cell: nn.Module = FixedReductionCell(C_pp, C_p, C_curr, reduction_prev, affine,
                                                     track_running_stats)
                multiplier = 4
            else:
                cell = DartsCell(genotype, "reduce" if reduction else "normal", C_pp, C_p,
                                   C_curr, reduction_prev, affine, track_running_stats, pool_bn)
                multiplier = cell.multiplier
            self.cells.append(cell)
            C_pp, C_p, reduction_prev = C_p, multiplier * C_curr, reduction
            if i == self.aux_index:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux


SPACE = nas.SearchSpace(
    supernet=DartsSupernet, network=DartsNetwork,
    description="DARTS CIFAR space: 2-input cells, 4 nodes, 14 edges, 8 ops; normal + reduction")
