"""Statistical and exactness tests for nas.gumbel.

Every random test uses its own seeded torch.Generator, so the suite is deterministic. The
statistical tolerances are set so that a *correct* sampler passes for almost any seed (significance
0.001 for each chi-square test, 5 standard errors for moment tests) and a real bias of a few
standard errors fails. With ~25 tests at level 0.001 an occasional seed does land in the rejection
region for a correct sampler: while writing this file, uniform logits with seed 11 gave chi2 = 20.0
> 16.55 (df = 3); over 300 seeds that statistic had mean 3.1 and 1/300 rejections, i.e. a fluke, so
the seeds of the frequency tests were changed.

No scipy here: the chi-square critical values come from the Wilson-Hilferty approximation with the
normal quantile from torch.special.ndtri (checked against table values in
test_chi2_critical_helper_matches_tables).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas import gumbel
from nas.gumbel import (concrete_log_prob, gumbel_max, gumbel_noise, gumbel_softmax, gumbel_topk,
                        perturb, straight_through)

ALPHA = 1e-3  # significance level of every chi-square goodness-of-fit test
EULER_GAMMA = 0.5772156649015329
GUMBEL_VAR = math.pi ** 2 / 6
N_CAT = 200_000  # draws per categorical frequency test


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_critical(df: int, alpha: float = ALPHA) -> float:
    """Upper-alpha quantile of chi-square(df) by Wilson-Hilferty (no scipy available).

    q = df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3 with z = Phi^-1(1 - alpha). At alpha = 0.001 it
    lies 0.3-3% *above* the exact quantile, so tests using it are very slightly conservative.
    """
    z = torch.special.ndtri(torch.tensor(1.0 - alpha, dtype=torch.float64)).item()
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def pearson_chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic sum (O - E)^2 / E for multinomial counts against probabilities."""
    counts = counts.double()
    expected = counts.sum() * probs.double()
    assert expected.min() >= 5, "chi-square approximation needs >= 5 expected per cell"
    return ((counts - expected) ** 2 / expected).sum().item()


def assert_categorical(index: torch.Tensor, probs: torch.Tensor) -> None:
    """Pearson goodness-of-fit of sampled indices against probs (cells with p = 0 must be empty)."""
    counts = torch.bincount(index.reshape(-1), minlength=probs.numel())
    zero = probs == 0
    assert counts[zero].sum() == 0, f"sampled a zero-probability category: {counts}"
    stat = pearson_chi2(counts[~zero], probs[~zero])
    crit = chi2_critical(int((~zero).sum()) - 1)
    assert stat < crit, f"chi2={stat:.2f} >= {crit:.2f}; counts={counts.tolist()}, p={probs}"


def test_chi2_critical_helper_matches_tables():
    # Exact 0.999 quantiles from standard tables; WH must be within 3.5% and not below them.
    for df, exact in [(1, 10.828), (3, 16.266), (4, 18.467), (11, 31.264), (19, 43.820)]:
        approx = chi2_critical(df)
        assert exact <= approx <= exact * 1.035, (df, approx, exact)


# ---------------------------------------------------------------------------------------------
# 1. gumbel_noise
# ---------------------------------------------------------------------------------------------

def test_gumbel_noise_moments_and_cdf():
    n = 1 << 21  # 2.1M draws
    g = gumbel_noise((n,), generator=gen(0))
    assert g.dtype == torch.float32 and g.shape == (n,)
    assert torch.isfinite(g).all()
    # The module documents every draw in about [-2.85, 16.6] (uniforms in [2^-25, 1 - 2^-24]).
    assert g.min() >= -2.86 and g.max() <= 16.65
    x = g.double()
    mean, var = x.mean().item(), x.var().item()
    # SE(mean) = sqrt(var / n); SE(var) = sqrt((mu4 - sigma^4) / n) = sigma^2 sqrt(4.4 / n),
    # since the Gumbel's excess kurtosis is 12/5. Tolerance: 5 standard errors.
    se_mean = math.sqrt(GUMBEL_VAR / n)
    se_var = GUMBEL_VAR * math.sqrt(4.4 / n)
    assert abs(mean - EULER_GAMMA) < 5 * se_mean, (mean, se_mean)
    assert abs(var - GUMBEL_VAR) < 5 * se_var, (var, se_var)
    # Kolmogorov-Smirnov against F(x) = exp(-exp(-x)): the asymptotic 0.001 critical value of
    # sqrt(n) D is 1.949. Catches wrong shape (e.g. a negated or shifted Gumbel).
    xs, _ = x.sort()
    cdf = torch.exp(-torch.exp(-xs))
    i = torch.arange(n, dtype=torch.float64)
    d = torch.maximum((i + 1) / n - cdf, cdf - i / n).max().item()
    assert math.sqrt(n) * d < 1.949, d


