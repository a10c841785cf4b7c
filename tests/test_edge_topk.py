"""Gumbel top-k edge sampling: the relaxed top-k, the k-subset distribution, the supernet that
runs k inputs per node, their gradients, derivation and the config checks."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import nas
from nas import gumbel

OPTS = {"C": 4, "cells": 3}


def make(k: int = 2, seed: int = 0, init_seed: int = 0, **options) -> nas.Supernet:
    torch.manual_seed(init_seed)
    return nas.build_supernet("darts", 10, "gdas", seed=seed, options={**OPTS, **options},
                              edge_topk=k)


def batch(seed: int = 0, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- the pure functions -------------------------------------------------------------------------
def test_relaxed_topk_is_successive_softmaxes_by_hand():
    scores = torch.tensor([0.0, math.log(2), math.log(3)])
    # a1 = (1, 2, 3) / 6; the scores become log((1, 2, 3) * (1 - a1)) = log(5/6, 8/6, 9/6)
    expected = torch.tensor([1 / 6 + 5 / 22, 2 / 6 + 8 / 22, 3 / 6 + 9 / 22])
    assert torch.allclose(gumbel.relaxed_topk(scores, 2, 1.0), expected, atol=1e-6)
    assert torch.allclose(gumbel.relaxed_topk(scores, 1, 0.5), (scores / 0.5).softmax(0))
    cold = gumbel.relaxed_topk(torch.tensor([[0.3, -1.0, 2.0, 0.9, float("-inf")]]), 2, 0.01)
    assert torch.allclose(cold, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]), atol=1e-4)


def test_gumbel_topk_st_is_an_exact_k_hot_of_the_perturbed_top_k():
    theta = torch.tensor([[0.5, -0.2, 1.0, 0.1], [0.0, 0.0, float("-inf"), 0.0]], requires_grad=True)
    g = gumbel.gumbel_noise(theta.shape, generator=torch.Generator().manual_seed(3))
    s = gumbel.gumbel_topk_st(theta, 2, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s.index, (theta.detach() + g).topk(2).indices)  # largest first
    assert torch.equal(s.sample, torch.zeros(2, 4).scatter_(1, s.index, 1.0))
    v = torch.tensor([1.0, -2.0, 0.5, 3.0])
    (s.sample * v).sum().backward()
    z = (theta.detach() + g).requires_grad_(True)  # the gradient is the relaxation's, same noise
    (gumbel.relaxed_topk(z, 2, 0.5) * v).sum().backward()
    assert torch.allclose(theta.grad, z.grad) and theta.grad[1, 2] == 0


def test_the_k_subsets_follow_plackett_luce_without_replacement():
    theta = torch.tensor([1.0, 0.0, -0.5, 0.5])
    n, p = 40000, theta.softmax(0)
    s = gumbel.gumbel_topk_st(theta.expand(n, 4), 2, 1.0, generator=torch.Generator().manual_seed(0))
    assert bool((s.sample.sum(1) == 2).all())
    for i, j in itertools.combinations(range(4), 2):
        exact = (p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])).item()
        freq = (s.sample[:, i] * s.sample[:, j]).mean().item()
        assert abs(freq - exact) < 4.5 * math.sqrt(exact * (1 - exact) / n), ((i, j), freq, exact)
    # the ordered draws' log-probabilities (the score function) sum to one over all orders
    orders = torch.tensor(list(itertools.permutations(range(4), 2)))
    logp = gumbel.plackett_luce_log_prob(theta.expand(len(orders), 4), orders)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert logp[0].item() == pytest.approx(math.log(p[0] * p[1] / (1 - p[0])), abs=1e-6)



def test_gumbel_topk_st_passes_dim_through():
    """Sampling along dim 0 is sampling along the last dim of the transpose: the same
    distribution, whatever the other dim's logits (which the shift must not mix in)."""
    theta = torch.tensor([1.5, 0.0, -1.0, 0.5])
    n = 20000
    # column j of a [4, n] table is one draw; each row holds one logit, so a shift taken along
    # the wrong dim would make every logit 0 and the draws uniform
    s = gumbel.gumbel_topk_st(theta[:, None].expand(4, n), 1, 1.0, dim=0,
                              generator=torch.Generator().manual_seed(0))
    assert s.index.shape == (1, n) and s.sample.shape == (4, n)
    assert torch.equal(s.sample, torch.zeros(4, n).scatter_(0, s.index, 1.0))
    freq = s.sample.mean(1)
    p = theta.softmax(0)
    assert ((freq - p).abs() < 4.5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)
    # the gradient is the relaxed top-k's along dim 0, through the same noise
    t = theta[:, None].expand(4, 3).clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    noise = gumbel.gumbel_noise((4, 3), generator=torch.Generator().manual_seed(1))
    s = gumbel.gumbel_topk_st(t, 2, 0.5, dim=0, generator=g)
    z = (t.detach() - t.detach().max(0, keepdim=True).values + noise).requires_grad_(True)
    assert torch.equal(s.index, z.detach().topk(2, dim=0).indices)
    v = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    (s.sample * v).sum().backward()
    (gumbel.relaxed_topk(z, 2, 0.5, dim=0) * v).sum().backward()
    assert torch.allclose(t.grad, z.grad, atol=1e-6)

