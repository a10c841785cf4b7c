"""Genotypes: the discrete architecture a search derives, its file and string forms.

A genotype maps each cell kind to its intermediate nodes, and each node to its incoming edges
``(op, input)``. Inputs index the cell's states: the cell inputs first (two in DARTS, one in
NAS-Bench-201), then the intermediate nodes in order; ``inputs`` says how many states are cell
inputs. ``concat`` names the states whose concatenation is the cell's output; empty means the
last node is the output.

The text form (``str``) names the space and reads back (``parse_genotype``) to an equal genotype
for every space: the DARTS ``Genotype(normal=..., ...)`` string for the darts space and the
NAS-Bench-201 ``|op~0|+...`` string for nasbench201 (the published forms, unchanged), for a
chain space's genotype (``layers``: choice point -> op, no cells) the chain string
``Chain[space](stage1.layer0=op, ...)``, and for any other space or shape the compact JSON of the
genotype, ``{"space": ..., "cells": ...}``.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from .errors import InputError
from .files import atomic_write
from .registry import GENOTYPES, closest

Edge = tuple[str, int]
Nodes = tuple[tuple[Edge, ...], ...]


MAX_STATES = 10_000  # far beyond any cell; a larger index is a corrupt or crafted file


def _index(value: Any) -> int:
    """A state index: a whole number in [0, MAX_STATES) (or its digits), else ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer()) or not 0 <= value < MAX_STATES:
        raise ValueError(f"a state index must be a whole number in [0, {MAX_STATES}), got {value!r}")
    return int(value)


def _freeze_nodes(nodes: Iterable[Iterable[Sequence[Any]]]) -> Nodes:
    if isinstance(nodes, (str, bytes)):
        raise TypeError("a cell must be a list of nodes")
    return tuple(tuple((_op_name(op), _index(src)) for op, src in node) for node in nodes)


def _op_name(op: Any, what: str = "an op") -> str:
    # a name is printed, drawn and matched: blank text, a newline or a control character is none
    if not isinstance(op, str) or not op.strip() or not op.isprintable():
        raise ValueError(f"{what} must be a non-empty name of printable characters, got {op!r}")
    return op


