"""What a network costs when it runs: parameters, multiply-adds, latency and memory, per block.

``profile_network`` measures a built network in eval mode on its device: the exact counts of
``nas.cost`` (parameters without the auxiliary head, multiply-adds per image), the median
latency of a forward at batch 1 and at batch N, and the memory of one forward. The blocks are
the network's top-level modules (lists expanded: each cell is a block) in the order a forward
calls them; each is counted, and timed alone, on the inputs it gets inside the network.

Memory: the peak of the bytes held by live tensors that one forward creates (its activations;
weights and the input excluded), followed op by op through a ``TorchDispatchMode`` on every
device. It leaves out what a kernel allocates and frees inside itself (workspaces) and the
allocator's own overhead. On CUDA, ``torch.cuda.max_memory_allocated`` during the forward is
reported beside it. (Process RSS would mostly measure the allocator, and ``tracemalloc`` does
not see torch's allocations at all.)
"""
from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import MAX_IMAGE_SIZE, build_config, check_count, config_specs, load_config, read_yaml
from .cost import measure_latency
from .data import known_classes
from .errors import InputError
from .genotype import Genotype, parse_genotype
from .network import ChainLayer, GenotypeCell, count_parameters, evaluating
from .registry import trust
from .runtime import CHECKPOINT, in_layout, load_checkpoint
from .spaces import build_network

BATCH = 16  # the second batch size latency and memory are measured at
RUNS = 20  # timed runs at most, per measurement
WARMUP = 3
BUDGET_S = 2.0  # a measurement stops short of RUNS when a run takes longer than BUDGET_S / RUNS


class LiveTensors(TorchDispatchMode):
    """Bytes held by the tensors created while it is active, and their peak.

    Every op's outputs are followed to the end of their storage; storages that existed before
    (``skip``: weights, the input) and views of known storages add nothing.
    """

    def __init__(self, skip: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self.skip = {t.untyped_storage().data_ptr() for t in skip}
        self.refs: dict[int, list[int]] = {}  # storage address -> [live tensors, bytes]
        self.live = self.peak = 0

    def _freed(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= self.refs.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.skip:
                continue
            if key in self.refs:
                self.refs[key][0] += 1
            else:
                self.refs[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._freed, key)
        return out


def tensor_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes of the tensors' storages, each storage once."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def blocks_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's top-level modules by name; a ModuleList or ModuleDict gives its members."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if child is None:
                continue
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                walk(f"{prefix}{name}.", child)
            else:
                out.append((f"{prefix}{name}", child))

    walk("", model)
    return out


def kind_of(module: nn.Module, genotype: Genotype | None) -> str:
    """``normal cell``, ``reduce cell`` (what the genotype's cells are called), a chain layer's
    choice point and op (``stage2.layer1: mbconv_k3_e6``) or the class name."""
    if isinstance(module, ChainLayer):
        return f"{module.point}: {module.op_name}"
    kinds = set()
    built = {k: tuple(tuple((op, int(src)) for op, src in node) for node in nodes)
             for k, nodes in (genotype.cells.items() if genotype else ())}  # as a cell keeps them
    for cell in (m for m in module.modules() if isinstance(m, GenotypeCell)):
        names = [k for k, nodes in built.items() if nodes == cell.nodes]
        kinds.add(names[0] if names else "genotype")
    if len(kinds) == 1:
        kind = kinds.pop()
        return kind if kind.endswith("cell") else f"{kind} cell"
    return type(module).__name__


Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]


def record_calls(model: nn.Module, blocks: list[tuple[str, nn.Module]], x: Tensor,
                 meter: LiveTensors | None = None) -> tuple[dict[str, Calls], dict[str, int]]:
    """Run ``model(x)``; each block's calls (its inputs) in call order, or with ``meter``
    active, the peak bytes each block's calls added above what was live when they started (the
    calls then hold no inputs, which would keep them alive and raise the peak)."""
    calls: dict[str, Calls] = {}
    peaks: dict[str, int] = {}
    saved: list[tuple[int, int]] = []

    def before(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.setdefault(name, []).append(((), {}) if meter is not None else (args, kwargs))
            if meter is not None:
                saved.append((meter.live, meter.peak))
                meter.peak = meter.live
        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 out: Any) -> None:
            if meter is not None and saved:
                live, peak = saved.pop()
                peaks[name] = max(peaks.get(name, 0), meter.peak - live)
                meter.peak = max(peak, meter.peak)
        return hook

    hooks = []
    for name, block in blocks:
        hooks.append(block.register_forward_pre_hook(before(name), with_kwargs=True))
        hooks.append(block.register_forward_hook(after(name), with_kwargs=True))
    try:
        if meter is not None:
            with meter:
                model(x)
        else:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls, peaks


def _runs(fn: Callable[[Tensor], Any], x: Tensor, runs: int) -> int:
    """How many timed runs fit the budget (at least 3, at most ``runs``), from one call."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn(x)
    sync()
    took = time.perf_counter() - start
    return max(3, min(runs, int(BUDGET_S / max(took, 1e-9))))


@torch.no_grad()
def macs_by_block(model: nn.Module, image_size: int, blocks: list[tuple[str, nn.Module]],
                  channels_last: bool = False) -> tuple[int, dict[str, int]]:
    """Multiply-adds of one image in eval mode, in total and per block, from one forward under
    ``torch.utils.flop_counter`` (the counter ``nas.cost.count_macs`` uses)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with evaluating(model) as device:
        x = in_layout(torch.zeros(1, 3, image_size, image_size, device=device), channels_last)
        with counter:
            model(x)
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    return flops.get("Global", 0) // 2, {name: flops.get(f"{root}.{name}", 0) // 2
                                          for name, _ in blocks}


