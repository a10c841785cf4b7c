"""`nas export`: a trained network as ONNX / TorchScript / torch.export, checked against PyTorch.

ONNX needs the export extra (onnx, onnxscript, onnxruntime), which the test extra installs;
where it is missing the ONNX cases are skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nas
import nas.export
from nas.cli import main
from nas.config import build_config
from nas.export import CHECKER, FORMATS, TOLERANCE, Logits, export, load_trained, onnx_missing
from nas.train import train
from conftest import DARTS_V2, ROOT

NB = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
PLUGIN = f"{ROOT / 'scripts' / 'example_plugin.py'}:SPACE"
SPACES = {  # space -> (genotype, network options); each a network of a few thousand parameters
    "darts": (DARTS_V2, {"C": 4, "cells": 3, "auxiliary": True}),
    "nasbench201": (NB, {"C": 4, "cells_per_stage": 1}),
    "plugin": (nas.Genotype({"cell": [[("mbconv_3x3", 0)],
                                      [("nor_conv_3x3", 0), ("skip_connect", 1)]]}, space=PLUGIN),
               {"C": 4, "cells": 2}),
}
NEEDS_ONNX = pytest.mark.skipif(bool(onnx_missing()), reason="the export extra (onnx, onnxscript, "
                                "onnxruntime) is not installed")
AVAILABLE = [pytest.param(f, marks=NEEDS_ONNX) if f == "onnx" else f for f in FORMATS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_root) -> dict[str, Path]:
    """One tiny retraining per space (the darts one inside a `nas run`-style directory)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, (genotype, network) in SPACES.items():
        genotype = nas.parse_genotype(genotype) if isinstance(genotype, str) else genotype
        cfg = build_config({
            "space": genotype.space or "darts", "network": network,
            "data": {"root": str(cifar_root), "image_size": 8, "pad": 1, "workers": 0},
            "train": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "cutout": 0,
                      "drop_path": 0.2, "eval_batch_size": 40,
                      "auxiliary_weight": 0.4 if name == "darts" else 0.0}})
        run = root / name / "train" if name == "darts" else root / name
        train(cfg, genotype, run, quiet=True)
        out[name] = run
    return out


_exported: dict[tuple[str, str], nas.export.ExportResult] = {}


def clear_top1(logits: torch.Tensor, diff: float) -> torch.Tensor:
    """The rows whose top two logits lie more than ``2 * diff`` apart: there no difference of at
    most ``diff`` per logit can change the top-1 class."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1] > 2 * diff


def exported(runs: dict[str, Path], space: str, fmt: str) -> nas.export.ExportResult:
    """Export once per (space, format), into a directory of its own."""
    if (space, fmt) not in _exported:
        out = runs[space].parent / f"files-{space}-{fmt}" / f"net{FORMATS[fmt]}"
        _exported[space, fmt] = export(runs[space], fmt, out)
    return _exported[space, fmt]


@pytest.mark.parametrize("fmt", AVAILABLE)
@pytest.mark.parametrize("space", list(SPACES))
def test_export_every_space_and_format_matches_pytorch(runs, space, fmt):
    result = exported(runs, space, fmt)
    assert result.path.is_file() and result.path.stat().st_size == result.bytes > 0
    assert result.max_abs_diff <= TOLERANCE and result.batch == 8
    # the file runs other kernels (onnxruntime, torch.export), which round otherwise: the top-1
    # class must agree wherever that rounding cannot flip it, a near tie may go either way
    with torch.no_grad():
        want = Logits(load_trained(runs[space]).model.eval())(nas.export.check_images(8, 8))
    clear = int(clear_top1(want, result.max_abs_diff).sum())
    assert clear > 0 and result.top1_agree >= clear
    assert result.removed == (["auxiliary_head"] if space == "darts" else [])
    assert result.runtime.startswith("onnxruntime" if fmt == "onnx" else "torch")
    assert list(result.path.parent.iterdir()) == [result.path]  # no temporary file left


LOADER = r"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nas", "search_spaces") or name.startswith("_nas_plugin_"):
            raise ImportError("the file imported " + name)
sys.meta_path.insert(0, Refuse())
import numpy as np
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    if path.endswith(".onnx"):
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        y = session.run(None, {"images": x})[0]
    else:
        import torch
        module = torch.jit.load(path) if path.endswith(".pt") else torch.export.load(path).module()
        with torch.no_grad():
            y = module(torch.from_numpy(x)).numpy()
    np.save(path + ".logits.npy", y)
print("ran", len(sys.argv) - 2)
"""


