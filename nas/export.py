"""Deploying a trained network: one file in ONNX, TorchScript or torch.export form, checked.

``export`` loads the network of a ``nas train`` run, puts it in eval mode with the auxiliary head
and drop path removed, and writes it in one of ``FORMATS`` with a dynamic batch dimension. The
file is then checked in a fresh Python process that cannot import this package (nor the space's
plugin, nor, for ONNX, torch): a fixed batch of images through the file and through PyTorch
must give logits within a stated tolerance, or nothing is written.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .config import MAX_BATCH, MAX_IMAGE_SIZE, check_count
from .errors import InputError, first_line
from .network import set_drop_path
from .registry import PLUGIN_MODULE_PREFIX, is_spec
from .runtime import check_output, within_memory
from .spaces import check_logits
from .trained import Trained, load_trained

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}
ONNX_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra of setup.cfg
TOLERANCE = 1e-3  # largest absolute difference of a logit, file vs PyTorch (float32 on the CPU)
SEED = 0  # of the fixed batch of check images


@dataclass
class ExportResult:
    """What ``export`` wrote and how the check went."""

    path: Path
    format: str
    bytes: int
    batch: int
    image_size: int
    max_abs_diff: float  # over the check batch and the single image
    top1_agree: int  # of ``batch`` images
    tolerance: float
    runtime: str  # what ran the file in the fresh process, with its version
    removed: list[str]  # modules left out of the file (the auxiliary head)
    trained: Trained


class Logits(nn.Module):
    """The network's logits alone: a space's network may return ``(logits, aux)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> Tensor:
        out = self.network(images)
        return out[0] if isinstance(out, tuple) else out


def for_deployment(model: nn.Module, example: Tensor) -> tuple[nn.Module, list[str]]:
    """``model`` in eval mode, drop path 0, its auxiliary modules that eval does not run removed.

    Returns the logits-only module and the names of the modules removed. A module is auxiliary
    when its name says so (as ``count_parameters`` counts); one that eval mode runs is kept.
    """
    set_drop_path(model, 0.0)
    model.eval()
    named = [(name, m) for name, m in model.named_modules() if name and "auxiliary" in
             name.rsplit(".", 1)[-1]]
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: ran.add(n)) for name, m in named]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    removed = []
    for name, _ in named:
        if name in ran or any(name.startswith(r + ".") for r in removed):
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, None)
        removed.append(name)
    return Logits(model).eval(), removed


def check_images(batch: int, image_size: int) -> Tensor:
    """The fixed batch the check runs: normal noise, the scale of normalized images, seed 0."""
    g = torch.Generator().manual_seed(SEED)
    return torch.randn(batch, 3, image_size, image_size, generator=g)


def onnx_missing() -> list[str]:
    """The packages of the ``export`` extra that are not importable here."""
    return [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]


def _write(module: nn.Module, fmt: str, example: Tensor, path: Path) -> None:
    """Write ``module`` in ``fmt`` to ``path``, the batch dimension dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter; the check is what counts
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(module, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
            return
        batch = {0: torch.export.Dim("batch", min=1)}
        if fmt == "exported":
            program = torch.export.export(module, (example,), dynamic_shapes=(batch,))
            torch.export.save(program, str(path))
            return
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=(batch,), verbose=False)
        program.save(str(path), external_data=False)  # one file, whatever its size


# Runs in a fresh interpreter: it loads the file with torch (or onnxruntime alone) and runs the
# inputs through it, refusing to import this package, the space's plugin and, for ONNX, torch.
CHECKER = r"""
import importlib.abc, json, sys
fmt, model_path, io_dir, blocked = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in blocked or any(b.endswith("*") and top.startswith(b[:-1]) for b in blocked):
            raise ImportError(f"the exported file needed the module {name}")
        return None

sys.meta_path.insert(0, Refuse())
import numpy as np
inputs = [np.load(f"{io_dir}/input{i}.npy") for i in range(2)]
if fmt == "onnx":
    import onnxruntime as ort
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: x})[0] for x in inputs]
    runtime = f"onnxruntime {ort.__version__}"
else:
    import torch
    if fmt == "torchscript":
        module = torch.jit.load(model_path, map_location="cpu")
    else:
        module = torch.export.load(model_path).module()
    with torch.no_grad():
        outputs = [module(torch.from_numpy(x)).numpy() for x in inputs]
    loader = "torch.jit.load" if fmt == "torchscript" else "torch.export.load"
    runtime = f"torch {torch.__version__} ({loader})"
for i, out in enumerate(outputs):
    np.save(f"{io_dir}/output{i}.npy", out)
print(json.dumps({"runtime": runtime}))
"""


def _blocked(space: str, fmt: str) -> list[str]:
    """Top-level modules the check refuses: this package, the space's plugin, torch for ONNX."""
    names = ["nas", "search_spaces", PLUGIN_MODULE_PREFIX + "*"]
    module = space.rpartition(":")[0] if is_spec(space) else ""
    if module and not module.endswith(".py") and "/" not in module and os.sep not in module:
        names.append(module.split(".")[0])
    if fmt == "onnx":
        names += ["torch", "torchvision"]
    return names


