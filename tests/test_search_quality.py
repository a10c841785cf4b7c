"""The search-quality remedies (uniform weight steps, the REINFORCE estimator) and the table monitor."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor

import nas
from nas.cli import main
from nas.config import build_config
from nas.search import edge_parameters, reinforce_step, weight_sampling_logits
from test_benchmarks import write_table
from test_cli import final_logits

TINY_NB201 = {
    "space": "nasbench201",
    "data": {"image_size": 8, "pad": 1, "workers": 0},
    "supernet": {"C": 4, "cells_per_stage": 1},
    "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "arch_lr": 0.05,
               "estimator": "reinforce", "weight_sampling": "uniform", "samples": 3},
}


@pytest.fixture
def nb201_config(tmp_path, cifar_root) -> Path:
    path = tmp_path / "nb201.yaml"
    path.write_text(yaml.safe_dump({**TINY_NB201, "data": {**TINY_NB201["data"], "root": str(cifar_root)}}))
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("table") / "nb201.csv")


def test_the_table_is_logged_every_epoch_and_never_changes_the_search(tmp_path, nb201_config,
                                                                        table, capsys):
    with_table, without = tmp_path / "with", tmp_path / "without"
    assert main(["search", "--config", str(nb201_config), "--run-dir", str(with_table),
                 "--benchmark", str(table)]) == 0
    out = capsys.readouterr().out
    assert main(["search", "--config", str(nb201_config), "--run-dir", str(without), "--quiet"]) == 0
    capsys.readouterr()

    a, b = final_logits(with_table), final_logits(without)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    genotype = nas.Genotype.load(with_table / "genotype.json")
    expected = nas.benchmarks.load_table(table).query(genotype)
    assert expected.summary() in out  # the final lines print the table's accuracies and rank
    lines = [json.loads(l) for l in (with_table / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    epoch_line = next(l for l in out.splitlines() if l.startswith("search epoch 2/2 "))
    assert epoch_line.endswith(f" benchmark_rank={lines[-1]['benchmark_rank']}")  # in full
    assert lines[-1]["benchmark_cifar10"] == pytest.approx(expected.accuracy["cifar10"])
    assert lines[-1]["benchmark_rank"] == expected.rank
    plain = json.loads((without / "metrics.jsonl").read_text().splitlines()[-1])
    assert not any(k.startswith("benchmark") for k in plain)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(with_table), size_guidance={"images": 0, "histograms": 0,
                                                              "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"benchmark/cifar10", "benchmark/cifar100", "benchmark/ImageNet16-120",
            "benchmark/rank"} <= tags
    assert [round(e.value, 4) for e in events.Scalars("benchmark/cifar100")][-1] == \
        round(expected.accuracy["cifar100"], 4)


def test_a_table_that_cannot_score_the_space_fails_before_the_run(tmp_path, tiny_config, table,
                                                                  capsys):
    run = tmp_path / "run"
    assert main(["search", "--config", str(tiny_config), "--run-dir", str(run),
                 "--benchmark", str(table)]) == 2  # tiny_config searches the DARTS space
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a NAS-Bench-201 genotype" in err[0]
    assert not run.exists()


@pytest.mark.parametrize("how, expected", [
    ("uniform", [0.2, 0.2, 0.2, 0.2, 0.2]),
    # parameters of none, skip, 1x1 conv, 3x3 conv, pool summed over the three cells (C = 4,
    # 8, 16): 0, 0, 336, 3024, 0; probability (n + mean n) / sum = (672, 672, 1008, 3696, 672) / 6720
    ("params", [0.1, 0.1, 0.15, 0.55, 0.1]),
])
def test_weight_steps_sample_from_fixed_logits_not_the_architecture(how, expected):
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=3, options={"C": 4, "cells_per_stage": 1})
    with torch.no_grad():
        model.arch_logits["cell"].copy_(torch.tensor([8.0, 0, 0, 0, 0]).expand(6, 5))
    draws = 400
    counts = {}
    for fixed in (None, weight_sampling_logits(model, how, 8)):
        model.sampling_logits = fixed
        counts[fixed is None] = torch.zeros(5)
        for _ in range(draws):
            counts[fixed is None] += torch.bincount(torch.tensor(model.sample()["cell"].index), minlength=5)
    n = draws * 6
    # the logits pick op 0 with probability e^8 / (e^8 + 4) = 0.9987
    assert counts[True][0] > 0.99 * n
    # chi-square with 4 degrees of freedom; 18.5 is its 0.999 quantile
    exp = torch.tensor(expected) * n
    chi2 = ((counts[False] - exp) ** 2 / exp).sum().item()
    assert chi2 < 18.5, counts[False]
    assert weight_sampling_logits(model, "arch", 8) is None


def test_params_sampling_follows_the_op_list_not_op_names():
    """Reordering the ops reorders the weight-step probabilities the same way."""
    ops = ("avg_pool_3x3", "nor_conv_3x3", "none", "nor_conv_1x1", "skip_connect")
    model = nas.build_supernet("nasbench201", 10, "gdas", options={"C": 4, "cells_per_stage": 1,
                                                                    "ops": list(ops)})
    probs = weight_sampling_logits(model, "params", 8)["cell"].softmax(-1)
    assert torch.allclose(probs, torch.tensor([0.1, 0.55, 0.1, 0.15, 0.1]).expand(6, 5))


def sep_conv(C: int, k: int) -> int:
    """Parameters of DARTS's sep_conv_kxk at C channels (no affine batch norm): two depthwise
    k x k and two pointwise 1 x 1 convs."""
    return 2 * (C * k * k + C * C)


@pytest.mark.parametrize("C", [4, 64])
def test_params_sampling_measures_each_edge_of_the_supernet_searched(C):
    """Counts come from the supernet's own ops: its C, and per edge, so that the stride-2 edges of
    reduction cells count the skip connection's factorized reduce (2 1x1 convs of C x C/2)."""
    model = nas.build_supernet("darts", 10, "gdas", options={"C": C, "cells": 3})
    ops = model.op_names["normal"]
    n = edge_parameters(model, 8)
    assert set(n) == {"normal", "reduce"} and n["normal"].shape == n["reduce"].shape == (14, 8)
    # cell 0 is normal at C; cells 1 and 2 reduce, at 2C and 4C, sharing one sample
    assert n["normal"][:, ops.index("sep_conv_3x3")].eq(sep_conv(C, 3)).all()
    assert n["normal"][:, ops.index("sep_conv_5x5")].eq(sep_conv(C, 5)).all()
    assert n["reduce"][:, ops.index("sep_conv_5x5")].eq(sep_conv(2 * C, 5) + sep_conv(4 * C, 5)).all()
    skip = n["reduce"][:, ops.index("skip_connect")]
    stride2 = torch.tensor([src < 2 for _, src in nas.edge_inputs(2, 4)])  # edges from the inputs
    assert skip[stride2].eq(2 * (2 * C) ** 2 // 2 + 2 * (4 * C) ** 2 // 2).all()
    assert skip[~stride2].eq(0).all() and n["normal"][:, ops.index("skip_connect")].eq(0).all()
    for name in ("none", "max_pool_3x3", "avg_pool_3x3"):
        assert n["normal"][:, ops.index(name)].eq(0).all() and n["reduce"][:, ops.index(name)].eq(0).all()
    logits = weight_sampling_logits(model, "params", 8)
    p = {k: v.softmax(-1) for k, v in logits.items()}
    ratio = p["normal"][0, ops.index("sep_conv_5x5")] / p["normal"][0, ops.index("sep_conv_3x3")]
    mean = n["normal"][0].mean()
    expected = (sep_conv(C, 5) + mean) / (sep_conv(C, 3) + mean)
    assert ratio.item() == pytest.approx(expected.item(), rel=1e-5)
    # a reduction cell's stride-2 edge gives its skip connection more than a pooling op
    assert p["reduce"][0, ops.index("skip_connect")] > p["reduce"][0, ops.index("max_pool_3x3")]
    assert p["normal"][0, ops.index("skip_connect")] == p["normal"][0, ops.index("max_pool_3x3")]


def test_params_sampling_logits_are_log_of_count_plus_the_edge_mean(monkeypatch):
    """log(n_k + mean(n)) per edge, the mean over that edge's ops; uniform (zeros) on an edge
    none of whose ops has parameters."""
    n = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    monkeypatch.setattr(nas.search, "edge_parameters", lambda model, image_size: {"cell": n})
    logits = weight_sampling_logits(ToySupernet(seed=0), "params", 8)["cell"]
    expected = torch.tensor([[4 / 3, 1 / 3, 1 / 3], [1.0, 1.0, 1.0], [6.0, 8.0, 10.0]]).log()
    torch.testing.assert_close(logits, expected)


def test_params_are_counted_on_the_supernet_s_device():
    """The blank images go to the model's device (meta: shapes only, no memory)."""
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=0, options={"C": 4, "cells_per_stage": 1})
    on_cpu = edge_parameters(model, 8)
    model.to("meta")
    assert torch.equal(edge_parameters(model, 8)["cell"], on_cpu["cell"])


