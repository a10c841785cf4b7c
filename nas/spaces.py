"""The search-space plugin contract: what a space registers, and how the framework builds it.

A plugin registers a ``SearchSpace`` (or a bare ``Supernet`` subclass) in ``nas.SEARCH_SPACES``;
``build_supernet`` and ``build_network`` look it up, check the config's ``supernet:`` and
``network:`` options against the builders' signatures, build, and turn a builder's own error
into one line. ``check_supernet`` and ``check_network`` run two blank images through what was
built, before a run directory exists, so a plugin's mistake is found before the first epoch.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .config import check_options
from .errors import InputError, first_line
from .genotype import Genotype, edge_inputs
from .network import GenotypeCell, evaluating
from .registry import SEARCH_SPACES
from .supernet import MODES, MixedEdge, SearchCell, Supernet


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


def build_or_explain(who: str, section: str, fn: Callable[..., Any], options: Mapping[str, Any],
                     *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs, **options)``; a builder's own exception becomes one line naming it."""
    try:
        return fn(*args, **kwargs, **options)
    except InputError:
        raise
    except Exception as exc:  # a plugin's or torch's complaint about the options given
        raise InputError(f"{who} could not build its {section} from {section}: "
                         f"{dict(options)} ({type(exc).__name__}: {first_line(exc, typed=False)})"
                         ) from None


def get_space(name: str) -> SearchSpace:
    """Look up a search space by registered name or ``module:attr``; a bare Supernet class works too."""
    obj = SEARCH_SPACES.get(name)
    if isinstance(obj, SearchSpace):
        return obj
    if isinstance(obj, type) and issubclass(obj, Supernet):
        return SearchSpace(supernet=obj)
    raise InputError(f"search space '{name}' is a {type(obj).__name__}, not a nas.SearchSpace "
                     "or a nas.Supernet subclass")


def check_supernet(model: Supernet, space: str, num_classes: int, image_size: int) -> None:
    """Check a supernet before a search starts: ``genotype()`` works and the logits fit (one line)."""
    who = f"search space '{space}'"
    try:
        genotype = model.genotype()
    except NotImplementedError:
        raise InputError(f"{who}: {type(model).__name__} does not implement genotype(), which "
                         "derives the architecture from the logits (see docs/how-to/plugin.md)") from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{who}: {type(model).__name__}.genotype() failed: {first_line(exc)}") from exc
    if not isinstance(genotype, Genotype):
        raise InputError(f"{who}: {type(model).__name__}.genotype() returned a "
                         f"{type(genotype).__name__}, expected a nas.Genotype")
    check_network(model, num_classes, image_size, who)


def build_supernet(space: str, num_classes: int, mode: str, seed: int = 0,
                   options: Mapping[str, Any] | None = None, edge_topk: int = 0) -> Supernet:
    """Build the supernet of ``space``; ``options`` (config ``supernet:``) are checked by name and type.

    ``edge_topk`` > 0 samples that many inputs per node (``Supernet.enable_edge_topk``).
    """
    if mode not in MODES:
        raise InputError(f"unknown sampling mode '{mode}' (known: {', '.join(MODES)})")
    spec = get_space(space)
    kwargs = check_options(spec.supernet, options or {}, "supernet",
                           skip=("num_classes", "mode", "seed"))
    # mode and seed are given to a constructor that takes them, and set on the supernet anyway
    params = inspect.signature(spec.supernet).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in (("mode", mode), ("seed", seed)) if k in params or takes_any}
    model = build_or_explain(f"search space '{space}'", "supernet", spec.supernet, kwargs,
                             num_classes, **given)
    if not isinstance(model, Supernet):
        raise InputError(f"search space '{space}' built a {type(model).__name__}, not a nas.Supernet")
    model.mode, model.sample_seed = mode, int(seed)
    model.enable_edge_topk(edge_topk)
    return model


def check_logits(out: Any, batch: int, num_classes: int, who: str) -> None:
    """Fail with one line unless ``out`` is ``[batch, num_classes]`` logits (or a tuple starting so)."""
    logits = out[0] if isinstance(out, tuple) and out else out
    if not isinstance(logits, Tensor):
        raise InputError(f"{who}: forward returned a {type(logits).__name__}, expected a logits "
                         f"tensor of shape ({batch}, {num_classes}) or a tuple (logits, aux_logits)")
    if tuple(logits.shape) != (batch, num_classes):
        raise InputError(f"{who}: forward returned logits of shape {tuple(logits.shape)}, "
                         f"expected ({batch}, {num_classes}) (batch, classes)")


