"""What every run shares: the device, seeding, RNG states, the run directory, checkpoints, and
the loop's pieces that search and retraining both use (meter, autocast, the divergence check)."""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from . import distributed as dist
from . import __version__
from .config import check_plain
from .errors import Diverged, InputError, first_line
from .files import atomic_write
from .readback import check_run_files

CHECKPOINT = "checkpoint.pt"
MAX_CLASSES = 100_000  # beyond any dataset (ImageNet-21k has 21,841): a damaged checkpoint


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' requested but CUDA is not available here; "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' does not exist: {torch.cuda.device_count()} "
                             "CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device '{name}' (Apple's Metal) is not available on this machine; "
                             "use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"unsupported device '{name}' (use auto, cpu, cuda or cuda:N)")
    return device


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Keep memory that tensors free inside the process (glibc); False where not glibc.

    By default glibc maps blocks above 32 MB afresh each time and hands a heap top of more than
    twice the current threshold back to the system, so every CPU step faults the pages of its
    activations in again (40k faults and about a fifth of a small NAS-Bench-201 step). Freed
    memory is kept for the next step instead; the process keeps its peak size, which every step
    reaches anyway. Process-wide, so only the runs (search, train, benchmark) call it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def seed_everything(seed: int) -> None:
    """Seed Python's, and torch's CPU and CUDA, random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, to put in a checkpoint."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def path_problem(path: Path) -> str | None:
    """Why the system cannot hold ``path`` (a NUL byte, a part or the whole over its length
    limit), or None; checked before anything is created, so no parent is left behind."""
    if b"\0" in os.fsencode(path):
        return "it holds a NUL byte"
    try:
        name_max, path_max = os.pathconf(".", "PC_NAME_MAX"), os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:
        return f"its part {long[:24]}... has {len(os.fsencode(long))} bytes, over the system's " \
               f"limit of {name_max} for a file name"
    if len(os.fsencode(path.absolute())) >= path_max:
        return f"it is over the system's limit of {path_max} bytes for a path"
    return None


def check_output(path: str | Path, flag: str, *, directory: bool = False,
                 replace: bool = False) -> Path:
    """Fail in one line, before any work and changing nothing, if a command cannot write its
    output at ``path`` (``flag`` names the option): a name the system refuses, a file where a
    directory goes or the reverse, an existing file (unless ``replace``: a report written
    again), or no writable directory to make it in."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise InputError(f"cannot write {flag} {str(path)[:80]!r}: {problem}; choose another {flag}")
    try:
        if directory and path.exists() and not path.is_dir():
            raise InputError(f"{flag} {path} is a file, not a directory; choose another {flag}")
        if not directory and path.is_dir():
            raise InputError(f"{flag} {path} is a directory; give the name of a file to write")
        if not directory and not replace and (path.exists() or path.is_symlink()):
            raise InputError(f"{path} already exists; remove it or choose another {flag}")
        if path.is_file() and not os.access(path, os.W_OK):
            raise InputError(f"cannot write {path}: it is read-only; choose another {flag}")
        parent = path if path.is_dir() else next(
            (p for p in path.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path}: {parent} is not a writable directory; "
                             f"choose another {flag}")
    except OSError as exc:  # a symlink loop, no permission to look
        raise InputError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def within_memory(sizes: str, fix: str) -> Iterator[None]:
    """Turn an allocation failure inside (the CPU allocator's, CUDA's, MemoryError) into one
    line: sizes within their bounds may still not fit together in this machine's memory."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not (isinstance(exc, (MemoryError, torch.OutOfMemoryError))
                or "can't allocate memory" in str(exc)):
            raise
        raise InputError(f"out of memory at {sizes}: {fix}") from None


def check_run_dir(path: str | Path, *, resume: bool = False, force: bool = False) -> Path:
    """Fail early, changing nothing, if a run cannot start (or resume) in ``path``."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise InputError(f"cannot use the run directory {str(path)!r}: {problem}; choose "
                         "another --run-dir or name")
    try:
        return _check_run_dir(path, resume, force)
    except OSError as exc:  # a symlink loop, no permission to look, ...
        raise InputError(f"cannot use the run directory {path}: {exc.strerror or exc}; choose "
                         "another --run-dir") from None


