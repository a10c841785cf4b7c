#!/usr/bin/env python
"""What a search step costs, per sampling mode, against the sampled subnetwork's own cost.

By default, for the DARTS space (C=16, 8 cells) and NAS-Bench-201 (C=16, 5 cells per stage),
batch 64, 32x32 images, on the device it finds (or --device): the median time, peak memory and
images per second of a search step in each sampling mode, with each estimator, done as the GDAS
reference does it, and of its lower limit, the sampled subnetwork's own steps (the list is in
``nas.experiments.step_cost``'s docstring). Each row runs in a fresh process. Writes
``benchmark.json`` and ``benchmark.md``.

``--interleave`` instead times, in one process and in turn, the lower limit, a gdas step and a
gdas step done as the reference code does it, on the GDAS configurations (NAS-Bench-201: C=16,
5 cells per stage; DARTS space: C=16, 6 cells); ``--reference PATH`` replaces the last by the
GDAS reference code itself (``TinyNetworkGDAS`` / ``NASNetworkGDAS``), imported at run time
from the user's AutoDL-Projects checkout at PATH (nothing of it is part of this project) and
run as written (float32, contiguous; ``--amp`` and ``--layout`` are ours). Every
row runs the same few sampled subnetworks in turn on the same batches; ratios are taken between
medians of the same run. Writes ``interleaved.json`` and ``interleaved.md``
(``nas.experiments.reference``).

``--contention`` instead times the README's first command, ``nas search --config
configs/quick.yaml``, alone and beside N busy processes (``--busy``), with each thread setting
(``--settings``: ``default``, a count, or ``N:spin`` for N threads whose idle OpenMP threads spin
as libgomp's default lets them, i.e. as before ``nas`` set a wait policy); every run is a fresh
process. Besides the wall time it records the thread count each run used and the CPUs that other
processes (neither the search nor the busy ones) kept busy meanwhile. Writes
``contention.json`` and ``contention.md`` (``nas.experiments.contention``).

    python scripts/benchmark.py --out bench            # everything (CPU: about 20 minutes)
    python scripts/benchmark.py --space darts --modes gdas softmax --steps 3
    python scripts/benchmark.py --reference ~/AutoDL-Projects --rounds 15
    python scripts/benchmark.py --contention --busy 0 2 --data-dir ../shared/data
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from nas.errors import InputError, OneLineParser
from nas.experiments import contention, reference, step_cost
from nas.runtime import check_output
from nas.runtime import channels_last, resolve_device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the three tools."""
    parser = OneLineParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    parser.add_argument("--space", nargs="+", default=list(step_cost.SPACES),
                        choices=list(step_cost.SPACES))
    parser.add_argument("--modes", nargs="+", default=list(step_cost.ROWS), choices=step_cost.ROWS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="fewest measured steps per row")
    parser.add_argument("--min-time", type=float, default=30.0,
                        help="measure more steps (up to 100) until this many seconds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--layout", choices=("auto", "channels-last", "contiguous"), default="auto",
                        help="memory format of this project's networks and inputs (auto: as nas "
                             "search does, channels-last on a CPU)")
    parser.add_argument("--out", default="bench", help="directory for benchmark.json/.md")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (torch.set_num_threads; 0: torch's default)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator as it is (CPU; nas search keeps freed "
                             "memory)")
    parser.add_argument("--interleave", action="store_true",
                        help="lower limit, gdas and the reference in turn in one process")
    parser.add_argument("--reference", metavar="PATH",
                        help="an AutoDL-Projects checkout: compare with its GDAS code "
                             "(implies --interleave)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured rounds (--interleave: 10, --contention: 1)")
    parser.add_argument("--samples", type=int, default=3,
                        help="--interleave: subnetworks per round, the same for every row")
    parser.add_argument("--contention", action="store_true",
                        help="time the quick search alone and beside busy processes, per thread "
                             "setting")
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 2],
                        help="--contention: numbers of busy processes beside the search")
    parser.add_argument("--settings", nargs="+", default=["default", "1", "2", "2:spin"],
                        help="--contention: default, a thread count N, or N:spin")
    parser.add_argument("--config", default="configs/quick.yaml", help="--contention: the search")
    parser.add_argument("--data-dir", default="data", help="--contention: the data directory")
    parser.add_argument("--set", nargs="+", default=["search.steps_per_epoch=10"],
                        metavar="KEY=VALUE", help="--contention: overrides of the search")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="--contention: stop a run after this many seconds")
    args = parser.parse_args(argv)
    try:
        check_output(args.out, "--out", directory=True)  # before the measurements, not after
    except InputError as exc:
        parser.error(str(exc))
    return args


def write(out: str, name: str, found: list[dict], text: str) -> int:
    """NAME.json and NAME.md into ``out``; the table printed."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(found, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool the flags choose; the exit status."""
    args = parse_args(argv)
    if args.contention:
        bad = [s for s in args.settings if s != "default" and not (
            s.partition(":")[0].isdigit() and s.partition(":")[2] in ("", "spin"))]
        if bad or any(b < 0 for b in args.busy):
            print(f"benchmark.py: error: --settings takes default, N or N:spin and --busy counts "
                  f">= 0, got {' '.join(bad) or args.busy}", file=sys.stderr)
            return 2
        found = contention.contention(args.busy, args.settings, args.config, args.data_dir,
                                      args.set, args.timeout, args.rounds or 1)
        command = f"nas search --config {args.config} --set {' '.join(args.set)}"
        return write(args.out, "contention", found, contention.contention_table(found, command))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    layout = {"auto": "auto", "channels-last": True, "contiguous": False}[args.layout]
    try:
        cl = channels_last(layout, resolve_device(args.device))
    except InputError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    if args.reference and not (Path(args.reference).expanduser() / reference.REFERENCE_FILE).is_file():
        print(f"benchmark.py: error: --reference {args.reference}: no {reference.REFERENCE_FILE} "
              "there; give the root of an AutoDL-Projects checkout", file=sys.stderr)
        return 2
    if args.interleave or args.reference:
        found = [reference.interleaved(space, args.reference, args.batch, args.rounds or 10,
                                       args.samples, args.device, args.amp, cl, args.system_malloc)
                 for space in args.space]
        return write(args.out, "interleaved", found, reference.interleaved_table(found))
    try:
        found = step_cost.measure_rows(args.space, args.modes, {
            "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
            "device_name": args.device, "amp": args.amp, "channels_last": cl,
            "min_time": args.min_time, "system_malloc": args.system_malloc,
            "threads": args.threads})
    except RuntimeError as exc:  # a row's process failed: its stderr
        print(exc, file=sys.stderr)
        return 1
    return write(args.out, "benchmark", found, step_cost.table(found))


if __name__ == "__main__":
    sys.exit(main())
