"""scripts/gpu_check.py: its CPU dry run writes every part and target, its time guard and its
one-line errors; the targets' verdicts.

The dry run here leaves out the `tests` part, which starts `pytest -m cuda` in a fresh process:
the suite runs those tests itself (on the CPU where there is no CUDA, see conftest), and the part's
command and report are tested with the pytest process replaced by its JUnit report."""
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
MEASURED = PARTS[1:]  # the parts the dry run below runs (the suite runs the cuda tests itself)


def gpu_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NAS_CUDA_TESTS_DEVICE", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):  # 20-40 s on 2 cores: the tests that use it are marked slow
    """One dry run, from a directory other than the repository's: (process, report, markdown)."""
    out = tmp_path_factory.mktemp("check")
    proc = gpu_check("--dry-run", "--parts", *MEASURED, "--out", str(out), cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-cpu-dry-run.json", "gpu-cpu-dry-run.md"]
    return (proc, json.loads((out / "gpu-cpu-dry-run.json").read_text()),
            (out / "gpu-cpu-dry-run.md").read_text())


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_it(dry_run):
    proc, report, md = dry_run
    parts = report["parts"]
    assert list(parts) == PARTS
    assert {name: p["status"] for name, p in parts.items()} == {
        "tests": "skipped", **dict.fromkeys(MEASURED, "pass")}
    assert all(parts[name]["seconds"] > 0 and parts[name]["summary"] for name in MEASURED)
    assert parts["tests"]["summary"] == "not selected (--parts)"
    assert report["environment"]["dry_run"] is True and report["environment"]["torch"] == torch.__version__
    assert "Dry run on the CPU" in md
    for heading in ("Host syncs per gdas search step", "Speed",
                    "Memory: gdas against softmax", "A full NAS-Bench-201 search epoch",
                    "gdas against the GDAS reference code"):
        assert f"\n## {heading}\n\nStatus: pass; " in md
    for name in MEASURED:  # the summary, printed and written
        assert f"| {name} | pass |" in proc.stdout and f"| {name} | pass |" in md
    assert "| tests | skipped |" in md


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda" name="test_resume_equals_straight_through_on_the_device"
 time="1.5"><properties><property name="resume" value="bitwise equal"/>
<property name="nondeterministic_ops" value="none"/></properties></testcase>
<testcase classname="tests.test_cuda" name="test_a_search_runs_on_the_device[bf16]" time="0.5">
<failure message="AssertionError: loss is nan&#10;second line">traceback</failure></testcase>
<testcase classname="tests.test_cuda" name="test_export_of_a_network[onnx]" time="0.1">
<skipped message="not present: this tree has no `nas export`"/></testcase>
<testcase classname="tests.test_cuda" name="test_a_gdas_step_syncs_once" time="0.0">
<skipped message="CUDA's sync debug mode needs a CUDA device"/></testcase>
</testsuite></testsuites>"""


def test_the_tests_part_runs_the_cuda_tests_and_reports_each(tmp_path, monkeypatch):
    check = load_script()
    started = []

    def pytest_process(cmd, cwd, env, **kwargs):  # what `pytest --junitxml` leaves behind
        started.append((cmd, env))
        Path(cmd[-2].split("=", 1)[1]).write_text(JUNIT)
        return subprocess.CompletedProcess(cmd, 1, "1 failed, 1 passed, 2 skipped", "")

    monkeypatch.setattr(check.subprocess, "run", pytest_process)
    args = check.parse_args(["--dry-run"])
    ctx = check.Context(args, check.DRY, "cpu", tmp_path, time.monotonic() + 60)
    part = check.run_part("tests", check.part_tests, ctx, {"tests": 1.0})
    (cmd, env), = started
    assert cmd[1:5] == ["-m", "pytest", "-m", "cuda"] and cmd[-1] == str(ROOT / "tests")
    assert "addopts=" in cmd  # one process: no pytest-xdist workers
    assert env["NAS_CUDA_TESTS_DEVICE"] == "cpu" and str(ROOT) in env["PYTHONPATH"].split(os.pathsep)
    rows = {r["test"]: r for r in part.rows}
    assert {name: r["outcome"] for name, r in rows.items()} == {
        "test_resume_equals_straight_through_on_the_device": "passed",
        "test_a_search_runs_on_the_device[bf16]": "failed",
        "test_export_of_a_network[onnx]": "not present",
        "test_a_gdas_step_syncs_once": "skipped"}
    assert rows["test_resume_equals_straight_through_on_the_device"]["recorded"] == {
        "resume": "bitwise equal", "nondeterministic_ops": "none"}
    assert rows["test_a_search_runs_on_the_device[bf16]"]["message"] == "AssertionError: loss is nan"
    assert rows["test_resume_equals_straight_through_on_the_device"]["seconds"] == 1.5
    assert part.status == "fail"  # a failed test fails the part
    assert part.summary == "1 failed, 1 not present, 1 passed, 1 skipped"
    md = "\n".join(check.section_tests(part))
    assert "| test_resume_equals_straight_through_on_the_device | passed |" in md


@pytest.mark.slow
def test_the_syncs_are_counted_and_traced_to_the_sample(dry_run):
    syncs = dry_run[1]["parts"]["syncs"]
    # the CPU stand-in sees this repository's host reads: one .tolist() a step, both samples'
    assert syncs["values"]["steps"] == 3 and syncs["values"]["per_step"] == 1.0
    (row,) = syncs["rows"]
    assert row["source"].startswith("nas/supernet.py:") and " in drawing_ahead: " in row["source"]
    assert ".tolist()" in row["source"] and row["syncs"] == 3


@pytest.mark.slow
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


@pytest.mark.slow
def test_every_target_has_a_verdict(dry_run):
    targets = dry_run[1]["targets"]
    assert len(targets) == 5
    assert all(t["verdict"] in ("met", "not met", "not measured") for t in targets)
    assert targets[1]["verdict"] == "not measured" and "no --reference given" in targets[1]["measured"]
    assert targets[2]["verdict"] == "met" and targets[2]["measured"] == "1.00 per step"


def test_the_time_guard_stops_parts_and_still_writes_the_report(tmp_path, monkeypatch):
    check = load_script()

    row = {"test": "test_x", "outcome": "passed", "seconds": 0.1, "message": "", "recorded": {}}

    def overrunning(part, ctx):  # measures something, then never stops by itself
        part.rows.append(row)
        while True:
            time.sleep(0.05)

    monkeypatch.setattr(check, "PART_FUNCTIONS", {**check.PART_FUNCTIONS, "tests": overrunning})
    monkeypatch.setattr(check, "MIN_PART_S", 0.5)
    start = time.monotonic()
    # the tests' share of 1 s is 0.86 s; the backstop stops it 5 s later, and the syncs part then
    # finds no time left: both reported, the report still written
    assert check.main(["--dry-run", "--budget-s", "1", "--parts", "tests", "syncs",
                       "--out", str(tmp_path)]) == 0
    assert time.monotonic() - start < 30
    parts = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())["parts"]
    assert parts["tests"]["status"] == "stopped" and 5 < parts["tests"]["seconds"] < 20
    assert parts["tests"]["rows"] == [row]  # what it measured is kept
    assert parts["tests"]["notes"] == [
        "stopped after its 1 s share of --budget-s; what it measured until then is kept"]
    syncs = parts["syncs"]
    assert syncs["status"] == "skipped" and "no time left" in syncs["summary"]
    assert all(parts[name]["status"] == "skipped" and "not selected" in parts[name]["summary"]
               for name in ("speed", "memory", "epoch", "reference"))
    assert "| tests | stopped |" in (tmp_path / "gpu-cpu-dry-run.md").read_text()


def test_the_speed_part_stops_between_rows_at_its_share(tmp_path, monkeypatch):
    check = load_script()

    def measure(space, mode, *args, **kwargs):
        time.sleep(0.2)
        return {"space": space, "mode": mode, "median_s": 0.1, "images_per_s": 80.0}

    monkeypatch.setattr(check.step_cost, "measure", measure)
    ctx = check.Context(check.parse_args(["--dry-run"]), check.DRY, "cpu", tmp_path,
                        time.monotonic() + 60)
    ctx.part_end = time.monotonic() + 3.0  # the part stops with less than 2 s of its share left
    part = check.Part("speed")
    check.part_speed(part, ctx)
    assert part.status == "stopped" and 1 <= len(part.rows) < 24
    assert part.notes == [f"stopped at its time share: {len(part.rows)} of 24 rows"]


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
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert load_script().main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_check.py: error: ") and message in err
    assert os.listdir(tmp_path) == []


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
