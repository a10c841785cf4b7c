"""NAS-Bench-201 lookup: values, ranks, isomorphism classes, errors, and the CLI that prints them."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

import nas
from nas.benchmarks import canonical_arch, load_table
from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED_TABLE = ROOT.parent / "shared" / "benchmarks" / "nats_tss_200ep.csv"
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def arch_of(ops: tuple[str, ...]) -> str:
    """The NB201 string of six edge ops in table order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2)."""
    a, b, c, d, e, f = ops
    return f"|{a}~0|+|{b}~0|{c}~1|+|{d}~0|{e}~1|{f}~2|"


def fake_accuracy(ops: tuple[str, ...]) -> float:
    """A made-up accuracy: 50 + 2 points per 3x3 conv + 1 per 1x1 conv + position bonus."""
    return 50.0 + 2 * ops.count("nor_conv_3x3") + ops.count("nor_conv_1x1") + 0.01 * OPS.index(ops[5])


def write_table(path: Path) -> Path:
    """A complete synthetic table (all 15,625 cells); cells with node 1 = none share a class."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs",
                    "ImageNetTestAccuracy200Epochs", "ArchitectureString", "UniqueString"])
        for ops in itertools.product(OPS, repeat=6):
            acc = fake_accuracy(ops)
            unique = "dead-node-1" if ops[0] == "none" and ops[2] != "none" and ops[4] != "none" \
                else arch_of(ops)
            w.writerow([acc, acc - 20, acc - 40, arch_of(ops), unique])
    return path


@pytest.fixture(scope="session")
def table_path(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("bench") / "table.csv")


def test_query_returns_the_row_values_and_rank(table_path):
    table = load_table(table_path)
    assert len(table) == 15625
    ops = ("nor_conv_3x3",) * 6
    r = table.query(arch_of(ops))
    assert r.accuracy == {"cifar10": pytest.approx(62.03), "cifar100": pytest.approx(42.03),
                          "ImageNet16-120": pytest.approx(22.03)}
    assert r.rank == 1 and r.cells == 15625  # the all-3x3 cell is the single best fake cell
    worst = table.query(arch_of(("none",) * 6))
    # rank counts the cells strictly better: ties share the rank
    assert worst.rank == 1 + sum(1 for o in itertools.product(OPS, repeat=6)
                                 if fake_accuracy(o) > fake_accuracy(("none",) * 6))
    assert "rank 1 of 15,625" in r.summary() and "cifar100 42.03" in r.summary()
    assert r.scalars()["benchmark/cifar10"] == pytest.approx(62.03)


def test_query_accepts_genotypes_and_edges_in_any_order(table_path):
    table = load_table(table_path)
    shuffled = "|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_3x3~0|+|skip_connect~2|nor_conv_3x3~1|none~0|"
    expect = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"
    assert canonical_arch(shuffled) == expect
    assert table.query(shuffled) == table.query(nas.parse_genotype(expect))


def test_isomorphic_cells_form_one_class(table_path):
    table = load_table(table_path)
    a = table.query(arch_of(("none", "skip_connect", "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "none")))
    members = [o for o in itertools.product(OPS, repeat=6)
               if o[0] == "none" and o[2] != "none" and o[4] != "none"]
    assert a.class_size == len(members) == 5 ** 3 * 4 * 4
    mean = sum(fake_accuracy(o) for o in members) / len(members)
    assert a.class_accuracy["cifar10"] == pytest.approx(mean)
    assert table.query(BEST).class_size == 1


@pytest.mark.parametrize("arch, message", [
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], reduce=[('skip_connect', 0), "
     "('skip_connect', 1)])", "not a NAS-Bench-201 genotype"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     "node 2 needs one edge from each"),
    ("|sep_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
     "is not in the NAS-Bench-201 table"),
])
def test_bad_genotypes_are_input_errors(table_path, arch, message):
    with pytest.raises(nas.InputError, match=message):
        load_table(table_path).query(arch)


def test_bad_table_files_are_input_errors(tmp_path):
    with pytest.raises(nas.InputError, match="not found"):
        load_table(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(nas.InputError, match="missing column"):
        load_table(bad)
    broken = tmp_path / "broken.csv"
    broken.write_text("CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,"
                      "ImageNetTestAccuracy200Epochs,ArchitectureString\nx,1,1,|none~0|\n")
    with pytest.raises(nas.InputError, match=r"broken.csv:2: not a NAS-Bench-201 row"):
        load_table(broken)


def test_nats_bench_files_without_the_package_fail_with_one_line(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_nats(name, *args, **kwargs):
        if name == "nats_bench":
            raise ImportError("No module named 'nats_bench'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nats)
    folder = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    folder.mkdir()
    with pytest.raises(nas.InputError, match="pip install nats_bench"):
        load_table(folder)


def test_genotype_show_prints_accuracies_and_rank(table_path, capsys):
    assert main(["genotype", "show", "--benchmark", str(table_path), arch_of(("nor_conv_3x3",) * 6)]) == 0
    out = capsys.readouterr().out
    assert "NAS-Bench-201: cifar10 62.03, cifar100 42.03, ImageNet16-120 22.03" in out
    assert "rank 1 of 15,625" in out
    assert main(["genotype", "show", "--benchmark", str(table_path / "nope"), BEST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NAS-Bench-201 table not found" in err[0]


@pytest.mark.skipif(not SHARED_TABLE.is_file(), reason="the shared NAS-Bench-201 table is absent")
def test_the_shared_table_reproduces_the_published_facts():
    table = load_table(SHARED_TABLE)
    stats = table.stats()
    assert len(table) == 15625
    assert stats["mean"] == pytest.approx(87.06, abs=0.01)
    assert stats["median"] == pytest.approx(90.75, abs=0.01)
    assert stats["best"] == pytest.approx(94.37, abs=0.01)
    skip = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    assert table.query(skip).accuracy["cifar10"] == pytest.approx(54.30, abs=0.01)
    assert table.query(BEST).accuracy["cifar10"] == pytest.approx(94.36, abs=0.01)


@pytest.mark.parametrize("rank, text", [(1, "top 0.01%"), (3, "top 0.02%"), (156, "top 1.0%"),
                                        (380, "top 2.4%")])
def test_the_summary_shows_small_shares_with_two_decimals(rank, text):
    from nas.benchmarks import BenchmarkResult
    r = BenchmarkResult("|a~0|", {"cifar10": 94.0}, rank, 15625, 1, {"cifar10": 94.0})
    assert r.summary().endswith(f"rank {rank:,} of 15,625 on cifar10 ({text})")