def check_network(model: nn.Module, num_classes: int, image_size: int, who: str) -> None:
    """Run a 2-image batch through ``model`` in eval mode: a plugin's mistake fails here, in one line.

    Eval mode changes no state; a supernet runs every op (as in softmax mode), so that an image
    size a reduction op cannot halve fails here too, not in a later step.
    """
    with inspecting(model) as device, _ops_checked(model, who) as running:
        x = torch.zeros(2, 3, image_size, image_size, device=device)
        try:
            out = model(x)
        except InputError:
            raise
        except Exception as exc:  # a plugin's bug: name it, in one line
            if running:  # it failed inside an op: say which, where
                site, shape = running[-1]
                raise InputError(f"{who}: {site} failed on an input of shape {shape}: "
                                 f"{first_line(exc)}") from exc
            raise InputError(f"{who}: forward failed on a batch of shape {tuple(x.shape)}: "
                             f"{first_line(exc)}") from exc
    check_logits(out, 2, num_classes, who)


def _op_sites(model: nn.Module) -> list[tuple[nn.Module, str, int, int | None]]:
    """Every op of the cells in ``model``: (module, where it is in words, its stride, its
    channels out: None for as many as in, or a chain layer's width)."""
    sites, seen = [], set()

    def cell_words(title: str, name: str, reduction: bool) -> str:
        where = f"{title} '{name}'" if name else title
        return where + (" (a reduction cell)" if reduction and "reduc" not in title else "")

    for name, module in model.named_modules():
        if isinstance(module, SearchCell):
            cell = cell_words("cell", name, module.reduction)
            pairs = edge_inputs(module.num_inputs, module.num_nodes)
            for (node, src), edge in zip(pairs, module.edges):
                seen.add(id(edge))
                for op_name, op in zip(edge.op_names, edge.ops):
                    sites.append((op, f"op '{op_name}' on edge {module.num_inputs + node}<-{src} "
                                      f"of {cell}, stride {edge.stride},", edge.stride, None))
        elif isinstance(module, GenotypeCell):
            cell = cell_words(module.where, name, module.reduction)
            k = 0
            for node, sources in enumerate(module.node_inputs):
                for src in sources:
                    sites.append((module.ops[k], f"op '{module.op_names[k]}' on edge "
                                  f"{module.num_inputs + node}<-{src} of {cell}, stride "
                                  f"{module.strides[k]},", module.strides[k], None))
                    k += 1
    for name, module in model.named_modules():
        if isinstance(module, MixedEdge) and id(module) not in seen:  # an edge outside a SearchCell
            for op_name, op in zip(module.op_names, module.ops):
                sites.append((op, f"op '{op_name}' on edge '{name}', stride {module.stride},",
                              module.stride, module.C_out))
    return sites


@contextlib.contextmanager
def _ops_checked(model: nn.Module, who: str) -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """While inside, every op of a cell checks that it maps ``[N, C, H, W]`` to ``[N, C, H/stride,
    W/stride]`` (a wrong shape fails naming the op, edge, cell and stride, before a later sum
    fails on it or broadcasts it); yields the ops running now (the innermost last)."""
    running: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def before(site: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            running.append((site, tuple(x.shape) if isinstance(x, Tensor) else ()))
        return hook

    def after(site: str, stride: int, channels: int | None) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            _, shape = running.pop()
            if len(shape) != 4 or not isinstance(out, Tensor):
                return
            n, c, h, w = shape
            c = c if channels is None else channels
            sizes = [{d // stride, -(-d // stride)} for d in (h, w)]
            got = tuple(out.shape)
            if len(got) != 4 or got[:2] != (n, c) or got[2] not in sizes[0] or got[3] not in sizes[1]:
                want = (n, c, *(min(s) if len(s) == 1 else f"{min(s)} or {max(s)}" for s in sizes))
                raise InputError(f"{who}: {site} returned shape {got} from an input of shape "
                                 f"{shape}; an op must return [N, C, H/stride, W/stride], here "
                                 f"({', '.join(map(str, want))})")
        return hook

    for op, site, stride, channels in _op_sites(model):
        handles.append(op.register_forward_pre_hook(before(site)))
        handles.append(op.register_forward_hook(after(site, stride, channels)))
    try:
        yield running
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def inspecting(model: nn.Module) -> Iterator[torch.device]:
    """``evaluating``, and a supernet runs every op of every edge (softmax mode); restored after."""
    sampling = getattr(model, "mode", None)
    if isinstance(model, Supernet):
        model.mode = "softmax"
    try:
        with evaluating(model) as device:
            yield device
    finally:
        if isinstance(model, Supernet):
            model.mode = sampling


def build_network(space: str, genotype: Genotype, num_classes: int,
                  options: dict[str, Any] | None = None) -> nn.Module:
    """Build the retraining network of ``space`` for ``genotype``; options from config ``network:``."""
    spec = get_space(space)
    if spec.network is None:
        raise InputError(f"search space '{space}' has no network builder, so it cannot retrain")
    kwargs = check_options(spec.network, options or {}, "network", skip=("genotype", "num_classes"))
    return build_or_explain(f"search space '{space}'", "network", spec.network, kwargs,
                            genotype, num_classes)
