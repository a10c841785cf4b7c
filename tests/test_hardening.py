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
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import DARTS_V2, TINY_SEARCH
from nas.cli import main
from nas.errors import InputError
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


FEW_SHOT = {"space": "nasbench201", "device": "cpu",
            "data": {"image_size": 8, "pad": 1, "limit": 64, "workers": 0},
            "supernet": {"C": 4, "cells_per_stage": 1}, "network": {"C": 4, "cells_per_stage": 1},
            "search": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2,
                       "budget": {"params": 6000},
                       "few_shot": {"epochs": 1, "select_epochs": 1, "select_batch_size": 16,
                                    "workers": 1}}}


@pytest.fixture(scope="session")
def few_shot_run(tmp_path_factory, cifar_root) -> Path:
    """A finished tiny budgeted search with its few-shot phase (few_shot.json, costs.json)."""
    root = tmp_path_factory.mktemp("few_shot")
    cfg = {**FEW_SHOT, "data": {**FEW_SHOT["data"], "root": str(cifar_root)}}
    (root / "fs.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", "--config", str(root / "fs.yaml"), "--run-dir", str(root / "fs"),
                 "--quiet"]) == 0
    return root / "fs"


@pytest.fixture
def ws(tmp_path, cifar_root, finished_run, few_shot_run, monkeypatch, capsys) -> Path:
    """A workspace as a user has one: data, a config, a finished run (and a finished few-shot
    search, fs); the cwd, and HOME."""
    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-batches-py")
    shutil.copytree(few_shot_run, tmp_path / "fs")
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

def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")


