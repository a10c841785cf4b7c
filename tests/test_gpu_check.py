"""scripts/gpu_check.py: its CPU dry run writes every part and target, its time guard and its
one-line errors; the targets' verdicts."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
PARTS = ["tests", "syncs", "speed", "memory", "epoch", "reference"]


def gpu_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NAS_CUDA_TESTS_DEVICE", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run, from a directory other than the repository's: (process, report, markdown)."""
    out = tmp_path_factory.mktemp("check")
    proc = gpu_check("--dry-run", "--out", str(out), cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-cpu-dry-run.json", "gpu-cpu-dry-run.md"]
    return (proc, json.loads((out / "gpu-cpu-dry-run.json").read_text()),
            (out / "gpu-cpu-dry-run.md").read_text())


def test_the_dry_run_runs_every_part_and_reports_it(dry_run):
    proc, report, md = dry_run
    parts = report["parts"]
    assert list(parts) == PARTS
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(PARTS, "pass")
    assert all(p["seconds"] > 0 and p["summary"] for p in parts.values())
    assert report["environment"]["dry_run"] is True and report["environment"]["torch"] == torch.__version__
    assert "Dry run on the CPU" in md
    for heading in ("Tests marked `cuda`", "Host syncs per gdas search step", "Speed",
                    "Memory: gdas against softmax", "A full NAS-Bench-201 search epoch",
                    "gdas against the GDAS reference code"):
        assert f"\n## {heading}\n\nStatus: pass; " in md
    for name in PARTS:  # the summary, printed and written
        assert f"| {name} | pass |" in proc.stdout and f"| {name} | pass |" in md


def test_the_cuda_tests_ran_on_the_cpu(dry_run):
    _, report, md = dry_run
    rows = {r["test"]: r for r in report["parts"]["tests"]["rows"]}
    source = (ROOT / "tests" / "test_cuda.py").read_text()
    names = {line.split("(")[0][4:] for line in source.splitlines() if line.startswith("def test_")}
    assert names == {name.split("[")[0] for name in rows}  # every cuda test has its row
    assert len(rows) == 14  # the four estimators run in one test
    for name, row in rows.items():
        if name.startswith("test_export"):  # another branch builds `nas export`
            assert row["outcome"] in ("not present", "passed"), row
        elif name.startswith("test_a_gdas_step_syncs"):
            assert row["outcome"] == "skipped" and "needs a CUDA device" in row["message"]
        else:
            assert row["outcome"] == "passed", row
    resume = rows["test_resume_equals_straight_through_on_the_device"]["recorded"]
    assert resume == {"resume": "bitwise equal", "nondeterministic_ops": "none"}
    bf16 = rows["test_a_gdas_step_in_bf16_and_channels_last_matches_float32[bf16]"]["recorded"]
    assert 0 < float(bf16["arch_grad_relative_error"]) <= 0.4
    assert "| test_resume_equals_straight_through_on_the_device | passed |" in md


def test_the_syncs_are_counted_and_traced_to_the_sample(dry_run):
    syncs = dry_run[1]["parts"]["syncs"]
    # the CPU stand-in sees this repository's host reads: one .tolist() a step, both samples'
    assert syncs["values"]["steps"] == 3 and syncs["values"]["per_step"] == 1.0
    (row,) = syncs["rows"]
    assert row["source"].startswith("nas/supernet.py:") and " in drawing_ahead: " in row["source"]
    assert ".tolist()" in row["source"] and row["syncs"] == 3


def test_the_speed_memory_epoch_and_reference_parts_measured(dry_run):
    parts = dry_run[1]["parts"]
    speed = parts["speed"]
    assert len(speed["rows"]) == 2 * 4 * 3 and all(r["median_s"] > 0 for r in speed["rows"])
    comparisons = speed["values"]["comparisons"]
    assert {(c["space"], c["setting"]) for c in comparisons} == {
        (space, f"{p}, {f}") for space in ("nasbench201", "darts") for p in ("fp32", "bf16")
        for f in ("contiguous", "channels-last")}
    assert all(c["gdas_vs_lower"] > 0 and c["softmax_vs_gdas"] > 0 for c in comparisons)
    memory = {r["space"]: r for r in parts["memory"]["rows"]}
    for space in ("nasbench201", "darts"):  # gdas keeps one op's activations per edge
        assert 0 < memory[space]["gdas_saved_mb"] < memory[space]["softmax_saved_mb"]
        assert memory[space]["saved_ratio"] < 0.5
    epoch = parts["epoch"]["values"]
    assert epoch["steps"] == 64 // 16 and len(epoch["epoch_s"]) == 2
    assert epoch["projected_s"] == pytest.approx(250 * epoch["epoch_s"][-1])
    assert epoch["images_per_s"] == pytest.approx(4 * 2 * 16 / epoch["epoch_s"][-1])
    assert epoch["published_s"] == 28925
    reference = parts["reference"]
    assert [r["space"] for r in reference["rows"]] == ["nasbench201", "darts"]
    assert not any(r["user_reference"] for r in reference["rows"])
    assert any("no --reference given" in note for note in reference["notes"])


def test_every_target_has_a_verdict(dry_run):
    targets = dry_run[1]["targets"]
    assert len(targets) == 5
    assert all(t["verdict"] in ("met", "not met", "not measured") for t in targets)
    assert targets[1]["verdict"] == "not measured" and "no --reference given" in targets[1]["measured"]
    assert targets[2]["verdict"] == "met" and targets[2]["measured"] == "1.00 per step"


def test_the_time_guard_stops_parts_and_still_writes_the_report(tmp_path):
    start = time.monotonic()
    proc = gpu_check("--dry-run", "--budget-s", "16", "--parts", "tests", "speed",
                     "--out", str(tmp_path), cwd=tmp_path)
    assert time.monotonic() - start < 60
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())["parts"]
    # pytest alone takes longer than the tests' share (16 s x 0.30 / 0.58): stopped, reported
    assert parts["tests"]["status"] == "stopped" and parts["tests"]["seconds"] < 12
    assert any("time share" in note for note in parts["tests"]["notes"])
    speed = parts["speed"]  # the rest of the 16 s: stopped between rows, or done
    assert speed["status"] in ("stopped", "pass") and speed["seconds"] < 10
    assert (speed["status"] == "stopped") == (len(speed["rows"]) < 24)
    assert all(parts[name]["status"] == "skipped" and "not selected" in parts[name]["summary"]
               for name in ("syncs", "memory", "epoch", "reference"))
    assert "| tests | stopped |" in (tmp_path / "gpu-cpu-dry-run.md").read_text()

    proc = gpu_check("--dry-run", "--budget-s", "2", "--parts", "syncs", "--out", str(tmp_path),
                     cwd=tmp_path)
    syncs = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())["parts"]["syncs"]
    assert proc.returncode == 0 and syncs["status"] == "skipped" and "no time left" in syncs["summary"]


