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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import gumbel
from .config import check_options
from .errors import InputError
from .genotype import Genotype, edge_inputs, num_nodes
from .ops import build_op
from .registry import SEARCH_SPACES

MODES = ("gdas", "st", "gumbel", "softmax")


@dataclass
class ArchSample:
    """The weights of one cell kind's edges for one forward, and the ops to run.

    ``weights`` has shape ``[edges, ops]``; ``index`` lists the op each edge runs when only one
    op runs per edge (gdas, and eval mode of gdas/st), else it is None and every op runs.
    """

    weights: Tensor
    index: list[int] | None = None

    def __getitem__(self, edge: int) -> tuple[Tensor, int | None]:
        return self.weights[edge], None if self.index is None else self.index[edge]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype == b.dtype and a.stride() == b.stride():  # no temporary the size of the activation
        if a.is_contiguous():
            return torch.dot(a.view(-1), b.view(-1))
        if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last):
            return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return (a * b).sum(dtype=torch.float32)  # other memory layouts, or mixed dtypes under autocast


class _SampledNode(torch.autograd.Function):
    """A node's sum of sampled-op outputs, as if each were weighted by its one-hot hard sample.

    Forward returns the plain sum: every hard weight is exactly 1, so no multiply runs. Backward
    gives each edge's sampled weight ``<grad, out>`` and its unsampled weights ``sum(grad)``:
    GDAS adds the unsampled (zero-valued) hard weights to the edge output as scalars, so every
    logit of the edge receives a gradient although only one op ran. ``sum(grad)`` is shared by
    the node's edges, so it is computed once per node.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, first: int, index: Sequence[int],  # type: ignore[override]
                *outs: Tensor) -> Tensor:
        ctx.first, ctx.index = first, tuple(index)
        ctx.weights_meta = weights.shape, weights.dtype
        ctx.save_for_backward(*outs)
        return node_sum(outs)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_weights = None
        if ctx.needs_input_grad[0]:
            weights_shape, dtype = ctx.weights_meta
            grad_weights = torch.zeros(weights_shape, dtype=dtype, device=grad.device)
            rows = grad_weights[ctx.first:ctx.first + len(ctx.index)]
            rows.fill_(grad.sum(dtype=dtype))
            for row, k, out in zip(rows, ctx.index, ctx.saved_tensors):
                row[k] = _dot(grad, out)
        return (grad_weights, None, None, *([grad] * len(ctx.index)))


def sampled_node(weights: Tensor, first: int, index: Sequence[int], outs: Sequence[Tensor]) -> Tensor:
    """Sum the outputs of the ops sampled on edges ``first, first+1, ...`` of one node.

    ``weights`` is the cell kind's hard sample ``[edges, ops]`` and ``index[j]`` the op that ran
    on edge ``first + j``; the weights get the GDAS gradient (see ``_SampledNode``).
    """
    if not weights.requires_grad:
        return node_sum(outs)
    return _SampledNode.apply(weights, first, index, *outs)


def sampled_op(out: Tensor, weights: Tensor, index: int) -> Tensor:
    """Attach the output of the sampled op ``index`` to its edge's hard weights ``[ops]``."""
    return sampled_node(weights.unsqueeze(0), 0, (index,), (out,))


class MixedEdge(nn.Module):
    """One edge of a search cell: every candidate op, of which a sample selects or mixes."""

    def __init__(self, ops: Sequence[str], C: int, stride: int = 1, affine: bool = False,
                 track_running_stats: bool = True,
                 wrap: Callable[[str, nn.Module, int], nn.Module] | None = None) -> None:
        super().__init__()
        self.op_names = tuple(ops)
        built = [build_op(name, C, stride, affine, track_running_stats) for name in ops]
        if wrap is not None:
            built = [wrap(name, op, C) for name, op in zip(ops, built)]
        self.ops = nn.ModuleList(built)

    def forward(self, x: Tensor, weights: Tensor | None, index: int | None = None) -> Tensor:
        """Run op ``index`` alone, or every op weighted by ``weights`` when index is None.

        With an index and ``weights=None`` the op's output comes back unweighted: the caller
        attaches the hard weights itself, as ``SearchCell`` does for a whole node at once.
        """
        if index is not None:
            out = self.ops[index](x)
            return out if weights is None else sampled_op(out, weights, index)
        out = weights[0] * self.ops[0](x)
        for w, op in zip(weights[1:], self.ops[1:]):
            out = out + w * op(x)
        return out


