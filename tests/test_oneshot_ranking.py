"""nas.experiments.ranking (scripts/oneshot_ranking.py): the supernet's order of NAS-Bench-201 cells against the table."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_cifar10
from nas.benchmarks import load_table
from nas.budget import fits
from nas.cli import main as nas_main
from nas.experiments import ranking
from nas.genotype import parse_nb201

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "benchmarks" / "nats_tss_200ep.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(), reason=f"no NAS-Bench-201 table at {TABLE}")


TINY = {"space": "nasbench201", "device": "cpu",
        "data": {"image_size": 8, "pad": 1, "limit": 64, "workers": 0},
        "supernet": {"C": 4, "cells_per_stage": 1},
        "network": {"C": 4, "cells_per_stage": 1},
        "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "estimator": "reinforce",
                   "samples": 2, "budget": {"params": 6000}}}


def brute_tau_b(a, b) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    s = [((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j])) for i, j in pairs]
    ta = sum(a[i] == a[j] for i, j in pairs)
    tb = sum(b[i] == b[j] for i, j in pairs)
    return sum(s) / ((len(pairs) - ta) * (len(pairs) - tb)) ** 0.5


def test_kendall_tau_b_matches_the_definition_with_ties():
    assert ranking.kendall_tau_b([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert ranking.kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (2100,), generator=gen).tolist()  # ties, and more than one chunk
    b = [x + y for x, y in zip(a, torch.randint(0, 4, (2100,), generator=gen).tolist())]
    expected = brute_tau_b(a[:300], b[:300])
    assert ranking.kendall_tau_b(a[:300], b[:300]) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < ranking.kendall_tau_b(a, b) < 0.95


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny finished budgeted nasbench201 search, its data in data/ beside it."""
    root = tmp_path_factory.mktemp("oneshot")
    write_cifar10(root / "data", n_train=64, n_test=16)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert nas_main(["search", "--config", str(root / "tiny.yaml"), "--data-dir", str(root / "data"),
                     "--run-dir", str(root / "run"), "--quiet", "--threads", "1"]) == 0
    return root / "run"


@needs_table
def test_it_scores_fitting_cells_with_their_table_accuracy(run, capsys):
    out_file = run.parent / "ranking.json"
    code = ranking.main([str(run), "--benchmark", str(TABLE), "--cells", "30", "--images", "16",
                         "--out", str(out_file)])
    printed = capsys.readouterr().out
    assert code == 0
    out = json.loads(out_file.read_text())
    table = load_table(TABLE)
    assert out["cells"] == len(out["cells_scored"]) == 30 and out["images"] == 16
    setup = ranking.build_search(ranking.load_config(run / "config.yaml", [f"data.root={run.parent / 'data'}"]))
    fitting = sum(fits(setup.budget.table.of(g), setup.budget.limits)
                  for g in ranking.all_cells(setup.model.ops))
    assert 30 < fitting < 15625  # the budget leaves some cells out, and 30 is a sample
    for row in out["cells_scored"]:
        g = parse_nb201(row["arch"])
        assert fits(setup.budget.table.of(g), setup.budget.limits)
        assert row["cifar10"] == table.query(g).accuracy["cifar10"]
        assert row["loss"] > 0 and 0 <= row["acc"] <= 100
    assert out["top"]["1"] == min(out["cells_scored"], key=lambda r: r["loss"])["cifar10"]
    assert f"Kendall tau-b, supernet loss order against CIFAR-10 table accuracy: {out['kendall_tau_b']:.3f}" in printed


