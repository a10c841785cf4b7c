"""What a network costs: parameters, multiply-adds and latency, counted exactly or measured.

``count_cost`` counts a built network: its parameters (an auxiliary head left out, as DARTS
counts) and the multiply-adds of one image in eval mode, from ``torch.utils.flop_counter``
(convolutions and matrix products; FLOPs / 2). ``measure_latency`` times a module on the device.

``CostTable`` is what each op on each edge adds to the network a space builds from a genotype
(the ProxylessNAS / FBNet lookup table), measured once from a few probe networks. The cost of any
genotype of the space is then the table's base plus a sum over its edges, and the expected cost
under the architecture distribution is differentiable in the logits: what a budget needs.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .errors import InputError
from .genotype import Genotype, edge_inputs, num_nodes
from .network import GenotypeCell, count_parameters, evaluating
from .ops import Zero
from .supernet import Supernet

METRICS = ("params", "macs", "latency_ms")
UNITS = {"params": "parameters", "macs": "multiply-adds", "latency_ms": "ms"}


def format_cost(metric: str, value: float) -> str:
    """``1,531,546 parameters``, ``220.1M multiply-adds``, ``3.21 ms``."""
    if metric == "macs":
        return f"{value / 1e6:,.1f}M multiply-adds"
    if metric == "latency_ms":
        return f"{value:.3f} ms"
    return f"{int(round(value)):,} parameters"


@torch.no_grad()
def count_flops(module: nn.Module, x: Tensor) -> int:
    """FLOPs of ``module(x)`` as ``torch.utils.flop_counter`` counts them (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Multiply-adds per image of one forward in eval mode (convolutions and matrix products)."""
    with evaluating(model) as device:
        return count_flops(model, torch.zeros(*input_size, device=device)) // 2 // input_size[0]


def count_cost(model: nn.Module, image_size: int) -> dict[str, int]:
    """Exact ``{"params", "macs"}`` of a network on ``image_size`` x ``image_size`` RGB images."""
    return {"params": count_parameters(model), "macs": count_macs(model, (1, 3, image_size, image_size))}


@torch.no_grad()
def measure_latency(module: nn.Module, x: Tensor, runs: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of ``module(x)`` over ``runs`` timed calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        module(x)
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        module(x)
        sync()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


# -- the per-op table ---------------------------------------------------------------------------
class _DeviceTables(NamedTuple):
    """One cell kind's cost tables on one device, as ``CostTable.expected`` reads them."""
    cols: Any                  # the op columns in name order (a slice when they already are)
    allowed: Tensor            # [edges, ops] which ops the budget's space allows
    cost: dict[str, Tensor]    # metric -> [edges, ops] cost of each op on each edge
    fixed: Tensor | None       # fixed edge weights, or None when the edge logits learn them


@dataclass
class CostTable:
    """Per (cell kind, edge, op) costs of a space's network and the rest of it (``base``).

    ``ops[metric][kind]`` is a ``[edges, ops]`` tensor: what op o on edge e of every cell of that
    kind adds to the network. ``keep`` is how many inputs a derived node keeps (None: all), as
    the supernet's ``inputs_kept``; ``allowed[kind]`` flags the ops a derived edge may carry.
    """

    base: dict[str, float]
    ops: dict[str, dict[str, Tensor]]
    op_names: dict[str, tuple[str, ...]]
    cell_inputs: int
    keep: int | None
    allowed: dict[str, Tensor]
    concat: dict[str, tuple[int, ...]] = field(default_factory=dict)
    space: str = ""
    image_size: int = 32
    how: dict[str, str] = field(default_factory=dict)  # metric -> how it was measured
    # (kind, device) -> the tables expected() reads, copied there once (see _on_device)
    _device_tables: dict[tuple[str, torch.device], _DeviceTables] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics the table holds."""
        return tuple(self.base)

    def of(self, genotype: Genotype) -> dict[str, float]:
        """The cost of ``genotype``'s network by the table (exact for params and macs)."""
        out = dict(self.base)
        for kind, nodes in genotype.cells.items():
            index = {pair: e for e, pair in enumerate(edge_inputs(self.cell_inputs, len(nodes)))}
            for node, edges in enumerate(nodes):
                for op, src in edges:
                    e, o = index[(node, src)], self.op_names[kind].index(op)
                    for m in out:
                        out[m] += float(self.ops[m][kind][e, o])
        return out

    def edge_weights(self, model: Supernet) -> dict[str, Tensor]:
        """How likely each edge is kept by the derived cell, ``[edges]`` per kind.

        Every edge when nodes keep all inputs; with edge top-k, k times the node's softmax over
        its inputs (at most 1); otherwise k over the node's number of inputs.
        """
        out = {}
        for kind, logits in model.arch_logits.items():
            fixed = self._on_device(model, kind, logits.device).fixed
            if fixed is not None:
                out[kind] = fixed
            else:
                node = model.node_logits(kind).softmax(-1)
                _, n_idx, s_idx = model._layout(kind, logits.device)
                out[kind] = (self.keep * node[n_idx, s_idx]).clamp(max=1.0)
        return out

    def expected(self, model: Supernet) -> dict[str, Tensor]:
        """The expected cost of the derived network under softmax(logits), differentiable."""
        weights = self.edge_weights(model)
        out = {m: torch.zeros((), device=next(iter(model.arch_logits.values())).device)
               for m in self.metrics}
        for kind, logits in model.arch_logits.items():
            t = self._on_device(model, kind, logits.device)
            p = logits[:, t.cols].masked_fill(~t.allowed, float("-inf")).softmax(-1)
            for m in self.metrics:
                out[m] = out[m] + (weights[kind] * (p * t.cost[m]).sum(-1)).sum()
        return {m: total + self.base[m] for m, total in out.items()}

    def _on_device(self, model: Supernet, kind: str, device: torch.device) -> _DeviceTables:
        """The columns, allowed mask, cost per metric and fixed edge weights (or None) of ``kind`` on
        ``device``, the columns in op-name order (as the ops were drawn: a reordered op list is
        the same run). Copied there once, not at every architecture step."""
        key = (kind, device)
        if key not in self._device_tables:
            order = model._canonical(kind, device)
            cols = slice(None) if order is None else order[0]
            edges = next(iter(self.ops.values()))[kind].shape[0]
            if self.keep is None:
                fixed = torch.ones(edges, device=device)
            elif kind in model.edge_logits:
                fixed = None  # learned: computed from the edge logits at every step
            else:
                n = num_nodes(edges, self.cell_inputs)
                fixed = torch.tensor([min(1.0, self.keep / (self.cell_inputs + node))
                                      for node, _ in edge_inputs(self.cell_inputs, n)], device=device)
            self._device_tables[key] = _DeviceTables(
                cols, self.allowed[kind].to(device)[cols],
                {m: self.ops[m][kind].to(device)[:, cols] for m in self.metrics}, fixed)
        return self._device_tables[key]

    def minimum(self) -> dict[str, float]:
        """The smallest cost of each metric over all genotypes of the space (metric by metric)."""
        out = {}
        for m in self.metrics:
            total = self.base[m]
            for kind, cost in self.ops[m].items():
                best = cost.masked_fill(~self.allowed[kind], float("inf")).min(-1).values
                n = num_nodes(cost.shape[0], self.cell_inputs)
                start = 0
                for node in range(n):
                    count = self.cell_inputs + node
                    block = sorted(best[start:start + count].tolist())
                    total += sum(block[:self.keep] if self.keep is not None else block)
                    start += count
            out[m] = total
        return out

    def load_metric(self, saved: Mapping[str, Any], metric: str) -> None:
        """Take ``metric`` from a saved table (``to_dict``) of the same space: a resumed run
        keeps the latency it measured. A table that does not fit fails in one line."""
        try:
            ops = {k: torch.tensor(saved["ops"][metric][k], dtype=torch.float32)
                   for k in self.op_names}
            if any(ops[k].shape != self.ops["params"][k].shape for k in ops):
                raise ValueError("shapes differ")
            self.base[metric] = float(saved["base"][metric])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the run's cost table has no {metric} table that fits this "
                             f"search ({type(exc).__name__}: {exc}); remove costs.json to "
                             "measure it again") from None
        self.ops[metric] = ops
        self._device_tables.clear()  # copies of the tables it replaces
        self.how[metric] = str(saved.get("how", {}).get(metric, "")) + " (read from the run's costs.json)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``costs.json`` of a run)."""
        return {"space": self.space, "image_size": self.image_size, "base": self.base,
                "how": self.how, "op_names": {k: list(v) for k, v in self.op_names.items()},
                "ops": {m: {k: t.tolist() for k, t in kinds.items()} for m, kinds in self.ops.items()}}


