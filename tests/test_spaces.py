"""Tests of the built-in search spaces (search_spaces/darts.py, search_spaces/nasbench201.py)
and of nas.network: exact parameter counts, forward shapes, drop path, GDAS-FRC, genotypes that
do not fit, registration through entry points, MAC counting, and that a network built from a
derived genotype computes what the supernet's argmax subnetwork computes."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import nas
from conftest import DARTS_V2, check_genotype_cells
from search_spaces.darts import FixedReductionCell
from search_spaces.nasbench201 import all_cells, cell

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TINY_DARTS = {"C": 4, "cells": 3}  # cell 0 normal, cells 1 and 2 reduction


def darts():
    return nas.SEARCH_SPACES.get("darts")


def nb201():
    return nas.SEARCH_SPACES.get("nasbench201")


def images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- exact parameter counts ---------------------------------------------------------------------
def test_darts_v2_parameter_count_matches_the_darts_reference():
    net = darts().network(nas.parse_genotype(DARTS_V2), 10, C=36, cells=20, auxiliary=True)
    count = nas.count_parameters(net)
    assert count == 3_349_342  # DARTS's train.py prints "param size = 3.349342MB" for DARTS_V2
    assert abs(count - 3.3e6) / 3.3e6 < 0.015  # the paper's 3.3M
    # the auxiliary head (DARTS's AuxiliaryHeadCIFAR on the 576 channels of cell 13) is excluded
    C_aux = 4 * 4 * 36
    aux = (C_aux * 128 + 2 * 128) + (128 * 768 * 2 * 2 + 2 * 768) + (768 * 10 + 10)
    assert nas.count_parameters(net, exclude="") == count + aux
    assert sum(p.numel() for p in net.auxiliary_head.parameters()) == aux


def nb201_parameter_count(arch: str, C: int, N: int, classes: int = 10) -> int:
    """Parameters of a NAS-Bench-201 network, from the architecture's definition."""
    def bn(c):
        return 2 * c  # affine weight and bias

    edge = {"nor_conv_3x3": lambda c: c * c * 9 + bn(c), "nor_conv_1x1": lambda c: c * c + bn(c),
            "skip_connect": lambda c: 0, "none": lambda c: 0, "avg_pool_3x3": lambda c: 0}
    ops = re.findall(r"([a-z_0-9]+)~\d", arch)
    assert len(ops) == 6
    cell = lambda c: sum(edge[op](c) for op in ops)  # noqa: E731
    stem = 3 * C * 9 + bn(C)
    reduction = lambda c: (c * 2 * c * 9 + bn(2 * c)) + (2 * c * 2 * c * 9 + bn(2 * c)) + c * 2 * c  # noqa: E731
    stages = N * cell(C) + reduction(C) + N * cell(2 * C) + reduction(2 * C) + N * cell(4 * C)
    return stem + stages + bn(4 * C) + 4 * C * classes + classes


def test_nb201_parameter_count_formula_by_hand():
    # the formula above, evaluated by hand for the architecture NB201_ARCH (C=16, N=5):
    # stem 432 + 32; cells 5 * 5 nor_conv_3x3 at 16/32/64 channels: 58,400 + 232,000 + 924,800;
    # reductions 14,464 + 57,600; lastact 128; classifier 650
    assert nb201_parameter_count(NB201_ARCH, 16, 5) == 1_288_506


@pytest.mark.parametrize("arch", [
    NB201_ARCH,
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
])
def test_nb201_parameter_count_is_exact(arch):
    net = nb201().network(nas.parse_genotype(arch), 10, C=16, cells_per_stage=5)
    assert nas.count_parameters(net) == nb201_parameter_count(arch, 16, 5)


