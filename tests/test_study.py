"""nas.experiments.study (``nas study``, scripts/study.py): a tiny study end to end, resuming, the random-search baseline, bad input.

The end-to-end studies run their searches and random searches in this process (``in_process``),
as their children would run them, so that the tests do not start Python and torch again for
each; one test runs real children."""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import nas
from conftest import write_cifar10
from nas.benchmarks import load_table
from nas.cli import build_parser, main as nas_main
from nas.experiments import random_search, study
from nas.shortlist import pruned

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "benchmarks" / "nats_tss_200ep.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(), reason=f"no NAS-Bench-201 table at {TABLE}")
needs_shared_data = pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(),
                                       reason="no shared data")


TINY = {"space": "nasbench201", "device": "cpu",
        "data": {"image_size": 8, "pad": 1, "limit": 64, "workers": 0},
        "supernet": {"C": 4, "cells_per_stage": 1},
        "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2}}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """tmp_path as the current directory, with tiny CIFAR data in data/ and tiny.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "cores", lambda: 1)  # one thread per child, whatever the machine
    write_cifar10(tmp_path / "data", n_train=64, n_test=16)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return tmp_path


@pytest.fixture
def in_process(monkeypatch) -> list[list[str]]:
    """The study's children run in this process: ``nas search`` through ``nas.cli.main``, the
    random search through its worker function; a failure is a RunFailed, as a child's is.
    Returns the list of the children's command lines, in the order they started."""
    started_children: list[list[str]] = []

    def child(cmd: list[str], jobs: int) -> float:
        started_children.append(cmd)
        started, err = time.time(), io.StringIO()
        if cmd[1:4] == ["-m", "nas", "search"]:
            with contextlib.redirect_stderr(err):
                code = nas_main(cmd[3:])
        else:
            assert cmd[1:3] == ["-m", "nas.experiments.random_search"], cmd
            random_search.random_search_worker(json.loads(cmd[3]))
            code = 0
        if code:
            raise study.RunFailed(f"exit status {code}: {' '.join(cmd)}\n{err.getvalue()}")
        return time.time() - started

    monkeypatch.setattr(study, "child", child)
    return started_children


def write_study(path: Path, **changes) -> Path:
    body = {"benchmark": str(TABLE), "data_dir": "data", "seeds": [0],
            "methods": {"a": {"config": "tiny.yaml"},
                        "b": {"config": "tiny.yaml", "set": ["search.arch_lr=3e-3"]}},
            "random_search": {"epochs": 1, "seconds": 1}, "published": True, **changes}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.slow
@needs_table
def test_study_runs_scores_and_skips_finished_runs(workdir, in_process, capsys):
    code = study.main([str(write_study(workdir / "s.yaml")), "--out", "out"])
    out = capsys.readouterr()
    assert code == 0, out.err
    table = load_table(TABLE)
    data = json.loads((workdir / "out" / "study.json").read_text())
    assert [(r["method"], r["seed"]) for r in data["runs"]] == [("a", 0), ("b", 0)]
    for r in data["runs"]:
        run = workdir / "out" / "runs" / r["method"] / "seed_0"
        truth = table.query(nas.Genotype.load(run / "genotype.json"))
        assert (r["cifar10"], r["cifar100"], r["rank"]) == \
            (truth.accuracy["cifar10"], truth.accuracy["cifar100"], truth.rank)
        assert r["entropy"] > 0 and r["seconds"] > 0
        assert json.loads((run / "study_time.json").read_text())["seconds"] == r["seconds"]
        assert data["summary"][r["method"]]["cifar10_mean"] == truth.accuracy["cifar10"]
    (rs,) = data["random_search"]
    picked = json.loads((workdir / "out" / "runs" / "random_search" / "seed_0" / "result.json")
                        .read_text())
    assert picked["cells"] >= 1 and picked["val_acc"] == max(t["val_acc"] for t in picked["tried"])
    assert rs["cifar10"] == table.query(picked["arch"]).accuracy["cifar10"]
    assert picked["budget"] == data["runs"][0]["seconds"]  # the first method's time, not seconds:

    md = (workdir / "out" / "study.md").read_text()
    assert md in out.out  # the table is printed too
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert f"| 1 | {data['runs'][0]['cifar10']:.2f} |" in rows["a"]
    assert "| 15,625 cells | mean 87.06, median 90.75 |" in rows["random cell (the whole table)"]
    assert f"| 1 | {rs['cifar10']:.2f} |" in rows["random search, same wall time (1 epoch(s) per cell)"]
    assert "| — | 93.61 | — | — | 70.70 |" in rows["GDAS (published, full CIFAR, not this proxy)"]
    assert "optimum (published, full CIFAR, not this proxy)" in rows
    assert f"- b, seed 0: `{data['runs'][1]['arch']}` {data['runs'][1]['cifar10']:.2f}" in md

    finished = [p for p in (workdir / "out" / "runs").rglob("*.json")]
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    assert len(in_process) == 3  # a search per method, the random search
    assert study.main([str(workdir / "s.yaml"), "--out", "out"]) == 0
    assert len(in_process) == 3  # no child ran
    assert capsys.readouterr().out.count("skip (finished)") == 3
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    again = json.loads((workdir / "out" / "study.json").read_text())
    assert again["runs"] == data["runs"] and again["random_search"] == data["random_search"]


