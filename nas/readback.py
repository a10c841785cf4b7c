"""What a resumed run reads back from its own directory, checked before any work runs.

A run directory holds files this tool wrote, but between the runs anything may have happened to
them (a disk filled, an edit, a copy from elsewhere), so a resume trusts none of them: each file
it will read or append to is checked for its kind (a file, or a directory), and each file whose
content steers the run (``few_shot.json``, ``costs.json``) for its type, keys, names and numbers.
A problem stops the command in one line (``InputError``) that names the file and what to do,
before the run loads data, trains or writes anything. The checkpoint is checked by
``runtime.load_checkpoint`` and ``runtime.resume_from`` (read as data; its tensors against the
model the config builds).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError
from .genotype import Genotype, num_nodes

# what a run directory holds, as the run reads or appends to it: name -> "file" or "dir"
RUN_FILES = {"checkpoint.pt": "file", "config.yaml": "file", "metrics.jsonl": "file",
             "probabilities.jsonl": "file", "genotype.json": "file", "result.json": "file",
             "costs.json": "file", "few_shot.json": "file", "profile.json": "file",
             "genotypes": "dir", "heatmaps": "dir", "steps": "dir", "plots": "dir"}
JSON_FILES = ("costs.json", "few_shot.json")  # read back on resume, each must be JSON
REDO = {"few_shot.json": "delete it to run the few-shot parts again",
        "costs.json": "delete it to measure the costs again"}
START_AGAIN = "move it away and resume, or start the run again in a new --run-dir"


def refuse(path: Path, problem: str) -> InputError:
    """The one-line error for a run file: where, what is wrong, what to do."""
    return InputError(f"cannot resume from {path}: {problem}; "
                      f"{REDO.get(path.name, START_AGAIN)}")


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory whose files are of the wrong kind, or whose JSON does not read."""
    for name, kind in RUN_FILES.items():
        path = run_dir / name
        try:
            if not (path.exists() or path.is_symlink()):
                continue
            wrong = not path.is_dir() if kind == "dir" else not path.is_file()
        except OSError as exc:  # a symlink loop, no permission to look
            raise refuse(path, exc.strerror or str(exc)) from None
        if wrong:
            what = "a broken link" if not path.exists() else "a directory" if path.is_dir() \
                else "not a regular file"
            raise refuse(path, f"it is {what}, not a {'directory' if kind == 'dir' else 'file'}")
    for name in JSON_FILES:
        if (run_dir / name).is_file():
            read_json(run_dir / name)