def test_gumbel_noise_reproducible_and_seed_dependent():
    a = gumbel_noise((1000, 7), generator=gen(123))
    b = gumbel_noise((1000, 7), generator=gen(123))
    c = gumbel_noise((1000, 7), generator=gen(124))
    assert a.shape == (1000, 7) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).float().mean() > 0.99  # differ essentially everywhere, not in one element
    # the generator advances: two consecutive draws from it differ
    g = gen(123)
    assert not torch.equal(gumbel_noise((1000,), generator=g), gumbel_noise((1000,), generator=g))


def test_gumbel_noise_is_finite_at_the_extreme_uniforms(monkeypatch):
    # torch.rand can return exactly 0 (probability 2^-24 per draw); -log(-log(0)) would be -inf.
    # Force the extreme uniforms to check the documented clamp rather than hoping to draw them.
    extreme = torch.tensor([0.0, 2.0 ** -25, 0.5, 1.0 - 2.0 ** -24])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: extreme.clone())
    g = gumbel_noise((4,))
    assert torch.isfinite(g).all(), g
    expected = -torch.log(-torch.log(torch.tensor([2.0 ** -25, 2.0 ** -25, 0.5, 1 - 2.0 ** -24],
                                                  dtype=torch.float64)))
    torch.testing.assert_close(g.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2. Gumbel-max and the index of the hard sample are categorical(softmax(logits))
# ---------------------------------------------------------------------------------------------

LOGIT_CASES = [
    [2.0, 0.0, -1.0, 0.5, -3.0],
    [0.0, 0.0, 0.0, 0.0],
    [1.5, -0.5, 0.25],
    [-4.0, 3.0, 0.0, 0.0, 1.0, -1.0, 2.0, 0.5],
]


def _expand(logits: list[float], n: int, dim: int) -> torch.Tensor:
    row = torch.tensor(logits)
    return row.expand(n, -1) if dim == -1 else row[:, None].expand(-1, n)


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("case", range(len(LOGIT_CASES)))
def test_gumbel_max_frequencies_match_softmax(case, dim):
    logits = LOGIT_CASES[case]
    index = gumbel_max(_expand(logits, N_CAT, dim), dim=dim,
                       generator=gen(1000 + 10 * case + (dim == 0)))
    assert index.shape == (N_CAT,) and index.dtype == torch.int64
    assert_categorical(index, torch.softmax(torch.tensor(logits, dtype=torch.float64), 0))


@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("case", range(len(LOGIT_CASES)))
def test_hard_gumbel_softmax_index_frequencies_match_softmax(case, dim):
    logits = LOGIT_CASES[case]
    sample, index = gumbel_softmax(_expand(logits, N_CAT, dim), tau=0.5, hard=True, dim=dim,
                                   generator=gen(2000 + 10 * case + (dim == 0)))
    assert index.shape == (N_CAT,)
    assert_categorical(index, torch.softmax(torch.tensor(logits, dtype=torch.float64), 0))
    # the one-hot sample agrees with the index
    assert torch.equal(sample.argmax(dim=dim), index)


def test_index_does_not_depend_on_tau():
    # The index is the argmax of logits + g, the same for every tau given the same noise, even
    # where the float32 soft sample has ties (tau = 1e9 makes it exactly uniform, so its argmax
    # would always be 0).
    logits = torch.randn(5000, 6, generator=gen(1))
    ref = gumbel_max(logits, generator=gen(2))
    for tau in (1e9, 100.0, 1.0, 1e-3):
        for hard in (False, True):
            assert torch.equal(gumbel_softmax(logits, tau, hard, generator=gen(2)).index, ref)


# ---------------------------------------------------------------------------------------------
# 3. The hard sample: exact one-hot forward, straight-through backward
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [-1, 0])
def test_hard_sample_is_exact_one_hot_with_straight_through_gradient(dim):
    shape = (4096, 6) if dim == -1 else (6, 4096)
    base = torch.randn(shape, generator=gen(30)) * 2
    upstream = torch.randn(shape, generator=gen(31))

    logits_h = base.clone().requires_grad_()
    hard, index = gumbel_softmax(logits_h, tau=0.5, hard=True, dim=dim, generator=gen(32))
    assert ((hard == 0) | (hard == 1)).all(), "hard sample must hold only exact 0s and 1s"
    assert torch.equal(hard.sum(dim), torch.ones(4096))
    assert torch.equal(hard.gather(dim, index.unsqueeze(dim)), torch.ones_like(index.unsqueeze(dim),
                                                                                dtype=hard.dtype))
    (grad_hard,) = torch.autograd.grad((hard * upstream).sum(), logits_h)

    logits_s = base.clone().requires_grad_()
    soft, index_s = gumbel_softmax(logits_s, tau=0.5, hard=False, dim=dim, generator=gen(32))
    (grad_soft,) = torch.autograd.grad((soft * upstream).sum(), logits_s)

    assert torch.equal(index, index_s)
    assert torch.equal(soft.argmax(dim), index)
    # Straight-through: the backward of the hard sample is exactly the soft sample's backward
    # (same noise, same float ops), so the gradients are bitwise equal.
    assert torch.equal(grad_hard, grad_soft)
    assert grad_hard.abs().sum() > 0  # not a detached / zero gradient


