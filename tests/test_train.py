"""`nas train`, `nas run`, `nas evaluate`: retraining a genotype and reading its accuracy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nas
import nas.train
import nas.lifecycle
import nas.steps
from nas.cli import main
from nas.config import build_config
from conftest import DARTS_V2 as V2, ROOT, write_cifar10

NB = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_retraining_lowers_the_training_loss(tmp_path):
    # easy data (one colour per class) and a small NB201 network: the loss must fall clearly
    root = write_cifar10(tmp_path / "data", n_train=256, n_test=64, seed=1)
    cfg = build_config({"space": "nasbench201", "data": {"root": str(root), "image_size": 8,
                                                         "pad": 0, "workers": 0},
                        "network": {"C": 8, "cells_per_stage": 1},
                        "train": {"epochs": 6, "batch_size": 32, "lr": 0.05, "cutout": 0,
                                  "auxiliary_weight": 0, "drop_path": 0}})
    result = nas.train.train(cfg, nas.parse_genotype(NB), tmp_path / "run", quiet=True)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert lines[-1]["train_loss"] < 0.7 * lines[0]["train_loss"]
    assert lines[-1]["test_acc"] > 30  # chance is 10%
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["test_acc"] == pytest.approx(result.test_acc) == pytest.approx(lines[-1]["test_acc"])
    net = nas.build_network("nasbench201", nas.parse_genotype(NB), 10, {"C": 8, "cells_per_stage": 1})
    assert saved["params"] == nas.count_parameters(net) == result.params
    assert saved["macs"] == nas.count_macs(net, (1, 3, 8, 8)) > 0


def test_drop_path_rises_linearly_and_aux_loss_is_used(tmp_path, tiny_config, capsys, monkeypatch):
    seen = []
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(nas.steps.F, "cross_entropy",
                        lambda logits, y, **kw: seen.append(logits.shape) or real(logits, y, **kw))
    run = tmp_path / "run"
    code = main(["train", "--genotype", V2, "--config", str(tiny_config), "--run-dir", str(run),
                 "--quiet", "--set", "train.epochs=4", "train.drop_path=0.4"])
    assert code == 0
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [round(l["drop_path"], 6) for l in lines] == [0.0, 0.1, 0.2, 0.3]
    # per training step: the main loss and the auxiliary loss
    assert len(seen) >= 2 * 4 * 2


def test_the_train_line_says_the_real_steps_and_the_steps_are_logged(tmp_path, tiny_config, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    assert main(["train", "--genotype", V2, "--config", str(tiny_config), "--run-dir", str(run),
                 "--set", "train.epochs=1", "train.steps_per_epoch=9", "train.log_every=2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "parameters (auxiliary head excluded)" in first  # tiny_config's network has one
    assert ("6 steps/epoch (train.steps_per_epoch: 9 is a cap, and the 96 training images make 6 "
            "batches of 16)") in first
    steps = EventAccumulator(str(run / "steps"))
    steps.Reload()
    assert [e.step for e in steps.Scalars("step/loss/train")] == [2, 4, 6]
    assert [e.value for e in steps.Scalars("step/lr")] == pytest.approx([0.025] * 3)
    epochs = EventAccumulator(str(run))
    epochs.Reload()
    seconds = json.loads((run / "metrics.jsonl").read_text())["seconds"]
    assert epochs.Scalars("throughput/images_per_second")[0].value == pytest.approx(6 * 16 / seconds)


def test_interrupted_then_resumed_training_equals_straight_through(tmp_path, tiny_config, capsys,
                                                                   monkeypatch):
    args = ["train", "--genotype", V2, "--config", str(tiny_config), "--quiet",
            "--set", "train.epochs=3"]
    assert main([*args, "--run-dir", str(tmp_path / "straight")]) == 0
    real_save, calls = nas.lifecycle.save_checkpoint, []

    def save_then_interrupt(state, path):
        real_save(state, path)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", save_then_interrupt)
    assert main([*args, "--run-dir", str(tmp_path / "broken")]) == 130
    assert f"nas train --resume {tmp_path / 'broken'}" in capsys.readouterr().err
    monkeypatch.setattr(nas.lifecycle, "save_checkpoint", real_save)
    assert main(["train", "--resume", str(tmp_path / "broken"), "--quiet"]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "straight" / "result.json").read_text())
    rb = json.loads((tmp_path / "broken" / "result.json").read_text())
    assert ra == rb


def test_search_then_train_then_evaluate(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    assert main(["run", "--config", str(tiny_config), "--run-dir", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "genotype file:" in out and "test accuracy:" in out
    for path in ("search/genotype.json", "search/checkpoint.pt", "train/result.json",
                 "train/checkpoint.pt", "train/genotype.json", "train/config.yaml"):
        assert (run / path).is_file(), path
    searched = nas.Genotype.load(run / "search" / "genotype.json")
    assert searched.space == "darts"
    assert nas.Genotype.load(run / "train" / "genotype.json") == searched
    result = json.loads((run / "train" / "result.json").read_text())
    assert result["genotype"] == str(searched)

    assert main(["evaluate", "--checkpoint", str(run / "train" / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"test accuracy: {result['test_acc']:.2f}%")

    # a run directory names its genotype; missing data fails before anything is created
    code = main(["train", "--genotype", str(run / "search"), "--run-dir", str(tmp_path / "t2"),
                 "--quiet", "--set", f"data.root={tiny_config.parent / 'missing'}"])
    assert code == 2 and "CIFAR-10 not found" in capsys.readouterr().err
    assert not (tmp_path / "t2").exists()


def test_genotype_that_does_not_fit_fails_with_one_line(tmp_path, tiny_config, capsys):
    bad = V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 7)")
    for genotype, message in [
            (bad, "genotype normal cell: node 3 reads state 7, but only states 0..4 exist"),
            (V2.replace("sep_conv_3x3", "sep_conv_3x4", 1), "did you mean 'sep_conv_3x3'?"),
            (NB, "(the genotype belongs to the nasbench201 space, the config is for darts)"),
            ("not a genotype", "is neither a genotype file, a DARTS / NAS-Bench-201 string nor")]:
        run = tmp_path / "never"
        code = main(["train", "--genotype", genotype, "--config", str(tiny_config),
                     "--run-dir", str(run)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not run.exists()


def test_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    torch.save({"kind": "search", "epoch": 1}, tmp_path / "s.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "s.pt")]) == 2
    assert "is a search checkpoint, not a train checkpoint" in capsys.readouterr().err


def test_example_plugin_runs_from_its_file(tmp_path, cifar_root, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the plugin by a path relative to the repository
    run = tmp_path / "run"
    code = main(["run", "--config", "configs/example_plugin.yaml", "--data-dir", str(cifar_root),
                 "--run-dir", str(run), "--quiet", "--set", "data.image_size=8",
                 "search.epochs=1", "search.steps_per_epoch=2", "train.epochs=1",
                 "train.steps_per_epoch=2", "network.C=8"])
    assert code == 0, capsys.readouterr().err
    genotype = nas.Genotype.load(run / "search" / "genotype.json")
    assert genotype.space == f"{ROOT / 'scripts/example_plugin.py'}:SPACE"  # stored absolute
    assert len(genotype.cells["cell"]) == 2
    assert {op for node in genotype.cells["cell"] for op, _ in node} <= {
        "skip_connect", "avg_pool_3x3", "nor_conv_3x3", "mbconv_3x3"}
    assert json.loads((run / "train" / "result.json").read_text())["params"] > 0


class _RunsCode:
    """Unpickling this calls exec: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_checkpoint_that_would_run_code_is_refused_with_one_line(tmp_path, capsys):
    from nas.runtime import load_checkpoint
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"kind": "train", "epoch": 1, "model": {}, "payload": _RunsCode(marker)}, path)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objects other than tensors and plain Python values" in err[0]
    with pytest.raises(nas.InputError, match="could run code"):
        load_checkpoint(path, "search")  # the path resume takes
    assert not marker.exists()