def test_the_fixed_cell_is_the_one_that_runs(run):
    """Cells that differ only behind a zero node score the same; a live edge changes the score;
    the search's logits are left as they were."""
    cfg = ranking.load_config(run / "config.yaml", [f"data.root={run.parent / 'data'}"])
    setup = ranking.build_search(cfg, run / ranking.COSTS)
    ranking.resume_from(run, "search", setup.objects)
    model = setup.model.eval()
    before = model.arch_logits["cell"].detach().clone()
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = [(x, torch.arange(8) % 10)]

    def loss(arch: str) -> float:
        with ranking.fixed_cell(model, parse_nb201(arch)):
            return ranking.score(model, batches)[0]

    base = "|none~0|+|nor_conv_3x3~0|{}~1|+|skip_connect~0|{}~1|nor_conv_1x1~2|"
    dead = {loss(base.format(a, b)) for a, b in [("none", "none"), ("nor_conv_3x3", "skip_connect"),
                                                   ("avg_pool_3x3", "nor_conv_1x1")]}
    assert len(dead) == 1  # node 1 is zero: what reads it adds nothing
    live = {loss(f"|none~0|+|nor_conv_3x3~0|none~1|+|{op}~0|none~1|nor_conv_1x1~2|")
            for op in ("none", "skip_connect", "nor_conv_3x3", "avg_pool_3x3")}
    assert len(live) == 4
    assert torch.equal(model.arch_logits["cell"], before)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert ranking.main([str(tmp_path), "--benchmark", str(TABLE)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oneshot_ranking: error: ") and "not a search run directory" in err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        ranking.main([str(tmp_path), "--benchmark", str(TABLE), "--cells", "0"])
    assert exc.value.code == 2
    assert "--cells must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_finetune_with_an_edge_fixed_trains_only_that_op_there(run):
    """Few-shot: the split edge runs its fixed op alone, so the other ops' weights on that edge
    stay as the search left them; the same op on another edge is still trained."""
    cfg = ranking.load_config(run / "config.yaml", [f"data.root={run.parent / 'data'}"])
    setup = ranking.build_search(cfg, run / ranking.COSTS)
    ranking.resume_from(run, "search", setup.objects)
    model = setup.model
    conv3, conv1 = model.ops.index("nor_conv_3x3"), model.ops.index("nor_conv_1x1")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ranking.finetune_with_edge(setup, 3, conv3, epochs=2, lr=0.1)
    after = dict(model.named_parameters())

    def moved(name: str) -> bool:
        return not torch.equal(before[name], after[name])

    assert moved(f"layers.0.edges.3.ops.{conv3}.1.weight")
    assert not moved(f"layers.0.edges.3.ops.{conv1}.1.weight")
    assert moved(f"layers.0.edges.0.ops.{conv1}.1.weight") or moved(f"layers.0.edges.0.ops.{conv3}.1.weight")
    assert not model.training and model.sampling_logits is None


@needs_table
def test_split_edge_scores_each_group_with_its_own_supernet(run, capsys):
    out_file = run.parent / "fewshot.json"
    args = [str(run), "--benchmark", str(TABLE), "--cells", "40", "--images", "16"]
    assert ranking.main(args + ["--out", str(run.parent / "plain.json")]) == 0
    assert ranking.main(args + ["--split-edge", "3", "--finetune-epochs", "1",
                                "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    plain = {r["arch"]: r["loss"] for r in json.loads((run.parent / "plain.json").read_text())["cells_scored"]}
    out = json.loads(out_file.read_text())
    assert out["split"]["edge"] == 3 and out["split"]["finetune_epochs"] == 1
    assert {r["arch"] for r in out["cells_scored"]} == set(plain)  # the same sample, regrouped
    for row in out["cells_scored"]:
        assert ranking.edge_ops(parse_nb201(row["arch"]))[3] == row["group"]
    groups = out["split"]["groups"]
    assert sum(g["cells"] for g in groups.values()) == 40
    for op, g in groups.items():
        mine = [r for r in out["cells_scored"] if r["group"] == op]
        assert g["best_loss"] == min(r["loss"] for r in mine)
        assert f"  {op}: {g['cells']:,} cells" in printed
    live = [r for r in out["cells_scored"] if r["group"] != "none"]
    assert any(r["loss"] != plain[r["arch"]] for r in live)  # fine-tuned weights score them
    assert "few-shot: one supernet per op of edge 3" in printed


def test_finetune_options_need_a_split_edge(tmp_path, capsys):
    for bad, message in [(["--finetune-epochs", "3"], "need --split-edge"),
                         (["--split-edge", "6"], "invalid choice"),
                         (["--split-edge", "1", "--finetune-lr", "0"], "--finetune-lr must be positive"),
                         (["--split-edge", "1", "--finetune-epochs", "0"], "--finetune-epochs must be at least 1")]:
        with pytest.raises(SystemExit) as exc:
            ranking.main([str(tmp_path), "--benchmark", str(TABLE), *bad])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
