"""One run's life, as a search and a retraining both live it.

``begin`` checks the run directory before anything is built; ``open_run_dir`` creates it (or
resumes it: every checkpointed object and the RNGs restored, the schedules stretched when the
edited config grew the epochs) and snapshots the config; ``open_monitor`` starts the progress
bar, ``metrics.jsonl`` and TensorBoard; ``epochs_of`` wraps the epochs, so that a run that fails
before its first checkpoint leaves no directory behind (Ctrl-C and SIGTERM, which ``nas.cli``
turns into KeyboardInterrupt, keep the last checkpoint for ``--resume``); ``save_epoch`` writes
an epoch's checkpoint atomically. Rank 0 alone writes the run directory.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from . import distributed as dist
from .config import Config, save_config, to_dict
from .monitor import Monitor
from .runtime import (CHECKPOINT, checkpoint_state, discard_failed_start, prepare_run_dir,
                      resume_from, save_checkpoint, start_mode)


def begin(run_dir: str | Path, resume: bool, force: bool) -> tuple[Path, bool, bool]:
    """Start a run's setup: ``run_dir`` checked, nothing written; (run_dir, resume, force) as
    ``start_mode`` decides them."""
    dist.begin_setup()
    return start_mode(run_dir, resume, force)


def open_run_dir(kind: str, run_dir: Path, cfg: Config, objects: dict[str, Any], *, resume: bool,
                 force: bool, stretch: Callable[[int], None]) -> tuple[int, dict[str, tuple]]:
    """Create (or resume into) ``run_dir`` for a ``kind`` run ('search' or 'train').

    A new run saves ``config.yaml``; a resumed one loads its checkpoint into ``objects`` and
    calls ``stretch(epochs)`` when the edited config grew ``<kind>.epochs``. Returns the epochs
    done and the epoch counts grown, ``{key: (old, new)}``.
    """
    main = dist.is_main()
    if main:
        prepare_run_dir(run_dir, resume=resume, force=force)
    start, grown = 0, {}
    if resume:
        start, grown = resume_from(run_dir, kind, objects, to_dict(cfg))
        if f"{kind}.epochs" in grown:  # the saved config was edited: the schedules stretch
            stretch(getattr(cfg, kind).epochs)
    elif main:
        save_config(cfg, run_dir / "config.yaml")
    return start, grown


def resume_lines(kind: str, run_dir: Path, start: int, epochs: int, grown: dict[str, tuple],
                 note: str, stretched: str) -> list[str]:
    """What a resumed run prints first: where it goes on, and each epoch count the edited config
    grew (``stretched``: what that does to the schedules); ``note`` ends the first line."""
    lines = [f"resuming {run_dir} at epoch {start + 1}/{epochs}{note}" if start < epochs
             else f"{run_dir} has finished all {epochs} epochs"]
    return lines + [f"config.yaml was edited: {key} {was} -> {now}" + (
        f"; {stretched}" if key == f"{kind}.epochs" else "") for key, (was, now) in grown.items()]


def open_monitor(kind: str, run_dir: Path, epochs: int, start: int, quiet: bool,
                 log_every: int) -> Monitor:
    """The run's progress bar, ``metrics.jsonl`` and TensorBoard events (written by rank 0)."""
    return Monitor(run_dir, epochs=epochs, start_epoch=start, quiet=quiet, title=kind,
                   write=dist.is_main(), log_every=log_every)


@contextlib.contextmanager
def epochs_of(run_dir: Path, monitor: Monitor) -> Iterator[None]:
    """Run the epochs inside: ``monitor`` closed whatever happens, and ``run_dir`` removed if
    this process created it and an error came before its first checkpoint."""
    try:
        yield
    except Exception:
        monitor.close()
        discard_failed_start(run_dir)
        raise
    finally:
        monitor.close()


def save_epoch(kind: str, epoch: int, objects: dict[str, Any], cfg: Config, run_dir: Path,
               **extra: Any) -> None:
    """Checkpoint the end of ``epoch`` (0-based): every object's state, the RNGs, the config
    and ``extra``; written atomically, by rank 0."""
    if dist.is_main():
        save_checkpoint(checkpoint_state(kind, epoch + 1, objects, config=to_dict(cfg), **extra),
                        run_dir / CHECKPOINT)