CHAIN = '{"cells": {"cell": [[["nor_conv_3x3", 0]], [["skip_connect", 0], ["nor_conv_3x3", 1]]]}}'
PLUGIN_NET = '''
import torch.nn.functional as F
from torch import nn
import nas

class Net(nn.Module):
    def __init__(self, genotype, num_classes=10, C: int = 4, classes_out: int = 0):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.cells = nn.ModuleList(nas.GenotypeCell(genotype.cells["cell"], C, num_inputs=1)
                                   for _ in range(2))
        self.head = nn.Linear(C, classes_out or num_classes)
    def forward(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell((x,))  # no drop-path probability passed: the framework sets it
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

class Plain(nn.Module):  # no GenotypeCell, no drop_path_prob
    def __init__(self, genotype, num_classes=10):
        super().__init__()
        self.head = nn.Linear(3, num_classes)
    def forward(self, x):
        return self.head(x.mean((2, 3)))

SPACE = nas.SearchSpace(supernet=None, network=Net)
PLAIN = nas.SearchSpace(supernet=None, network=Plain)
'''


def test_drop_path_reaches_cells_a_plugin_network_does_not_plumb(tmp_path, cifar_root, monkeypatch):
    (tmp_path / "dp_plugin.py").write_text(PLUGIN_NET)
    cfg = build_config({"space": f"{tmp_path / 'dp_plugin.py'}:SPACE",
                        "data": {"root": str(cifar_root), "image_size": 8, "pad": 0, "workers": 0},
                        "train": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 1, "cutout": 0,
                                  "drop_path": 0.3}})
    seen = []
    real = nas.network.drop_path
    monkeypatch.setattr(nas.network, "drop_path", lambda x, p: seen.append(round(p, 6)) or real(x, p))
    nas.train.train(cfg, nas.parse_genotype(CHAIN), tmp_path / "run", quiet=True)
    # epochs 2 and 3 (drop path 0.1, 0.2): 2 cells x 2 non-identity ops per training step
    assert seen == [0.1] * 4 + [0.2] * 4


