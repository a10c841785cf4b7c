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


def shifted(logits: Tensor, dim: int = -1) -> Tensor:
    """``logits`` minus their largest finite entry along ``dim``, in float32.

    Softmax and argmax do not change, but huge logits (1e6, or float64 beyond float32's range)
    become small, so float32 Gumbel noise added to them is not rounded away.
    """
    # float64 is shifted in float64 (its range exceeds float32's); the rest exactly in float32
    wide = logits if logits.dtype == torch.float64 else logits.float()
    finite = torch.isfinite(wide)
    top = wide.detach().masked_fill(~finite, float("-inf")).amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (wide - top).float()


def perturb(logits: Tensor, generator: torch.Generator | None = None, dim: int = -1) -> Tensor:
    """Return ``logits + g`` in float32 (logits shifted as by ``shifted``), g standard Gumbel noise."""
    return shifted(logits, dim) + gumbel_noise(logits.shape, device=logits.device,
                                               generator=generator)


def _check_tau(tau: float | Tensor) -> None:
    if isinstance(tau, Tensor):
        return  # a device tensor would cost a host sync to check
    if isinstance(tau, bool) or not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact one-hot (k-hot) of ``index`` along ``dim``. Backward: the identity
    into ``soft``. ``index`` has the shape of ``soft`` with 1 (k) entries along ``dim``."""

    @staticmethod
    def forward(ctx, soft: Tensor, index: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        return torch.zeros_like(soft).scatter_(dim, index, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None, None


def straight_through(soft: Tensor, index: Tensor, dim: int = -1) -> Tensor:
    """One-hot of ``index`` in the forward pass; gradient passed unchanged to ``soft``.

    Equal in value to ``one_hot - soft.detach() + soft`` but exactly one-hot, with no rounding.
    """
    dim = dim % soft.dim()
    return _StraightThrough.apply(soft, index.unsqueeze(dim), dim)


def gumbel_softmax(logits: Tensor, tau: float | Tensor = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> GumbelSample:
    """Sample softmax((logits + g) / tau); with ``hard``, a straight-through one-hot sample."""
    _check_tau(tau)
    z = perturb(logits, generator, dim)
    soft = torch.softmax(z / tau, dim=dim)
    # argmax of z, not of soft: with a tiny tau soft can underflow to ties.
    index = z.argmax(dim=dim)
    sample = straight_through(soft, index, dim) if hard else soft
    return GumbelSample(sample.to(logits.dtype), index)


def conditional_gumbel(logits: Tensor, index: Tensor, samples: int, dim: int = -1,
                       generator: torch.Generator | None = None) -> Tensor:
    """``samples`` draws of ``shifted(logits) + g`` conditioned on their argmax being ``index``.

    (``shifted``: the logits minus their row maximum.) Returns float32 of shape ``[samples, *logits.shape]``. Top-down sampling (Maddison et al.
    2014): the maximum is Gumbel around logsumexp(logits) and sits at ``index``; every other
    entry is its own Gumbel draw truncated below that maximum. Masked (-inf) entries stay -inf.
    """
    logits = shifted(logits, dim)
    dim = dim % logits.dim()
    shape = (samples, *logits.shape)
    top = torch.logsumexp(logits, dim, keepdim=True) + gumbel_noise(
        (samples, *logits.shape[:dim], 1, *logits.shape[dim + 1:]),
        device=logits.device, generator=generator)
    free = logits + gumbel_noise(shape, device=logits.device, generator=generator)
    below = -torch.logaddexp(-top, -free)  # a Gumbel truncated below top, by inversion
    index = index.unsqueeze(dim).unsqueeze(0).expand(samples, *index.unsqueeze(dim).shape)
    # the draws are stacked in front: the sampled dim is one further along
    return below.scatter(dim + 1, index, top.expand_as(below).gather(dim + 1, index))


def gumbel_rao(logits: Tensor, index: Tensor, tau: float | Tensor, samples: int, dim: int = -1,
               generator: torch.Generator | None = None) -> Tensor:
    """The one-hot of ``index`` with the Gumbel-Rao gradient (Paulus et al. 2021).

    The backward pass goes through the mean of ``samples`` soft samples softmax((logits + g)/tau)
    whose noise g is drawn conditioned on argmax(logits + g) = index: the straight-through
    Gumbel-softmax gradient, Rao-Blackwellised over the noise, for K softmaxes more.
    """
    _check_tau(tau)
    with torch.no_grad():
        z = conditional_gumbel(logits, index, samples, dim, generator)
        noise = torch.where(torch.isfinite(z), z - shifted(logits, dim), torch.zeros_like(z))
    soft = torch.softmax((shifted(logits, dim) + noise) / tau, dim=dim % logits.dim() + 1).mean(0)
    return straight_through(soft, index, dim).to(logits.dtype)


def reinmax(logits: Tensor, index: Tensor, tau: float | Tensor, dim: int = -1) -> Tensor:
    """The one-hot of ``index`` with the ReinMax gradient (Liu et al. 2023).

    ``index`` must be a sample of softmax(logits). With D its one-hot, pi0 = softmax(logits) and
    pi1 = (D + softmax(logits / tau)) / 2, the backward pass goes through 2 * pi1 - pi0 / 2, where
    pi1 is differentiated as softmax(logits + c) at the constant c that makes it equal pi1 (Heun's
    method: second-order accurate where straight-through is first-order).
    """
    _check_tau(tau)
    logits32 = logits.float()
    pi0 = torch.softmax(logits32, dim)
    hard = torch.zeros_like(pi0).scatter_(dim, index.unsqueeze(dim), 1.0)
    pi1 = (hard + torch.softmax(logits32 / tau, dim)) / 2
    shift = torch.where(torch.isfinite(logits32), pi1.log() - logits32, torch.zeros_like(pi1))
    pi1 = torch.softmax(shift.detach() + logits32, dim)
    return straight_through(2 * pi1 - pi0 / 2, index, dim).to(logits.dtype)


def gumbel_max(logits: Tensor, dim: int = -1, generator: torch.Generator | None = None) -> Tensor:
    """Categorical sample of indices with probabilities softmax(logits), by the Gumbel-max trick."""
    return perturb(logits, generator, dim).argmax(dim=dim)


def gumbel_topk(logits: Tensor, k: int, dim: int = -1,
                generator: torch.Generator | None = None) -> Tensor:
    """k distinct indices distributed as k draws without replacement from softmax(logits)."""
    size = logits.shape[dim]
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, {size}], got {k}")
    return perturb(logits, generator, dim).topk(k, dim=dim).indices


def relaxed_topk(scores: Tensor, k: int, tau: float | Tensor, dim: int = -1) -> Tensor:
    """A relaxed k-hot vector of the k largest ``scores``: the sum of k successive softmaxes.

    Each softmax(scores / tau) is followed by softly removing what it picked, adding
    log(1 - a) to the scores (Xie & Ermon 2019); as tau -> 0 the sum tends to the exact k-hot
    of ``scores.topk(k)``. Masked (-inf) entries stay 0. Float32, sums to k along ``dim``.
    """
    _check_tau(tau)
    scores = scores.float()
    total, a = torch.zeros_like(scores), None
    for _ in range(k):
        if a is not None:  # a is below 1 in exact arithmetic; the clamp keeps log finite
            scores = scores + (1 - a).clamp_min(1e-30).log()
        a = torch.softmax(scores / tau, dim=dim)
        total = total + a
    return total


def gumbel_topk_st(logits: Tensor, k: int, tau: float | Tensor, dim: int = -1,
                   generator: torch.Generator | None = None) -> GumbelSample:
    """A Gumbel top-k sample: the exact k-hot in the forward pass, the relaxed top-k's gradient.

    ``index`` holds the k indices of the largest ``logits + g`` (largest first): k draws
    without replacement from softmax(logits), in order (Plackett-Luce). The backward pass goes
    through ``relaxed_topk(logits + g, k, tau)``, the same noise.
    """
    size = logits.shape[dim]
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, {size}], got {k}")
    z = perturb(logits, generator, dim)
    index = z.topk(k, dim=dim).indices
    soft = relaxed_topk(z, k, tau, dim)
    return GumbelSample(_StraightThrough.apply(soft, index, dim % soft.dim()).to(logits.dtype), index)


def plackett_luce_log_prob(logits: Tensor, order: Tensor, dim: int = -1) -> Tensor:
    """Log-probability of drawing ``order`` (indices, first drawn first) without replacement
    from softmax(logits), summed along ``dim``: the score function of a Gumbel top-k sample."""
    logits = logits.float()
    out = torch.zeros(order.shape[:dim % order.dim()] + order.shape[dim % order.dim() + 1:],
                      device=logits.device)
    for j in range(order.shape[dim]):
        pick = order.narrow(dim, j, 1)
        out = out + (logits.gather(dim, pick) - torch.logsumexp(logits, dim, keepdim=True)).squeeze(dim)
        logits = logits.scatter(dim, pick, float("-inf"))
    return out


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
