"""Runs on several processes under ``torchrun``: one process per device, one sample for all.

torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them (or with one process) every function here does nothing, and a run is exactly a
one-process run. With them, ``init`` joins the process group (NCCL for CUDA tensors, gloo for
CPU ones), each process takes the device ``cuda:LOCAL_RANK`` (or the CPU), the configured batch
size is the global batch and every process trains on its slice of it.

Every rank draws the same architecture sample at every step without talking to the others: a
sample is a function of ``(seed, samples drawn)``, and both are equal on every rank. So all
ranks run the same subnetwork, and the gradients they average belong to the same ops.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import InputError

# How long a collective waits for a rank that does not come (a dead or stuck peer) before the
# job fails instead of hanging; NAS_DIST_TIMEOUT (seconds) overrides it.
TIMEOUT_S = 600.0
# How long an interrupted rank waits for its peers to stop too before it leaves the group: they
# get the Ctrl-C together and meet within a second or two, unless one is inside a collective,
# where it cannot notice the Ctrl-C until its peers leave (so this is what such a Ctrl-C costs).
INTERRUPT_WAIT_S = 5.0
_setup_pending = False  # this rank has not yet reached the end-of-setup agreement
T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """The number of processes (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the rank that writes the run directory and prints (rank 0)."""
    return rank() == 0


def init() -> None:
    """Join the process group that torchrun's environment describes; idempotent."""
    global _setup_pending
    if not launched() or dist.is_initialized():
        return
    raw = os.environ.get("NAS_DIST_TIMEOUT", str(TIMEOUT_S))
    try:
        timeout = float(raw)
    except ValueError:
        raise InputError(f"NAS_DIST_TIMEOUT: expected seconds, got '{raw}'") from None
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    _setup_pending = True


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run, else ``device`` itself."""
    if world_size() == 1 or device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index is not None and device.index != local:
        raise InputError(f"device '{device}': under torchrun every process uses cuda:LOCAL_RANK; "
                         "use --device cuda (or auto)")
    if local >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local} but {torch.cuda.device_count()} CUDA device(s) here: "
                         "start at most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", local)


def per_rank_batch(batch_size: int, key: str) -> int:
    """The slice of the global batch ``batch_size`` (config ``key``) that each rank trains on."""
    world = world_size()
    if batch_size % world:
        raise InputError(f"{key}: {batch_size} is the global batch, split over {world} processes; "
                         f"make it a multiple of {world}")
    return batch_size // world


def batch_note(batch_size: int, device: torch.device) -> str:
    """What the log line says about the batch: ``, batch 64 = 2 processes x 32 (gloo)``."""
    world = world_size()
    if world == 1:
        return ""
    backend = "nccl" if device.type == "cuda" else "gloo"  # the one that carries this run's tensors
    return f", batch {batch_size} = {world} processes x {batch_size // world} ({backend})"


# -- agreement at the end of setup -------------------------------------------------------------
class AgreedError(InputError):
    """A setup error that every rank raises together; only rank 0 prints it."""


def begin_setup() -> None:
    """Join the process group if need be; mark the start of a run's setup (ended by ``agree``)."""
    global _setup_pending
    init()
    _setup_pending = world_size() > 1


def setup_pending() -> bool:
    """True when this rank failed (or may fail) before the end-of-setup agreement."""
    return _setup_pending


def agree(value: Any = None, error: BaseException | None = None) -> Any:
    """Every rank's setup succeeded: return rank 0's ``value``; else raise the first error.

    Called once per run by every rank, by the run at the end of its setup or, on a rank whose
    setup failed, by the CLI with its ``error``; so a mistake on one rank (a missing data
    directory on one machine) ends every rank with the same one line instead of a hang.
    """
    global _setup_pending
    _setup_pending = False
    if world_size() == 1:
        return value
    mine = None if error is None else f"{error}"
    found: list[Any] = [None] * world_size()
    dist.all_gather_object(found, (mine, value))
    for r, (message, _) in enumerate(found):
        if message is not None:
            raise AgreedError(message if r == rank() else f"rank {r}: {message}")
    return found[0][1]


# -- gradients and statistics ------------------------------------------------------------------
def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients that exist across ranks, in one flat all-reduce.

    Ranks must hold gradients for the same parameters, as they do when they ran the same
    sample: in gdas mode only the sampled ops' weights have one, so only they are sent.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    start = 0
    for g in grads:
        g.copy_(flat[start:start + g.numel()].view_as(g))
        start += g.numel()


def all_sum(values: Tensor) -> Tensor:
    """``values`` summed over ranks (in place)."""
    if world_size() > 1:
        dist.all_reduce(values)
    return values


def check_same(tensors: Iterable[Tensor], what: str) -> None:
    """Fail loudly if the ranks hold different ``tensors`` (they never should)."""
    if world_size() == 1:
        return
    mine = torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors])
    found = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(found, mine)
    for r, other in enumerate(found):
        if not torch.equal(other, found[0]):
            gap = (other - found[0]).abs().max().item()
            raise RuntimeError(f"rank {r} holds different {what} than rank 0 (max difference "
                               f"{gap:.3g}): a bug, please report")


