"""The ``nas`` command: search, train, run, evaluate, list, plot, genotype show|plot.

A user's mistake (bad config, flag, data, checkpoint) prints one line ``nas <verb>: error: ...``
and exits with status 2; Ctrl-C exits with 130 and says how to resume, SIGTERM (what a
scheduler or ``kill`` sends) likewise with 143.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from .errors import Diverged, InputError, OneLineParser, first_line
from .experiments.options import add_study_arguments


_Parser = OneLineParser  # usage errors on one line


def _add_run_options(p: argparse.ArgumentParser, config_required: bool) -> None:
    p.add_argument("--config", required=False, metavar="FILE",
                   help="YAML config" + (" (required unless --resume)" if config_required else
                                         " (without one: the DARTS retraining recipe, for a darts "
                                         "genotype; another space's needs one, or --set "
                                         "train.epochs=N)"))
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                   help="override config values, e.g. --set search.epochs=50 supernet.C=8")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset (data.root)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="where to write the run (default: runs/<config name>-<date>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--force", action="store_true",
                   help="overwrite --run-dir if it already exists; with --resume, start again a "
                        "run whose checkpoint.pt is lost")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, help="random seed (config key seed)")
    _add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    _add_plugin_option(p)


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (config key threads; default: the CPUs this process may "
                        "use that other work leaves free)")


def _add_plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE:ATTR",
                   help="trust and import this plugin reference (module:attr or file.py:attr) "
                        "when a saved config, genotype or checkpoint names it; a --config file's "
                        "references need no --plugin")


def _trust_plugins(args: argparse.Namespace) -> None:
    """Import every --plugin reference (so a bad one fails first) and trust it."""
    from .registry import is_spec, load_object, trust
    for spec in getattr(args, "plugin", []):
        if not is_spec(spec):
            raise InputError(f"--plugin {spec}: expected package.module:attr or path/file.py:attr")
        load_object(trust(spec))


GENOTYPE_HELP = ("genotype.json, a search run directory, a published genotype's name (DARTS_V2; "
                 "see nas list), or a genotype as text: DARTS / NAS-Bench-201 string or JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nas`` command."""
    parser = _Parser(prog="nas", description="Differentiable architecture search with hard "
                     "Gumbel-softmax sampling (GDAS, DARTS, SNAS).")
    parser.add_argument("--version", action="version", version=f"gumbel-nas {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    p = verbs.add_parser("search", help="search an architecture; writes genotype.json")
    _add_run_options(p, True)
    p.add_argument("--benchmark", metavar="TABLE",
                   help="NAS-Bench-201 table (CSV or NATS-Bench files): log the derived cell's "
                        "accuracy every epoch (config key search.benchmark)")

    p = verbs.add_parser("train", help="retrain a genotype from scratch; writes result.json",
                         usage="nas train --genotype FILE|NAME|STRING [--config FILE] [options]")
    p.add_argument("--genotype", metavar="FILE|NAME|STRING",
                   help=f"required unless --resume: {GENOTYPE_HELP}")
    _add_run_options(p, False)

    p = verbs.add_parser("run", help="search, then retrain the genotype found (two subdirectories)")
    _add_run_options(p, True)

    p = verbs.add_parser("evaluate", help="test accuracy of a trained network")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="checkpoint.pt (or the run directory) of nas train")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory holding the test data now (default: the run's data.root)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="evaluation batch size (default: the run's train.eval_batch_size)")
    _add_threads_option(p)
    _add_plugin_option(p)

    p = verbs.add_parser("list", help="registered search spaces, ops, schedules, datasets and "
                         "published genotypes")
    p.add_argument("--space", action="append", default=[], metavar="MODULE:ATTR",
                   help="also load a search space from a module path, to check it is found")

    p = verbs.add_parser("plot", help="draw finished runs: each edge's op probabilities over the "
                         "epochs, and the runs' loss, entropy and accuracy curves side by side")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (search, train or run)")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: RUN/plots for "
                   "one run, ./plots for several)")

    p = verbs.add_parser("genotype", help="show or plot a genotype")
    gverbs = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    gverbs.required = True
    g = gverbs.add_parser("show", help="print a genotype in its string forms")
    g.add_argument("genotype", metavar="FILE|NAME|STRING", help=GENOTYPE_HELP)
    g.add_argument("--benchmark", metavar="TABLE",
                   help="NAS-Bench-201 table (CSV or NATS-Bench files): print the cell's "
                        "accuracies and rank")
    g.add_argument("--cost", action="store_true",
                   help="print the parameters and multiply-adds of the network built from the "
                        "genotype (the space's default network options unless --config/--set)")
    g.add_argument("--config", metavar="FILE", help="YAML config whose network: options (and "
                   "search.budget.image_size or data.image_size) the cost is counted with; "
                   "implies --cost")
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                   help="override config values, e.g. --set network.C=16; implies --cost")
    g = gverbs.add_parser("plot", help="write each cell as Graphviz DOT and PNG")
    g.add_argument("genotype", metavar="FILE|NAME|STRING", help=GENOTYPE_HELP)
    g.add_argument("--out", metavar="DIR", help="output directory (default: beside the file, "
                   "or the current directory)")
    _add_deploy_verbs(verbs)
    _add_latency_verb(verbs)
    add_study_arguments(verbs.add_parser(
        "study", help="search methods x seeds on NAS-Bench-201, scored by the table"))
    for name, text in DESCRIPTIONS.items():  # what `nas VERB --help` says above the options
        verbs.choices[name].description = text
    return parser


