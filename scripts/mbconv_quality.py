#!/usr/bin/env python
"""The quality study of the mbconv space under latency budgets (issue 34, item 5).

For each budget (milliseconds of one 32x32 image in the runtime a ``nas latency-table`` file was
measured in) and each seed of the study, three networks are retrained by one recipe (the
config's ``train:`` section, ``retrain_epochs`` epochs, the same seed) and scored on the test set:

- **search**: ``nas search`` with the config, the budget priced by the latency table;
- **random search**: random chains whose table price fits the budget, each trained
  ``random_search.epochs`` epochs in the supernet's proxy on the weight split and scored on the
  architecture split, for the wall time the search took; the best one is kept;
- **uniform**: the MobileNetV2-style chain (``mbconv_k3_e6`` in every layer) shrunk by a width
  multiplier (stem and stage widths, MobileNetV2's rule: the head is kept) until its *measured*
  latency fits the budget.

Every final network's latency is then measured whole in the runtime (batch 1, one thread, the
thread's CPU time) beside what the table predicts. A pair (budget, seed) whose result file exists
is not run again, so an interrupted study goes on where it stopped.

    python scripts/mbconv_quality.py configs/studies/mbconv_quality_cpu.yaml --seeds held_out

Writes ``OUT/study.json`` and ``OUT/README.md`` (OUT: the study's ``out:``), the runs under
``OUT/runs`` (not committed: large).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from nas.config import Config, load_config
from nas.data import Batches, load_split, seed_of, split_indices, steps_per_epoch
from nas.experiments.random_search import train_cell
from nas.files import atomic_write
from nas.genotype import Genotype, parse_genotype
from nas.latency import measure, predict, random_genotypes, read_table
from nas.runtime import seed_everything
from nas.spaces import build_network, build_supernet
from nas.steps import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
KINDS = {str: "a string", list: "a list", int: "a whole number", dict: "a mapping", float: "a number"}
UNIFORM_BLOCK = "mbconv_k3_e6"
REPEATS = 3
KEYS = {"config": str, "data_dir": str, "latency_table": str, "budgets_ms": list,
        "development_seeds": list, "held_out_seeds": list, "retrain_epochs": int,
        "random_search": dict, "width_step": float, "out": str, "protocol": str}


def fail(message: str) -> None:
    """Stop with a one-line error (exit status 2)."""
    print(f"mbconv_quality.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_study(path: str) -> dict[str, Any]:
    """The study file, every key checked (one line per problem)."""
    try:
        study = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read the study file {path}: {str(exc).splitlines()[0]}")
    if not isinstance(study, dict):
        fail(f"{path}: expected a mapping of {', '.join(KEYS)}")
    for key, kind in KEYS.items():
        if not isinstance(study.get(key), kind) or isinstance(study.get(key), bool):
            fail(f"{path}: '{key}' must be {KINDS[kind]}, got {study.get(key)!r}")
    unknown = sorted(set(study) - set(KEYS))
    if unknown:
        fail(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    if not study["budgets_ms"] or not all(isinstance(b, (int, float)) and b > 0
                                          for b in study["budgets_ms"]):
        fail(f"{path}: 'budgets_ms' must list positive milliseconds, got {study['budgets_ms']}")
    seeds = study["development_seeds"] + study["held_out_seeds"]
    if not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        fail(f"{path}: development and held-out seeds must be distinct integers, got {seeds}")
    if study["retrain_epochs"] < 1 or not 0 < study["width_step"] < 1:
        fail(f"{path}: needs retrain_epochs >= 1 and 0 < width_step < 1")
    if not isinstance(study["random_search"].get("epochs"), int) or study["random_search"]["epochs"] < 1:
        fail(f"{path}: random_search.epochs must be a whole number >= 1")
    return study


def study_config(study: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    """The study's search config with its data directory."""
    cfg = load_config(study["config"], list(overrides))
    cfg.data.root = study["data_dir"]
    return cfg