def _check_run_dir(path: Path, resume: bool, force: bool) -> Path:
    if resume:
        if not (path / CHECKPOINT).is_file() and not (path / "config.yaml").is_file():
            raise InputError(f"cannot resume: {path / CHECKPOINT} does not exist")
    elif path.is_symlink() or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
        if not force:
            raise InputError(f"run directory {path} already exists; pass --resume {path} to "
                             "continue it, --force to overwrite it, or choose another --run-dir")
        check_replaceable(path)
    else:
        ancestor = path if path.exists() else _missing_root(path).parent
        if not ancestor.is_dir():
            raise InputError(f"cannot create the run directory {path}: {ancestor} is a file; "
                             "choose another --run-dir")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"cannot create the run directory {path}: {ancestor} is not "
                             "writable; choose another --run-dir")
    return path


def is_run_dir(path: Path) -> bool:
    """A directory this tool wrote: its config.yaml beside run output, or a `nas run` pair."""
    if (path / "config.yaml").is_file() and (
            any((path / f).is_file() for f in (CHECKPOINT, "metrics.jsonl", "genotype.json",
                                                "result.json"))
            or any(path.glob("events.out.tfevents.*"))):
        return True
    return any(is_run_dir(path / sub) for sub in ("search", "train") if (path / sub).is_dir())


def check_replaceable(path: Path) -> None:
    """Refuse --force on anything but a run directory of this tool (nothing is touched)."""
    what = None
    if path.is_symlink():
        what = "a symbolic link"
    else:
        real, cwd = path.resolve(), Path.cwd().resolve()
        if real == cwd or real in cwd.parents:
            what = "the current directory or one of its parents"
        elif real == Path.home().resolve():
            what = "the home directory"
        elif not path.is_dir():
            what = "a file"
        elif not is_run_dir(path):
            what = "not a run directory of gumbel-nas (no config.yaml beside a checkpoint, metrics or TensorBoard events)"
    if what:
        raise InputError(f"--force replaces only a run directory of gumbel-nas, and {path} is "
                         f"{what}; nothing was changed: choose another --run-dir")


def start_mode(path: str | Path, resume: bool, force: bool) -> tuple[Path, bool, bool]:
    """Check ``path`` and return it with (resume, force); a run stopped before its first
    checkpoint (its config saved, no checkpoint yet) is resumed by starting it again.

    With ``resume``, ``force`` means: start again a run whose checkpoint is lost although its
    metrics hold finished epochs (refused without it, so that no finished work is replaced).
    """
    path = check_run_dir(path, resume=resume, force=force)
    if resume:
        check_run_files(path)  # before any work: what the resumed run will read or append to
        if (path / CHECKPOINT).is_file():
            if force:
                raise InputError(f"--force with --resume starts again a run whose {CHECKPOINT} is "
                                 f"lost, and {path} has its checkpoint: drop --force to continue it")
            return path, True, False
        check_restart(path, force)
        return path, False, True
    return path, resume, force


def finished_epochs(path: str | Path) -> int:
    """The last epoch that a run directory's metrics.jsonl records (0 if none; torn lines skipped)."""
    return max((record["epoch"] for record in read_jsonl(Path(path) / "metrics.jsonl")), default=0)