def _memory(model: nn.Module, x: Tensor, blocks: list[tuple[str, nn.Module]]
            ) -> tuple[dict[str, Calls], dict[str, int], int, int | None]:
    """One forward followed by ``LiveTensors``: each block's calls and peak, the whole peak,
    and (on CUDA) ``max_memory_allocated`` of a plain forward; None elsewhere."""
    allocated = None
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        model(x)
        torch.cuda.synchronize(x.device)
        allocated = torch.cuda.max_memory_allocated(x.device)
    meter = LiveTensors([*model.parameters(), *model.buffers(), x])
    _, peaks = record_calls(model, blocks, x, meter)
    calls, _ = record_calls(model, blocks, x)
    return calls, peaks, meter.peak, allocated


def profile_network(model: nn.Module, image_size: int, device: torch.device | str = "cpu", *,
                    batch: int = BATCH, runs: int = RUNS, warmup: int = WARMUP,
                    genotype: Genotype | None = None, channels_last: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parameters, multiply-adds, latency and memory of ``model`` (moved to ``device``), in
    total and per block, JSON-ready.

    Latency: median of up to ``runs`` timed forwards after ``warmup`` (fewer runs, at least 3,
    when a forward is slow), at batch 1 and ``batch``, in ``torch.get_num_threads()`` threads.
    """
    step = progress or (lambda text: None)
    device = torch.device(device)
    model = model.to(device)
    blocks = blocks_of(model)
    params = count_parameters(model)
    left_out = sum(p.numel() for p in model.parameters()) - params
    macs, block_macs = macs_by_block(model, image_size, blocks, channels_last)
    sizes = sorted({1, batch})
    out: dict[str, Any] = {
        "image_size": image_size, "device": str(device), "threads": torch.get_num_threads(),
        "channels_last": channels_last, "batch_sizes": sizes, "params": params,
        "params_left_out": left_out, "macs": macs, "latency_ms": {}, "runs": {},
        "warmup": warmup, "memory": {
            "weights_bytes": tensor_bytes([*model.parameters(), *model.buffers()]),
            "activation_peak_bytes": {},
            "how": "peak bytes of live tensors one forward creates (weights and input excluded), "
                   "followed op by op; kernel workspaces not included"}}
    rows: dict[str, dict[str, Any]] = {}
    by_name = dict(blocks)
    with evaluating(model):
        for b in sizes:
            x = in_layout(torch.randn(b, 3, image_size, image_size, device=device), channels_last)
            step(f"batch {b}: memory")
            calls, peaks, peak, allocated = _memory(model, x, blocks)
            out["memory"]["activation_peak_bytes"][str(b)] = peak
            if allocated is not None:
                out["memory"].setdefault("cuda_max_allocated_bytes", {})[str(b)] = allocated
            for name in calls:  # the blocks a forward runs, in the order it runs them
                row = rows.setdefault(name, {
                    "name": name, "kind": kind_of(by_name[name], genotype),
                    "params": count_parameters(by_name[name]), "macs": 0, "latency_ms": {},
                    "activation_peak_bytes": {}})
                row["activation_peak_bytes"][str(b)] = peaks.get(name, 0)
                row["macs"] = block_macs.get(name, 0)
            step(f"batch {b}: latency")
            n = _runs(model, x, runs)
            out["runs"][str(b)] = n
            out["latency_ms"][str(b)] = measure_latency(model, x, n, warmup)
            for name in calls:  # the whole forward warmed the kernels up: one warm-up call
                replay = _Replay(by_name[name], calls[name])
                rows[name]["latency_ms"][str(b)] = measure_latency(replay, x, n, 1)
    out["blocks"] = list(rows.values())
    out["rest"] = {"params": params - sum(r["params"] for r in rows.values()),
                   "macs": macs - sum(r["macs"] for r in rows.values())}
    return out


class _Replay(nn.Module):
    """Calls a block again with the inputs it got inside the network (its input ``x`` unused)."""

    def __init__(self, block: nn.Module, calls: Calls) -> None:
        super().__init__()
        self.block, self.calls = block, calls

    def forward(self, x: Tensor) -> Any:
        return [self.block(*args, **kwargs) for args, kwargs in self.calls]


def with_network(profile: dict[str, Any], space: str, genotype: Genotype,
                 options: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The profile headed by what network it measured (``profile.json``, ``nas profile --json``)."""
    return {"space": space, "genotype": str(genotype), "network": dict(options),
            "num_classes": num_classes, **profile}


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def format_profile(p: dict[str, Any], title: str = "") -> str:
    """The table ``nas profile`` prints."""
    sizes = [str(b) for b in p["batch_sizes"]]
    big = sizes[-1]
    lines = [title] if title else []
    where = (f"{p['device']}, {p['threads']} thread{'s' if p['threads'] != 1 else ''}"
             f"{', channels-last' if p['channels_last'] else ''}")
    left = f" (auxiliary head left out: {p['params_left_out']:,} more)" \
        if p["params_left_out"] else ""
    lines.append(f"parameters: {p['params']:,}{left}")
    lines.append(f"multiply-adds: {p['macs'] / 1e6:,.1f}M per {p['image_size']}x{p['image_size']} "
                 "image (torch.utils.flop_counter, eval mode)")
    lat = ", ".join(f"batch {b} {p['latency_ms'][b]:.2f} ms" + (
        f" ({p['latency_ms'][b] / int(b):.2f} ms per image)" if b != "1" else "") for b in sizes)
    runs = " / ".join(str(p["runs"][b]) for b in sizes)
    lines.append(f"latency on {where}: {lat}; median of {runs} runs after {p['warmup']} warm-up")
    mem = p["memory"]
    act = ", ".join(f"batch {b} {_mb(mem['activation_peak_bytes'][b])} MiB" for b in sizes)
    lines.append(f"memory: weights {_mb(mem['weights_bytes'])} MiB; activations at their peak "
                 f"{act}")
    if "cuda_max_allocated_bytes" in mem:
        cuda = ", ".join(f"batch {b} {_mb(mem['cuda_max_allocated_bytes'][b])} MiB" for b in sizes)
        lines.append(f"  torch.cuda.max_memory_allocated during the forward (weights and input "
                     f"included): {cuda}")
    header = ["block", "kind", "parameters", "mult-adds", *[f"ms @{b}" for b in sizes],
              f"act MiB @{big}"]
    table = [[r["name"], r["kind"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.2f}M",
              *[f"{r['latency_ms'][b]:.3f}" for b in sizes], _mb(r["activation_peak_bytes"][big])]
             for r in p["blocks"]]
    if p["rest"]["params"] or p["rest"]["macs"]:
        table.append(["(rest)", "outside the blocks", f"{p['rest']['params']:,}",
                      f"{p['rest']['macs'] / 1e6:,.2f}M", *["" for _ in sizes], ""])
    table.append(["total", "", f"{p['params']:,}", f"{p['macs'] / 1e6:,.2f}M",
                  *[f"{p['latency_ms'][b]:.3f}" for b in sizes],
                  _mb(mem["activation_peak_bytes"][big])])
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines.append("")
    for row in [header, *table]:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.append("each block is timed alone on the inputs it gets in the network; the total is "
                 "one whole forward")
    return "\n".join(lines)


def genotype_run_dir(path: Path) -> Path | None:
    """The directory of a run that holds config.yaml and genotype.json (a `nas run`: its train/,
    else its search/); None when ``path`` is no such run."""
    for where in (path, path / "train", path / "search"):
        if (where / "config.yaml").is_file() and (where / "genotype.json").is_file():
            return where
    return None


def network_to_profile(target: str, config: str | None = None, sets: Sequence[str] = (),
                       image_size: int | None = None
                       ) -> tuple[nn.Module, Genotype, str, Any, int, int]:
    """The network ``nas profile TARGET`` measures: (network, genotype, space, config, classes,
    image size). A run directory gives its genotype and its saved config (unless ``config``);
    a genotype (name, file, string) gets ``config`` or the defaults, as ``nas train`` would."""
    try:
        run = genotype_run_dir(Path(target)) if Path(target).is_dir() else None
    except OSError:  # a genotype string longer than a file name may be
        run = None
    if run is not None and config is None:
        cfg = build_config(read_yaml(run / "config.yaml"), list(sets))  # data: --plugin to trust
        genotype = Genotype.load(run / "genotype.json")
    else:
        genotype = parse_genotype(str(run / "genotype.json") if run else target)
        cfg = load_config(config, list(sets))
        for spec in config_specs(cfg):  # named by the user on the command line
            trust(spec)
    named = config or any(s.startswith("space=") for s in sets)
    if genotype.space and named and genotype.space != cfg.space:
        raise InputError(f"the genotype belongs to the {genotype.space} space, the config's "
                         f"space is {cfg.space}")
    space = genotype.space or cfg.space
    classes = known_classes(cfg.data.dataset)
    if run is not None and (run / CHECKPOINT).is_file():
        state = load_checkpoint(run / CHECKPOINT)
        classes = int(state.get("num_classes", classes))
    size = cfg.data.image_size if image_size is None else image_size
    check_count("--image-size", size, 1, MAX_IMAGE_SIZE)
    model = build_network(space, genotype, classes, cfg.network)
    return model, genotype, space, cfg, classes, size