@dataclass(frozen=True)
class Genotype:
    """A derived architecture: cell kind -> nodes -> incoming ``(op, input)`` edges."""

    cells: dict[str, Nodes]
    concat: dict[str, tuple[int, ...]] = field(default_factory=dict)
    space: str = ""
    source: str = field(default="", compare=False)  # where a published genotype comes from
    # how many of a cell kind's states are cell inputs (DARTS 2, NAS-Bench-201 1); a kind not
    # given is inferred from its edges: the fewest inputs its nodes' indices allow
    inputs: dict[str, int] = field(default_factory=dict)
    # a chain space's genotype: choice point -> op, in forward order (cells then empty)
    layers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.cells, dict) or not isinstance(self.concat, dict) or \
                not isinstance(self.inputs, dict):
            raise InputError("a genotype's 'cells', 'concat' and 'inputs' must map cell kinds to "
                             "values")
        try:
            cells = {_op_name(str(k), "a cell kind"): _freeze_nodes(v) for k, v in self.cells.items()}
            concat = {str(k): tuple(_index(i) for i in v) for k, v in self.concat.items()}
            given = {str(k): _index(v) for k, v in self.inputs.items()}
        except ValueError as exc:
            raise InputError(f"not a valid genotype: {exc}") from None
        except TypeError:
            raise InputError("a genotype cell must be a list of nodes, each a list of "
                             "(op, input) pairs, and a concat a list of state indices") from None
        for kind, count in given.items():
            if kind not in cells or count < 1:
                raise InputError(f"not a valid genotype: 'inputs' must give each cell kind "
                                 f"({', '.join(cells)}) at least 1 input, got {kind}: {count}")
        inputs = {k: given.get(k) or inferred_inputs(nodes) for k, nodes in cells.items()}
        object.__setattr__(self, "layers", _layers(self.layers))
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "concat", concat)
        object.__setattr__(self, "inputs", inputs)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.cells.items())), tuple(sorted(self.concat.items())),
                     self.space, tuple(sorted(self.inputs.items())), tuple(self.layers.items())))

    # -- JSON ---------------------------------------------------------------------------------
    def _plain(self) -> dict[str, Any]:
        return {"space": self.space,
                "cells": {k: [[list(e) for e in node] for node in nodes]
                          for k, nodes in self.cells.items()},
                "concat": {k: list(v) for k, v in self.concat.items()},
                "inputs": dict(self.inputs), **({"layers": dict(self.layers)} if self.layers else {})}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with the string form, for people); ``from_dict`` reads it back."""
        return {**self._plain(), "string": str(self), **({"source": self.source} if self.source else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Genotype":
        """Inverse of ``to_dict``."""
        if not isinstance(data, dict) or "cells" not in data:
            raise InputError("not a genotype: expected a mapping with a 'cells' key")
        return cls(cells=data["cells"], concat=data.get("concat") or {},
                   space=str(data.get("space") or ""), source=str(data.get("source") or ""),
                   inputs=data.get("inputs") or {},  # files from before it: inferred
                   layers=data.get("layers") or {})

    def save(self, path: str | Path) -> None:
        """Write the genotype as JSON (written to a temporary file, then renamed)."""
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        """Read a genotype JSON file written by ``save``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"genotype file not found: {path}") from None
        except OSError as exc:  # no permission, a directory, a symlink loop, ...
            raise InputError(f"cannot read the genotype file {path}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not a genotype JSON file ({exc})") from None
        except RecursionError:
            raise InputError(f"{path} is not a genotype JSON file (nested too deeply)") from None
        if not isinstance(data, dict) or "cells" not in data:
            raise InputError(f"{path} is not a genotype JSON file (no 'cells' key)")
        return cls.from_dict(data)

    # -- strings ------------------------------------------------------------------------------
    def to_darts_string(self) -> str:
        """``Genotype(normal=[...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=...)``."""
        if set(self.cells) != {"normal", "reduce"}:
            raise ValueError("the DARTS string needs exactly the cells 'normal' and 'reduce'")
        parts = []
        for kind in ("normal", "reduce"):
            edges = ", ".join(f"({op!r}, {src})" for node in self.cells[kind] for op, src in node)
            concat = self.concat.get(kind) or tuple(range(2, 2 + len(self.cells[kind])))
            parts.append(f"{kind}=[{edges}], {kind}_concat={list(concat)}")
        return f"Genotype({', '.join(parts)})"

    def to_nb201_string(self) -> str:
        """``|op~0|+|op~0|op~1|+|...|``: one ``+``-separated group per node."""
        if set(self.cells) != {"cell"}:
            raise ValueError("the NAS-Bench-201 string needs exactly one cell named 'cell'")
        return "+".join("|" + "|".join(f"{op}~{src}" for op, src in node) + "|"
                        for node in self.cells["cell"])

    def fits_darts_string(self) -> bool:
        """Whether the DARTS string holds this genotype exactly (and reads back as the darts space)."""
        return (self.space in ("darts", "") and set(self.cells) == {"normal", "reduce"}
                and all(self.inputs[k] == 2 and self.concat.get(k) and
                        all(len(node) == 2 for node in self.cells[k]) for k in self.cells))

    def fits_nb201_string(self) -> bool:
        """Whether the NAS-Bench-201 string holds this genotype exactly (as the nasbench201 space)."""
        return (self.space in ("nasbench201", "") and set(self.cells) == {"cell"}
                and not self.concat.get("cell") and self.inputs["cell"] == 1
                and all(node and all(op.strip() == op and not set(op) & set("|~+")
                                     for op, _ in node) for node in self.cells["cell"]))

    def to_chain_string(self) -> str:
        """``Chain[mbconv](stage1.layer0=mbconv_k3_e6, stage1.layer1=skip)``: the layers in order."""
        if self.cells or not self.layers:
            raise ValueError("the chain string needs a genotype of layers and no cells")
        return f"Chain[{self.space}](" + ", ".join(f"{k}={op}" for k, op in self.layers.items()) + ")"

    def fits_chain_string(self) -> bool:
        """Whether the chain string holds this genotype exactly (names free of its separators)."""
        plain = [self.space, *self.layers, *self.layers.values()]
        return (not self.cells and bool(self.layers) and not self.concat
                and all(not set(t) & set(_CHAIN_SEPARATORS) for t in plain))

    def __str__(self) -> str:
        if self.fits_chain_string():
            return self.to_chain_string()
        if self.fits_darts_string():
            return self.to_darts_string()
        if self.fits_nb201_string():
            return self.to_nb201_string()
        # any other space or shape (a plugin's, GDAS-FRC's normal cell alone): the compact JSON,
        # which names the space and reads back to an equal genotype
        return json.dumps(self._plain())