@pytest.mark.slow
@needs_table
def test_budget_study_has_the_size_baselines_random_search_within_and_a_sweep(workdir, in_process,
                                                                             capsys):
    # the network the budget counts: NAS-Bench-201's C=16, 5 cells per stage at 32x32, whose
    # costs the issue measured independently: 7,783,040 multiply-adds without any op, 35,389,440
    # per 3x3 conv edge, 3,932,160 per 1x1 conv edge
    def macs(arch: str) -> int:
        return 7_783_040 + 35_389_440 * arch.count("nor_conv_3x3") + 3_932_160 * arch.count("nor_conv_1x1")

    cfg = {**TINY, "network": {"C": 16, "cells_per_stage": 5},
           "search": {**TINY["search"], "budget": {"macs": 8.0e7, "image_size": 32, "spend": 0.8}}}
    (workdir / "budget.yaml").write_text(yaml.safe_dump(cfg))
    path = write_study(workdir / "s.yaml", methods={"a": {"config": "budget.yaml"}},
                       published=False, sweep={"method": "a", "budgets": [3.0e7, 1.5e8],
                                               "random_search": "random_search"})
    assert study.main([str(path), "--out", "out"]) == 0, capsys.readouterr().err
    data = json.loads((workdir / "out" / "study.json").read_text())
    largest = data["baselines"]["the largest cell (no training)"]
    assert largest["cells"] == ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                                "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"]
    assert largest["cifar10_mean"] == pytest.approx(93.76, abs=0.01)
    within = data["baselines"]["the largest cell within the budget (no training)"]
    assert within["runs"] == 1215 and within["cifar10_mean"] == pytest.approx(88.21, abs=0.01)
    assert all(a.count("nor_conv_3x3") == 2 and macs(a) <= 8e7 for a in within["cells"])
    assert data["within_budget"]["cells"] == 11455 and data["within_budget"]["best"] == 93.91
    tried = json.loads((workdir / "out" / "runs" / "random_search" / "seed_0" / "result.json")
                       .read_text())["tried"]
    assert tried and all(macs(t["arch"]) <= 8e7 for t in tried)
    assert macs(data["runs"][0]["arch"]) <= 8e7
    sweep = data["sweep"]
    assert sorted(r["budget"] for r in sweep["runs"]) == [3.0e7, 1.5e8]
    for r in sweep["runs"]:
        assert r["macs"] == macs(r["arch"]) <= r["budget"]
    assert sweep["summary"]["3e+07"]["over_budget"] == 0
    # the random search at every budget: cells within that budget, for that budget's search time
    assert sorted(r["budget"] for r in sweep["random_search_runs"]) == [3.0e7, 1.5e8]
    for r in sweep["runs"]:
        run = workdir / "out" / "runs" / "sweep" / f"macs_{r['budget']:g}"
        picked = json.loads((run / "random_search_seed_0" / "result.json").read_text())
        assert picked["budget"] == r["seconds"]
        assert picked["tried"] and all(macs(t["arch"]) <= r["budget"] for t in picked["tried"])
        (rec,) = [x for x in sweep["random_search_runs"] if x["budget"] == r["budget"]]
        assert rec["arch"] == picked["arch"]
        assert sweep["summary"][f"{r['budget']:g}"]["random_search_mean"] == rec["cifar10"]
    md = (workdir / "out" / "study.md").read_text()
    assert "| the largest cell within the budget (no training) | 1,215 cell(s) tied | 88.21" in md
    assert "random search within the budget, same wall time" in md and "## Budget sweep" in md
    assert "`random_search` at the budget, same wall time (runs: mean ± std) |" in md
    rec = [x for x in sweep["random_search_runs"] if x["budget"] == 3.0e7][0]
    assert f"| 89.76 | 81.02 | 89.92 (121 cells) | 1: {rec['cifar10']:.2f} |" in md
    # spend's size-matched cells (see the test below): 843 within 80M, 285 within 150M
    assert data["size_matched"]["cells"] == 843 and sweep["summary"]["1.5e+08"]["size_matched_cells"] == 285
    assert "| random cell within the budget, size-matched as search.budget.spend keeps them (no " \
           "training) | 843 cells | mean 90.60" in md


