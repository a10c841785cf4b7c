"""search.select: a shortlist of the searched supernet ranked by successive halving of short
trainings from scratch (nas/selection.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import nas.selection
from conftest import write_cifar10
from nas.budget import fits
from nas.cli import main as nas_main
from nas.config import load_config
from nas.genotype import Genotype
from nas.search import COSTS, build_search
from nas.selection import STATE, ranked, rounds
from nas.shortlist import live_cost
from search_spaces.nasbench201 import all_cells

from test_fewshot import TINY as FEW_SHOT  # noqa: E402 - the same tiny search, another phase

TINY = {**FEW_SHOT, "search": {**{k: v for k, v in FEW_SHOT["search"].items() if k != "few_shot"},
                               "select": {"shortlist": 5, "min_epochs": 2, "max_epochs": 4,
                                          "eta": 2, "average": 2, "batch_size": 16}}}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("select")
    write_cifar10(root / "data", n_train=64, n_test=16)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root


def search(root: Path, run: Path, *extra: str, threads: str = "2") -> int:
    return nas_main(["search", "--config", str(root / "tiny.yaml"), "--data-dir", str(root / "data"),
                     "--run-dir", str(run), "--quiet", "--threads", threads, *extra])


def resume(root: Path, run: Path) -> int:
    return nas_main(["search", "--resume", str(run), "--quiet", "--data-dir", str(root / "data"),
                     "--threads", "2"])


@pytest.fixture(scope="module")
def finished(root) -> Path:
    assert search(root, root / "run") == 0
    return root / "run"


def test_rounds_halve_the_candidates_and_multiply_the_epochs():
    assert rounds(16, 2, 16, 2) == [(16, 2), (8, 4), (4, 8), (2, 16)]
    assert rounds(27, 1, 9, 3) == [(27, 1), (9, 3), (3, 9)]
    assert rounds(16, 2, 6, 2) == [(16, 2), (8, 4), (4, 6)]  # capped at max_epochs, then stops
    assert rounds(5, 1, 8, 2) == [(5, 1), (2, 2)]  # stops before one would be left
    assert rounds(3, 2, 16, 2) == [(3, 2)]
    assert rounds(4, 3, 3, 2) == [(4, 3)]


def test_ranking_breaks_ties_by_the_shortlist_order():
    assert ranked({0: 50.0, 1: 60.0, 2: 60.0, 3: 55.0}) == [1, 2, 3, 0]
    assert ranked({4: 10.0, 2: 10.0}) == [2, 4]


def test_the_pick_is_the_best_of_the_last_round_and_every_cell_fits(root, finished):
    state = json.loads((finished / STATE).read_text())
    cfg = load_config(finished / "config.yaml", [f"data.root={root / 'data'}"])
    setup = build_search(cfg, finished / COSTS)
    cells = [Genotype.from_dict(c["genotype"]) for c in state["shortlist"]]
    assert len(cells) == 5 and len({c["key"] for c in state["shortlist"]}) == 5
    assert all(fits(setup.budget.table.of(g), setup.budget.limits) for g in cells)
    logp = [c["log_prob"] for c in state["shortlist"]]
    assert logp == sorted(logp, reverse=True)
    first = {int(k.split("@")[0]): t for k, t in state["trainings"].items() if k.endswith("@2")}
    second = {int(k.split("@")[0]): t for k, t in state["trainings"].items() if k.endswith("@4")}
    assert len(first) == 5 and len(second) == 2  # 5 x 2 epochs, then the best 2 x 4 epochs
    assert sorted(second) == sorted(ranked({i: t["score"] for i, t in first.items()})[:2])
    for t in state["trainings"].values():
        assert len(t["accs"]) == 2 and t["score"] == pytest.approx(sum(t["accs"]) / 2)
        assert all(0 <= a <= 100 for a in t["accs"]) and all(x > 0 for x in t["losses"])
    best = ranked({i: t["score"] for i, t in second.items()})[0]
    assert Genotype.load(finished / "genotype.json").cells == cells[best].cells
    assert state["threads"] == 1 and state["search_threads"] == 2


def test_a_resumed_selection_keeps_the_trainings_it_finished(root, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = json.loads((run / STATE).read_text())
    second = sorted(k for k in state["trainings"] if k.endswith("@4"))
    removed = {k: state["trainings"].pop(k) for k in second}
    loser = next(k for k in state["trainings"] if int(k.split("@")[0]) not in
                 {int(s.split("@")[0]) for s in second})
    state["trainings"][loser]["score"] = 100.0  # a finished training is read back, not redone
    (run / STATE).write_text(json.dumps(state))
    assert resume(root, run) == 0
    after = json.loads((run / STATE).read_text())
    assert after["trainings"][loser]["score"] == 100.0
    assert f"{loser.split('@')[0]}@4" in after["trainings"]  # promoted by its recorded score
    kept = [k for k in second if int(k.split("@")[0]) in
            {int(s.split("@")[0]) for s in after["trainings"] if s.endswith("@4")}]
    for k in kept:  # retrained from the same seed on one thread: the same numbers, to the bit
        assert after["trainings"][k]["accs"] == removed[k]["accs"]
        assert after["trainings"][k]["losses"] == removed[k]["losses"]


def test_a_damaged_record_fails_in_one_line_and_is_kept(root, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / STATE).write_text('{"version": 1, "threads": "two"}')
    capsys.readouterr()
    assert resume(root, run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "select.json" in err and "remove it" in err
    assert (run / STATE).read_text() == '{"version": 1, "threads": "two"}'


def test_results_do_not_depend_on_the_processes_or_the_runs_threads(root, finished, tmp_path):
    """One process and one thread for the whole run: the same trainings as two processes."""
    cfg = dict(TINY, search={**TINY["search"], "select": {**TINY["search"]["select"], "workers": 1}})
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(cfg))
    assert nas_main(["search", "--config", str(tmp_path / "one.yaml"), "--data-dir",
                     str(root / "data"), "--run-dir", str(tmp_path / "run"), "--quiet",
                     "--threads", "1"]) == 0
    one = json.loads((tmp_path / "run" / STATE).read_text())
    two = json.loads((finished / STATE).read_text())
    by_key = {c["key"]: i for i, c in enumerate(two["shortlist"])}
    common = 0
    for k, t in one["trainings"].items():
        i, epochs = k.split("@")
        j = by_key.get(one["shortlist"][int(i)]["key"])
        if j is not None and f"{j}@{epochs}" in two["trainings"]:
            assert t["accs"] == two["trainings"][f"{j}@{epochs}"]["accs"]
            assert t["losses"] == two["trainings"][f"{j}@{epochs}"]["losses"]
            common += 1
    assert common >= 5


def test_without_a_budget_the_most_probable_cells(root, tmp_path):
    cfg = dict(TINY, search={**TINY["search"], "budget": {}})
    (tmp_path / "free.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert nas_main(["search", "--config", str(tmp_path / "free.yaml"), "--data-dir",
                     str(root / "data"), "--run-dir", str(run), "--quiet", "--threads", "1"]) == 0
    state = json.loads((run / STATE).read_text())
    cfg = load_config(run / "config.yaml", [f"data.root={root / 'data'}"])
    setup = build_search(cfg)
    nas.runtime.resume_from(run, "search", setup.objects)
    assert Genotype.from_dict(state["shortlist"][0]["genotype"]).cells == setup.model.genotype().cells
    picked = Genotype.load(run / "genotype.json")
    assert picked.cells in [Genotype.from_dict(c["genotype"]).cells for c in state["shortlist"]]


def test_spend_shortlists_only_cells_near_the_costliest_that_fits(root, tmp_path):
    run = tmp_path / "run"
    assert search(root, run, "--set", "search.budget.spend=0.9", threads="1") == 0
    state = json.loads((run / STATE).read_text())
    cfg = load_config(run / "config.yaml", [f"data.root={root / 'data'}"])
    setup = build_search(cfg, run / COSTS)
    table, limits = setup.budget.table, setup.budget.limits
    costliest = max(table.of(g)["params"] for g in all_cells() if fits(table.of(g), limits))
    cells = [Genotype.from_dict(c["genotype"]) for c in state["shortlist"]]
    assert len(cells) == 5
    for g in cells:
        assert fits(table.of(g), limits)
        assert live_cost(g, "nasbench201", table)["params"] >= 0.9 * costliest
    assert Genotype.load(run / "genotype.json").cells in [g.cells for g in cells]


def test_off_by_default_writes_no_record(root, tmp_path):
    cfg = dict(TINY, search={k: v for k, v in TINY["search"].items() if k != "select"})
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert nas_main(["search", "--config", str(tmp_path / "plain.yaml"), "--data-dir",
                     str(root / "data"), "--run-dir", str(run), "--quiet", "--threads", "1"]) == 0
    assert not (run / STATE).exists()


@pytest.mark.parametrize("setting,message", [
    ("search.select.shortlist=1", "search.select.shortlist: must be 0 (off) or at least 2"),
    ("search.select.shortlist=-3", "search.select.shortlist: must be 0 (off) or at least 2"),
    ("search.select.eta=1", "search.select.eta: must be at least 2"),
    ("search.select.min_epochs=0", "search.select.min_epochs: must be at least 1"),
    ("search.select.max_epochs=1", "search.select.max_epochs: must be at least min_epochs (2)"),
    ("search.select.average=3", "search.select.average: must be from 1 to min_epochs (2)"),
    ("search.select.lr=0", "search.select.lr: must be positive"),
    ("search.select.batch_size=0", "search.select.batch_size: must be at least 1"),
    ("search.select.workers=0", "search.select.workers: must be from 1 to"),
    ("search.select.threads=0", "search.select.threads: must be from 1 to"),
    ("search.few_shot.epochs=2", "set search.few_shot.epochs=0 to rank a shortlist"),
    ("search.budget.spend=1.2", "search.budget.spend: must be from 0 to 1, got 1.2"),
    ("search.budget.spend=-0.5", "search.budget.spend: must be from 0 to 1, got -0.5"),
    ("search.select.network={C: -4}", "search.select.network:"),
])
def test_bad_settings_are_one_line(root, tmp_path, capsys, setting, message):
    capsys.readouterr()
    assert search(root, tmp_path / "run", "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def record(tmp_path: Path, **change) -> Path:
    g = Genotype({"cell": [[("skip_connect", 0)], [("none", 0), ("nor_conv_1x1", 1)]]},
                 space="nasbench201")
    state = {"version": 1, "settings": {"shortlist": 2}, "threads": 1, "search_threads": 2,
             "shortlist": [{"genotype": g.to_dict(), "log_prob": -1.5, "key": "a"},
                           {"genotype": g.to_dict(), "log_prob": -2.0, "key": "b"}],
             "trainings": {"1@2": {"epochs": 2, "accs": [40.0, 50.0], "losses": [2.0, 1.9],
                                   "score": 45.0}},
             "seconds": 3.5}
    for key, value in change.items():
        state[key] = value
    path = tmp_path / STATE
    nas.selection.write_record(path, state)
    return path


def test_a_record_is_read_back_as_written(tmp_path):
    path = record(tmp_path)
    assert (tmp_path / STATE).read_text().startswith('{\n "version": 1,\n')  # for people
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE]
    state = nas.selection.read_record(path)
    assert state["trainings"]["1@2"]["score"] == 45.0 and state["threads"] == 1
    first = {"epochs": 2, "accs": [1.0], "losses": [2.0], "score": 1.0}  # index 0 is a candidate
    assert nas.selection.read_record(record(tmp_path, trainings={"0@2": first}))["trainings"]
    assert state["shortlist"][1]["key"] == "b"
    assert not path.with_suffix(".tmp").exists()
    assert nas.selection.read_record(tmp_path / "none.json") is None


@pytest.mark.parametrize("change,phrase", [
    ({"version": 2}, "not version 1"),
    ({"threads": 0}, "threads: 0"),
    ({"threads": True}, "threads: True"),
    ({"threads": "1"}, "threads: '1'"),
    ({"settings": []}, "(ValueError: settings is not a mapping)"),
    ({"shortlist": [{"genotype": Genotype({"cell": [[("none", 0)]]}).to_dict(), "log_prob": 0}]},
     "KeyError"),
    ({"shortlist": [{"genotype": {"cells": 3}, "log_prob": 0, "key": "a"}]}, "genotype"),
    ({"shortlist": [{"log_prob": 0, "key": "a"}]}, "genotype"),
    ({"trainings": {"2@2": {"epochs": 2, "score": 1.0}}}, "training 2@2"),
    ({"trainings": {"-1@2": {"epochs": 2, "score": 1.0}}}, "training -1@2"),
    ({"trainings": {"1@3": {"epochs": 2, "score": 1.0}}}, "training 1@3"),
    ({"trainings": {"1@2": {"epochs": 2, "score": "high"}}}, "training 1@2"),
    ({"trainings": {"1": {"epochs": 2, "score": 1.0}}}, "ValueError"),
    ({"seconds": "soon"}, "ValueError"),
    ({"seconds": None}, "TypeError"),
])
def test_a_damaged_record_is_refused_in_one_line(tmp_path, change, phrase):
    path = record(tmp_path, **change)
    with pytest.raises(nas.InputError) as err:
        nas.selection.read_record(path)
    assert phrase in str(err.value) and str(path) in str(err.value)
    assert "remove it to run the selection again" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_record_that_is_not_json_is_refused(tmp_path):
    (tmp_path / STATE).write_text("{half")
    with pytest.raises(nas.InputError, match="JSONDecodeError"):
        nas.selection.read_record(tmp_path / STATE)
    (tmp_path / STATE).write_text("[1, 2]")
    with pytest.raises(nas.InputError, match="not version 1"):
        nas.selection.read_record(tmp_path / STATE)


def test_processes_share_the_runs_threads(monkeypatch):
    from types import SimpleNamespace
    import torch
    from nas.threads import Threads

    def setup(workers=None, threads=4, device="cpu"):
        cfg = SimpleNamespace(search=SimpleNamespace(select=SimpleNamespace(workers=workers)))
        return SimpleNamespace(cfg=cfg, device=torch.device(device), threads=Threads(threads, "test"))

    monkeypatch.setattr(nas.selection, "can_fork", lambda: True)
    assert nas.selection.processes(setup(), 8, 1) == 4
    assert nas.selection.processes(setup(), 3, 1) == 3
    assert nas.selection.processes(setup(), 8, 2) == 2
    assert nas.selection.processes(setup(threads=1), 8, 2) == 1
    assert nas.selection.processes(setup(workers=3), 8, 1) == 3
    assert nas.selection.processes(setup(), 1, 1) == 1
    assert nas.selection.processes(setup(), 2, 1) == 2
    assert type(nas.selection.processes(setup(threads=5), 8, 2)) is int
    assert nas.selection.processes(setup(threads=5), 8, 2) == 2
    no_count = setup()
    no_count.threads = None  # the run's torch threads then
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert nas.selection.processes(no_count, 8, 1) == 3
    assert nas.selection.processes(setup(device="cuda"), 8, 1) == 1
    monkeypatch.setattr(nas.selection, "can_fork", lambda: False)
    assert nas.selection.processes(setup(), 8, 1) == 1


def test_settings_hold_what_a_training_depends_on(root):
    cfg = load_config(root / "tiny.yaml", ["search.select.network={C: 6}", "search.select.workers=3"])
    s = nas.selection.settings(cfg)
    assert s["network"] == {"C": 6, "cells_per_stage": 1}  # the network: options, overridden
    assert "workers" not in s and s["threads"] == 1 and s["seed"] == 0
    assert s["split"] == 0.5 and s["pad"] == 1 and s["average"] == 2 and s["lr"] == 0.05
    other = load_config(root / "tiny.yaml", ["seed=3"])
    assert nas.selection.settings(other) != nas.selection.settings(load_config(root / "tiny.yaml"))


def test_torch_threads_restores_the_count():
    import torch
    before = torch.get_num_threads()
    with nas.selection.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    assert nas.selection.plural(1, "epoch") == "1 epoch" and nas.selection.plural(3, "thread") == "3 threads"