def _add_deploy_verbs(verbs) -> None:
    """``nas export`` and ``nas profile``."""
    p = verbs.add_parser(
        "export", help="write a trained network as ONNX, TorchScript or a torch.export program, "
        "checked against PyTorch",
        description="Write the network of a nas train run in eval mode (auxiliary head and drop "
        "path removed) as one file that runs without gumbel-nas: ONNX, TorchScript or a "
        "torch.export program, with a dynamic batch dimension. The file is checked in a fresh "
        "Python process that cannot import gumbel-nas: a fixed batch must give logits within "
        "--tolerance of PyTorch's, else nothing is written.")
    p.add_argument("source", metavar="RUN|CHECKPOINT",
                   help="a nas train run directory (or a nas run directory) or its checkpoint.pt")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported"),
                   help="onnx (opset 18, needs the export extra), torchscript (traced) or "
                        "exported (torch.export, .pt2)")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: model.onnx, "
                   "model.pt or model.pt2 beside the checkpoint); an existing file is refused")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="images in the fixed check batch (default 8); the file takes any batch")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="image size the file is traced and checked at (default: the run's "
                        "data.image_size)")
    p.add_argument("--tolerance", type=float, default=1e-3, metavar="T",
                   help="largest absolute difference of a logit allowed between the file and "
                        "PyTorch (default 1e-3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_plugin_option(p)

    p = verbs.add_parser(
        "profile", help="parameters, multiply-adds, latency and memory of a genotype's network, "
        "in total and per cell",
        description="Measure the network that network: builds from a genotype: parameters "
        "(auxiliary head left out), multiply-adds (torch.utils.flop_counter), latency (median of "
        "timed runs after warm-up, at batch 1 and --batch, threads stated) and peak activation "
        "memory, in total and per cell; a table, or JSON with --json.")
    p.add_argument("target", metavar="GENOTYPE|RUN", help=GENOTYPE_HELP + ", or a run directory "
                   "(its genotype and saved config)")
    p.add_argument("--config", metavar="FILE", help="YAML config whose network: options and "
                   "data.image_size build the network (default: the run's, else the defaults)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                   help="override config values, e.g. --set network.C=16")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the config's device)")
    p.add_argument("--batch", type=int, default=16, metavar="N",
                   help="the larger batch latency and memory are measured at, beside 1 "
                        "(default 16)")
    p.add_argument("--image-size", type=int, metavar="S", help="default: data.image_size")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (torch.set_num_threads, and onnxruntime's intra-op threads; "
                        "default: torch's choice)")
    p.add_argument("--runs", type=int, default=20, metavar="N",
                   help="timed runs per measurement at most (default 20; fewer, at least 3, "
                        "when a forward takes long)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: also time the network exported to ONNX in onnxruntime "
                        "(needs the export extra); TARGET may then be an ONNX file (nas export's "
                        "model.onnx), timed alone")
    p.add_argument("--latency-table", metavar="FILE",
                   help="a nas latency-table file: print the latency it predicts for the network "
                        "beside the measured one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_plugin_option(p)


def _add_latency_verb(verbs) -> None:
    """``nas latency-table``."""
    p = verbs.add_parser(
        "latency-table", help="measure the latency of every (choice point, op) of a config's "
        "network in a runtime on this machine; writes a table for search.budget.latency_table",
        description="Time every op at every choice point of the network that the config's "
        "network: options build (and the network's fixed parts), in torch or onnxruntime on "
        "the machine this runs on, then K random whole networks to fit a correction of the "
        "per-op sum. Run it on the target device; search anywhere with search.budget."
        "latency_table: FILE. Needs gumbel-nas and the runtime only, no data.")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="YAML config: its space, supernet: and network: options and image size "
                        "(search.budget.image_size, else data.image_size)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                   help="override config values, e.g. --set network.C=16")
    p.add_argument("--runtime", required=True, choices=("torch", "onnxruntime"),
                   help="torch (eager) or onnxruntime (needs the export extra)")
    p.add_argument("--out", required=True, metavar="FILE", help="the table (JSON) to write")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="images per forward (default 1)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="intra-op threads of the runtime (default 1)")
    p.add_argument("--runs", type=int, default=30, metavar="N",
                   help="timed runs per measurement, the median kept (default 30)")
    p.add_argument("--networks", type=int, default=30, metavar="K",
                   help="random whole networks the corrections are fitted on (default 30; a "
                        "scale per op needs 2 per op and group; 0: none)")
    p.add_argument("--classes", type=int, metavar="N",
                   help="classes of the network's head (default: the dataset's, else 10)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall (default: a device that runs nothing else) or cpu: the thread's "
                        "CPU time, with --threads 1, on a machine other work shares")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_plugin_option(p)


DESCRIPTIONS = {
    "search": "Search an architecture: the config's space, sampling mode and schedules. Writes a "
              "run directory (default runs/<config name>-<date>-<time>) with genotype.json, "
              "checkpoint.pt, metrics.jsonl, probabilities.jsonl, genotypes/, heatmaps/ and "
              "TensorBoard events.",
    "train": "Retrain a genotype from scratch with the config's train: and network: sections; "
             "without --config, the DARTS recipe (600 epochs; the first line says so). --genotype "
             "takes a genotype.json, a search run directory (its genotype.json), a published "
             "genotype's name (nas list) or a DARTS / NAS-Bench-201 string. Writes checkpoint.pt, "
             "metrics.jsonl, result.json and TensorBoard events.",
    "run": "Search, then retrain the genotype found, with one config: writes RUN/search/ (what "
           "nas search writes) and RUN/train/ (what nas train writes).",
    "evaluate": "Print the test accuracy of a network trained by nas train, from its checkpoint.pt "
                "or its run directory, on the test split of the config saved in the checkpoint "
                "(--data-dir where the data lives now).",
    "list": "List the registered search spaces, ops, temperature schedules, datasets and "
            "published genotypes, each with where it came from (built-in, entry point, file).",
    "plot": "Draw finished runs: for each search, every edge's op probabilities over the epochs "
            "(from probabilities.jsonl); for all runs, the loss, entropy and accuracy curves "
            "side by side (from metrics.jsonl).",
    "genotype": "Show a genotype node by node (nas genotype show) or draw its cells "
                "(nas genotype plot).",
    "study": "Run a study (configs/studies/*.yaml): each method's search for each seed in a "
             "process of its own, scored by the NAS-Bench-201 table beside the no-training and "
             "random-search baselines; writes OUT/study.json and OUT/study.md (default OUT: "
             "runs/<study name>). The same command again continues it: finished runs are kept, "
             "interrupted ones resumed. Exit status 1 when a run failed.",
}


def _version() -> str:
    from . import __version__
    return __version__


# -- verbs --------------------------------------------------------------------------------------
def _config(args: argparse.Namespace, verb: str, saved_config: str = "config.yaml"):
    """The run's config and directory: a new one, or the saved one of --resume.

    Nothing is created here: the verbs make the directory once their setup succeeded.
    """
    from .config import build_config, config_specs, load_config, read_yaml
    from .registry import trust
    from .runtime import check_run_dir, default_run_dir, path_problem, resolve_device

    if args.resume:
        if args.config or args.set or args.seed is not None or args.run_dir:
            raise InputError("--resume continues a run with its saved config: drop --config, "
                             "--set, --seed and --run-dir")
        run_dir = Path(args.resume)
        saved = run_dir / saved_config
        problem = path_problem(run_dir)
        if problem:
            raise InputError(f"cannot resume {str(run_dir)!r}: {problem}")
        try:
            found = saved.is_file()
        except OSError as exc:  # a symlink loop, no permission to look
            raise InputError(f"cannot resume {run_dir}: {exc.strerror or exc}") from None
        if not found:
            raise InputError(f"cannot resume: {saved} does not exist")
        cfg = build_config(read_yaml(saved))
    else:
        if not args.config and verb != "train":
            raise InputError("the following arguments are required: --config")
        seed = [] if args.seed is None else [f"seed={args.seed}"]  # range-checked like --set
        cfg = load_config(args.config, [*args.set, *seed])
        for spec in config_specs(cfg):  # named by the user: --config and --set may import code
            trust(spec)
        name = cfg.name or verb
        name = f"{name}-train" if verb == "train" and name != "train" else name
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(name)
        check_run_dir(run_dir, force=args.force)
    if args.data_dir:
        cfg.data.root = args.data_dir
    if args.device:
        cfg.device = args.device
    if args.threads is not None:
        cfg.threads = _threads(args.threads)
    resolve_device(cfg.device)
    args.chosen_run_dir = run_dir  # for the resume hint after Ctrl-C
    return cfg, run_dir


def _threads(n: int) -> int:
    from .config import MAX_THREADS, check_count
    return check_count("--threads", n, 1, MAX_THREADS)


def _print_search(result) -> None:
    from .distributed import is_main
    if not is_main():  # every rank has the result; one prints it
        return
    print(f"genotype: {result.genotype}")
    print(f"genotype file: {result.run_dir / 'genotype.json'}")
    if result.cost is not None:
        from .budget import describe
        print(f"cost of the network: {describe(result.cost, result.budget)}")
        if "latency_ms" in result.budget:
            from .cost import format_cost
            print(f"predicted latency: {format_cost('latency_ms', result.cost['latency_ms'])} "
                  f"(budget {format_cost('latency_ms', result.budget['latency_ms'])}), by "
                  f"{result.cost_how['latency_ms']}")
    if result.benchmark is not None:
        print(result.benchmark.summary())
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}")


def _print_train(result) -> None:
    from .distributed import is_main
    if not is_main():  # every rank has the result; one prints it
        return
    print(f"test accuracy: {result.test_acc:.2f}% ({result.params:,} parameters, "
          f"{result.macs / 1e6:.1f}M multiply-adds)")
    print(f"result file: {result.run_dir / 'result.json'}")
    if (result.run_dir / "profile.json").is_file():
        print(f"profile (parameters, multiply-adds, latency, memory per cell): "
              f"{result.run_dir / 'profile.json'}")
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}")