# -- the supernet -------------------------------------------------------------------------------
def cells_of(model):
    return [m for m in model.modules() if isinstance(m, nas.SearchCell)]


@pytest.mark.parametrize("k", [1, 2])
def test_exactly_k_inputs_run_per_node_and_the_edge_logits_learn(k):
    model = make(k, seed=4)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    ran = []
    for c, cell in enumerate(cells_of(model)):
        for e, edge in enumerate(cell.edges):
            for op in edge.ops:
                op.register_forward_hook(lambda m, i, o, key=(c, e): ran.append(key))
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert len(ran) == len(set(ran))  # one op per edge that runs
    chosen_edges = {}
    for c, cell in enumerate(cells_of(model)):
        kind = "reduce" if cell.reduction else "normal"
        kept = {e for cc, e in ran if cc == c}
        chosen_edges[kind] = set()
        first = 0
        for node in range(4):  # the inputs this node ran are the sampled top-k, k of them
            count = 2 + node
            chosen = {first + int(j) for j in model.last_edges[kind][node]}
            ran_here = {e for e in kept if first <= e < first + count}
            # a chosen input whose sampled op is `none` adds zeros: it is not run, unless the
            # node has nothing else to sum
            real = {e for e in chosen if int(model.last_index[kind][e]) != 0}
            assert len(chosen) == k and ran_here == (real or {min(chosen)})
            chosen_edges[kind] |= chosen
            first += count
    for kind in ("normal", "reduce"):
        grad = model.edge_logits[kind].grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).any())
        # the op logits of an input that did not run get no gradient: none of its ops ran
        unkept = [e for e in range(14) if e not in chosen_edges[kind]]
        assert bool((model.arch_logits[kind].grad[unkept] == 0).all())
        assert bool((model.arch_logits[kind].grad[sorted(chosen_edges[kind])] != 0).any())
    cell = cells_of(model)[0]
    for e, edge in enumerate(cell.edges):  # weights of edges that did not run stay untouched
        if (0, e) not in ran:
            assert all(p.grad is None for p in edge.parameters())