def image_folder_with(content: bytes):
    """An image folder (two classes of real images) with one more file of ``content``."""
    def setup(ws: Path) -> None:
        from PIL import Image
        for cls in ("a", "b"):
            (ws / "imgs" / "train" / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(ws / "imgs" / "train" / cls / "1.png")
        (ws / "imgs" / "train" / "b" / "2.png").write_bytes(content)
    return setup


def edit_checkpoint(**values):
    def setup(ws: Path) -> None:
        state = torch.load(ws / "run" / "checkpoint.pt", weights_only=True)
        state.update(values)
        torch.save(state, ws / "run" / "checkpoint.pt")
    return setup


def _shared_bomb(levels: int = 30) -> list:
    """A list whose expansion has 2^levels leaves, made of shared references (as YAML aliases
    or a pickle's memo make it)."""
    value: list = ["x"]
    for _ in range(levels):
        value = [value, value]
    return value


def train_checkpoint_without(key: str):
    def setup(ws: Path) -> None:
        state = {"kind": "train", "epoch": 1, "config": {}, "genotype": {}, "space": "darts",
                 "num_classes": 10, "model": {}}
        del state[key]
        torch.save(state, ws / "t.pt")
    return setup


def garbage_metrics_line(ws: Path) -> None:
    path = ws / "run" / "metrics.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(first + "\nnot json\n" + first.replace('"epoch": 1', '"epoch": 2') + "\n")


# nine aliases deep, nine times each: 9^9 values once expanded (the "billion laughs")
ALIAS_BOMB = "x: &a0 [lol]\n" + "".join(
    f"x{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]\n" for k in range(1, 10)) + "search: *a9\n"
ALIAS_BOMB_FLOW = "[&a0 [lol], " + ", ".join(
    f"&a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 10)) + "]"

S = ["search", "--config", "tiny.yaml", "--run-dir", "out"]
R = ["run", "--config", "tiny.yaml", "--run-dir", "out", "--set"]
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
    # -- issue 22 --------------------------------------------------------------------------------
    # nas run checks the retraining sections before it searches
    ("run-network-C", None, [*R, "network.C=0"], "network.C"),
    ("run-network-key", None, [*R, "network.widht=3"], "network.widht: unknown key"),
    ("run-no-network-builder", PLUG, ["run", "--config", "plain.yaml", "--run-dir", "out",
                                      "--set", "space=plug.py:TrainFails"],
     "has no network builder"),
    # configs that would hang or overflow the stack
    ("yaml-alias-bomb", write("bomb.yaml", ALIAS_BOMB), ["search", "--config", "bomb.yaml"],
     "aliases"),
    ("set-alias-bomb", None, [*S, "--set", "supernet.x=" + ALIAS_BOMB_FLOW], "aliases"),
    ("yaml-deep", write("deep.yaml", "a: " + "[" * 50_000 + "]" * 50_000),
     ["search", "--config", "deep.yaml"], "nested too deeply"),
    ("yaml-deep-mapping", write("deep.yaml", "a: " + "{b: " * 100 + "1" + "}" * 100),
     ["search", "--config", "deep.yaml"], "nested more than 64 levels"),
    ("genotype-json-deep", write("g.json", "[" * 50_000 + "]" * 50_000), [*T, "g.json"],
     "nested too deeply"),
    ("genotype-text-deep", None, [*T, '{"cells": ' + "[" * 50_000 + "]" * 50_000 + "}"],
     "nested too deeply"),
    # file names the system refuses
    ("config-symlink-loop", lambda ws: (ws / "loop.yaml").symlink_to("loop.yaml"),
     ["search", "--config", "loop.yaml"], "cannot read config file"),
    ("config-name-too-long", None, ["search", "--config", "c" * 300 + ".yaml"],
     "cannot read config file"),
    ("data-dir-too-long", None, [*S, "--data-dir", "d" * 300], "File name too long"),
    ("run-dir-too-long", None, [*S[:-1], "new/" + "r" * 300 + "/x"], "over the system's limit"),
    ("resume-too-long", None, ["search", "--resume", "r" * 300], "over the system's limit"),
    ("genotype-too-long", None, [*T, "g" * 300 + ".json"], "genotype"),
    ("plot-too-long", None, ["plot", "p" * 300], "cannot read the run"),
    # run names
    ("run-name-nul", write("nul.yaml", 'name: "a\\0b"\n'), ["search", "--config", "nul.yaml"],
     "NUL"),
    ("data-root-nul", None, [*S, "--set", 'data.root="d\\0"'], "NUL"),
    ("run-name-path", None, ["search", "--config", "tiny.yaml", "--set", "name=../../x"],
     "a run name is a name, not a path"),
    ("run-name-dotdot", None, ["search", "--config", "tiny.yaml", "--set", "name=.."],
     "a run name is a name, not a path"),
    ("run-name-too-long", None, ["search", "--config", "tiny.yaml", "--set", "name=" + "n" * 300],
     "at most 200 characters"),
    # data
    ("image-bomb", image_folder_with(png_header(20_000, 10_000)),
     [*S, "--set", "data.dataset=imagefolder", "data.root=imgs"], "refusing to read image"),
    # genotypes, evaluate, plot
    ("genotype-show-state", None, ["genotype", "show", '{"cells": {"cell": [[["nor_conv_3x3", 9]]]}, "inputs": {"cell": 1}}'],
     "node 1 reads state 9"),
    ("genotype-plot-state", None, ["genotype", "plot", '{"cells": {"cell": [[["nor_conv_3x3", 9]]]}, "inputs": {"cell": 1}}'],
     "node 1 reads state 9"),
    ("genotype-concat-state", None, ["genotype", "show", DARTS_V2.replace(
        "reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 3, 4, 9]")], "concatenates state 9"),
    ("genotype-range-2^63", None, ["genotype", "show", DARTS_V2.replace(
        "normal_concat=[2, 3, 4, 5]", "normal_concat=range(0, 9223372036854775808)")],
     "range() of more than"),
    ("evaluate-no-config", train_checkpoint_without("config"),
     ["evaluate", "--checkpoint", "t.pt"], "its 'config' is missing"),
    ("evaluate-threads", None, ["evaluate", "--checkpoint", "run", "--threads", "0"], "--threads"),
    ("plot-onto-file", write("p.png", "x"), ["plot", "run", "--out", "p.png"], "is a file"),
    ("plot-garbage-metrics", garbage_metrics_line, ["plot", "run"], "metrics.jsonl, line 2"),
    ("plot-garbage-probabilities", write("run/probabilities.jsonl", '{"epoch": 1}\n'),
     ["plot", "run"], "do not hold the ops"),
    # plugins
    ("plugin-sys-exit", write("exits.py", "import sys\nsys.exit(7)\n"),
     [*P, "space=exits.py:SPACE"], "exits.py' called sys.exit(7)"),
    ("plugin-flag-sys-exit", write("exits.py", "import sys\nsys.exit(7)\n"),
     [*S, "--plugin", "exits.py:SPACE"], "exits.py' called sys.exit(7)"),
    # checkpoints and resume
    ("checkpoint-epoch-negative", edit_checkpoint(epoch=-2), ["search", "--resume", "run"],
     "its epoch is -2"),
    ("checkpoint-epoch-text", edit_checkpoint(epoch="3"), ["search", "--resume", "run"],
     "its epoch is '3'"),
    ("checkpoint-epoch-float", edit_checkpoint(epoch=1.5), ["search", "--resume", "run"],
     "its epoch is 1.5"),
    ("checkpoint-epoch-beyond", edit_checkpoint(epoch=99), ["search", "--resume", "run"],
     "its config plans 1 epochs"),
    ("checkpoint-config-bomb", edit_checkpoint(config=_shared_bomb()), ["search", "--resume", "run"],
     "aliases"),
    ("resume-lost-checkpoint", lambda ws: (ws / "run" / "checkpoint.pt").unlink(),
     ["search", "--resume", "run"], "holds 1 finished epoch(s)"),
    ("resume-force-with-checkpoint", None, ["search", "--resume", "run", "--force"],
     "drop --force"),
    # threads
    ("threads-zero", None, [*S, "--threads", "0"], "--threads must be from 1"),
    ("threads-config", None, [*S, "--set", "threads=0"], "threads: must be from 1"),
    ("threads-text", None, [*S, "--set", "threads=many"], "threads: expected an integer"),
]


# -- issue 37: what a resumed run reads back -----------------------------------------------------
def edit_json(name: str, change):
    """``change(data)`` edits the JSON of fs/``name`` in place."""
    def setup(ws: Path) -> None:
        path = ws / "fs" / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return setup


def a_part(change):
    """Edit the first part of few_shot.json that holds a cell."""
    def edit(state: dict) -> None:
        change(next(p for p in state["parts"].values() if p["genotype"] is not None))
    return edit_json("few_shot.json", edit)