def test_params_sampling_is_uniform_where_no_op_has_weights():
    ops = ["none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"]
    model = nas.build_supernet("nasbench201", 10, "gdas", seed=0,
                               options={"C": 4, "cells_per_stage": 1, "ops": ops})
    logits = weight_sampling_logits(model, "params", 8)["cell"]
    assert torch.isfinite(logits).all() and torch.equal(logits.softmax(-1), torch.full((6, 4), 0.25))
    model.sampling_logits = {"cell": logits}
    drawn = torch.tensor([model.sample()["cell"].index for _ in range(300)])
    counts = torch.bincount(drawn.flatten(), minlength=4).float()
    assert (counts / counts.sum() - 0.25).abs().max() < 0.05, counts  # not op 0 every time


class ToySupernet(nas.Supernet):
    """Two edges of three ops whose sampled ops fix the loss: an exact expectation to compare with."""

    def __init__(self, seed: int) -> None:
        super().__init__("gdas", {"cell": (2, ("a", "b", "c"))}, seed=seed)
        self.cost = torch.tensor([[0.2, 1.0, 3.0], [2.0, 0.5, 0.1]])
        self.weight = torch.nn.Parameter(torch.ones(()))
        with torch.no_grad():
            self.arch_logits["cell"].copy_(torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.4, -0.6]]))

    def forward(self, x: Tensor) -> Tensor:
        index = self.sample()["cell"].index
        margin = self.weight * sum(self.cost[e, k] for e, k in enumerate(index))
        # cross-entropy of [margin, 0] against class 1 is softplus(margin): a function of the sample
        return torch.stack([margin, torch.zeros(())]).expand(x.shape[0], 2)

    def expected_loss(self) -> Tensor:
        p = self.arch_logits["cell"].softmax(-1)
        loss = torch.nn.functional.softplus(self.cost[0][:, None] + self.cost[1][None, :])
        return (p[0][:, None] * p[1][None, :] * loss).sum()