def test_exported_files_run_in_a_fresh_process_without_the_package(runs, tmp_path):
    """Every file, loaded where neither the source tree nor `import nas` is available, gives
    PyTorch's logits on a batch size the export never saw."""
    formats = [f for f in FORMATS if f != "onnx" or not onnx_missing()]
    files = {(s, f): exported(runs, s, f).path for s in SPACES for f in formats}
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "x.npy"),
                           *map(str, files.values())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ran {len(files)}" in done.stdout
    for (space, fmt), path in files.items():
        with torch.no_grad():
            want = Logits(load_trained(runs[space]).model.eval())(x)
        got = torch.from_numpy(np.load(str(path) + ".logits.npy"))
        assert got.shape == (3, 10), (space, fmt)
        assert (got - want).abs().max() <= TOLERANCE, (space, fmt)
        clear = clear_top1(want, float((got - want).abs().max()))  # as above: no near tie
        assert clear.any(), (space, fmt)
        assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear]), (space, fmt)


def test_the_check_refuses_imports_of_the_package(tmp_path):
    """The fresh process really cannot import what it blocks (here numpy, which it needs)."""
    done = subprocess.run([sys.executable, "-c", CHECKER, "torchscript", str(tmp_path / "m.pt"),
                           str(tmp_path), "numpy"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "the exported file needed the module numpy" in done.stderr


@NEEDS_ONNX
def test_cli_exports_a_nas_run_directory_to_onnx(runs, capsys):
    pair = runs["darts"].parent  # holds train/, as `nas run` writes it
    assert main(["export", str(pair), "--format", "onnx", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    path = runs["darts"] / "model.onnx"
    assert path.is_file()
    assert f"wrote {path} (ONNX, opset 18" in out and "top-1 agrees on 4/4" in out
    assert "auxiliary_head left out" in out and "onnxruntime" in out


def test_train_writes_profile_json(runs):
    for run in runs.values():
        profile = json.loads((run / "profile.json").read_text())
        result = json.loads((run / "result.json").read_text())
        assert profile["params"] == result["params"] and profile["macs"] == result["macs"]
        assert profile["latency_ms"]["1"] > 0 and profile["blocks"]


def _one_line_error(capsys, code: int, *parts: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("nas export: error: "), err
    for part in parts:
        assert part in err, err


def test_export_bad_input_fails_with_one_line_and_writes_nothing(runs, tmp_path, capsys):
    out = tmp_path / "out" / "m.pt"
    # a search run: a genotype, no trained network
    search = tmp_path / "search"
    search.mkdir()
    (search / "genotype.json").write_text(json.dumps(nas.parse_genotype(NB).to_dict()))
    torch.save({"kind": "search", "epoch": 1}, search / "checkpoint.pt")
    for source in (search, search / "checkpoint.pt"):
        code = main(["export", str(source), "--format", "torchscript", "--out", str(out)])
        _one_line_error(capsys, code, f"{search} is a search run", f"nas train --genotype {search}")
    # an output path that exists is left as it was
    out.parent.mkdir()
    out.write_text("keep")
    code = main(["export", str(runs["nasbench201"]), "--format", "torchscript", "--out", str(out)])
    _one_line_error(capsys, code, f"{out} already exists")
    assert out.read_text() == "keep"
    out.unlink()
    # a checkpoint another version wrote: its tensors are named otherwise
    state = torch.load(runs["nasbench201"] / "checkpoint.pt", weights_only=True)
    state["model"] = {k.replace("stem.", "stem_layer."): v for k, v in state["model"].items()}
    state["version"] = "0.0.1"
    torch.save(state, tmp_path / "old.pt")
    code = main(["export", str(tmp_path / "old.pt"), "--format", "exported", "--out", str(out)])
    _one_line_error(capsys, code, "does not fit this version of gumbel-nas",
                    "written by gumbel-nas 0.0.1", "has no tensor 'stem.0.weight'")
    del state["genotype"]
    torch.save(state, tmp_path / "older.pt")
    code = main(["export", str(tmp_path / "older.pt"), "--format", "exported", "--out", str(out)])
    _one_line_error(capsys, code, "it has no genotype")
    # bad numbers
    for flag, value in (("--batch", "0"), ("--image-size", "-2"), ("--tolerance", "0")):
        code = main(["export", str(runs["nasbench201"]), "--format", "exported", "--out",
                     str(out), flag, value])
        _one_line_error(capsys, code, f"{flag} must be")
    with pytest.raises(nas.InputError, match="unknown format 'tflite'"):
        export(runs["nasbench201"], "tflite", out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("out, message", [
    ("m" * 300 + ".pt", "over the system's limit"),             # a name too long
    ("deep/" + "d" * 300 + "/m.pt", "over the system's limit"),   # a part of it
    ("a-dir", "--out a-dir is a directory"),
    ("a-file", "a-file already exists"),
    ("a-file/m.pt", "a-file is not a writable directory"),
])
def test_an_output_it_cannot_write_is_refused_before_the_export(runs, tmp_path, monkeypatch,
                                                                 capsys, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("keep")
    monkeypatch.setattr(nas.export, "for_deployment", lambda *a: pytest.fail("the work ran"))
    code = main(["export", str(runs["nasbench201"]), "--format", "torchscript", "--out", out])
    _one_line_error(capsys, code, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file"]
    assert (tmp_path / "a-file").read_text() == "keep" and not any((tmp_path / "a-dir").iterdir())


def test_unknown_format_is_a_usage_error(runs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(runs["nasbench201"]), "--format", "tflite"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'tflite'" in err


def test_onnx_without_the_export_extra_names_it(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nas.export, "ONNX_PACKAGES", (*nas.export.ONNX_PACKAGES, "no_such_pkg_24"))
    code = main(["export", str(runs["nasbench201"]), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")])
    _one_line_error(capsys, code, "needs the packages no_such_pkg_24", "pip install -e '.[export]'")
    assert not (tmp_path / "m.onnx").exists()


class _Shifted(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.01


def test_logits_over_the_tolerance_fail_and_write_nothing(runs, tmp_path, capsys, monkeypatch):
    write = nas.export._write
    monkeypatch.setattr(nas.export, "_write", lambda module, fmt, example, path:
                        write(_Shifted(module), fmt, example, path))
    out = tmp_path / "m.pt"
    code = main(["export", str(runs["nasbench201"]), "--format", "torchscript", "--out", str(out)])
    _one_line_error(capsys, code, "logits differ from PyTorch's by up to 0.01",
                    "over the tolerance 0.001", "nothing was written")
    assert not out.exists()
    # a looser tolerance, stated, lets the same file through
    assert main(["export", str(runs["nasbench201"]), "--format", "torchscript", "--out", str(out),
                 "--tolerance", "0.02"]) == 0
    assert "(tolerance 0.02)" in capsys.readouterr().out and out.is_file()


def test_a_plugin_checkpoint_needs_the_plugin_trusted(runs, tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = main(["export", str(runs["plugin"]), "--format", "torchscript", "--out", str(out)])
    _one_line_error(capsys, code, "--plugin")
    assert main(["export", str(runs["plugin"]), "--format", "torchscript", "--out", str(out),
                 "--plugin", PLUGIN]) == 0
    assert out.is_file()
