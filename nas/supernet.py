"""The supernet: mixed edges, the architecture logits and how each step samples from them.

Sampling modes (``Supernet.mode``):

=========  ==========================  ===================================  ====================
mode       forward                     gradient to the logits               ops run per edge
=========  ==========================  ===================================  ====================
gdas       one-hot Gumbel sample       straight-through, GDAS estimator     1 (the sampled one)
st         one-hot Gumbel sample       exact straight-through Gumbel-softmax  all
gumbel     soft Gumbel-softmax sample  reparameterised (SNAS)               all
softmax    softmax(logits)             exact (DARTS)                        all
=========  ==========================  ===================================  ====================

One sample per cell kind per forward is shared by the whole batch and by every cell of that
kind. In ``eval()`` mode gdas and st run the most likely op of each edge, gumbel and softmax use
softmax(logits), and no noise is drawn.

In the hard modes ``tau_forward`` is the temperature of the categorical the one-hot is drawn
from, softmax(logits / tau_forward), and ``tau`` that of the relaxation the gradient goes
through. With edge top-k (gdas, DARTS-family cells) each node also draws which k of its inputs
run, by Gumbel top-k over per-input edge logits; the other inputs' ops are not called at all.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from . import gumbel
from .choices import ChoicePoint
from .errors import InputError
from .genotype import Genotype, derive_cell, edge_inputs, num_nodes
from .ops import Zero, build_op, node_sum

class Sampling(NamedTuple):
    """How a sampling mode draws a training-mode sample (the table below)."""

    noise: bool        # Gumbel noise is drawn (else softmax(logits) itself is the weight)
    hard: bool         # the forward sees an exact one-hot (straight-through backward)
    single_path: bool  # only the sampled op of an edge runs, in training too


SAMPLING = {
    "gdas": Sampling(noise=True, hard=True, single_path=True),
    "st": Sampling(noise=True, hard=True, single_path=False),
    "gumbel": Sampling(noise=True, hard=False, single_path=False),
    "softmax": Sampling(noise=False, hard=False, single_path=False),
}
MODES = tuple(SAMPLING)


def canonical_order(ops: Sequence[str]) -> list[int]:
    """The positions of ``ops`` sorted by name. Everything random about an op (its initial
    weights and logit, its Gumbel noise) is drawn in this order, so it follows the op's name, not
    its place in the list: a reordered op list is the same run, up to the order of the names."""
    return sorted(range(len(ops)), key=lambda k: ops[k])


@dataclass
class ArchSample:
    """The weights of one cell kind's edges for one forward, and the ops to run.

    ``weights`` has shape ``[edges, ops]``; ``index`` lists the op each edge runs when only one
    op runs per edge (gdas, and eval mode of gdas/st), else it is None and every op runs. With
    edge top-k, ``keep`` flags the edges that run (k per node) and ``edge_weights`` ``[edges]``
    is their k-hot sample; otherwise both are None and every edge runs. ``sampled`` lists the op
    of each edge whose hard weight is 1 when every op runs on a one-hot (st, in training): the
    others run without recording a gradient for their weights, as in gdas where they do not run.
    """

    weights: Tensor
    index: list[int] | None = None
    keep: list[bool] | None = None
    edge_weights: Tensor | None = None
    sampled: list[int] | None = None

    def __getitem__(self, edge: int) -> tuple[Tensor, int | None]:
        return self.weights[edge], None if self.index is None else self.index[edge]


@dataclass
class _Drawn:
    """One forward's sample as drawn on the device, before its ops are read on the host."""

    logits: dict[str, Tensor]
    weights: dict[str, Tensor]
    index: dict[str, Tensor]
    edges: dict[str, tuple[Tensor, Tensor]]  # kind -> (edge weights, kept inputs in order)
    edge_orders: dict[str, Tensor]
    read: str | None                          # what the host reads: single_path, sampled, None