# -- forward shapes, auxiliary head, drop path --------------------------------------------------
def test_darts_network_outputs_and_auxiliary_head():
    torch.manual_seed(0)
    net = darts().network(nas.parse_genotype(DARTS_V2), 10, auxiliary=True, **TINY_DARTS)
    x = images(2)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    assert torch.isfinite(logits).all() and torch.isfinite(aux).all()
    (logits.sum() + aux.sum()).backward()
    assert net.auxiliary_head.classifier.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        logits, aux = net(x)
    assert logits.shape == (2, 10) and aux is None
    no_aux = darts().network(nas.parse_genotype(DARTS_V2), 10, auxiliary=False, **TINY_DARTS)
    assert no_aux.auxiliary_head is None
    assert no_aux(x)[1] is None


def test_darts_network_drop_path_only_in_training():
    torch.manual_seed(0)
    net = darts().network(nas.parse_genotype(DARTS_V2), 10, auxiliary=False, **TINY_DARTS)
    x = images(4)

    def forward(prob: float, seed: int) -> torch.Tensor:
        net.drop_path_prob = prob
        torch.manual_seed(seed)
        with torch.no_grad():
            return net(x)[0]

    # training: batch statistics of the same input are the same, so without drop path two
    # forwards agree; with drop path the random masks make them differ, unless re-seeded
    net.train()
    torch.testing.assert_close(forward(0.0, 1), forward(0.0, 2), rtol=0, atol=0)
    dropped = forward(0.5, 1)
    assert (dropped - forward(0.5, 2)).abs().max() > 1e-3
    torch.testing.assert_close(dropped, forward(0.5, 1), rtol=0, atol=0)
    assert (dropped - forward(0.0, 1)).abs().max() > 1e-3
    # eval: running statistics, no drop path whatever the probability
    net.eval()
    reference = forward(0.0, 1)
    torch.testing.assert_close(forward(0.5, 1), reference, rtol=0, atol=0)
    torch.testing.assert_close(forward(0.5, 2), reference, rtol=0, atol=0)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean():
    x = torch.ones(4000, 2, 3, 3)
    torch.manual_seed(0)
    y = nas.drop_path(x, 0.3)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    # each sample is either all zero or all 1 / 0.7
    assert torch.equal(per_sample[~kept], torch.zeros_like(per_sample[~kept]))
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    # the dropped fraction is Binomial(4000, 0.3) / 4000: sd 0.0072, allow 5 sd
    assert abs((~kept).float().mean().item() - 0.3) < 0.036
    x2 = torch.randn(5, 2, 2, 2)
    assert nas.drop_path(x2, 0.0) is x2


def test_genotype_cell_never_drops_an_identity():
    torch.manual_seed(0)
    skip = nas.GenotypeCell(((("skip_connect", 0),),), 4, num_inputs=1)
    pool = nas.GenotypeCell(((("avg_pool_3x3", 0),),), 4, num_inputs=1)
    x = torch.randn(64, 4, 4, 4) + 5.0  # positive: an average pool never gives exact zeros
    skip.train(), pool.train()
    assert torch.equal(skip((x,), drop_prob=0.9), x)
    dropped = (pool((x,), drop_prob=0.5).flatten(1) == 0).all(dim=1)
    assert 0 < dropped.sum() < 64
    pool.eval()
    assert not (pool((x,), drop_prob=0.5).flatten(1) == 0).all(dim=1).any()


def test_genotype_cell_skips_none_unless_a_node_has_nothing_else():
    torch.manual_seed(0)
    nodes = ((("none", 0),),                                    # only `none`: it runs
             (("none", 0), ("nor_conv_3x3", 1), ("none", 1)),   # the `none`s are skipped
             (("avg_pool_3x3", 0), ("none", 2)))
    cell = nas.GenotypeCell(nodes, 4, num_inputs=1, affine=False)
    ran = []
    for i, op in enumerate(cell.ops):
        op.register_forward_hook(lambda m, inp, out, i=i: ran.append(i))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    out = cell((x,))
    assert ran == [0, 2, 4]
    ops = cell.ops  # the same sums with every `none` run: equal values and gradients
    n1 = ops[0](x)
    n2 = ops[1](x) + ops[2](n1) + ops[3](n1)
    expected = ops[4](x) + ops[5](n2)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(g, g_ref)