def a_cell_edge(change):
    """Edit the first edge, [op, input], of that part's cell."""
    return a_part(lambda part: change(part["genotype"]["cells"]["cell"][0][0]))


def a_directory(name: str):
    def setup(ws: Path) -> None:
        path = ws / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        (path / "inner").mkdir(parents=True)
    return setup


FS = ["search", "--resume", "fs"]
FEW_SHOT_CASES = [  # (id, setup, phrase)
    ("not-json", write("fs/few_shot.json", "{not json"), "few_shot.json: it is not JSON"),
    ("empty", write("fs/few_shot.json", ""), "it is not JSON"),
    ("binary", lambda ws: (ws / "fs" / "few_shot.json").write_bytes(b"\xff\xfe\x00"),
     "it is not JSON"),
    ("a-list", write("fs/few_shot.json", "[1, 2]"), "its content is a list, not a mapping"),
    ("a-number", write("fs/few_shot.json", "3"), "its content is a int"),
    ("a-directory", a_directory("fs/few_shot.json"), "it is a directory, not a file"),
    ("deep", write("fs/few_shot.json", "[" * 50_000 + "]" * 50_000), "nested too deeply"),
    ("no-parts", edit_json("few_shot.json", lambda s: s.pop("parts")), "has no 'parts'"),
    ("no-edge", edit_json("few_shot.json", lambda s: s.pop("edge")), "has no 'edge'"),
    ("edge-text", edit_json("few_shot.json", lambda s: s.update(edge="cell 5")),
     "not [cell kind, edge number]"),
    ("edge-kind", edit_json("few_shot.json", lambda s: s.update(edge=["reduce", 0])),
     "cell kind 'reduce' is not one of the supernet's"),
    ("edge-number", edit_json("few_shot.json", lambda s: s.update(edge=["cell", 99])),
     "edge 99 is not one of the 6 edges"),
    ("edge-negative", edit_json("few_shot.json", lambda s: s.update(edge=["cell", -1])),
     "edge -1 is not one of"),
    ("parts-list", edit_json("few_shot.json", lambda s: s.update(parts=[1])),
     "parts are not a mapping"),
    ("part-op-unknown", edit_json("few_shot.json", lambda s: s["parts"].update(
        sep_conv_9x9=next(iter(s["parts"].values())))), "part 'sep_conv_9x9' is not an op"),
    ("part-text", edit_json("few_shot.json", lambda s: s["parts"].update(none="done")),
     "part none is a str, not a mapping"),
    ("part-no-acc", a_part(lambda p: p.pop("acc")), "has no 'acc'"),
    ("part-no-genotype", a_part(lambda p: p.pop("genotype")), "has no 'genotype'"),
    ("score-nan", a_part(lambda p: p.update(acc=float("nan"))), "are not a finite loss"),
    ("score-inf", a_part(lambda p: p.update(loss=float("inf"))), "are not a finite loss"),
    ("score-text", a_part(lambda p: p.update(acc="high")), "are not a finite loss"),
    ("score-over-100", a_part(lambda p: p.update(acc=150.0)), "accuracy in [0, 100]"),
    ("score-bool", a_part(lambda p: p.update(acc=True)), "are not a finite loss"),
    ("seconds-text", a_part(lambda p: p.update(seconds="-1")), "seconds is '-1', not a number"),
    ("seconds-nan", a_part(lambda p: p.update(seconds=float("nan"))), "seconds is 'nan'"),
    ("phase-seconds", edit_json("few_shot.json", lambda s: s.update(phase_seconds="long")),
     "phase_seconds is 'long'"),
    ("cell-garbage", a_part(lambda p: p.update(genotype={"cells": "x"})), "cell does not parse"),
    ("cell-no-cells", a_part(lambda p: p.update(genotype=[1])), "cell does not parse"),
    ("cell-op-unknown", a_cell_edge(lambda e: e.__setitem__(0, "conv_9x9")),
     "op 'conv_9x9' of its cell cell is not one of the space's"),
    ("cell-op-blank", a_cell_edge(lambda e: e.__setitem__(0, "   ")), "cell does not parse"),
    ("cell-op-newline", a_cell_edge(lambda e: e.__setitem__(0, "none\nskip")),
     "cell does not parse"),
    ("cell-state-later", a_cell_edge(lambda e: e.__setitem__(1, 3)), "reads state 3"),
    ("cell-kind", a_part(lambda p: p["genotype"]["cells"].update(
        reduce=p["genotype"]["cells"]["cell"])), "its cell kinds are"),
    ("cell-nodes", a_part(lambda p: p["genotype"]["cells"]["cell"].pop()), "has 2 nodes, not 3"),
    ("cell-space", a_part(lambda p: p["genotype"].update(space="darts")),
     "it is of the darts space"),
    ("scores-without-cell", a_part(lambda p: p.update(genotype=None)), "has scores but no cell"),
]
READ_BACK_CASES = [  # the other files a resumed search or retraining reads or appends to
    ("costs-not-json", write("fs/costs.json", "nan nan"), FS, "costs.json: it is not JSON"),
    ("costs-directory", a_directory("fs/costs.json"), FS, "costs.json: it is a directory"),
    ("metrics-directory", a_directory("run/metrics.jsonl"), ["search", "--resume", "run"],
     "metrics.jsonl: it is a directory, not a file"),
    ("probabilities-directory", a_directory("run/probabilities.jsonl"),
     ["search", "--resume", "run"], "probabilities.jsonl: it is a directory"),
    ("genotypes-file", lambda ws: [shutil.rmtree(ws / "run" / "genotypes"),
                                   (ws / "run" / "genotypes").write_text("x")],
     ["search", "--resume", "run"], "genotypes: it is not a regular file, not a directory"),
    ("heatmaps-file", lambda ws: [shutil.rmtree(ws / "run" / "heatmaps"),
                                  (ws / "run" / "heatmaps").write_text("x")],
     ["search", "--resume", "run"], "heatmaps: it is not a regular file, not a directory"),
    ("checkpoint-directory", a_directory("run/checkpoint.pt"), ["search", "--resume", "run"],
     "checkpoint.pt: it is a directory, not a file"),
    ("metrics-broken-link", lambda ws: [(ws / "run" / "metrics.jsonl").unlink(),
                                        (ws / "run" / "metrics.jsonl").symlink_to("gone")],
     ["search", "--resume", "run"], "metrics.jsonl: it is a broken link"),
    ("saved-config-directory", a_directory("run/config.yaml"), ["search", "--resume", "run"],
     "config.yaml"),
    ("steps-file", write("run/steps", "x"), ["search", "--resume", "run"],
     "steps: it is not a regular file, not a directory"),
]
CASES += [(f"few-shot-{name}", setup, FS, phrase) for name, setup, phrase in FEW_SHOT_CASES]
CASES += READ_BACK_CASES