@pytest.mark.parametrize("dim", [-1, 0])
def test_straight_through_forward_one_hot_backward_identity(dim):
    k, n = 5, 3000
    shape = (n, k) if dim == -1 else (k, n)
    soft = torch.softmax(torch.randn(shape, generator=gen(40)), dim=dim).requires_grad_()
    index = torch.randint(0, k, (n,), generator=gen(41))
    out = straight_through(soft, index, dim=dim)
    one_hot = F.one_hot(index, k).float()
    assert torch.equal(out, one_hot if dim == -1 else one_hot.T)
    upstream = torch.randn(shape, generator=gen(42))
    (grad,) = torch.autograd.grad((out * upstream).sum(), soft)
    assert torch.equal(grad, upstream)


# ---------------------------------------------------------------------------------------------
# 4. Temperature limits
# ---------------------------------------------------------------------------------------------

def test_soft_sample_approaches_one_hot_as_tau_goes_to_zero():
    n, k, seed = 20_000, 5, 50
    logits = torch.randn(n, k, generator=gen(49))
    z = perturb(logits, gen(seed)).double()  # the same noise every call below draws
    top2 = z.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    devs = []
    for tau in (1.0, 0.1, 0.01, 1e-3):
        sample, index = gumbel_softmax(logits, tau, generator=gen(seed))
        dev = (sample - F.one_hot(index, k).float()).abs().amax(-1).double()
        # With fixed noise the distance to the one-hot, 1 - soft_max, is bounded by
        # exp(-gap/tau)/K <= dev <= (K-1) exp(-gap/tau). Slack: the float32 softmax of z/tau (an
        # exponent error <= |z/tau| * 2^-23 <= 3e-3 at tau=1e-3, hence factors 0.99 / 1.01) plus
        # 1e-6 absolute for rounding of values near 1.
        e = torch.exp(-gap / tau)
        assert (dev <= (k - 1) * e * 1.01 + 1e-6).all(), tau
        assert (dev >= e / k * 0.99 - 1e-6).all(), tau
        devs.append(dev)
    # per row, dev is monotone in tau (1 - soft_max only grows with tau), so also on average
    for hi, lo in zip(devs, devs[1:]):
        assert (lo <= hi + 1e-6).all()
        assert lo.mean() < hi.mean()
    # At tau = 1e-3 the row fails dev < 1e-3 only if the top-two gap is below ~7 tau = 0.007;
    # the gap's density near 0 is well under 1, so < ~1% of rows fail. Require 98%.
    assert (devs[-1] < 1e-3).float().mean() > 0.98


def test_soft_sample_approaches_uniform_as_tau_grows():
    n, k, seed = 20_000, 5, 51
    logits = torch.randn(n, k, generator=gen(52)) * 3
    z = perturb(logits, gen(seed)).double()
    spread = z.amax(-1) - z.amin(-1)
    prev = None
    for tau in (1.0, 100.0, 1e3, 1e4):
        sample, _ = gumbel_softmax(logits, tau, generator=gen(seed))
        dev = (sample.double() - 1.0 / k).abs().amax(-1)
        # each entry lies in [exp(-s/tau), exp(s/tau)] / K with s the row's spread of z;
        # 1e-6 absolute slack for float32 rounding
        assert (dev <= (torch.exp(spread / tau) - 1) / k + 1e-6).all(), tau
        if prev is not None:
            assert dev.mean() < prev.mean()
        prev = dev
    assert prev.max() < 1e-3


# ---------------------------------------------------------------------------------------------
# 5. gumbel_topk
# ---------------------------------------------------------------------------------------------

def test_gumbel_topk_is_sampling_without_replacement():
    logits = torch.tensor([1.0, 0.2, -0.7, 0.4])
    k_cat = logits.numel()
    idx = gumbel_topk(logits.expand(N_CAT, -1), 2, generator=gen(60))
    assert idx.shape == (N_CAT, 2) and idx.dtype == torch.int64
    assert (idx[:, 0] != idx[:, 1]).all(), "indices must be distinct"

    p = torch.softmax(logits.double(), 0)
    # exact ordered-pair probabilities: P(i then j) = p_i p_j / (1 - p_i), i != j
    pair = p[:, None] * p[None, :] / (1 - p[:, None])
    pair.fill_diagonal_(0)
    assert abs(pair.sum().item() - 1) < 1e-12
    # ordered pairs (first = larger perturbed logit = first draw): 12 cells, df = 11
    assert_categorical(idx[:, 0] * k_cat + idx[:, 1], pair.reshape(-1))
    # the first index alone is categorical(softmax)
    assert_categorical(idx[:, 0], p)
    # inclusion frequencies: each indicator is Bernoulli(pi_i), pi_i = sum_j P(i,j) + P(j,i);
    # tolerance 5 binomial standard errors
    incl = pair.sum(1) + pair.sum(0)
    freq = F.one_hot(idx, k_cat).sum(1).double().mean(0)
    se = (incl * (1 - incl) / N_CAT).sqrt()
    assert ((freq - incl).abs() < 5 * se).all(), (freq, incl)


