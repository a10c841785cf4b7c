"""Latency measured in the runtime that will run the network, kept in a portable table file.

``measure`` times a module on an input in a runtime: ``torch`` (eager, ``measure_latency``) or
``onnxruntime`` (the module alone exported to ONNX in memory, run by an ``InferenceSession`` with
``threads`` intra-op threads, one inter-op thread, sequential execution), by the wall clock or
the thread's CPU time: the least of a few medians of timed runs after warm-up runs.

``measure_table`` fills a ``LatencyTable``: per (choice point, op), where a choice point is a
row of a logit group (an edge of a cell kind), the milliseconds that op adds to the network the
config's ``network:`` options build, and the base (stem, head, the fixed parts), all timed in the
runtime on the machine it runs on (``build_cost_table``'s probe networks, ``calibrate=False``).
Per-block sums miss where a runtime fuses layers or a block is memory-bound (HW-NAS-Bench), so
the table also holds corrections fitted on whole networks: K random networks of the space timed
in the same runtime, ``measured ~ a * (base + sum of ops) + b`` and, with enough networks, a base
and one scale per op, by least squares of the relative errors, with the fits' errors. What a
graph runtime folds or prunes is not priced (``as_deployed``). The file is JSON, data only:
runtime and version, machine, threads, batch, clock, the space and the options and image size it
was measured for; ``search.budget.latency_table`` prices a search with it, and a table for
another space or other shapes is refused in one line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import MAX_THREADS, Config, check_options
from .cost import CostTable, build_cost_table, measure_latency
from .errors import InputError
from .export import ONNX_OPSET, Logits
from .genotype import Genotype
from .network import evaluating
from .spaces import build_network, build_supernet, first_line, get_space
from .supernet import Supernet

RUNTIMES = ("torch", "onnxruntime")
FORMAT = "gumbel-nas latency table"
FORMAT_VERSION = 1
RUNS, WARMUP = 30, 5
ROUNDS = 3  # a measurement's runs are split in rounds, the least median kept
NETWORKS = 30  # random whole networks the corrections are fitted on
CANDIDATES = 20  # random networks priced per one timed: those timed span the range of sums
MAX_BATCH = 1024  # images per timed forward: beyond this, a typo
MAX_RUNS = 10_000
MAX_NETWORKS = 1000
MAX_FILE_BYTES = 64 * 2**20  # a table of any space is a few kB to a few MB


# -- runtimes -----------------------------------------------------------------------------------
def check_runtime(runtime: str, flag: str = "--runtime") -> None:
    """Fail in one line for an unknown runtime, or one whose packages are missing here."""
    if runtime not in RUNTIMES:
        raise InputError(f"{flag}: unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if runtime == "onnxruntime":
        missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
        if missing:
            raise InputError(f"{flag} onnxruntime needs the packages {', '.join(missing)}: "
                             "install the export extra, pip install 'gumbel-nas[export]' "
                             "(pip install -e '.[export]' in a checkout)")


def runtime_version(runtime: str) -> str:
    """``torch 2.x`` / ``onnxruntime 1.x``."""
    if runtime == "onnxruntime":
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch {torch.__version__}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """What the table was measured on: architecture, CPU model, operating system."""
    return {"arch": platform.machine(), "cpu": cpu_model(), "system": platform.system()}


def onnx_bytes(module: nn.Module, x: Tensor) -> bytes:
    """``module`` (eval mode) as an ONNX model of input ``x``'s shape, in memory.

    The TorchScript-based exporter where torch still has it: a few hundredths of a second per op
    where the dynamo exporter (``nas export``'s) takes seconds, and onnxruntime optimises either
    graph the same way (Conv+BN fused); else the dynamo exporter.
    """
    module = Logits(module).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer chatter
        try:
            buffer = io.BytesIO()
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"])
            return buffer.getvalue()
        except Exception:  # a torch without the TorchScript exporter
            pass
        try:
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=ONNX_OPSET,
                                        input_names=["input"], verbose=False)
        except Exception as exc:
            raise InputError(f"{type(module.network).__name__} could not be exported to ONNX to "
                             f"time it in onnxruntime: {first_line(exc)}") from None
        return program.model_proto.SerializeToString()


def onnx_session(model: bytes | str, threads: int) -> Any:
    """An onnxruntime CPU session: ``threads`` intra-op threads, one inter-op, sequential."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_calls(call: Callable[[], Any], runs: int = RUNS, warmup: int = WARMUP,
               clock: str = "wall") -> float:
    """Median milliseconds of ``call()`` over ``runs`` after ``warmup``, by ``clock``: ``wall``
    (what a device running nothing else sees) or ``cpu``, the calling thread's CPU time (one
    thread only: on a machine shared with other work a wall-clock run longer than a scheduler
    slice is stretched by the others, its CPU time is not)."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = now()
        call()
        times.append(now() - start)
    return 1000.0 * statistics.median(times)


def time_session(session: Any, x: Any, runs: int = RUNS, warmup: int = WARMUP,
                 clock: str = "wall") -> float:
    """Median milliseconds of ``session.run`` on the array ``x`` (``time_calls``)."""
    # a network whose output does not depend on its input (all-`none` cells) has no input left
    feed = {i.name: x for i in session.get_inputs()[:1]}
    return time_calls(lambda: session.run(None, feed), runs, warmup, clock)


def check_clock(clock: str, threads: int) -> None:
    """The CPU-time clock measures one thread: refused with more."""
    if clock not in CLOCKS:
        raise InputError(f"--clock: unknown clock {clock!r} (known: {', '.join(CLOCKS)})")
    if clock == "cpu" and threads != 1:
        raise InputError(f"--clock cpu times the calling thread alone: it needs --threads 1, "
                         f"got {threads}")


def measure(module: nn.Module, x: Tensor, runtime: str, threads: int, runs: int = RUNS,
            warmup: int = WARMUP, clock: str = "wall") -> float:
    """Milliseconds of ``module(x)`` (eval mode) in ``runtime`` with ``threads`` threads: the
    least of ``ROUNDS`` medians of ``runs / ROUNDS`` timed runs each, after ``warmup`` runs (a
    burst of other work on the machine spoils a round, not the measurement)."""
    check_clock(clock, threads)
    per = max(1, -(-runs // ROUNDS))
    with evaluating(module):
        if runtime == "onnxruntime":
            session = onnx_session(onnx_bytes(module, x.cpu()), threads)
            data = x.cpu().numpy()
            return min(time_session(session, data, per, warmup if r == 0 else 0, clock)
                       for r in range(ROUNDS))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                return min(measure_latency(module, x, per, warmup if r == 0 else 0)
                           if clock == "wall" else
                           time_calls(lambda: module(x), per, warmup if r == 0 else 0, clock)
                           for r in range(ROUNDS))
        finally:
            torch.set_num_threads(previous)


class WithSum(nn.Module):
    """A module whose output is added to itself: an op timed alone pays the sum that adds it
    to its node inside a cell (a `none` op's constant zeros fold away, with their sum)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = Logits(module)

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        return out + out


class RuntimeTimer:
    """``(module, x, runs) -> ms`` in a runtime, as ``build_cost_table`` calls it, less the
    runtime's cost of one call.

    A call into onnxruntime costs some microseconds whatever the graph does; an op timed alone
    pays it once, but inside a network it is paid once for all the ops. So each timing here is
    less the time of an identity graph on the same input (0 for torch, whose per-module cost a
    network pays per op too), and ``overhead`` of the network's input is added to the base.
    Each op is timed with the sum that adds its result to its node (``WithSum``).
    """

    def __init__(self, runtime: str, threads: int, warmup: int = WARMUP, clock: str = "wall") -> None:
        self.runtime, self.threads, self.warmup, self.clock = runtime, threads, warmup, clock
        self._overhead: dict[tuple[int, ...], float] = {}

    def overhead(self, shape: Sequence[int], runs: int = RUNS) -> float:
        """Milliseconds of a call that does nothing on an input of ``shape``."""
        key = tuple(shape)
        if self.runtime == "torch":
            return 0.0
        if key not in self._overhead:
            self._overhead[key] = measure(nn.Identity(), torch.zeros(key), self.runtime,
                                          self.threads, max(runs, RUNS), self.warmup, self.clock)
        return self._overhead[key]

    def whole(self, module: nn.Module, x: Tensor, runs: int) -> float:
        """A whole network's time, overhead included (as deployment pays it)."""
        return measure(module, x, self.runtime, self.threads, runs, self.warmup, self.clock)

    def __call__(self, module: nn.Module, x: Tensor, runs: int) -> float:
        return max(0.0, self.whole(WithSum(module), x, runs) - self.overhead(x.shape, runs))


# -- what a table fits --------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """``value`` as JSON data (a non-JSON option by its repr)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def network_options(space: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``network:`` options with the builder's defaults filled in: two configs that build
    the same network have the same options."""
    spec = get_space(space)
    if spec.network is None:
        raise InputError(f"search space '{space}' has no network builder, so it has no latency")
    defaults = {name: p.default for name, p in inspect.signature(spec.network).parameters.items()
                if p.default is not p.empty and name not in ("genotype", "num_classes")}
    given = check_options(spec.network, options, "network", skip=("genotype", "num_classes"))
    return {k: _plain(v) for k, v in sorted({**defaults, **given}.items())}


def fingerprint(space: str, network: Mapping[str, Any], image_size: int, batch: int,
                num_classes: int) -> str:
    """A short hash of what the table's numbers depend on (for a glance; the fields decide)."""
    text = json.dumps([space, dict(network), image_size, batch, num_classes], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    """Per (choice point, op) milliseconds in one runtime on one machine, and a correction.

    ``groups[g] = {"ops": [op names], "ms": [[ms per op] per row]}``: what op o at row r of
    logit group g (edge r of every cell of kind g) adds to the network's time. The prediction
    of a network is ``per_op.base + sum of scale[g][o] * its ops' ms`` where ``correction``
    has a ``per_op`` fit, else ``a * (base_ms + sum of its ops' ms) + b``.
    """

    runtime: str
    runtime_version: str
    machine: dict[str, str]
    threads: int
    batch: int
    space: str
    network: dict[str, Any]
    supernet: dict[str, Any]
    image_size: int
    num_classes: int
    base_ms: float
    groups: dict[str, dict[str, Any]]
    correction: dict[str, Any] = field(default_factory=lambda: {"a": 1.0, "b": 0.0, "networks": 0})
    runs: int = RUNS
    clock: str = "wall"
    created: str = ""
    gumbel_nas: str = ""

    def describe(self) -> str:
        """``onnxruntime 1.23.2 on x86_64 (AMD EPYC), 1 thread, batch 1``."""
        cpu = self.machine.get("cpu", "")
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        clock = ", thread CPU time" if self.clock == "cpu" else ""
        return (f"{self.runtime_version} on {self.machine.get('arch', '?')}"
                f"{f' ({cpu})' if cpu else ''}, {threads}, batch {self.batch}{clock}")

    def fits_note(self) -> str:
        """How well the correction fits the whole networks it was fitted on."""
        c = self.correction
        if not c.get("networks"):
            return "no whole-network correction"
        line = (f"{c['a']:.3f} * sum + {c['b']:.3f} ms: {100 * c['mean_rel_error']:.1f}% "
                f"(max {100 * c['max_rel_error']:.1f}%)")
        none = f"the per-op sum alone {100 * c['mean_rel_error_uncorrected']:.1f}%"
        per_op = c.get("per_op")
        if not per_op:
            return f"whole-network correction fitted on {c['networks']} random networks, {line}; {none}"
        return (f"per-op correction fitted on {c['networks']} random networks: mean error "
                f"{100 * per_op['mean_rel_error']:.1f}% (max {100 * per_op['max_rel_error']:.1f}%); "
                f"the line {line}; {none}")

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON data."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint(self.space, self.network, self.image_size, self.batch,
                                           self.num_classes),
                "unit": "ms", **asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the file atomically (a temporary file beside it, then renamed)."""
        path = Path(path)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def install(self, costs: CostTable, path: str | Path, correction: str = "best") -> None:
        """Make ``costs`` (a search's table of the same space) price latency by this table:
        with its per-op correction where it has one (``best``), its line (``line``), or the
        per-op sum alone (``none``)."""
        where = f"search.budget.latency_table {path}"
        for group, rows in costs.ops["params"].items():
            mine = self.groups.get(group)
            if mine is None or tuple(mine["ops"]) != tuple(costs.op_names[group]) \
                    or len(mine["ms"]) != rows.shape[0]:
                have = {g: f"{len(v['ms'])} rows of {len(v['ops'])} ops" for g, v in self.groups.items()}
                want = {g: f"{r.shape[0]} rows of {len(costs.op_names[g])} ops"
                        for g, r in costs.ops["params"].items()}
                raise InputError(f"{where}: the table's choice points {have} are not this "
                                 f"search's {want}; measure a table for this config")
        if set(self.groups) != set(costs.op_names):
            raise InputError(f"{where}: the table's logit groups {sorted(self.groups)} are not "
                             f"this search's {sorted(costs.op_names)}")
        per_op = self.correction.get("per_op") if correction == "best" else None
        a, b = (self.correction["a"], self.correction["b"]) if correction != "none" else (1.0, 0.0)
        scales = per_op["scales"] if per_op else {g: [a] * len(v["ops"]) for g, v in self.groups.items()}
        base = per_op["base"] if per_op else a * self.base_ms + b
        saved = {"base": {"latency_ms": base},
                 "ops": {"latency_ms": {g: [[k * ms for k, ms in zip(scales[g], row)] for row in v["ms"]]
                                        for g, v in self.groups.items()}}}
        costs.load_metric(saved, "latency_ms")
        costs.how["latency_ms"] = f"the latency table {path}: {self.describe()}, {self.fits_note()}"


# -- reading a table ----------------------------------------------------------------------------
def _need(ok: bool, path: Path, problem: str) -> None:
    if not ok:
        raise InputError(f"{path} is not a usable latency table: {problem}; measure one with "
                         "nas latency-table")


def _number(value: Any, path: Path, what: str, low: float = 0.0) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value >= low, path, f"{what} must be a finite number"
          + (f" >= {low:g}" if low > -math.inf else "") + f", got {value!r}")
    return float(value)


def _check_groups(groups: Any, path: Path) -> None:
    _need(isinstance(groups, dict) and groups, path, "'groups' must be a non-empty mapping")
    for g, v in groups.items():
        _need(isinstance(v, dict) and isinstance(v.get("ops"), list) and isinstance(v.get("ms"), list)
              and v["ms"] and all(isinstance(o, str) for o in v["ops"]), path,
              f"group {g!r} must hold 'ops' (names) and 'ms' (rows)")
        for r, row in enumerate(v["ms"]):
            _need(isinstance(row, list) and len(row) == len(v["ops"]), path,
                  f"group {g!r} row {r} must have one number per op ({len(v['ops'])})")
            for o, ms in enumerate(row):
                _number(ms, path, f"group {g!r} row {r} op {o}")


def read_table(path: str | Path) -> LatencyTable:
    """Read and check a latency table file; a malformed one fails in one line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        _need(size <= MAX_FILE_BYTES, path, f"{size:,} bytes, more than any table")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"latency table not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a usable latency table: it does not read as JSON "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    _need(isinstance(data, dict) and data.get("format") == FORMAT, path,
          f"it has no \"format\": \"{FORMAT}\"")
    _need(data.get("format_version") == FORMAT_VERSION, path,
          f"format version {data.get('format_version')!r}, this gumbel-nas reads {FORMAT_VERSION}")
    names = {f.name for f in LatencyTable.__dataclass_fields__.values()}
    missing = sorted(n for n in names if n not in data and n not in (
        "correction", "runs", "clock", "created", "gumbel_nas"))
    _need(not missing, path, f"it has no {', '.join(missing)}")
    _need(data["runtime"] in RUNTIMES, path, f"unknown runtime {data['runtime']!r}")
    for key in ("threads", "batch", "image_size", "num_classes"):
        _need(isinstance(data[key], int) and not isinstance(data[key], bool) and data[key] >= 1,
              path, f"{key} must be a whole number >= 1, got {data[key]!r}")
    for key in ("network", "supernet", "machine"):
        _need(isinstance(data[key], dict), path, f"{key} must be a mapping")
    _need(isinstance(data["space"], str) and isinstance(data["runtime_version"], str), path,
          "space and runtime_version must be text")
    _need(data.get("clock", "wall") in CLOCKS, path, f"unknown clock {data.get('clock')!r}")
    _number(data["base_ms"], path, "base_ms", low=-math.inf)
    _check_groups(data["groups"], path)
    c = data.get("correction", {"a": 1.0, "b": 0.0, "networks": 0})
    _need(isinstance(c, dict), path, "correction must be a mapping")
    _number(c.get("a"), path, "correction.a", low=1e-6)
    _number(c.get("b"), path, "correction.b", low=-math.inf)
    per_op = c.get("per_op")
    if per_op is not None:
        _need(isinstance(per_op, dict) and isinstance(per_op.get("scales"), dict)
              and set(per_op["scales"]) == set(data["groups"]), path,
              "correction.per_op must hold a base and scales for every group")
        _number(per_op.get("base"), path, "correction.per_op.base", low=-math.inf)
        for g, scales in per_op["scales"].items():
            _need(isinstance(scales, list) and len(scales) == len(data["groups"][g]["ops"]), path,
                  f"correction.per_op.scales.{g} must have one number per op")
            for k in scales:
                _number(k, path, f"correction.per_op.scales.{g}", low=1e-6)
    return LatencyTable(**{k: data[k] for k in names if k in data})


def check_fits(table: LatencyTable, cfg: Config, path: str | Path,
               num_classes: int | None = None) -> None:
    """Refuse in one line a table measured for another space, network, image size or batch."""
    where = f"search.budget.latency_table {path}"
    size = cfg.search.budget.image_size or cfg.data.image_size
    if table.space != cfg.space:
        raise InputError(f"{where} was measured for the {table.space} space, the config "
                         f"searches {cfg.space}")
    options = network_options(cfg.space, cfg.network)
    if table.network != options:
        differ = sorted(k for k in {*options, *table.network}
                        if options.get(k) != table.network.get(k))
        detail = ", ".join(f"{k}: table {table.network.get(k)!r}, config {options.get(k)!r}"
                           for k in differ)
        raise InputError(f"{where} was measured for other network: options ({detail}); "
                         "measure a table with this config")
    if table.image_size != size:
        raise InputError(f"{where} was measured at {table.image_size}x{table.image_size} images, "
                         f"the budget counts {size}x{size} (search.budget.image_size or "
                         "data.image_size)")
    if table.batch != cfg.search.budget.latency_batch:
        raise InputError(f"{where} was measured at batch {table.batch}, "
                         f"search.budget.latency_batch is {cfg.search.budget.latency_batch}; set "
                         "it to the table's batch or measure a table at this one")
    if num_classes is not None and table.num_classes != num_classes:
        raise InputError(f"{where} was measured for {table.num_classes} classes, the data has "
                         f"{num_classes}; measure it with --classes {num_classes}")


# -- measuring a table --------------------------------------------------------------------------
def random_genotypes(model: Supernet, count: int, seed: int) -> list[Genotype]:
    """``count`` genotypes of ``model``'s space: its derivation from random logits (the
    supernet's logits are restored after)."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.arch_parameters())
    saved = [p.detach().clone() for p in params]
    out = []
    try:
        with torch.no_grad():
            for _ in range(count):
                for p in params:
                    p.copy_(3 * torch.randn(p.shape, generator=g))
                out.append(model.genotype())
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return out


def _live_cell(nodes: Sequence[Sequence[tuple[str, int]]], inputs: int, outputs: Sequence[int],
               stand_in: str) -> tuple[list[list[tuple[str, int]]], bool]:
    """A cell's nodes as a graph runtime runs them (see ``as_deployed``), and whether the
    cell's output depends on its inputs at all."""
    varies = [True] * inputs  # which states depend on the cell's inputs (else: constants)
    for node in nodes:
        varies.append(any(op != "none" and varies[src] for op, src in node))
    used = [False] * len(varies)
    for s in outputs or [len(varies) - 1]:
        used[s] = True
    for i in reversed(range(len(nodes))):
        if used[inputs + i]:
            for op, src in nodes[i]:
                used[src] = used[src] or (op != "none" and varies[src])

    def runs_as(op: str, src: int, dst: int) -> str:
        if op == "none" or not (used[dst] and varies[dst]):
            return "none"  # pruned, or part of a constant
        return op if varies[src] else stand_in  # a folded op's constant is still summed

    live = [[(runs_as(op, src, inputs + i), src) for op, src in node] for i, node in enumerate(nodes)]
    return live, any(varies[s] for s in (outputs or [len(varies) - 1]))


def as_deployed(genotype: Genotype, stand_ins: Mapping[str, str] | None = None) -> Genotype:
    """The genotype as a graph runtime (onnxruntime) runs its network: an op whose result never
    reaches the cell's output is pruned (`none`); an op whose input is a constant (only `none`
    leads to it) is folded at export, but the constant is still summed into its node, which
    costs about what the kind's ``stand_ins`` op does (the cheapest: `skip_connect` is an
    identity and that sum; without one, `none`). A cell whose output is a constant makes the
    whole network one (every op `none`). Eager torch runs every op: its tables use the genotype."""
    cells, constant = {}, False
    for kind, nodes in genotype.cells.items():
        cells[kind], varies = _live_cell(nodes, genotype.inputs[kind], genotype.concat.get(kind, ()),
                                         (stand_ins or {}).get(kind, "none"))
        constant = constant or not varies
    if constant:
        cells = {k: [[("none", src) for _, src in node] for node in nodes]
                 for k, nodes in genotype.cells.items()}
    return replace(genotype, cells=cells)


def stand_ins(costs: CostTable) -> dict[str, str]:
    """Per logit group, its cheapest op other than `none` by the latency table ``costs``."""
    out = {}
    for kind, names in costs.op_names.items():
        mean = costs.ops["latency_ms"][kind].mean(0).tolist()
        usable = [o for o, name in enumerate(names) if name != "none"]
        if usable:
            out[kind] = names[min(usable, key=lambda o: mean[o])]
    return out


def priced_as(costs: CostTable, genotype: Genotype, runtime: str) -> float:
    """The latency ``costs`` gives ``genotype``'s network in ``runtime`` (as deployed there)."""
    if runtime == "onnxruntime":
        genotype = as_deployed(genotype, stand_ins(costs))
    return costs.of(genotype)["latency_ms"]


def constant(genotype: Genotype) -> bool:
    """Whether every op of ``genotype`` is `none` (as ``as_deployed`` leaves a constant network)."""
    return all(op == "none" for nodes in genotype.cells.values() for node in nodes for op, _ in node)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``ys ~ a * xs + b`` minimising the squared relative errors ``((a x + b - y) / y)^2`` (the
    small networks count as much as the large); (1, mean difference) when the xs cannot tell a
    slope, or tell one below 0 (noise swamping the spread would rank networks backwards)."""
    n = len(xs)
    w = [1.0 / max(y, 1e-9) ** 2 for y in ys]
    total = sum(w)
    mean_x = sum(wi * x for wi, x in zip(w, xs)) / total
    mean_y = sum(wi * y for wi, y in zip(w, ys)) / total
    var = sum(wi * (x - mean_x) ** 2 for wi, x in zip(w, xs))
    if n < 3 or var <= 1e-12 * max(1.0, mean_x ** 2) * total:
        return 1.0, statistics.fmean(ys) - statistics.fmean(xs)
    a = sum(wi * (x - mean_x) * (y - mean_y) for wi, x, y in zip(w, xs, ys)) / var
    if a <= 0:
        return 1.0, statistics.fmean(ys) - statistics.fmean(xs)
    return a, mean_y - a * mean_x


def spread(values: Sequence[float], count: int) -> list[int]:
    """Indices of ``count`` of ``values`` spread evenly over their range (the ends included), so
    that a line fitted through them is held at both ends."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    if count >= len(order):
        return order
    picks = sorted({order[round(k * (len(order) - 1) / max(1, count - 1))] for k in range(count)})
    return picks


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    """``|predicted - measured| / measured`` per network."""
    return [abs(p - m) / m for p, m in zip(predicted, measured)]


def op_sums(costs: CostTable, genotype: Genotype, runtime: str) -> dict[str, list[float]]:
    """Per logit group and op: the milliseconds ``costs`` gives the network for that op's uses
    (as deployed in ``runtime``); their sum plus the base is ``priced_as``."""
    if runtime == "onnxruntime":
        genotype = as_deployed(genotype, stand_ins(costs))
    table = costs.ops["latency_ms"]
    out = {}
    for g, t in table.items():
        out[g] = []
        for o in range(t.shape[1]):
            masked = {k: torch.zeros_like(v) for k, v in table.items()}
            masked[g][:, o] = t[:, o]
            alone = replace(costs, base={"latency_ms": 0.0}, ops={"latency_ms": masked})
            out[g].append(alone.of(genotype)["latency_ms"])
    return out


def fit_per_op(features: Sequence[Mapping[str, list[float]]], measured: Sequence[float]
               ) -> dict[str, Any] | None:
    """``measured ~ base + sum over (group, op) of scale * its ms`` minimising the squared
    relative errors (the FBNet table calibrated per op on whole networks: an op can cost less
    in a network than alone, where the runtime fuses it with its neighbours); None when the
    networks are too few for the ops seen, or a scale comes out at or below 0 (noise)."""
    keys = [(g, o) for g, row in features[0].items() for o in range(len(row))
            if any(f[g][o] > 0 for f in features)]
    if len(measured) < 2 * (len(keys) + 1):
        return None
    X = torch.tensor([[1.0] + [f[g][o] for g, o in keys] for f in features], dtype=torch.float64)
    y = torch.tensor(measured, dtype=torch.float64)
    w = 1.0 / y.clamp_min(1e-9)
    solution = torch.linalg.lstsq(X * w[:, None], y * w).solution.tolist()
    if not all(math.isfinite(v) for v in solution) or min(solution[1:]) <= 0:
        return None
    scales = {g: [1.0] * len(row) for g, row in features[0].items()}
    for (g, o), k in zip(keys, solution[1:]):
        scales[g][o] = k
    fitted = (X @ torch.tensor(solution, dtype=torch.float64)).tolist()
    errors = relative_errors(fitted, measured)
    return {"base": solution[0], "scales": scales, "mean_rel_error": statistics.fmean(errors),
            "max_rel_error": max(errors)}


def correction_of(sums: Sequence[float], measured: Sequence[float],
                  features: Sequence[Mapping[str, list[float]]] = ()) -> dict[str, Any]:
    """The whole-network corrections, ``measured ~ a * sums + b`` and, with ``features`` (each
    network's ``op_sums``) for enough networks, one scale per op; how well each fits."""
    if not sums:
        return {"a": 1.0, "b": 0.0, "networks": 0}
    a, b = fit_line(sums, measured)
    before = relative_errors(sums, measured)
    after = relative_errors([a * s + b for s in sums], measured)
    return {"a": a, "b": b, "networks": len(sums),
            "mean_rel_error": statistics.fmean(after), "max_rel_error": max(after),
            "mean_rel_error_uncorrected": statistics.fmean(before),
            "max_rel_error_uncorrected": max(before),
            "per_op": fit_per_op(features, measured) if features else None,
            "fit": "least squares of the relative errors over random whole networks spread over "
                   "the range of the per-op sums; in-sample errors",
            "sums_ms": list(sums), "measured_ms": list(measured)}


@dataclass
class Job:
    """What ``measure_table`` measures: the config's space and network, in a runtime."""

    cfg: Config
    runtime: str
    batch: int = 1
    threads: int = 1
    runs: int = RUNS
    networks: int = NETWORKS
    num_classes: int = 10
    clock: str = "wall"

    @property
    def image_size(self) -> int:
        return self.cfg.search.budget.image_size or self.cfg.data.image_size

    def check(self) -> None:
        """Fail in one line on sizes out of bounds or a runtime that is not installed."""
        check_runtime(self.runtime)
        for flag, value, low, high in (("--batch", self.batch, 1, MAX_BATCH),
                                       ("--threads", self.threads, 1, MAX_THREADS),
                                       ("--runs", self.runs, 3, MAX_RUNS),
                                       ("--networks", self.networks, 0, MAX_NETWORKS),
                                       ("--classes", self.num_classes, 1, 100_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"{flag} must be a whole number from {low} to {high}, got {value!r}")
        check_clock(self.clock, self.threads)
        if self.networks in (1, 2):
            raise InputError(f"--networks must be 0 (no correction) or at least 3 to fit a line, "
                             f"got {self.networks}")

    def build(self, genotype: Genotype) -> nn.Module:
        return build_network(self.cfg.space, genotype, self.num_classes, self.cfg.network)

    def steps(self, model: Supernet) -> int:
        """Progress-bar steps: the probe networks and the random networks."""
        return max(len(ops) for ops in model.op_names.values()) + self.networks


def supernet_of(job: Job) -> Supernet:
    """The space's supernet (its choice points and ops), as the search builds it."""
    return build_supernet(job.cfg.space, job.num_classes, "gdas", job.cfg.seed, job.cfg.supernet)


def measure_table(job: Job, model: Supernet,
                  progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Time every (choice point, op), the base and ``job.networks`` random whole networks."""
    from . import __version__
    step = progress or (lambda text: None)
    cfg, size = job.cfg, job.image_size
    job.build(model.genotype())  # network: options fail in one line before any timing
    timer = RuntimeTimer(job.runtime, job.threads, clock=job.clock)
    x = torch.zeros(job.batch, 3, size, size)
    with torch.random.fork_rng(devices=[]):
        raw = build_cost_table(model, job.build, size, ["latency_ms"], torch.device("cpu"),
                               cfg.space, job.batch, job.runs, step, timer, calibrate=False)
        base = float(raw.base["latency_ms"]) + timer.overhead(x.shape, job.runs)
        # many random networks priced, the correction's spread over the range of their sums
        drawn = random_genotypes(model, CANDIDATES * job.networks, cfg.seed)
        if job.runtime == "onnxruntime":  # networks that fold to a constant tell nothing
            drawn = [g for g in drawn if not constant(as_deployed(g))] or drawn
        priced = [priced_as(raw, g, job.runtime) - raw.base["latency_ms"] + base for g in drawn]
        chosen = spread(priced, job.networks)
        sums, measured = [priced[i] for i in chosen], []
        features = [op_sums(raw, drawn[i], job.runtime) for i in chosen]
        for n, i in enumerate(chosen):
            step(f"network {n + 1}/{len(chosen)}")
            measured.append(timer.whole(job.build(drawn[i]), x, job.runs))
    return LatencyTable(
        job.runtime, runtime_version(job.runtime), machine(), job.threads, job.batch, cfg.space,
        network_options(cfg.space, cfg.network), {k: _plain(v) for k, v in cfg.supernet.items()},
        size, job.num_classes, base,
        {g: {"ops": list(raw.op_names[g]), "ms": raw.ops["latency_ms"][g].double().tolist()}
         for g in raw.op_names},
        correction_of(sums, measured, features), job.runs, job.clock,
        datetime.now(timezone.utc).isoformat(timespec="seconds"), __version__)


def check_out(path: str | Path, force: bool) -> Path:
    """Where the table goes: refused up front when it exists (without ``force``) or the
    directory cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--out {path} is a directory; name a file, e.g. {path / 'latency.json'}")
    if (path.exists() or path.is_symlink()) and not force:
        raise InputError(f"{path} already exists; remove it, choose another --out or add --force")
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {parent} is not a writable directory")
    return path


def measure_onnx_file(path: str | Path, batch: int, threads: int, runs: int = RUNS,
                      image_size: int | None = None) -> dict[str, Any]:
    """Median milliseconds of an ONNX file (an exported network) in onnxruntime at ``batch``."""
    import numpy as np
    check_runtime("onnxruntime")
    try:
        session = onnx_session(str(path), threads)
    except Exception as exc:  # not an ONNX model, or one this onnxruntime cannot run
        raise InputError(f"{path} does not load in onnxruntime: "
                         f"{(str(exc).strip().splitlines() or [''])[-1]}") from None
    shape = session.get_inputs()[0].shape
    sizes = [d if isinstance(d, int) else image_size for d in shape[2:]]
    if len(shape) != 4 or None in sizes:
        raise InputError(f"{path} takes input of shape {shape}; give --image-size for the "
                         "dimensions it leaves open")
    if isinstance(shape[0], int) and shape[0] != batch:
        raise InputError(f"{path} takes a fixed batch of {shape[0]}; use --batch {shape[0]}")
    x = np.random.default_rng(0).standard_normal((batch, shape[1], *sizes)).astype(np.float32)
    return {"latency_ms": time_session(session, x, runs), "image_size": sizes[-1]}


def predict(table: LatencyTable, path: str | Path, cfg: Config, genotypes: Sequence[Genotype],
            correction: str = "best") -> list[float]:
    """The latency ``table`` predicts for each genotype's network, as a search prices it (a
    search's cost table with the table installed)."""
    check_fits(table, cfg, path)
    model = build_supernet(cfg.space, table.num_classes, "gdas", cfg.seed, cfg.supernet)
    build = lambda g: build_network(cfg.space, g, table.num_classes, cfg.network)  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        costs = build_cost_table(model, build, table.image_size, ["params"], torch.device("cpu"),
                                 cfg.space)
    table.install(costs, path, correction)
    return [priced_as(costs, g, table.runtime) for g in genotypes]


def runtime_latency(module: nn.Module, image_size: int, batches: Sequence[int], runtime: str,
                    threads: int, runs: int = RUNS) -> dict[str, Any]:
    """A whole network's latency in ``runtime`` at each batch size, JSON-ready (nas profile)."""
    check_runtime(runtime)
    module = module.cpu().eval()
    ms = {str(b): measure(module, torch.randn(b, 3, image_size, image_size), runtime, threads,
                          runs) for b in batches}
    return {"runtime": runtime_version(runtime), "machine": machine(), "threads": threads,
            "latency_ms": ms, "runs": runs, "warmup": WARMUP}


def onnx_file_latency(path: str | Path, batches: Sequence[int], threads: int, runs: int = RUNS,
                      image_size: int | None = None) -> dict[str, Any]:
    """An ONNX file's latency in onnxruntime at each batch size, JSON-ready (nas profile)."""
    found = {str(b): measure_onnx_file(path, b, threads, runs, image_size) for b in batches}
    return {"file": str(path), "image_size": next(iter(found.values()))["image_size"],
            "runtime": runtime_version("onnxruntime"), "machine": machine(), "threads": threads,
            "latency_ms": {b: f["latency_ms"] for b, f in found.items()}, "runs": runs,
            "warmup": WARMUP}


def format_runtime_latency(p: Mapping[str, Any], what: str) -> str:
    """``latency in onnxruntime 1.x on x86_64 (CPU), 1 thread (WHAT): batch 1 2.31 ms, ...``."""
    cpu = p["machine"].get("cpu", "")
    threads = f"{p['threads']} thread{'s' if p['threads'] != 1 else ''}"
    lat = ", ".join(f"batch {b} {ms:.3f} ms" for b, ms in p["latency_ms"].items())
    return (f"latency in {p['runtime']} on {p['machine'].get('arch', '?')}"
            f"{f' ({cpu})' if cpu else ''}, {threads} ({what}): {lat}; median of {p['runs']} "
            f"runs after {p['warmup']} warm-up")