def check_restart(path: str | Path, force: bool) -> None:
    """Refuse to start ``path`` again (as resuming a run without a checkpoint does) when it had
    a checkpoint that is lost, unless ``force``; nothing is changed.

    A checkpoint existed if the metrics record a second epoch (the first epoch's checkpoint was
    written before it began) or the run finished; one epoch alone may be a run stopped while
    its first checkpoint was written, which ``--resume`` starts again.
    """
    path = Path(path)
    done = finished_epochs(path)
    finished = (path / "result.json").is_file() or \
        ((path / "genotype.json").is_file() and (path / "genotypes").is_dir())
    if (done >= 2 or (done and finished)) and not force:
        raise InputError(f"cannot resume {path}: its {CHECKPOINT} is missing, but its metrics.jsonl "
                         f"holds {done} finished epoch(s); restore the checkpoint, or pass --force "
                         "with --resume to start the run again from epoch 1 (its files are replaced)")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``.jsonl`` file, in order; a line that is not a JSON object with a
    whole-number ``epoch`` (a line half written when the process was killed) is skipped."""
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if isinstance(epoch, int) and not isinstance(epoch, bool):
                records.append(record)
    return records


def _missing_root(path: Path) -> Path:
    """The outermost of ``path`` and its ancestors that does not exist yet (``path`` if its
    parent exists), so ``.parent`` is the directory a new run directory is made in."""
    while not path.parent.exists() and path.parent != path:
        path = path.parent
    return path


_created: dict[Path, Path] = {}  # run directory -> the outermost directory its creation made


def prepare_run_dir(path: str | Path, *, resume: bool = False, force: bool = False) -> Path:
    """Create the run directory (emptying it first with ``force``); call once setup succeeded."""
    path = check_run_dir(path, resume=resume, force=force)
    if not resume and path.exists() and (not path.is_dir() or any(path.iterdir())):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    outermost = _missing_root(path)
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only parent, a path under a regular file, ...
        if not existed and outermost.is_dir():  # the parents it made before it failed
            shutil.rmtree(outermost, ignore_errors=True)
        raise InputError(f"cannot create the run directory {path}: {exc.strerror or exc}; "
                         "choose another --run-dir") from None
    if not resume:
        _created[path] = path if existed else outermost
    # a checkpoint write that a killed process left half done: the checkpoint itself is whole
    (path / (CHECKPOINT + ".tmp")).unlink(missing_ok=True)
    return path


def discard_failed_start(path: str | Path) -> None:
    """Remove a run directory this process created, if the run failed before its first checkpoint.

    A failed start must leave nothing behind, so that the same command can simply be run again.
    """
    path = Path(path)
    root = _created.pop(path, None)
    if root is not None and not (path / CHECKPOINT).exists():
        shutil.rmtree(root, ignore_errors=True)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """``runs/<name>-<date>-<time>``: a new directory for every run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{name or 'run'}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path(root) / f"{name or 'run'}-{stamp}-{k}"
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact (and an
    interrupted write removes its temporary file; one a killed process left is removed when
    the run starts or resumes, ``prepare_run_dir``)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint on the CPU; ``kind`` ('search' or 'train') is checked when given."""
    path = Path(path)
    if path.is_dir():
        inner = [path / sub for sub in ("train", "search") if (path / sub / CHECKPOINT).is_file()]
        if not (path / CHECKPOINT).is_file() and inner:
            raise InputError(f"{path} is a `nas run` directory, which holds two runs: pass "
                             f"{inner[0]} (its {inner[0].name} run)")
        path = path / CHECKPOINT
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        # tensors and plain values only: a downloaded checkpoint is data and must not run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise InputError(f"{path} holds objects other than tensors and plain Python values; "
                             "it is not loaded, since unpickling them could run code") from None
        detail = "not a torch.save file" if isinstance(exc, pickle.UnpicklingError) else \
            first_line(exc, typed=False)
        raise InputError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {detail})") from None
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{path} is not a gumbel-nas checkpoint")
    if kind is not None and state["kind"] != kind:
        raise InputError(f"{path} is a {state['kind']} checkpoint, not a {kind} checkpoint")
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InputError(f"{path} is damaged: its epoch is {epoch!r}, not a whole number >= 0")
    classes = state.get("num_classes", 1)  # a classifier of that many outputs is built from it
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        raise InputError(f"{path} is damaged: its num_classes is {str(classes)[:40]!r}, not a "
                         f"whole number from 1 to {MAX_CLASSES:,}")
    return state


def checkpoint_state(kind: str, epoch: int, objects: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A checkpoint: every object's ``state_dict()``, the RNG states, the kind and the epoch.

    ``version`` (of gumbel-nas) lets a reader say which version wrote a checkpoint that does
    not fit its own.
    """
    return {"kind": kind, "epoch": epoch, **{k: obj.state_dict() for k, obj in objects.items()},
            "rng": rng_state(), "version": __version__, **extra}