def test_gumbel_topk_shapes_consistency_and_validation():
    logits = torch.randn(3000, 6, generator=gen(61))
    # k = 1 is the Gumbel-max sample with the same noise
    assert torch.equal(gumbel_topk(logits, 1, generator=gen(62))[:, 0],
                       gumbel_max(logits, generator=gen(62)))
    # k = K is a permutation of all categories
    perm = gumbel_topk(logits, 6, generator=gen(63))
    assert torch.equal(perm.sort(-1).values, torch.arange(6).expand(3000, -1))
    # along dim 0
    idx0 = gumbel_topk(logits.T, 3, dim=0, generator=gen(64))
    assert idx0.shape == (3, 3000)
    assert (idx0[0] != idx0[1]).all() and (idx0[1] != idx0[2]).all() and (idx0[0] != idx0[2]).all()
    for bad in (0, -1, 7):
        with pytest.raises(ValueError):
            gumbel_topk(logits, bad)


# ---------------------------------------------------------------------------------------------
# 6. Masking with -inf
# ---------------------------------------------------------------------------------------------

def test_masked_categories_are_never_sampled():
    inf = float("inf")
    row = torch.tensor([0.5, -inf, 1.0, -inf, -0.3])
    masked = torch.isinf(row)
    logits = row.expand(N_CAT, -1)
    p = torch.softmax(row.double(), 0)  # exactly 0 on the masked entries

    assert_categorical(gumbel_max(logits, generator=gen(70)), p)
    for tau in (10.0, 1.0, 0.1):
        soft, index = gumbel_softmax(logits, tau, hard=False, generator=gen(71))
        assert (soft[:, masked] == 0).all(), "a masked category must have probability exactly 0"
        assert not masked[index].any()
        hard, index_h = gumbel_softmax(logits, tau, hard=True, generator=gen(72))
        assert (hard[:, masked] == 0).all() and not masked[index_h].any()
    assert_categorical(gumbel_softmax(logits, 1.0, hard=True, generator=gen(73)).index, p)
    for k in (1, 2, 3):  # 3 = number of unmasked categories
        idx = gumbel_topk(logits, k, generator=gen(74 + k))
        assert not masked[idx].any()
    # all 3 unmasked, in some order
    assert torch.equal(gumbel_topk(logits, 3, generator=gen(78)).sort(-1).values,
                       torch.tensor([0, 2, 4]).expand(N_CAT, -1))


def test_masked_logits_get_zero_finite_gradients():
    inf = float("inf")
    base = torch.randn(2000, 6, generator=gen(80))
    mask = torch.rand(2000, 6, generator=gen(81)) < 0.4
    mask[:, 0] = False  # at least one category per row
    upstream = torch.randn(2000, 6, generator=gen(82))
    for hard in (False, True):
        logits = base.masked_fill(mask, -inf).requires_grad_()
        sample, index = gumbel_softmax(logits, 0.7, hard=hard, generator=gen(83))
        assert not mask.gather(1, index[:, None]).any()
        (grad,) = torch.autograd.grad((sample * upstream).sum(), logits)
        assert torch.isfinite(grad).all()
        assert (grad[mask] == 0).all()


def test_row_with_one_finite_logit():
    inf = float("inf")
    logits = torch.full((10_000, 5), -inf)
    logits[:, 3] = torch.randn(10_000, generator=gen(90)) * 50
    assert (gumbel_max(logits, generator=gen(91)) == 3).all()
    for tau in (10.0, 0.01):
        for hard in (False, True):
            sample, index = gumbel_softmax(logits, tau, hard=hard, generator=gen(92))
            assert (index == 3).all()
            assert torch.equal(sample, F.one_hot(index, 5).float())
    assert (gumbel_topk(logits, 1, generator=gen(93)) == 3).all()


# ---------------------------------------------------------------------------------------------
# 7. concrete_log_prob
# ---------------------------------------------------------------------------------------------

CONCRETE_CASES = [([0.5, -0.2], 0.7), ([0.0, 0.0], 1.0), ([1.0, 0.0], 2.0), ([-1.5, 0.8], 0.3)]
T_MAX = 60.0  # integrate t = logit(y1) over [-T_MAX, T_MAX]