_DOT_CHUNK = 1 << 20  # elements upcast at a time: a bounded temporary, whatever the activation


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> accumulated in float32 at least: under bf16/fp16 autocast the activations are
    upcast (in chunks; their products are then exact) rather than summed in their own dtype."""
    wide = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    flat = None
    if a.stride() == b.stride():  # no temporary the size of the activation
        if a.is_contiguous():
            flat = a.view(-1), b.view(-1)
        elif a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last):
            flat = a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1)
    if flat is None:  # other memory layouts, or two layouts
        return (a.to(wide) * b.to(wide)).sum()
    x, y = flat
    if x.dtype == y.dtype == wide:
        return torch.dot(x, y)
    total = torch.zeros((), dtype=wide, device=x.device)
    for start in range(0, x.numel(), _DOT_CHUNK):
        total += torch.dot(x[start:start + _DOT_CHUNK].to(wide), y[start:start + _DOT_CHUNK].to(wide))
    return total


class _SampledNode(torch.autograd.Function):
    """A node's sum of sampled-op outputs, as if each were weighted by its one-hot hard sample.

    Forward returns the plain sum: every hard weight is exactly 1, so no multiply runs. Backward
    gives each edge's sampled weight ``<grad, out>`` and its unsampled weights ``sum(grad)``:
    GDAS adds the unsampled (zero-valued) hard weights to the edge output as scalars, so every
    logit of the edge receives a gradient although only one op ran. ``sum(grad)`` is shared by
    the node's edges, so it is computed once per node. With edge top-k the same rule applies one
    level up: a kept edge's weight gets ``<grad, out>``, an edge that did not run ``sum(grad)``
    (and its op weights nothing: none of its ops ran). An output given as None stands for the
    zeros of a ``none`` op that was not run: it adds nothing and ``<grad, 0>`` is 0.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, edge_weights: Tensor | None, first: int,  # type: ignore[override]
                keep: Sequence[bool], index: Sequence[int], *outs: Tensor | None) -> Tensor:
        ctx.first, ctx.keep, ctx.index = first, tuple(keep), tuple(index)
        ctx.meta = weights.shape, weights.dtype, None if edge_weights is None else edge_weights.shape
        ctx.ran = tuple(out is not None for out in outs)
        present = [out for out in outs if out is not None]
        ctx.save_for_backward(*present)
        return node_sum(present)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_weights = grad_edges = None
        need_w, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_w or need_e:
            shape, dtype, edge_shape = ctx.meta
            total = grad.sum(dtype=dtype)
            saved = iter(ctx.saved_tensors)  # <grad, 0> is 0 for the edges whose op returned zeros
            dots = [_dot(grad, next(saved)) if ran else 0.0 for ran in ctx.ran]
            kept = [j for j, k in enumerate(ctx.keep) if k]
            count = len(ctx.keep)
        if need_w:
            grad_weights = torch.zeros(shape, dtype=dtype, device=grad.device)
            rows = grad_weights[ctx.first:ctx.first + count]
            if len(kept) == count:
                rows.fill_(total)  # one kernel for the usual case, every edge ran
            else:
                for j in kept:
                    rows[j].fill_(total)
            for j, k, dot in zip(kept, ctx.index, dots):
                rows[j, k] = dot
        if need_e:
            grad_edges = torch.zeros(edge_shape, dtype=dtype, device=grad.device)
            seg = grad_edges[ctx.first:ctx.first + count]
            seg.fill_(total)
            for j, dot in zip(kept, dots):
                seg[j] = dot
        return (grad_weights, grad_edges, None, None, None, *(grad if ran else None for ran in ctx.ran))


def sampled_node(weights: Tensor, first: int, index: Sequence[int],
                 outs: Sequence[Tensor | None], keep: Sequence[bool] | None = None,
                 edge_weights: Tensor | None = None) -> Tensor:
    """Sum the outputs of the ops sampled on the edges ``first, first+1, ...`` of one node.

    ``weights`` is the cell kind's hard sample ``[edges, ops]``. ``keep`` flags which of the
    node's edges ran (all when None); ``outs[j]`` is the output of op ``index[j]`` on the j-th
    edge that ran, or None where that op is ``none`` and was skipped (at least one output must
    be a tensor). The weights, and ``edge_weights`` ``[edges]`` with edge top-k, get the GDAS
    gradient (see ``_SampledNode``).
    """
    keep = (True,) * len(outs) if keep is None else keep
    if not weights.requires_grad and (edge_weights is None or not edge_weights.requires_grad):
        return node_sum([out for out in outs if out is not None])
    return _SampledNode.apply(weights, edge_weights, first, keep, index, *outs)


def sampled_op(out: Tensor, weights: Tensor, index: int) -> Tensor:
    """Attach the output of the sampled op ``index`` to its edge's hard weights ``[ops]``."""
    return sampled_node(weights.unsqueeze(0), 0, (index,), (out,))