_CHAIN_SEPARATORS = "[](),= \t\n"
_CHAIN_RE = re.compile(r"^Chain\[([^\]]*)\]\((.*)\)$", re.S)


def _layers(layers: Any) -> dict[str, str]:
    """A chain genotype's layers as ``{choice point: op}``, or InputError naming what is wrong."""
    if not isinstance(layers, dict):
        raise InputError("a genotype's 'layers' must map choice points to ops")
    out = {}
    for name, op in layers.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"not a valid genotype: a layer needs a non-empty name, got {name!r}")
        try:
            out[name] = _op_name(op)
        except ValueError as exc:
            raise InputError(f"not a valid genotype: layer '{name}': {exc}") from None
    return out


def parse_chain(text: str) -> Genotype:
    """Parse the chain string ``Chain[space](layer=op, layer=op, ...)``."""
    match = _CHAIN_RE.match(text.strip())
    if not match:
        raise InputError("not a chain genotype string: it must look like "
                         "'Chain[space](stage1.layer0=op, stage1.layer1=op, ...)'")
    layers: dict[str, str] = {}
    for k, item in enumerate(match.group(2).split(",")):
        name, eq, op = (part.strip() for part in item.partition("="))
        if not eq or not name or not op:
            raise InputError(f"chain genotype string: item {k + 1} is {item.strip()!r}, "
                             "expected 'layer=op'")
        if name in layers:
            raise InputError(f"chain genotype string: layer '{name}' is given twice")
        layers[name] = op
    return Genotype({}, space=match.group(1).strip(), layers=layers)


_DARTS_RE = re.compile(r"^\s*Genotype\((.*)\)\s*$", re.S)