def test_reinforce_with_a_leave_one_out_baseline_is_unbiased():
    model = ToySupernet(seed=0)
    opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)  # keep the logits, read the gradient
    exact = torch.autograd.grad(model.expected_loss(), model.arch_parameters())[0]
    x, y = torch.zeros(2, 1), torch.ones(2, dtype=torch.long)
    total, n = torch.zeros_like(exact), 3000
    for _ in range(n):
        reinforce_step(model, opt, x, y, samples=4, amp=False)
        total += model.arch_logits["cell"].grad
    estimate = total / n
    # the estimator's per-step standard deviation is about 0.3 per entry: 3000 steps -> 0.006
    assert torch.allclose(estimate, exact, atol=0.03), (estimate, exact)
    assert model.weight.grad is None  # no gradient reaches the weights


def test_counting_the_parameters_changes_nothing_in_the_supernet():
    model = nas.build_supernet("darts", 10, "gdas", seed=2, options={"C": 4, "cells": 3})
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    edge_parameters(model, 8)
    assert "sample" not in vars(model) and model.mode == "gdas" and model.training
    assert all(m.training for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert model.samples_drawn == 0
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items())


class HalfMixed(nas.Supernet):
    """Edge 0 a MixedEdge, edges 1 and 2 mixed by hand: the counts cannot cover them."""

    def __init__(self) -> None:
        super().__init__("gdas", {"cell": (3, ("skip_connect", "nor_conv_1x1"))}, seed=0)
        self.edge = nas.MixedEdge(("skip_connect", "nor_conv_1x1"), 3)
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.head = torch.nn.Linear(3, 10)

    def forward(self, x):
        w = self.sample()["cell"].weights
        h = self.mixed(x, w[0])
        for e in (1, 2):
            h = h + w[e, 0] * x + w[e, 1] * self.conv(x)
        return self.head(h.mean((2, 3)))

    def mixed(self, x, weights):
        return self.edge(x, weights)