class MixedEdge(nn.Module):
    """One edge of a search cell: every candidate op, of which a sample selects or mixes."""

    def __init__(self, ops: Sequence[str], C: int, stride: int = 1, affine: bool = False,
                 track_running_stats: bool = True,
                 wrap: Callable[[str, nn.Module, int], nn.Module] | None = None,
                 build: Callable[[str], nn.Module] | None = None) -> None:
        """The op named ``ops[k]`` is ``nas.ops.build_op(ops[k], C, stride, affine,
        track_running_stats)``, C channels in and out, stride 2 on a reduction cell's input edges.

        ``build(name)``, when given, makes each candidate instead (a chain layer's, which may
        change the width to ``C`` channels out).

        ``wrap(op_name, op, C) -> nn.Module``, when given, is called on every op as it is built
        and its return takes the op's place: a space adds a module around some ops without
        registering new ones (the DARTS space follows each pooling op with a batch-norm:
        ``nn.Sequential(op, BatchNorm2d(C))`` where ``"pool" in op_name``, else ``op``).
        """
        super().__init__()
        self.op_names = tuple(ops)
        self.stride = stride
        self.C_out = C if build is not None else None  # None: as many channels out as in
        built: list[nn.Module] = [nn.Identity()] * len(ops)
        for k in canonical_order(ops):  # the ops' weights are drawn in name order
            built[k] = build(ops[k]) if build is not None else \
                build_op(ops[k], C, stride, affine, track_running_stats)
            if wrap is not None:
                built[k] = wrap(ops[k], built[k], C)
        self.ops = nn.ModuleList(built)
        self.order = tuple(canonical_order(ops))
        # ops known to return zeros: a single-path forward need not run them (nor add their output)
        self.zero = tuple(isinstance(op, Zero) for op in built)

    def forward(self, x: Tensor, weights: Tensor | None, index: int | None = None,
                sampled: int | None = None) -> Tensor:
        """Run op ``index`` alone, or every op weighted by ``weights`` when index is None.

        With an index and ``weights=None`` the op's output comes back unweighted: the caller
        attaches the hard weights itself, as ``SearchCell`` does for a whole node at once.
        ``sampled`` (st: ``weights`` is the one-hot of that op) runs the other ops without
        recording their gradients: their weights get none, not zeros that momentum and weight
        decay would act on; the edge's hard weights still get ``<grad, op(x)>`` from every op.
        """
        if index is not None:
            out = self.ops[index](x)
            return out if weights is None else sampled_op(out, weights, index)
        out = None
        for k in self.order:  # summed in name order: a reordered op list sums alike
            if sampled is None or k == sampled:
                y = self.ops[k](x)
            else:
                with torch.no_grad():
                    y = self.ops[k](x)
            out = weights[k] * y if out is None else out + weights[k] * y
        return out

    def choose(self, x: Tensor, sample: ArchSample, row: int = 0) -> Tensor:
        """Run this edge as row ``row`` of ``sample`` (a chain layer: its own group's row 0):
        the sampled op alone, with the GDAS gradient to every logit, or every op weighted."""
        weights, index = sample[row]
        sampled = None if sample.sampled is None else sample.sampled[row]
        return self(x, weights, index, sampled)


class SearchCell(nn.Module):
    """A DARTS-family search cell: a ``MixedEdge`` from every earlier state to every node.

    The states are the ``num_inputs`` cell inputs, then the ``num_nodes`` intermediate nodes;
    a node sums its incoming edges. The output concatenates the states ``concat`` (channels),
    or is the last node when ``concat`` is empty. In a reduction cell the edges leaving the
    cell inputs have stride 2. Edges are numbered as ``nas.genotype.edge_inputs`` lists them.
    """

    def __init__(self, ops: Sequence[str], C: int, num_inputs: int, num_nodes: int,
                 reduction: bool = False, concat: Sequence[int] = (), affine: bool = False,
                 track_running_stats: bool = True,
                 wrap: Callable[[str, nn.Module, int], nn.Module] | None = None) -> None:
        """Every edge is a ``MixedEdge(ops, C, stride, affine, track_running_stats, wrap)``:
        all states hold ``C`` channels (a space's preprocessing brings the cell inputs there).

        ``affine`` and ``track_running_stats`` are those of the ops' batch-norms (GDAS searches
        with ``affine=False``). ``wrap(op_name, op, C) -> nn.Module``, when given, replaces
        each op as it is built by what it returns (see ``MixedEdge``): the DARTS space passes
        one that follows each pooling op with a batch-norm.
        """
        super().__init__()
        self.num_inputs, self.num_nodes, self.reduction = num_inputs, num_nodes, reduction
        self.concat = tuple(concat)
        self.edges = nn.ModuleList(
            MixedEdge(ops, C, 2 if reduction and src < num_inputs else 1, affine,
                      track_running_stats, wrap)
            for _, src in edge_inputs(num_inputs, num_nodes))

    def forward(self, inputs: Sequence[Tensor], sample: ArchSample) -> Tensor:
        states, e = list(inputs), 0
        for _ in range(self.num_nodes):
            count = len(states)
            if sample.index is None:  # every op of every edge runs, weighted
                sampled = sample.sampled or (None,) * len(self.edges)
                out = node_sum([self.edges[e + j](states[j], sample.weights[e + j],
                                                  sampled=sampled[e + j])
                                for j in range(count)])
            else:  # one op per edge; the node attaches the hard weights of all its edges at once
                index = sample.index[e:e + count]
                keep = None if sample.keep is None else sample.keep[e:e + count]
                kept = range(count) if keep is None else [j for j in range(count) if keep[j]]
                # a sampled `none` adds zeros: skipped, unless the node has nothing else to sum
                skip = [self.edges[e + j].zero[index[j]] for j in kept]
                if all(skip):
                    skip[0] = False
                outs = [None if s else self.edges[e + j](states[j], None, index[j])
                        for j, s in zip(kept, skip)]
                out = sampled_node(sample.weights, e, [index[j] for j in kept], outs, keep,
                                   sample.edge_weights)
            states.append(out)
            e += count
        if self.concat:
            return torch.cat([states[i] for i in self.concat], dim=1)
        return states[-1]