def node_sum(tensors: Sequence[Tensor]) -> Tensor:
    """Sum a node's incoming edge outputs (no extra kernel for the start value)."""
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


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
                out = node_sum([self.edges[e + j](states[j], sample.weights[e + j])
                                for j in range(count)])
            else:  # one op per edge; the node attaches the hard weights of all its edges at once
                index = sample.index[e:e + count]
                out = sampled_node(sample.weights, e, index,
                                   [self.edges[e + j](states[j], None, index[j])
                                    for j in range(count)])
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
    per cell kind, apart from every other parameter.
    """

    def __init__(self, mode: str, cells: Mapping[str, tuple[int, Sequence[str]]], seed: int = 0,
                 cell_inputs: int | None = None, init_scale: float = 1e-3) -> None:
        """``cells`` maps each cell kind to its number of edges and candidate op names."""
        super().__init__()
        if mode not in MODES:
            raise InputError(f"unknown sampling mode '{mode}' (known: {', '.join(MODES)})")
        self.mode = mode
        self.tau = 1.0
        self.op_names = {kind: tuple(ops) for kind, (_, ops) in cells.items()}
        self.cell_inputs = cell_inputs
        self.arch_logits = nn.ParameterDict(
            {kind: nn.Parameter(init_scale * torch.randn(edges, len(ops)))
             for kind, (edges, ops) in cells.items()})
        # Every sample is a function of (seed, samples_drawn): resumable from two integers and
        # the same on every rank of a distributed run.
        self.sample_seed = int(seed)
        self.samples_drawn = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self.last_index: dict[str, Tensor] = {}
        # When set, training-mode samples are drawn from these fixed logits (one [ops] or
        # [edges, ops] tensor per cell kind) instead of the architecture's: the search's weight
        # steps under weight_sampling uniform/params. The sample stays a function of the seed.
        self.sampling_logits: dict[str, Tensor] | None = None
        # The gradient surrogate of a hard sample (gdas, st): the soft Gumbel sample itself
        # ("gdas"), Gumbel-Rao's mean of rao_samples conditional soft samples, or ReinMax's.
        self.estimator = "gdas"
        self.rao_samples = 4

    def edge_names(self, kind: str) -> list[str]:
        """Readable edge names, ``"3<-1"`` (node <- state) in DARTS-family cells."""
        edges = self.arch_logits[kind].shape[0]
        if self.cell_inputs is None:
            return [f"edge {e}" for e in range(edges)]
        n = num_nodes(edges, self.cell_inputs)
        return [f"{self.cell_inputs + node}<-{src}" for node, src in edge_inputs(self.cell_inputs, n)]

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits, one tensor per cell kind."""
        return list(self.arch_logits.values())

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

    def sample(self) -> dict[str, ArchSample]:
        """Draw this forward's sample for every cell kind (one host sync at most, none in soft modes)."""
        logits = dict(self.arch_logits.items())
        single_path = self.mode == "gdas" or (self.mode == "st" and not self.training)
        if not self.training:
            if self.mode in ("gdas", "st"):
                index = {k: v.argmax(-1) for k, v in logits.items()}
                weights = {k: gumbel.straight_through(v.softmax(-1), index[k]) for k, v in logits.items()}
            else:
                index, weights = {}, {k: v.softmax(-1) for k, v in logits.items()}
        elif self.mode == "softmax":
            index, weights = {}, {k: v.softmax(-1) for k, v in logits.items()}
        else:
            hard = self.mode in ("gdas", "st")
            index, weights = {}, {}
            for kind, value in logits.items():
                gen = self._generator(value.device)
                self.samples_drawn += 1
                if self.sampling_logits is not None:
                    value = self.sampling_logits[kind].to(value).expand_as(value)
                weights[kind], idx = gumbel.gumbel_softmax(value, self.tau, hard=hard, generator=gen)
                if hard:
                    index[kind] = idx
                if hard and value.requires_grad:  # the same one-hot, another gradient surrogate
                    if self.estimator == "gumbel_rao":
                        weights[kind] = gumbel.gumbel_rao(value, idx, self.tau, self.rao_samples,
                                                          generator=gen)
                    elif self.estimator == "reinmax":
                        weights[kind] = gumbel.reinmax(value, idx, self.tau)
        self.last_index = index
        if single_path:
            # one transfer for all edges of all cell kinds
            flat = torch.cat([index[k] for k in logits]).tolist()
            out, start = {}, 0
            for kind, value in logits.items():
                out[kind] = ArchSample(weights[kind], flat[start:start + value.shape[0]])
                start += value.shape[0]
            return out
        return {kind: ArchSample(weights[kind]) for kind in logits}

    def probabilities(self) -> dict[str, Tensor]:
        """softmax(logits) of every cell kind, detached."""
        return {k: v.detach().softmax(-1) for k, v in self.arch_logits.items()}

    def entropy(self) -> float:
        """Mean entropy (nats) of the op distributions over all edges."""
        ent = [-(p * p.clamp_min(1e-12).log()).sum(-1) for p in self.probabilities().values()]
        return torch.cat(ent).mean().item()

    def genotype(self) -> Genotype:
        """The discrete architecture the logits currently point to."""
        raise NotImplementedError(f"{type(self).__name__} must implement genotype()")

    def get_extra_state(self) -> dict[str, Any]:
        return {"sample_seed": self.sample_seed, "samples_drawn": self.samples_drawn,
                "tau": self.tau}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sample_seed = int(state["sample_seed"])
        self.samples_drawn = int(state["samples_drawn"])
        self.tau = float(state["tau"])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, tau={self.tau:.4g}"


