"""How well a finished NAS-Bench-201 search's supernet ranks cells, against the table.

    python scripts/oneshot_ranking.py RUN --benchmark TABLE [--data-dir DIR] [--cells N]
                                      [--images N] [--seed S] [--out FILE]
                                      [--split-edge E [--finetune-epochs N] [--finetune-lr LR]]

Every cell of the space (with ``search.budget``: every cell whose network fits it; ``--cells N``:
a random N of those, fixed by ``--seed``) runs through the trained supernet of RUN with its ops
fixed, on the first ``--images`` images of the run's architecture split (no augmentation; batch
statistics, as the search's supernet uses them). Prints Kendall's tau-b between the supernet's
loss order and the table's CIFAR-10 accuracy, the table accuracy of the supernet's best 1, 10
and 100 cells, and where the table's best cells stand in the supernet's order: the ceiling of
any search that trusts this supernet. ``--split-edge E`` measures few-shot supernets instead
(Zhao et al., 2021): for each op of edge E (0-5, in the string's order: 1<-0, 2<-0, 2<-1, 3<-0,
3<-1, 3<-2) a copy of the trained supernet is fine-tuned for ``--finetune-epochs`` on the weight
split with that edge fixed to the op (the other edges sampled as the search's weight steps
sample them), and scores the cells with that op there; the summary adds each group's own tau-b,
best cells and lowest loss. Writes every cell's scores to FILE (default
RUN/oneshot_ranking.json). The table is read here only, after the search, never by it. Bad
input: one line ``oneshot_ranking: error: ...``, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..benchmarks import load_table
from ..budget import fits
from ..config import load_config
from ..data import Batches, load_split, split_indices
from ..errors import InputError, OneLineParser
from ..fewshot import fixed_sampling
from ..genotype import Genotype
from ..runtime import check_output, resume_from
from ..search import COSTS, SearchSetup, build_search, weight_step
from ..supernet import Supernet
from search_spaces.nasbench201 import EDGES, all_cells


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


def edge_ops(genotype: Genotype) -> list[str]:
    """The op of each of the cell's edges, in string order."""
    return [op for node in genotype.cells["cell"] for op, _ in node]


def finetune_with_edge(setup: SearchSetup, edge: int, op: int, epochs: int, lr: float) -> None:
    """Train ``setup.model``'s weights ``epochs`` more on the weight split, ``edge`` fixed to ``op``."""
    s, model = setup.cfg.search, setup.model
    # the search's weight sampling (or its logits, when the weights follow them), that edge fixed
    logits = fixed_sampling(model, setup.weight_logits or
                            {k: v.detach() for k, v in model.arch_logits.items()}, "cell", edge, op)
    opt = torch.optim.SGD(model.weight_parameters(), lr, momentum=s.momentum,
                          nesterov=s.nesterov and s.momentum > 0,
                          weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=min(s.lr_min, lr))
    model.train()
    for epoch in range(epochs):
        setup.w_batches.set_epoch(s.epochs + epoch)  # orders the search did not see
        for x, y in setup.w_batches:
            model.sampling_logits = logits
            weight_step(model, opt, x, y, s.grad_clip, s.amp)
            model.sampling_logits = None
        sched.step()
    model.eval()


def _summary(rows: list[dict]) -> dict:
    """Kendall tau-b, the table accuracy of the lowest-loss cells, and that lowest loss."""
    by_loss = sorted(rows, key=lambda r: r["loss"])
    return {"cells": len(rows),
            "kendall_tau_b": kendall_tau_b([-r["loss"] for r in rows], [r["cifar10"] for r in rows]),
            "top": {str(k): statistics.mean(r["cifar10"] for r in by_loss[:k]) for k in (1, 10, 100)
                    if k <= len(rows)},
            "best_loss": by_loss[0]["loss"], "best_arch": by_loss[0]["arch"]}