def cmd_search(args: argparse.Namespace) -> int:
    from .search import search
    cfg, run_dir = _config(args, "search")
    if args.benchmark:
        cfg.search.benchmark = args.benchmark
    _print_search(search(cfg, run_dir, resume=bool(args.resume), force=args.force,
                         quiet=args.quiet))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .genotype import Genotype, parse_genotype
    from .train import train

    if args.resume:
        if args.genotype:
            raise InputError("--resume continues a run with its saved genotype: drop --genotype")
        cfg, run_dir = _config(args, "train")
        genotype = Genotype.load(run_dir / "genotype.json")
    else:
        if not args.genotype:
            raise InputError("the following arguments are required: --genotype "
                             "(see nas train --help)")
        genotype = parse_genotype(args.genotype)  # parse first: a bad genotype creates nothing
        cfg, run_dir = _config(args, "train")
        if not args.config:  # a 600-epoch run must not start unannounced, nor on another space
            from .train import recipe_line, space_of
            epochs_set = any(item.partition("=")[0].strip() == "train.epochs" for item in args.set)
            line = recipe_line(cfg, space_of(cfg, genotype), epochs_set)
            if not args.quiet:
                print(line, flush=True)
    _print_train(train(cfg, genotype, run_dir, resume=bool(args.resume), force=args.force,
                       quiet=args.quiet))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .genotype import Genotype
    from .runtime import CHECKPOINT, check_restart, load_checkpoint
    from .search import search
    from .train import check_retraining, train

    cfg, run_dir = _config(args, "run", saved_config="search/config.yaml")
    search_dir, train_dir = run_dir / "search", run_dir / "train"
    check_retraining(cfg)  # network: and train: fail before the search, not after it
    resume_search = bool(args.resume) and (search_dir / CHECKPOINT).is_file()
    if args.resume:  # a lost checkpoint beside finished epochs is refused before anything runs
        for sub in (search_dir, train_dir):
            if sub.is_dir() and not (sub / CHECKPOINT).is_file():
                check_restart(sub, args.force)
    done = (resume_search and (search_dir / "genotype.json").is_file()
            and load_checkpoint(search_dir / CHECKPOINT, "search")["epoch"] >= cfg.search.epochs)
    if done:
        genotype = Genotype.load(search_dir / "genotype.json")
    else:
        result = search(cfg, search_dir, resume=resume_search,
                        force=not resume_search and (args.force or bool(args.resume)),
                        quiet=args.quiet)
        _print_search(result)
        genotype = result.genotype
    resume_train = bool(args.resume) and (train_dir / CHECKPOINT).is_file()
    _print_train(train(cfg, genotype, train_dir, resume=resume_train, force=not resume_train,
                       quiet=args.quiet))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import MAX_BATCH, check_count
    from .train import evaluate_checkpoint
    check_count("--batch-size", args.batch_size, 1, MAX_BATCH, nullable=True)
    threads = None if args.threads is None else _threads(args.threads)
    r = evaluate_checkpoint(args.checkpoint, data_root=args.data_dir, device=args.device,
                            batch_size=args.batch_size, threads=threads)
    print(f"test accuracy: {r['test_acc']:.2f}% (loss {r['test_loss']:.4f}) on {r['images']} "
          f"images, after {r['epoch']} epochs, {r['params']:,} parameters")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import data, ops, schedules  # noqa: F401  (their built-ins register on import)
    from .registry import GENOTYPES, REGISTRIES, SEARCH_SPACES, trust
    from .spaces import get_space

    for spec in args.space:
        get_space(trust(spec))
    for title, registry in REGISTRIES.items():
        print(f"{title}:")
        entries = registry.entries()
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            if e.error:
                detail = f"FAILED TO LOAD: {e.error}"
            elif registry is SEARCH_SPACES and getattr(e.obj, "description", ""):
                detail = e.obj.description
            elif registry is GENOTYPES:
                detail = f"{e.obj.space or '?'} space" + (f"; {e.obj.source}" if e.obj.source else "")
            else:
                detail = ""
            print(f"  {e.name:<{width}}  {e.source}" + (f"  - {detail}" if detail else ""))
    return 0


