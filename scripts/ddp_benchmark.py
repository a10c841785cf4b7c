#!/usr/bin/env python
"""Throughput of a distributed gdas search: 1 process against N, and what find_unused costs.

It runs gdas search steps (the weight step and the architecture step of ``nas.search``) of the
DARTS supernet on random images, in fresh processes started the way torchrun starts them
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), one row at a time,
the rows interleaved over ``--repeats`` rounds so that a busy machine slows them alike:

  * ``1 process``: the global batch on one process;
  * ``N processes``: the global batch split N ways; the weight step's gradients (only the
    sampled ops have any) averaged in one flat all-reduce, as ``nas search`` does;
  * ``N processes, find_unused``: the same, with the averaging left to DistributedDataParallel
    and ``find_unused_parameters=True``, its own answer to parameters without gradients.

Each process uses ``--threads`` threads (CPU) or one GPU (``--device cuda``, NCCL). Reported:
the median step time, images per second (2 x global batch per step: the weight and the
architecture batch), the scaling efficiency (images/s of N processes / (N x images/s of 1)),
the floats each weight step all-reduces, and whether unsampled weights kept ``grad=None``.

    python scripts/ddp_benchmark.py --out bench-ddp                       # 2 CPU processes
    python scripts/ddp_benchmark.py --device cuda --procs 2 4 8 --C 16 --cells 8 --batch 256 \\
        --image-size 32 --out bench-ddp-gpu
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nas.errors import OneLineParser  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, args: argparse.Namespace, variant: str,
           out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import nas
    import nas.distributed as dist
    from nas.search import arch_step, frozen, weight_step

    dist.init()
    device = dist.local_device(torch.device(args.device))
    torch.manual_seed(0)  # as nas search does; dist.wrap also gives every rank rank 0's logits
    model = nas.build_supernet("darts", 10, "gdas", seed=0,
                               options={"C": args.C, "cells": args.cells}).to(device)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    ignore = [f"arch_logits.{k}" for k in model.arch_logits]
    if variant == "find_unused":
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
        for p in model.arch_parameters():
            torch.distributed.broadcast(p.data, 0)
    else:
        ddp = dist.wrap(model, device, ignore)
        ddp = None if ddp is model else ddp
    b, size = args.batch // world, args.image_size
    gen = torch.Generator().manual_seed(rank)
    xw, xa = (torch.randn(b, 3, size, size, generator=gen).to(device) for _ in range(2))
    yw, ya = (torch.randint(0, 10, (b,), generator=gen).to(device) for _ in range(2))
    model.tau = 1.0
    times, floats, untouched = [], [], []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if variant == "find_unused":
            with frozen(model.arch_parameters()):
                loss = F.cross_entropy(ddp(xw), yw)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
            w_opt.step()
        else:
            weight_step(model, w_opt, xw, yw, 5.0, False, ddp)
        with_grad = [p for p in model.weight_parameters() if p.grad is not None]
        arch_step(model, a_opt, xa, ya, False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        floats.append(sum(p.numel() for p in model.weight_parameters()) if variant == "find_unused"
                      else sum(p.numel() for p in with_grad))
        untouched.append(len(with_grad) < len(model.weight_parameters()))
    dist.check_same(model.arch_parameters(), "architecture logits")
    if dist.is_main():
        t = statistics.median(times[args.warmup:])
        Path(out).write_text(json.dumps({
            "step_s": t, "images_per_s": 2 * args.batch / t, "floats": statistics.mean(floats),
            "weights": sum(p.numel() for p in model.weight_parameters()),
            "unsampled_grad_none": all(untouched)}))
    dist.shutdown()


def run_row(world: int, variant: str, args: argparse.Namespace, out: Path) -> dict:
    ctx = mp.start_processes(worker, (world, free_port(), args, variant, str(out)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + args.timeout
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise SystemExit(f"{world} processes ({variant}) did not finish in {args.timeout} s")
    return json.loads(out.read_text())


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[2], help="process counts besides 1")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, a GPU each)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every row")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default="bench-ddp")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(1, "sampled")] + [(n, v) for n in args.procs for v in ("sampled", "find_unused")]
    results: dict[str, list[dict]] = {f"{n}/{v}": [] for n, v in rows}
    load = [os.getloadavg()[0]]  # other work on the machine slows the rows of more processes most
    for r in range(args.repeats):
        for n, v in rows:
            res = run_row(n, v, args, out / "row.json")
            results[f"{n}/{v}"].append(res)
            load.append(os.getloadavg()[0])
            print(f"round {r + 1}: {n} process(es), {v}: {res['step_s']:.4f} s/step, "
                  f"{res['images_per_s']:.1f} images/s", flush=True)
    base = statistics.median(x["images_per_s"] for x in results["1/sampled"])
    lines = [f"Device: {args.device}, {args.threads} thread(s) per process; DARTS supernet C={args.C}, "
             f"{args.cells} cells, {args.image_size}x{args.image_size}, global batch {args.batch}, "
             f"gdas; median of {args.steps} steps, median over {args.repeats} interleaved rounds; "
             f"1-minute load average {min(load):.1f} to {max(load):.1f} on {os.cpu_count()} cores.",
             "", "| processes | weight gradients averaged by | step (s) | images/s | scaling efficiency "
             "| floats all-reduced per weight step | unsampled weights keep grad=None |",
             "|---:|---|---:|---:|---:|---:|---|"]
    summary = {}
    for n, v in rows:
        rs = results[f"{n}/{v}"]
        step = statistics.median(x["step_s"] for x in rs)
        ips = statistics.median(x["images_per_s"] for x in rs)
        eff = ips / (n * base)
        how = "-" if n == 1 else ("one flat all-reduce of the sampled ops' gradients" if v == "sampled"
                                  else "DDP, find_unused_parameters=True")
        floats = "-" if n == 1 else f"{rs[0]['floats']:,.0f} of {rs[0]['weights']:,}"
        lines.append(f"| {n} | {how} | {step:.4f} | {ips:.1f} | {eff:.2f} | {floats} | "
                     f"{'yes' if rs[0]['unsampled_grad_none'] else 'no'} |")
        summary[f"{n}/{v}"] = {"step_s": step, "images_per_s": ips, "efficiency": eff, "runs": rs}
    text = "\n".join(lines) + "\n"
    (out / "ddp_benchmark.md").write_text(text)
    (out / "ddp_benchmark.json").write_text(json.dumps({"args": vars(args), "load": load,
                                                        "rows": summary},
                                                       indent=2))
    (out / "row.json").unlink(missing_ok=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