def probe_genotypes(model: Supernet, concat: Mapping[str, Sequence[int]], space: str) -> list[Genotype]:
    """Genotypes that together put every op on every edge: in probe k, kind i carries op
    (k + i) mod ops on all of its edges, so that the kinds of a probe can be told apart."""
    if model.cell_inputs is None:
        raise InputError(f"search.budget needs a DARTS-family supernet (one whose cells take "
                         f"cell_inputs and whose genotype() is nas.Supernet's); "
                         f"{type(model).__name__} is not")
    kinds = list(model.op_names)
    width = max(len(ops) for ops in model.op_names.values())
    probes = []
    for k in range(width):
        cells = {}
        for i, kind in enumerate(kinds):
            ops = model.op_names[kind]
            op = ops[(k + i) % len(ops)]
            n = num_nodes(model.arch_logits[kind].shape[0], model.cell_inputs)
            cells[kind] = [[(op, src) for src in range(model.cell_inputs + node)]
                           for node in range(n)]
        probes.append(Genotype(cells, dict(concat), space=space,
                               inputs={kind: model.cell_inputs for kind in kinds}))
    return probes


def _cells_of(net: nn.Module, genotype: Genotype) -> list[tuple[str, GenotypeCell]]:
    """The network's ``GenotypeCell``s with the kind each one was built for."""
    out = []
    for cell in (m for m in net.modules() if isinstance(m, GenotypeCell)):
        matches = [kind for kind, nodes in genotype.cells.items() if cell.nodes == nodes]
        if len(matches) != 1:
            raise InputError("search.budget: the network's cells could not be matched to the "
                             "genotype's cell kinds; budgets need networks built from "
                             "nas.GenotypeCell with the genotype's nodes")
        out.append((matches[0], cell))
    if not out:
        raise InputError("search.budget: the space's network has no nas.GenotypeCell, so the "
                         "cost of its ops cannot be told apart from the rest")
    return out