def cmd_genotype(args: argparse.Namespace) -> int:
    from . import plot
    from .genotype import cell_title, parse_genotype
    from .registry import GENOTYPES

    genotype = parse_genotype(args.genotype)
    for kind in genotype.cells:  # every input a node takes exists: checked before any output
        plot.cell_states(genotype, kind)
    if args.action == "show":
        result = None
        if args.benchmark:
            from .benchmarks import load_table
            result = load_table(args.benchmark).query(genotype)
        cost = _genotype_cost(genotype, args.config, args.set) \
            if args.cost or args.config or args.set else None  # fails before anything is printed
        print(genotype)
        for kind, nodes in genotype.cells.items():
            states, num_inputs = plot.cell_states(genotype, kind)
            inputs = ", ".join(plot.state_label(i, num_inputs) for i in range(num_inputs))
            print(f"{cell_title(kind)} (states {inputs}, then the nodes):")
            for i, node in enumerate(nodes):
                edges = ", ".join(f"{op}({states[src]})" for op, src in node)
                print(f"  node {states[num_inputs + i]} = {edges}")
            if genotype.concat.get(kind):
                print(f"  output = concat({', '.join(states[i] for i in genotype.concat[kind])})")
        if genotype.layers:
            print(f"chain of {len(genotype.layers)} layers (input first):")
            for name, op in genotype.layers.items():
                print(f"  {name} = {op}")
        if result is not None:
            print(result.summary())
            if result.class_size > 1:
                print(f"isomorphic to {result.class_size - 1} other cell(s) of the table; class "
                      f"mean cifar10 {result.class_accuracy['cifar10']:.2f}")
        if cost is not None:
            print(cost)
        return 0
    source = Path(args.genotype)
    is_file, is_dir = _exists_as(source, "file"), _exists_as(source, "dir")
    out = Path(args.out) if args.out else source.parent if is_file else source if is_dir \
        else Path(".")
    stem = source.stem if is_file else args.genotype if args.genotype in GENOTYPES else "genotype"
    made = plot.output_dir(out, "--out")
    try:
        for kind in genotype.cells:
            dot_path, png_path = out / f"{stem}_{kind}.dot", out / f"{stem}_{kind}.png"
            dot_path.write_text(plot.to_dot(genotype, kind))
            how = plot.save_cell_png(genotype, kind, png_path)
            print(f"{cell_title(kind)}: {dot_path} and {png_path} (drawn with {how})")
        if genotype.layers:
            dot_path, png_path = out / f"{stem}_chain.dot", out / f"{stem}_chain.png"
            dot_path.write_text(plot.chain_dot(genotype))
            how = plot.save_chain_png(genotype, png_path)
            print(f"chain: {dot_path} and {png_path} (drawn with {how})")
    except OSError as exc:  # no permission, a full disk, ...
        plot.discard(made)
        raise InputError(f"cannot write the pictures in {out}: {exc.strerror or exc}") from None
    return 0