def scaled(options: dict[str, Any], multiplier: float) -> dict[str, Any]:
    """``options`` with the stem and stage widths times ``multiplier``, rounded to 4 (at least
    8); the head is kept, as MobileNetV2 keeps its last convolution below 1.0."""
    width = lambda c: max(8, int(round(c * multiplier / 4)) * 4)  # noqa: E731
    return {**options, "stem": width(options["stem"]), "widths": [width(c) for c in options["widths"]]}


def uniform_chain(cfg: Config) -> Genotype:
    """The chain with ``UNIFORM_BLOCK`` at every choice point of the config's space."""
    points = build_supernet(cfg.space, 10, "gdas", 0, cfg.supernet).choice_points()
    return parse_genotype(f"Chain[{cfg.space}](" +
                          ", ".join(f"{p.name}={UNIFORM_BLOCK}" for p in points) + ")")


def measured_ms(cfg: Config, genotype: Genotype, network: dict[str, Any], image_size: int) -> float:
    """The whole network's latency in onnxruntime: batch 1, one thread, its CPU time; the least
    of ``REPEATS`` measurements (a session that starts in a burst of other work reads up to a
    third high, even by CPU time)."""
    net = build_network(cfg.space, genotype, 10, network)
    x = torch.zeros(1, 3, image_size, image_size)
    return min(measure(net, x, "onnxruntime", 1, clock="cpu") for _ in range(REPEATS))


def shrink_uniform(cfg: Config, budget: float, step: float, image_size: int) -> dict[str, Any]:
    """The widest multiplier (1, 1 - step, ...) whose uniform chain measures within ``budget``."""
    genotype, tried = uniform_chain(cfg), []
    for k in range(int(1 / step)):
        multiplier = round(1 - k * step, 6)
        network = scaled(dict(cfg.network), multiplier)
        ms = measured_ms(cfg, genotype, network, image_size)
        tried.append({"multiplier": multiplier, "ms": ms})
        if ms <= budget:
            return {"genotype": str(genotype), "multiplier": multiplier, "network": network,
                    "measured_ms": ms, "tried": tried}
    fail(f"the uniform chain does not fit {budget} ms even at width {multiplier}")
    raise AssertionError


def uniform_baselines(cfg: Config, study: dict[str, Any], size: int, out: Path
                      ) -> dict[float, dict[str, Any]]:
    """The shrunk uniform chain of each budget, measured once and kept in ``OUT/uniform.json`` (a
    resumed study retrains the widths its finished pairs trained, whatever the machine's noise)."""
    path = out / "uniform.json"
    saved = {float(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    missing = [b for b in study["budgets_ms"] if float(b) not in saved]
    saved.update({float(b): shrink_uniform(cfg, b, study["width_step"], size) for b in missing})
    if missing:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({str(k): v for k, v in saved.items()}, indent=2) + "\n")
    return saved


def fitting_pool(cfg: Config, table_path: str, budget: float, seed: int, count: int) -> list[str]:
    """Uniformly random chains (one op per layer, independently) whose table price fits ``budget``."""
    model = build_supernet(cfg.space, 10, "gdas", 0, cfg.supernet)
    drawn = random_genotypes(model, count, seed_of(seed, 34))
    prices = predict(read_table(table_path), table_path, cfg, drawn)
    pool = [str(g) for g, ms in zip(drawn, prices) if ms <= budget]
    return list(dict.fromkeys(pool))


def random_search(spec: dict[str, Any]) -> dict[str, Any]:
    """Train random fitting chains in the proxy until the time is spent; keep the best by the
    architecture split's accuracy (never the test set). Drawing the pool is not timed."""
    torch.set_num_threads(1)
    cfg, seed, epochs = study_config(spec["study"]), spec["seed"], spec["epochs"]
    s, cpu = cfg.search, torch.device("cpu")
    pool = fitting_pool(cfg, spec["study"]["latency_table"], spec["budget"], seed, spec["pool"])
    if not pool:
        fail(f"none of {spec['pool']} random chains fits {spec['budget']} ms: raise random_search.pool")
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, seed)
    steps = steps_per_epoch(len(w_idx), len(a_idx), s.batch_size, s.steps_per_epoch)
    val = Batches(data.subset(a_idx), s.batch_size, train=False, device=cpu)
    tried, started = [], time.time()
    for i, arch in enumerate(pool):
        t0 = time.time()
        seed_everything(seed_of(seed, 4, i))
        model = build_network(cfg.space, parse_genotype(arch), data.num_classes, dict(cfg.supernet))
        batches = Batches(data.subset(w_idx), s.batch_size, train=True, device=cpu, pad=cfg.data.pad,
                          seed=seed_of(seed, 1, i), max_steps=steps)
        train_cell(model, batches, cfg, s.lr, epochs, False)
        tried.append({"arch": arch, "val_acc": evaluate_model(model, val)[1],
                      "seconds": time.time() - t0})
        # stop before a chain that would not finish in time: the baseline never gets more time
        if time.time() + statistics.mean(t["seconds"] for t in tried) > started + spec["seconds"]:
            break
    best = max(tried, key=lambda t: t["val_acc"])
    return {"arch": best["arch"], "val_acc": best["val_acc"], "chains": len(tried),
            "pool": len(pool), "seconds": time.time() - started, "tried": tried}


