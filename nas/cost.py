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
from .network import ChainLayer, GenotypeCell, count_parameters, evaluating
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


Timer = Callable[[nn.Module, Tensor, int], float]  # (module, input, runs) -> milliseconds


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
    cell_inputs: int | None  # None: a chain, whose choice points are its layers (``points``)
    keep: int | None
    allowed: dict[str, Tensor]
    concat: dict[str, tuple[int, ...]] = field(default_factory=dict)
    space: str = ""
    image_size: int = 32
    how: dict[str, str] = field(default_factory=dict)  # metric -> how it was measured
    # a chain's choice points: layer name -> (logit group, row); empty for cells
    points: dict[str, tuple[str, int]] = field(default_factory=dict)
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
        for name, op in genotype.layers.items():  # a chain: one entry per layer
            kind, row = self.points[name]
            for m in out:
                out[m] += float(self.ops[m][kind][row, self.op_names[kind].index(op)])
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
                _, n_idx, s_idx = model.edge_layout(kind, logits.device)
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
            order = model.op_order(kind, device)
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
                if self.cell_inputs is None:  # a chain: every row is a layer of its own
                    total += sum(best.tolist())
                    continue
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
        return {"space": self.space, "image_size": self.image_size, "base": dict(self.base),
                "how": dict(self.how), "op_names": {k: list(v) for k, v in self.op_names.items()},
                "ops": {m: {k: t.tolist() for k, t in kinds.items()} for m, kinds in self.ops.items()},
                **({"points": {k: list(v) for k, v in self.points.items()}} if self.points else {})}


def probe_genotypes(model: Supernet, concat: Mapping[str, Sequence[int]], space: str) -> list[Genotype]:
    """Genotypes that together put every op on every edge: in probe k, kind i carries op
    (k + i) mod ops on all of its edges, so that the kinds of a probe can be told apart. A
    chain's probe k puts candidate k mod ops on each layer (``nas.ChainLayer`` names its layer)."""
    if model.chain:
        width = max(len(p.ops) for p in model.chain)
        return [Genotype({}, space=space, layers={p.name: p.ops[k % len(p.ops)] for p in model.chain})
                for k in range(width)]
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


Site = tuple[str, int, int, nn.Module]  # logit group, row, op column, the op's module
Probe = tuple[nn.Module, list[Site], dict[nn.Module, tuple[int, ...]]]


def _sites(net: nn.Module, genotype: Genotype, model: Supernet) -> list[Site]:
    """Every op module of a probe network with the (group, row, op) of the table it fills."""
    if model.chain:
        return _chain_sites(net, model)
    out = []
    for kind, cell in _cells_of(net, genotype):
        index = {pair: e for e, pair in enumerate(edge_inputs(model.cell_inputs, len(cell.nodes)))}
        flat = [(node, op, src) for node, edges in enumerate(cell.nodes) for op, src in edges]
        for module, (node, op, src) in zip(cell.ops, flat):
            out.append((kind, index[(node, src)], model.op_names[kind].index(op), module))
    return out


def _chain_sites(net: nn.Module, model: Supernet) -> list[Site]:
    """A chain network's ``nas.ChainLayer``s, each at its choice point's row."""
    points = {p.name: p for p in model.chain}
    layers = [m for m in net.modules() if isinstance(m, ChainLayer)]
    if sorted(layer.point for layer in layers) != sorted(points):
        raise InputError("search.budget: the chain network's layers could not be matched to the "
                         "supernet's choice points; budgets need networks that build each layer "
                         "as nas.ChainLayer(point, op, module), one per choice point")
    return [(points[layer.point].group, points[layer.point].row,
             points[layer.point].ops.index(layer.op_name), layer) for layer in layers]


def _probe(build: Callable[[Genotype], nn.Module], genotype: Genotype, device: torch.device,
           batch: int, image_size: int, model: Supernet) -> Probe:
    """Build a probe network on ``device`` and run one batch, recording each op's input shape."""
    net = build(genotype).to(device)
    sites = _sites(net, genotype, model)
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        shapes.setdefault(module, tuple(args[0].shape))

    hooks = [site[3].register_forward_pre_hook(record) for site in sites]
    try:
        with evaluating(net) as where:
            net(torch.zeros(batch, 3, image_size, image_size, device=where))
    finally:
        for h in hooks:
            h.remove()
    return net, sites, shapes