def test_nb201_network_forward():
    """Each cell computes the genotype's edges; the network is stem, cells and residual blocks
    in stage order, then batch-norm, ReLU, global pooling and the classifier."""
    torch.manual_seed(0)
    genotype = nas.parse_genotype(NB201_ARCH)
    net = nb201().network(genotype, 7, C=4, cells_per_stage=2)
    x = images(2, size=8)
    assert check_genotype_cells(net, genotype, x) == 6
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["GenotypeCell"] * 2 + ["ResidualReduction"] + ["GenotypeCell"] * 2 + \
        ["ResidualReduction"] + ["GenotypeCell"] * 2
    with torch.no_grad():
        h = net.stem(x)
        for layer in net.layers:
            h = layer((h,)) if isinstance(layer, nas.GenotypeCell) else layer(h)
        assert h.shape == (2, 16, 2, 2)
        expected = net.classifier(torch.relu(net.lastact[0](h)).mean((2, 3)))
        out = net(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    other = nb201().network(nas.parse_genotype(NB201_ARCH.replace("skip_connect~0", "none~0")), 7,
                            C=4, cells_per_stage=2).eval()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other(x), out)  # the wiring shows in the output


# -- GDAS-FRC -------------------------------------------------------------------------------------
def test_fixed_reduction_supernet_genotype_and_network():
    torch.manual_seed(0)
    model = darts().supernet(10, "gdas", seed=0, fixed_reduction=True, **TINY_DARTS)
    assert set(model.arch_logits) == {"normal"}
    assert [type(c) is FixedReductionCell for c in model.cells] == [False, True, True]
    out = model(images(2, size=8))
    out.sum().backward()
    assert model.arch_logits["normal"].grad.abs().sum() > 0

    genotype = model.genotype()
    assert set(genotype.cells) == {"normal"}
    assert len(genotype.cells["normal"]) == 4 and all(len(n) == 2 for n in genotype.cells["normal"])
    net = darts().network(genotype, 10, auxiliary=True, **TINY_DARTS)
    assert [type(c) is FixedReductionCell for c in net.cells] == [False, True, True]
    net.train()
    logits, aux = net(images(2, size=16))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    net.drop_path_prob = 0.3
    assert net(images(2, size=16))[0].shape == (2, 10)


def test_fixed_reduction_genotype_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = darts().supernet(10, "gdas", seed=0, fixed_reduction=True, **TINY_DARTS)
    genotype = model.genotype()
    genotype.save(tmp_path / "genotype.json")
    assert nas.parse_genotype(str(tmp_path)) == genotype


# -- genotypes that do not fit --------------------------------------------------------------------
def check_one_line_input_error(build, pattern: str) -> str:
    with pytest.raises(nas.InputError, match=pattern) as info:
        build()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_nb201_genotype_does_not_fit_darts():
    g = nas.parse_genotype(NB201_ARCH)
    check_one_line_input_error(lambda: darts().network(g, 10, **TINY_DARTS),
                         r"does not fit the darts space.*\['cell'\]")


def test_darts_genotype_does_not_fit_nb201():
    g = nas.parse_genotype(DARTS_V2)
    check_one_line_input_error(lambda: nb201().network(g, 10, C=4, cells_per_stage=1),
                         "does not fit the nasbench201 space")
    two_nodes = nas.parse_genotype("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|")
    check_one_line_input_error(lambda: nb201().network(two_nodes, 10, C=4, cells_per_stage=1),
                         "needs one cell 'cell' of 3 nodes")


def test_darts_genotype_with_an_input_out_of_range():
    g = nas.parse_genotype(DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 6)"))
    check_one_line_input_error(lambda: darts().network(g, 10, **TINY_DARTS),
                         r"normal cell: node 3 reads state 6, but only states 0\.\.4 exist")
    # a negative index is refused when the genotype is read, before any network is built
    check_one_line_input_error(lambda: nas.parse_genotype(DARTS_V2.replace(
        "('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2)",
        "('max_pool_3x3', -1), ('max_pool_3x3', 1), ('skip_connect', 2)")),
        r"state index must be a whole number in \[0, 10000\), got -1")
    g = nas.parse_genotype(DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 9]"))
    check_one_line_input_error(lambda: darts().network(g, 10, **TINY_DARTS),
                         r"normal cell: concat names state 9")


