"""The step functions of nas.search, each against a reference computed here: what the weight
step trains and clips, what the architecture step differentiates, REINFORCE's exact objective,
and their bf16 and distributed paths."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nas
import nas.search
from nas.search import arch_step, reinforce_step, weight_step

OPTS = {"C": 4, "cells_per_stage": 1}


def make(mode: str = "gdas", seed: int = 3) -> nas.Supernet:
    torch.manual_seed(0)
    model = nas.build_supernet("nasbench201", 10, mode, seed=seed, options=OPTS)
    with torch.no_grad():
        model.arch_logits["cell"].normal_(generator=torch.Generator().manual_seed(1))
    return model


def twin(model: nas.Supernet) -> nas.Supernet:
    """A copy that will draw the same samples (the state holds the sample counter)."""
    other = make(model.mode, model.sample_seed)
    other.load_state_dict(model.state_dict())
    other.tau = model.tau
    return other


def batch(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def weight_grads(model: nas.Supernet) -> dict[str, torch.Tensor | None]:
    arch = {id(p) for p in model.arch_parameters()}
    return {n: p.grad for n, p in model.named_parameters() if id(p) not in arch}


# -- the weight step ----------------------------------------------------------------------------
def test_the_weight_step_trains_the_sampled_weights_only():
    model, x, y = make(), *batch()
    ref = twin(model)
    logits_before = {k: v.detach().clone() for k, v in model.arch_logits.items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1)
    loss, logits = weight_step(model, opt, x, y, grad_clip=0.0, amp=False)
    assert not logits.requires_grad and not loss.requires_grad
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    # the reference: the same sample, differentiated by hand
    ref_out = ref(x)
    assert torch.equal(ref_out.detach(), logits)
    F.cross_entropy(ref_out, y).backward()
    assert all(p.grad is None for p in model.arch_parameters())  # the logits were frozen
    assert all(p.requires_grad for p in model.arch_parameters())  # and are trainable again
    assert all(torch.equal(logits_before[k], v) for k, v in model.arch_logits.items())
    got, expected = weight_grads(model), weight_grads(ref)
    assert {n for n, g in got.items() if g is None} == {n for n, g in expected.items() if g is None}
    moved = 0
    for name, p in model.named_parameters():
        g = expected.get(name)
        if g is None:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p.detach(), before[name] - 0.1 * g, rtol=1e-5, atol=1e-7)
            moved += 1
    assert moved > 0


def test_the_weight_step_clips_the_norm_of_the_gradients_it_has():
    model, x, y = make(), *batch(1)
    ref = twin(model)
    F.cross_entropy(ref(x), y).backward()
    norm = torch.linalg.vector_norm(torch.stack(
        [g.norm() for g in weight_grads(ref).values() if g is not None]))
    assert norm > 1e-2
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.0)
    weight_step(model, opt, x, y, grad_clip=1e-2, amp=False)
    grads = [g for g in weight_grads(model).values() if g is not None]
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert clipped.item() == pytest.approx(1e-2, rel=1e-4)
    # grad_clip 0: no clipping at all
    model2 = twin(ref)
    model2.samples_drawn = ref.samples_drawn - 1
    weight_step(model2, torch.optim.SGD(model2.weight_parameters(), lr=0.0), x, y, 0.0, False)
    unclipped = torch.linalg.vector_norm(torch.stack(
        [g.norm() for g in weight_grads(model2).values() if g is not None]))
    assert unclipped.item() == pytest.approx(norm.item(), rel=1e-5)


def test_the_weight_step_leaves_no_gradient_of_an_earlier_sample():
    """The gradients are set to None before each backward: weights the new sample did not run
    keep none, so momentum and weight decay do not move them."""
    model, x, y = make(seed=4), *batch(2)
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    weight_step(model, opt, x, y, 0.0, False)
    first = {n for n, g in weight_grads(model).items() if g is not None}
    ref = twin(model)
    weight_step(model, opt, x, y, 0.0, False)
    F.cross_entropy(ref(x), y).backward()
    second = {n for n, g in weight_grads(ref).items() if g is not None}
    assert first - second  # weights the first sample ran and the second does not
    assert {n for n, g in weight_grads(model).items() if g is not None} == second


class FakeDDP(nn.Module):
    """Stands in for DistributedDataParallel: counts forwards and no_sync() blocks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module, self.forwards, self.unsynced = model, 0, 0

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        yield

    def forward(self, x):
        self.forwards += 1
        return self.module(x)