# -- issue 37: text that is not a name, numbers that are not counts --------------------------------
def train_checkpoint_with(**values):
    def setup(ws: Path) -> None:
        torch.save({"kind": "train", "epoch": 1, "config": {}, "genotype": {}, "space": "darts",
                    "num_classes": 10, "model": {}, **values}, ws / "t.pt")
    return setup


NOT_NAMES = {"blank": "", "spaces": "   ", "newline": "none\nskip_connect", "tab": "none\t",
             "escape": "none\x1b[2J", "nul": "a\x00b", "line-separator": "none\u2028"}
NOT_CLASSES = {"text": "ten", "zero": 0, "negative": -3, "fraction": 2.5, "bool": True,
               "huge": 10 ** 12, "list": [10]}
CASES += [(f"genotype-show-op-{name}", None, ["genotype", "show", json.dumps(
    {"cells": {"cell": [[[op, 0]]]}, "inputs": {"cell": 1}})], "printable characters")
    for name, op in NOT_NAMES.items()]
CASES += [(f"genotype-show-kind-{name}", None, ["genotype", "show", json.dumps(
    {"cells": {op: [[["none", 0]]]}, "inputs": {op: 1}})], "printable characters")
    for name, op in NOT_NAMES.items()]
CASES += [(f"genotype-file-op-{name}", write("g.json", json.dumps(
    {"cells": {"cell": [[[op, 0]]]}, "inputs": {"cell": 1}})), ["genotype", "show", "g.json"],
    "printable characters") for name, op in NOT_NAMES.items()]
CASES += [(f"num-classes-{verb}-{name}", train_checkpoint_with(num_classes=value), argv,
           "its num_classes is") for name, value in NOT_CLASSES.items()
          for verb, argv in (("evaluate", ["evaluate", "--checkpoint", "t.pt"]),
                             ("export", ["export", "t.pt", "--format", "torchscript"]))]
# every count a user passes has one rule, the same bounds in every command (nas.config.check_count)
TOO_LARGE = {"zero": "0", "negative": "-1", "huge": "100000000", "2^63": str(2 ** 63)}
COUNT_FLAGS = [  # (id, argv before the value, phrase)
    ("export-batch", ["export", "run", "--format", "torchscript", "--batch"], "--batch must be from 1 to 8192"),
    ("export-image-size", ["export", "run", "--format", "torchscript", "--image-size"],
     "--image-size must be from 1 to 1024"),
    ("profile-batch", ["profile", "DARTS_V2", "--batch"], "--batch must be from 1 to 8192"),
    ("profile-image-size", ["profile", "DARTS_V2", "--image-size"], "--image-size must be from 1 to 1024"),
    ("profile-threads", ["profile", "DARTS_V2", "--threads"], "--threads must be from 1 to 1024"),
    ("profile-runs", ["profile", "DARTS_V2", "--runs"], "--runs must be from 1 to 10000"),
    ("evaluate-batch", ["evaluate", "--checkpoint", "run", "--batch-size"],
     "--batch-size must be from 1 to 8192"),
    ("evaluate-threads", ["evaluate", "--checkpoint", "run", "--threads"],
     "--threads must be from 1 to 1024"),
    ("search-threads", [*S, "--threads"], "--threads must be from 1 to 1024"),
    ("train-threads", [*T, DARTS_V2, "--threads"], "--threads must be from 1 to 1024"),
]
COUNT_KEYS = [("search.batch_size", 1, 8192), ("train.batch_size", 1, 8192),
              ("train.eval_batch_size", 1, 8192), ("search.budget.latency_batch", 1, 8192),
              ("search.few_shot.select_batch_size", 1, 8192), ("search.few_shot.workers", 1, 1024),
              ("threads", 1, 1024), ("data.workers", 0, 1024), ("search.samples", 2, 1024)]