Probe = tuple[nn.Module, list[tuple[str, GenotypeCell]], dict[nn.Module, tuple[int, ...]]]


def _probe(build: Callable[[Genotype], nn.Module], genotype: Genotype, device: torch.device,
           batch: int, image_size: int) -> Probe:
    """Build a probe network on ``device`` and run one batch, recording each op's input shape."""
    net = build(genotype).to(device)
    cells = _cells_of(net, genotype)
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        shapes.setdefault(module, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for _, cell in cells for m in cell.ops]
    try:
        with evaluating(net) as where:
            net(torch.zeros(batch, 3, image_size, image_size, device=where))
    finally:
        for h in hooks:
            h.remove()
    return net, cells, shapes


def build_cost_table(model: Supernet, build: Callable[[Genotype], nn.Module], image_size: int,
                     metrics: Sequence[str], device: torch.device, space: str = "",
                     latency_batch: int = 1, latency_runs: int = 30,
                     progress: Callable[[str], None] | None = None) -> CostTable:
    """Measure the per-op table of the networks ``build(genotype)`` makes, for ``metrics``.

    ``model`` is the space's supernet (ops, cell shape, how many inputs a node keeps). Each op
    module of each probe network is counted (or timed on ``device``) alone, on the input it gets
    in the network; what is not an op is the base. Parameters and multiply-adds must add up
    exactly: a space whose cost is not a sum over its edges fails here, in one line.
    """
    base_genotype = model.genotype()
    probes = probe_genotypes(model, base_genotype.concat, space)
    kinds = list(model.op_names)
    ops = {m: {k: torch.full(model.arch_logits[k].shape, math.nan, dtype=torch.float64)
               for k in kinds} for m in metrics}
    cache: dict[tuple[Any, ...], float] = {}
    totals: list[dict[str, float]] = []
    op_sums: list[float] = []  # per probe: the summed latency of its ops, each timed alone
    checked = False  # whether a probe with multiply-adds was counted whole
    timed = "latency_ms" in metrics
    for p, genotype in enumerate(probes):
        if progress is not None:
            progress(f"probe {p + 1}/{len(probes)}")
        net, cells, shapes = _probe(build, genotype, torch.device("cpu"), 1, image_size)
        total = {"params": float(count_parameters(net))}
        entries = []  # (kind, edge, op, costs), in the order of the cells' op modules
        for kind, cell in cells:
            index = {pair: e for e, pair in enumerate(edge_inputs(model.cell_inputs, len(cell.nodes)))}
            flat = [(node, op, src) for node, edges in enumerate(cell.nodes) for op, src in edges]
            for module, (node, op, src) in zip(cell.ops, flat):
                cost = {"params": _params(module, shapes.get(module))}
                if "macs" in metrics:
                    cost["macs"] = _measured(module, shapes.get(module), "macs",
                                             torch.device("cpu"), cache)
                entries.append((kind, index[(node, src)], model.op_names[kind].index(op), cost))
        # the first probe gives the base; the first whose ops carry multiply-adds checks that
        # they add up (the all-none and all-skip probes carry none, so they cannot tell)
        if "macs" in metrics and (p == 0 or not checked and any(c["macs"] for *_, c in entries)):
            total["macs"] = float(_whole_macs(build, genotype, net, image_size))
            checked = p > 0
        if timed:
            real, real_cells, real_shapes = _probe(build, genotype, device, latency_batch, image_size)
            with evaluating(real) as where:
                x = torch.zeros(latency_batch, 3, image_size, image_size, device=where)
                total["latency_ms"] = measure_latency(real, x, latency_runs)
            modules = [m for _, cell in real_cells for m in cell.ops]
            for (_, _, _, cost), module in zip(entries, modules):
                cost["latency_ms"] = _measured(module, real_shapes.get(module), "latency_ms",
                                               device, cache, latency_runs)
        found = {m: {k: torch.zeros_like(ops[m][k]) for k in kinds} for m in metrics}
        for kind, e, o, cost in entries:  # an op's entry sums it over every cell of its kind
            for m in metrics:
                found[m][kind][e, o] += cost[m]
                if m in total:
                    total[m] -= cost[m]
        totals.append(total)
        if timed:
            op_sums.append(sum(cost["latency_ms"] for *_, cost in entries))
        for m in metrics:  # kinds with fewer ops than the widest meet an op twice: keep one
            for kind in kinds:
                for o in {model.op_names[kind].index(op) for op, _ in genotype.cells[kind][0]}:
                    if math.isnan(ops[m][kind][0, o]):
                        ops[m][kind][:, o] = found[m][kind][:, o]
    base = {m: totals[0][m] for m in metrics}
    for m in ("params", "macs"):
        if m in metrics and any(abs(t[m] - base[m]) > 0.5 for t in totals if m in t):
            raise InputError(f"search.budget: the {UNITS[m]} of this space's network are not a "
                             "sum over its edges' ops (the rest of the network changes with the "
                             "genotype), so a budget cannot be kept exactly")
    if timed:  # ops timed alone do not add up to the network's time: fit base + scale * sum
        scale, base["latency_ms"] = _calibrate(op_sums,
                                               [t["latency_ms"] + s for t, s in zip(totals, op_sums)])
        ops["latency_ms"] = {k: v * scale for k, v in ops["latency_ms"].items()}
    allowed = {k: torch.tensor([model.inputs_kept is None or op != "none" for op in model.op_names[k]])
               for k in kinds}
    how = {"params": "counted: every parameter of the network, an auxiliary head excluded",
           "macs": f"counted with torch.utils.flop_counter, one {image_size}x{image_size} image"}
    if timed:
        n = torch.get_num_threads()
        how["latency_ms"] = (f"lookup table measured on {device} ({n} thread{'s' if n != 1 else ''}"
                             f"), batch {latency_batch}, {image_size}x{image_size}: the "
                             f"median of {latency_runs} timed runs after 5 warm-up runs, each op "
                             "alone, scaled with the rest of the network to fit the probe networks' "
                             "measured times")
    return CostTable(base, {m: {k: t.float() for k, t in v.items()} for m, v in ops.items()},
                     dict(model.op_names), model.cell_inputs, model.inputs_kept, allowed,
                     dict(base_genotype.concat), space, image_size,
                     {m: how[m] for m in metrics})


