"""Where a run reports: TensorBoard, ``metrics.jsonl``, and tqdm bars or plain log lines.

Bars are drawn only on a terminal; elsewhere (a log file, CI) each epoch prints one line.
``quiet`` silences both; ``write=False`` (every rank but rank 0 of a distributed run) also
writes nothing. TensorBoard event files are written into the run directory itself, so
``tensorboard --logdir runs`` shows every run side by side.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from tqdm import tqdm

from . import plot
from .genotype import Genotype
from .supernet import Supernet


BAR_KEYS = ("train_loss", "train_acc", "arch_acc", "test_acc", "tau")  # beside the epoch bar


def _is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Monitor:
    """Progress, metrics and pictures of one run."""

    def __init__(self, run_dir: str | Path, *, epochs: int, start_epoch: int = 0,
                 quiet: bool = False, title: str = "search", write: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.quiet, self.write = quiet or not write, write
        self.bars = (not self.quiet) and _is_tty()
        self.title, self.epochs = title, epochs
        self.epoch_bar = tqdm(total=epochs, initial=start_epoch, desc=title, unit="epoch",
                              dynamic_ncols=True, disable=not self.bars)
        self._step_bar: tqdm | None = None
        self._last_postfix = 0.0
        if not write:
            return
        # Epoch k is logged at step k: a resumed run drops what epochs after its checkpoint
        # wrote before the interruption, so its files equal a run straight through.
        self.writer = SummaryWriter(log_dir=str(self.run_dir),
                                    purge_step=start_epoch + 1 if start_epoch else None)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if start_epoch and self.metrics_path.is_file():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("epoch", 0) <= start_epoch]
            tmp = self.metrics_path.with_name("metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)

    # -- progress -----------------------------------------------------------------------------
    def steps(self, iterable: Iterable[Any], total: int, epoch: int) -> Iterator[Any]:
        """Iterate with a step bar for this epoch (on a terminal)."""
        self._step_bar = tqdm(iterable, total=total, desc=f"epoch {epoch + 1}/{self.epochs}",
                              unit="step", leave=False, dynamic_ncols=True, disable=not self.bars)
        try:
            yield from self._step_bar
        finally:
            self._step_bar.close()
            self._step_bar = None

    def want_postfix(self) -> bool:
        """True at most every half second, so reading device values costs few host syncs."""
        if self._step_bar is None or not self.bars:
            return False
        now = time.monotonic()
        if now - self._last_postfix < 0.5:
            return False
        self._last_postfix = now
        return True

    def postfix(self, **values: float) -> None:
        """Show values (loss, accuracy, tau) beside the step bar."""
        if self._step_bar is not None:
            self._step_bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def print(self, message: str) -> None:
        """A line for the user (above the bars), unless quiet."""
        if not self.quiet:
            tqdm.write(message, file=sys.stderr if self.bars else sys.stdout)

    # -- records ------------------------------------------------------------------------------
    def epoch_end(self, epoch: int, metrics: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
        """Append metrics.jsonl, write TensorBoard scalars, advance the bar or print a line."""
        if not self.write:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"epoch": epoch + 1, **metrics}) + "\n")
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch + 1)
        self.writer.flush()
        shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
        if self.bars:
            brief = {k: shown[k] for k in BAR_KEYS if k in shown}
            self.epoch_bar.update(1)
            self.epoch_bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in brief.items()))
        else:
            line = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
            self.print(f"{self.title} epoch {epoch + 1}/{self.epochs} {line}")

    def architecture(self, epoch: int, model: Supernet, genotype: Genotype) -> None:
        """Op probabilities (heatmap and histograms) and the genotype (text and picture)."""
        if not self.write:
            return
        step = epoch + 1
        for kind, p in model.probabilities().items():
            ops, names = model.op_names[kind], model.edge_names(kind)
            img = plot.heatmap(p, ops, names, f"{kind} cell, epoch {step}")
            self.writer.add_image(f"arch/{kind}", plot.image_to_tensor(img), step)
            # one histogram per edge whose buckets are its ops, bucket mass = op probability
            limits = [i + 0.5 for i in range(len(ops))]
            idx = torch.arange(len(ops), dtype=torch.float64)
            for e, name in enumerate(names):
                mass = p[e].double().cpu() * 1000
                self.writer.add_histogram_raw(
                    f"edges/{kind}/{name}", min=0, max=len(ops) - 1, num=1000,
                    sum=float((idx * mass).sum()), sum_squares=float((idx ** 2 * mass).sum()),
                    bucket_limits=limits, bucket_counts=mass.tolist(), global_step=step)
        self.writer.add_text("genotype", f"epoch {step}: `{genotype}`", step)
        for kind in genotype.cells:
            self.writer.add_image(f"genotype/{kind}",
                                  plot.image_to_tensor(plot.cell_image(genotype, kind)), step)
        self.writer.flush()

    def close(self) -> None:
        """Close the bars and the TensorBoard writer."""
        self.epoch_bar.close()
        if self.write:
            self.writer.close()