def build_cost_table(model: Supernet, build: Callable[[Genotype], nn.Module], image_size: int,
                     metrics: Sequence[str], device: torch.device, space: str = "",
                     latency_batch: int = 1, latency_runs: int = 30,
                     progress: Callable[[str], None] | None = None,
                     timer: Timer | None = None, calibrate: bool = True) -> CostTable:
    """Measure the per-op table of the networks ``build(genotype)`` makes, for ``metrics``.

    ``model`` is the space's supernet (ops, cell shape, how many inputs a node keeps). Each op
    module of each probe network is counted (or timed on ``device`` by ``timer``, default
    ``measure_latency``) alone, on its input in the network; the rest is the base (without
    ``calibrate``: the ops' own times, the probes' median remainder). Parameters and multiply-adds
    must add up exactly: a space whose cost is not a sum over its edges fails here, in one line.
    """
    base_genotype = model.genotype()
    probes = probe_genotypes(model, base_genotype.concat, space)
    kinds = list(model.op_names)
    ops = {m: {k: torch.full(model.arch_logits[k].shape, math.nan, dtype=torch.float64)
               for k in kinds} for m in metrics}
    cache: dict[tuple[Any, ...], float] = {}
    totals: list[dict[str, float]] = []
    op_sums: list[float] = []  # per probe: the summed latency of its ops, each timed alone
    timed = "latency_ms" in metrics
    checked = False  # whether a probe with multiply-adds was counted whole
    for p, genotype in enumerate(probes):
        if progress is not None:
            progress(f"probe {p + 1}/{len(probes)}")
        total, entries = _probe_costs(model, build, genotype, p, image_size, metrics, device, cache,
                                      latency_batch, latency_runs, timer, p == 0 or not checked)
        checked = checked or (p > 0 and "macs" in total)
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
            for kind in kinds:  # the op this probe put on the kind (a chain: on the layer)
                used = {model.op_names[kind].index(op) for op, _ in genotype.cells[kind][0]} \
                    if genotype.cells else {o for k, _, o, _ in entries if k == kind}
                for o in used:
                    if math.isnan(ops[m][kind][0, o]):
                        ops[m][kind][:, o] = found[m][kind][:, o]
    base = {m: totals[0][m] for m in metrics}
    for m in ("params", "macs"):
        if m in metrics and any(abs(t[m] - base[m]) > 0.5 for t in totals if m in t):
            raise InputError(f"search.budget: the {UNITS[m]} of this space's network are not a "
                             "sum over its edges' ops (the rest of the network changes with the "
                             "genotype), so a budget cannot be kept exactly")
    if timed and not calibrate:
        base["latency_ms"] = statistics.median(t["latency_ms"] for t in totals)
    elif timed:  # ops timed alone do not add up to the network's time: fit base + scale * sum
        scale, base["latency_ms"] = _calibrate(op_sums,
                                               [t["latency_ms"] + s for t, s in zip(totals, op_sums)])
        ops["latency_ms"] = {k: v * scale for k, v in ops["latency_ms"].items()}
    allowed = {k: torch.tensor([model.inputs_kept is None or op != "none" for op in model.op_names[k]])
               for k in kinds}
    how = _how_measured(image_size, device, latency_batch, latency_runs)
    return CostTable(base, {m: {k: t.float() for k, t in v.items()} for m, v in ops.items()},
                     dict(model.op_names), model.cell_inputs, model.inputs_kept, allowed,
                     dict(base_genotype.concat), space, image_size,
                     {m: how[m] for m in metrics}, {p.name: (p.group, p.row) for p in model.chain})


def _probe_costs(model: Supernet, build: Callable[[Genotype], nn.Module], genotype: Genotype,
                 p: int, image_size: int, metrics: Sequence[str], device: torch.device,
                 cache: dict[tuple[Any, ...], float], latency_batch: int, latency_runs: int,
                 timer: Timer | None, whole_macs: bool
                 ) -> tuple[dict[str, float], list[tuple[str, int, int, dict]]]:
    """Probe ``p``'s whole-network costs and its ops' entries ``(kind, edge, op, costs)``, in
    the order of the cells' op modules; the whole network's multiply-adds if ``whole_macs`` and
    it is the first probe or its ops carry some."""
    net, sites, shapes = _probe(build, genotype, torch.device("cpu"), 1, image_size, model)
    total = {"params": float(count_parameters(net))}
    entries = []  # (kind, edge, op, costs), in the order of the cells' op modules
    for kind, e, o, module in sites:
        cost = {"params": _params(module, shapes.get(module))}
        if "macs" in metrics:
            cost["macs"] = _measured(module, shapes.get(module), "macs",
                                     torch.device("cpu"), cache)
        entries.append((kind, e, o, cost))
    # the first probe gives the base; the first whose ops carry multiply-adds checks that they
    # add up (the all-none and all-skip probes carry none, so they cannot tell)
    if "macs" in metrics and whole_macs and (p == 0 or any(c["macs"] for *_, c in entries)):
        total["macs"] = float(_whole_macs(build, genotype, net, image_size))
    if "latency_ms" in metrics:
        real, real_sites, real_shapes = _probe(build, genotype, device, latency_batch,
                                               image_size, model)
        with evaluating(real) as where:
            x = torch.zeros(latency_batch, 3, image_size, image_size, device=where)
            total["latency_ms"] = (timer or measure_latency)(real, x, latency_runs)
        modules = [site[3] for site in real_sites]
        for (_, _, _, cost), module in zip(entries, modules):
            cost["latency_ms"] = _measured(module, real_shapes.get(module), "latency_ms",
                                           device, cache, latency_runs, timer)
    return total, entries


def _how_measured(image_size: int, device: torch.device, latency_batch: int,
                  latency_runs: int) -> dict[str, str]:
    """How ``build_cost_table`` finds each metric, in words (a cost table's ``how``)."""
    n = torch.get_num_threads()
    return {"params": "counted: every parameter of the network, an auxiliary head excluded",
            "macs": f"counted with torch.utils.flop_counter, one {image_size}x{image_size} image",
            "latency_ms": (f"lookup table measured on {device} ({n} thread{'s' if n != 1 else ''}"
                           f"), batch {latency_batch}, {image_size}x{image_size}: the "
                           f"median of {latency_runs} timed runs after 5 warm-up runs, each op "
                           "alone, scaled with the rest of the network to fit the probe networks' "
                           "measured times")}


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
              cache: dict[tuple[Any, ...], float], runs: int = 30,
              timer: Timer | None = None) -> float:
    """Multiply-adds per image, or milliseconds, of one op module on its input (0 if not run)."""
    if shape is None:  # a `none` the cell skipped: it adds nothing
        return 0.0
    key = (metric, repr(module), shape)
    if key not in cache:
        with evaluating(module):
            x = torch.zeros(shape, device=device)
            cache[key] = count_flops(module, x) / 2 / shape[0] if metric == "macs" \
                else (timer or measure_latency)(module, x, runs)
    return cache[key]