class KeywordMixed(HalfMixed):
    """Edge 0's MixedEdge is given its weights by keyword, which the counting cannot follow."""

    def mixed(self, x, weights):
        return self.edge(x, weights=weights)


def test_params_sampling_needs_mixed_edges():
    with pytest.raises(nas.InputError, match=r"HalfMixed runs 1 of the 3 edges of cell kind 'cell'"):
        weight_sampling_logits(HalfMixed(), "params", 8)
    with pytest.raises(nas.InputError, match=r"KeywordMixed runs 0 of the 3 edges .* "
                                             r"as nas.MixedEdge\(x, weights\[edge\]\)"):
        weight_sampling_logits(KeywordMixed(), "params", 8)
    with pytest.raises(nas.InputError, match="weight_sampling: params counts .* nas.MixedEdge"):
        weight_sampling_logits(ToySupernet(seed=0), "params", 8)
    assert weight_sampling_logits(ToySupernet(seed=0), "uniform", 8)["cell"].eq(0).all()


def test_reinforce_runs_forward_only_samples_times_and_returns_the_mean_loss():
    model = ToySupernet(seed=1)
    opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)
    before = model.samples_drawn
    loss, logits = reinforce_step(model, opt, torch.zeros(2, 1), torch.ones(2, dtype=torch.long),
                                  samples=5, amp=False)
    assert model.samples_drawn - before == 5
    assert logits.shape == (2, 2) and not logits.requires_grad
    assert 0 < loss.item() < math.log1p(math.exp(4.0))


@pytest.mark.parametrize("overrides, message", [
    (["search.estimator=reinforce", "search.mode=softmax"], "needs search.mode: gdas"),
    (["search.samples=1"], "search.samples: must be from 2 to 1024"),
    (["search.weight_sampling=logits"], "expected one of arch, uniform, params"),
    (["search.weight_sampling=uniform", "search.mode=softmax"], "needs a sampling mode"),
])
def test_remedy_options_are_checked(overrides, message):
    with pytest.raises(nas.InputError, match=message):
        build_config({}, overrides)


def test_the_cpu_config_has_the_remedies_on_by_default():
    from nas.config import load_config
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "gdas_nb201_cpu.yaml")
    s = cfg.search
    assert (cfg.space, s.mode, s.estimator, s.weight_sampling) == ("nasbench201", "gdas", "reinforce", "params")
    assert 0 < s.warmup_epochs < s.epochs and s.samples >= 2 and s.benchmark is None
    assert cfg.supernet == {"C": 8, "cells_per_stage": 1, "track_running_stats": False}