def run_check(path: Path, fmt: str, inputs: list[Tensor], space: str, work: Path
              ) -> tuple[list[Tensor], str]:
    """Run ``inputs`` through the file at ``path`` in a fresh process; its outputs and runtime."""
    import numpy as np
    for i, x in enumerate(inputs):
        np.save(work / f"input{i}.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not this source tree
    try:
        done = subprocess.run([sys.executable, "-c", CHECKER, fmt, str(path), str(work),
                               ",".join(_blocked(space, fmt))], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise InputError(f"the {fmt} file did not finish the check in a fresh process within "
                         "30 minutes; nothing was written") from None
    if done.returncode != 0:
        lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise InputError(f"the {fmt} file does not run in a fresh Python process without "
                         f"gumbel-nas ({why}); nothing was written")
    outputs = [torch.from_numpy(np.load(work / f"output{i}.npy")) for i in range(len(inputs))]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return outputs, report["runtime"]


def _output_path(out: str | Path | None, checkpoint: Path, fmt: str) -> Path:
    return check_output(Path(out) if out else checkpoint.parent / f"model{FORMATS[fmt]}", "--out")


def export(source: str | Path, fmt: str, out: str | Path | None = None, *, batch: int = 8,
           image_size: int | None = None, tolerance: float = TOLERANCE,
           progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export the trained network of ``source`` (run directory or checkpoint) as ``fmt``.

    Default ``out``: ``model.onnx`` / ``model.pt`` / ``model.pt2`` beside the checkpoint. The file
    is written only once the check passed: the logits of ``batch`` fixed images (and of one)
    differ from PyTorch's by at most ``tolerance``.
    """
    step = progress or (lambda text: None)
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt == "onnx" and onnx_missing():
        raise InputError(f"--format onnx needs the packages {', '.join(onnx_missing())}: install "
                         "the export extra, pip install -e '.[export]'")
    check_count("--batch", batch, 1, MAX_BATCH)
    check_count("--image-size", image_size, 1, MAX_IMAGE_SIZE, nullable=True)
    if not tolerance > 0:
        raise InputError(f"--tolerance must be above 0, got {tolerance!r}")
    step("load")
    trained = load_trained(source)
    path = _output_path(out, trained.checkpoint, fmt)
    size = image_size or trained.image_size
    with within_memory(f"batch {batch} of {size}x{size} images",
                       "choose a smaller --batch or --image-size"):
        x = check_images(batch, size)
    model = trained.model.eval()
    set_drop_path(model, 0.0)
    try:
        with torch.no_grad():
            out_ref = model(x)
            check_logits(out_ref, batch, trained.num_classes, f"search space '{trained.space}'")
            reference, one = Logits(model)(x).float(), Logits(model)(x[:1]).float()
        module, removed = for_deployment(model, x)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"the network does not run on {batch} images of {size}x{size}: "
                         f"{first_line(exc)}") from None
    example = x if batch > 1 else torch.cat([x, x])  # a dynamic dimension needs 2 in the example
    with tempfile.TemporaryDirectory(prefix="nas-export-") as tmp:
        work = Path(tmp)
        written = work / f"model{FORMATS[fmt]}"
        step(f"write {fmt}")
        try:
            _write(module, fmt, example, written)
        except Exception as exc:
            raise InputError(f"the network could not be exported as {fmt}: "
                             f"{first_line(exc)}") from None
        step("check in a fresh process")
        (got, got_one), runtime = run_check(written, fmt, [x, x[:1]], trained.space, work)
        if got.shape != reference.shape or got_one.shape != one.shape:
            raise InputError(f"the {fmt} file returned logits of shape {tuple(got.shape)} for "
                             f"{tuple(reference.shape)}; nothing was written")
        diff = max(float((got.float() - reference).abs().max()),
                   float((got_one.float() - one.float()).abs().max()))
        agree = int((got.argmax(1) == reference.argmax(1)).sum())
        if not diff <= tolerance:
            raise InputError(f"the {fmt} file's logits differ from PyTorch's by up to {diff:.3g}, "
                             f"over the tolerance {tolerance:g} (top-1 agrees on {agree}/{batch}); "
                             "nothing was written")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} appeared while exporting; nothing was written")
        shutil.move(str(written), str(path))
    return ExportResult(path, fmt, path.stat().st_size, batch, size, diff, agree, tolerance,
                        runtime, removed, trained)


def describe(result: ExportResult) -> list[str]:
    """The lines ``nas export`` prints."""
    t = result.trained
    what = {"onnx": f"ONNX, opset {ONNX_OPSET}", "torchscript": "TorchScript, traced",
            "exported": "torch.export ExportedProgram"}[result.format]
    left = f", {' and '.join(result.removed)} left out" if result.removed else ""
    lines = [f"network: {t.space} from {t.checkpoint} (epoch {t.epoch}, {t.num_classes} classes), "
             f"eval mode, drop path off{left}",
             f"wrote {result.path} ({what}, {result.bytes / 1e6:.2f} MB; input 'images' "
             f"[batch, 3, {result.image_size}, {result.image_size}], the batch dimension dynamic)"]
    lines.append(f"check: {result.runtime} in a fresh Python process without gumbel-nas: "
                 f"max |logit difference| {result.max_abs_diff:.2e} on {result.batch} fixed "
                 f"images and on 1 (tolerance {result.tolerance:g}); top-1 agrees on "
                 f"{result.top1_agree}/{result.batch}")
    return lines
