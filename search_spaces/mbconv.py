"""A MobileNetV2 / FBNet / ProxylessNAS-style chain space, written as a plugin of `nas`.

A stem, then stages of searchable layers in a row, then a 1x1 head conv, global pooling and a
classifier. Each layer is a choice point of its own: an inverted-residual block (MBConv: 1x1
expansion, depthwise k x k, 1x1 projection) with kernel 3, 5 or 7 and expansion 3 or 6, or
``skip`` where the layer keeps its shape. The first layer of a stage maps the previous width to
the stage's and carries its stride; a block that keeps the shape adds its input (a residual,
``nas.ResidualBranch``, where retraining's drop path applies; it never drops a whole layer).
Every layer has logits of its own; in gdas mode one block per layer is sampled with hard
Gumbel-softmax and only it runs. A genotype is a chain, ``Chain[mbconv](stage1.layer1=...,
...)``.

The defaults are for CIFAR (32x32): a 16-channel stem at full resolution, then 4 stages of 2
layers at widths 24, 32, 64, 96 and strides 1, 2, 2, 1 (8x8 at the end); any input size works
(global pooling), and ``stem_stride=2`` halves larger images first. It uses only the public
API of `nas` and is registered through the ``nas.search_spaces`` entry point (setup.cfg).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

import nas
from nas.ops import batch_norm

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
SKIP = "skip"
BLOCKS = tuple(f"mbconv_k{k}_e{e}" for k in KERNELS for e in EXPANSIONS)


def parse_block(name: str) -> tuple[int, int]:
    """``mbconv_k5_e3`` -> (5, 3); ValueError for any other name."""
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != "mbconv" or not parts[1][1:].isdigit() or \
            not parts[2][1:].isdigit() or parts[1][0] != "k" or parts[2][0] != "e":
        raise ValueError(f"'{name}' is not a block of the mbconv space ({', '.join(BLOCKS)}, {SKIP})")
    return int(parts[1][1:]), int(parts[2][1:])


def keeps_shape(point: nas.ChoicePoint) -> bool:
    """Whether a layer keeps its input's shape: then it adds its input (a residual), and may skip."""
    return point.stride == 1 and point.C_in == point.C_out


def body(name: str, point: nas.ChoicePoint, affine: bool, track: bool) -> nn.Module:
    """The residual branch of candidate ``name`` at ``point`` (zeros for ``skip``), or the
    whole block where the layer changes the shape: 1x1 expansion, depthwise, 1x1 projection."""
    if name == SKIP:
        if not keeps_shape(point):
            raise ValueError(f"'{SKIP}' cannot map {point.C_in} channels to {point.C_out} at "
                             f"stride {point.stride}")
        return nas.ops.Zero()
    kernel, expansion = parse_block(name)
    hidden = point.C_in * expansion
    return nn.Sequential(
        nn.Conv2d(point.C_in, hidden, 1, bias=False), batch_norm(hidden, affine, track), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, kernel, point.stride, kernel // 2, groups=hidden, bias=False),
        batch_norm(hidden, affine, track), nn.ReLU6(),
        nn.Conv2d(hidden, point.C_out, 1, bias=False), batch_norm(point.C_out, affine, track))


def build_block(name: str, point: nas.ChoicePoint) -> nn.Module:
    """The retraining block ``name`` at ``point``: ``x + body(x)`` where the shape is kept (the
    identity for ``skip``), else the block alone."""
    if name == SKIP and keeps_shape(point):
        return nn.Identity()
    block = body(name, point, True, True)
    return nas.ResidualBranch(block) if keeps_shape(point) else block


class SearchLayer(nn.Module):
    """A searchable layer: ``x + w . branch(x)`` where the shape is kept, else ``w . block(x)``,
    over the candidates of its ``nas.MixedEdge`` (one of them runs in gdas mode).

    The residual sits outside the candidates so that their hard weights scale the branch alone:
    batch-norm makes the next layer blind to the scale of its whole input, which would leave
    the logits without a gradient.
    """

    def __init__(self, point: nas.ChoicePoint, affine: bool, track: bool) -> None:
        super().__init__()
        self.point, self.residual = point, keeps_shape(point)
        self.edge = nas.MixedEdge(point.ops, point.C_out, point.stride,
                                  build=lambda op: body(op, point, affine, track))

    def forward(self, x: Tensor, sample: nas.ArchSample) -> Tensor:
        y = self.edge.choose(x, sample, self.point.row)
        return x + y if self.residual else y


