"""search.few_shot: one supernet per op of the most certain edge, searched and then picked by a
short training of each part's cell (nas/fewshot.py)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import nas.fewshot
from conftest import write_cifar10
from nas.budget import fits
from nas.cli import main as nas_main
from nas.config import load_config
from nas.errors import InputError
from nas.genotype import Genotype
from nas.search import COSTS, build_search
from nas.shortlist import live_cost
from nas.threads import Threads
from search_spaces.nasbench201 import PRIMITIVES, NB201Supernet, all_cells

TINY = {"space": "nasbench201", "device": "cpu",
        "data": {"image_size": 8, "pad": 1, "limit": 64, "workers": 0},
        "supernet": {"C": 4, "cells_per_stage": 1},
        "network": {"C": 4, "cells_per_stage": 1},
        "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "estimator": "reinforce",
                   "samples": 2, "weight_sampling": "params", "budget": {"params": 6000},
                   "few_shot": {"epochs": 2, "select_epochs": 2, "select_batch_size": 16}}}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot")
    write_cifar10(root / "data", n_train=64, n_test=16)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root


def search(root: Path, run: Path, *extra: str) -> int:
    return nas_main(["search", "--config", str(root / "tiny.yaml"), "--data-dir", str(root / "data"),
                     "--run-dir", str(run), "--quiet", "--threads", "1", *extra])


@pytest.fixture(scope="module")
def finished(root) -> Path:
    assert search(root, root / "run") == 0
    return root / "run"


def test_certain_edge_and_fixing_it():
    model = NB201Supernet(10, C=4, cells_per_stage=1)
    with torch.no_grad():
        model.arch_logits["cell"][2, 1] = 3.0
        model.arch_logits["cell"][4, 0] = 2.0
    assert nas.fewshot.certain_edge(model) == ("cell", 2)
    nas.fewshot.fix_edge(model, "cell", 4, 3)
    logits = model.arch_logits["cell"].detach()
    assert torch.equal(logits[[0, 1, 2, 3, 5]], torch.zeros(5, 5))  # the others back at uniform
    assert logits[4].argmax() == 3 and logits[4].max() - logits[4].min() >= 1e4
    model.train()
    for _ in range(50):
        model.sample()
        assert model.last_index["cell"][4] == 3  # never another op there
    assert model.probabilities()["cell"][4, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("sampling", ["params", "uniform", "arch"])
def test_a_part_trains_only_its_op_on_the_split_edge(root, finished, sampling):
    cfg = load_config(finished / "config.yaml", [f"data.root={root / 'data'}",
                                                 f"search.weight_sampling={sampling}"])
    setup = build_search(cfg, finished / COSTS)
    nas.runtime.resume_from(finished, "search", setup.objects)
    model = setup.model
    conv3, conv1 = model.ops.index("nor_conv_3x3"), model.ops.index("nor_conv_1x1")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    updates = []

    def arch_update(opt, x, y):
        updates.append(len(y))
        return nas.search.arch_updater(setup)(opt, x, y)

    genotype = nas.fewshot.search_part(setup, "cell", 0, conv1, arch_update, lambda: None)
    after = dict(model.named_parameters())
    assert not torch.equal(before[f"layers.0.edges.0.ops.{conv1}.1.weight"],
                           after[f"layers.0.edges.0.ops.{conv1}.1.weight"])
    assert torch.equal(before[f"layers.0.edges.0.ops.{conv3}.1.weight"],
                       after[f"layers.0.edges.0.ops.{conv3}.1.weight"])
    assert len(updates) == 2 * 2  # few_shot.epochs x steps per epoch
    assert genotype is not None and genotype.cells["cell"][0] == (("nor_conv_1x1", 0),)
    assert fits(setup.budget.table.of(genotype), setup.budget.limits)


def test_the_pick_is_the_best_part_and_every_part_fits(root, finished, capsys):
    state = json.loads((finished / nas.fewshot.STATE).read_text())
    kind, edge = state["edge"]
    parts = state["parts"]
    assert kind == "cell" and list(parts) == sorted(PRIMITIVES)  # one part per op, by name
    cfg = load_config(finished / "config.yaml", [f"data.root={root / 'data'}"])
    setup = build_search(cfg, finished / COSTS)
    scored = {}
    for op, part in parts.items():
        if part["genotype"] is None:  # a part whose op cannot fit there
            continue
        g = Genotype.from_dict(part["genotype"])
        assert fits(setup.budget.table.of(g), setup.budget.limits)
        flat = [o for node in g.cells["cell"] for o, _ in node]
        assert flat[edge] == op
        assert 0 <= part["acc"] <= 100 and part["loss"] > 0
        scored[op] = (part["acc"], -part["loss"])
    best = max(scored, key=scored.get)
    assert Genotype.load(finished / "genotype.json") == Genotype.from_dict(parts[best]["genotype"])
    # the checkpoint keeps the searched supernet, not a part's
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=False)["model"]["arch_logits.cell"]
    assert ckpt.abs().max() < 1e3


def test_a_part_that_cannot_fit_is_reported_not_picked(root, tmp_path, capsys):
    cfg = yaml.safe_load((root / "tiny.yaml").read_text())
    cfg["search"]["budget"]["params"] = 5400  # room for one 1x1 convolution (392), no 3x3 (3,080)
    (tmp_path / "tight.yaml").write_text(yaml.safe_dump(cfg))
    code = nas_main(["search", "--config", str(tmp_path / "tight.yaml"), "--data-dir",
                     str(root / "data"), "--run-dir", str(tmp_path / "run"), "--threads", "1",
                     "--set", "search.few_shot.select_epochs=1"])
    out = capsys.readouterr().out
    assert code == 0
    parts = json.loads((tmp_path / "run" / nas.fewshot.STATE).read_text())["parts"]
    assert parts["nor_conv_3x3"]["genotype"] is None
    assert "nor_conv_3x3: no cell with it there fits the budget" in out
    assert "few-shot pick: the part with" in out
    assert "nor_conv_3x3" not in Genotype.load(tmp_path / "run" / "genotype.json").to_nb201_string()


def test_with_spend_every_parts_cell_is_near_the_costliest_that_fits(root, finished, tmp_path):
    run = tmp_path / "run"
    assert search(root, run, "--set", "search.budget.spend=0.9") == 0
    state = json.loads((run / nas.fewshot.STATE).read_text())
    assert state["settings"]["spend"] == 0.9
    cfg = load_config(run / "config.yaml", [f"data.root={root / 'data'}"])
    setup = build_search(cfg, run / COSTS)
    table, limits = setup.budget.table, setup.budget.limits
    costliest = max(table.of(g)["params"] for g in all_cells() if fits(table.of(g), limits))
    kind, edge = state["edge"]
    cells = 0
    for op, part in state["parts"].items():
        if part["genotype"] is None:
            continue
        g = Genotype.from_dict(part["genotype"])
        assert fits(table.of(g), limits)
        assert live_cost(g, "nasbench201", table)["params"] >= 0.9 * costliest
        assert [o for node in g.cells["cell"] for o, _ in node][edge] == op
        cells += 1
    assert cells >= 2
    plain = json.loads((finished / nas.fewshot.STATE).read_text())  # the same search, no spend
    assert "spend" not in plain["settings"]
    # no bound: every network fits, no share is asked, the phase is the plain one
    assert search(root, tmp_path / "free", "--set", "search.budget.params=null",
                  "search.budget.spend=0.9") == 0
    free = json.loads((tmp_path / "free" / nas.fewshot.STATE).read_text())
    assert all(p["genotype"] is not None for p in free["parts"].values())


def test_interrupted_in_the_few_shot_phase_then_resumed(root, finished, tmp_path, monkeypatch, capsys):
    real, calls = nas.fewshot.select_score, []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(nas.fewshot, "select_score", interrupt_third)
    broken = tmp_path / "broken"
    assert search(root, broken) == 130
    done = json.loads((broken / nas.fewshot.STATE).read_text())["parts"]
    assert sum(p["genotype"] is not None for p in done.values()) == 2  # the third was cut short
    calls.clear()
    assert nas_main(["search", "--resume", str(broken), "--quiet", "--data-dir", str(root / "data")]) == 0
    a = json.loads((finished / nas.fewshot.STATE).read_text())
    left = [op for op, p in a["parts"].items() if op not in done and p["genotype"] is not None]
    assert len(calls) == len(left) >= 1  # the finished parts were kept, not searched again
    b = json.loads((broken / nas.fewshot.STATE).read_text())
    strip = lambda s: {op: {k: v for k, v in p.items() if k != "seconds"} for op, p in s["parts"].items()}
    assert a["edge"] == b["edge"] and strip(a) == strip(b)
    assert Genotype.load(finished / "genotype.json") == Genotype.load(broken / "genotype.json")


@pytest.mark.parametrize("override, message", [
    ("search.few_shot.epochs=-1", "search.few_shot.epochs: must be >= 0"),
    ("search.few_shot.select_epochs=0", "search.few_shot.select_epochs: must be at least 1"),
    ("search.few_shot.select_lr=0", "search.few_shot.select_lr: must be positive"),
    ("search.few_shot.lr=-0.1", "search.few_shot.lr: must be positive or null"),
    ("search.few_shot.select_batch_size=0", "search.few_shot.select_batch_size: must be from 1 to 8192"),
])
def test_bad_few_shot_settings_fail_in_one_line(root, override, message):
    with pytest.raises(InputError, match=message):
        load_config(root / "tiny.yaml", [override])


def test_few_shot_needs_a_hard_sample(root, tmp_path, capsys):
    code = search(root, tmp_path / "run", "--set", "search.mode=softmax", "search.estimator=gdas",
                  "search.weight_sampling=arch")
    err = capsys.readouterr().err
    assert code == 2 and "search.few_shot: fixing an edge's op needs search.mode: gdas" in err
    assert not (tmp_path / "run").exists()


def test_bad_select_network_options_fail_before_the_run(root, tmp_path, capsys):
    code = search(root, tmp_path / "run", "--set", "search.few_shot.select_network.width=8")
    err = capsys.readouterr().err
    assert code == 2 and "search.few_shot.select_network: network.width: unknown key" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_parts_in_processes_give_the_parts_of_one_process(root, finished, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in (nas.fewshot.STATE, "genotype.json"):
        (run / name).unlink()
    chosen = []

    def two_processes(setup, parts):
        chosen.append(parts)
        return 2, 1

    monkeypatch.setattr(nas.fewshot, "_processes", two_processes)
    real, forked = nas.fewshot.in_processes, []

    def in_processes(jobs, workers, threads, progress):
        for op, part in real(jobs, workers, threads, progress):
            forked.append(op)
            yield op, part

    monkeypatch.setattr(nas.fewshot, "in_processes", in_processes)
    assert nas_main(["search", "--resume", str(run), "--quiet", "--data-dir", str(root / "data"),
                     "--threads", "1"]) == 0
    assert chosen == [len(PRIMITIVES)] and sorted(forked) == sorted(PRIMITIVES)
    strip = lambda s: {op: {k: v for k, v in p.items() if k != "seconds"} for op, p in s["parts"].items()}
    a = json.loads((finished / nas.fewshot.STATE).read_text())
    b = json.loads((run / nas.fewshot.STATE).read_text())
    assert a["edge"] == b["edge"] and strip(a) == strip(b)  # the same numbers, to the last bit
    assert b["phase_seconds"] > 0
    assert Genotype.load(run / "genotype.json") == Genotype.load(finished / "genotype.json")


@pytest.mark.skipif(not nas.fewshot.can_fork(), reason="parts run in processes only where fork is")
def test_a_part_process_that_fails_stops_the_phase_with_its_error():
    def fine(progress):
        progress()
        return {"pid": os.getpid()}

    def broken(progress):
        raise ValueError("the part's own message")

    def killed(progress):
        os._exit(3)

    ticks = []
    done = dict(nas.fewshot.in_processes([("a", fine), ("b", fine), ("c", fine)], 2, 1,
                                         lambda: ticks.append(1)))
    assert sorted(done) == ["a", "b", "c"] and len(ticks) == 3
    assert os.getpid() not in {d["pid"] for d in done.values()}
    with pytest.raises(ValueError, match="the part's own message"):
        list(nas.fewshot.in_processes([("a", fine), ("b", broken)], 2, 1, lambda: None))
    with pytest.raises(RuntimeError, match="the process of part c stopped \\(exit code 3\\)"):
        list(nas.fewshot.in_processes([("c", killed)], 2, 1, lambda: None))
    assert not multiprocessing.active_children()  # nothing left running


@pytest.mark.parametrize("threads, workers, parts, device, expected", [
    (2, None, 5, "cpu", (2, 1)),   # one process per thread, one thread each
    (4, 2, 5, "cpu", (2, 2)),      # the threads shared among the processes
    (2, 1, 5, "cpu", (1, 2)),      # in this process, with every thread
    (8, None, 3, "cpu", (3, 2)),   # no more processes than parts
    (2, None, 1, "cpu", (1, 2)),
    (2, None, 5, "cuda", (1, 2)),  # one device: in this process
])
def test_how_many_processes_run_the_parts(threads, workers, parts, device, expected):
    cfg = load_config(None, [f"search.few_shot.workers={'null' if workers is None else workers}"])
    setup = SimpleNamespace(cfg=cfg, device=torch.device(device), threads=Threads(threads, "test"))
    got = nas.fewshot._processes(setup, parts)
    assert got == (expected if nas.fewshot.can_fork() else (1, threads))


def test_bad_workers_fail_in_one_line(root):
    with pytest.raises(InputError, match="search.few_shot.workers: must be from 1 to 1024 or null"):
        load_config(root / "tiny.yaml", ["search.few_shot.workers=0"])


def test_no_budget_is_a_budget_above_every_network(root, tmp_path):
    """A budget config takes search.budget.<metric>=null: without search.budget.spend its
    few-shot phase then runs as under a bound no cell reaches (the first held-out study's
    unconstrained rows used 3e8); with spend, the 3e8 bound also asks the parts to spend it."""
    assert search(root, tmp_path / "none", "--set", "search.budget.params=null") == 0
    assert search(root, tmp_path / "loose", "--set", "search.budget.params=1e9") == 0
    runs = [json.loads((tmp_path / r / "few_shot.json").read_text()) for r in ("none", "loose")]
    assert runs[0]["edge"] == runs[1]["edge"]
    assert {op: p["genotype"]["string"] for op, p in runs[0]["parts"].items()} == \
        {op: p["genotype"]["string"] for op, p in runs[1]["parts"].items()}
    assert Genotype.load(tmp_path / "none" / "genotype.json") == \
        Genotype.load(tmp_path / "loose" / "genotype.json")
