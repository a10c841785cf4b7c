"""Latency tables measured in a runtime (nas/latency.py, nas latency-table) and the search that
prices its latency budget with one (search.budget.latency_table)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT

import nas
from nas.config import build_config
from nas.errors import InputError
from nas.latency import (Job, LatencyTable, as_deployed, check_fits, fit_line, fit_per_op,
                         measure, measure_table, read_table, spread, supernet_of)
from nas.spaces import build_network

TINY = {"space": "nasbench201", "data": {"image_size": 8},
        "supernet": {"C": 4, "cells_per_stage": 1}, "network": {"C": 4, "cells_per_stage": 1}}
NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def nas_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                                        "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def ort_table(tmp_path_factory) -> tuple[LatencyTable, str]:
    """A tiny NB201 table measured in onnxruntime, written by the command and read back."""
    folder = tmp_path_factory.mktemp("latency")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = folder / "table.json"
    done = nas_cli("latency-table", "--config", str(config), "--runtime", "onnxruntime",
                   "--out", str(out), "--runs", "5", "--networks", "4")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and "cell: 6 x 5" in done.stdout
    return read_table(out), str(out)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_both_runtimes_time_a_convolution_above_an_identity(runtime):
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
    x = torch.zeros(1, 8, 16, 16)
    ms = measure(conv, x, runtime, threads=1, runs=5, warmup=1)
    assert 0 < ms < 1000
    big = torch.nn.Sequential(*[torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(20)])
    assert measure(big, x, runtime, threads=1, runs=5, warmup=1) > ms  # 20 convolutions


def test_the_table_file_holds_what_it_was_measured_with(ort_table):
    table, path = ort_table
    data = json.loads(open(path).read())
    assert data["format"] == "gumbel-nas latency table" and data["unit"] == "ms"
    assert table.runtime == "onnxruntime" and table.runtime_version.startswith("onnxruntime ")
    assert table.threads == 1 and table.batch == 1 and table.image_size == 8
    assert table.space == "nasbench201" and table.num_classes == 10
    assert table.network["C"] == 4 and table.network["cells_per_stage"] == 1
    assert "track_running_stats" in table.network  # the builder's defaults filled in
    assert table.machine["arch"] and table.machine["cpu"]
    cell = table.groups["cell"]
    assert cell["ops"] == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    assert len(cell["ms"]) == 6 and all(len(row) == 5 for row in cell["ms"])
    assert all(ms >= 0 for row in cell["ms"] for ms in row)
    conv3, skip = cell["ops"].index("nor_conv_3x3"), cell["ops"].index("skip_connect")
    assert cell["ms"][0][conv3] > cell["ms"][0][skip]
    c = table.correction
    assert c["networks"] == 4 and len(c["measured_ms"]) == 4 and c["a"] > 0
    assert c["per_op"] is None  # 4 networks are too few to fit a scale per op
    assert table.clock == "wall" and data["fingerprint"] and data["created"]


def test_the_correction_is_the_least_squares_line():
    assert fit_line([1.0, 2.0, 3.0], [2.5, 4.5, 6.5]) == pytest.approx((2.0, 0.5))
    assert fit_line([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == pytest.approx((1.0, 1.0))  # no spread


def test_the_per_op_correction_recovers_known_scales():
    rng = torch.Generator().manual_seed(0)
    features = [{"cell": [0.0, *torch.rand(3, generator=rng).tolist()]} for _ in range(12)]
    measured = [0.2 + 1.5 * f["cell"][1] + 0.5 * f["cell"][2] + 1.0 * f["cell"][3] for f in features]
    fit = fit_per_op(features, measured)
    assert fit["base"] == pytest.approx(0.2)
    assert fit["scales"]["cell"] == pytest.approx([1.0, 1.5, 0.5, 1.0])  # `none` (no ms) kept at 1
    assert fit["max_rel_error"] < 1e-9
    assert fit_per_op(features[:7], measured[:7]) is None  # fewer than 2 networks per scale


def test_spread_picks_networks_over_the_whole_range():
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 0.5, 2.5]
    picked = spread(values, 3)
    assert sorted(values[i] for i in picked) == [0.5, 2.5, 5.0]
    assert sorted(spread(values, 10)) == list(range(7))


@pytest.mark.parametrize("cell,deployed", [
    # node 1 is constant (only `none`): the 3x3 conv on it folds, its constant is still summed
    ("|none~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|",
     "|none~0|+|none~0|none~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|"),
    # node 2 never reaches the output (3 <- 2 is `none`): its ops are pruned
    ("|nor_conv_1x1~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|",
     "|nor_conv_1x1~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|"),
    # no path from the input to the output: the network is a constant
    ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|",
     "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
    (NB201_CELL, NB201_CELL),  # every op runs
])
def test_as_deployed_drops_what_a_graph_runtime_does_not_run(cell, deployed):
    got = as_deployed(nas.parse_genotype(cell), {"cell": "skip_connect"})
    assert got.to_nb201_string() == deployed


def test_as_deployed_keeps_every_darts_op():
    g = nas.parse_genotype("DARTS_V2")
    assert as_deployed(g, {"normal": "skip_connect", "reduce": "skip_connect"}) == g


def test_torch_table_predicts_its_random_networks(tmp_path):
    cfg = build_config(TINY)
    job = Job(cfg, "torch", runs=5, networks=3)
    table = measure_table(job, supernet_of(job))
    assert table.runtime == "torch" and table.correction["networks"] == 3
    predicted = [table.correction["a"] * s + table.correction["b"]
                 for s in table.correction["sums_ms"]]
    for p, m in zip(predicted, table.correction["measured_ms"]):
        assert p == pytest.approx(m, rel=0.5)  # tiny networks, a loaded CPU: a loose bound


def table_data(path) -> dict:
    return json.loads(open(path).read())


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(space="darts"), "measured for the darts space"),
    (lambda d: d["network"].update(C=8), "C: table 8, config 4"),
    (lambda d: d.update(image_size=16), "measured at 16x16 images"),
    (lambda d: d.update(batch=4), "measured at batch 4"),
])
def test_a_table_for_other_shapes_is_refused(ort_table, tmp_path, change, message):
    data = table_data(ort_table[1])
    change(data)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        check_fits(read_table(path), build_config(TINY), path)


def test_a_table_for_other_classes_is_refused(ort_table):
    with pytest.raises(InputError, match="measured for 10 classes, the data has 100"):
        check_fits(ort_table[0], build_config(TINY), ort_table[1], num_classes=100)


@pytest.mark.parametrize("text,message", [
    ("{not json", "does not read as JSON"),
    ("[1, 2]", "has no \"format\""),
    (None, "has no base_ms"),
    ("ms", "row 0 op 3 must be a finite number >= 0"),
    ("rows", "row 1 must have one number per op"),
    ("per_op", "correction.per_op.scales.cell must have one number per op"),
])
def test_malformed_tables_fail_in_one_line(ort_table, tmp_path, text, message):
    data = table_data(ort_table[1])
    if text is None:
        del data["base_ms"]
    elif text == "ms":
        data["groups"]["cell"]["ms"][0][3] = -1.0
    elif text == "rows":
        data["groups"]["cell"]["ms"][1] = [0.1]
    elif text == "per_op":
        data["correction"]["per_op"] = {"base": 0.1, "scales": {"cell": [1.0]}}
    path = tmp_path / "bad.json"
    path.write_text(text if text not in (None, "ms", "rows", "per_op") else json.dumps(data))
    with pytest.raises(InputError, match=message) as err:
        read_table(path)
    assert "\n" not in str(err.value)


def test_latency_table_cli_errors_are_one_line(tmp_path, ort_table):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    for extra, message in ((["--batch", "0"], "--batch must be a whole number from 1"),
                           (["--threads", "99999"], "--threads must be a whole number"),
                           (["--networks", "2"], "at least 3 to fit a line"),
                           (["--clock", "cpu", "--threads", "2"], "it needs --threads 1"),
                           (["--set", "network.D=1"], "network.D: unknown key")):
        out = tmp_path / "t.json"
        done = nas_cli("latency-table", "--config", str(config), "--runtime", "torch",
                       "--out", str(out), *extra)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr and not out.exists()
    done = nas_cli("latency-table", "--config", str(config), "--runtime", "torch",
                   "--out", ort_table[1])
    assert done.returncode == 2 and "already exists" in done.stderr


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    import importlib.util

    from nas import latency
    real = importlib.util.find_spec
    monkeypatch.setattr(latency.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(InputError, match=r"needs the packages onnxruntime: install the export extra"):
        latency.check_runtime("onnxruntime")


def budget_config(tmp_path, cifar_root, **budget):
    cfg = {**TINY, "data": {"root": str(cifar_root), "image_size": 8, "pad": 1, "workers": 0},
           "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "arch_lr": 0.5,
                      "budget": budget}}
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_search_prices_its_latency_budget_by_the_table(tmp_path, cifar_root, ort_table):
    table, path = ort_table
    a, b = table.correction["a"], table.correction["b"]
    cell = table.groups["cell"]
    conv3 = cell["ops"].index("nor_conv_3x3")
    # room for about two 3x3 convolutions: uniform cells are over it
    limit = a * (table.base_ms + 2 * cell["ms"][0][conv3]) + b
    cfg = budget_config(tmp_path, cifar_root, latency_ms=limit, latency_table=path)
    run = tmp_path / "run"
    done = nas_cli("search", "--config", str(cfg), "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("predicted latency:"))
    assert f"the latency table {path}: onnxruntime" in line and "whole-network correction" in line
    genotype = nas.Genotype.load(run / "genotype.json")
    edges = [op for node in genotype.cells["cell"] for op, _ in node]
    by_hand = a * (table.base_ms + sum(cell["ms"][e][cell["ops"].index(op)]
                                       for e, op in enumerate(edges))) + b
    assert by_hand <= limit * (1 + 1e-6)
    assert float(line.split()[2]) == pytest.approx(by_hand, abs=1e-3)
    costs = json.loads((run / "costs.json").read_text())
    assert costs["base"]["latency_ms"] == pytest.approx(a * table.base_ms + b, rel=1e-5)
    assert "latency table" in costs["how"]["latency_ms"]


@pytest.mark.parametrize("how,message", [
    ("space", "measured for the nasbench201 space, the config searches darts"),
    ("malformed", "is not a usable latency table"),
    ("no bound", "search.budget.latency_table: needs a file name and search.budget.latency_ms"),
])
def test_a_search_refuses_a_table_that_does_not_fit_before_any_work(tmp_path, cifar_root,
                                                                   ort_table, how, message):
    path = ort_table[1]
    if how == "malformed":
        path = tmp_path / "bad.json"
        path.write_text("{}")
    budget = {"latency_table": str(path)} if how == "no bound" else \
        {"latency_ms": 1.0, "latency_table": str(path)}
    cfg = budget_config(tmp_path, cifar_root, **budget)
    extra = ["--set", "space=darts", "supernet={}", "network={}"] if how == "space" else []
    run = tmp_path / "run"
    done = nas_cli("search", "--config", str(cfg), "--run-dir", str(run), *extra)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and not run.exists()



def test_profile_times_the_network_in_onnxruntime_beside_the_tables_prediction(
        tmp_path, ort_table, capsys):
    from nas.cli import main
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["profile", NB201_CELL, "--config", str(config), "--runtime", "onnxruntime",
                 "--threads", "1", "--batch", "2", "--runs", "3", "--json",
                 "--latency-table", ort_table[1]]) == 0
    p = json.loads(capsys.readouterr().out)
    ort = p["onnxruntime"]
    assert ort["runtime"].startswith("onnxruntime ") and ort["threads"] == 1
    assert set(ort["latency_ms"]) == {"1", "2"} and all(v > 0 for v in ort["latency_ms"].values())
    table = ort_table[0]
    cell = table.groups["cell"]
    edges = [op for node in nas.parse_genotype(NB201_CELL).cells["cell"] for op, _ in node]
    by_hand = table.correction["a"] * (table.base_ms + sum(
        cell["ms"][e][cell["ops"].index(op)] for e, op in enumerate(edges))) + table.correction["b"]
    assert p["predicted_latency"]["latency_ms"] == pytest.approx(by_hand, rel=1e-5)
    assert p["predicted_latency"]["batch"] == 1
    # a table of 8x8 images beside a profile at 16x16: refused before anything is timed
    assert main(["profile", NB201_CELL, "--config", str(config), "--image-size", "16",
                 "--latency-table", ort_table[1]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measured at 8x8 images, the profile runs at 16x16" in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the test writes with the TorchScript exporter
def test_profile_times_an_onnx_file_alone(tmp_path, capsys):
    from nas.cli import main
    net = build_network("nasbench201", nas.parse_genotype(NB201_CELL), 10,
                        {"C": 4, "cells_per_stage": 1}).eval()
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    assert main(["profile", str(path), "--runtime", "onnxruntime", "--threads", "1",
                 "--batch", "3", "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("latency in onnxruntime") and "8x8 images" in out
    assert "batch 1 " in out and "batch 3 " in out and out.count("\n") == 1
    for args, message in (([], "time it with --runtime onnxruntime"),
                          (["--runtime", "onnxruntime", "--set", "network.C=4"],
                           "--set does not apply to an ONNX file")):
        assert main(["profile", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (tmp_path / "junk.onnx").write_text("junk")
    assert main(["profile", str(tmp_path / "junk.onnx"), "--runtime", "onnxruntime"]) == 2
    assert "does not load in onnxruntime" in capsys.readouterr().err