@dataclass(frozen=True)
class SearchSpace:
    """What a search-space plugin registers: how to build its supernet and its networks.

    ``supernet(num_classes, mode, seed, **options) -> Supernet`` and, for retraining,
    ``network(genotype, num_classes, **options) -> nn.Module``; ``options`` come from the
    config sections ``supernet:`` and ``network:`` and are checked against these signatures.
    """

    supernet: Callable[..., Supernet]
    network: Callable[..., nn.Module] | None = None
    description: str = ""


def get_space(name: str) -> SearchSpace:
    """Look up a search space by registered name or ``module:attr``; a bare Supernet class works too."""
    obj = SEARCH_SPACES.get(name)
    if isinstance(obj, SearchSpace):
        return obj
    if isinstance(obj, type) and issubclass(obj, Supernet):
        return SearchSpace(supernet=obj)
    raise InputError(f"search space '{name}' is a {type(obj).__name__}, not a nas.SearchSpace "
                     "or a nas.Supernet subclass")


def build_supernet(space: str, num_classes: int, mode: str, seed: int = 0,
                   options: Mapping[str, Any] | None = None) -> Supernet:
    """Build the supernet of ``space``; ``options`` (config ``supernet:``) are checked by name and type."""
    if mode not in MODES:
        raise InputError(f"unknown sampling mode '{mode}' (known: {', '.join(MODES)})")
    spec = get_space(space)
    kwargs = check_options(spec.supernet, options or {}, "supernet",
                           skip=("num_classes", "mode", "seed"))
    model = spec.supernet(num_classes, mode, seed=seed, **kwargs)
    if not isinstance(model, Supernet):
        raise InputError(f"search space '{space}' built a {type(model).__name__}, not a nas.Supernet")
    return model