def _calibrate(op_sums: Sequence[float], totals: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``totals ~ base + scale * op_sums`` over the probes; (scale, base).

    Falls back to scale 1 (base the median remainder) when the probes cannot tell a scale, and
    to ``totals ~ scale * op_sums`` (base 0) when the base would be negative, which would price
    the smallest networks below zero (seen with noisy timings of tiny networks).
    """
    n = len(op_sums)
    mean_x, mean_y = sum(op_sums) / n, sum(totals) / n
    var = sum((x - mean_x) ** 2 for x in op_sums)
    scale = sum((x - mean_x) * (y - mean_y) for x, y in zip(op_sums, totals)) / var if var > 0 else 0.0
    if n < 3 or scale <= 0:
        scale, base = 1.0, statistics.median(y - x for x, y in zip(op_sums, totals))
    else:
        base = mean_y - scale * mean_x
    if base < 0:
        square = sum(x * x for x in op_sums)
        scale = sum(x * y for x, y in zip(op_sums, totals)) / square if square > 0 else 1.0
        base = 0.0
    return scale, base


def _whole_macs(build: Callable[[Genotype], nn.Module], genotype: Genotype, net: nn.Module,
                image_size: int) -> int:
    """A probe network's multiply-adds, counted on the meta device (shapes only) where it builds."""
    try:
        with torch.device("meta"):
            meta = build(genotype)
        return count_macs(meta, (1, 3, image_size, image_size))
    except Exception:  # a builder or forward that needs real tensors
        return count_macs(net, (1, 3, image_size, image_size))


def _params(module: nn.Module, shape: tuple[int, ...] | None) -> float:
    """An op module's parameters; an op that never ran must be a `none` the cell skipped."""
    params = float(sum(p.numel() for p in module.parameters()))
    if shape is None and (params or not isinstance(module, Zero)):
        raise InputError(f"search.budget: op {type(module).__name__} never ran in the probe network")
    return params


def _measured(module: nn.Module, shape: tuple[int, ...] | None, metric: str, device: torch.device,
              cache: dict[tuple[Any, ...], float], runs: int = 30) -> float:
    """Multiply-adds per image, or milliseconds, of one op module on its input (0 if not run)."""
    if shape is None:  # a `none` the cell skipped: it adds nothing
        return 0.0
    key = (metric, repr(module), shape)
    if key not in cache:
        with evaluating(module):
            x = torch.zeros(shape, device=device)
            cache[key] = count_flops(module, x) / 2 / shape[0] if metric == "macs" \
                else measure_latency(module, x, runs)
    return cache[key]