def test_unknown_op_name_suggests_the_closest():
    g = nas.parse_genotype(DARTS_V2.replace("('dil_conv_3x3', 2)", "('sep_conv_3x4', 2)"))
    message = check_one_line_input_error(lambda: darts().network(g, 10, **TINY_DARTS),
                                   "unknown op 'sep_conv_3x4'; did you mean 'sep_conv_3x3'")
    assert "normal cell" in message
    g = nas.parse_genotype(NB201_ARCH.replace("skip_connect", "skip_conect"))
    check_one_line_input_error(lambda: nb201().network(g, 10, C=4, cells_per_stage=1),
                         "did you mean 'skip_connect'")


def test_build_network_checks_options():
    g = nas.parse_genotype(DARTS_V2)
    net = nas.build_network("darts", g, 10, {**TINY_DARTS, "auxiliary": False})
    assert len(net.cells) == 3 and net.auxiliary_head is None
    check_one_line_input_error(lambda: nas.build_network("darts", g, 10, {"cell": 3}),
                         "network.cell: unknown key; did you mean 'cells'")


# -- registry -------------------------------------------------------------------------------------
def test_builtin_spaces_come_from_entry_points():
    entries = {e.name: e for e in nas.SEARCH_SPACES.entries()}
    for name, module in (("darts", "search_spaces.darts:SPACE"),
                         ("nasbench201", "search_spaces.nasbench201:SPACE")):
        entry = entries[name]
        assert entry.error is None
        assert entry.source.startswith("entry point"), entry.source
        assert module in entry.source
        assert isinstance(entry.obj, nas.SearchSpace)
        assert entry.obj is nas.SEARCH_SPACES.get(name)
        assert entry.obj.network is not None and entry.obj.description
    assert {"darts", "nasbench201"} <= set(nas.SEARCH_SPACES.names())


# -- MACs ----------------------------------------------------------------------------------------
def test_count_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    conv = 8 * 6 * 6 * (3 * 3 * 3)  # output elements x multiply-adds per output
    linear = 5 * (8 * 6 * 6)
    assert nas.count_macs(model, (1, 3, 6, 6)) == conv + linear == 9216
    assert nas.count_macs(model, (4, 3, 6, 6)) == conv + linear  # per image
    assert model.training  # the mode is restored

    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, groups=2, bias=False), nn.Flatten(),
                            nn.Linear(8 * 3 * 3, 2, bias=False))
    # 7x7 -> 3x3; each output reads 4/2 input channels x 3x3
    assert nas.count_macs(grouped, (1, 4, 7, 7)) == 8 * 3 * 3 * 2 * 9 + 2 * 72 == 1440


# -- a derived network computes the supernet's argmax subnetwork ---------------------------------
def _copy_supernet_weights(supernet: nn.Module, net: nn.Module, genotype: nas.Genotype,
                           cell_prefix: str, num_inputs: int, kind_of, ops: tuple[str, ...]) -> None:
    """Load the supernet's weights into ``net``: edge e / op i of the supernet cell becomes the
    genotype's k-th op of the same cell; the rest (stem, preprocessing, classifier) by name."""
    source = supernet.state_dict()
    mapping = {}
    for c, module in enumerate(getattr(net, cell_prefix)):
        kind = kind_of(module)
        if kind is None:
            continue
        k, start = 0, 0
        for node, edges in enumerate(genotype.cells[kind]):
            for op, src in edges:
                mapping[f"{cell_prefix}.{c}.{'cell.' if cell_prefix == 'cells' else ''}ops.{k}."] = \
                    f"{cell_prefix}.{c}.{'cell.' if cell_prefix == 'cells' else ''}edges.{start + src}.ops.{ops.index(op)}."
                k += 1
            start += num_inputs + node
    target = {}
    for key, value in net.state_dict().items():
        src_key = key
        for new, old in mapping.items():
            if key.startswith(new):
                src_key = old + key[len(new):]
        target[key] = source[src_key] if src_key in source else value
    net.load_state_dict(target)


