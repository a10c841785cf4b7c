"""Gumbel noise and the Gumbel-softmax (Concrete) distribution, as pure functions of tensors.

Noise is always drawn and used in float32, whatever the logits' dtype, and can never be inf or
nan: the uniforms it is made from lie strictly inside (0, 1). A logit of -inf masks its category:
it is never sampled (unless every category of a row is masked).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

# torch.rand draws k * 2^-24 for k in [0, 2^24); k = 0 would give -log(0). It is replaced by the
# midpoint of its bin, so every uniform lies in [2^-25, 1 - 2^-24] and every Gumbel in about
# [-2.85, 16.6]. The probability mass beyond that range is below 1e-7.
_U_MIN = 2.0 ** -25


class GumbelSample(NamedTuple):
    """A Gumbel-softmax sample and the index of its largest entry along the sampled dim."""

    sample: Tensor
    index: Tensor


def gumbel_noise(shape: Sequence[int] | torch.Size, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel(0, 1) noise in float32, finite by construction."""
    u = torch.rand(tuple(shape), device=device, dtype=torch.float32, generator=generator)
    return u.clamp_(min=_U_MIN).log_().neg_().log_().neg_()


def perturb(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Return ``logits + g`` in float32, with g standard Gumbel noise of the logits' shape."""
    return logits.float() + gumbel_noise(logits.shape, device=logits.device, generator=generator)


def _check_tau(tau: float | Tensor) -> None:
    if isinstance(tau, Tensor):
        return  # a device tensor would cost a host sync to check
    if isinstance(tau, bool) or not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact one-hot of ``index``. Backward: the identity into ``soft``."""

    @staticmethod
    def forward(ctx, soft: Tensor, index: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        return torch.zeros_like(soft).scatter_(dim, index.unsqueeze(dim), 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None, None


def straight_through(soft: Tensor, index: Tensor, dim: int = -1) -> Tensor:
    """One-hot of ``index`` in the forward pass; gradient passed unchanged to ``soft``.

    Equal in value to ``one_hot - soft.detach() + soft`` but exactly one-hot, with no rounding.
    """
    dim = dim % soft.dim()
    return _StraightThrough.apply(soft, index, dim)


def gumbel_softmax(logits: Tensor, tau: float | Tensor = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> GumbelSample:
    """Sample softmax((logits + g) / tau); with ``hard``, a straight-through one-hot sample."""
    _check_tau(tau)
    z = perturb(logits, generator)
    soft = torch.softmax(z / tau, dim=dim)
    # argmax of z, not of soft: with a tiny tau soft can underflow to ties.
    index = z.argmax(dim=dim)
    sample = straight_through(soft, index, dim) if hard else soft
    return GumbelSample(sample.to(logits.dtype), index)


def gumbel_max(logits: Tensor, dim: int = -1, generator: torch.Generator | None = None) -> Tensor:
    """Categorical sample of indices with probabilities softmax(logits), by the Gumbel-max trick."""
    return perturb(logits, generator).argmax(dim=dim)


def gumbel_topk(logits: Tensor, k: int, dim: int = -1,
                generator: torch.Generator | None = None) -> Tensor:
    """k distinct indices distributed as k draws without replacement from softmax(logits)."""
    size = logits.shape[dim]
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, {size}], got {k}")
    return perturb(logits, generator).topk(k, dim=dim).indices


def concrete_log_prob(sample: Tensor, logits: Tensor, tau: float | Tensor, dim: int = -1) -> Tensor:
    """Log-density of a Gumbel-softmax (Concrete) sample (Maddison et al. 2017, Jang et al. 2017).

    The density is over the first K-1 coordinates of the simplex, for finite logits.
    """
    _check_tau(tau)
    k = sample.shape[dim]
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=sample.device)
    log_y = sample.float().log()
    logits = logits.float()
    return (math.lgamma(k) + (k - 1) * tau_t.log()
            + (logits - (tau_t + 1) * log_y).sum(dim)
            - k * torch.logsumexp(logits - tau_t * log_y, dim))
