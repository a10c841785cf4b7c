"""Choice points and the mbconv chain space: the choice points each space declares, one block per
layer in gdas mode, gradients to every layer's logits, the chain genotype's text form, the exact
cost table and budgeted derivation of a chain, drop path on residual branches only, and search,
train, export, profile and pictures of an mbconv network through ``nas.cli.main``."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import nas
from nas.budget import derive_within, fits
from nas.cli import main
from nas.cost import build_cost_table, count_cost
from nas.errors import InputError

# 3 layers: 4 -> 4 (residual, may skip), 4 -> 8 at stride 2 (no skip), 8 -> 8 (residual)
OPTIONS = {"stem": 4, "widths": [4, 8], "layers": [1, 2], "strides": [1, 2], "head": 8}
BLOCKS = {f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)}


def supernet(mode: str = "gdas", seed: int = 0) -> nas.Supernet:
    return nas.build_supernet("mbconv", 10, mode, seed, OPTIONS)


def test_choice_points_of_each_space():
    points = supernet().choice_points()
    assert [p.name for p in points] == ["stage1.layer1", "stage2.layer1", "stage2.layer2"]
    assert [(p.C_in, p.C_out, p.stride) for p in points] == [(4, 4, 1), (4, 8, 2), (8, 8, 1)]
    assert [p.group for p in points] == ["stage1_layer1", "stage2_layer1", "stage2_layer2"]
    assert set(points[0].ops) == BLOCKS | {"skip"} and set(points[1].ops) == BLOCKS  # no skip there
    darts = nas.build_supernet("darts", 10, "gdas", 0, {"C": 4, "cells": 3}).choice_points()
    assert len(darts) == 28 and darts[0].name == "normal/2<-0" and darts[14].name == "reduce/2<-0"
    assert (darts[13].group, darts[13].row, darts[14].group, darts[14].row) == ("normal", 13, "reduce", 0)
    assert darts[0].describe() == "normal/2<-0: 8 candidates"  # widths and strides: the layout's
    nb201 = nas.build_supernet("nasbench201", 10, "gdas", 0, {"C": 4, "cells_per_stage": 1})
    assert [p.name for p in nb201.choice_points()] == [
        "cell/1<-0", "cell/2<-0", "cell/2<-1", "cell/3<-0", "cell/3<-1", "cell/3<-2"]
    assert all(p.ops == nb201.op_names["cell"] for p in nb201.choice_points())


def test_bad_chain_declarations_fail_in_one_line():
    with pytest.raises(InputError, match="two layers are named 'a.b'"):
        nas.Supernet(layers=[nas.ChoicePoint("a.b", ("x",)), nas.ChoicePoint("a_b", ("y",))])
    with pytest.raises(InputError, match="distinct op names"):
        nas.ChoicePoint("layer", ("x", "x"))
    with pytest.raises(InputError, match="widths, layers and strides"):
        supernet_opts = dict(OPTIONS, strides=[1])
        nas.build_supernet("mbconv", 10, "gdas", 0, supernet_opts)


def _count_calls(model: nas.Supernet) -> dict[str, int]:
    """Hooks counting each candidate's forward calls, by '<layer>/<op>'."""
    calls: dict[str, int] = {}
    for layer in model.layers:
        for op, module in zip(layer.edge.op_names, layer.edge.ops):
            key = f"{layer.point.name}/{op}"
            calls[key] = 0
            module.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    return calls


def test_gdas_runs_one_block_per_layer_and_softmax_all():
    model = supernet("gdas")
    calls = _count_calls(model)
    model(torch.randn(2, 3, 8, 8))
    for p in model.choice_points():
        ran = [op for op in p.ops if calls[f"{p.name}/{op}"]]
        assert len(ran) == 1 and calls[f"{p.name}/{ran[0]}"] == 1
        assert ran[0] == p.ops[model.last_index[p.group][0]]  # the sampled one
    soft = supernet("softmax")
    calls = _count_calls(soft)
    soft(torch.randn(2, 3, 8, 8))
    assert all(n == 1 for n in calls.values()) and len(calls) == 7 + 6 + 7


@pytest.mark.parametrize("mode", nas.MODES)
def test_gradients_reach_every_layers_logits(mode):
    torch.manual_seed(0)
    model = supernet(mode)
    for _ in range(3):
        loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
    for p in model.choice_points():
        grad = model.arch_logits[p.group].grad
        assert grad is not None and grad.abs().sum() > 1e-6, (mode, p.name)


def test_chain_genotype_text_and_file_round_trip(tmp_path):
    genotype = supernet().genotype()
    assert not genotype.cells and list(genotype.layers) == [p.name for p in supernet().choice_points()]
    text = str(genotype)
    assert text.startswith("Chain[mbconv](stage1.layer1=") and text.endswith(")")
    assert nas.parse_genotype(text) == genotype
    genotype.save(tmp_path / "g.json")
    assert nas.Genotype.load(tmp_path / "g.json") == genotype
    assert nas.parse_genotype(str(tmp_path / "g.json")).layers == genotype.layers
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["string"] == text and data["layers"] == dict(genotype.layers)
    for bad, message in (("Chain[mbconv](a=x, b)", "item 2"), ("Chain[mbconv](a=x, a=y)", "twice"),
                         ("Chain[mbconv", "must look like")):
        with pytest.raises(InputError, match=message):
            nas.parse_genotype(bad)
    # the cell forms did not change: no "layers" key in a cell genotype's file
    assert "layers" not in nas.parse_genotype("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|").to_dict()


