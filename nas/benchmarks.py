"""NAS-Bench-201 lookup: what a derived cell scores in the benchmark's table, and its rank.

Two sources of the table:

- a CSV with the columns ``CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs,
  ImageNetTestAccuracy200Epochs, ArchitectureString, UniqueString`` (one row per cell, as the
  NATS-Bench topology export ships it);
- the official NATS-Bench files, read through the optional ``nats_bench`` package
  (``pip install nats_bench``), given the path of the ``NATS-tss-v1_0-3ffb9-simple`` directory
  or the ``.pickle.pbz2`` file.

A table is for evaluating and monitoring a search; the search itself never reads it.
Isomorphic cells (the same ``UniqueString``: edges that cannot reach the output, and other
rewirings that compute the same function) are one architecture: the result reports the
accuracy of the cell asked for and the mean over its isomorphism class, and ranks count cells.
"""
from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .genotype import Genotype, parse_genotype

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
_CSV_COLUMNS = {"cifar10": "CIFAR10TestAccuracy200Epochs",
                "cifar100": "CIFAR100TestAccuracy200Epochs",
                "ImageNet16-120": "ImageNetTestAccuracy200Epochs"}


def percent(value: float) -> str:
    """A share of the table in %: one decimal, two below 1% (rank 3 of 15,625 is the top 0.02%)."""
    return f"{value:.1f}" if round(value, 1) >= 1 else f"{value:.2f}"


@dataclass(frozen=True)
class BenchmarkResult:
    """A cell's test accuracies (%) in the table, its rank among all cells and its class."""

    arch: str                       # the NAS-Bench-201 string looked up
    accuracy: dict[str, float]      # dataset -> test accuracy (%) of this cell
    rank: int                       # 1 + the number of cells with a higher CIFAR-10 accuracy
    cells: int                      # cells in the table (15,625)
    class_size: int                 # cells isomorphic to this one, itself included
    class_accuracy: dict[str, float]  # dataset -> mean accuracy over the isomorphism class

    @property
    def top_percent(self) -> float:
        """The rank as a percentage of all cells (0.01 = the best one)."""
        return 100.0 * self.rank / self.cells

    def scalars(self) -> dict[str, float | int]:
        """Flat metrics for metrics.jsonl and TensorBoard (``benchmark/cifar10``, ...)."""
        return {**{f"benchmark/{k}": v for k, v in self.accuracy.items()}, "benchmark/rank": self.rank}

    def summary(self) -> str:
        """One line: the three accuracies and the rank."""
        accs = ", ".join(f"{k} {v:.2f}" for k, v in self.accuracy.items())
        return (f"NAS-Bench-201: {accs} (test %); rank {self.rank:,} of {self.cells:,} on "
                f"cifar10 (top {percent(self.top_percent)}%)")


def canonical_arch(genotype: Genotype | str) -> str:
    """The NAS-Bench-201 string of a genotype, each node's edges ordered by input."""
    g = parse_genotype(genotype) if isinstance(genotype, str) else genotype
    if set(g.cells) != {"cell"}:
        raise InputError(f"not a NAS-Bench-201 genotype: it has cells {sorted(g.cells)}, "
                         "the benchmark has one cell 'cell'")
    nodes = [tuple(sorted(node, key=lambda e: e[1])) for node in g.cells["cell"]]
    for i, node in enumerate(nodes):
        if [src for _, src in node] != list(range(i + 1)):
            raise InputError(f"not a NAS-Bench-201 cell: node {i + 1} needs one edge from each of "
                             f"the nodes 0..{i}, got inputs {[src for _, src in node]}")
    return Genotype({"cell": nodes}).to_nb201_string()


