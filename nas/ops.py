"""The primitive op table: every candidate op of a cell edge, registered by name.

An op factory is ``fn(C, stride, affine, track_running_stats) -> nn.Module`` mapping C channels
to C channels (spatial size divided by ``stride``). Inside a supernet, batch-norm runs without
affine parameters (``affine=False``), as DARTS does; a retrained network uses ``affine=True``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .errors import InputError
from .registry import OPS


def batch_norm(C: int, affine: bool = True, track_running_stats: bool = True) -> nn.BatchNorm2d:
    """BatchNorm2d with the two switches a search space needs."""
    return nn.BatchNorm2d(C, affine=affine, track_running_stats=track_running_stats)


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv2d -> BatchNorm (NAS-Bench-201's nor_conv, DARTS's preprocessing)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride, padding, dilation, bias=False),
            batch_norm(C_out, affine, track_running_stats))


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BatchNorm."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            batch_norm(C_out, affine, track_running_stats))


class SepConv(nn.Sequential):
    """Two separable convs in a row, the first carrying the stride (DARTS's sep_conv)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, track_running_stats),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, track_running_stats))


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convs, concatenated (C_out must be even)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(C_out, affine, track_running_stats)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class Zero(nn.Module):
    """The `none` op: zeros of the output's shape.

    The zeros are a constant, not ``x * 0``: the same values, without reading ``x`` and with no
    backward pass that multiplies the incoming gradient by 0 and adds it to ``x``'s.
    """

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride])


# The op table, one line an op: name -> factory(C, stride, affine, track_running_stats).
OP_TABLE: dict[str, Callable[[int, int, bool, bool], nn.Module]] = {
    "none":         lambda C, stride, affine, track: Zero(stride),
    "skip_connect": lambda C, stride, affine, track:
        nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine, track),
    "max_pool_3x3": lambda C, stride, affine, track: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine, track:
        nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "sep_conv_3x3": lambda C, stride, affine, track: SepConv(C, C, 3, stride, 1, affine, track),
    "sep_conv_5x5": lambda C, stride, affine, track: SepConv(C, C, 5, stride, 2, affine, track),
    "dil_conv_3x3": lambda C, stride, affine, track: DilConv(C, C, 3, stride, 2, 2, affine, track),
    "dil_conv_5x5": lambda C, stride, affine, track: DilConv(C, C, 5, stride, 4, 2, affine, track),
    "nor_conv_1x1": lambda C, stride, affine, track: ReLUConvBN(C, C, 1, stride, 0, 1, affine, track),
    "nor_conv_3x3": lambda C, stride, affine, track: ReLUConvBN(C, C, 3, stride, 1, 1, affine, track),
}
for _name, _factory in OP_TABLE.items():
    OPS.register(_name, _factory)


def build_op(name: str, C: int, stride: int = 1, affine: bool = True,
             track_running_stats: bool = True) -> nn.Module:
    """Build the registered op ``name`` for C channels and the given stride."""
    op = OPS.get(name)(C, stride, affine, track_running_stats)
    if not isinstance(op, nn.Module):
        raise InputError(f"op '{name}' returned {type(op).__name__}, not a torch.nn.Module: its "
                         "factory must return the module for (C, stride, affine, track)")
    return op


def node_sum(tensors: Sequence[Tensor]) -> Tensor:
    """Sum a node's incoming edge outputs (no extra kernel for the start value)."""
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out
