"""Reordering a space's op list is the same run up to the order of the names: each op's initial
weights, initial logit and Gumbel noise follow its name, not its position (docs/explanation/collapse.md,
"What the remedies do")."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import nas
from nas.cli import main
from nas.supernet import canonical_order

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
SHUFFLED = ("nor_conv_3x3", "avg_pool_3x3", "none", "nor_conv_1x1", "skip_connect")


def test_canonical_order_sorts_by_name():
    assert canonical_order(["b", "c", "a"]) == [2, 0, 1]
    assert canonical_order(OPS) == [4, 0, 2, 3, 1]
    assert canonical_order(("a",)) == [0]


def test_a_reordered_supernet_starts_with_the_same_weights_and_logits_per_op():
    built = {}
    for ops in (OPS, SHUFFLED):
        torch.manual_seed(0)
        built[ops] = nas.build_supernet("nasbench201", 10, "gdas", seed=4,
                                        options={"C": 4, "cells_per_stage": 1, "ops": list(ops)})
    a, b = built[OPS], built[SHUFFLED]
    perm = [OPS.index(name) for name in SHUFFLED]  # b's column j is a's column perm[j]
    assert torch.equal(b.arch_logits["cell"], a.arch_logits["cell"][:, perm])
    edges_a = [m for m in a.modules() if isinstance(m, nas.MixedEdge)]
    edges_b = [m for m in b.modules() if isinstance(m, nas.MixedEdge)]
    for ea, eb in zip(edges_a, edges_b):
        for j, name in enumerate(SHUFFLED):
            pa, pb = list(ea.ops[OPS.index(name)].parameters()), list(eb.ops[j].parameters())
            assert len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb)), name
    # and the same samples, by name, in every mode that draws one (weights and estimators too)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for mode in ("gdas", "st", "gumbel"):
        a.mode = b.mode = mode
        wa, wb = a.sample()["cell"].weights, b.sample()["cell"].weights
        assert torch.equal(wb, wa[:, perm]), mode
    a.mode = b.mode = "gdas"
    for estimator in ("gumbel_rao", "reinmax"):
        a.estimator = b.estimator = estimator
        a.zero_grad(), b.zero_grad()
        a(x).sum().backward()
        b(x).sum().backward()
        assert [OPS[i] for i in a.last_index["cell"]] == [SHUFFLED[i] for i in b.last_index["cell"]]
        assert torch.equal(b.arch_logits["cell"].grad, a.arch_logits["cell"].grad[:, perm]), estimator
    # REINFORCE scores a sample by the same log-probability
    index_a = {"cell": a.last_index["cell"]}
    index_b = {"cell": torch.tensor([SHUFFLED.index(OPS[i]) for i in a.last_index["cell"]])}
    assert torch.equal(a.log_prob(index_a), b.log_prob(index_b))


def _record_samples(monkeypatch) -> list[list[str]]:
    """The op names every training forward ran, edge by edge."""
    seen: list[list[str]] = []
    real = nas.Supernet.sample

    def sample(self):
        drawn = real(self)
        if self.training and self.last_index and drawn:  # a forward's, not one drawn ahead
            seen.append([self.op_names["cell"][i] for i in self.last_index["cell"].tolist()])
        return drawn

    monkeypatch.setattr(nas.Supernet, "sample", sample)
    return seen


@pytest.mark.parametrize("search", [
    {"estimator": "gdas", "weight_sampling": "params"},
    {"estimator": "reinforce", "weight_sampling": "params"},
    {"mode": "st", "estimator": "gumbel_rao"},
    {"mode": "softmax", "weight_sampling": "arch"},  # every op runs, weighted: sums in name order
    # a budget below the uniform distribution's expected multiply-adds (3.4M): the expected cost and the
    # knapsack derivation must not depend on the op order either
    {"estimator": "reinforce", "weight_sampling": "params",
     "budget": {"macs": 2.0e6, "image_size": 8, "dual_lr": 0.5}},
    # and the few-shot phase: the same split edge, parts and pick, by name
    {"estimator": "reinforce", "weight_sampling": "params",
     "budget": {"macs": 2.0e6, "image_size": 8, "dual_lr": 0.5},
     "few_shot": {"epochs": 1, "select_epochs": 1, "select_batch_size": 16}},
], ids=["gdas", "reinforce", "st-gumbel_rao", "softmax", "reinforce-budget", "few-shot"])
def test_a_reordered_search_is_the_same_run_up_to_names(tmp_path, cifar_root, monkeypatch,
                                                         capsys, search):
    """A whole search: the same ops run at every step, the same genotype, the logits equal after
    reordering the columns (to float rounding of the gradient clip, see below)."""
    runs, parts = {}, {}
    for ops in (OPS, SHUFFLED):
        cfg = {"space": "nasbench201", "seed": 3,
               "data": {"root": str(cifar_root), "image_size": 8, "pad": 1, "workers": 0},
               "supernet": {"C": 4, "cells_per_stage": 1, "ops": list(ops)},
               "search": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 2, "arch_lr": 0.1,
                          "samples": 3, **search}}
        path = tmp_path / f"{ops[0]}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        seen = _record_samples(monkeypatch)
        run = tmp_path / f"run_{ops[0]}"
        assert main(["search", "--config", str(path), "--run-dir", str(run), "--quiet"]) == 0
        monkeypatch.undo()
        state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
        runs[ops] = seen, nas.Genotype.load(run / "genotype.json"), state["arch_logits.cell"]
        if "few_shot" in search:
            few = json.loads((run / "few_shot.json").read_text())
            parts[ops] = few["edge"], {op: {k: v for k, v in p.items() if k != "seconds"}
                                       for op, p in few["parts"].items()}
        if "budget" in search:  # the constraint was active and every derived cell fits
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert max(e["budget_lambda_macs"] for e in epochs) > 0
            assert all(e["cost_macs"] <= search["budget"]["macs"] for e in epochs)
    capsys.readouterr()
    (seen_a, genotype_a, logits_a), (seen_b, genotype_b, logits_b) = runs[OPS], runs[SHUFFLED]
    # exact although the logits below differ by rounding: a draw or a derived op flips only on
    # a tie of perturbed logits within about 1e-6, which these seeds do not come near
    assert seen_a == seen_b and (len(seen_a) >= 3 * 2 * 2 or search.get("mode") == "softmax")
    assert genotype_a == genotype_b
    perm = [OPS.index(name) for name in SHUFFLED]
    # Not bit for bit: the weight step clips the gradient by the norm of all per-parameter norms,
    # summed in module order, which the op order changes; how that sum rounds depends on the
    # CPU's vector width (5e-7 apart on an AMD EPYC in softmax mode, where every op has a gradient).
    torch.testing.assert_close(logits_b, logits_a[:, perm], rtol=0, atol=1e-5)
    assert (logits_a - logits_a.mean()).abs().max() > 0.05  # the logits did move
    if "few_shot" in search:  # exact: each part's network trains from scratch on its genotype
        assert parts[OPS] == parts[SHUFFLED] and len(parts[OPS][1]) == 5