def test_the_network_refuses_a_genotype_of_other_layers():
    genotype = nas.parse_genotype("Chain[mbconv](stage1.layer1=skip, stage2.layer1=skip, "
                                  "stage2.layer2=skip)")
    with pytest.raises(InputError, match="'skip' is not one of its candidates"):
        nas.build_network("mbconv", genotype, 10, OPTIONS)
    with pytest.raises(InputError, match="does not fit these mbconv options"):
        nas.build_network("mbconv", nas.parse_genotype("Chain[mbconv](x=skip)"), 10, OPTIONS)


def _all_genotypes(model: nas.Supernet):
    points = model.choice_points()
    for ops in itertools.product(*(p.ops for p in points)):
        yield nas.Genotype({}, space="mbconv", layers={p.name: op for p, op in zip(points, ops)})


def test_cost_table_is_exact_and_budgeted_derivation_is_the_best_that_fits():
    model = supernet()
    build = lambda g: nas.build_network("mbconv", g, 10, OPTIONS)  # noqa: E731
    table = build_cost_table(model, build, 8, ["params", "macs"], torch.device("cpu"), "mbconv")
    assert table.points == {p.name: (p.group, 0) for p in model.choice_points()}
    genotypes = list(_all_genotypes(model))
    assert len(genotypes) == 7 * 6 * 7
    for g in genotypes[::37]:  # the table adds up to the network's exact counts
        assert table.of(g) == {k: float(v) for k, v in count_cost(build(g), 8).items()}
    # two layers with the same op and shapes are different entries
    assert table.ops["params"]["stage1_layer1"][0, 0] != table.ops["params"]["stage2_layer2"][0, 0]
    assert table.minimum() == {m: min(table.of(g)[m] for g in genotypes) for m in table.metrics}
    with torch.no_grad():  # logits that favour the largest blocks
        for p in model.choice_points():
            model.arch_logits[p.group].copy_(torch.randn(1, len(p.ops)))
            model.arch_logits[p.group][0, p.ops.index("mbconv_k7_e6")] += 3.0
    free = model.genotype()
    limits = {"macs": 0.5 * table.of(free)["macs"]}
    derived = derive_within(model, table, limits)
    assert derived is not None and fits(table.of(derived), limits)
    assert derived.space == free.space == "mbconv" and not derived.cells
    probs = model.probabilities()

    def score(g: nas.Genotype) -> float:
        return sum(float(probs[p.group][0, p.ops.index(g.layers[p.name])].log())
                   for p in model.choice_points())

    best = max((g for g in genotypes if fits(table.of(g), limits)), key=score)
    assert score(derived) == pytest.approx(score(best), abs=1e-9)
    expected = table.expected(model)
    expected["macs"].backward()  # differentiable in every layer's logits
    assert all(model.arch_logits[p.group].grad.abs().sum() > 0 for p in model.choice_points())


def test_a_latency_table_of_a_chain_prices_every_layer_and_the_derivation_keeps_it():
    model = supernet()
    build = lambda g: nas.build_network("mbconv", g, 10, OPTIONS)  # noqa: E731
    table = build_cost_table(model, build, 8, ["params", "macs", "latency_ms"],
                             torch.device("cpu"), "mbconv", latency_runs=3)
    for p in model.choice_points():
        cost = table.ops["latency_ms"][p.group][0]
        assert torch.isfinite(cost).all() and (cost >= 0).all()
        blocks = [cost[k] for k, op in enumerate(p.ops) if op != "skip"]
        assert min(blocks) > 0  # every block is timed, at its own layer
    limit = 0.5 * (table.minimum()["latency_ms"] + table.of(model.genotype())["latency_ms"])
    derived = derive_within(model, table, {"latency_ms": limit})
    assert derived is not None and table.of(derived)["latency_ms"] <= limit


def test_drop_path_applies_to_residual_branches_only():
    genotype = nas.parse_genotype("Chain[mbconv](stage1.layer1=mbconv_k3_e3, "
                                  "stage2.layer1=mbconv_k3_e3, stage2.layer2=skip)")
    net = nas.build_network("mbconv", genotype, 10, OPTIONS)
    # stage1.layer1 alone has a residual branch (and the network's drop_path_prob says so)
    assert nas.set_drop_path(net, 0.5) == 2
    first, second = net.layers[0], net.layers[1]
    assert isinstance(first.op, nas.ResidualBranch) and not isinstance(second.op, nas.ResidualBranch)
    net.train()
    torch.manual_seed(0)
    x = torch.randn(64, 4, 8, 8)
    y = first(x)
    same = [(y[i] == x[i]).all().item() for i in range(64)]
    assert 10 < sum(same) < 54  # dropped samples keep their input: never zeroed
    out = second(torch.randn(64, 4, 8, 8))
    assert all(out[i].abs().sum() > 0 for i in range(64))  # a layer without residual: no drop