@pytest.mark.parametrize("mode", ["gdas", "st"])
def test_under_ddp_a_gdas_weight_step_averages_its_gradients_itself(mode, monkeypatch):
    """gdas: DDP's hooks off (no_sync), the gradients that exist averaged in one call; other
    modes: DDP's own reduction (every op runs), no second average."""
    averaged = []
    monkeypatch.setattr(nas.search.dist, "average_gradients",
                        lambda params: averaged.append([p.grad is not None for p in params]))
    model, x, y = make(mode), *batch(3)
    ddp = FakeDDP(model)
    weight_step(model, torch.optim.SGD(model.weight_parameters(), 0.1), x, y, 0.0, False, ddp)
    assert ddp.forwards == 1
    if mode == "gdas":
        assert ddp.unsynced == 1 and len(averaged) == 1
        assert len(averaged[0]) == len(model.weight_parameters()) and any(averaged[0])
    else:
        assert ddp.unsynced == 0 and averaged == []


def test_bf16_autocast_runs_each_step_s_forward_in_bfloat16():
    x, y = batch(4)
    model = make()
    _, logits = weight_step(model, torch.optim.SGD(model.weight_parameters(), 0.0), x, y, 0.0, True)
    assert logits.dtype == torch.bfloat16
    _, logits = weight_step(model, torch.optim.SGD(model.weight_parameters(), 0.0), x, y, 0.0, False)
    assert logits.dtype == torch.float32
    a_opt = torch.optim.SGD(model.arch_parameters(), 0.0)
    assert arch_step(model, a_opt, x, y, True)[1].dtype == torch.bfloat16
    assert reinforce_step(model, a_opt, x, y, 2, True)[1].dtype == torch.bfloat16
    assert reinforce_step(model, a_opt, x, y, 2, False)[1].dtype == torch.float32


# -- the architecture step ----------------------------------------------------------------------
class TwoKinds(nas.Supernet):
    """A forward that reads the kind 'used' and never 'unused'."""

    def __init__(self) -> None:
        super().__init__("gdas", {"used": (1, ("a", "b")), "unused": (1, ("a", "b"))}, seed=0)
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, x):
        sample = self.sample()["used"]
        return (sample.weights[0] * self.w).expand(x.shape[0], 2)


def test_the_arch_step_follows_the_gradient_of_loss_plus_penalty(monkeypatch):
    averaged = []
    real = nas.search.dist.average_gradients
    monkeypatch.setattr(nas.search.dist, "average_gradients",
                        lambda params: averaged.append(list(params)) or real(params))
    model, x, y = make(), *batch(5)
    ref = twin(model)
    before = model.arch_logits["cell"].detach().clone()

    def penalty():
        return 0.5 * (model.arch_logits["cell"] ** 2).sum()

    opt = torch.optim.SGD(model.arch_parameters(), lr=0.1)
    loss, logits = arch_step(model, opt, x, y, False, penalty)
    out = ref(x)
    ref_loss = F.cross_entropy(out, y)
    (grad,) = torch.autograd.grad(ref_loss + 0.5 * (ref.arch_logits["cell"] ** 2).sum(),
                                  [ref.arch_logits["cell"]])
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)  # without the penalty
    assert torch.equal(logits, out.detach()) and not logits.requires_grad
    torch.testing.assert_close(model.arch_logits["cell"].grad, grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.arch_logits["cell"].detach(), before - 0.1 * grad,
                               rtol=1e-5, atol=1e-7)
    assert all(g is None for g in weight_grads(model).values())  # no weight gradient
    assert len(averaged) == 1 and [id(p) for p in averaged[0]] == [id(p) for p in model.arch_parameters()]

    # a kind the forward does not read gets a zero gradient (not None): every rank averages the
    # same list of tensors
    toy = TwoKinds()
    arch_step(toy, torch.optim.SGD(toy.arch_parameters(), lr=0.0), x, torch.zeros(4, dtype=torch.long), False)
    assert torch.equal(toy.arch_logits["unused"].grad, torch.zeros(1, 2))
    assert toy.arch_logits["used"].grad.abs().sum() > 0


