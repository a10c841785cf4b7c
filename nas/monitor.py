"""Where a run reports: TensorBoard, ``metrics.jsonl``, and tqdm bars or plain log lines.

Each epoch prints one line: on a terminal above the bars (drawn only there), elsewhere (a log
file, CI, ``nohup``) flushed at once, so the log is as current as ``metrics.jsonl``.
``quiet`` silences both; ``write=False`` (every rank but rank 0 of a distributed run) also
writes nothing. TensorBoard event files are written into the run directory itself, so
``tensorboard --logdir runs`` shows every run side by side.

Edges are named ``<node><-<input>`` with the genotype's state numbering (cell inputs first, then
the nodes), the same in every view: TensorBoard tags, heatmap rows, ``nas genotype show``, pictures.
"""
from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from tqdm import tqdm

from . import plot
from .choices import chain_ops
from .files import atomic_write
from .genotype import Genotype, cell_title
from .runtime import read_jsonl
from .supernet import Supernet


BAR_KEYS = ("train_loss", "train_acc", "arch_acc", "test_acc", "tau")  # beside the epoch bar
PROBABILITIES = "probabilities.jsonl"  # one line per epoch: every edge's op probabilities
HEATMAPS = "heatmaps"                  # <kind>_epoch_NNN.png
STEPS = "steps"                        # TensorBoard's per-step scalars (step/...), a run of their own


def _number(value: float) -> str:
    """A metric on the epoch line: whole numbers in full (a rank of 1,204), others to 4 digits."""
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def prob_tag(kind: str, edge: str, op: str) -> str:
    """The TensorBoard tag of one op's probability on one edge: ``probs/normal/3<-1/sep_conv_3x3``."""
    return f"probs/{kind}/{edge}/{op}"


def prob_scalars(model: Supernet) -> dict[str, float]:
    """Every op probability of every edge (of every chain layer: ``probs/<layer>/<op>``), by tag."""
    out = {}
    if model.chain:
        probs = model.probabilities()
        return {f"probs/{p.name}/{op}": float(probs[p.group][p.row, o])
                for p in model.chain for o, op in enumerate(p.ops)}
    for kind, p in model.probabilities().items():
        for e, edge in enumerate(model.edge_names(kind)):
            for o, op in enumerate(model.op_names[kind]):
                out[prob_tag(kind, edge, op)] = float(p[e, o])
    return out


def prob_layout(model: Supernet) -> dict[str, dict[str, list[Any]]]:
    """A Custom Scalars layout: per cell kind (or for the chain), one chart per edge (layer) with
    one line per op."""
    if model.chain:
        return {"op probabilities, chain": {
            p.name: ["Multiline", [f"^{re.escape(f'probs/{p.name}/{op}')}$" for op in p.ops]]
            for p in model.chain}}
    return {f"op probabilities, {cell_title(kind)}": {
        edge: ["Multiline", [f"^{re.escape(prob_tag(kind, edge, op))}$" for op in ops]]
        for edge in model.edge_names(kind)} for kind, ops in model.op_names.items()}


def _cut_jsonl(path: Path, last_epoch: int) -> None:
    """Keep the records of epochs up to ``last_epoch`` (what a resumed run's checkpoint holds);
    a line half written when the process was killed goes too."""
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if r["epoch"] <= last_epoch]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))


def _is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


