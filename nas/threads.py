"""How many CPU threads a run uses, and how its idle threads wait.

The default thread count is what this process may really use: the CPUs of its affinity mask,
capped by a cgroup (v1 or v2) CPU quota, less the CPUs other processes kept busy while this one
started (measured from ``/proc/stat``). ``threads`` in the config or ``--threads`` chooses it
instead, and ``OMP_NUM_THREADS`` is honoured when neither does. The run's header line states it.

Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), set before torch
loads its OpenMP runtime, unless the user set a policy: beside other busy processes a spinning
thread takes the CPU from the thread everyone waits for, and the quick search ran 3 to 10 times
slower (docs/explanation/threads.md). This module imports torch only when it applies
a count.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WAIT_POLICY = "PASSIVE"  # measured: docs/explanation/threads.md
_SAMPLE_S = 0.3          # the shortest window over which other processes' load is measured


def set_wait_policy() -> bool:
    """Make idle OpenMP threads sleep, unless the user chose (call before importing torch).

    Returns whether it set the policy; once torch is loaded it is too late, and nothing is set.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


# -- the CPUs this process may use --------------------------------------------------------------
def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where the system does not say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _quota(text: str) -> float | None:
    """CPUs granted by a v2 ``cpu.max`` line (``max 100000`` or ``150000 100000``)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _ancestors(root: Path, inner: str) -> list[Path]:
    """``root/inner`` and every folder above it up to ``root`` (a quota may be set on any)."""
    parts = [p for p in inner.strip("/").split("/") if p]
    return [root.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def cgroup_cpus(proc_cgroup: str | None = None, fs: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``) in
    CPUs, the smallest along its path; None when there is none. ``proc_cgroup`` is the text of
    ``/proc/self/cgroup`` (read when not given)."""
    fs = Path(fs)
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    found: list[float] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, inner = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified tree
            for folder in _ancestors(fs, inner):
                try:
                    q = _quota((folder / "cpu.max").read_text())
                except OSError:
                    continue
                if q is not None:
                    found.append(q)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            for mount in {fs / controllers, fs / "cpu", fs / "cpu,cpuacct"}:
                # inside a container the path is often the mount itself
                for folder in [*_ancestors(mount, inner), mount]:
                    q = _quota_v1(folder)
                    if q is not None:
                        found.append(q)
    return min(found) if found else None


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    A fractional quota rounds down (at least 1): a thread more than the quota pays is
    throttled in every parallel region, and the others wait for it.
    """
    cpus = len(affinity_cpus())
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


# -- what other processes keep busy -------------------------------------------------------------
def _cpu_ticks(cpus: set[int], stat: str | None = None) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from ``/proc/stat``."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return None
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


@dataclass
class Sample:
    """A moment's CPU counters: the machine's (over our CPUs) and this process's own time."""

    when: float
    ticks: tuple[int, int] | None
    own: float

    @classmethod
    def now(cls, cpus: set[int]) -> "Sample":
        """The counters now (this process's time includes its finished children: data workers)."""
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return cls(time.monotonic(), _cpu_ticks(cpus), own)


def others_busy(start: Sample, end: Sample) -> float | None:
    """CPUs that other processes kept busy between two samples (this process's time taken out)."""
    if start.ticks is None or end.ticks is None or end.when <= start.when:
        return None
    busy, total = end.ticks[0] - start.ticks[0], end.ticks[1] - start.ticks[1]
    if total <= 0:
        return None
    cpus = total / ((os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
                    * (end.when - start.when))
    busy_cpus = busy / total * cpus - (end.own - start.own) / (end.when - start.when)
    return max(0.0, busy_cpus)


_started: Sample | None = None


def start_sampling() -> None:
    """Remember the CPU counters now, so the load while the run starts is measured (the CLI
    calls this first thing; without it, ``choose`` measures over a short pause)."""
    global _started
    _started = Sample.now(affinity_cpus())


# -- the choice ---------------------------------------------------------------------------------
@dataclass
class Threads:
    """A thread count and where it came from, for the header line."""

    count: int
    why: str

    def note(self) -> str:
        """``, 1 thread (2 CPUs usable, about 1.8 busy with other work)``."""
        return f", {self.count} thread{'s' if self.count != 1 else ''} ({self.why})"


def choose(setting: int | None = None, processes: int = 1) -> Threads:
    """The thread count of this process: ``setting`` when given, else ``OMP_NUM_THREADS``,
    else the usable CPUs that other work leaves free, shared by ``processes`` on this machine."""
    global _started
    if setting is not None:
        return Threads(setting, "threads setting")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return Threads(int(env), "OMP_NUM_THREADS")
    cpus = affinity_cpus()
    usable = usable_cpus()
    start = _started
    if start is None or time.monotonic() - start.when < _SAMPLE_S:
        start = start or Sample.now(cpus)
        time.sleep(max(0.0, _SAMPLE_S - (time.monotonic() - start.when)))
    _started = Sample.now(cpus)  # a later choice (nas run's retraining) measures from here
    busy = others_busy(start, _started)
    share = max(1, usable // max(1, processes))
    if busy is None:
        return Threads(share, f"{usable} CPUs usable" if processes == 1 else
                       f"{usable} CPUs usable, shared by {processes} processes")
    free = min(usable, len(cpus) - busy)  # a quota also bounds what is free
    count = max(1, min(share, math.floor(free / max(1, processes) + 0.5)))
    shared = f", shared by {processes} processes" if processes > 1 else ""
    return Threads(count, f"{usable} CPUs usable, about {busy:.1f} busy with other "
                          f"work{shared}; --threads N to choose")


def use_threads(setting: int | None = None) -> Threads:
    """Choose the thread count (``choose``) and give it to torch."""
    import torch
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    chosen = choose(setting, processes)
    torch.set_num_threads(chosen.count)
    return chosen
