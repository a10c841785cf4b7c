"""scripts/mbconv_quality.py, the mbconv quality study of issue 34: the width-shrunk uniform
baseline, the pool of random chains within the budget, one whole tiny study end to end (written,
read back, resumed) and its one-line errors."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from nas.latency import predict, read_table

SCRIPT = ROOT / "scripts" / "mbconv_quality.py"
NETWORK = {"stem": 4, "widths": [8, 8], "layers": [1, 2], "strides": [1, 2], "head": 8}
CONFIG = {
    "space": "mbconv",
    "data": {"image_size": 8, "pad": 1, "workers": 0},
    "supernet": NETWORK,
    "search": {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "steps_per_epoch": 2,
               "weight_sampling": "uniform", "budget": {"image_size": 16}},
    "network": NETWORK,
    "train": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "eval_batch_size": 20,
              "drop_path": 0.0, "cutout": 0},
}


def load_script():
    spec = importlib.util.spec_from_file_location("mbconv_quality_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = load_script()


def cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                               "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def study_files(tmp_path_factory, cifar_root):
    """A tiny mbconv config, its onnxruntime table (measured here) and a study of one budget."""
    folder = tmp_path_factory.mktemp("quality")
    config = folder / "tiny_mbconv.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "root": str(cifar_root)}}))
    table = folder / "table.json"
    done = cli("-m", "nas", "latency-table", "--config", str(config), "--runtime", "onnxruntime",
               "--out", str(table), "--runs", "5", "--networks", "0", "--clock", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    return folder, config, table, cifar_root


def write_study(folder, config, table, data, **changes):
    study = {"config": str(config), "data_dir": str(data), "latency_table": str(table),
             "budgets_ms": [5.0], "development_seeds": [0], "held_out_seeds": [7],
             "retrain_epochs": 1, "random_search": {"epochs": 1, "pool": 50}, "width_step": 0.25,
             "out": str(folder / "out"), "protocol": "tiny"}
    study.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_scaled_widths_round_to_four_keep_the_head_and_never_go_below_eight():
    options = {"stem": 16, "widths": [24, 32, 64, 96], "head": 256, "layers": [2, 2, 2, 2]}
    half = quality.scaled(options, 0.5)
    assert half == {**options, "stem": 8, "widths": [12, 16, 32, 48]}
    assert quality.scaled(options, 0.3)["widths"] == [8, 8, 20, 28]  # 7.2 -> 8, 9.6 -> 8
    assert quality.scaled(options, 1.0) == options


def test_the_uniform_baseline_is_the_widest_multiplier_that_fits(monkeypatch, study_files):
    cfg = quality.load_config(study_files[1], ["network.widths=[24, 40]"])
    seen = []

    def fake_ms(cfg, genotype, network, size):  # latency grows with the widths
        assert set(genotype.layers.values()) == {quality.UNIFORM_BLOCK} and size == 32
        seen.append(network["widths"])
        return sum(network["widths"]) / 10

    monkeypatch.setattr(quality, "measured_ms", fake_ms)
    picked = quality.shrink_uniform(cfg, 4.0, 0.25, 32)
    assert seen == [[24, 40], [16, 32], [12, 20]]     # 6.4 ms, 4.8 ms, then 3.2 ms fits
    assert (picked["multiplier"], picked["measured_ms"]) == (0.5, 3.2)
    assert picked["network"]["widths"] == [12, 20] and picked["network"]["head"] == 8
    with pytest.raises(SystemExit):                  # 0.25 still measures 1.6 ms
        quality.shrink_uniform(cfg, 1.5, 0.25, 32)


def test_the_random_pool_holds_distinct_chains_within_the_budget(study_files):
    folder, config, table, data = study_files
    cfg = quality.load_config(config)
    everything = quality.fitting_pool(cfg, str(table), 1e9, 3, 200)
    prices = predict(read_table(table), str(table), cfg, [quality.parse_genotype(g) for g in everything])
    budget = sorted(prices)[len(prices) // 2]
    pool = quality.fitting_pool(cfg, str(table), budget, 3, 200)
    assert len(set(everything)) == len(everything) and 0 < len(pool) < len(everything)
    priced = dict(zip(everything, prices))
    assert all(priced[g] <= budget for g in pool)
    assert pool == [g for g in everything if priced[g] <= budget]   # the same draws, in order
    assert quality.fitting_pool(cfg, str(table), budget, 4, 200) != pool  # the seed draws


def test_a_tiny_study_runs_writes_its_record_and_resumes(study_files):
    folder, config, table, data = study_files
    study = write_study(folder, config, table, data)
    done = cli(str(SCRIPT), str(study), "--jobs", "1")
    assert done.returncode == 0, done.stderr
    record = json.loads((folder / "out" / "study_held_out.json").read_text())
    assert record["seeds"] == [7] and record["test_images"] == 40
    (pair,) = record["pairs"]
    assert (pair["budget_ms"], pair["seed"]) == (5.0, 7)
    for arm in ("search", "random", "uniform"):
        assert 0 <= pair[arm]["test_acc"] <= 100 and pair[arm]["measured_ms"] > 0
    assert pair["random"]["chains"] >= 1 and pair["random"]["pool"] >= pair["random"]["chains"]
    assert pair["search"]["predicted_ms"] <= 5.0 and pair["random"]["predicted_ms"] <= 5.0
    assert pair["uniform"]["multiplier"] == 1.0      # 5 ms: the tiny chain fits at full width
    page = (folder / "out" / "README_held_out.md").read_text()
    assert page.count("| 5.0 | ") == 3 and "40 images" in page
    searched = folder / "out" / "runs" / "5.0ms_seed7" / "search" / "genotype.json"
    stamp = searched.stat().st_mtime_ns
    again = cli(str(SCRIPT), str(study), "--jobs", "1")
    assert again.returncode == 0, again.stderr
    assert searched.stat().st_mtime_ns == stamp      # the finished pair was not run again
    again_record = json.loads((folder / "out" / "study_held_out.json").read_text())
    assert record["read_back"] == 0 and again_record["read_back"] == 1
    assert "1 of 1 (budget, seed) pairs read back" in (folder / "out" / "README_held_out.md").read_text()
    (resumed,) = again_record["pairs"]
    for arm in ("search", "random", "uniform"):
        assert (resumed[arm]["genotype"], resumed[arm]["test_acc"]) == \
            (pair[arm]["genotype"], pair[arm]["test_acc"])
    # the uniform chain's latency is read back, not measured again
    assert resumed["uniform"]["measured_ms"] == pair["uniform"]["measured_ms"]
    # a pair stopped before its last retraining keeps its search and random search
    where = searched.parent.parent
    (where / "pair.json").unlink()
    shutil.rmtree(where / "train_uniform")
    stamps = [(where / f).stat().st_mtime_ns for f in ("search.json", "random.json")]
    third = cli(str(SCRIPT), str(study), "--jobs", "1")
    assert third.returncode == 0, third.stderr
    assert [(where / f).stat().st_mtime_ns for f in ("search.json", "random.json")] == stamps
    assert (where / "train_uniform" / "result.json").is_file() and (where / "pair.json").is_file()


@pytest.mark.parametrize("change, message", [
    ({"budgets_ms": []}, "'budgets_ms' must list positive milliseconds"),
    ({"held_out_seeds": [0]}, "must be distinct integers"),
    ({"retrain_epochs": "many"}, "'retrain_epochs' must be a whole number"),
    ({"extra": 1}, "unknown key(s) extra"),
    ({"budgets_ms": [1e-6]}, "the uniform chain does not fit 1e-06 ms even at width 0.25"),
])
def test_a_bad_study_file_fails_in_one_line_before_any_work(study_files, change, message):
    folder, config, table, data = study_files
    study = write_study(folder, config, table, data, out=str(folder / "never"), **change)
    done = cli(str(SCRIPT), str(study))
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (folder / "never").exists()


def test_jobs_below_one_is_a_usage_error(study_files):
    done = cli(str(SCRIPT), str(write_study(*study_files)), "--jobs", "0")
    assert done.returncode == 2 and "--jobs must be at least 1" in done.stderr