def test_a_node_s_hard_weights_get_the_gdas_gradient_one_level_up():
    """sampled_node with edge top-k, against autograd on the GDAS edge output written out: a kept
    edge j adds e_j * (w_jk * out_j + sum_{i != k} w_ji), an edge that did not run adds e_j; every
    hard weight is exactly 0 or 1. So a kept edge's weight gets <g, out_j>, a dropped edge's
    sum(g), a kept edge's op weights <g, out_j> (the sampled op) or sum(g), a dropped edge's none."""
    g = torch.Generator().manual_seed(0)
    ops, edges, first = 4, 6, 2  # the node's edges are 2, 3, 4 of a kind with 6 edges
    keep, index = (True, False, True), (3, 1)  # edges 2 and 4 ran, with ops 3 and 1
    outs = [torch.randn(2, 3, 4, 4, generator=g) for _ in index]
    grad = torch.randn(2, 3, 4, 4, generator=g)
    weights = torch.zeros(edges, ops)
    for j, k in zip((2, 4), index):
        weights[j, k] = 1.0
    edge_w = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    w, e = weights.clone().requires_grad_(True), edge_w.clone().requires_grad_(True)
    out = nas.sampled_node(w, first, index, outs, keep, e)
    assert torch.equal(out, outs[0] + outs[1])
    out.backward(grad)
    w_ref, e_ref = weights.clone().requires_grad_(True), edge_w.clone().requires_grad_(True)
    ref = torch.zeros_like(grad)
    kept = iter(zip(index, outs))
    for j, ran in zip(range(first, first + 3), keep):
        if ran:
            k, o = next(kept)
            edge = w_ref[j, k] * o + sum(w_ref[j, i] for i in range(ops) if i != k)
            ref = ref + e_ref[j] * edge
        else:
            ref = ref + e_ref[j]
    ref.backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e.grad, e_ref.grad, rtol=1e-5, atol=1e-5)
    assert w.grad[3].eq(0).all() and w.grad[:2].eq(0).all() and w.grad[5].eq(0).all()
    assert e.grad[3] == pytest.approx(grad.sum().item(), rel=1e-5)
    assert e.grad[2] == pytest.approx((grad * outs[0]).sum().item(), rel=1e-5)
    assert e.grad[[0, 1, 5]].eq(0).all()  # edges of other nodes


def test_the_edge_logits_get_the_relaxed_top_k_gradient_of_the_same_noise(monkeypatch):
    """The supernet's edge-logit gradient, recomputed: the gradient reaching the k-hot input
    sample, pulled back through relaxed_topk(node logits + g) with the noise g of that draw."""
    calls = []
    real = gumbel.gumbel_topk_st

    def recording(logits, k, tau, dim=-1, generator=None):
        state = generator.get_state()
        result = real(logits, k, tau, dim, generator)
        result.sample.retain_grad()
        calls.append((state, k, tau, result))
        return result

    monkeypatch.setattr(gumbel, "gumbel_topk_st", recording)
    model = make(2, seed=5)
    model.tau = 0.6
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(generator=torch.Generator().manual_seed(7))
    x, y = batch(1)
    F.cross_entropy(model(x), y).backward()
    assert len(calls) == 2  # one draw per cell kind
    for kind, (state, k, tau, result) in zip(model.arch_logits, calls):
        leaf = model.edge_logits[kind].detach().clone().requires_grad_(True)
        node = model.node_logits(kind, leaf)
        noise = gumbel.gumbel_noise(node.shape, generator=torch.Generator().set_state(state))
        z = gumbel.shifted(node) + noise
        assert torch.equal(result.index, z.detach().topk(k, dim=-1).indices)
        v = result.sample.grad
        assert v is not None and v.abs().sum() > 0
        assert (k, tau) == (2, 0.6)  # the supernet's edge_topk and tau
        (gumbel.relaxed_topk(z, 2, 0.6) * v).sum().backward()
        torch.testing.assert_close(model.edge_logits[kind].grad, leaf.grad, rtol=1e-5, atol=1e-7)


def test_the_op_sample_is_gdas_and_one_host_sync_per_forward(monkeypatch):
    plain, topk = make(0, seed=7), make(2, seed=7)
    topk.load_state_dict(plain.state_dict(), strict=False)
    x, _ = batch()
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self, *a: calls.append(1) or real(self, *a))
    with torch.no_grad():
        plain(x), topk(x)
    assert len(calls) == 2
    assert all(torch.equal(plain.last_index[k], topk.last_index[k]) for k in ("normal", "reduce"))