def _exists_as(path: Path, what: str) -> bool:
    """``path.is_file()`` / ``is_dir()``, False for text that cannot be a path (too long, NUL)."""
    try:
        return path.is_file() if what == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


def _genotype_cost(genotype, config: str | None, sets: list[str]) -> str:
    """One line: what the network that ``config`` (or the space's defaults) builds costs."""
    from .config import config_specs, load_config
    from .cost import count_cost, format_cost
    from .data import known_classes
    from .registry import trust
    from .spaces import build_network

    cfg = load_config(config, sets)
    for spec in config_specs(cfg):  # named by the user on the command line
        trust(spec)
    if genotype.space and (config or any(s.startswith("space=") for s in sets)) \
            and genotype.space != cfg.space:
        raise InputError(f"the genotype belongs to the {genotype.space} space, the config's "
                         f"space is {cfg.space}")
    space = genotype.space or cfg.space
    classes = known_classes(cfg.data.dataset)
    size = cfg.search.budget.image_size or cfg.data.image_size
    cost = count_cost(build_network(space, genotype, classes, cfg.network), size)
    options = ", ".join(f"{k}={v}" for k, v in cfg.network.items()) or "default options"
    return (f"cost of the {space} network ({options}; {classes} classes, {size}x{size} images): "
            f"{format_cost('params', cost['params'])}, {format_cost('macs', cost['macs'])}")


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import metrics_dir, plot_runs
    out = args.out or (metrics_dir(args.runs[0]) / "plots" if len(args.runs) == 1 else "plots")
    for path in plot_runs(args.runs, out):
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import describe, export
    from .monitor import steps_bar
    with steps_bar(3, "export", args.quiet) as step:
        result = export(args.source, args.format, args.out, batch=args.batch,
                        image_size=args.image_size, tolerance=args.tolerance, progress=step)
    print("\n".join(describe(result)))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .experiments.study import study_command
    return study_command(args)


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    import torch

    from .latency import check_runtime, format_runtime_latency, runtime_latency
    from .monitor import steps_bar
    from .profiling import format_profile, network_to_profile, profile_network, with_network
    from .runtime import channels_last, resolve_device, within_memory
    from .config import MAX_BATCH, MAX_IMAGE_SIZE, MAX_RUNS, MAX_THREADS, check_count
    from .spaces import check_network

    for flag, value, most in (("--batch", args.batch, MAX_BATCH), ("--runs", args.runs, MAX_RUNS),
                              ("--threads", args.threads, MAX_THREADS),
                              ("--image-size", args.image_size, MAX_IMAGE_SIZE)):
        check_count(flag, value, 1, most, nullable=True)  # before the network is built
    if args.runtime == "onnxruntime":
        check_runtime("onnxruntime")
    if args.target.endswith(".onnx"):
        return _profile_onnx_file(args)
    model, genotype, space, cfg, classes, size = network_to_profile(
        args.target, args.config, args.set, args.image_size)
    device = resolve_device(args.device or cfg.device)
    check_network(model, classes, size, f"search space '{space}'")
    predicted = _predicted(args.latency_table, cfg, genotype, size)  # one that does not fit: now
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = channels_last(cfg.train.channels_last, device)  # as nas train runs it
    steps = (4 if args.batch > 1 else 2) + (args.runtime == "onnxruntime")
    with steps_bar(steps, "profile", args.quiet) as step, \
            within_memory(f"batch {args.batch} of {size}x{size} images",
                          "choose a smaller --batch or --image-size"):
        profile = profile_network(model, size, device, batch=args.batch, runs=args.runs,
                                  genotype=genotype, channels_last=layout, progress=step)
        if args.runtime == "onnxruntime":
            step("onnxruntime")
            profile["onnxruntime"] = runtime_latency(model, size, profile["batch_sizes"],
                                                     "onnxruntime", torch.get_num_threads(),
                                                     args.runs)
    options = ", ".join(f"{k}={v}" for k, v in cfg.network.items()) or "default options"
    profile = with_network(profile, space, genotype, cfg.network, classes)
    if predicted is not None:
        profile["predicted_latency"] = predicted
    if args.json:
        print(json.dumps(profile, indent=2))
        return 0
    print(format_profile(profile, f"{space} network ({options}; {classes} classes, "
                                  f"{size}x{size} images)"))
    if "onnxruntime" in profile:
        print(format_runtime_latency(profile["onnxruntime"], "the network exported to ONNX"))
    if predicted is not None:
        print(f"predicted by {predicted['table']} ({predicted['measured_with']}): "
              f"{predicted['latency_ms']:.3f} ms at batch {predicted['batch']}")
    return 0