# Keys a resumed run may take from an edited config.yaml (or flags): where the data is, how it
# is read and what is monitored change no result; epochs may grow (the schedules stretch).
RESUME_MAY_CHANGE = ("data.root", "data.download", "data.workers", "data.on_device", "device",
                     "search.benchmark", "search.channels_last", "train.channels_last",
                     "search.log_every", "train.log_every", "threads")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any], done: int) -> dict[str, tuple]:
    """``{key: (old, new)}`` of the epochs that grew; InputError for any other edit of the config."""
    old, new = _flat(saved), _flat(current)
    grown = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b or key in RESUME_MAY_CHANGE:
            continue
        if key.endswith(".epochs") and isinstance(a, int) and isinstance(b, int) and b >= max(a, done):
            grown[key] = (a, b)
            continue
        allowed = "search.epochs and train.epochs may grow" if not key.endswith(".epochs") else \
            f"epochs may grow, not shrink below the {max(a or 0, done)} the checkpoint planned or did"
        raise InputError(f"config.yaml was edited since the checkpoint: {key} is {b!r}, the run "
                         f"used {a!r}; a resumed run keeps its config ({allowed}): undo the edit "
                         "or start a new run")
    return grown


def stretch_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, epochs: int) -> None:
    """Make a resumed cosine schedule end at ``epochs``: the learning rate jumps to that curve.

    The optimizer's learning rates are set here; the schedule's own record of them
    (``get_last_lr()``) follows at its next ``step()``, the end of the next epoch, before any
    checkpoint holds it."""
    scheduler.T_max = epochs
    t = scheduler.last_epoch
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (
            1 + math.cos(math.pi * t / epochs)) / 2


def first_mismatch(obj: Any, state: Any) -> str | None:
    """For a module: the first tensor of a module's state that the saved one lacks, adds or shapes otherwise."""
    if not (isinstance(obj, torch.nn.Module) and isinstance(state, dict)):
        return None
    mine = obj.state_dict()
    for key, value in mine.items():
        if key not in state:
            return f"the checkpoint has no tensor '{key}'"
        if isinstance(value, torch.Tensor) and isinstance(state[key], torch.Tensor) \
                and value.shape != state[key].shape:
            return (f"tensor '{key}' has shape {list(state[key].shape)} in the checkpoint, "
                    f"{list(value.shape)} in the model the config builds")
    extra = [k for k in state if k not in mine]
    return f"the checkpoint has a tensor '{extra[0]}' the model lacks" if extra else None


def resume_from(run_dir: str | Path, kind: str, objects: dict[str, Any],
                config: dict[str, Any] | None = None) -> tuple[int, dict[str, tuple]]:
    """Load ``run_dir``'s checkpoint into every object and the RNGs.

    Returns the epochs done and the epoch counts the (edited) ``config`` grew, ``{key: (old, new)}``.
    """
    path = Path(run_dir) / CHECKPOINT
    state = load_checkpoint(path, kind)
    epoch = state["epoch"]
    saved = state.get("config")
    if saved is not None:
        check_plain(saved, f"{path}: its config")
    planned = saved.get(kind, {}).get("epochs") if isinstance(saved, dict) and \
        isinstance(saved.get(kind), dict) else None
    if isinstance(planned, int) and epoch > planned:
        raise InputError(f"{path} is damaged: its epoch is {epoch}, but its config plans "
                         f"{planned} epochs")
    grown = config_changes(state["config"], config, epoch) \
        if config is not None and isinstance(state.get("config"), dict) else {}
    for key, obj in objects.items():
        problem = first_mismatch(obj, state.get(key))
        if problem:
            raise InputError(f"{path} does not match the saved config: {problem}")
    try:
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        set_rng_state(state["rng"])
        return epoch, grown
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        detail = first_line(exc, typed=False) or repr(exc)
        raise InputError(f"{path} does not match the saved config: {detail}") from None