def test_search_run_resumes_or_restarts(tmp_path, monkeypatch):
    calls = []

    def child(cmd: list[str], jobs: int) -> float:
        calls.append(cmd)
        run.mkdir(parents=True, exist_ok=True)  # as `nas search` does
        return 2.0

    monkeypatch.setattr(study, "child", child)
    s = study.Study(tmp_path / "s.yaml", None, tmp_path / "t.csv", tmp_path / "data", [3],
                    {"a": study.Method(tmp_path / "a.yaml", ["search.epochs=1"])}, None, False,
                    ["a"], {}, None)
    run = tmp_path / "runs" / "a" / "seed_3"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 1.5}\n{"epoch": 1, "seconds": 1}\n')
    assert study.search_run(s, "a", 3, run, 1) == "resumed in 3 s"
    assert json.loads((run / "study_time.json").read_text())["seconds"] == 3.0
    args = build_parser().parse_args(calls[-1][3:])  # `nas search` takes the resume command
    assert (args.resume, args.config, args.set, args.seed, args.run_dir, args.benchmark) == \
        (str(run), None, [], None, None, str(s.benchmark))
    assert args.data_dir == str(tmp_path / "data") and args.quiet

    (run / "checkpoint.pt").unlink()  # died before its first checkpoint: started afresh
    assert study.search_run(s, "a", 3, run, 1) == "done in 2 s"
    args = build_parser().parse_args(calls[-1][3:])
    assert (args.resume, args.config, args.set, args.seed, args.run_dir) == \
        (None, str(tmp_path / "a.yaml"), ["search.epochs=1"], 3, str(run))
    assert not (run / "metrics.jsonl").exists()


@needs_table
def test_random_search_picks_by_validation_only(workdir):
    out = workdir / "result.json"
    random_search.random_search_worker({"config": "tiny.yaml", "set": [], "seed": 1, "epochs": 1,
                                "data_dir": "data", "budget": 0.0, "started": time.time(),
                                "out": str(out)})
    res = json.loads(out.read_text())
    assert res["cells"] == 1 and len(res["tried"]) == 1  # at least one cell, even with no time
    assert res["arch"] == res["tried"][0]["arch"] and 0 <= res["val_acc"] <= 100
    assert set(res) == {"arch", "val_acc", "cells", "seconds", "budget", "tried"}  # no table values
    load_table(TABLE).query(res["arch"])  # a cell of the table


