"""`nas search` end to end: artefacts, TensorBoard, resume, overrides and every error path."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import nas
import nas.lifecycle
import nas.search
from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]


def snapshot(directory: Path) -> dict[str, str]:
    """Path -> content hash of every file below ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_search_writes_every_artefact(tmp_path, tiny_config):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "nas", "search", "--config", str(tiny_config),
                          "--run-dir", str(run), "--seed", "1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"genotype file: {run / 'genotype.json'}" in out.stdout
    assert f"tensorboard --logdir {run}" in out.stdout
    assert "search epoch 2/2" in out.stdout  # not a terminal: one plain line per epoch

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed"] == 1 and saved["search"]["epochs"] == 2 and saved["supernet"]["C"] == 4

    genotype = nas.Genotype.load(run / "genotype.json")
    assert set(genotype.cells) == {"normal", "reduce"}
    assert nas.Genotype.load(run / "genotypes" / "epoch_002.json") == genotype
    assert (run / "genotypes" / "epoch_001.json").is_file()

    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert lines[0]["tau"] == 10.0 and lines[1]["tau"] == pytest.approx(0.1)
    assert lines[1]["lr"] < lines[0]["lr"]
    for key in ("train_loss", "train_acc", "arch_loss", "arch_acc", "entropy", "genotype"):
        assert lines[1][key] is not None
    assert lines[1]["genotype"] == str(genotype)

    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["kind"] == "search" and state["epoch"] == 2
    assert {"model", "w_opt", "a_opt", "lr_sched", "tau", "rng", "config"} <= set(state)
    assert state["tau"]["last_step"] == 2 and state["model"]["_extra_state"]["samples_drawn"] > 0
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temporaries

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/arch", "accuracy/train", "accuracy/arch", "tau", "lr/weights",
            "lr/arch", "entropy"} <= set(tags["scalars"])
    assert [round(e.value, 4) for e in events.Scalars("tau")] == [10.0, 0.1]
    assert {"arch/normal", "arch/reduce", "genotype/normal", "genotype/reduce"} <= set(tags["images"])
    assert not tags["histograms"]
    # every op's probability by name, per edge and epoch; each edge's ops sum to 1
    probs = [t for t in tags["scalars"] if t.startswith("probs/")]
    assert len(probs) == 2 * 14 * 8 and "probs/reduce/5<-4/skip_connect" in probs
    edge = [events.Scalars(t)[-1].value for t in probs if t.startswith("probs/normal/3<-1/")]
    assert len(edge) == 8 and sum(edge) == pytest.approx(1, abs=1e-5)
    assert "custom_scalars__config__" in tags["tensors"]
    saved = [json.loads(l) for l in (run / "probabilities.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in saved] == [1, 2]
    assert saved[1]["edges"]["normal"][3] == "3<-1" and saved[1]["ops"]["normal"][3] == "skip_connect"
    assert saved[1]["probabilities"]["normal"][3][3] == pytest.approx(
        events.Scalars("probs/normal/3<-1/skip_connect")[-1].value, abs=1e-6)
    assert sorted(p.name for p in (run / "heatmaps").iterdir()) == [
        "normal_epoch_001.png", "normal_epoch_002.png", "reduce_epoch_001.png", "reduce_epoch_002.png"]
    assert "genotype/text_summary" in tags["tensors"]


def run_search(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["search", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def final_logits(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    return {k: v for k, v in state["model"].items() if k.startswith(("arch_logits.", "edge_logits."))}


@pytest.mark.parametrize("remedies", [
    [], ["search.estimator=reinforce", "search.weight_sampling=params", "search.warmup_epochs=1"],
    ["search.edge_topk=2", "search.tau_forward.schedule=linear", "search.tau_forward.max=3",
     "search.tau_forward.per=iteration"],
    ["search.edge_topk=1", "search.estimator=reinforce", "search.weight_sampling=uniform"],
    ["search.budget.params=5000", "search.budget.macs=9e4", "search.budget.dual_lr=0.5"],
], ids=["gdas", "remedies", "topk-decoupled", "topk-reinforce", "budget"])
def test_interrupted_then_resumed_equals_straight_through(tmp_path, tiny_config, capsys,
                                                          monkeypatch, remedies):
    args = ["--config", str(tiny_config), "--set", "search.epochs=3", *remedies, "--quiet"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_search([*args, "--run-dir", str(straight)], capsys)[0] == 0

    real_save, calls = nas.lifecycle.save_checkpoint, []

    def save_then_interrupt(state, path):  # Ctrl-C right after the first epoch's checkpoint
        real_save(state, path)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", save_then_interrupt)
    code, _, err = run_search([*args, "--run-dir", str(broken)], capsys)
    assert code == 130 and f"continue with: nas search --resume {broken}" in err
    assert torch.load(broken / "checkpoint.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", real_save)

    code, out, _ = run_search(["--resume", str(broken), "--quiet"], capsys)
    assert code == 0 and "genotype file:" in out
    a, b = final_logits(straight), final_logits(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("edge_logits.") for k in a) == any("edge_topk" in r for r in remedies)
    if any("budget" in r for r in remedies):  # the multipliers moved, and resumed exactly
        sa, sb = (torch.load(p / "checkpoint.pt", weights_only=False)["budget"] for p in (straight, broken))
        assert sa == sb and any(v > 0 for v in sa["multipliers"].values())
    assert nas.Genotype.load(straight / "genotype.json") == nas.Genotype.load(broken / "genotype.json")
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                       for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(broken)


def test_set_overrides_reach_the_run(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    code, _, _ = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                             "--set", "search.epochs=1", "search.mode=softmax",
                             "search.tau.per=iteration", "search.order=arch_first"], capsys)
    assert code == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["search"]
    assert (saved["epochs"], saved["mode"], saved["order"]) == (1, "softmax", "arch_first")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["tau"]["per"] == "iteration" and state["tau"]["last_step"] == 2  # 2 steps


@pytest.mark.parametrize("mode", ["st", "gumbel"])
def test_other_modes_and_warmup(tmp_path, tiny_config, capsys, mode):
    run = tmp_path / mode
    code, _, _ = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                             "--set", f"search.mode={mode}", "search.warmup_epochs=1"], capsys)
    assert code == 0
    first, second = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert first["arch_loss"] is None and second["arch_loss"] is not None  # warm-up: weights only


def test_quiet_prints_only_the_result(tmp_path, tiny_config, capsys):
    code, out, err = run_search(["--config", str(tiny_config), "--run-dir",
                                 str(tmp_path / "q"), "--quiet"], capsys)
    assert code == 0 and "epoch" not in out and err == ""
    assert out.splitlines()[0].startswith("genotype: Genotype(")


@pytest.mark.parametrize("extra, message", [
    ([], "the following arguments are required: --config"),
    (["--set", "search.epochz=3"], "search.epochz: unknown key; did you mean 'epochs'?"),
    (["--set", "search.arch_lr=abc"], "search.arch_lr: expected a number, got 'abc'"),
    (["--set", "space=dartz"], "unknown search space 'dartz'; did you mean 'darts'?"),
    (["--set", "supernet.cell=2"], "supernet.cell: unknown key; did you mean 'cells'?"),
    (["--data-dir", "/nonexistent/dir"], "CIFAR-10 not found"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--set", "search.tau.schedule=linaer"], "did you mean 'linear'?"),
])
def test_input_errors_exit_2_with_one_line(tmp_path, tiny_config, capsys, extra, message):
    base = ["--config", str(tiny_config)] if extra else []
    run = tmp_path / "never"
    code, out, err = run_search([*base, *extra, "--run-dir", str(run)], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not run.exists()  # a failed start leaves nothing behind


def test_existing_run_dir_is_refused_and_untouched(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet"], capsys)[0] == 0
    before = snapshot(run)
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(run)], capsys)
    assert code == 2 and "already exists" in err and "--resume" in err and "--force" in err
    assert snapshot(run) == before
    # --force replaces it, but only once the new run can start
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--force",
                               "--data-dir", str(tmp_path / "missing")], capsys)
    assert code == 2 and snapshot(run) == before
    (run / "stale.txt").write_text("old")
    code, _, _ = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--force",
                             "--quiet", "--set", "search.epochs=1"], capsys)
    assert code == 0 and not (run / "stale.txt").exists()