def _density_in_t(t: torch.Tensor, logits: list[float], tau: float) -> torch.Tensor:
    """Density of t = logit(y1) under the Concrete log-density: p(y1) * dy1/dt, dy1/dt = y1 y2.

    y1 = sigmoid(t) and y2 = sigmoid(-t) are formed separately (not y2 = 1 - y1) so both stay
    accurate near the endpoints where one of them is tiny.
    """
    y1, y2 = torch.sigmoid(t), torch.sigmoid(-t)
    sample = torch.stack([y1, y2], -1)
    logp = concrete_log_prob(sample, torch.tensor(logits).expand(t.numel(), -1), tau)
    return logp.double().exp() * y1 * y2


@pytest.mark.parametrize("logits,tau", CONCRETE_CASES)
def test_concrete_density_k2_integrates_to_one_and_is_the_logistic(logits, tau):
    # Substituting y1 = sigmoid(t) removes the endpoint singularity y1^(tau-1) for tau < 1.
    # Tails beyond |t| = 60 hold < exp(-60 tau + |l1 - l2|) < 1e-7 for these cases.
    t = torch.linspace(-T_MAX, T_MAX, 400_001, dtype=torch.float64)
    dens = _density_in_t(t, logits, tau)
    assert torch.isfinite(dens).all()
    total = torch.trapezoid(dens, t).item()
    # Trapezoid error is negligible at this spacing (3e-4) for a smooth, fast-decaying density;
    # the tolerance covers the float32 evaluation of the log-density (relative error ~1e-6).
    assert abs(total - 1) < 1e-4, total
    # Independent closed form: y1 = sigmoid((l1 - l2 + L) / tau) with L = g1 - g2 ~ Logistic(0, 1),
    # so t = logit(y1) has density tau * s(u) s(-u), u = tau t - (l1 - l2), s the sigmoid.
    # Relative tolerance 1e-4: float32 log-density terms of size up to ~(1+tau)|t| ~ 100 carry
    # ~1e-5 absolute error; the comparison is restricted to where the density exceeds 1e-12.
    u = tau * t - (logits[0] - logits[1])
    ref = tau * torch.sigmoid(u) * torch.sigmoid(-u)
    keep = ref > 1e-12
    torch.testing.assert_close(dens[keep], ref[keep], rtol=1e-4, atol=0)


@pytest.mark.parametrize("case", range(len(CONCRETE_CASES)))
def test_concrete_density_matches_histogram_of_soft_samples(case):
    logits, tau = CONCRETE_CASES[case]
    n = 200_000
    sample, _ = gumbel_softmax(torch.tensor(logits).expand(n, -1), tau, generator=gen(100 + case))
    y1 = sample[:, 0].double()
    n_bins = 20
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    counts = torch.bincount(torch.bucketize(y1, edges[1:-1], right=True), minlength=n_bins)
    # bin masses by integrating the density over each bin (in t = logit(y1)), 2001 points per bin
    lo = torch.logit(edges[:-1]).clamp(min=-T_MAX)
    hi = torch.logit(edges[1:]).clamp(max=T_MAX)
    t = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 2001, dtype=torch.float64)
    dens = _density_in_t(t.reshape(-1), logits, tau).reshape(n_bins, -1)
    mass = torch.trapezoid(dens, t, dim=-1)
    assert abs(mass.sum().item() - 1) < 1e-4
    # Pearson chi-square, 20 bins, df = 19, significance 0.001
    stat = pearson_chi2(counts, mass)
    assert stat < chi2_critical(n_bins - 1), (stat, counts.tolist(), (mass * n).tolist())


def test_concrete_log_prob_k3_shift_invariance_and_dim():
    y = torch.softmax(torch.randn(1000, 3, generator=gen(110)), -1)
    logits = torch.tensor([0.3, -1.2, 0.8])
    for tau in (0.6, 1.0, 3.0):
        ref = concrete_log_prob(y, logits, tau)
        assert ref.shape == (1000,) and torch.isfinite(ref).all()
        for c in (-3.0, 7.5):
            # float32 terms of magnitude <= ~40 round to ~1e-5; tolerance 1e-4 absolute
            torch.testing.assert_close(concrete_log_prob(y, logits + c, tau), ref,
                                       rtol=0, atol=1e-4)
        # dim argument: the same density with the simplex along dim 0
        torch.testing.assert_close(concrete_log_prob(y.T, logits[:, None], tau, dim=0), ref,
                                   rtol=0, atol=1e-5)
    # the density does depend on the logits beyond a shift
    assert not torch.allclose(concrete_log_prob(y, logits, 1.0),
                              concrete_log_prob(y, logits.flip(0), 1.0), atol=1e-2)


# ---------------------------------------------------------------------------------------------
# 8. Robustness: extreme logits, low precision
# ---------------------------------------------------------------------------------------------