def _randomize_bn_statistics(model: nn.Module) -> None:
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.5)


def _genotype_edges(genotype: nas.Genotype, kind: str, num_inputs: int) -> set[tuple[int, str]]:
    edges, start = set(), 0
    for node, incoming in enumerate(genotype.cells[kind]):
        edges |= {(start + src, op) for op, src in incoming}
        start += num_inputs + node
    return edges


def test_darts_network_equals_the_supernet_argmax_subnetwork():
    torch.manual_seed(0)
    supernet = darts().supernet(10, "gdas", seed=0, **TINY_DARTS)
    ops = supernet.ops
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for logits in supernet.arch_parameters():
            # per node, two random edges with a clear non-none winner; every other edge 'none'
            logits.zero_()
            logits[:, 0] = 5.0
            start = 0
            for node in range(4):
                count = 2 + node
                chosen = (start + torch.randperm(count, generator=g)[:2]).tolist()
                for j, e in enumerate(chosen):
                    logits[e, 0] = 0.0
                    logits[e, int(torch.randint(1, 8, (), generator=g))] = 6.0 - j
                start += count
    genotype = supernet.genotype()
    for kind, logits in supernet.arch_logits.items():
        # the supernet's argmax network runs exactly the genotype's ops, and 'none' elsewhere
        argmax = logits.argmax(-1).tolist()
        assert {(e, ops[i]) for e, i in enumerate(argmax) if i != 0} == \
            _genotype_edges(genotype, kind, 2)
    net = darts().network(genotype, 10, auxiliary=False, affine=False, pool_bn=True, **TINY_DARTS)
    _randomize_bn_statistics(supernet)
    _copy_supernet_weights(supernet, net, genotype, "cells", 2,
                           lambda cell: "reduce" if cell.reduction else "normal", ops)
    supernet.eval(), net.eval()
    x = images(2, size=8, seed=3)
    with torch.no_grad():
        expected, (got, _) = supernet(x), net(x)
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_nb201_network_equals_the_supernet_argmax_subnetwork():
    torch.manual_seed(0)
    supernet = nb201().supernet(10, "gdas", seed=0, C=4, cells_per_stage=1, track_running_stats=True)
    chosen = ["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_3x3"]
    with torch.no_grad():
        logits = supernet.arch_logits["cell"]
        logits.normal_()
        for e, op in enumerate(chosen):
            logits[e, supernet.ops.index(op)] = 4.0
    genotype = supernet.genotype()
    assert str(genotype) == ("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|"
                             "+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|")
    net = nb201().network(genotype, 10, C=4, cells_per_stage=1)
    _randomize_bn_statistics(supernet)
    _copy_supernet_weights(supernet, net, genotype, "layers", 1,
                           lambda layer: "cell" if isinstance(layer, nas.GenotypeCell) else None,
                           supernet.ops)
    supernet.eval(), net.eval()
    x = images(2, size=8, seed=4)
    with torch.no_grad():
        expected = supernet(x)
        assert expected.std() > 1e-3
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)


def test_nb201_all_cells_enumerates_the_space_once_in_product_order():
    cells = [g.to_nb201_string() for g in all_cells()]
    assert len(cells) == len(set(cells)) == 5 ** 6
    assert cells[0] == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert cells[1] == "|none~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"
    assert cells[-1] == "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|" \
                        "avg_pool_3x3~1|avg_pool_3x3~2|"
    assert len({g.to_nb201_string() for g in all_cells(("none", "skip_connect"))}) == 2 ** 6
    assert cell(["skip_connect"] * 5 + ["nor_conv_3x3"]).to_nb201_string() == \
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|nor_conv_3x3~2|"
    with pytest.raises(ValueError, match="6 edges, got 5 ops"):
        cell(["none"] * 5)