CASES += [(f"count-{flag}-{name}", None, [*argv, value], phrase)
          for flag, argv, phrase in COUNT_FLAGS for name, value in TOO_LARGE.items()]
CASES += [(f"count-{key}-{name}", None, [*S, "--set", f"{key}={value}"],
           f"{key}: must be from {least} to {most}")
          for key, least, most in COUNT_KEYS for name, value in TOO_LARGE.items()
          if int(value) < least or int(value) > most]
CASES += [(f"num-classes-resume-{name}", edit_checkpoint(num_classes=value),
           ["search", "--resume", "run"], "its num_classes is")
          for name, value in NOT_CLASSES.items()]


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
    if argv[:2] == ["search", "--resume"]:  # and what it says to do
        assert "delete it" in err or "start the run again" in err or \
            not any(f in err for f in ("few_shot.json", "costs.json", "metrics.jsonl")), err


def _costs_edit(change):
    def edit(table: dict) -> dict:
        change(table)
        return table
    return edit


COSTS_CASES = {  # what a resumed latency-budgeted run reads: every class refused in one line
    "a-list": lambda t: [t], "text": lambda t: "costs",
    "no-base": _costs_edit(lambda t: t.pop("base")), "no-ops": _costs_edit(lambda t: t.pop("ops")),
    "base-nan": _costs_edit(lambda t: t["base"].update(params=float("nan"))),
    "base-negative": _costs_edit(lambda t: t["base"].update(params=-1.0)),
    "base-text": _costs_edit(lambda t: t["base"].update(params="many")),
    "ops-list": _costs_edit(lambda t: t.update(ops=[1])),
    "rows-text": _costs_edit(lambda t: t["ops"]["params"].update(cell="rows")),
    "row-inf": _costs_edit(lambda t: t["ops"]["params"]["cell"][0].__setitem__(0, float("inf"))),
    "row-bool": _costs_edit(lambda t: t["ops"]["params"]["cell"][0].__setitem__(0, True)),
    "how-list": _costs_edit(lambda t: t.update(how=["measured"])),
}


@pytest.mark.parametrize("name", COSTS_CASES)
def test_a_saved_cost_table_that_does_not_read_is_refused_in_one_line(few_shot_run, tmp_path, name):
    from nas.readback import saved_costs
    path = tmp_path / "costs.json"
    assert saved_costs(few_shot_run / "costs.json")["base"]["params"] > 0  # the file as written
    path.write_text(json.dumps(COSTS_CASES[name](json.loads((few_shot_run / "costs.json").read_text()))))
    with pytest.raises(InputError) as exc:
        saved_costs(path)
    message = str(exc.value)
    assert message.startswith(f"cannot resume from {path}: ") and "\n" not in message
    assert message.endswith("delete it to measure the costs again")