def _extreme_logits(rows: int) -> torch.Tensor:
    inf = float("inf")
    patterns = torch.tensor([
        [1e4, -1e4, 0.0, 1e4, -1e4, 5.0, -5.0, 1e4],
        [80.0, -80.0, 80.0, -80.0, 0.0, 79.0, -79.0, 1.0],
        [-1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4],
        [1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4],
        [-inf, 1e4, -inf, -1e4, -inf, 80.0, -inf, -80.0],
        [-inf, -inf, -inf, 3.0, -inf, -inf, -inf, -inf],  # one finite logit
        [-inf, -80.0, -inf, -inf, 80.0, -inf, -1e4, -inf],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    return patterns.repeat(rows // patterns.shape[0], 1)


def test_no_inf_or_nan_for_extreme_logits():
    logits = _extreme_logits(1 << 18)  # 262k rows x 8 = 2.1M elements per call
    masked = torch.isinf(logits)
    total = 0
    for i, tau in enumerate((10.0, 1.0, 0.1, 0.01)):
        for hard in (False, True):
            sample, index = gumbel_softmax(logits, tau, hard=hard,
                                           generator=gen(120 + 2 * i + hard))
            total += sample.numel()
            assert torch.isfinite(sample).all(), (tau, hard)
            assert not masked.gather(1, index[:, None]).any(), (tau, hard)
            assert (sample[masked] == 0).all()
            # rows sum to 1 up to float32 rounding of 8 terms
            assert ((sample.sum(-1) - 1).abs() < 1e-5).all(), (tau, hard)
    assert total >= 10_000_000
    idx = gumbel_max(logits, generator=gen(130))
    assert not masked.gather(1, idx[:, None]).any()
    # gradients through extreme logits stay finite too (smaller batch)
    small = _extreme_logits(4096).requires_grad_()
    for tau in (10.0, 0.01):
        for hard in (False, True):
            sample, _ = gumbel_softmax(small, tau, hard=hard, generator=gen(131))
            (grad,) = torch.autograd.grad((sample * torch.randn(sample.shape, generator=gen(132)))
                                          .sum(), small)
            assert torch.isfinite(grad).all(), (tau, hard)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_use_float32_noise(dtype):
    logits = (torch.randn(20_000, 7, generator=gen(140)) * 3).to(dtype)
    ref_logits = logits.float()  # exactly the same values
    assert perturb(logits, gen(1)).dtype == torch.float32
    for tau in (1.0, 0.1):
        for hard in (False, True):
            sample, index = gumbel_softmax(logits, tau, hard=hard, generator=gen(141))
            ref, ref_index = gumbel_softmax(ref_logits, tau, hard=hard, generator=gen(141))
            assert sample.dtype == dtype
            assert torch.isfinite(sample).all()
            # Same generator seed -> same float32 noise -> identical index, and the sample is the
            # float32 sample rounded to the logits' dtype. Noise drawn or added in low precision
            # would change both.
            assert torch.equal(index, ref_index)
            assert torch.equal(sample, ref.to(dtype))
            if hard:
                assert torch.equal(sample, F.one_hot(index, 7).to(dtype))
    assert torch.equal(gumbel_max(logits, generator=gen(142)),
                       gumbel_max(ref_logits, generator=gen(142)))
    assert torch.equal(gumbel_topk(logits, 3, generator=gen(143)),
                       gumbel_topk(ref_logits, 3, generator=gen(143)))
    # extreme values representable in the dtype, with masks
    extreme = _extreme_logits(4096).to(dtype).requires_grad_()
    for hard in (False, True):
        sample, _ = gumbel_softmax(extreme, 0.01, hard=hard, generator=gen(144))
        assert sample.dtype == dtype and torch.isfinite(sample).all()
        (grad,) = torch.autograd.grad(sample.float().pow(2).sum(), extreme)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# 9. tau validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0, 0.0, -1.0, -1e-12, float("nan"), float("inf"), float("-inf")])
def test_invalid_tau_raises(tau):
    logits = torch.zeros(3, 4)
    for hard in (False, True):
        with pytest.raises(ValueError):
            gumbel_softmax(logits, tau, hard=hard)
    with pytest.raises(ValueError):
        concrete_log_prob(torch.full((3, 4), 0.25), logits, tau)


def test_valid_tau_forms_agree():
    logits = torch.randn(100, 4, generator=gen(150))
    a = gumbel_softmax(logits, 0.5, generator=gen(151)).sample
    b = gumbel_softmax(logits, torch.tensor(0.5), generator=gen(151)).sample
    assert torch.equal(a, b)
    c = gumbel_softmax(logits, 2, generator=gen(151)).sample  # an int tau is fine
    assert torch.isfinite(c).all()
    assert gumbel.GumbelSample._fields == ("sample", "index")


@pytest.mark.parametrize("offset, dtype", [(1e6, torch.float32), (1e8, torch.float32),
                                           (-1e8, torch.float32), (1e300, torch.float64)])
def test_huge_logits_sample_exactly(offset, dtype):
    # Before the row maximum was subtracted, float32 noise added to 1e6 was rounded to
    # multiples of 1/16 (two equal logits split 51/49) and at 1e8 to multiples of 8 (98/2).
    base = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    logits = (base + offset).to(dtype) if dtype == torch.float64 else \
        torch.tensor([offset, offset + 0.5, offset - 1.0], dtype=dtype)
    exact = torch.softmax(logits.double() - logits.double().max(), 0)
    rows = logits.expand(N_CAT, -1)
    assert_categorical(gumbel_max(rows, generator=gen(150)), exact)
    sample, index = gumbel_softmax(rows, tau=0.5, hard=True, generator=gen(151))
    assert_categorical(index, exact)
    assert torch.isfinite(sample).all() and sample.dtype == dtype
    soft = gumbel_softmax(rows[:1000], tau=1.0, generator=gen(152)).sample
    assert torch.isfinite(soft).all() and ((soft.sum(-1) - 1).abs() < 1e-5).all()


def test_huge_logits_gumbel_rao_gradient_matches_shifted():
    # The Gumbel-Rao backward conditions noise on the sample; a shift of all logits must not
    # change it, even when float32 could not represent logits + noise.
    small = torch.tensor([[0.25, -0.5, 0.125]], requires_grad=True)
    huge = (small.detach().double() + 1e9).requires_grad_()  # float32 would round it to 64s
    idx = torch.tensor([1])
    w = torch.tensor([[1.0, -2.0, 0.5]])
    (g_small,) = torch.autograd.grad((gumbel.gumbel_rao(small, idx, 0.7, 64, generator=gen(160))
                                      * w).sum(), small)
    (g_huge,) = torch.autograd.grad((gumbel.gumbel_rao(huge, idx, 0.7, 64, generator=gen(160))
                                     * w).sum(), huge)
    assert torch.isfinite(g_huge).all()
    torch.testing.assert_close(g_huge.float(), g_small, atol=1e-5, rtol=1e-4)


# -- contracts found untested by mutation testing (scripts/mutation.py) ------------------------
def _rows_far_apart() -> torch.Tensor:
    """Rows at very different offsets: a shift by another row's (or the whole table's) maximum
    leaves the small rows at -1e9, where float32 rounds their logits and noise together."""
    return torch.tensor([[0.0, 1.0, -0.5, 0.25], [1e9, 1e9, 1e9 + 128, 1e9], [-3.0, 2.0, 0.0, 1.0]])


@pytest.mark.parametrize("dim", [-1, 0])
def test_every_row_is_shifted_by_its_own_maximum(dim):
    """shifted, and everything built on it, works along ``dim`` only: with the same noise the
    results equal the reference computed here from the per-row (per-column) shift."""
    x = _rows_far_apart() if dim == -1 else _rows_far_apart().t().contiguous()
    ref = x.double() - x.double().amax(dim, keepdim=True)
    assert torch.equal(gumbel.shifted(x, dim), ref.float())
    noise = gumbel_noise(x.shape, generator=gen(170))
    z = ref.float() + noise
    assert torch.equal(perturb(x, gen(170), dim), z)
    assert torch.equal(gumbel_max(x, dim, generator=gen(170)), z.argmax(dim))
    assert torch.equal(gumbel_topk(x, 2, dim, generator=gen(170)), z.topk(2, dim).indices)
    for tau in (0.5, 2.0):
        sample, index = gumbel_softmax(x, tau, hard=False, dim=dim, generator=gen(170))
        assert torch.equal(index, z.argmax(dim)) and torch.equal(sample, torch.softmax(z / tau, dim))
        hard, index = gumbel_softmax(x, tau, hard=True, dim=dim, generator=gen(170))
        assert torch.equal(hard, torch.zeros_like(z).scatter_(dim, index.unsqueeze(dim), 1.0))
        topk = gumbel.gumbel_topk_st(x, 2, tau, dim, generator=gen(170))
        assert torch.equal(topk.index, z.topk(2, dim).indices)
    assert torch.equal(gumbel_softmax(x, dim=dim, generator=gen(171)).sample,
                       gumbel_softmax(x, 1.0, dim=dim, generator=gen(171)).sample)  # tau 1 by default


def test_conditional_gumbel_and_gumbel_rao_along_dim_0():
    """Along dim 0, with a far-away column beside: the draws condition on the column's argmax,
    their top is Gumbel around the column's logsumexp, and Gumbel-Rao's one-hot and gradient are
    those of the column alone (to Monte Carlo precision over 4,000 conditional draws)."""
    x = _rows_far_apart().t().contiguous()  # columns: the rows above
    index = torch.tensor([1, 2, 0])  # one op per column
    n = 4000
    z = gumbel.conditional_gumbel(x, index, n, dim=0, generator=gen(172))
    assert z.shape == (n, 4, 3) and torch.equal(z.argmax(1), index.expand(n, 3))
    col = gumbel.shifted(x, 0)
    top = z.gather(1, index.expand(n, 1, 3)).squeeze(1)
    expected = torch.logsumexp(col, 0) + EULER_GAMMA
    assert ((top.mean(0) - expected).abs() < 5 * math.sqrt(GUMBEL_VAR / n)).all(), (top.mean(0), expected)
    v = torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0], [2.0, 0.0, 1.0], [-1.0, 0.5, 0.0]])
    t = x.clone().requires_grad_(True)
    d = gumbel.gumbel_rao(t, index, 0.7, n, dim=0, generator=gen(173))
    assert torch.equal(d, torch.zeros(4, 3).scatter_(0, index.unsqueeze(0), 1.0))
    (d * v).sum().backward()
    for c in range(3):  # each column alone, along the last dim
        tc = x[:, c].clone().requires_grad_(True)
        dc = gumbel.gumbel_rao(tc, index[c], 0.7, n, generator=gen(174 + c))
        (dc * v[:, c]).sum().backward()
        assert torch.allclose(t.grad[:, c], tc.grad, atol=0.03), (c, t.grad[:, c], tc.grad)