class Supernet(nn.Module):
    """Base class of search networks: owns the architecture logits and draws samples from them.

    A subclass builds its cells from ``MixedEdge``s, calls ``self.sample()`` once at the start
    of ``forward`` and hands each cell the ``ArchSample`` of its kind. It implements
    ``genotype()``. The logits live in ``self.arch_logits[kind]``, one ``[edges, ops]`` tensor
    per cell kind, apart from every other parameter; with edge top-k, ``self.edge_logits[kind]``
    (``[edges]``, one logit per input of each node) are architecture parameters too. A chain
    supernet declares ``layers=`` instead of ``cells=`` (see ``__init__``); either way
    ``choice_points()`` lists every place the architecture chooses, and every view works from it.
    """

    # How many inputs of a node the derived cell keeps (DARTS: 2); None: all of them, so there
    # is nothing for edge top-k to choose (NAS-Bench-201).
    inputs_kept: int | None = None
    # The space's registered name, written into the genotypes the default genotype() derives
    # (empty: a search stamps its config's space in).
    space_name: str = ""

    def __init__(self, mode: str = "gdas",
                 cells: Mapping[str, tuple[int, Sequence[str]]] | None = None, seed: int = 0,
                 cell_inputs: int | None = None, init_scale: float = 1e-3,
                 concat: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
                 layers: Sequence[ChoicePoint] | None = None) -> None:
        """``cells`` maps each cell kind to its number of edges and candidate op names.

        ``nas.build_supernet`` sets ``mode`` and the sampling seed after construction, so a
        plugin's constructor need not take or pass them on: ``super().__init__(cells=...)``.
        ``concat`` declares the states whose concatenation is a cell's output (one sequence for
        every kind, or one per kind), as its ``SearchCell``s compute it: the default
        ``genotype()`` records them, so genotypes, their JSON and pictures show the output.

        A chain supernet gives ``layers`` instead of ``cells``: its choice points in forward
        order, each a logit group of its own (one row, named as the layer, its dots made
        underscores: ``stage1.layer2`` -> ``stage1_layer2``); the default
        ``genotype()`` then derives a layer-sequence genotype (``Genotype.layers``).
        """
        super().__init__()
        self.chain = self._declared_layers(layers, cells)
        if self.chain:
            cells = {p.group: (1, p.ops) for p in self.chain}
        if not cells:
            raise InputError(f"{type(self).__name__}: Supernet.__init__ needs cells={{kind: "
                             "(edges, ops)}}")
        if mode not in MODES:
            raise InputError(f"unknown sampling mode '{mode}' (known: {', '.join(MODES)})")
        for kind, (edges, ops) in cells.items():
            if isinstance(edges, bool) or not isinstance(edges, int) or edges < 1:
                raise InputError(f"{type(self).__name__}: cell kind '{kind}' needs at least one "
                                 f"edge, got {edges!r}")
            if isinstance(ops, str) or not ops or not all(isinstance(o, str) and o for o in ops) \
                    or len(set(ops)) != len(ops):
                raise InputError(f"{type(self).__name__}: the ops of cell kind '{kind}' must be a "
                                 f"non-empty list of distinct op names, got {ops!r}")
        self.mode = mode
        self.tau = 1.0
        # Hard modes draw the one-hot from softmax(logits / tau_forward); tau (above) is the
        # temperature of the relaxation the gradient goes through. 1.0 is GDAS.
        self.tau_forward = 1.0
        self.op_names = {kind: tuple(ops) for kind, (_, ops) in cells.items()}
        self.cell_inputs = cell_inputs
        self.cell_concat = self._declared_concat(concat, cells)
        self.init_scale = init_scale
        self.arch_logits = nn.ParameterDict()
        for kind, (edges, ops) in cells.items():  # each op's column of noise follows its name
            value = torch.empty(edges, len(ops))
            value[:, canonical_order(ops)] = init_scale * torch.randn(edges, len(ops))
            self.arch_logits[kind] = nn.Parameter(value)
        self.edge_logits = nn.ParameterDict()  # filled by enable_edge_topk
        self.edge_topk = 0
        self._slots: dict[str, Tensor] = {}  # [nodes, most inputs]: edge id of each input, or -1
        self._slot_lists: dict[str, list[list[int]]] = {}  # the same, read on the host
        self._on_device: dict[tuple[str, torch.device], tuple[Tensor, Tensor, Tensor]] = {}
        self._orders: dict[tuple[str, torch.device], tuple[Tensor, Tensor] | None] = {}
        # Every sample is a function of (seed, samples_drawn): resumable from two integers and
        # the same on every rank of a distributed run.
        self.sample_seed = int(seed)
        self.samples_drawn = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self.last_index: dict[str, Tensor] = {}
        self.last_edges: dict[str, Tensor] = {}
        self._ahead: list[_Drawn] | None = None  # samples drawn inside drawing_ahead
        self._queued: list[tuple[dict[str, ArchSample], dict[str, Tensor], dict[str, Tensor]]] = []
        # When set, training-mode samples are drawn from these fixed logits (one [ops] or
        # [edges, ops] tensor per cell kind) instead of the architecture's: the search's weight
        # steps under weight_sampling uniform/params. The sample stays a function of the seed.
        self.sampling_logits: dict[str, Tensor] | None = None
        # The gradient surrogate of a hard sample (gdas, st): the soft Gumbel sample itself
        # ("gdas"), Gumbel-Rao's mean of rao_samples conditional soft samples, or ReinMax's.
        self.estimator = "gdas"
        self.rao_samples = 4

    def _declared_layers(self, layers: Sequence[ChoicePoint] | None,
                         cells: Mapping[str, Any] | None) -> tuple[ChoicePoint, ...]:
        """A chain's layers, each its own logit group (``group`` = its name, row 0), checked."""
        if layers is None:
            return ()
        name = type(self).__name__
        if cells:
            raise InputError(f"{name}: Supernet.__init__ takes cells= (a cell space) or layers= "
                             "(a chain space), not both")
        points = tuple(layers)
        if not points or not all(isinstance(p, ChoicePoint) for p in points):
            raise InputError(f"{name}: layers= must be a non-empty list of nas.ChoicePoint")
        # a logit group's name is a parameter name: its dots become underscores
        groups = [p.name.replace(".", "_") for p in points]
        if len(set(groups)) != len(groups):
            twice = next(p.name for p, g in zip(points, groups) if groups.count(g) > 1)
            raise InputError(f"{name}: two layers are named '{twice}' (dots read as "
                             "underscores); choice points need distinct names")
        return tuple(replace(p, group=g, row=0) for p, g in zip(points, groups))

    def choice_points(self) -> list[ChoicePoint]:
        """Every choice point, in logit order: a chain's layers, or each cell kind's edges
        (named ``kind/<node><-<input>``, as ``edge_names`` numbers them)."""
        if self.chain:
            return list(self.chain)
        return [ChoicePoint(f"{kind}/{edge}", ops, stride=None, group=kind, row=row)
                for kind, ops in self.op_names.items()
                for row, edge in enumerate(self.edge_names(kind))]

    def _declared_concat(self, concat: Any, cells: Mapping[str, tuple[int, Sequence[str]]]
                         ) -> dict[str, tuple[int, ...]]:
        """``concat`` as ``{kind: states}``, each state checked against the cell's states."""
        if concat is None:
            return {}
        name = type(self).__name__
        per_kind = dict(concat) if isinstance(concat, Mapping) else {k: concat for k in cells}
        out = {}
        for kind, states in per_kind.items():
            if kind not in cells:
                raise InputError(f"{name}: concat names cell kind '{kind}', which is not one of "
                                 f"its cells ({', '.join(cells)})")
            if isinstance(states, (str, bytes)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in states):
                raise InputError(f"{name}: concat of cell kind '{kind}' must be state indices, "
                                 f"got {states!r}")
            if self.cell_inputs is not None:
                try:
                    total = self.cell_inputs + num_nodes(cells[kind][0], self.cell_inputs)
                except ValueError as exc:
                    raise InputError(f"{name}: cell kind '{kind}': {exc}") from None
                bad = [i for i in states if i >= total]
                if bad:
                    raise InputError(f"{name}: concat of cell kind '{kind}' names state {bad[0]}, "
                                     f"but its cells have states 0..{total - 1}")
            out[kind] = tuple(states)
        return out

    def edge_names(self, kind: str) -> list[str]:
        """Readable edge names, ``"3<-1"`` (node <- state) in DARTS-family cells; a chain
        layer's group: the layer's name (``stage1.layer2``)."""
        if self.chain:
            return [p.name for p in self.chain if p.group == kind]
        edges = self.arch_logits[kind].shape[0]
        if self.cell_inputs is None:
            return [f"edge {e}" for e in range(edges)]
        n = num_nodes(edges, self.cell_inputs)
        return [f"{self.cell_inputs + node}<-{src}" for node, src in edge_inputs(self.cell_inputs, n)]

    # -- edge top-k ---------------------------------------------------------------------------
    def enable_edge_topk(self, k: int) -> None:
        """Sample k inputs per node each step (Gumbel top-k over new edge logits); 0: off."""
        if k == 0:
            return
        name = type(self).__name__
        if self.mode != "gdas":
            raise InputError(f"search.edge_topk: sampling the inputs of a node needs search.mode: "
                             f"gdas, got {self.mode}")
        if self.chain:
            raise InputError(f"search.edge_topk: {name} is a chain, each of its layers reads one "
                             "input, so there are no inputs to sample; set it to 0")
        if self.cell_inputs is None or self.inputs_kept is None:
            raise InputError(f"search.edge_topk: {name} keeps every input of a node when it "
                             "derives a cell, so there are no inputs to sample; set it to 0")
        if not 1 <= k <= self.cell_inputs:
            raise InputError(f"search.edge_topk: the first node of a {name} cell has only "
                             f"{self.cell_inputs} inputs, so k must be in 1..{self.cell_inputs}, got {k}")
        self.edge_topk = int(k)
        for kind, value in self.arch_logits.items():
            edges = value.shape[0]
            n = num_nodes(edges, self.cell_inputs)
            slots = torch.full((n, self.cell_inputs + n - 1), -1, dtype=torch.long)
            for e, (node, src) in enumerate(edge_inputs(self.cell_inputs, n)):
                slots[node, src] = e
            self._slots[kind], self._slot_lists[kind] = slots, slots.tolist()
            self.edge_logits[kind] = nn.Parameter(
                self.init_scale * torch.randn(edges, device=value.device))

    def edge_layout(self, kind: str, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(slots, node, input) of ``kind`` on ``device``: (node, input) of every edge, in edge
        order. Copied once per device; computing them there would cost host syncs (nonzero)."""
        key = (kind, device)
        if key not in self._on_device:
            slots = self._slots[kind]
            node, src = (slots >= 0).nonzero(as_tuple=True)  # row-major: the edge order
            self._on_device[key] = (slots.to(device), node.to(device), src.to(device))
        return self._on_device[key]

    def op_order(self, kind: str, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """(order, inverse) of ``kind``'s ops by name on ``device``: ``logits[:, order]`` lists
        the columns by op name and ``[:, inverse]`` puts them back; None if already in order."""
        key = (kind, device)
        if key not in self._orders:
            order = canonical_order(self.op_names[kind])
            if order == sorted(order):
                self._orders[key] = None
            else:
                order_t = torch.tensor(order, device=device)
                self._orders[key] = order_t, torch.argsort(order_t)
        return self._orders[key]

    def _softmax(self, kind: str, value: Tensor) -> Tensor:
        """softmax of ``kind``'s logits over the ops, summed in op-name order."""
        order = self.op_order(kind, value.device)
        if order is None:
            return value.softmax(-1)
        return value[:, order[0]].softmax(-1)[:, order[1]]

    def node_logits(self, kind: str, edge_logits: Tensor | None = None) -> Tensor:
        """Edge logits ``[edges]`` laid out per node, ``[nodes, most inputs]``, -inf padded."""
        value = self.edge_logits[kind] if edge_logits is None else edge_logits
        slots = self.edge_layout(kind, value.device)[0]
        return value[slots.clamp(min=0)].masked_fill(slots < 0, float("-inf"))

    def _edge_sample(self, kind: str, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(k-hot weights ``[edges]``, kept inputs ``[nodes, k]`` in draw order) of one kind."""
        logits = self.edge_logits[kind]
        if not self.training:
            node = self.node_logits(kind).detach()
            order = node.topk(self.edge_topk, dim=-1).indices
            hard = torch.zeros_like(node).scatter_(-1, order, 1.0)
        else:
            if self.sampling_logits is not None:  # weight steps: inputs drawn uniformly too
                logits = torch.zeros_like(logits)
            elif self.tau_forward != 1.0:
                logits = logits / self.tau_forward
            hard, order = gumbel.gumbel_topk_st(self.node_logits(kind, logits), self.edge_topk,
                                                self.tau, generator=gen)
        _, node, src = self.edge_layout(kind, logits.device)
        return hard[node, src], order

    def edge_probabilities(self) -> dict[str, Tensor]:
        """Per node, softmax of its inputs' edge logits (flat ``[edges]`` per kind); {} when off."""
        out = {}
        for kind in self.edge_logits:
            p = self.node_logits(kind).detach().softmax(-1)
            _, node, src = self.edge_layout(kind, p.device)
            out[kind] = p[node, src]
        return out

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits, one tensor per cell kind (then the edge logits, if on)."""
        return list(self.arch_logits.values()) + list(self.edge_logits.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture logit."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- sampling -----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        # A large odd multiplier spreads consecutive seeds far apart in seed space.
        gen.manual_seed((self.sample_seed * 0x9E3779B97F4A7C15 + self.samples_drawn) % (2 ** 63))
        return gen

    def _draw(self, kind: str, value: Tensor, hard: bool,
              gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One kind's training sample from logits ``value`` ``[edges, ops]``: (weights, index)
        in list order, drawn with the columns in op-name order (its noise follows the names)."""
        order = self.op_order(kind, value.device)
        if order is not None:
            value = value[:, order[0]]
        weights, idx = gumbel.gumbel_softmax(value, self.tau, hard=hard, generator=gen)
        if hard and value.requires_grad:  # the same one-hot, another gradient surrogate
            if self.estimator == "gumbel_rao":
                weights = gumbel.gumbel_rao(value, idx, self.tau, self.rao_samples, generator=gen)
            elif self.estimator == "reinmax":
                weights = gumbel.reinmax(value, idx, self.tau)
        if order is not None:
            weights, idx = weights[:, order[1]], order[0][idx]
        return weights, idx

    def sample(self) -> dict[str, ArchSample]:
        """Draw this forward's sample for every cell kind (one host sync at most, none in soft
        modes); in training, the next sample ``drawing_ahead`` drew, if any is left."""
        if self._queued and self.training:
            out, self.last_index, self.last_edges = self._queued.pop(0)
            return out
        drawn = self._draw_sample()
        if self._ahead is not None:  # read on the host with the others, as drawing_ahead ends
            self._ahead.append(drawn)
            return {}
        read = self._to_read(drawn)
        return self._arch_samples(drawn, read.tolist() if read is not None else [])

    @contextlib.contextmanager
    def drawing_ahead(self) -> Iterator[None]:
        """Draw the training samples of the forwards that come next, by calling ``sample()``
        inside (each in the context its forward would have: frozen logits, fixed sampling
        logits); their ops are read on the host together as the block ends (one sync for all),
        and the next training forwards take them in order. The samples are the ones those
        forwards would have drawn, as long as nothing they depend on changes in between."""
        self._ahead = []
        try:
            yield
            drawn, self._ahead = self._ahead, None
            reads = [self._to_read(d) for d in drawn]
            flat = torch.cat([r for r in reads if r is not None]).tolist() \
                if any(r is not None for r in reads) else []
            start = 0
            for d, r in zip(drawn, reads):
                n = 0 if r is None else r.numel()
                self._queued.append((self._arch_samples(d, flat[start:start + n]),
                                     d.index, d.edge_orders))
                start += n
        finally:
            self._ahead = None

    def drop_drawn(self) -> None:
        """Forget the samples ``drawing_ahead`` drew that no forward took."""
        self._queued.clear()

    def _draw_sample(self) -> _Drawn:
        """Every kind's sample as device tensors, nothing read on the host yet."""
        logits = dict(self.arch_logits.items())
        how = SAMPLING[self.mode]
        single_path = how.single_path or (how.hard and not self.training)
        edges: dict[str, tuple[Tensor, Tensor]] = {}
        if not self.training:
            if how.hard:
                index = {k: v.argmax(-1) for k, v in logits.items()}
                weights = {k: gumbel.straight_through(self._softmax(k, v), index[k])
                           for k, v in logits.items()}
            else:
                index, weights = {}, {k: self._softmax(k, v) for k, v in logits.items()}
            edges = {k: self._edge_sample(k, None) for k in self.edge_logits}
        elif not how.noise:
            index, weights = {}, {k: self._softmax(k, v) for k, v in logits.items()}
        else:
            hard = how.hard
            index, weights = {}, {}
            for kind, value in logits.items():
                gen = self._generator(value.device)
                self.samples_drawn += 1
                if self.sampling_logits is not None:
                    value = self.sampling_logits[kind].to(value).expand_as(value)
                elif hard and self.tau_forward != 1.0:  # the one-hot is drawn from softmax(value)
                    value = value / self.tau_forward
                weights[kind], idx = self._draw(kind, value, hard, gen)
                if hard:
                    index[kind] = idx
                if kind in self.edge_logits:  # drawn after the ops: their sample is gdas's
                    edges[kind] = self._edge_sample(kind, gen)
        self.last_index = index
        self.last_edges = {k: order for k, (_, order) in edges.items()}
        read = "single_path" if single_path else "sampled" if how.hard and self.training else None
        return _Drawn(logits, weights, index, edges, self.last_edges, read)

    @staticmethod
    def _to_read(drawn: _Drawn) -> Tensor | None:
        """What the forward needs on the host: the op of every edge of every kind (and their kept
        inputs) in one tensor, or None (every op runs, weighted)."""
        if drawn.read == "single_path":
            return torch.cat([drawn.index[k] for k in drawn.logits] +
                             [drawn.edges[k][1].flatten() for k in drawn.edges])
        if drawn.read == "sampled":  # st: every op runs; which one counts, read on the host
            return torch.cat([drawn.index[k] for k in drawn.logits])
        return None

    def _arch_samples(self, drawn: _Drawn, flat: list[int]) -> dict[str, ArchSample]:
        """The ``ArchSample`` of every kind, from the drawn tensors and ``flat``, their host read."""
        logits, weights = drawn.logits, drawn.weights
        if drawn.read == "single_path":
            out, start = {}, 0
            for kind, value in logits.items():
                out[kind] = ArchSample(weights[kind], flat[start:start + value.shape[0]])
                start += value.shape[0]
            for kind, (edge_weights, order) in drawn.edges.items():
                keep = [False] * logits[kind].shape[0]
                for row in self._slot_lists[kind]:
                    for src in flat[start:start + self.edge_topk]:
                        keep[row[src]] = True
                    start += self.edge_topk
                out[kind].keep, out[kind].edge_weights = keep, edge_weights
            return out
        if drawn.read == "sampled":
            out, start = {}, 0
            for kind, value in logits.items():
                out[kind] = ArchSample(weights[kind], sampled=flat[start:start + value.shape[0]])
                start += value.shape[0]
            return out
        return {kind: ArchSample(weights[kind]) for kind in logits}

    def log_prob(self, index: Mapping[str, Tensor], edges: Mapping[str, Tensor] | None = None) -> Tensor:
        """Log-probability of a training sample (``last_index``, ``last_edges``) under the
        current logits, differentiable: the score function of REINFORCE."""
        total = torch.zeros((), device=next(iter(self.arch_logits.values())).device)
        for kind, i in index.items():
            logits = self.arch_logits[kind] / self.tau_forward
            order = self.op_order(kind, logits.device)
            if order is not None:  # summed over the ops in name order, as they were drawn
                logits, i = logits[:, order[0]], order[1][i]
            total = total + logits.log_softmax(-1).gather(1, i.unsqueeze(1)).sum()
        for kind, order in (edges or {}).items():
            node = self.node_logits(kind, self.edge_logits[kind] / self.tau_forward)
            total = total + gumbel.plackett_luce_log_prob(node, order).sum()
        return total

    def probabilities(self) -> dict[str, Tensor]:
        """softmax(logits) of every cell kind, detached."""
        return {k: self._softmax(k, v.detach()) for k, v in self.arch_logits.items()}

    def entropy(self) -> float:
        """Mean entropy (nats) of the op distributions over all edges."""
        ent = [-(p * p.clamp_min(1e-12).log()).sum(-1) for p in self.probabilities().values()]
        return torch.cat(ent).mean().item()

    def genotype(self) -> Genotype:
        """The discrete architecture the logits currently point to.

        The default serves DARTS-family cells (``cell_inputs`` given): each edge keeps its
        strongest op, each node its ``inputs_kept`` strongest inputs (by the edge logits with
        edge top-k; all of them when None). The cell's output is the ``concat`` declared to
        ``__init__``; without one, a cell that keeps a fixed number of inputs outputs the
        concatenation of its nodes, as in DARTS, and any other its last node. Other supernets
        override it.
        """
        if self.chain:
            probs = self.probabilities()
            return Genotype({}, space=self.space_name, layers={
                p.name: p.ops[int(probs[p.group][p.row].argmax())] for p in self.chain})
        if self.cell_inputs is None:
            raise NotImplementedError(f"{type(self).__name__} must implement genotype() (or pass "
                                      "cell_inputs to Supernet.__init__ for the default)")
        edges = self.edge_probabilities()
        cells = {kind: derive_cell(p, self.op_names[kind], self.cell_inputs, keep=self.inputs_kept,
                                   edge_weights=edges.get(kind))
                 for kind, p in self.probabilities().items()}
        first = self.cell_inputs
        if self.cell_concat:
            concat = {kind: self.cell_concat[kind] for kind in cells if kind in self.cell_concat}
        elif self.inputs_kept is not None:
            concat = {kind: tuple(range(first, first + len(nodes))) for kind, nodes in cells.items()}
        else:
            concat = {}
        return Genotype(cells, concat, space=self.space_name,
                        inputs={kind: first for kind in cells})

    def get_extra_state(self) -> dict[str, Any]:
        return {"sample_seed": self.sample_seed, "samples_drawn": self.samples_drawn,
                "tau": self.tau, "tau_forward": self.tau_forward}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sample_seed = int(state["sample_seed"])
        self.samples_drawn = int(state["samples_drawn"])
        self.tau = float(state["tau"])
        self.tau_forward = float(state.get("tau_forward", 1.0))  # checkpoints before it existed

    def extra_repr(self) -> str:
        fwd = f", tau_forward={self.tau_forward:.4g}" if self.tau_forward != 1.0 else ""
        topk = f", edge_topk={self.edge_topk}" if self.edge_topk else ""
        return f"mode={self.mode!r}, tau={self.tau:.4g}{fwd}{topk}"