def test_resume_errors(tmp_path, tiny_config, capsys):
    code, _, err = run_search(["--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "cannot resume" in err
    run = tmp_path / "run"
    assert run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet"], capsys)[0] == 0
    code, _, err = run_search(["--resume", str(run), "--set", "search.epochs=5"], capsys)
    assert code == 2 and "saved config" in err
    torch.save({"kind": "train", "epoch": 1}, run / "checkpoint.pt")
    code, _, err = run_search(["--resume", str(run)], capsys)
    assert code == 2 and "is a train checkpoint, not a search checkpoint" in err
    (run / "checkpoint.pt").write_bytes(b"garbage")
    code, _, err = run_search(["--resume", str(run)], capsys)
    assert code == 2 and "not a readable checkpoint" in err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --bogus" in err


def test_genotype_show_and_plot(tmp_path, capsys):
    nb = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    assert main(["genotype", "show", nb]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == nb and "node 2 = nor_conv_3x3(0), avg_pool_3x3(1)" in out
    assert out.splitlines()[1] == "cell (states 0: input, then the nodes):"  # not "cell cell"
    path = tmp_path / "g.json"
    nas.parse_genotype(nb).save(path)
    assert main(["genotype", "plot", str(path), "--out", str(tmp_path / "pics")]) == 0
    dot = (tmp_path / "pics" / "g_cell.dot").read_text()
    assert '"0" -> "3" [label="skip_connect"];' in dot and '"1" -> "2" [label="avg_pool_3x3"];' in dot and dot.startswith('digraph "cell"')
    assert (tmp_path / "pics" / "g_cell.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["genotype", "show", "|bad|"]) == 2
    assert "not a NAS-Bench-201 string" in capsys.readouterr().err


def test_python_dash_m_and_console_script_agree():
    out = subprocess.run([sys.executable, "-m", "nas", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"gumbel-nas {nas.__version__}"


def test_a_diverging_search_stops_with_one_line(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                               "--set", "search.lr=1e30", "search.grad_clip=0"], capsys)
    assert code == 1 and "the loss became nan in epoch" in err and err.count("\n") == 1


def test_bf16_autocast_and_channels_last_run(tmp_path, tiny_config, capsys):
    # meant for CUDA, but both work on the CPU too: an accepted flag works
    run = tmp_path / "run"
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                               "--set", "search.epochs=1", "search.amp=true",
                               "search.channels_last=true"], capsys)
    assert code == 0, err
    line = json.loads((run / "metrics.jsonl").read_text())
    assert line["train_loss"] > 0 and line["arch_loss"] > 0


@pytest.mark.parametrize("setting, expected", [(None, True), ("false", False)])
def test_a_cpu_search_runs_channels_last_by_default(tmp_path, tiny_config, capsys, setting, expected):
    run = tmp_path / "run"
    extra = [f"search.channels_last={setting}"] if setting else []
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet",
                               "--set", "search.epochs=1", *extra], capsys)
    assert code == 0, err
    model = torch.load(run / "checkpoint.pt", weights_only=True)["model"]  # saved with its strides
    convs = [v for v in model.values() if isinstance(v, torch.Tensor) and v.dim() == 4
             and min(v.shape[1:]) > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) == expected and
                         v.is_contiguous() != expected for v in convs)