def parse_darts(text: str) -> Genotype:
    """Parse the DARTS ``Genotype(normal=..., reduce=...)`` string (list or range concat)."""
    match = _DARTS_RE.match(text)
    if not match:
        raise InputError("not a DARTS genotype string: it must look like 'Genotype(normal=[...], "
                         "normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])'")
    try:
        call = ast.parse(f"f({match.group(1)})", mode="eval").body
        values = {}
        for kw in call.keywords:
            node = kw.value
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "range"):
                span = range(*[int(ast.literal_eval(a)) for a in node.args])
                try:
                    size = len(span)
                except OverflowError:  # more than 2^63 states
                    size = MAX_STATES + 1
                if size > MAX_STATES:
                    raise ValueError(f"{kw.arg} = range() of more than {MAX_STATES} states")
                values[kw.arg] = list(span)
            else:
                values[kw.arg] = ast.literal_eval(node)
    except (SyntaxError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise InputError(f"cannot parse DARTS genotype string: {exc or type(exc).__name__}") from None
    known = {"normal", "normal_concat", "reduce", "reduce_concat"}
    unknown = sorted(set(values) - known)
    if unknown or call.args:
        raise InputError(f"DARTS genotype string: unexpected field {unknown[0] if unknown else 'without a name'}"
                         "; expected normal, normal_concat, reduce, reduce_concat")
    cells, concat = {}, {}
    for kind in ("normal", "reduce"):
        edges = values.get(kind)
        if not isinstance(edges, (list, tuple)) or len(edges) % 2 or not edges:
            raise InputError(f"DARTS genotype string: '{kind}' must be a list of (op, input) "
                             "pairs, two per node")
        try:
            pairs = [(_op_name(op), _index(src)) for op, src in edges]
        except ValueError as exc:
            if "state index" not in str(exc) and "an op must" not in str(exc):
                raise InputError(f"DARTS genotype string: '{kind}' must hold (op, input) "
                                 "pairs") from None
            raise InputError(f"DARTS genotype string: '{kind}': {exc}") from None
        except TypeError:
            raise InputError(f"DARTS genotype string: '{kind}' must hold (op, input) pairs") from None
        cells[kind] = [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
        kind_concat = values.get(f"{kind}_concat", list(range(2, 2 + len(cells[kind]))))
        if not isinstance(kind_concat, (list, tuple)) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in kind_concat):
            raise InputError(f"DARTS genotype string: '{kind}_concat' must be a list of state "
                             "indices, e.g. [2, 3, 4, 5]")
        concat[kind] = kind_concat
    return Genotype(cells, concat, space="darts", inputs={"normal": 2, "reduce": 2})


_NB201_NODE_RE = re.compile(r"^\|([^|~]+~\d+\|)+$")


def parse_nb201(text: str) -> Genotype:
    """Parse a NAS-Bench-201 string ``|op~0|+|op~0|op~1|+...``."""
    text = text.strip()
    groups = text.split("+")
    nodes = []
    for k, group in enumerate(groups):
        if not _NB201_NODE_RE.match(group):
            raise InputError(f"not a NAS-Bench-201 string: node {k + 1} is {group!r}, expected "
                             "'|op~input|op~input|'")
        node = []
        for item in group.strip("|").split("|"):
            op, src = item.rsplit("~", 1)
            node.append((op, int(src)))
        nodes.append(node)
    return Genotype({"cell": nodes}, {}, space="nasbench201", inputs={"cell": 1})


def parse_genotype(text: str) -> Genotype:
    """Read a genotype from a file path, a published name (``DARTS_V2``), a JSON, DARTS, NB201 or
    chain string.

    A path that exists is read as a file, even when a published genotype has the same name.
    """
    stripped = text.strip()
    if stripped.startswith("Genotype("):
        return parse_darts(stripped)
    if stripped.startswith("|"):
        return parse_nb201(stripped)
    if stripped.startswith("Chain["):
        return parse_chain(stripped)
    if stripped.startswith("{"):
        try:
            return Genotype.from_dict(json.loads(stripped))
        except json.JSONDecodeError as exc:
            raise InputError(f"genotype JSON text does not parse: {exc}") from None
        except RecursionError:
            raise InputError("genotype JSON text is nested too deeply to be a genotype") from None
    path = Path(stripped)
    try:
        if path.is_dir() and (path / "genotype.json").is_file():
            path = path / "genotype.json"
        if path.is_file():
            return Genotype.load(path)
    except InputError:
        raise
    except OSError as exc:  # a name too long, a symlink loop, ...
        raise InputError(f"cannot read the genotype {stripped[:60]!r}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte: not a path, maybe a garbled string
        raise InputError(f"the genotype {stripped[:60]!r} holds a NUL byte") from None
    if stripped in GENOTYPES:  # a registered name only: a genotype never names code to import
        found = GENOTYPES.get(stripped)
        if not isinstance(found, Genotype):
            raise InputError(f"genotype '{stripped}' is a {type(found).__name__}, not a nas.Genotype")
        return found
    if path.is_dir():
        raise InputError(f"{path} is a directory without genotype.json (not a search run directory)")
    known = ", ".join(GENOTYPES.names())
    if "/" in stripped or "\\" in stripped or stripped.endswith(".json"):
        raise InputError(f"genotype file not found: {stripped} (and it is not a DARTS / "
                         f"NAS-Bench-201 string, nor a published genotype: {known})")
    close = closest(stripped, GENOTYPES.names())
    hint = f"; did you mean '{close}'?" if close else ""
    raise InputError(f"'{stripped}' is neither a genotype file, a DARTS / NAS-Bench-201 string nor "
                     f"a published genotype{hint} (published: {known})")


def inferred_inputs(nodes: Nodes) -> int:
    """The fewest cell inputs under which every node reads only earlier states (at least 1).

    Node i (0-based) may read the inputs and nodes 0..i-1, states ``0 .. inputs + i - 1``.
    """
    return max([1] + [src - i + 1 for i, node in enumerate(nodes) for _, src in node])


def cell_title(kind: str) -> str:
    """How views name a cell kind: ``normal cell``, and ``cell`` (not ``cell cell``)."""
    return kind if kind.endswith("cell") else f"{kind} cell"


# -- derivation ---------------------------------------------------------------------------------
def edge_inputs(num_inputs: int, num_nodes: int) -> list[tuple[int, int]]:
    """``(node, input)`` of every edge in the DARTS-family order: node by node, inputs ascending."""
    return [(node, src) for node in range(num_nodes) for src in range(num_inputs + node)]


def num_nodes(num_edges: int, num_inputs: int) -> int:
    """How many nodes a DARTS-family cell with ``num_edges`` edges has (ValueError if none fits)."""
    n = 0
    while len(edge_inputs(num_inputs, n)) < num_edges:
        n += 1
    if len(edge_inputs(num_inputs, n)) != num_edges:
        raise ValueError(f"{num_edges} edges do not make a cell with {num_inputs} inputs")
    return n


def derive_cell(weights: Tensor, ops: Sequence[str], num_inputs: int, keep: int | None = 2,
                exclude: Sequence[str] = ("none",), edge_weights: Tensor | None = None) -> Nodes:
    """Derive one cell's nodes from edge weights of shape ``[edges, len(ops)]``.

    With ``keep=k`` (the DARTS rule) each node keeps the k incoming edges whose strongest op
    outside ``exclude`` is strongest, strongest first, each with that op; given
    ``edge_weights`` ``[edges]`` (edge top-k's input logits or probabilities), the k edges
    strongest by those instead. With ``keep=None`` (NAS-Bench-201) every edge keeps its single
    strongest op, ``exclude`` ignored.
    """
    weights = weights.detach().float().cpu()
    nodes_count = num_nodes(weights.shape[0], num_inputs)
    if weights.shape[1] != len(ops):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not fit a cell with "
                         f"{num_inputs} inputs and ops {list(ops)}")
    allowed = torch.tensor([op not in exclude for op in ops]) if keep is not None else \
        torch.ones(len(ops), dtype=torch.bool)
    masked = weights.masked_fill(~allowed, float("-inf"))
    nodes, start = [], 0
    for node in range(nodes_count):
        count = num_inputs + node
        block = masked[start:start + count]
        best_w, best_op = block.max(dim=1)
        if edge_weights is not None:
            best_w = edge_weights.detach().float().cpu()[start:start + count]
        if keep is None:
            chosen = range(count)
        else:
            # stable sort: among equal strengths, the lower input wins, as in DARTS
            chosen = sorted(range(count), key=lambda j: -best_w[j].item())[:keep]
        nodes.append(tuple((ops[int(best_op[j])], j) for j in chosen))
        start += count
    return tuple(nodes)
