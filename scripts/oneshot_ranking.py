#!/usr/bin/env python
"""How well a finished NAS-Bench-201 search's supernet ranks cells, against the table.

    python scripts/oneshot_ranking.py RUN --benchmark TABLE [--data-dir DIR] [--cells N]
                                      [--images N] [--seed S] [--out FILE]

Every cell of the space (with ``search.budget``: every cell whose network fits it; ``--cells N``:
a random N of those, fixed by ``--seed``) runs through the trained supernet of RUN with its ops
fixed, on the first ``--images`` images of the run's architecture split (no augmentation; batch
statistics, as the search's supernet uses them). Prints Kendall's tau-b between the supernet's
loss order and the table's CIFAR-10 accuracy, the table accuracy of the supernet's best 1, 10
and 100 cells, and where the table's best cells stand in the supernet's order: the ceiling of
any search that trusts this supernet. Writes every cell's scores to FILE (default
RUN/oneshot_ranking.json). The table is read here only, after the search, never by it. Bad
input: one line ``oneshot_ranking: error: ...``, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nas.benchmarks import load_table  # noqa: E402
from nas.budget import fits  # noqa: E402
from nas.config import load_config  # noqa: E402
from nas.data import Batches, load_split, split_indices  # noqa: E402
from nas.errors import InputError  # noqa: E402
from nas.genotype import Genotype  # noqa: E402
from nas.runtime import resume_from  # noqa: E402
from nas.search import COSTS, build_search  # noqa: E402
from nas.supernet import Supernet  # noqa: E402
from search_spaces.nasbench201 import all_cells  # noqa: E402


@contextlib.contextmanager
def fixed_cell(model: Supernet, genotype: Genotype) -> Iterator[None]:
    """Run ``model`` (in eval mode: the argmax op of every edge) as ``genotype``'s cell."""
    logits = model.arch_logits["cell"]
    saved = logits.detach().clone()
    one_hot = torch.zeros_like(saved)
    for e, (op, _) in enumerate(edge for node in genotype.cells["cell"] for edge in node):
        one_hot[e, model.ops.index(op)] = 1.0
    with torch.no_grad():
        logits.copy_(one_hot)
    try:
        yield
    finally:
        with torch.no_grad():
            logits.copy_(saved)


def score(model: Supernet, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of the model as it is over ``batches``."""
    loss = correct = count = 0.0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            loss += F.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
    return loss / count, 100.0 * correct / count


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count in neither direction)."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    concordant = pairs_x = pairs_y = 0.0
    for start in range(0, len(x), 1024):  # rows in chunks: n^2 pairs without an n^2 matrix
        sx = torch.sign(x[start:start + 1024, None] - x[None, :])
        sy = torch.sign(y[start:start + 1024, None] - y[None, :])
        concordant += (sx * sy).sum().item()
        pairs_x += sx.abs().sum().item()
        pairs_y += sy.abs().sum().item()
    return concordant / (pairs_x * pairs_y) ** 0.5 if pairs_x and pairs_y else float("nan")


def rank_cells(run: Path, table_path: str, data_dir: str | None, cells: int | None, images: int,
               seed: int) -> dict:
    """Score the cells of ``run``'s space with its supernet; the summary and every cell's scores."""
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run} is not a search run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml", [f"data.root={data_dir}"] if data_dir else [])
    if cfg.space != "nasbench201":
        raise InputError(f"{run} searched the {cfg.space} space; the table scores nasbench201 only")
    table = load_table(table_path)
    setup = build_search(cfg, run / COSTS)
    resume_from(run, "search", setup.objects)
    model = setup.model.eval()
    data = load_split(cfg.data, train=True)
    _, a_idx = split_indices(len(data), cfg.data.split, cfg.seed)
    batches = list(Batches(data.subset(a_idx[:images]), cfg.search.batch_size, train=False,
                           device=setup.device))
    budget = setup.budget
    pool = [g for g in all_cells(model.ops)
            if budget is None or fits(budget.table.of(g), budget.limits)]
    if cells is not None and cells < len(pool):
        pool = random.Random(seed).sample(pool, cells)
    rows = []
    for g in tqdm(pool, desc="cells", unit="cell", file=sys.stderr, disable=None):
        with fixed_cell(model, g):
            loss, acc = score(model, batches)
        rows.append({"arch": g.to_nb201_string(), "loss": loss, "acc": acc,
                     "cifar10": table.query(g).accuracy["cifar10"]})
    by_loss = sorted(rows, key=lambda r: r["loss"])
    place = {id(r): i + 1 for i, r in enumerate(by_loss)}
    best = sorted(rows, key=lambda r: -r["cifar10"])[:3]
    return {"run": str(run), "cells": len(rows), "images": sum(len(y) for _, y in batches),
            "budget": dict(budget.limits) if budget is not None else None,
            "kendall_tau_b": kendall_tau_b([-r["loss"] for r in rows], [r["cifar10"] for r in rows]),
            "top": {str(k): statistics.mean(r["cifar10"] for r in by_loss[:k]) for k in (1, 10, 100)
                    if k <= len(rows)},
            "table_best": [{**r, "supernet_place": place[id(r)]} for r in best],
            "cells_scored": rows}


def _report(out: dict) -> str:
    lines = [f"{out['cells']} cells scored by the supernet of {out['run']} on {out['images']} images"
             + (f" (within the budget {out['budget']})" if out["budget"] else ""),
             f"Kendall tau-b, supernet loss order against CIFAR-10 table accuracy: "
             f"{out['kendall_tau_b']:.3f}",
             "table accuracy of the supernet's best cells: " + ", ".join(
                 f"top {k} {v:.2f}" for k, v in out["top"].items())]
    for r in out["table_best"]:
        lines.append(f"table's best {r['cifar10']:.2f} {r['arch']}: supernet place "
                     f"{r['supernet_place']:,} of {out['cells']:,}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"oneshot_ranking: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score the cells, print the summary, write the JSON."""
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished (or checkpointed) nasbench201 search run")
    p.add_argument("--benchmark", required=True, help="NAS-Bench-201 table (CSV or NATS-Bench files)")
    p.add_argument("--data-dir", help="directory holding the dataset (default: the run's data.root)")
    p.add_argument("--cells", type=int, help="score a random N of the cells (default: all)")
    p.add_argument("--images", type=int, default=256,
                   help="images of the architecture split per cell (default 256)")
    p.add_argument("--seed", type=int, default=0, help="which random cells --cells takes")
    p.add_argument("--out", type=Path, help="JSON file (default RUN/oneshot_ranking.json)")
    args = p.parse_args(argv)
    for name in ("cells", "images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    try:
        out = rank_cells(args.run, args.benchmark, args.data_dir, args.cells, args.images, args.seed)
    except InputError as exc:
        print(f"oneshot_ranking: error: {exc}", file=sys.stderr)
        return 2
    path = args.out or args.run / "oneshot_ranking.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(_report(out))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