def test_reinmax_along_dim_0_is_the_transpose():
    x = torch.tensor([[0.2, -0.4, 0.9], [1.0, 0.0, -1.0]])
    index = torch.tensor([2, 0])  # not symmetric: a one-hot along the wrong dim cannot match
    v = torch.tensor([[1.5, -1.0, 0.25], [0.5, 2.0, -1.0]])
    a, b = x.clone().requires_grad_(True), x.t().clone().requires_grad_(True)
    da, db = gumbel.reinmax(a, index, 2.0), gumbel.reinmax(b, index, 2.0, dim=0)
    assert torch.equal(db, da.t())
    (da * v).sum().backward()
    (db * v.t()).sum().backward()
    assert torch.allclose(b.grad, a.grad.t(), atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_estimators_keep_the_logits_dtype(dtype):
    x = torch.randn(3, 5, generator=gen(175)).to(dtype)
    index = torch.tensor([0, 4, 2])
    assert gumbel.gumbel_rao(x, index, 0.5, 4, generator=gen(176)).dtype == dtype
    assert gumbel.reinmax(x, index, 0.5).dtype == dtype
    assert gumbel.gumbel_topk_st(x, 2, 0.5, generator=gen(177)).sample.dtype == dtype


def test_every_function_keeps_its_inputs_device():
    """Nothing is created on the default device: run on the meta device (shapes only)."""
    m = torch.device("meta")
    x, index = torch.zeros(3, 4, device=m), torch.zeros(3, dtype=torch.long, device=m)
    outs = {"gumbel_noise": gumbel_noise((3, 4), device=m), "perturb": perturb(x),
            "gumbel_softmax": gumbel_softmax(x, 0.5, hard=True).sample,
            "conditional_gumbel": gumbel.conditional_gumbel(x, index, 2),
            "gumbel_rao": gumbel.gumbel_rao(x, index, 0.5, 2), "reinmax": gumbel.reinmax(x, index, 0.5),
            "gumbel_topk_st": gumbel.gumbel_topk_st(x, 2, 0.5).sample,
            "plackett_luce_log_prob": gumbel.plackett_luce_log_prob(x, torch.zeros(3, 2, dtype=torch.long, device=m)),
            "concrete_log_prob": concrete_log_prob(torch.full((3, 4), 0.25, device=m), x, 0.5)}
    assert {k: v.device.type for k, v in outs.items()} == {k: "meta" for k in outs}


def test_noise_is_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert gumbel_noise((3, 4), generator=gen(178)).dtype == torch.float32
        x = torch.zeros(3, 4, dtype=torch.float32)
        assert concrete_log_prob(torch.full((3, 4), 0.25), x, 0.5).dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)


def test_the_errors_say_what_is_wrong():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"tau must be a positive finite number, got -1\.0"):
        gumbel_softmax(x, -1.0)
    for fn in (lambda k: gumbel_topk(x, k), lambda k: gumbel.gumbel_topk_st(x, k, 1.0)):
        for k in (0, 5):
            with pytest.raises(ValueError, match=rf"k must be in \[1, 4\], got {k}"):
                fn(k)
    assert gumbel_topk(x, 1).shape == (2, 1) and gumbel_topk(x, 4).shape == (2, 4)  # both ends
    assert gumbel.gumbel_topk_st(x, 1, 1.0).index.shape == (2, 1)
    assert gumbel.gumbel_topk_st(x, 4, 1.0).sample.eq(1).all()