# -- REINFORCE ----------------------------------------------------------------------------------
class ToyNet(nas.Supernet):
    """Two edges of three ops; the loss of a draw is a fixed function of the ops it runs."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("gdas", {"cell": (2, ("a", "b", "c"))}, seed=seed)
        self.cost = torch.tensor([[0.2, 1.0, 3.0], [2.0, 0.5, 0.1]])
        with torch.no_grad():
            self.arch_logits["cell"].copy_(torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.4, -0.6]]))

    def forward(self, x):
        index = self.sample()["cell"].index
        margin = sum(self.cost[e, k] for e, k in enumerate(index))
        return torch.stack([margin, torch.zeros(())]).expand(x.shape[0], 2)


@pytest.mark.parametrize("samples", [2, 5])
def test_reinforce_is_the_leave_one_out_score_function_exactly(samples, monkeypatch):
    """grad = mean_i (L_i - mean_{j != i} L_j) grad log p(D_i), plus the penalty's gradient,
    for the samples it drew (recorded here); the mean loss and the first draw's output returned."""
    model = ToyNet(seed=4)
    drawn, outputs = [], []
    real = ToyNet.forward

    def recording(self, x):
        out = real(self, x)
        drawn.append(self.last_index["cell"].clone())
        outputs.append(out.detach().clone())
        return out

    monkeypatch.setattr(ToyNet, "forward", recording)
    x, y = torch.zeros(3, 1), torch.ones(3, dtype=torch.long)
    before = model.samples_drawn
    opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)
    loss, first = reinforce_step(model, opt, x, y, samples, False,
                                 penalty=lambda: model.arch_logits["cell"][0, 0] * 3.0)
    assert model.samples_drawn - before == samples == len(drawn)
    losses = torch.stack([F.softplus(model.cost[0, int(d[0])] + model.cost[1, int(d[1])]) for d in drawn])
    assert loss.item() == pytest.approx(losses.mean().item(), rel=1e-6)
    assert torch.equal(first, outputs[0])
    theta = model.arch_logits["cell"].detach().clone().requires_grad_(True)
    logp = torch.stack([theta.log_softmax(-1).gather(1, d.unsqueeze(1)).sum() for d in drawn])
    baseline = (losses.sum() - losses) / (samples - 1)
    objective = ((losses - baseline) * logp).mean() + theta[0, 0] * 3.0
    (expected,) = torch.autograd.grad(objective, theta)
    torch.testing.assert_close(model.arch_logits["cell"].grad, expected, rtol=1e-5, atol=1e-7)
    assert samples == 2 or len({tuple(d.tolist()) for d in drawn}) > 1  # the draws differ


def test_reinforce_scores_the_input_choice_of_edge_top_k_and_averages_the_gradients(monkeypatch):
    """With edge top-k a draw's score includes its kept inputs, so the edge logits get the
    leave-one-out score-function gradient too (recomputed here from a twin that replays the
    same three draws); the architecture gradients are averaged over the ranks."""
    averaged = []
    monkeypatch.setattr(nas.search.dist, "average_gradients",
                        lambda params: averaged.append([id(p) for p in params]))

    def build():
        torch.manual_seed(0)
        return nas.build_supernet("darts", 10, "gdas", seed=2, options={"C": 4, "cells": 3},
                                  edge_topk=1)

    model, replay = build(), build()
    replay.load_state_dict(model.state_dict())
    x, y = batch(6, n=2)
    reinforce_step(model, torch.optim.SGD(model.arch_parameters(), lr=0.0), x, y, 3, False)
    assert averaged == [[id(p) for p in model.arch_parameters()]]
    losses, drawn = [], []
    with torch.no_grad():
        for _ in range(3):
            losses.append(F.cross_entropy(replay(x), y))
            drawn.append((dict(replay.last_index), dict(replay.last_edges)))
    losses = torch.stack(losses)
    logp = torch.stack([replay.log_prob(index, edges) for index, edges in drawn])
    objective = ((losses - (losses.sum() - losses) / 2) * logp).mean()
    expected = torch.autograd.grad(objective, replay.arch_parameters())
    for p, g in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)
    assert all(model.edge_logits[k].grad.abs().sum() > 0 for k in ("normal", "reduce"))


class ExtraArchParameter(ToyNet):
    """A plugin whose architecture parameters include one that no sample's log-probability
    reads (a scale of its own): the score function gives it no gradient."""

    def __init__(self) -> None:
        super().__init__(seed=5)
        self.scale = nn.Parameter(torch.ones(3))

    def arch_parameters(self):
        return super().arch_parameters() + [self.scale]


def test_reinforce_gives_an_architecture_parameter_it_does_not_reach_a_zero_gradient(monkeypatch):
    """Zeros, not None: every rank averages the same list of tensors."""
    averaged = []
    monkeypatch.setattr(nas.search.dist, "average_gradients",
                        lambda params: averaged.append([p.grad for p in params]))
    model = ExtraArchParameter()
    x, y = torch.zeros(2, 1), torch.ones(2, dtype=torch.long)
    reinforce_step(model, torch.optim.SGD(model.arch_parameters(), lr=0.0), x, y, 3, False)
    assert torch.equal(model.scale.grad, torch.zeros(3))
    assert model.arch_logits["cell"].grad.abs().sum() > 0
    assert len(averaged) == 1 and all(g is not None for g in averaged[0])