def average_buffers(model: nn.Module) -> None:
    """Give every rank the same buffers: the floating ones (batch-norm running statistics, which
    each rank updates from its own slice of the batch) averaged over the ranks, the others
    (batch counts, equal anyway) rank 0's."""
    if world_size() == 1:
        return
    floats = [b for b in model.buffers() if b.is_floating_point()]
    if floats:
        flat = torch.cat([b.detach().reshape(-1) for b in floats])
        dist.all_reduce(flat)
        flat /= world_size()
        start = 0
        for b in floats:
            b.copy_(flat[start:start + b.numel()].view_as(b))
            start += b.numel()
    for b in model.buffers():
        if not b.is_floating_point():
            dist.broadcast(b, 0)


def main_first(load: Callable[[bool], T]) -> T:
    """``load(download=True)`` on rank 0 alone, then on the other ranks once it is done.

    Rank 0 fetches the files while the others wait, so that no two processes write one
    directory at once. The others then call ``load(True)`` if rank 0 succeeded (they read what it
    wrote, or, on a machine that does not share its file system, fetch their own) and
    ``load(False)`` if it failed (they fail too, and rank 0's error is the one reported).
    """
    if world_size() == 1:
        return load(True)
    flag = torch.zeros(1, dtype=torch.long)
    if is_main():
        try:
            result = load(True)
            flag += 1
            return result
        finally:
            dist.broadcast(flag, 0)
    dist.broadcast(flag, 0)
    return load(bool(flag.item()))


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics)."""
    if world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def barrier() -> None:
    """Wait for every rank."""
    if world_size() > 1:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device, ignore: Iterable[str] = ()) -> nn.Module:
    """``model`` in DistributedDataParallel (``model`` itself on one process).

    ``ignore`` names parameters DDP leaves alone (the architecture logits: the search averages
    their gradients itself, after the architecture step); like DDP does for the others, they
    start as rank 0's, so that the ranks' samples agree even if the model was built unseeded.
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ignore = list(ignore)
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in ignore:
                    dist.broadcast(p, 0)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown(together: bool = False, interrupted: bool = False) -> None:
    """Leave the process group (at the end of a run); ``together``: once every rank is here;
    ``interrupted`` (Ctrl-C, SIGTERM): once every rank is here or ``INTERRUPT_WAIT_S`` passed.

    A rank that tears its group down while a peer still talks to it can kill that peer at exit
    ("terminate called without an active exception", SIGABRT), so ranks that all end the same
    way (a finished run, an error they agreed on) meet first; a rank whose peer failed does not
    wait for it. Ctrl-C reaches every rank of a job at about the same moment, but each stops
    where it was: they meet over the store, not in a collective, which could pair with a
    collective a peer is still in; and a second Ctrl-C (torchrun passes its own on) is ignored
    meanwhile, so that each rank still leaves with its status.
    """
    if dist.is_available() and dist.is_initialized():
        if together and world_size() > 1:
            try:
                dist.barrier()
            except Exception:  # a peer is gone after all: nothing left to wait for
                pass
        if interrupted and world_size() > 1:
            with signals_held():
                meet(INTERRUPT_WAIT_S)
                dist.destroy_process_group()
            return
        dist.destroy_process_group()


def meet(timeout_s: float) -> bool:
    """Wait, at most ``timeout_s``, until every rank has called ``meet``; True if they all did.

    The ranks meet over torchrun's key-value store (rank 0's or the agent's, at MASTER_ADDR and
    MASTER_PORT) through a connection of their own, so no collective is sent.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # the agent's store outlives one
    keys = [f"nas/interrupted/{attempt}/{r}" for r in range(world_size())]
    wait = datetime.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=wait)
        store.set(keys[rank()], "1")
        store.wait(keys, wait)
        return True
    except Exception:  # a peer did not come (it failed, or is stuck in a collective), or its
        return False   # rank 0 already left with the store: nobody is left to wait for


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM inside the block (on the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in held}
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, previous[s])