class NB201Table:
    """The NAS-Bench-201 table in memory: accuracies by arch string, ranks, isomorphism classes."""

    def __init__(self, archs: list[str], accuracy: dict[str, list[float]],
                 unique: list[str] | None = None, source: str = "") -> None:
        self.source = source
        self.archs = archs
        self.accuracy = accuracy
        self.index = {a: i for i, a in enumerate(archs)}
        self._class_of = unique or archs  # without UniqueString every cell is its own class
        self._sorted = sorted(accuracy["cifar10"])
        self._classes: dict[str, list[int]] = {}
        for i, u in enumerate(self._class_of):
            self._classes.setdefault(u, []).append(i)

    def __len__(self) -> int:
        return len(self.archs)

    def query(self, genotype: Genotype | str) -> BenchmarkResult:
        """Accuracies, rank and isomorphism class of a NAS-Bench-201 genotype or string."""
        arch = canonical_arch(genotype)
        i = self.index.get(arch)
        if i is None:
            raise InputError(f"{arch} is not in the NAS-Bench-201 table {self.source} (an op "
                             f"outside {', '.join(self.ops())}?)")
        members = self._classes[self._class_of[i]]
        return BenchmarkResult(
            arch=arch, accuracy={d: v[i] for d, v in self.accuracy.items()},
            rank=1 + len(self._sorted) - bisect.bisect_right(self._sorted, self.accuracy["cifar10"][i]),
            cells=len(self.archs), class_size=len(members),
            class_accuracy={d: sum(v[j] for j in members) / len(members)
                            for d, v in self.accuracy.items()})

    def ops(self) -> list[str]:
        """The op names the table's cells use."""
        return sorted({item.rsplit("~", 1)[0] for a in self.archs
                       for item in a.replace("+", "").strip("|").split("|")})

    def stats(self, dataset: str = "cifar10") -> dict[str, float]:
        """Mean, median and best accuracy over all cells: what a random cell scores."""
        v = self._sorted if dataset == "cifar10" else sorted(self.accuracy[dataset])
        n = len(v)
        median = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
        return {"mean": sum(v) / n, "median": median, "best": v[-1]}


def _read_csv(path: Path) -> NB201Table:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            need = list(_CSV_COLUMNS.values()) + ["ArchitectureString"]
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: not a NAS-Bench-201 table: missing column(s) "
                                 f"{', '.join(missing)}")
            archs, unique, acc = [], [], {d: [] for d in DATASETS}
            for line, row in enumerate(reader, start=2):
                try:
                    arch = canonical_arch(row["ArchitectureString"])
                    values = {d: float(row[c]) for d, c in _CSV_COLUMNS.items()}
                except (InputError, TypeError, ValueError):
                    raise InputError(f"{path}:{line}: not a NAS-Bench-201 row") from None
                if not all(math.isfinite(v) for v in values.values()):
                    raise InputError(f"{path}:{line}: accuracy is not a finite number")
                archs.append(arch)
                unique.append(row.get("UniqueString") or arch)
                for d in DATASETS:
                    acc[d].append(values[d])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the NAS-Bench-201 table {path}: {exc}") from None
    if not archs:
        raise InputError(f"{path}: the NAS-Bench-201 table has no rows")
    return NB201Table(archs, acc, unique, source=str(path))


def _read_nats(path: Path) -> NB201Table:
    """The table through the nats_bench API (``create(path, 'tss')``, ``get_more_info``)."""
    try:
        from nats_bench import create  # optional dependency
    except ImportError:
        raise InputError(f"{path} is not a CSV table; reading NATS-Bench files needs the "
                         "nats_bench package: pip install nats_bench") from None
    try:
        api = create(str(path), "tss", fast_mode=True, verbose=False)
    except Exception as exc:  # the package raises assorted types for a bad file
        raise InputError(f"nats_bench cannot open {path}: {exc}") from None
    archs, acc = [], {d: [] for d in DATASETS}
    for i in range(len(api)):
        archs.append(canonical_arch(api.arch(i)))
        for d in DATASETS:
            info: dict[str, Any] = api.get_more_info(i, d, hp="200", is_random=False)
            acc[d].append(float(info["test-accuracy"]))
        api.clear_params(i)
    return NB201Table(archs, acc, None, source=str(path))


_CACHE: dict[tuple[str, float], NB201Table] = {}


def load_table(path: str | Path) -> NB201Table:
    """Read a NAS-Bench-201 table: a ``.csv`` export, or NATS-Bench files through nats_bench."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"NAS-Bench-201 table not found: {path}")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = _read_csv(path) if path.suffix.lower() == ".csv" else _read_nats(path)
    return _CACHE[key]