def _predicted(path: str | None, cfg, genotype, size: int) -> dict | None:
    """What the latency table at ``path`` predicts for ``genotype``'s network (None: no table)."""
    if path is None:
        return None
    from .latency import predict, read_table
    table = read_table(path)
    if table.image_size != size:
        raise InputError(f"--latency-table {path} was measured at {table.image_size}x"
                         f"{table.image_size} images, the profile runs at {size}x{size}: add "
                         f"--image-size {table.image_size}")
    return {"table": path, "measured_with": table.describe(), "batch": table.batch,
            "latency_ms": predict(table, path, cfg, [genotype])[0]}


def _profile_onnx_file(args: argparse.Namespace) -> int:
    """``nas profile model.onnx --runtime onnxruntime``: the file's latency alone."""
    import json

    import torch

    from .latency import format_runtime_latency, onnx_file_latency
    if args.runtime != "onnxruntime":
        raise InputError(f"{args.target} is an ONNX file: time it with --runtime onnxruntime")
    for flag in ("config", "set", "latency_table", "device"):
        if getattr(args, flag):
            raise InputError(f"--{flag.replace('_', '-')} does not apply to an ONNX file, which "
                             "is timed alone")
    if not Path(args.target).is_file():
        raise InputError(f"ONNX file not found: {args.target}")
    batches = sorted({1, args.batch})
    p = onnx_file_latency(args.target, batches, args.threads or torch.get_num_threads(), args.runs,
                          args.image_size)
    if args.json:
        print(json.dumps(p, indent=2))
    else:
        print(format_runtime_latency(p, f"{args.target}, {p['image_size']}x{p['image_size']} "
                                        "images"))
    return 0


