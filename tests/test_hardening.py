"""Bad input of every class gets one line, exit 2 and changes nothing; data never runs code.

The table below is the issue's fuzz classes: config values, flags, data files, genotypes, run
directories, checkpoints and plugins. Every case runs the real command in a workspace and
checks the exit status, a phrase of the message, that the message is one line without a
traceback, and that no file in the workspace was created, changed or deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import DARTS_V2, TINY_SEARCH
from nas.cli import main
from nas.genotype import parse_genotype

NB201 = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"


def snapshot(root: Path) -> dict[str, str]:
    """Every path below ``root`` (links not followed) -> content hash, 'dir' or 'link'."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = "link" if p.is_symlink() else "dir" if p.is_dir() else \
            hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def call(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cifar_root) -> Path:
    """A finished one-epoch tiny search (copied into each workspace that needs it)."""
    root = tmp_path_factory.mktemp("finished")
    cfg = {**TINY_SEARCH, "data": {**TINY_SEARCH["data"], "root": str(cifar_root)},
           "search": {**TINY_SEARCH["search"], "epochs": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", "--config", str(root / "c.yaml"), "--run-dir", str(root / "run"),
                 "--quiet"]) == 0
    return root / "run"


@pytest.fixture
def ws(tmp_path, cifar_root, finished_run, monkeypatch, capsys) -> Path:
    """A workspace as a user has one: data, a config, a finished run; the cwd, and HOME."""
    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-batches-py")
    cfg = {**TINY_SEARCH, "data": {**TINY_SEARCH["data"], "root": str(tmp_path / "data")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    small = {"C": 4, "cells_per_stage": 1}
    (tmp_path / "nb.yaml").write_text(yaml.safe_dump(
        {**cfg, "space": "nasbench201", "supernet": small, "network": small}))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(
        {k: cfg[k] for k in ("data", "search", "train")}))
    shutil.copytree(finished_run, tmp_path / "run")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("a user's file\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    return tmp_path


# -- what the cases set up --------------------------------------------------------------------
def bad_data(change):
    """A copy of the data whose first batch file is edited by ``change(entry)``."""
    def setup(ws: Path) -> None:
        path = ws / "bad" / "cifar-10-batches-py" / "data_batch_1"
        shutil.copytree(ws / "data", ws / "bad")
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        change(entry)
        path.write_bytes(pickle.dumps(entry, protocol=2))
    return setup


def raw_data(content: bytes):
    def setup(ws: Path) -> None:
        shutil.copytree(ws / "data", ws / "bad")
        (ws / "bad" / "cifar-10-batches-py" / "data_batch_1").write_bytes(content)
    return setup


class _RunsACommand:
    def __reduce__(self):
        return os.system, ("touch IMPORTED",)


def write(name: str, text: str):
    def setup(ws: Path) -> None:
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(text)
    return setup


def edit_saved_config(key: str, value):
    def setup(ws: Path) -> None:
        cfg = yaml.safe_load((ws / "run" / "config.yaml").read_text())
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
        (ws / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return setup


def drop_checkpoint_tensor(ws: Path) -> None:
    state = torch.load(ws / "run" / "checkpoint.pt", weights_only=True)
    del state["model"]["classifier.weight"]
    torch.save(state, ws / "run" / "checkpoint.pt")


def evil_checkpoint(ws: Path) -> None:
    (ws / "run" / "checkpoint.pt").unlink()
    torch.save({"kind": "search", "epoch": 1, "x": _RunsACommand()}, ws / "run" / "checkpoint.pt")


def nas_run_dir(ws: Path) -> None:
    (ws / "pair" / "search").mkdir(parents=True)
    shutil.copytree(ws / "run", ws / "pair" / "train")


def genotype_with_helper(ws: Path) -> None:
    """A downloaded genotype whose space is a helper.py beside it that runs a command."""
    (ws / "dl").mkdir()
    (ws / "dl" / "helper.py").write_text(
        "import pathlib\npathlib.Path('IMPORTED').write_text('ran')\n"
        "from search_spaces.nasbench201 import SPACE\n")
    g = {**parse_genotype(NB201).to_dict(), "space": "dl/helper.py:SPACE"}
    (ws / "dl" / "genotype.json").write_text(json.dumps(g))


PLUGINS = '''
import math
import torch
import nas
from torch import nn

def none_op(C, stride, affine, track):
    return None

def text_schedule(step, total, tau_max, tau_min):
    return "hot"

def nan_schedule(step, total, tau_max, tau_min):
    return math.nan if step == total else tau_max

class _Chain(nas.Supernet):
    def __init__(self, num_classes=10, mode="gdas", seed=0, out=None):
        super().__init__(mode, {"chain": (1, ("skip_connect", "max_pool_3x3"))}, seed)
        self.edge = nas.MixedEdge(("skip_connect", "max_pool_3x3"), 3)
        self.head = nn.Linear(3, num_classes if out is None else out)
    def forward(self, x):
        return self.head(self.edge(x, *self.sample()["chain"][0]).mean((2, 3)))

class NoGenotype(_Chain):
    pass

class TrainFails(_Chain):
    def forward(self, x):
        if self.training:
            raise RuntimeError("a bug that shows only in training")
        return super().forward(x)
    def genotype(self):
        return nas.Genotype({"chain": [[("skip_connect", 0)]]})

class WrongShape(_Chain):
    def __init__(self, num_classes=10, mode="gdas", seed=0):
        super().__init__(num_classes, mode, seed, out=3)
    def genotype(self):
        return nas.Genotype({"chain": [[("skip_connect", 0)]]})
'''

S = ["search", "--config", "tiny.yaml", "--run-dir", "out"]
T = ["train", "--config", "tiny.yaml", "--run-dir", "out", "--genotype"]
PLUG = write("plug.py", PLUGINS)
P = ["search", "--config", "plain.yaml", "--run-dir", "out", "--set"]

# (id, setup or None, argv, phrase of the one-line message)
CASES = [
    # config values
    ("momentum-negative", None, [*S, "--set", "search.momentum=-0.1"], "search.momentum"),
    ("momentum-one", None, [*S, "--set", "search.momentum=1.5"], "search.momentum"),
    ("train-momentum", None, [*S, "--set", "train.momentum=-1"], "train.momentum"),
    ("weight-decay", None, [*S, "--set", "search.weight_decay=-1e-4"], "search.weight_decay"),
    ("train-weight-decay", None, [*S, "--set", "train.weight_decay=-1"], "train.weight_decay"),
    ("arch-weight-decay", None, [*S, "--set", "search.arch_weight_decay=-1"], "arch_weight_decay"),
    ("C-zero", None, [*S, "--set", "supernet.C=0"], "supernet.C"),
    ("C-negative", None, [*S, "--set", "supernet.C=-4"], "supernet.C"),
    ("C-text", None, [*S, "--set", "supernet.C=wide"], "supernet.C"),
    ("cells-zero", None, [*S, "--set", "supernet.cells=0"], "supernet.cells"),
    ("stem-zero", None, [*S, "--set", "supernet.stem_multiplier=0"], "stem_multiplier"),
    ("ops-empty", None, [*S, "--set", "supernet.ops=[]"], "non-empty list of distinct op names"),
    ("ops-repeated", None, [*S, "--set", "supernet.ops=[none,none]"], "distinct"),
    ("ops-unknown", None, [*S, "--set", "supernet.ops=[none,sep_conv_9x9]"], "unknown op"),
    ("supernet-key", None, [*S, "--set", "supernet.widht=3"], "supernet.widht: unknown key"),
    ("network-C", None, [*T, DARTS_V2, "--set", "network.C=0"], "network.C"),
    ("image-odd", None, [*S, "--set", "data.image_size=7"], "data.image_size"),
    ("image-huge", None, [*S, "--set", "data.image_size=100000"], "data.image_size"),
    ("image-unhalvable", None, [*S, "--set", "data.image_size=6"],
     "op 'skip_connect' on edge 2<-0 of cell 'cells.2.cell' (a reduction cell), stride 2, failed "
     "on an input of shape (2, 16, 3, 3)"),
    ("pad-negative", None, [*S, "--set", "data.pad=-1"], "data.pad"),
    ("eval-batch-zero", None, [*S, "--set", "train.eval_batch_size=0"], "train.eval_batch_size"),
    ("seed-2^63", None, [*S, "--set", "seed=9223372036854775808"], "seed: must be in"),
    ("seed-flag-negative", None, [*S, "--seed", "-1"], "seed: must be in"),
    ("lr-nan", None, [*S, "--set", "search.lr=.nan"], "search.lr"),
    ("tau-inf", None, [*S, "--set", "search.tau.max=.inf"], "search.tau.max"),
    ("epochs-zero", None, [*S, "--set", "search.epochs=0"], "search.epochs"),
    ("split", None, [*S, "--set", "data.split=1.5"], "data.split"),
    ("samples", None, [*S, "--set", "search.samples=1"], "search.samples"),
    ("dataset", None, [*S, "--set", "data.dataset=imagenet"], "unknown dataset"),
    ("space", None, [*S, "--set", "space=dart"], "did you mean 'darts'"),
    ("schedule", None, [*S, "--set", "search.tau.schedule=cosin"], "did you mean 'cosine'"),
    ("set-no-equals", None, [*S, "--set", "search.epochs"], "expected key=value"),
    ("set-type", None, [*S, "--set", "search.epochs=abc"], "search.epochs: expected an integer"),
    ("set-typo", None, [*S, "--set", "search.epohcs=3"], "did you mean 'epochs'"),
    # flags
    ("device-mps", None, [*S, "--device", "mps"], "mps"),
    ("device-unknown", None, [*S, "--device", "tpu"], "unknown device 'tpu'"),
    ("flag-unknown", None, [*S, "--epochs", "3"], "unrecognized arguments"),
    ("config-missing", None, ["search", "--config", "nope.yaml"], "config file not found"),
    ("config-directory", None, ["search", "--config", "data"], "cannot read config file"),
    ("config-yaml", write("bad.yaml", "search: [1, 2\n"), ["search", "--config", "bad.yaml"],
     "not valid YAML"),
    ("config-list", write("list.yaml", "- 1\n- 2\n"), ["search", "--config", "list.yaml"],
     "expected a mapping"),
    ("plugin-flag", None, [*S, "--plugin", "not a reference"], "--plugin not a reference"),
    # data files
    ("data-missing", None, [*S, "--data-dir", "nowhere"], "not found"),
    ("labels-text", bad_data(lambda e: e.__setitem__(b"labels", [b"cat"] * len(e[b"labels"]))),
     [*S, "--data-dir", "bad"], "integer class indices"),
    ("labels-range", bad_data(lambda e: e.__setitem__(b"labels", [10] * len(e[b"labels"]))),
     [*S, "--data-dir", "bad"], "labels must lie in [0, 9]"),
    ("labels-negative", bad_data(lambda e: e.__setitem__(b"labels", [-1] * len(e[b"labels"]))),
     [*S, "--data-dir", "bad"], "labels must lie in [0, 9]"),
    ("labels-float", bad_data(lambda e: e.__setitem__(b"labels", [1.5] * len(e[b"labels"]))),
     [*S, "--data-dir", "bad"], "integer class indices"),
    ("labels-count", bad_data(lambda e: e.__setitem__(b"labels", e[b"labels"][:-3])),
     [*S, "--data-dir", "bad"], "labels"),
    ("data-dtype", bad_data(lambda e: e.__setitem__(b"data", e[b"data"].astype(np.float64))),
     [*S, "--data-dir", "bad"], "uint8"),
    ("data-shape", bad_data(lambda e: e.__setitem__(b"data", e[b"data"][:, :100])),
     [*S, "--data-dir", "bad"], "3072"),
    ("data-keys", bad_data(lambda e: e.pop(b"labels")), [*S, "--data-dir", "bad"],
     "needs the keys"),
    ("data-truncated", raw_data(b"\x80\x02}q\x00"), [*S, "--data-dir", "bad"],
     "not a CIFAR python batch file"),
    ("data-runs-code", raw_data(pickle.dumps(_RunsACommand(), protocol=2)),
     [*S, "--data-dir", "bad"], "refusing to load it"),
    # genotypes
    ("genotype-garbage", None, [*T, "Genotype(normal=oops)"], "DARTS genotype string"),
    ("genotype-neither", None, [*T, "sep_conv_3x3"], "neither a genotype file"),
    ("genotype-inf", write("g.json", '{"cells": {"normal": [[["skip_connect", Infinity]]]}}'),
     [*T, "g.json"], "state index"),
    ("genotype-huge", write("g.json", '{"cells": {"normal": [[["skip_connect", 1e30]]]}}'),
     [*T, "g.json"], "state index"),
    ("genotype-negative", write("g.json", '{"cells": {"normal": [[["skip_connect", -1]]]}}'),
     [*T, "g.json"], "state index"),
    ("genotype-op-type", write("g.json", '{"cells": {"normal": [[[3, 0]]]}}'), [*T, "g.json"],
     "an op must be a non-empty name"),
    ("genotype-op-unknown", None, [*T, DARTS_V2.replace("dil_conv_3x3", "dil_conv_9x9")],
     "unknown op 'dil_conv_9x9'"),
    ("genotype-range", None, [*T, DARTS_V2.replace("normal_concat=[2, 3, 4, 5]",
                                                   "normal_concat=range(2, 1000000000000)")],
     "range() of"),
    ("genotype-list", write("g.json", "[1, 2]"), [*T, "g.json"], "no 'cells' key"),
    ("genotype-empty", write("g.json", ""), [*T, "g.json"], "not a genotype JSON file"),
    ("genotype-space", None, [*T, NB201], "belongs to the nasbench201 space"),
    ("genotype-runs-helper", genotype_with_helper, [*T, "dl/genotype.json"], "--plugin"),
    # run directories
    ("run-dir-under-file", write("afile", "x"), [*S[:-1], "afile/run"], "afile is a file"),
    ("force-cwd", None, [*S[:-1], ".", "--force"], "current directory"),
    ("force-parent", None, [*S[:-1], "..", "--force"], "current directory or one of its parents"),
    ("force-home", None, [*S[:-1], "home", "--force"], "home directory"),
    ("force-user-folder", write("notes/todo.txt", "milk"), [*S[:-1], "notes", "--force"],
     "not a run directory"),
    ("force-symlink", lambda ws: (ws / "link").symlink_to(ws / "run"),
     [*S[:-1], "link", "--force"], "symbolic link"),
    ("run-dir-exists", None, [*S[:-1], "run"], "already exists"),
    ("resume-missing", None, ["search", "--resume", "nowhere"], "cannot resume"),
    ("resume-with-config", None, ["search", "--resume", "run", "--config", "tiny.yaml"],
     "saved config"),
    ("resume-edited-mode", edit_saved_config("search.mode", "softmax"),
     ["search", "--resume", "run"], "search.mode is 'softmax', the run used 'gdas'"),
    ("resume-edited-C", edit_saved_config("supernet.C", 8), ["search", "--resume", "run"],
     "supernet.C is 8"),
    ("resume-shrunk-epochs", edit_saved_config("search.epochs", 0), ["search", "--resume", "run"],
     "search.epochs"),
    ("checkpoint-tensor", drop_checkpoint_tensor, ["search", "--resume", "run"],
     "no tensor 'classifier.weight'"),
    ("checkpoint-garbage", write("run/checkpoint.pt", "garbage"), ["search", "--resume", "run"],
     "not a readable checkpoint"),
    ("checkpoint-runs-code", evil_checkpoint, ["search", "--resume", "run"], "could run code"),
    # evaluate
    ("evaluate-missing", None, ["evaluate", "--checkpoint", "none.pt"], "checkpoint not found"),
    ("evaluate-search", None, ["evaluate", "--checkpoint", "run"], "is a search checkpoint"),
    ("evaluate-run-pair", nas_run_dir, ["evaluate", "--checkpoint", "pair"],
     "pass pair/train"),
    ("evaluate-batch", None, ["evaluate", "--checkpoint", "run", "--batch-size", "0"],
     "--batch-size"),
    # plugins
    ("op-returns-none", PLUG, [*S, "--set", "supernet.ops=[skip_connect,plug.py:none_op]"],
     "returned NoneType, not a torch.nn.Module"),
    ("schedule-text", PLUG, [*S, "--set", "search.tau.schedule=plug.py:text_schedule"],
     "returned 'hot'"),
    ("schedule-nan", PLUG, [*S, "--set", "search.tau.schedule=plug.py:nan_schedule"],
     "returned nan at step 2"),
    ("space-no-genotype", PLUG, [*P, "space=plug.py:NoGenotype"],
     "does not implement genotype()"),
    ("space-wrong-shape", PLUG, [*P, "space=plug.py:WrongShape"],
     "expected (2, 10)"),
    ("space-file-missing", None, [*P, "space=gone.py:SPACE"], "no such file"),
    ("space-attr-missing", PLUG, [*P, "space=plug.py:SPACE"], "has no attribute 'SPACE'"),
    # genotype pictures and listing
    ("plot-out-file", write("picture.png", "x"), ["genotype", "plot", DARTS_V2, "--out",
                                                  "picture.png"], "is a file"),
    ("list-space", None, ["list", "--space", "gone.py:SPACE"], "no such file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, capsys, case):
    _, setup, argv, phrase = case
    if setup is not None:
        setup(ws)
    before = snapshot(ws)
    code, err = call(argv, capsys)
    assert code == 2, err
    assert phrase in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(ws) == before
    assert not (ws / "IMPORTED").exists()


def test_the_table_is_as_large_as_promised():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


# -- the trust boundary, from the other side ------------------------------------------------
def test_a_plugin_named_on_the_command_line_is_trusted(ws, capsys):
    genotype_with_helper(ws)
    args = ["train", "--config", "nb.yaml", "--genotype", "dl/genotype.json", "--quiet",
            "--set", "train.epochs=1"]
    code, err = call([*args, "--run-dir", "refused"], capsys)
    assert code == 2 and "--plugin" in err and not (ws / "IMPORTED").exists()
    code, err = call([*args, "--run-dir", "ok", "--plugin", "dl/helper.py:SPACE"], capsys)
    assert code == 0, err
    assert (ws / "IMPORTED").exists() and (ws / "ok" / "result.json").is_file()


def test_plugin_paths_are_stored_absolute_and_resume_from_elsewhere(ws, capsys, monkeypatch):
    (ws / "proj").mkdir()
    (ws / "proj" / "myspace.py").write_text(
        "import dataclasses, nas\n"
        "from search_spaces.nasbench201 import SPACE as NB, NB201Supernet\n"
        "class Mine(NB201Supernet):\n"
        "    def genotype(self):  # a genotype that does not name its space is stamped\n"
        "        return dataclasses.replace(super().genotype(), space='')\n"
        "SPACE = nas.SearchSpace(supernet=Mine, network=NB.network)\n")
    monkeypatch.chdir(ws / "proj")
    code, err = call(["search", "--config", "../nb.yaml", "--run-dir", "r", "--quiet",
                      "--set", "space=myspace.py:SPACE", "search.epochs=1"], capsys)
    assert code == 0, err
    spec = f"{(ws / 'proj' / 'myspace.py').resolve()}:SPACE"
    assert yaml.safe_load((ws / "proj" / "r" / "config.yaml").read_text())["space"] == spec
    assert json.loads((ws / "proj" / "r" / "genotype.json").read_text())["space"] == spec
    monkeypatch.chdir(ws)
    code, err = call(["search", "--resume", "proj/r"], capsys)  # the saved config is data
    assert code == 2 and f"--plugin {spec}" in err
    code, err = call(["search", "--resume", "proj/r", "--plugin", spec, "--quiet"], capsys)
    assert code == 0, err


# -- resume -------------------------------------------------------------------------------------
def test_resume_with_more_epochs_says_so_and_stretches_the_schedules(ws, capsys):
    edit_saved_config("search.epochs", 2)(ws)
    code = main(["search", "--resume", "run"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "config.yaml was edited: search.epochs 1 -> 2" in printed.out + printed.err
    metrics = [json.loads(line) for line in (ws / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    # epoch 2 of 2 on the stretched cosine, as a straight 2-epoch run has it
    lr, lr_min = TINY_SEARCH.get("search", {}).get("lr", 0.025), 0.001
    assert metrics[1]["lr"] == pytest.approx(lr_min + (lr - lr_min) * (1 + np.cos(np.pi / 2)) / 2)


def test_a_failed_start_leaves_no_run_directory(ws, capsys):
    PLUG(ws)
    before = snapshot(ws)
    # the supernet passes the dry run, then fails in the first step, after runs/<name>-<time>
    # was made: what this invocation created is removed
    with pytest.raises(RuntimeError, match="shows only in training"):
        main(["search", "--config", "plain.yaml", "--set", "space=plug.py:TrainFails", "--quiet"])
    assert not (ws / "runs").exists() and snapshot(ws) == before


def _nas(args: list[str], cwd: Path) -> subprocess.Popen:
    # one thread, as in this process (conftest): under CPU contention OpenMP's spinning makes
    # two threads many times slower; Ctrl-C default, as a terminal gives it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nas", *args], cwd=cwd, text=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_sigkill_at_a_random_moment_then_resume_equals_a_straight_run(ws):
    args = ["search", "--config", "tiny.yaml", "--quiet", "--set", "search.epochs=5"]
    straight = _nas([*args, "--run-dir", "straight"], ws)
    assert straight.wait(300) == 0, straight.stderr.read()
    killed = _nas([*args, "--run-dir", "killed"], ws)
    metrics = ws / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break  # somewhere in epoch 3: writing metrics, genotypes, events or the checkpoint
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    resumed = _nas(["search", "--resume", "killed", "--quiet"], ws)
    assert resumed.wait(300) == 0, resumed.stderr.read()

    def lines(run: str) -> list[dict]:
        return [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                for l in (ws / run / "metrics.jsonl").read_text().splitlines()]

    assert lines("killed") == lines("straight")
    assert sorted(os.listdir(ws / "killed" / "genotypes")) == \
        sorted(os.listdir(ws / "straight" / "genotypes"))
    a = torch.load(ws / "killed" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(ws / "straight" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("arch_logits"))


@pytest.mark.parametrize("delay", [0.3, 1.2])
def test_ctrl_c_while_starting_is_one_line_and_130(ws, delay):
    proc = _nas(["search", "--config", "tiny.yaml", "--run-dir", "x"], ws)
    # importing torch, reading the data, or building the supernet (Python's own first 50 ms of
    # start-up, before any line of ours runs, are out of reach)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("nas")
    assert "interrupted" in err and len(err.strip().splitlines()) == 1