def rank_cells(run: Path, table_path: str, data_dir: str | None, cells: int | None, images: int,
               seed: int, split_edge: int | None = None, finetune_epochs: int = 10,
               finetune_lr: float | None = None) -> dict:
    """Score the cells of ``run``'s space with its supernet (or, with ``split_edge``, with one
    fine-tuned copy per op of that edge); the summary and every cell's scores."""
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
    groups: list[int | None] = [None] if split_edge is None else list(range(len(model.ops)))
    trained = copy.deepcopy(model.state_dict()) if split_edge is not None else None
    rows = []
    for group in groups:
        mine = pool
        if group is not None:
            model.load_state_dict(trained)
            finetune_with_edge(setup, split_edge, group, finetune_epochs,
                               cfg.search.lr if finetune_lr is None else finetune_lr)
            mine = [g for g in pool if edge_ops(g)[split_edge] == model.ops[group]]
        for g in tqdm(mine, desc="cells" if group is None else model.ops[group], unit="cell",
                      file=sys.stderr, disable=None):
            with fixed_cell(model, g):
                loss, acc = score(model, batches)
            rows.append({"arch": g.to_nb201_string(), "loss": loss, "acc": acc,
                         "cifar10": table.query(g).accuracy["cifar10"],
                         **({"group": model.ops[group]} if group is not None else {})})
    by_loss = sorted(rows, key=lambda r: r["loss"])
    place = {id(r): i + 1 for i, r in enumerate(by_loss)}
    best = sorted(rows, key=lambda r: -r["cifar10"])[:3]
    summary = _summary(rows)
    split = None if split_edge is None else {
        "edge": split_edge, "finetune_epochs": finetune_epochs,
        "groups": {model.ops[k]: _summary([r for r in rows if r["group"] == model.ops[k]])
                   for k in groups if any(r["group"] == model.ops[k] for r in rows)}}
    return {"run": str(run), "cells": len(rows), "images": sum(len(y) for _, y in batches),
            "budget": dict(budget.limits) if budget is not None else None,
            "kendall_tau_b": summary["kendall_tau_b"], "top": summary["top"],
            "table_best": [{**r, "supernet_place": place[id(r)]} for r in best],
            "split": split, "cells_scored": rows}


def _report(out: dict) -> str:
    lines = [f"{out['cells']} cells scored by the supernet of {out['run']} on {out['images']} images"
             + (f" (within the budget {out['budget']})" if out["budget"] else ""),
             f"Kendall tau-b, supernet loss order against CIFAR-10 table accuracy: "
             f"{out['kendall_tau_b']:.3f}",
             "table accuracy of the supernet's best cells: " + ", ".join(
                 f"top {k} {v:.2f}" for k, v in out["top"].items())]
    if out["split"]:
        lines.insert(1, f"few-shot: one supernet per op of edge {out['split']['edge']}, each "
                        f"fine-tuned {out['split']['finetune_epochs']} epochs with the op fixed there")
        for op, g in out["split"]["groups"].items():
            lines.append(f"  {op}: {g['cells']:,} cells, tau-b {g['kendall_tau_b']:.3f}, lowest loss "
                         f"{g['best_loss']:.4f}, table accuracy of its best cells: " + ", ".join(
                             f"top {k} {v:.2f}" for k, v in g["top"].items()))
    for r in out["table_best"]:
        lines.append(f"table's best {r['cifar10']:.2f} {r['arch']}: supernet place "
                     f"{r['supernet_place']:,} of {out['cells']:,}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score the cells, print the summary, write the JSON."""
    p = OneLineParser(prog="oneshot_ranking", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished (or checkpointed) nasbench201 search run")
    p.add_argument("--benchmark", required=True, help="NAS-Bench-201 table (CSV or NATS-Bench files)")
    p.add_argument("--data-dir", help="directory holding the dataset (default: the run's data.root)")
    p.add_argument("--cells", type=int, help="score a random N of the cells (default: all)")
    p.add_argument("--images", type=int, default=256,
                   help="images of the architecture split per cell (default 256)")
    p.add_argument("--seed", type=int, default=0, help="which random cells --cells takes")
    p.add_argument("--out", type=Path, help="JSON file (default RUN/oneshot_ranking.json)")
    p.add_argument("--split-edge", type=int, choices=range(EDGES), metavar="E",
                   help="few-shot: one fine-tuned supernet per op of edge E (0-5)")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="epochs each few-shot supernet is fine-tuned (default 10)")
    p.add_argument("--finetune-lr", type=float,
                   help="their starting learning rate, cosine to search.lr_min (default search.lr)")
    args = p.parse_args(argv)
    if args.split_edge is None and (args.finetune_epochs != 10 or args.finetune_lr is not None):
        p.error("--finetune-epochs and --finetune-lr need --split-edge")
    if args.finetune_lr is not None and not args.finetune_lr > 0:
        p.error(f"--finetune-lr must be positive, got {args.finetune_lr}")
    for name in ("cells", "images", "finetune_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    try:
        path = check_output(args.out or args.run / "oneshot_ranking.json", "--out", replace=True)
        out = rank_cells(args.run, args.benchmark, args.data_dir, args.cells, args.images, args.seed,
                         args.split_edge, args.finetune_epochs, args.finetune_lr)
    except InputError as exc:
        print(f"oneshot_ranking: error: {exc}", file=sys.stderr)
        return 2
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(_report(out))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