def cmd_latency_table(args: argparse.Namespace) -> int:
    from .config import config_specs, load_config
    from .data import known_classes
    from .latency import Job, check_out, measure_table, supernet_of
    from .monitor import steps_bar
    from .registry import trust

    cfg = load_config(args.config, args.set)
    for spec in config_specs(cfg):  # named by the user on the command line
        trust(spec)
    classes = args.classes if args.classes is not None else known_classes(cfg.data.dataset)
    job = Job(cfg, args.runtime, args.batch, args.threads, args.runs, args.networks, classes,
              args.clock)
    job.check()
    out = check_out(args.out, args.force)
    model = supernet_of(job)
    with steps_bar(job.steps(model), "latency-table", args.quiet) as step:
        table = measure_table(job, model, step)
    table.save(out)
    groups = ", ".join(f"{g}: {len(v['ms'])} x {len(v['ops'])}" for g, v in table.groups.items())
    print(f"wrote {out}: {table.space} network ({', '.join(f'{k}={v}' for k, v in table.network.items())}; "
          f"{table.num_classes} classes, {table.image_size}x{table.image_size} images), "
          f"choice points x ops {groups}")
    print(f"measured with {table.describe()}, median of {table.runs} runs; {table.fits_note()}")
    print(f"use it: search.budget.latency_table: {out} (with search.budget.latency_ms)")
    return 0