# -- the loop's pieces that search and retraining share -----------------------------------------
class Meter:
    """Running loss and accuracy kept on the device; read (one sync) only when asked."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.count = 0
        self.last: Tensor | None = None  # the loss added last (per-step logging reads it)

    def add(self, loss: Tensor, logits: Tensor, target: Tensor) -> None:
        n = target.shape[0]
        self.last = loss.detach()
        self.loss += loss.detach() * n
        self.correct += (logits.detach().argmax(1) == target).sum()
        self.count += n

    def reduce(self) -> None:
        """Sum the meter over every rank (a collective: call it on all ranks)."""
        if dist.world_size() == 1:
            return
        total = dist.all_sum(torch.stack([self.loss.double(), self.correct.double(),
                                          torch.tensor(float(self.count), device=self.loss.device,
                                                       dtype=torch.float64)]))
        self.loss, self.correct, self.count = total[0], total[1].long(), int(total[2].item())

    def read(self) -> tuple[float, float]:
        """Mean loss and accuracy (%) so far; NaN when nothing was added."""
        if not self.count:
            return math.nan, math.nan
        return self.loss.item() / self.count, 100.0 * self.correct.item() / self.count


def steps_note(steps: int, cap: int | None, key: str, images: str, batch: int) -> str:
    """``N steps/epoch``, and why, when ``key`` (a steps_per_epoch cap) asked for more than the
    data makes: ``images`` says which images (``the 1,000 training images``)."""
    if cap and steps < cap:
        return (f"{steps} steps/epoch ({key}: {cap} is a cap, and {images} make {steps} "
                f"batch{'es' if steps != 1 else ''} of {batch})")
    return f"{steps} steps/epoch"


def channels_last(setting: bool | str, device: torch.device) -> bool:
    """Whether to run in channels-last memory format: ``auto`` means on a CPU, where a search
    step takes 0.6-0.75x the time (docs/explanation/speed.md); on other devices it was not measured, so off."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels-last memory format when asked and it is a batch of images (4-D)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when enabled."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _last_good(epoch: int, run_dir: Path) -> str:
    return f"; the last good checkpoint is {run_dir / CHECKPOINT} (epoch {epoch})" if epoch else ""


def check_finite(losses: list[float], epoch: int, run_dir: Path) -> None:
    """Stop with a clear message when an epoch's loss is inf or nan."""
    bad = [v for v in losses if not math.isfinite(v)]
    if bad:
        raise Diverged(f"the loss became {bad[0]} in epoch {epoch + 1}: try a lower learning "
                       f"rate (lr, arch_lr) or gradient clipping{_last_good(epoch, run_dir)}")


def check_finite_values(values: dict[str, tuple[Tensor, str]], epoch: int, run_dir: Path) -> None:
    """Stop with a clear message when a value the run learns beside the weights holds inf or nan
    (``{what: (tensor, what to lower)}``: architecture logits, budget multipliers); the losses
    may stay finite meanwhile, since a hard sample of NaN logits is still a network."""
    for what, (value, fix) in values.items():
        bad = value.detach()[~torch.isfinite(value.detach())]
        if bad.numel():
            raise Diverged(f"{what} became {bad[0].item()} in epoch {epoch + 1}: try a lower "
                           f"{fix}{_last_good(epoch, run_dir)}")