def _user_files(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text("my notes\n")
    (directory / "config.yaml").write_text("mine: true\n")  # a config alone does not make a run
    return snapshot(directory)


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "user dir", "symlink", "file"])
def test_force_never_replaces_what_is_not_a_run(tmp_path, tiny_config, capsys, monkeypatch, where):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    target = {"cwd": Path("."), "parent": Path(".."), "home": tmp_path / "home",
              "user dir": tmp_path / "notes", "symlink": tmp_path / "link",
              "file": tmp_path / "afile"}[where]
    if where == "symlink":
        real = tmp_path / "real_run"
        assert run_search(["--config", str(tiny_config), "--run-dir", str(real), "--quiet"], capsys)[0] == 0
        target.symlink_to(real, target_is_directory=True)
        guarded = real
    elif where == "file":
        target.write_text("data\n")
        guarded = tmp_path
    else:
        guarded = tmp_path / "home" if where == "home" else target.resolve()
        _user_files(guarded)
    before = snapshot(guarded) if guarded.is_dir() else None
    code, _, err = run_search(["--config", str(tiny_config), "--run-dir", str(target), "--force",
                               "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--force replaces only a run directory" in err, err
    assert snapshot(guarded) == before
    if where == "file":
        assert target.read_text() == "data\n"


def test_force_replaces_a_run_directory(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert run_search(["--config", str(tiny_config), "--run-dir", str(run), "--quiet"], capsys)[0] == 0
    (run / "stale.txt").write_text("from the old run\n")
    assert run_search(["--config", str(tiny_config), "--run-dir", str(run), "--force", "--quiet",
                       "--seed", "3"], capsys)[0] == 0
    assert not (run / "stale.txt").exists() and (run / "genotype.json").is_file()


def test_a_kill_between_metrics_and_checkpoint_leaves_no_duplicate_epoch(tmp_path, tiny_config,
                                                                         capsys, monkeypatch):
    args = ["--config", str(tiny_config), "--set", "search.epochs=3", "search.log_every=1", "--quiet"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_search([*args, "--run-dir", str(straight)], capsys)[0] == 0
    real_save, calls = nas.lifecycle.save_checkpoint, []

    def killed_before_the_second_checkpoint(state, path):
        calls.append(path)
        if len(calls) == 2:  # epoch 2's metrics, genotype and TensorBoard are written already
            raise KeyboardInterrupt
        real_save(state, path)

    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", killed_before_the_second_checkpoint)
    assert run_search([*args, "--run-dir", str(broken)], capsys)[0] == 130
    assert (broken / "genotypes" / "epoch_002.json").is_file()
    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", real_save)
    assert run_search(["--resume", str(broken), "--quiet"], capsys)[0] == 0

    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                       for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in strip(broken)] == [1, 2, 3]
    assert strip(broken) == strip(straight)
    assert sorted(p.name for p in (broken / "genotypes").iterdir()) == \
        sorted(p.name for p in (straight / "genotypes").iterdir())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(broken), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("probs/normal/3<-1/skip_connect")] == [1, 2, 3]
    saved = lambda p: [json.loads(l)["epoch"] for l in (p / "probabilities.jsonl").read_text().splitlines()]
    assert saved(broken) == saved(straight) == [1, 2, 3]
    assert len(list((broken / "heatmaps").iterdir())) == 6
    # the per-step scalars too: epoch 2's steps, written before the kill, appear once
    steps = {}
    for run in (straight, broken):
        acc = EventAccumulator(str(run / "steps"))
        acc.Reload()
        steps[run] = [(e.step, e.value) for e in acc.Scalars("step/loss/train")]
    assert [step for step, _ in steps[broken]] == [1, 2, 3, 4, 5, 6]
    assert steps[broken] == steps[straight]  # the resumed run's steps are the same steps


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path, tiny_config,
                                                                           capsys, monkeypatch):
    args = ["--config", str(tiny_config), "--set", "search.epochs=2", "--quiet"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_search([*args, "--run-dir", str(straight)], capsys)[0] == 0

    def interrupted(state, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", interrupted)
    code, _, err = run_search([*args, "--run-dir", str(broken)], capsys)
    assert code == 130 and f"nas search --resume {broken}" in err
    assert not (broken / "checkpoint.pt").exists() and (broken / "config.yaml").is_file()
    monkeypatch.undo()
    assert run_search(["--resume", str(broken), "--quiet"], capsys)[0] == 0  # the hint works
    a, b = final_logits(straight), final_logits(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((broken / "metrics.jsonl").read_text().splitlines()) == 2


def test_custom_scalars_layout_draws_each_edge_with_one_line_per_op():
    import re
    from nas.monitor import prob_layout, prob_scalars
    model = nas.build_supernet("nasbench201", 10, "gdas", options={"C": 4, "cells_per_stage": 1})
    layout = prob_layout(model)
    charts = layout["op probabilities, cell"]  # not "cell cell"
    assert list(charts) == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    kind, patterns = charts["3<-1"]
    tags = list(prob_scalars(model))
    matched = [[t for t in tags if re.search(p, t)] for p in patterns]
    assert kind == "Multiline" and matched == [[f"probs/cell/3<-1/{op}"] for op in model.op_names["cell"]]


@pytest.mark.parametrize("name", ["DARTS_V2", "GDAS", "DRNAS_NB201"])
def test_cell_picture_routes_no_edge_through_a_node(name):
    from nas import plot
    genotype = nas.parse_genotype(name)
    for kind in genotype.cells:
        labels, boxes, arcs, width, height = plot.cell_layout(genotype, kind)
        assert len(arcs) == sum(len(n) for n in genotype.cells[kind]) + len(genotype.concat.get(kind, ()))
        for pts, _ in arcs:
            for x, y in pts:
                assert 0 <= x <= width and 0 <= y <= height
                assert not any(x0 < x < x1 and y0 < y < y1 for x0, y0, x1, y1 in boxes), (kind, x, y)
        # the boxes sit in one row, in state order, without overlapping
        assert all(a[2] < b[0] for a, b in zip(boxes, boxes[1:]))
        assert plot.cell_image(genotype, kind).size == (width, height)


def test_every_verb_help_says_what_it_does(capsys):
    expected = {"evaluate": "test accuracy of a network trained by nas train",
                "train": "a search run directory", "run": "RUN/search/",
                "plot": "op probabilities over the epochs", "list": "published genotypes"}
    for verb, text in expected.items():
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert text in " ".join(capsys.readouterr().out.split()), verb


def test_per_step_scalars_throughput_and_the_real_steps_per_epoch(tmp_path, tiny_config, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    code, out, _ = run_search(["--config", str(tiny_config), "--run-dir", str(run), "--set",
                               "search.log_every=3", "search.steps_per_epoch=30"], capsys)
    assert code == 0
    # 96 images split 48/48 make 3 batches of 16: the cap of 30 is not reached, and it says why
    assert ("3 steps/epoch (search.steps_per_epoch: 30 is a cap, and the smaller split's 48 "
            "images make 3 batches of 16)") in out.splitlines()[0]
    steps = EventAccumulator(str(run / "steps"))
    steps.Reload()
    assert {"step/loss/train", "step/loss/arch", "step/tau"} <= set(steps.Tags()["scalars"])
    assert [e.step for e in steps.Scalars("step/loss/train")] == [3, 6]  # every 3rd of 6 steps
    assert [round(e.value, 4) for e in steps.Scalars("step/tau")] == [10.0, 0.1]
    assert all(math.isfinite(e.value) and e.value > 0 for e in steps.Scalars("step/loss/arch"))
    epochs = EventAccumulator(str(run))
    epochs.Reload()
    seconds = [json.loads(l)["seconds"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in epochs.Scalars("time/epoch_seconds")] == pytest.approx(seconds)
    # each step reads a weight batch and an architecture batch of 16
    assert [e.value for e in epochs.Scalars("throughput/images_per_second")] == \
        pytest.approx([3 * 2 * 16 / s for s in seconds])
    assert "step/loss/train" not in epochs.Tags()["scalars"]  # a run of their own, in steps/
    quiet = tmp_path / "off"
    assert run_search(["--config", str(tiny_config), "--run-dir", str(quiet), "--quiet", "--set",
                       "search.log_every=0"], capsys)[0] == 0
    assert not (quiet / "steps").exists()


def test_help_lists_what_is_needed_first_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert text.index("--config") < text.index("--benchmark")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: nas train --genotype FILE|NAME|STRING [--config FILE]")
    assert "--genotype FILE|NAME|STRING required unless --resume" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--data-dir DIR directory", "--device DEVICE auto", "--batch-size N evaluation"):
        assert option in text


def test_errors_name_the_subcommand_and_suggest_across_case(capsys):
    assert main(["genotype", "show", "darts_v2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas genotype show: error: 'darts_v2' is neither")
    assert "did you mean 'DARTS_V2'?" in err[0]
    assert main(["genotype", "plot", "nope_v9"]) == 2
    assert capsys.readouterr().err.startswith("nas genotype plot: error: ")
