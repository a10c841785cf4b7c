"""Published genotypes by name: the registry, the CLI, and that each one builds and scores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nas
from nas.cli import main
from conftest import DARTS_V2, check_genotype_cells

TABLE = Path("/work/shared/benchmarks/nats_tss_200ep.csv")
DARTS_NAMES = ("DARTS_V1", "DARTS_V2", "GDAS", "GDAS_FRC", "PC_DARTS")


def test_published_genotypes_are_registered_with_a_source():
    assert set(DARTS_NAMES) | {"DRNAS_NB201"} <= set(nas.GENOTYPES.names())
    for name in nas.GENOTYPES.names():
        g = nas.GENOTYPES.get(name)
        assert isinstance(g, nas.Genotype) and g.space and g.source
    assert nas.parse_genotype("DARTS_V2") == nas.parse_genotype(DARTS_V2)
    # two edges per node, from distinct earlier states; GDAS-FRC searches the normal cell only
    for name in DARTS_NAMES:
        g = nas.GENOTYPES.get(name)
        assert set(g.cells) == ({"normal"} if name == "GDAS_FRC" else {"normal", "reduce"})
        for nodes in g.cells.values():
            assert [len(node) for node in nodes] == [2, 2, 2, 2]
            assert all(len({s for _, s in node}) == 2 and all(s < 2 + i for _, s in node)
                       for i, node in enumerate(nodes))


@pytest.mark.parametrize("name", DARTS_NAMES)
def test_each_darts_space_genotype_builds_the_cells_it_names(name):
    """Every cell of the network holds its kind's nodes, each op built as named, and computes
    what the genotype's edges compute; GDAS-FRC's reduction cells are GDAS's fixed ones."""
    from search_spaces.darts import FixedReductionCell
    genotype = nas.parse_genotype(name)
    torch.manual_seed(0)
    net = nas.build_network("darts", genotype, 10, {"C": 4, "cells": 3, "auxiliary": False})
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert check_genotype_cells(net, genotype, x) == (1 if name == "GDAS_FRC" else 3)
    assert [type(c) is FixedReductionCell for c in net.cells] == \
        ([False, True, True] if name == "GDAS_FRC" else [False, False, False])
    assert [c.reduction for c in net.cells] == [False, True, True]
    logits, aux = net(x)
    assert logits.shape == (2, 10) and aux is None and torch.isfinite(logits).all()


def test_darts_v2_has_the_published_parameter_count():
    net = nas.build_network("darts", nas.parse_genotype("DARTS_V2"), 10, {"C": 36, "cells": 20})
    assert nas.count_parameters(net) == 3_349_342


def test_drnas_cell_is_a_valid_nb201_cell_with_its_reported_accuracy():
    g = nas.parse_genotype("DRNAS_NB201")
    assert str(g) == ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
                      "nor_conv_3x3~1|nor_conv_3x3~2|")
    net = nas.build_network("nasbench201", g, 10, {"C": 4, "cells_per_stage": 1})
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    if not TABLE.is_file():
        pytest.skip(f"{TABLE} not present")
    from nas.benchmarks import load_table
    acc = load_table(TABLE).query(g).accuracy
    assert (round(acc["cifar10"], 2), round(acc["cifar100"], 2),
            round(acc["ImageNet16-120"], 2)) == (94.36, 73.51, 46.34)


def test_a_file_wins_over_a_name_and_an_unknown_name_lists_the_known(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    nas.parse_genotype("DRNAS_NB201").save(tmp_path / "DARTS_V2")  # a file named like a genotype
    assert nas.parse_genotype("DARTS_V2").space == "nasbench201"
    assert main(["genotype", "show", "DARTS_V3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'DARTS_V2'?" in err[0] and "PC_DARTS" in err[0]


def test_cli_shows_lists_and_trains_by_name(tmp_path, tiny_config, capsys):
    assert main(["genotype", "show", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == DARTS_V2
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index("genotypes:") + 1:]
    assert any(l.split()[0] == "PC_DARTS" and "yuhuixu1993/PC-DARTS" in l for l in listed)
    run = tmp_path / "run"
    assert main(["train", "--genotype", "GDAS", "--config", str(tiny_config), "--run-dir", str(run),
                 "--quiet", "--set", "train.epochs=1"]) == 0
    saved = nas.Genotype.load(run / "genotype.json")
    assert saved == nas.parse_genotype("GDAS") and saved.source.startswith("GDAS (Dong & Yang")


def test_a_plugin_registers_its_own_genotype():
    mine = nas.Genotype({"cell": [[("nor_conv_3x3", 0)]]}, space="mine", source="my paper")
    nas.GENOTYPES.register("MY_CELL_TEST", mine)
    try:
        assert nas.parse_genotype("MY_CELL_TEST") is mine
        entry = next(e for e in nas.GENOTYPES.entries() if e.name == "MY_CELL_TEST")
        assert entry.source == f"python ({__name__})"
    finally:
        nas.GENOTYPES._entries.pop("MY_CELL_TEST")