def test_mbconv_search_train_export_profile_through_the_cli(tmp_path, cifar_root, capsys):
    config = tmp_path / "mb.yaml"
    config.write_text(yaml.safe_dump({
        "space": "mbconv", "seed": 2,
        "data": {"dataset": "cifar10", "image_size": 8, "pad": 1, "workers": 0},
        "supernet": OPTIONS, "network": OPTIONS,
        "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 2,
                   "budget": {"macs": 1.5e5, "params": 3000}},
        "train": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "drop_path": 0.2,
                  "auxiliary_weight": 0.0, "cutout": 0, "eval_batch_size": 20}}))
    run = tmp_path / "run"
    code = main(["run", "--config", str(config), "--data-dir", str(cifar_root), "--run-dir",
                 str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    genotype = nas.Genotype.load(run / "search" / "genotype.json")
    assert genotype.space == "mbconv" and len(genotype.layers) == 3
    result = json.loads((run / "train" / "result.json").read_text())
    assert result["macs"] <= 1.5e5 and result["params"] <= 3000  # the budget held, exactly
    assert nas.parse_genotype(result["genotype"]) == genotype
    heatmaps = sorted(p.name for p in (run / "search" / "heatmaps").iterdir())
    assert heatmaps == ["chain_epoch_001.png", "chain_epoch_002.png"]  # one grid per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "search"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["arch/chain", "genotype/chain"]  # one heatmap, one picture
    assert "probs/stage2.layer1/mbconv_k7_e6" in events.Tags()["scalars"]
    costs = json.loads((run / "search" / "costs.json").read_text())
    assert costs["points"]["stage2.layer1"] == ["stage2_layer1", 0]
    capsys.readouterr()

    assert main(["profile", str(run / "train"), "--json", "--batch", "1", "--runs", "3"]) == 0
    profile = json.loads(capsys.readouterr().out)
    kinds = [b["kind"] for b in profile["blocks"] if b["kind"].startswith("stage")]
    assert kinds == [f"{name}: {op}" for name, op in genotype.layers.items()]

    assert main(["export", str(run / "train"), "--format", "onnx", "--batch", "2"]) == 0
    assert "top-1 agrees" in capsys.readouterr().out

    assert main(["genotype", "plot", str(run / "search"), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "genotype_chain.png").stat().st_size > 0
    dot = (tmp_path / "pics" / "genotype_chain.dot").read_text()
    assert all(f"{name}\\n{op}" in dot for name, op in genotype.layers.items())
    assert main(["plot", str(run / "search"), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curves.png", "ops_chain.png"]
    capsys.readouterr()
    assert main(["genotype", "show", str(run / "search")]) == 0
    shown = capsys.readouterr().out
    assert all(f"  {name} = {op}" in shown for name, op in genotype.layers.items())


def test_the_few_shot_phase_splits_a_chain_on_a_layer_and_keeps_the_budget(tmp_path, cifar_root,
                                                                           capsys):
    config = tmp_path / "fs.yaml"
    config.write_text(yaml.safe_dump({
        "space": "mbconv", "seed": 3,
        "data": {"dataset": "cifar10", "image_size": 8, "pad": 1, "workers": 0},
        "supernet": OPTIONS, "network": OPTIONS,
        "search": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2, "budget": {"macs": 1.2e5},
                   "few_shot": {"epochs": 1, "select_epochs": 1, "select_batch_size": 16,
                                "workers": 1}}}))
    run = tmp_path / "fs"
    code = main(["search", "--config", str(config), "--data-dir", str(cifar_root), "--run-dir",
                 str(run), "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    layer = next(line for line in out.splitlines() if line.startswith("few-shot: "))
    assert "parts, edge stage" in layer and " cell" not in layer.split("fixed")[0]  # a layer
    assert "few-shot pick: the part with" in out
    genotype = nas.Genotype.load(run / "genotype.json")
    result = json.loads((run / "costs.json").read_text())
    assert len(genotype.layers) == 3 and result["points"]
    picked = out.split("few-shot pick: the part with ")[1].split(" on edge ")
    assert genotype.layers[picked[1].split(" ")[0]] == picked[0]  # the part's op kept there
    assert count_cost(nas.build_network("mbconv", genotype, 10, OPTIONS), 8)["macs"] <= 1.2e5
    # size-matched cells need cells whose dead ops the space can tell: refused before the run
    code = main(["search", "--config", str(config), "--data-dir", str(cifar_root), "--run-dir",
                 str(tmp_path / "spend"), "--threads", "1", "--set", "search.budget.spend=0.8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "search.budget.spend: size-matched cells need a DARTS-family supernet" in err
    assert not (tmp_path / "spend").exists()