def read_json(path: Path) -> Any:
    """The JSON value of a run file, or one line saying why it does not read."""
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise refuse(path, exc.strerror or str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise refuse(path, f"it is not JSON ({str(exc).splitlines()[0][:80]})") from None
    except RecursionError:
        raise refuse(path, "it is nested too deeply to be JSON this tool wrote") from None


def number(value: Any, least: float | None = None) -> bool:
    """A finite real number (not a bool), at least ``least`` when given."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and (least is None or value >= least)


def _need(ok: bool, path: Path, problem: str) -> None:
    if not ok:
        raise refuse(path, problem)


def _keys(value: Any, keys: Sequence[str], path: Path, what: str) -> None:
    _need(isinstance(value, dict), path, f"{what} is a {type(value).__name__}, not a mapping")
    missing = [k for k in keys if k not in value]
    _need(not missing, path, f"{what} has no {', '.join(repr(k) for k in missing)}")


def few_shot_state(path: Path, op_names: Mapping[str, Sequence[str]], edges: Mapping[str, int],
                   cell_inputs: int | None, space: str) -> dict[str, Any]:
    """The checked content of a run's ``few_shot.json`` ({} when there is none): the split edge
    exists in the supernet (``op_names`` and ``edges`` per cell kind), every part is one of its
    ops, and every part's cell parses, fits the space and has finite scores."""
    if not path.is_file():
        return {}
    state = read_json(path)
    _keys(state, ("edge", "settings", "parts", "phase_seconds"), path, "its content")
    edge = state["edge"]
    _need(isinstance(edge, list) and len(edge) == 2 and isinstance(edge[0], str)
          and isinstance(edge[1], int) and not isinstance(edge[1], bool), path,
          f"its edge is {str(edge)[:60]}, not [cell kind, edge number]")
    kind, index = edge
    _need(kind in op_names, path, f"its cell kind {kind[:40]!r} is not one of the supernet's "
          f"({', '.join(op_names)})")
    _need(0 <= index < edges[kind], path, f"its edge {index} is not one of the {edges[kind]} "
          f"edges of cell kind '{kind}'")
    _need(isinstance(state["settings"], dict), path, "its settings are not a mapping")
    # wall time, for people: any finite number (a clock set back may make it negative)
    _need(number(state["phase_seconds"]), path,
          f"its phase_seconds is {str(state['phase_seconds'])[:40]!r}, not a number")
    _need(isinstance(state["parts"], dict), path, "its parts are not a mapping of op to result")
    for op, part in state["parts"].items():
        _need(op in op_names[kind], path, f"its part {op[:40]!r} is not an op of cell kind "
              f"'{kind}' ({', '.join(op_names[kind])})")
        _check_part(path, op, part, op_names, edges, cell_inputs, space)
    return state


def _check_part(path: Path, op: str, part: Any, op_names: Mapping[str, Sequence[str]],
                edges: Mapping[str, int], cell_inputs: int | None, space: str) -> None:
    _keys(part, ("genotype", "loss", "acc", "seconds"), path, f"part {op}")
    _need(number(part["seconds"]), path,
          f"part {op}'s seconds is {str(part['seconds'])[:40]!r}, not a number")
    if part["genotype"] is None:  # no cell with this op fitted the budget
        _need(part["loss"] is None and part["acc"] is None, path,
              f"part {op} has scores but no cell")
        return
    _need(number(part["loss"]) and number(part["acc"]) and 0 <= part["acc"] <= 100, path,
          f"part {op}'s scores (loss {part['loss']!r}, accuracy {part['acc']!r}) are not a "
          "finite loss and an accuracy in [0, 100]")
    try:
        genotype = Genotype.from_dict(part["genotype"])
    except InputError as exc:
        raise refuse(path, f"part {op}'s cell does not parse ({exc})") from None
    problem = fit_problem(genotype, op_names, edges, cell_inputs, space)
    _need(problem is None, path, f"part {op}'s cell does not fit the search space: {problem}")


def fit_problem(genotype: Genotype, op_names: Mapping[str, Sequence[str]],
                edges: Mapping[str, int], cell_inputs: int | None, space: str) -> str | None:
    """Why ``genotype`` is not a cell the supernet derives (its kinds, nodes, ops, inputs)."""
    if genotype.space and genotype.space != space:
        return f"it is of the {genotype.space[:40]} space, the run's is {space}"
    if set(genotype.cells) != set(op_names):
        return f"its cell kinds are {sorted(genotype.cells)}, the supernet's {sorted(op_names)}"
    for kind, nodes in genotype.cells.items():
        inputs = cell_inputs or genotype.inputs[kind]  # a plugin's supernet may not declare it
        if cell_inputs and len(nodes) != num_nodes(edges[kind], cell_inputs):
            return f"its {kind} cell has {len(nodes)} nodes, not {num_nodes(edges[kind], cell_inputs)}"
        for i, node in enumerate(nodes):
            for op, src in node:
                if op not in op_names[kind]:
                    return f"op {op[:40]!r} of its {kind} cell is not one of the space's"
                if src >= inputs + i:
                    return f"node {i} of its {kind} cell reads state {src}, which comes later"
    return None


def saved_costs(path: Path) -> dict[str, Any]:
    """A run's ``costs.json``: a mapping whose per-op tables and base costs are numbers >= 0."""
    table = read_json(path)
    _keys(table, ("base", "ops"), path, "its content")
    _need(isinstance(table["base"], dict) and all(number(v, 0) for v in table["base"].values()),
          path, "its base costs are not numbers >= 0")
    _need(isinstance(table["ops"], dict) and all(isinstance(v, dict) for v in table["ops"].values()),
          path, "its op tables are not a mapping of metric to cell kinds")
    for metric, kinds in table["ops"].items():
        for kind, rows in kinds.items():
            _need(isinstance(rows, list) and all(
                isinstance(row, list) and all(number(v, 0) for v in row) for row in rows), path,
                f"its {str(metric)[:20]} table of cell kind {str(kind)[:20]!r} is not rows of "
                "numbers >= 0")
    _need(isinstance(table.get("how", {}), dict), path, "its 'how' is not a mapping")
    return table