def test_plugin_network_mistakes_fail_before_training_with_one_line(tmp_path, cifar_root, capsys):
    import yaml
    (tmp_path / "bad_net.py").write_text(PLUGIN_NET)
    config = tmp_path / "plugin.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(cifar_root), "image_size": 8,
                                               "workers": 0}, "train": {"epochs": 1}}))
    base = ["train", "--genotype", CHAIN, "--config", str(config)]
    run = tmp_path / "run"
    code = main([*base, "--run-dir", str(run), "--set", f"space={tmp_path / 'bad_net.py'}:SPACE",
                 "network.classes_out=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "bad_net.py:SPACE" in err[0] and "shape (2, 7), expected (2, 10)" in err[0]
    code = main([*base, "--run-dir", str(run), "--set", f"space={tmp_path / 'bad_net.py'}:PLAIN"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no nas.GenotypeCell, no nas.ResidualBranch and no drop_path_prob" in err[0]
    assert not run.exists()


def test_train_without_config_says_first_what_it_will_run(tmp_path, cifar_root, capsys):
    run = tmp_path / "run"
    code = main(["train", "--genotype", NB, "--data-dir", str(cifar_root), "--run-dir", str(run),
                 "--set", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=16",
                 "data.image_size=8", "data.workers=0", "network={C: 4, cells_per_stage: 1}"])
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("train: no --config, so the defaults with your --set: "
                            "nasbench201 network (C=4, cells_per_stage=1, affine=True")
    assert first.endswith("1 epochs of batch 16, lr 0.025 cosine, drop path 0.2, cutout 16; "
                          "pass --config FILE to change them")  # no auxiliary head to claim


def test_train_without_config_refuses_the_darts_recipe_for_another_space(tmp_path, cifar_root,
                                                                        capsys):
    run = tmp_path / "run"
    for quiet in ([], ["--quiet"]):
        code = main(["train", "--genotype", NB, "--data-dir", str(cifar_root), "--run-dir",
                     str(run), *quiet])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and not run.exists()
        assert ("the genotype is of the nasbench201 space, and without --config nas train's "
                "defaults are the DARTS retraining recipe (600 epochs") in err[0]
        assert "pass --config FILE" in err[0] and "--set train.epochs=N" in err[0]


def test_the_recipe_line_claims_an_auxiliary_head_only_where_there_is_one():
    from nas.config import build_config
    from nas.train import recipe_line
    line = recipe_line(build_config(), "darts")
    assert line.startswith("train: no --config, so the default recipe (DARTS retraining): darts "
                           "network (C=36, cells=20, auxiliary=True")
    assert "cutout 16, auxiliary weight 0.4;" in line
    line = recipe_line(build_config({"network": {"auxiliary": False}}), "darts")
    assert "auxiliary=False" in line and "auxiliary weight" not in line


def test_api_example_script_searches_and_retrains(tmp_path, cifar_root, capsys, monkeypatch):
    import runpy
    monkeypatch.setattr("sys.argv", ["api_example.py", "--data-dir", str(cifar_root),
                                     "--out", str(tmp_path / "api")])
    runpy.run_path(str(ROOT / "scripts" / "api_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "genotype: |" in out and "test accuracy:" in out
    assert (tmp_path / "api" / "search" / "genotype.json").is_file()
    assert json.loads((tmp_path / "api" / "train" / "result.json").read_text())["epochs"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_freed_activations():
    """After keep_freed_memory(), a freed 64 MB block is reused without page faults; glibc
    otherwise maps it afresh each time (16k faults per allocation, 164k for the ten measured).
    In a fresh process: the setting is process-wide, and the heap's layout must not depend on
    earlier tests. The heap takes a few blocks to settle (after three, one process in four
    still faulted one or two of the next blocks in; after six, none of 25 did, but a few hundred
    bytes more or less of imported code, as any edit of nas/monitor.py or nas/runtime.py makes,
    brought that back to one in four, and reading the modules from ``__pycache__`` (bytecode
    writing on) made 5 of 5 fault; after twenty, none of 45 faulted, in three such layouts)."""
    code = """if True:
        import resource, torch
        import nas.search  # as `nas search` has when it calls it: the whole stack imported
        from nas.runtime import keep_freed_memory
        tuned = keep_freed_memory()
        faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):  # the heap settles, as in a run's first steps
            torch.ones(16 << 20)
        before = faults()
        for _ in range(10):
            torch.ones(16 << 20)
        print(tuned, faults() - before)"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    tuned, faults = out.stdout.split()
    assert tuned == "True" and int(faults) < 1000, out.stdout