@needs_table
def test_two_random_searches_each_get_a_row_and_their_own_runs(workdir, in_process, capsys):
    path = write_study(workdir / "s.yaml", methods={"a": {"config": "tiny.yaml"}}, published=False,
                       random_search=[{"epochs": 1}, {"name": "deep", "epochs": 1, "lr": 0.05,
                                                      "network": {"cells_per_stage": 2},
                                                      "seeds": [0, 7]}])
    assert study.main([str(path), "--out", "out", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    data = json.loads((workdir / "out" / "study.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in data["random_search"]) == [
        ("deep", 0), ("random_search", 0), ("random_search", 1)]  # deep: only its seeds of the study's
    assert set(data["random_search_summary"]) == {"deep", "random_search"}
    for name in ("random_search", "deep"):
        picked = json.loads((workdir / "out" / "runs" / name / "seed_0" / "result.json").read_text())
        (rec,) = [r for r in data["random_search"] if r["method"] == name and r["seed"] == 0]
        assert rec["arch"] == picked["arch"]
        assert picked["budget"] == pytest.approx(statistics.mean(r["seconds"] for r in data["runs"]))
    assert not (workdir / "out" / "runs" / "deep" / "seed_1").exists()
    assert "| random search, same wall time (1 epoch(s) per cell) | 2 |" in out
    assert "| `deep`: random search, same wall time (1 epoch(s) per cell, cells_per_stage=2, lr 0.05) | 1 |" in out


@needs_table
def test_random_search_can_train_another_network(workdir, monkeypatch):
    """random_search: {network: ..., lr: ...}: the cells are trained as the few-shot phase trains
    its parts' cells, not in the supernet's proxy."""
    built, rates, real_net, real_sgd = [], [], random_search.NB201Network, torch.optim.SGD

    def network(*args, **kwargs):
        built.append({k: kwargs[k] for k in ("C", "cells_per_stage")})
        return real_net(*args, **kwargs)

    def sgd(params, lr, **kwargs):
        rates.append(lr)
        return real_sgd(params, lr, **kwargs)

    monkeypatch.setattr(random_search, "NB201Network", network)
    monkeypatch.setattr(torch.optim, "SGD", sgd)
    base = {"config": "tiny.yaml", "set": [], "seed": 1, "epochs": 1, "data_dir": "data",
            "budget": 0.0, "started": time.time(), "out": str(workdir / "r.json")}
    random_search.random_search_worker(base)
    random_search.random_search_worker({**base, "network": {"C": 2, "cells_per_stage": 2}, "lr": 0.3})
    assert built == [{"C": TINY["supernet"]["C"], "cells_per_stage": TINY["supernet"]["cells_per_stage"]},
                     {"C": 2, "cells_per_stage": 2}]
    assert rates == [0.025, 0.3]


@pytest.mark.slow
@needs_table
def test_failed_run_does_not_stop_the_study(workdir, capsys):
    """`nas study`, with real children (``nas search`` processes)."""
    (workdir / "empty").mkdir()
    path = write_study(workdir / "s.yaml", data_dir="empty", random_search=None, published=False,
                       methods={"a": {"config": "tiny.yaml"}})
    assert nas_main(["study", str(path), "--out", "out", "--seeds", "0", "1"]) == 1
    out = capsys.readouterr()
    assert "a seed 0: FAILED" in out.out and "CIFAR-10 not found" in out.out
    assert "study: 2 run(s) failed: a seed 0, a seed 1" in out.err
    assert "| a | 0 | — |" in (workdir / "out" / "study.md").read_text()


@pytest.mark.parametrize("change, args, message", [
    ({"method": "x"}, [], "unknown key(s) method"),
    ({"methods": {"a": {"config": "missing.yaml"}}}, [], "config file not found: missing.yaml"),
    ({}, ["--only", "c"], "--only: unknown method 'c'"),
    ({"benchmark": "nowhere.csv"}, [], "NAS-Bench-201 table not found: nowhere.csv"),
    ({"methods": {"a": {"config": "tiny.yaml", "set": ["search.epochs=0"]}}}, [], "search.epochs"),
    ({"random_search": {"epochs": 1, "network": {"width": 8}}}, [], "random_search: expected"),
    ({"random_search": {"epochs": 1, "lr": 0}}, [], "random_search: expected"),
    ({"random_search": [{"epochs": 1}, {"epochs": 2}]}, [], "random_search[1]: name: letters"),
    ({"random_search": [{"epochs": 1, "name": "a"}]}, [], "random_search[0]: name: letters"),
    ({"sweep": {"method": "a", "budgets": [3e7], "random_search": "rs"}}, [],
     "sweep.random_search: expected the name of a random_search: baseline (random_search), got 'rs'"),
])
def test_bad_input_is_one_line_and_creates_nothing(workdir, capsys, change, args, message):
    path = str(write_study(workdir / "s.yaml", **change))
    for command, prefix in ((study.main, "study: error: "), (nas_main, "nas study: error: ")):
        code = command([*(["study"] if command is nas_main else []), path, "--out", "out", *args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(prefix) and message in err
        assert err.count("\n") == 1 and not (workdir / "out").exists()


def test_the_script_is_the_command_under_its_former_name(tmp_path):
    """``python scripts/study.py``, as the docs run it: a bad option is one line and status 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "s.yaml",
                           "--jobs", "0"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "study: error: --jobs must be at least 1, got 0\n"


# The budget studies before nb201_gumbel_rao_spend_heldout ran REINFORCE, the budget config's
# estimator until then; their files pin it, so that they still run as they ran.
REINFORCE = ["search.estimator=reinforce", "search.samples=4", "search.tau.schedule=linear",
             "search.tau.max=10.0", "search.tau.min=0.1"]


def shipped_study(monkeypatch, name: str, methods: list[str], sets: list[str] = []):
    """A study file of configs/studies, loaded as from the repository root, with its methods."""
    monkeypatch.chdir(ROOT)
    s = study.load_study(f"configs/studies/{name}.yaml")
    assert list(s.methods) == methods
    # the first method sets the random-search budget: the shipped config itself (but for
    # ``sets``, the budget studies' one-shot search)
    assert s.methods[methods[0]].sets == sets
    return s


@needs_table
@needs_shared_data
def test_the_shipped_study_loads_with_its_methods_in_order(monkeypatch):
    s = shipped_study(monkeypatch, "nb201_cpu", [
        "gdas_nb201_cpu", "reinforce_uniform", "gdas_params", "gumbel_rao_params",
        "reinmax_params", "decoupled_params", "gdas"])
    assert s.seeds == [10, 11, 12, 13, 14] and s.random_search == [{"epochs": 3, "name": "random_search"}]
    plain = nas.config.load_config(s.methods["gdas"].config, s.methods["gdas"].sets).search
    assert (plain.estimator, plain.weight_sampling, plain.warmup_epochs) == ("gdas", "arch", 0)
    decoupled = nas.config.load_config(s.methods["decoupled_params"].config,
                                       s.methods["decoupled_params"].sets).search
    assert (decoupled.tau_forward.schedule, decoupled.tau_forward.max) == ("constant", 2.0)
    # the estimator rows differ from the REINFORCE row in the estimator and its temperature only
    searches = {m: nas.config.load_config(s.methods[m].config, s.methods[m].sets).search
                for m in ("gdas_nb201_cpu", "gdas_params", "gumbel_rao_params", "reinmax_params",
                          "decoupled_params")}
    first = searches["gdas_nb201_cpu"]
    for name, search in searches.items():
        assert (search.warmup_epochs, search.arch_lr, search.weight_sampling, search.epochs) == \
            (first.warmup_epochs, first.arch_lr, first.weight_sampling, first.epochs), name
        assert search.estimator == {"gdas_nb201_cpu": "reinforce", "gumbel_rao_params": "gumbel_rao",
                                    "reinmax_params": "reinmax"}.get(name, "gdas")
    taus = {name: (search.tau.schedule, search.tau.max, search.tau.min)
            for name, search in searches.items()}
    assert taus["reinmax_params"] == ("constant", 1.0, 1.0)  # ReinMax near tau = 1
    assert taus["gdas_params"] == taus["gumbel_rao_params"] == ("linear", 10.0, 0.1)


@needs_table
@needs_shared_data
def test_the_budget_study_compares_estimators_at_equal_settings(monkeypatch):
    s = shipped_study(monkeypatch, "nb201_budget_cpu", [
        "gdas_nb201_budget_cpu", "budget_gdas", "budget_reinmax", "budget_gumbel_rao"],
        ["search.few_shot.epochs=0", *REINFORCE])
    assert s.sweep["method"] == "gdas_nb201_budget_cpu" and s.budget == {"macs": 8e7}
    check = study.load_study("configs/studies/nb201_budget_cpu_reinmax.yaml")
    assert check.seeds == [15, 16, 17, 18, 19] and check.sweep["budgets"] == s.sweep["budgets"]
    methods = {**s.methods, **{f"check_{m}": v for m, v in check.methods.items()}}
    searches = {m: nas.config.load_config(v.config, v.sets).search for m, v in methods.items()}
    first = searches["gdas_nb201_budget_cpu"]
    for name, search in searches.items():
        assert (search.warmup_epochs, search.arch_lr, search.weight_sampling, search.epochs,
                search.budget) == (first.warmup_epochs, first.arch_lr, first.weight_sampling,
                                   first.epochs, first.budget), name
    assert all(x.few_shot.epochs == 0 for x in searches.values())  # one-shot rows, as published
    assert {n: (x.estimator, x.tau.schedule, x.tau.max, x.tau.min, x.samples)
            for n, x in searches.items()} == {
        "gdas_nb201_budget_cpu": ("reinforce", "linear", 10.0, 0.1, 4),
        "budget_gdas": ("gdas", "linear", 10.0, 0.1, 4),
        "budget_reinmax": ("reinmax", "constant", 1.0, 1.0, 4),
        "budget_gumbel_rao": ("gumbel_rao", "constant", 1.0, 1.0, 8),
        # the check re-runs the budget study's REINFORCE and ReinMax rows as they are
        "check_reinforce": ("reinforce", "linear", 10.0, 0.1, 4),
        "check_reinmax": ("reinmax", "constant", 1.0, 1.0, 4)}


@needs_table
@needs_shared_data
def test_the_few_shot_study_runs_the_shipped_config_beside_both_random_searches(monkeypatch):
    s = shipped_study(monkeypatch, "nb201_budget_cpu_fewshot", ["few_shot"],
                      ["search.budget.spend=0", *REINFORCE])
    # the shipped config as the study ran it, before its parts were size-matched
    shipped = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml",
                                     ["search.budget.spend=0", *REINFORCE])
    cfg = nas.config.load_config(s.methods["few_shot"].config, s.methods["few_shot"].sets)
    assert cfg == shipped and cfg.search.few_shot.epochs > 0 and s.budget == {"macs": 8e7}
    assert s.seeds == [10, 11, 12, 13, 14] and len(s.random_search) == 2
    assert s.sweep == {"method": "few_shot", "metric": "macs", "budgets": [3e7, 6e7, 1e8, 1.5e8],
                       "seeds": [10], "random_search": None,  # the one-shot study's sweep,
                       "bounds": {"macs": 8e7}}                # with the phase
    assert s.random_search[0] == {"epochs": 3, "name": "random_search", "seeds": [10, 11, 12]}
    f = cfg.search.few_shot  # the second random search trains its cells as the phase does
    (deep,) = [x for x in s.random_search if x["name"] != "random_search"]
    assert deep == {"name": "random_search_select", "epochs": f.select_epochs, "lr": f.select_lr,
                    "network": {"C": f.select_network["C"],
                                "cells_per_stage": cfg.network["cells_per_stage"]},
                    "seeds": [10, 11, 12]}
    assert f.select_batch_size == cfg.search.batch_size  # the baseline trains at the search's batch


@needs_table
@needs_shared_data
def test_the_spend_study_runs_the_shipped_config_on_seeds_it_never_ran(monkeypatch):
    s = shipped_study(monkeypatch, "nb201_budget_spend_heldout", ["spend_20M"],
                      ["threads=1", "search.budget.spend=0.8", *REINFORCE, "search.budget.macs=2.0e+7"])
    shipped = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml", ["threads=1"])
    cfg = nas.config.load_config(s.methods["spend_20M"].config, s.methods["spend_20M"].sets)
    assert cfg.search.budget.spend == shipped.search.budget.spend == 0.8
    assert cfg == nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml",
                                         ["threads=1", *REINFORCE, "search.budget.macs=2.0e+7"])
    earlier = study.load_study("configs/studies/nb201_budget_heldout.yaml")
    assert s.seeds == [303, 304, 305] and not set(s.seeds) & set(earlier.seeds)
    assert s.sweep["budgets"] == [3e7, 6e7, 3e8, 8e7, 1e8, 1.5e8] and s.sweep["seeds"] == s.seeds
    assert s.sweep["random_search"] == "random_search_select"
    assert s.random_search[0]["seeds"] == s.seeds  # the baseline on every held-out seed


@needs_table
@needs_shared_data
def test_the_spend_estimator_study_changes_only_the_estimator_of_the_shipped_config(monkeypatch):
    names = [f"{e}_{b}" for b in ("30M", "80M") for e in ("reinforce", "gdas", "reinmax", "gumbel_rao")]
    s = shipped_study(monkeypatch, "nb201_estimators_spend_heldout", names,
                      ["threads=1", *REINFORCE, "search.budget.macs=3.0e+7"])
    ran = {x for f in ("nb201_budget_heldout", "nb201_budget_spend_heldout", "nb201_estimators_heldout")
           for x in study.load_study(f"configs/studies/{f}.yaml").seeds}
    assert s.seeds == [306] and not set(s.seeds) & ran
    for name in names:
        estimator, budget = name.rsplit("_", 1)
        cfg = nas.config.load_config(s.methods[name].config, s.methods[name].sets)
        shipped = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml", [  # as then
            "threads=1", *REINFORCE, f"search.budget.macs={float(budget[:-1]) * 1e6}"])
        assert cfg.search.estimator == estimator and cfg.search.budget.spend == 0.8
        assert cfg.search.budget == shipped.search.budget and cfg.search.few_shot == shipped.search.few_shot
        assert cfg.network == shipped.network and cfg.supernet == shipped.supernet
        assert (cfg.search.tau == shipped.search.tau) == (estimator in ("reinforce", "gdas"))


@needs_table
@needs_shared_data
def test_the_gumbel_rao_study_sweeps_the_shipped_config_on_seeds_no_study_ran(monkeypatch):
    gumbel_rao = ["threads=1", "search.budget.spend=0.8", "search.estimator=gumbel_rao",
                  "search.samples=8", "search.tau.schedule=constant", "search.tau.max=1.0",
                  "search.tau.min=1.0", "search.budget.macs=3.0e+7"]
    s = shipped_study(monkeypatch, "nb201_gumbel_rao_spend_heldout", ["gumbel_rao_30M"], gumbel_rao)
    earlier = [f.stem for f in (ROOT / "configs" / "studies").glob("nb201_*.yaml")
               if f.stem != "nb201_gumbel_rao_spend_heldout"]
    ran = {x for f in earlier for x in study.load_study(f"configs/studies/{f}.yaml").seeds}
    assert s.seeds == [307, 308, 309] and not set(s.seeds) & ran and 306 in ran
    cfg = nas.config.load_config(s.methods["gumbel_rao_30M"].config, s.methods["gumbel_rao_30M"].sets)
    shipped = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml",
                                     ["threads=1", "search.budget.macs=3.0e+7"])
    assert cfg == shipped  # the study's decision rule made its settings the shipped ones
    assert (cfg.search.estimator, cfg.search.samples, cfg.search.tau.schedule, cfg.search.tau.min) == (
        "gumbel_rao", 8, "constant", 1.0)
    assert s.sweep["budgets"] == [8e7, 1e8, 2e7, 6e7, 1.5e8, 3e8] and s.sweep["seeds"] == s.seeds
    assert s.sweep["random_search"] == "random_search_select" and s.random_search[0]["seeds"] == s.seeds


@needs_table
@needs_shared_data
def test_the_sweep_scores_the_size_matched_cells_the_search_could_keep(monkeypatch):
    """At 30M multiply-adds (the shipped budget config's network) the costliest fitting cell has
    five 1x1 convs and no 3x3; spend 0.8 keeps the cells with at least four live 1x1 convs. Dead,
    by the table's isomorphism: a conv reading node 1 when node 1 gets nothing, or one whose
    output reaches the cell's output through `none` only."""
    s = shipped_study(monkeypatch, "nb201_budget_spend_heldout", ["spend_20M"],
                      ["threads=1", "search.budget.spend=0.8", *REINFORCE, "search.budget.macs=2.0e+7"])
    cfg = nas.config.load_config(s.methods["spend_20M"].config, s.methods["spend_20M"].sets)
    costs = random_search.table_costs(cfg)
    edges = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]

    def by_hand(arch: str) -> bool:
        ops = [term.split("~")[0] for term in arch.split("|") if "~" in term]
        if "nor_conv_3x3" in ops or ops.count("nor_conv_1x1") > 5:
            return False
        feeds = {3}
        for i in (2, 1, 0):
            if any(op != "none" and e[0] == i and e[1] in feeds for e, op in zip(edges, ops)):
                feeds.add(i)
        return sum(op == "nor_conv_1x1" and e[1] in feeds and not (e[0] == 1 and ops[0] == "none")
                   for e, op in zip(edges, ops)) >= 4

    kept = [a for a in costs if by_hand(a)]
    floor = random_search.spend_floor(cfg, {"macs": 3e7}, costs)
    row = study.sweep_row(s, costs, "macs", 3e7, [], [], floor)
    assert row["size_matched_cells"] == len(kept) == 121
    acc = [s.table.query(a).accuracy["cifar10"] for a in kept]
    assert row["size_matched_fitting"] == pytest.approx(sum(acc) / len(acc))
    assert row["size_matched_fitting"] == pytest.approx(89.92, abs=0.01)
    assert row["random_fitting"] < 82 < row["size_matched_fitting"] < row["top5_fitting"]
    assert study.sweep_row(s, costs, "macs", 3e7, [], [])["size_matched_fitting"] is None


def test_a_resumed_run_counts_the_time_of_its_finished_epochs_and_few_shot_parts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert study.logged_seconds(run) == 0.0
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"epoch": 1, "seconds": 2.0}, {"epoch": 2, "seconds": 3.0},
        {"epoch": 2, "seconds": 4.0}]) + "\n")  # a resumed epoch: its last line counts
    assert study.logged_seconds(run) == 6.0
    (run / "few_shot.json").write_text(json.dumps(
        {"edge": ["cell", 3], "parts": {"none": {"seconds": 10.0}, "skip_connect": {"seconds": 20.5}}}))
    assert study.logged_seconds(run) == 36.5
    (run / "few_shot.json").write_text(json.dumps(  # parts side by side: the phase's wall time
        {"edge": ["cell", 3], "phase_seconds": 18.0,
         "parts": {"none": {"seconds": 10.0}, "skip_connect": {"seconds": 20.5}}}))
    assert study.logged_seconds(run) == 24.0


def test_top_share_is_the_accuracy_the_best_five_percent_reach():
    top_share = study.top_share
    values = [float(v) for v in range(1, 101)]          # 100 cells: the 5th best is 96
    assert top_share(values) == 96.0 and top_share(values[::-1]) == 96.0
    assert top_share(values[:39]) == 38.0               # 39 cells: ceil(1.95) = 2nd best
    assert top_share([7.0]) == 7.0 and top_share([3.0, 9.0], 0.5) == 9.0


def test_random_search_with_spend_draws_only_size_matched_live_cells():
    """As the search keeps cells under search.budget.spend: within the budget, and live ops
    costing at least that share of the costliest cell within it."""
    cfg = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml",
                                 ["search.budget.macs=2.0e+7", "search.budget.spend=0.8"])
    costs = {  # a few cells' costs by hand: what the draw reads
        "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|skip_connect~0|none~1|none~2|": {"macs": 19.6e6},
        "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|": {"macs": 7.8e6},
        "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|": {"macs": 43.2e6}}
    limits = {"macs": 2.0e7}
    assert random_search.spend_floor(cfg, limits, costs) == {"macs": pytest.approx(0.8 * 19.6e6)}
    assert random_search.spend_floor(cfg, {}, costs) is None
    plain = nas.config.load_config("configs/gdas_nb201_budget_cpu.yaml", ["search.budget.spend=0"])
    assert random_search.spend_floor(plain, limits, costs) is None
    table = random_search.table_costs(cfg)
    floor = random_search.spend_floor(cfg, cfg_limits := {"macs": 2.0e7}, table)
    gen = torch.Generator().manual_seed(0)
    drawn = [random_search.draw_cell(gen, cfg_limits, table, floor) for _ in range(40)]
    assert len(set(drawn)) > 20
    for arch in drawn:
        g = nas.parse_genotype(arch)
        live = table[pruned(g, "nasbench201").to_nb201_string()]["macs"]
        assert table[arch]["macs"] <= 2.0e7 and live >= floor["macs"]
    gen = torch.Generator().manual_seed(0)
    loose = [random_search.draw_cell(gen, cfg_limits, table) for _ in range(40)]
    assert min(table[a]["macs"] for a in loose) < floor["macs"]  # without the floor: any size