def choice_points(stem: int, widths: Sequence[int], layers: Sequence[int],
                  strides: Sequence[int]) -> list[nas.ChoicePoint]:
    """The chain's layers in order: ``stage<s>.layer<l>`` (1-based), each with its candidates."""
    for key, values in (("widths", widths), ("layers", layers), ("strides", strides)):
        if not isinstance(values, (list, tuple)) or not values or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise nas.InputError(f"mbconv: {key} must be a non-empty list of positive whole "
                                 f"numbers, got {values!r}")
    if not len(widths) == len(layers) == len(strides):
        raise nas.InputError(f"mbconv: widths, layers and strides must have one entry per stage, "
                             f"got {len(widths)}, {len(layers)} and {len(strides)}")
    nas.check_positive("mbconv", stem=stem)
    points, C_in = [], stem
    for s, (width, count, stride) in enumerate(zip(widths, layers, strides), 1):
        for i in range(count):
            step = stride if i == 0 else 1
            ops = BLOCKS + ((SKIP,) if step == 1 and C_in == width else ())
            points.append(nas.ChoicePoint(f"stage{s}.layer{i + 1}", ops, C_in, width, step))
            C_in = width
    return points


def _stem(C: int, stride: int, affine: bool, track: bool) -> nn.Sequential:
    """A 3x3 conv (stride 1 for CIFAR's 32x32; 2 for larger images), BN, ReLU6."""
    nas.check_positive("mbconv", stem_stride=stride)
    return nn.Sequential(nn.Conv2d(3, C, 3, stride, 1, bias=False), batch_norm(C, affine, track),
                         nn.ReLU6())


def _head(C_in: int, C_head: int, num_classes: int, norm: bool) -> tuple[nn.Module, nn.Linear]:
    """The 1x1 conv to ``C_head`` channels (none when 0), and the classifier. The supernet's
    head has no batch-norm (``norm=False``): it would make the loss blind to the scale of the
    last layer's output, and so the last layers' logits blind to their sampled weights."""
    if isinstance(C_head, bool) or not isinstance(C_head, int) or C_head < 0:
        raise nas.InputError(f"mbconv: head must be a whole number of channels (0: no head "
                             f"conv), got {C_head!r}")
    if not C_head:
        return nn.Identity(), nn.Linear(C_in, num_classes)
    conv = nn.Sequential(nn.Conv2d(C_in, C_head, 1, bias=not norm),
                         *([nn.BatchNorm2d(C_head)] if norm else []), nn.ReLU6())
    return conv, nn.Linear(C_head, num_classes)


class MBConvSupernet(nas.Supernet):
    """The search network: a stem, a ``SearchLayer`` per choice point, the head."""

    space_name = "mbconv"

    def __init__(self, num_classes: int = 10, mode: str = "gdas", seed: int = 0, stem: int = 16,
                 widths: Sequence[int] = (24, 32, 64, 96), layers: Sequence[int] = (2, 2, 2, 2),
                 strides: Sequence[int] = (1, 2, 2, 1), head: int = 256, stem_stride: int = 1,
                 affine: bool = False, track_running_stats: bool = True) -> None:
        super().__init__(mode, seed=seed, layers=choice_points(stem, widths, layers, strides))
        points, track = self.choice_points(), track_running_stats  # with their logit groups
        self.stem = _stem(stem, stem_stride, affine, track)
        self.layers = nn.ModuleList(SearchLayer(p, affine, track) for p in points)
        self.head, self.classifier = _head(points[-1].C_out, head, num_classes, False)

    def forward(self, x: Tensor) -> Tensor:
        sample = self.sample()  # one block per layer, drawn once per forward
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, sample[layer.point.group])
        return self.classifier(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))

    # genotype(): nas.Supernet's default for chains, each layer's most likely block


class MBConvNetwork(nn.Module):
    """The network to retrain: the chain's blocks as the genotype names them (``nas.ChainLayer``)."""

    def __init__(self, genotype: nas.Genotype, num_classes: int = 10, stem: int = 16,
                 widths: Sequence[int] = (24, 32, 64, 96), layers: Sequence[int] = (2, 2, 2, 2),
                 strides: Sequence[int] = (1, 2, 2, 1), head: int = 256,
                 stem_stride: int = 1) -> None:
        super().__init__()
        points = choice_points(stem, widths, layers, strides)
        names = [p.name for p in points]
        if genotype.cells or list(genotype.layers) != names:
            raise nas.InputError(f"genotype does not fit these mbconv options: it has layers "
                                 f"{list(genotype.layers) or 'none'}, the network {names}")
        # drop path applies to the residual branches alone (nas.set_drop_path sets each one); a
        # genotype without any (all layers skip or change the shape) trains without it
        self.drop_path_prob = 0.0
        self.stem = _stem(stem, stem_stride, True, True)
        self.layers = nn.ModuleList()
        for p in points:
            op = genotype.layers[p.name]
            if op not in p.ops:
                raise nas.InputError(f"genotype layer {p.name}: '{op}' is not one of its "
                                     f"candidates ({', '.join(p.ops)})")
            self.layers.append(nas.ChainLayer(p.name, op, build_block(op, p)))
        self.head, self.classifier = _head(points[-1].C_out, head, num_classes, True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:  # `nas train` sets drop path on each nas.ResidualBranch
            x = layer(x)
        return self.classifier(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


SPACE = nas.SearchSpace(
    supernet=MBConvSupernet, network=MBConvNetwork,
    description="MobileNetV2/FBNet chain: per layer an MBConv block (k3/5/7, e3/6) or skip")