@pytest.mark.parametrize("args,message", [
    (["--dry-run", "--reference", "nowhere"], "--reference nowhere: no xautodl/"),
    (["--dry-run", "--budget-s", "0"], "--budget-s must be positive"),
    *[(["--dry-run", "--budget-s", v], "--budget-s must be positive") for v in ("nan", "inf", "-1")],
    (["--dry-run", "--budget-s", "soon"], "argument --budget-s: invalid float value"),
    (["--dry-run", "--parts", "all"], "argument --parts: invalid choice"),
    (["--dry-run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--dry-run", "--data-dir", "nowhere"], "--data-dir nowhere: no cifar-10-batches-py/"),
    pytest.param([], "no CUDA device here; --dry-run",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = gpu_check(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, message", [
    ("a-file", "--out a-file is a file, not a directory"),
    ("a-file/below", "a-file is not a writable directory"),
    ("o" * 300, "over the system's limit"),
    ("deep/" + "o" * 300 + "/x", "over the system's limit"),
])
def test_an_output_it_cannot_write_is_refused_before_the_parts_run(tmp_path, out, message):
    (tmp_path / "a-file").write_text("a user's file")
    proc = gpu_check("--dry-run", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, \
        proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert (tmp_path / "a-file").read_text() == "a user's file"


def load_script():
    """scripts/gpu_check.py as a module (the scripts/ it puts on sys.path taken off again)."""
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_verdicts_at_the_targets_bounds():
    check = load_script()

    def parts(lower: float, faster: float, syncs: float, memory: float, projected: float):
        p = {name: check.Part(name, "pass") for name in PARTS}
        p["speed"].values["comparisons"] = [
            {"space": s, "setting": "fp32, contiguous", "gdas_vs_lower": lower}
            for s in ("nasbench201", "darts")]
        p["reference"].rows = [{"space": s, "user_reference": True, "reference_vs_gdas": faster}
                               for s in ("nasbench201", "darts")]
        p["syncs"].values["per_step"] = syncs
        p["memory"].rows = [{"space": s, "peak_ratio": memory, "saved_ratio": 0.1}
                            for s in ("nasbench201", "darts")]
        p["epoch"].values["projected_s"] = projected
        return p

    third = 28925 / 3
    met = check.check_targets(parts(1.10, 2.0, 1.0, 0.25, third - 1))
    assert [t["verdict"] for t in met] == ["met"] * 5
    missed = check.check_targets(parts(1.11, 1.99, 1.05, 0.26, third + 1))
    assert [t["verdict"] for t in missed] == ["not met"] * 5
    assert "peak" not in missed[3]["measured"] and "0.260x" in missed[3]["measured"]
    empty = check.check_targets({name: check.Part(name, "error") for name in PARTS})
    assert [t["verdict"] for t in empty] == ["not measured"] * 5