@contextlib.contextmanager
def steps_bar(total: int, title: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A bar of ``total`` named steps (on a terminal); yields ``step(name)``, called as each
    step starts."""
    bar = tqdm(total=total, desc=title, unit="step", leave=False, disable=quiet or not _is_tty())
    started = []

    def step(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    try:
        yield step
    finally:
        bar.close()


class Monitor:
    """Progress, metrics and pictures of one run."""

    def __init__(self, run_dir: str | Path, *, epochs: int, start_epoch: int = 0,
                 quiet: bool = False, title: str = "search", write: bool = True,
                 log_every: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.start_epoch, self.log_every = start_epoch, log_every
        self.global_step = 0           # steps done since the run began, the current one included
        self._images = 0               # images the epoch's steps read (for the throughput)
        self._steps_per_epoch = 0
        self._step_writer: Any = None  # per-step scalars: their own event file, in STEPS/
        self.quiet, self.write = quiet or not write, write
        self.bars = (not self.quiet) and _is_tty()
        self.title, self.epochs = title, epochs
        self.epoch_bar = tqdm(total=epochs, initial=start_epoch, desc=title, unit="epoch",
                              dynamic_ncols=True, disable=not self.bars)
        self._step_bar: tqdm | None = None
        self._last_postfix = 0.0
        self._layout_written = False
        if not write:
            return
        # Epoch k is logged at step k: a resumed run drops what epochs after its checkpoint
        # wrote before the interruption, so its files equal a run straight through.
        self.writer = SummaryWriter(log_dir=str(self.run_dir),
                                    purge_step=start_epoch + 1 if start_epoch else None)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if start_epoch:
            _cut_jsonl(self.metrics_path, start_epoch)
            _cut_jsonl(self.run_dir / PROBABILITIES, start_epoch)
            for png in (self.run_dir / HEATMAPS).glob("*_epoch_*.png"):
                number = png.stem.rpartition("_epoch_")[2]
                if number.isdigit() and int(number) > start_epoch:
                    png.unlink()

    # -- progress -----------------------------------------------------------------------------
    def steps(self, iterable: Iterable[Any], total: int, epoch: int,
              images: int = 0) -> Iterator[Any]:
        """Iterate with a step bar for this epoch (on a terminal); ``images`` read per step."""
        self._step_bar = tqdm(iterable, total=total, desc=f"epoch {epoch + 1}/{self.epochs}",
                              unit="step", leave=False, dynamic_ncols=True, disable=not self.bars)
        self._steps_per_epoch = total
        self._images = 0
        try:
            for k, item in enumerate(self._step_bar):
                self.global_step = epoch * total + k + 1
                self._images += images
                yield item
        finally:
            self._step_bar.close()
            self._step_bar = None

    def step_scalars(self, **values: Any) -> None:
        """Per-step TensorBoard scalars (``step/<name>``, e.g. the loss and tau of this step),
        written every ``log_every`` steps; values may be tensors (read only when written)."""
        if not self.write or not self.log_every or self.global_step % self.log_every:
            return
        if self._step_writer is None:
            from torch.utils.tensorboard import SummaryWriter
            # Their own directory, as their own run: the epoch scalars' purge on resume counts
            # epochs, this one counts steps (it drops what steps after the checkpoint wrote).
            resumed_at = self.start_epoch * self._steps_per_epoch
            self._step_writer = SummaryWriter(log_dir=str(self.run_dir / STEPS),
                                              purge_step=resumed_at + 1 if resumed_at else None)
        for name, value in values.items():
            if value is not None:
                self._step_writer.add_scalar(f"step/{name}", float(value), self.global_step)

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
            out = sys.stderr if self.bars else sys.stdout
            tqdm.write(message, file=out)
            out.flush()  # block-buffered in a log file: the line must be there now

    # -- records ------------------------------------------------------------------------------
    def epoch_end(self, epoch: int, metrics: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
        """Append metrics.jsonl, write TensorBoard scalars, advance the bar or print a line."""
        if not self.write:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"epoch": epoch + 1, **metrics}) + "\n")
        seconds = metrics.get("seconds")
        if isinstance(seconds, float) and seconds > 0 and self._images:
            scalars = {**scalars, "time/epoch_seconds": seconds,
                       "throughput/images_per_second": self._images / seconds}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch + 1)
        self.writer.flush()
        if self._step_writer is not None:
            self._step_writer.flush()
        shown = {k: v for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}  # benchmark_rank: int
        line = " ".join(f"{k}={_number(v)}" for k, v in shown.items())
        self.print(f"{self.title} epoch {epoch + 1}/{self.epochs} {line}")  # above the bars
        if self.bars:
            brief = {k: shown[k] for k in BAR_KEYS if k in shown}
            self.epoch_bar.update(1)
            self.epoch_bar.set_postfix_str(" ".join(f"{k}={_number(v)}" for k, v in brief.items()))

    def architecture(self, epoch: int, model: Supernet, genotype: Genotype) -> None:
        """Op probabilities (per-op scalars, heatmaps, probabilities.jsonl) and the genotype."""
        if not self.write:
            return
        step = epoch + 1
        if not self._layout_written:
            self.writer.add_custom_scalars(prob_layout(model))
            self._layout_written = True
        for tag, value in prob_scalars(model).items():
            self.writer.add_scalar(tag, value, step)
        probs = model.probabilities()
        (self.run_dir / HEATMAPS).mkdir(exist_ok=True)
        if model.chain:  # one grid: the layers x every candidate
            self._heatmap("chain", plot.chain_probabilities(probs, model.chain, chain_ops(model.chain)),
                          chain_ops(model.chain), [p.name for p in model.chain],
                          f"chain, epoch {step}", step)
        for kind, p in (() if model.chain else probs.items()):
            self._heatmap(kind, p, model.op_names[kind], model.edge_names(kind),
                          f"{cell_title(kind)}, epoch {step}", step)
        record = {"epoch": step, **({"chain": True} if model.chain else {}),
                  "ops": {k: list(model.op_names[k]) for k in probs},
                  "edges": {k: model.edge_names(k) for k in probs},
                  "probabilities": {k: [[round(float(v), 6) for v in row] for row in p.tolist()]
                                    for k, p in probs.items()}}
        with open(self.run_dir / PROBABILITIES, "a") as f:
            f.write(json.dumps(record) + "\n")
        for kind in model.edge_logits:  # edge top-k: each node's distribution over its inputs
            p = model.node_logits(kind).detach().softmax(-1)
            first = model.cell_inputs
            img = plot.heatmap(p, [f"input {i}" for i in range(p.shape[1])],
                               [f"node {first + n}" for n in range(p.shape[0])],
                               f"{cell_title(kind)} inputs, epoch {step}")
            self.writer.add_image(f"arch_inputs/{kind}", plot.image_to_tensor(img), step)
        self.writer.add_text("genotype", f"epoch {step}: `{genotype}`", step)
        for kind in genotype.cells:
            self.writer.add_image(f"genotype/{kind}",
                                  plot.image_to_tensor(plot.cell_image(genotype, kind)), step)
        if genotype.layers:
            self.writer.add_image("genotype/chain", plot.image_to_tensor(plot.chain_image(genotype)),
                                  step)
        self.writer.flush()

    def _heatmap(self, kind: str, p: Any, ops: list[str] | tuple[str, ...], rows: list[str],
                 title: str, step: int) -> None:
        """One heatmap: written under heatmaps/ and to TensorBoard as ``arch/<kind>``."""
        img = plot.heatmap(p, ops, rows, title)
        img.save(self.run_dir / HEATMAPS / f"{kind}_epoch_{step:03d}.png")
        self.writer.add_image(f"arch/{kind}", plot.image_to_tensor(img), step)

    def close(self) -> None:
        """Close the bars and the TensorBoard writer."""
        self.epoch_bar.close()
        if self.write:
            self.writer.close()
        if self._step_writer is not None:
            self._step_writer.close()