def run(name: str, command: Sequence[str], log: Path) -> None:
    """Run a command with one thread, its output in ``log``; fail in one line if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        done = subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if done.returncode != 0:
        lines = log.read_text().strip().splitlines()
        fail(f"{name} failed (exit {done.returncode}): "
             f"{lines[-1] if lines else 'no output'}; see {log}")


def retrain(study: dict[str, Any], genotype: str, seed: int, where: Path,
            network: dict[str, Any] | None = None) -> float:
    """``nas train`` of ``genotype`` by the study's recipe; its test accuracy (%) (a finished
    retraining is read back, not run again)."""
    if (where / "result.json").is_file():
        return json.loads((where / "result.json").read_text())["test_acc"]
    sets = [f"train.epochs={study['retrain_epochs']}"]
    if network:
        sets += [f"network.{k}={json.dumps(v)}" for k, v in network.items()]
    run(f"nas train of {where.name}", [
        sys.executable, "-m", "nas", "train", "--config", study["config"], "--genotype", genotype,
        "--data-dir", study["data_dir"], "--seed", str(seed), "--threads", "1", "--quiet",
        "--force", "--run-dir", str(where), "--set", *sets], where.with_suffix(".log"))
    return json.loads((where / "result.json").read_text())["test_acc"]


def search(study: dict[str, Any], budget: float, seed: int, where: Path) -> dict[str, Any]:
    """``nas search`` under the budget, timed; kept in ``search.json`` (not run again)."""
    record = where / "search.json"
    if record.is_file():
        return json.loads(record.read_text())
    started = time.time()
    run("nas search", [
        sys.executable, "-m", "nas", "search", "--config", study["config"], "--data-dir",
        study["data_dir"], "--seed", str(seed), "--threads", "1", "--quiet", "--force",
        "--run-dir", str(where / "search"), "--set", "search.budget.macs=null",
        f"search.budget.latency_ms={budget}", f"search.budget.latency_table={study['latency_table']}"
    ], where / "search.log")
    result = {"genotype": str(Genotype.load(where / "search" / "genotype.json")),
              "seconds": time.time() - started}
    atomic_write(record, json.dumps(result, indent=2) + "\n")
    return result


def random_arm(study: dict[str, Any], budget: float, seed: int, seconds: float,
               where: Path) -> dict[str, Any]:
    """The random search given ``seconds``, in a process of its own; kept in ``random.json``."""
    record = where / "random.json"
    if not record.is_file():
        spec = {"study": study, "seed": seed, "budget": budget, "seconds": seconds,
                "epochs": study["random_search"]["epochs"],
                "pool": study["random_search"].get("pool", 100000)}
        run("the random search", [
            sys.executable, str(Path(__file__).resolve()), "--random-worker", json.dumps(spec),
            str(record)], where / "random.log")
    return json.loads(record.read_text())


def run_pair(study: dict[str, Any], budget: float, seed: int, uniform: dict[str, Any],
             out: Path) -> dict[str, Any]:
    """Search, random search for the same time, and the three retrainings of one (budget, seed);
    each finished stage is kept, so an interrupted pair goes on where it stopped."""
    where = out / "runs" / f"{budget}ms_seed{seed}"
    result_file = where / "pair.json"
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "read_back": True}
    where.mkdir(parents=True, exist_ok=True)
    searched = search(study, budget, seed, where)
    rand = random_arm(study, budget, seed, searched["seconds"], where)
    pair = {"budget_ms": budget, "seed": seed, "search_seconds": searched["seconds"],
            "search": {"genotype": searched["genotype"],
                       "test_acc": retrain(study, searched["genotype"], seed, where / "train_search")},
            "random": {"genotype": rand["arch"], "chains": rand["chains"], "pool": rand["pool"],
                       "val_acc": rand["val_acc"], "seconds": rand["seconds"],
                       "test_acc": retrain(study, rand["arch"], seed, where / "train_random")},
            "uniform": {"genotype": uniform["genotype"], "multiplier": uniform["multiplier"],
                        "test_acc": retrain(study, uniform["genotype"], seed,
                                            where / "train_uniform", uniform["network"])}}
    atomic_write(result_file, json.dumps(pair, indent=2) + "\n")
    return pair


def latencies(cfg: Config, study: dict[str, Any], pairs: list[dict[str, Any]],
              uniform: dict[float, dict[str, Any]], size: int) -> None:
    """Each searched and random chain measured whole, and priced by the table, in place."""
    path, arms = study["latency_table"], [(p, arm) for p in pairs for arm in ("search", "random")]
    genotypes = [parse_genotype(pair[arm]["genotype"]) for pair, arm in arms]
    # one cost table prices every chain (building it is the slow part)
    prices = predict(read_table(path), path, cfg, genotypes)
    for (pair, arm), genotype, price in zip(arms, genotypes, prices):
        pair[arm]["measured_ms"] = measured_ms(cfg, genotype, dict(cfg.network), size)
        pair[arm]["predicted_ms"] = price
    for pair in pairs:
        pair["uniform"]["measured_ms"] = uniform[float(pair["budget_ms"])]["measured_ms"]


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std; just the mean for one value)."""
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(study: dict[str, Any], record: dict[str, Any]) -> str:
    """The study's markdown page."""
    pairs, n_test = record["pairs"], record["test_images"]
    lines = ["# mbconv under latency budgets: search against its baselines (issue 34)", "",
             f"{record['date']}, commit {record['commit']}, `python scripts/mbconv_quality.py "
             f"{record['study_file']} --seeds {record['seeds_name']}`, "
             f"this project's 2-core CPU ({record['machine']}), load average "
             f"{record['load'][0]:.1f} at the start, {record['load'][1]:.1f} at the end, "
             f"{record['jobs']} runs side by side with one thread each; {record['minutes']:.0f} min"
             f" ({record['read_back']} of {len(pairs)} (budget, seed) pairs read back from an "
             "earlier invocation, their latencies measured again).",
             "", record["protocol"], "",
             "| budget (ms) | method | seeds | test accuracy % (mean ± std) | per seed | "
             "measured ms (mean) | table ms (mean) | wall time s (mean) |",
             "|---:|---|---:|---|---|---:|---:|---:|"]
    for budget in study["budgets_ms"]:
        rows = [p for p in pairs if p["budget_ms"] == budget]
        if not rows:
            continue
        for arm, name in (("search", f"search (`{study['config']}`)"),
                          ("random", "random search, same wall time"),
                          ("uniform", f"uniform k3_e6, width x{rows[0]['uniform']['multiplier']}")):
            accs = [p[arm]["test_acc"] for p in rows]
            measured = statistics.mean(p[arm]["measured_ms"] for p in rows)
            table = (f"{statistics.mean(p[arm]['predicted_ms'] for p in rows):.3f}"
                     if "predicted_ms" in rows[0][arm] else "-")
            wall = {"search": lambda p: p["search_seconds"], "random": lambda p: p["random"]["seconds"],
                    "uniform": lambda p: 0.0}[arm]
            lines.append(f"| {budget} | {name} | {len(rows)} | {mean_std(accs)} | "
                         f"{', '.join(f'{a:.2f}' for a in accs)} | {measured:.3f} | {table} | "
                         f"{statistics.mean(wall(p) for p in rows):.0f} |")
    p = statistics.mean(p["search"]["test_acc"] for p in pairs) / 100
    lines += ["", f"Noise: the test split holds {n_test} images, so one accuracy near "
              f"{100 * p:.0f}% has a binomial standard error of "
              f"{100 * math.sqrt(p * (1 - p) / n_test):.1f} points; the uniform rows retrain one "
              "network per budget with each seed, so their std is the retraining noise alone.", "",
              "Runs (the chain, then what random search tried):", ""]
    for pair in pairs:
        lines.append(f"- {pair['budget_ms']} ms, seed {pair['seed']}: search `{pair['search']['genotype']}`; "
                     f"random `{pair['random']['genotype']}` (best of {pair['random']['chains']} "
                     f"trained, architecture split {pair['random']['val_acc']:.2f}%)")
    return "\n".join(lines) + "\n"