COMMANDS = {"search": cmd_search, "plot": cmd_plot, "train": cmd_train, "run": cmd_run, "evaluate": cmd_evaluate,
            "list": cmd_list, "genotype": cmd_genotype}
COMMANDS.update(export=cmd_export, profile=cmd_profile)  # nas/export.py, nas/profiling.py
COMMANDS["latency-table"] = cmd_latency_table  # nas/latency.py
COMMANDS.update(study=cmd_study)  # nas/experiments/study.py


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (its last checkpoint kept), with status 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _import_torch() -> None:
    """Import torch with Ctrl-C and SIGTERM held back until it is done, then honoured.

    A KeyboardInterrupt raised inside torch's C++ initialisation aborts the process (SIGABRT,
    "terminate called after throwing ... KeyboardInterrupt") instead of reaching our handler.
    """
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    pressed: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pressed.append(signum)) for s in held}
    try:
        import torch  # noqa: F401
    finally:
        for s in held:
            signal.signal(s, previous[s])
    if pressed:
        raise Terminated if signal.SIGTERM in pressed else KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nas`` console script; returns the exit status."""
    verb, args, dist = "", None, None
    together = True  # every rank ends this way (finished, or an error they all share)
    interrupted = False  # Ctrl-C or SIGTERM: every rank got it, but each stops where it was
    from .threads import set_wait_policy, start_sampling
    start_sampling()    # the load of other processes is measured while this one starts
    set_wait_policy()   # before torch loads OpenMP
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        args = build_parser().parse_args(argv)
        verb = args.verb
        _import_torch()
        from . import distributed as dist
        from .registry import guarded
        if verb in ("search", "train", "run"):
            dist.init()  # under torchrun: join the other processes
        with guarded():
            try:
                _trust_plugins(args)
                return COMMANDS[verb](args)
            except (InputError, Diverged) as exc:
                if dist.setup_pending():  # failed before the others knew: tell them, stop together
                    dist.agree(error=exc)
                raise
    except InputError as exc:
        together = dist is not None and isinstance(exc, dist.AgreedError)
        _error(" ".join(filter(None, [verb, getattr(args, "action", None)])), exc, shared=together)
        return 2
    except Diverged as exc:  # the losses are averaged over the ranks: every rank sees it
        _error(verb, exc, shared=True)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        together, interrupted = False, True
        where = getattr(args, "chosen_run_dir", None)
        hint = f"; continue with: nas {verb} --resume {_quoted(where)}" \
            if verb in ("search", "train", "run") and where else ""
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        if dist is None or dist.is_main():
            print(f"\nnas{' ' + verb if verb else ''}: {what}{hint}", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        together = False
        if dist is None or dist.world_size() == 1:
            raise
        # one line per failing rank instead of a traceback from every rank; a rank whose peer
        # failed says so here too (gloo: "Connection closed by peer", NCCL: a timeout)
        _error(verb, f"{type(exc).__name__}: {first_line(exc, typed=False)}", shared=False)
        return 1
    finally:
        if dist is not None:
            dist.shutdown(together, interrupted)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _quoted(path: Path) -> str:
    """A path as a shell word."""
    import shlex
    return shlex.quote(str(path))


def _error(verb: str, exc: BaseException | str, shared: bool) -> None:
    """One line on stderr; an error every rank shares is printed by rank 0 alone."""
    from . import distributed as dist
    if shared and not dist.is_main():
        return
    where = f" (rank {dist.rank()})" if dist.world_size() > 1 and not shared else ""
    print(f"nas {verb}: error{where}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