ALLOCATION_FAILURES = [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 103079215104 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 96.00 GiB"), MemoryError()]


@pytest.mark.parametrize("failure", ALLOCATION_FAILURES, ids=lambda e: type(e).__name__)
def test_sizes_that_do_not_fit_in_memory_together_are_one_line(ws, capsys, monkeypatch, failure):
    """Each size within its bound, the batch of images they make too large for this machine
    (a 103 GB batch is not allocated here: the failure is raised where the allocation is)."""
    from nas import profiling
    from nas.runtime import within_memory

    def allocate(*args, **kwargs):
        raise failure

    monkeypatch.setattr(profiling, "profile_network", allocate)
    before = snapshot(ws)
    code, err = call(["profile", "DARTS_V2", "--batch", "8192", "--image-size", "1024", "--set",
                      "network.C=4", "network.cells=3"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "out of memory at batch 8192 of 1024x1024 images: choose a smaller --batch" in err
    assert snapshot(ws) == before
    with pytest.raises(RuntimeError, match="a bug"):  # any other error is not a size's
        with within_memory("batch 1", "no"):
            raise RuntimeError("a bug")


SCRIPT_OUTS = {"a-file": "--out a-file is a file, not a directory",
               "o" * 300: "over the system's limit", "a-file/below": "not a writable directory"}
SCRIPT_USAGE = {"--no-such-flag": "--help)"}  # unrecognized, or a required one missing


@pytest.mark.parametrize("script", ["benchmark", "estimators", "gpu_check", "ddp_benchmark",
                                    "study", "oneshot_ranking"])
def test_scripts_refuse_in_one_line_like_the_cli(ws, script):
    """Usage errors in one line; an output they cannot write refused before their work."""
    root = Path(__file__).resolve().parents[1]
    (ws / "a-file").write_text("a user's file")
    cases = dict(SCRIPT_USAGE)
    if script in ("benchmark", "estimators", "gpu_check"):
        cases.update({f"--out {out}": phrase for out, phrase in SCRIPT_OUTS.items()})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    for args, phrase in cases.items():
        before = snapshot(ws)
        out = subprocess.run([sys.executable, str(root / "scripts" / f"{script}.py"),
                              *(["--dry-run"] if script == "gpu_check" else []), *args.split()],
                             cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr)
        assert phrase in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert snapshot(ws) == before


def test_nan_architecture_logits_stop_the_search_before_a_file_holds_them(ws, capsys):
    """A huge dual_lr makes the budget's multipliers, then the logits, non-finite while the
    losses stay finite: the run stops in one line (status 1) at that epoch's end."""
    cfg = {**FEW_SHOT, "data": {**FEW_SHOT["data"], "root": str(ws / "data")}}
    cfg["search"] = {**cfg["search"], "epochs": 3, "few_shot": {"epochs": 0},
                     "budget": {"params": 4900, "dual_lr": 1e38}}
    (ws / "dual.yaml").write_text(yaml.safe_dump(cfg))
    code, err = call(["search", "--config", "dual.yaml", "--run-dir", "nan", "--quiet"], capsys)
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "became nan in epoch 3" in err and "search.budget.dual_lr" in err, err
    assert "the last good checkpoint is nan/checkpoint.pt (epoch 2)" in err
    text = (ws / "nan" / "metrics.jsonl").read_text()
    assert [json.loads(line)["epoch"] for line in text.splitlines()] == [1, 2]
    assert "NaN" not in text and "null" not in text
    assert torch.load(ws / "nan" / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_a_diverging_few_shot_selection_stops_in_one_line_and_writes_no_nan_score(ws, capsys):
    cfg = {**FEW_SHOT, "data": {**FEW_SHOT["data"], "root": str(ws / "data")}}
    cfg["search"] = {**cfg["search"], "grad_clip": 0,
                     "few_shot": {**cfg["search"]["few_shot"], "select_lr": 1e30}}
    (ws / "select.yaml").write_text(yaml.safe_dump(cfg))
    code, err = call(["search", "--config", "select.yaml", "--run-dir", "sel", "--quiet"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "diverged (loss nan): try a lower search.few_shot.select_lr" in err
    state = ws / "sel" / "few_shot.json"
    assert not state.exists() or "NaN" not in state.read_text()


def test_the_table_is_as_large_as_promised():
    assert len(CASES) >= 130 and len({c[0] for c in CASES}) == len(CASES)


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


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _in_the_few_shot_phase(ws: Path, name: str) -> tuple[subprocess.Popen, set[int]]:
    """A search (in a process group of its own, as a terminal starts it) with two forked part
    processes, once both run: (the search, their pids)."""
    cfg = {**FEW_SHOT, "data": {**FEW_SHOT["data"], "root": str(ws / "data")}}
    cfg["search"] = {**cfg["search"], "few_shot": {**cfg["search"]["few_shot"], "workers": 2,
                                                   "epochs": 500}}
    (ws / "fs2.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "search", "--config", "fs2.yaml", "--run-dir", name,
         "--quiet", "--threads", "2"], cwd=ws, text=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, parts = time.time() + 240, set()
    while time.time() < deadline and proc.poll() is None and len(parts) < 2:
        parts = _children(proc.pid)
        time.sleep(0.1)
    assert len(parts) == 2, proc.stderr.read() if proc.poll() is not None else parts
    time.sleep(0.5)  # the parts are searching
    return proc, parts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_few_shot_processes_die_with_a_killed_parent(ws):
    proc, parts = _in_the_few_shot_phase(ws, "killed")
    proc.kill()
    proc.wait(30)
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in parts):
        time.sleep(0.1)
    assert not [p for p in parts if _alive(p)], "orphaned part processes go on running"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_group_in_the_few_shot_phase_is_one_line_and_leaves_nothing(ws, sig,
                                                                                   status):
    proc, parts = _in_the_few_shot_phase(ws, "stopped")
    os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does, or `kill -TERM -PGID`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "continue with: nas search --resume stopped" in err
    assert not [p for p in parts if _alive(p)]


@pytest.mark.slow
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


# -- issue 22: threads ----------------------------------------------------------------------------
def test_cgroup_quotas_are_read_from_v2_and_v1_trees(tmp_path):
    from nas.threads import cgroup_cpus
    v2 = tmp_path / "v2"
    (v2 / "jobs" / "mine").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "jobs" / "cpu.max").write_text("150000 100000\n")   # the parent's quota binds too
    (v2 / "jobs" / "mine" / "cpu.max").write_text("400000 100000\n")
    assert cgroup_cpus("0::/jobs/mine\n", v2) == 1.5
    assert cgroup_cpus("0::/\n", v2) is None  # no quota: "max"
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker" / "c1").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "c1" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu,cpuacct" / "docker" / "c1" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus("4:memory:/docker/c1\n3:cpu,cpuacct:/docker/c1\n", v1) == 2.0
    (v1 / "cpu,cpuacct" / "docker" / "c1" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus("3:cpu,cpuacct:/docker/c1\n", v1) is None


def test_the_default_thread_count_is_the_usable_cpus_others_leave_free(monkeypatch):
    from nas import threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.usable_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)  # a fractional quota rounds down
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 0.5)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)

    def others(busy: float):  # /proc/stat as it reads with `busy` CPUs kept busy by others
        hz = os.sysconf("SC_CLK_TCK")
        start = threads.Sample(100.0, (0, 0), own=5.0)
        end = threads.Sample(102.0, (int((busy + 0.5) * 2 * hz), 4 * 2 * hz), own=6.0)
        monkeypatch.setattr(threads, "_started", start)
        monkeypatch.setattr(threads.Sample, "now", classmethod(lambda cls, cpus: end))
        monkeypatch.setattr(threads.time, "monotonic", lambda: 102.0)

    others(0.0)  # this process used half a CPU (1 s of 2), nobody else anything
    assert threads.choose().count == 4
    others(2.0)
    chosen = threads.choose()
    assert chosen.count == 2 and "about 2.0 busy with other work" in chosen.note()
    others(3.9)
    assert threads.choose().count == 1
    others(0.0)
    assert threads.choose(processes=2).count == 2  # torchrun: the CPUs are shared
    assert threads.choose(3).count == 3 and "threads setting" in threads.choose(3).why
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose().count == 2 and threads.choose().why == "OMP_NUM_THREADS"
    assert threads.choose(1).count == 1  # the config and --threads come first


def test_others_busy_takes_this_process_out():
    from nas.threads import Sample, others_busy
    hz = os.sysconf("SC_CLK_TCK")
    start, end = Sample(0.0, (0, 0), 0.0), Sample(1.0, (2 * hz, 2 * hz), 1.0)
    assert others_busy(start, end) == pytest.approx(1.0)  # 2 CPUs busy, one of them us
    assert others_busy(start, Sample(1.0, None, 1.0)) is None  # no /proc/stat


@pytest.mark.slow
def test_the_wait_policy_is_set_before_torch_unless_the_user_chose():
    code = ("import os, sys\nfrom nas.threads import set_wait_policy\n"
            "print(set_wait_policy(), os.environ.get('OMP_WAIT_POLICY'))\n"
            "import torch\nos.environ.pop('OMP_WAIT_POLICY')\nprint(set_wait_policy())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "PASSIVE", "False"], out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True)
    assert out.stdout.split()[:2] == ["False", "ACTIVE"], out.stderr


@pytest.mark.slow
def test_the_header_states_the_threads_and_the_flag_sets_them(ws, capsys):
    code = main(["search", "--config", "tiny.yaml", "--run-dir", "t2", "--threads", "2",
                 "--set", "search.epochs=1"])
    header = capsys.readouterr().out.splitlines()[0]
    assert code == 0 and header.endswith(", 2 threads (threads setting)"), header
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    code = main(["search", "--resume", "t2", "--threads", "1"])  # a speed setting may change
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["search", "--config", "tiny.yaml", "--run-dir", "t1", "--set", "search.epochs=1"])
    header = capsys.readouterr().out.splitlines()[0]
    assert code == 0 and header.endswith(", 1 thread (OMP_NUM_THREADS)"), header  # conftest's


@pytest.mark.slow
def test_the_contention_benchmark_times_each_setting(ws, tmp_path):
    from test_estimators import _load_script
    bench = _load_script("benchmark")
    out = tmp_path / "bench"
    assert bench.main(["--contention", "--busy", "1", "--settings", "default", "1:spin",
                       "--config", "tiny.yaml", "--data-dir", "data", "--set", "search.epochs=1",
                       "--out", str(out)]) == 0
    rows = json.loads((out / "contention.json").read_text())
    assert [(r["busy"], r["setting"], r["finished"]) for r in rows] == \
        [(1, "default", True), (1, "1:spin", True)]
    assert rows[1]["threads"] == 1 and rows[0]["threads"] >= 1 and rows[0]["busy_cpus"] > 0
    table = (out / "contention.md").read_text()
    assert "| 1 | 1, idle threads spin (libgomp default) | 1 |" in table


# -- issue 22: logs, signals, torn files ---------------------------------------------------------
def test_an_epoch_line_stays_above_the_bars_on_a_terminal(tmp_path, monkeypatch, capsys):
    from nas import monitor
    monkeypatch.setattr(monitor, "_is_tty", lambda: True)
    m = monitor.Monitor(tmp_path, epochs=2, title="search")
    for epoch in range(2):
        m.epoch_end(epoch, {"train_loss": 1.5 - epoch, "train_acc": 40.0}, {})
    m.close()
    err = capsys.readouterr().err
    assert "search epoch 1/2 train_loss=1.5 train_acc=40" in err
    assert "search epoch 2/2 train_loss=0.5" in err


@pytest.mark.slow
def test_sigterm_flushes_the_log_keeps_the_checkpoint_and_prints_the_resume(ws):
    log = open(ws / "log.txt", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", "--config", "tiny.yaml",
                             "--run-dir", "term", "--set", "search.epochs=200"], cwd=ws, env=env,
                            stdout=log, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    lines: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        lines = (ws / "log.txt").read_text().splitlines()
        if any(line.startswith("search epoch 2/200") for line in lines):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()  # live lines while the run goes on
    assert lines[0].startswith("search: darts space") and "thread" in lines[0]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    log.close()
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "nas search: terminated (SIGTERM); continue with: nas search --resume term"], err
    state = torch.load(ws / "term" / "checkpoint.pt", weights_only=True)
    done = [json.loads(line)["epoch"] for line in (ws / "term" / "metrics.jsonl").read_text().splitlines()]
    assert state["epoch"] >= 1 and done[-1] >= state["epoch"]
    assert not (ws / "term" / "checkpoint.pt.tmp").exists()


def test_an_interrupted_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from nas import runtime

    def torn_save(state, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        runtime.save_checkpoint({"kind": "search"}, tmp_path / "checkpoint.pt")
    assert os.listdir(tmp_path) == []


def test_resume_removes_what_a_killed_checkpoint_write_left(ws, capsys):
    (ws / "run" / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    edit_saved_config("search.epochs", 2)(ws)
    assert main(["search", "--resume", "run", "--quiet"]) == 0, capsys.readouterr().err
    assert not (ws / "run" / "checkpoint.pt.tmp").exists()


def test_resume_cuts_torn_lines_from_metrics_and_probabilities(ws, capsys):
    edit_saved_config("search.epochs", 3)(ws)
    for name in ("metrics.jsonl", "probabilities.jsonl"):
        with open(ws / "run" / name, "a") as f:  # killed while writing epoch 2's line
            f.write('{"epoch": 2, "train_lo')
    assert main(["search", "--resume", "run", "--quiet"]) == 0, capsys.readouterr().err
    for name in ("metrics.jsonl", "probabilities.jsonl"):
        records = [json.loads(line) for line in (ws / "run" / name).read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2, 3]
    assert main(["plot", "run"]) == 0


def test_plot_leaves_out_a_torn_last_line(ws, capsys):
    with open(ws / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')
    assert main(["plot", "run", "--out", "pics"]) == 0, capsys.readouterr().err
    assert (ws / "pics" / "curves.png").is_file()


def test_a_lost_checkpoint_is_started_again_only_with_force(ws, capsys):
    (ws / "run" / "checkpoint.pt").unlink()
    before = snapshot(ws)
    code, err = call(["search", "--resume", "run"], capsys)
    assert code == 2 and "--force" in err and snapshot(ws) == before
    assert main(["search", "--resume", "run", "--force", "--quiet"]) == 0
    assert [json.loads(line)["epoch"]
            for line in (ws / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert torch.load(ws / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_nas_run_refuses_a_lost_checkpoint_before_it_searches(ws, capsys):
    nas_run_dir(ws)  # pair/search (empty) and pair/train (a run's files)
    shutil.copy(ws / "run" / "config.yaml", ws / "pair" / "search" / "config.yaml")
    (ws / "pair" / "train" / "checkpoint.pt").unlink()
    before = snapshot(ws)
    code, err = call(["run", "--resume", "pair"], capsys)
    assert code == 2 and "pair/train" in err and "--force" in err, err
    assert snapshot(ws) == before


# -- issue 22: files the user cannot read or write ------------------------------------------------
def _without_override() -> None:
    """In the child: drop the capabilities that let root ignore file permissions, so that they
    bind a root user as they bind everyone else (prctl PR_CAPBSET_DROP; the exec applies it)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            os._exit(99)


PERMISSION_CASES = [
    ("data-file", lambda ws: os.chmod(ws / "data" / "cifar-10-batches-py" / "data_batch_1", 0),
     ["search", "--config", "tiny.yaml", "--run-dir", "out"], "Permission denied"),
    ("genotype-file", lambda ws: [(ws / "g.json").write_text("{}"), os.chmod(ws / "g.json", 0)],
     ["train", "--config", "tiny.yaml", "--run-dir", "out", "--genotype", "g.json"],
     "Permission denied"),
    ("plot-out", lambda ws: (ws / "locked").mkdir(mode=0o555),
     ["plot", "run", "--out", "locked/plots"], "Permission denied"),
    ("genotype-plot-out", lambda ws: (ws / "locked").mkdir(mode=0o555),
     ["genotype", "plot", "DARTS_V2", "--out", "locked"], "permission denied"),
]


@pytest.mark.parametrize("case", PERMISSION_CASES, ids=[c[0] for c in PERMISSION_CASES])
def test_permission_denied_is_one_line_exit_2_and_changes_nothing(ws, case):
    import tempfile
    _, setup, argv, phrase = case
    root = Path(tempfile.mkdtemp(prefix="nas-perm-"))  # outside pytest's root-only folders
    try:
        os.chmod(root, 0o777)
        shutil.copytree(ws / "data", root / "data")
        shutil.copytree(ws / "run", root / "run")
        cfg = yaml.safe_load((ws / "tiny.yaml").read_text())
        cfg["data"]["root"] = str(root / "data")
        (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o777 if p.is_dir() else 0o666)
        setup(root)
        before = snapshot(root)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-m", "nas", *argv], cwd=root, env=env, text=True,
                             capture_output=True, timeout=120,
                             preexec_fn=_without_override if os.geteuid() == 0 else None)
        if out.returncode == 99:
            pytest.skip("cannot drop root's permission override here")
        assert out.returncode == 2, out.stderr
        assert phrase in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert snapshot(root) == before
    finally:
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o777) if p.is_dir() else None
        shutil.rmtree(root, ignore_errors=True)


# -- issue 22: plugin files leave no bytecode -------------------------------------------------------
def test_a_file_plugin_is_imported_without_writing_bytecode(tmp_path, monkeypatch):
    from nas.registry import load_object
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as in a default Python
    (tmp_path / "mine.py").write_text("VALUE = 41 + 1\n")
    assert load_object(f"{tmp_path / 'mine.py'}:VALUE") == 42
    assert os.listdir(tmp_path) == ["mine.py"]