def test_weight_steps_draw_the_inputs_uniformly():
    model = make(1, seed=1)
    with torch.no_grad():
        model.edge_logits["normal"].copy_(torch.tensor([5.0, -5.0] + [0.0] * 12))
    model.sampling_logits = {k: torch.zeros(8) for k in ("normal", "reduce")}
    firsts = [int(model.sample()["normal"].keep[0]) for _ in range(400)]
    assert 0.4 < sum(firsts) / 400 < 0.6  # uniform over the first node's 2 inputs
    model.sampling_logits = None
    firsts = [int(model.sample()["normal"].keep[0]) for _ in range(100)]
    assert sum(firsts) == 100  # softmax(5, -5): the first input almost surely


def test_derivation_and_eval_use_the_edge_logits_for_the_inputs():
    model = make(2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            model.arch_logits[kind].copy_(torch.randn(14, 8, generator=g))
            model.edge_logits[kind].copy_(torch.randn(14, generator=g))
    genotype = model.genotype()
    model.eval()
    sample = model.sample()
    for kind in ("normal", "reduce"):
        p, edges = model.arch_logits[kind].detach(), model.edge_logits[kind].detach()
        first = 0
        for node, chosen in enumerate(genotype.cells[kind]):
            count = 2 + node
            top = edges[first:first + count].topk(2).indices.tolist()
            assert [src for _, src in chosen] == top
            for op, src in chosen:  # each with its strongest op other than none
                assert op == model.ops[1 + int(p[first + src, 1:].argmax())]
            assert [j for j in range(count) if sample[kind].keep[first + j]] == sorted(top)
            first += count


def test_reinforce_scores_the_input_choice_too():
    model = make(2, seed=2)
    with torch.no_grad():
        model(batch()[0])
    index, edges = dict(model.last_index), dict(model.last_edges)
    extra = sum(gumbel.plackett_luce_log_prob(model.node_logits(k), edges[k]).sum() for k in edges)
    assert torch.allclose(model.log_prob(index, edges) - model.log_prob(index), extra)
    model.log_prob(index, edges).backward()
    assert all(p.grad is not None and bool((p.grad != 0).any()) for p in model.edge_logits.values())


def test_edge_topk_is_refused_where_it_means_nothing():
    with pytest.raises(nas.InputError, match="keeps every input of a node"):
        nas.build_supernet("nasbench201", 10, "gdas", options={"C": 4, "cells_per_stage": 1},
                           edge_topk=2)
    with pytest.raises(nas.InputError, match="k must be in 1..2, got 3"):
        make(3)
    with pytest.raises(nas.InputError, match="needs search.mode: gdas, got st"):
        nas.config.build_config({}, ["search.edge_topk=2", "search.mode=st"])
    with pytest.raises(nas.InputError, match="must be >= 0"):
        nas.config.build_config({}, ["search.edge_topk=-1"])


def test_a_search_with_edge_topk_logs_the_input_distributions(tmp_path, tiny_config, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from nas.cli import main
    run = tmp_path / "run"
    assert main(["search", "--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                 "--set", "search.edge_topk=2"]) == 0
    capsys.readouterr()
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert state["edge_logits.normal"].shape == (14,)
    genotype = nas.Genotype.load(run / "genotype.json")
    assert all(len(node) == 2 for nodes in genotype.cells.values() for node in nodes)
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"arch_inputs/normal", "arch_inputs/reduce"} <= set(events.Tags()["images"])


# -- contracts found untested by mutation testing (scripts/mutation.py) ------------------------
def test_eval_edge_weights_are_the_k_hot_of_the_strongest_inputs():
    model = make(2)
    with torch.no_grad():
        model.edge_logits["normal"].copy_(torch.arange(14.0))
    model.eval()
    sample = model.sample()["normal"]
    # node i's inputs are edges first..first+count-1; the two with the largest logits are the last two
    expected, first = torch.zeros(14), 0
    for node in range(4):
        count = 2 + node
        expected[first + count - 2:first + count] = 1.0
        first += count
    assert torch.equal(sample.edge_weights, expected)
    assert sample.keep == expected.bool().tolist()


def test_the_forward_temperature_tempers_the_input_draw_and_its_score():
    """With tau_forward the kept inputs are drawn from softmax(edge logits / tau_forward), and
    REINFORCE scores them under that distribution."""
    model = make(1, seed=3)
    with torch.no_grad():
        model.edge_logits["normal"].zero_()
        model.edge_logits["normal"][0] = 2.0  # the first node: inputs 0 and 1, logits 2 and 0
    n, first = 600, {}
    for tau_f in (1.0, 2.0):
        model.tau_forward = tau_f
        with torch.no_grad():
            first[tau_f] = sum(int(model.sample()["normal"].keep[0]) for _ in range(n)) / n
    for tau_f, p in ((1.0, torch.sigmoid(torch.tensor(2.0))), (2.0, torch.sigmoid(torch.tensor(1.0)))):
        assert abs(first[tau_f] - p.item()) < 4.5 * math.sqrt(p * (1 - p) / n), (tau_f, first[tau_f])
    with torch.no_grad():
        model(batch()[0])
    index, edges = dict(model.last_index), dict(model.last_edges)
    extra = sum(gumbel.plackett_luce_log_prob(model.node_logits(k, model.edge_logits[k] / 2.0),
                                              edges[k]).sum() for k in edges)
    assert torch.allclose(model.log_prob(index, edges) - model.log_prob(index), extra)


def test_input_samples_are_a_function_of_the_seed_and_the_count():
    a, b = make(2, seed=11), make(2, seed=11)
    x, _ = batch()
    seq = []
    for model in (a, b):
        with torch.no_grad():
            for _ in range(3):
                torch.rand(50)  # the global generator must not matter
                model(x)
        seq.append({k: v.clone() for k, v in model.last_edges.items()})
    assert all(torch.equal(seq[0][k], seq[1][k]) for k in seq[0])


class TwoSizes(nas.Supernet):
    """Two cell kinds of different sizes: 1 node (2 edges) and 2 nodes (5 edges)."""

    inputs_kept = 2

    def __init__(self) -> None:
        super().__init__("gdas", {"small": (2, ("skip_connect", "none")),
                                  "large": (5, ("skip_connect", "none"))}, seed=0, cell_inputs=2)


def test_kinds_of_different_sizes_keep_their_own_layouts():
    model = TwoSizes()
    model.enable_edge_topk(1)
    with torch.no_grad():
        model.edge_logits["small"].copy_(torch.tensor([1.0, 2.0]))
        model.edge_logits["large"].copy_(torch.arange(5.0))
    inf = float("-inf")
    assert torch.equal(model.node_logits("small"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(model.node_logits("large"), torch.tensor([[0.0, 1.0, inf], [2.0, 3.0, 4.0]]))
    probs = model.edge_probabilities()
    assert torch.allclose(probs["small"], torch.tensor([1.0, 2.0]).softmax(0))
    assert torch.allclose(probs["large"][2:], torch.tensor([2.0, 3.0, 4.0]).softmax(0))


def test_the_input_layout_lives_on_the_supernet_s_device():
    """On another device (meta: shapes only) nothing falls back to the CPU."""
    model = make(2).to("meta")
    model.eval()
    model.mode = "softmax"  # no host transfer of the sample
    model.sample()
    assert {v.device.type for v in model.last_edges.values()} == {"meta"}
    assert {v.device.type for v in model.edge_probabilities().values()} == {"meta"}
    assert model.node_logits("normal").device.type == "meta"
    # the index tensors are cached there (one copy, not one per step), none on the CPU
    assert len(model._on_device) == 2
    assert {t.device.type for v in model._on_device.values() for t in v} == {"meta"}


def test_log_prob_is_computed_on_the_logits_device():
    """Its sum starts there (the empty sample's 0 too) and the op-name order it reads is cached
    there, not on the CPU."""
    model = make(2).to("meta")
    model.eval()
    model.mode = "softmax"
    model.sample()
    index = {k: torch.zeros(len(v), dtype=torch.long, device="meta") for k, v in model.arch_logits.items()}
    assert model.log_prob(index, model.last_edges).device.type == "meta"
    assert model.log_prob({}).device.type == "meta"
    orders = [t for v in model._orders.values() if v is not None for t in v]
    assert len(orders) == 2 * 2 and {t.device.type for t in orders} == {"meta"}