def commit() -> str:
    """The checkout's short commit (unknown outside git)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study over the chosen seeds and write its record and page."""
    parser = argparse.ArgumentParser(prog="mbconv_quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the study file (configs/studies/mbconv_quality_cpu.yaml)")
    parser.add_argument("--seeds", choices=["development", "held_out"], default="held_out",
                        help="which of the study's declared seeds to run (default held_out)")
    parser.add_argument("--jobs", type=int, default=2, help="(budget, seed) pairs side by side")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    study = load_study(args.study)
    cfg = study_config(study)
    size = read_table(study["latency_table"]).image_size
    out, started, load0 = Path(study["out"]), time.time(), os.getloadavg()[0]
    uniform = uniform_baselines(cfg, study, size, out)
    seeds = study[f"{args.seeds}_seeds"] if args.seeds == "held_out" else study["development_seeds"]
    work = [(b, s) for b in study["budgets_ms"] for s in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        pairs = list(pool.map(lambda w: run_pair(study, w[0], w[1], uniform[float(w[0])], out), work))
    latencies(cfg, study, pairs, uniform, size)
    record = {"study_file": args.study, "seeds_name": args.seeds, "seeds": seeds,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
              "machine": f"{os.cpu_count()} CPUs", "jobs": args.jobs,
              "load": [load0, os.getloadavg()[0]], "minutes": (time.time() - started) / 60,
              "test_images": len(load_split(cfg.data, train=False)),
              "protocol": study.get("protocol", ""), "uniform": uniform,
              "read_back": sum(bool(p.pop("read_back", False)) for p in pairs), "pairs": pairs}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"study_{args.seeds}.json", json.dumps(record, indent=2) + "\n")
    atomic_write(out / f"README_{args.seeds}.md", report(study, record))
    print(f"wrote {out / f'README_{args.seeds}.md'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--random-worker":
        result = random_search(json.loads(sys.argv[2]))
        atomic_write(Path(sys.argv[3]), json.dumps(result, indent=2) + "\n")
        raise SystemExit(0)
    raise SystemExit(main())
