"""Tests of nas.genotype: string and JSON forms, parsing errors, and deriving a genotype from
architecture weights (directly and through the built-in supernets)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import nas
from conftest import DARTS_V2
from nas.genotype import Genotype, derive_cell, edge_inputs, parse_darts, parse_genotype, parse_nb201

ROOT = Path(__file__).resolve().parents[1]
DARTS_V2_RANGE = DARTS_V2.replace("[2, 3, 4, 5]", "range(2, 6)")
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DARTS_EDGES = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3),
               (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]


def darts_v2() -> Genotype:
    normal = [[("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
              [("sep_conv_3x3", 1), ("skip_connect", 0)], [("skip_connect", 0), ("dil_conv_3x3", 2)]]
    reduce = [[("max_pool_3x3", 0), ("max_pool_3x3", 1)], [("skip_connect", 2), ("max_pool_3x3", 1)],
              [("max_pool_3x3", 0), ("skip_connect", 2)], [("skip_connect", 2), ("max_pool_3x3", 1)]]
    return Genotype({"normal": normal, "reduce": reduce},
                    {"normal": (2, 3, 4, 5), "reduce": (2, 3, 4, 5)}, space="darts")


# -- string forms -------------------------------------------------------------------------------
def test_darts_v2_string_round_trips_exactly():
    g = parse_genotype(DARTS_V2)
    assert g == darts_v2()
    assert g.cells["normal"][3] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert str(g) == DARTS_V2
    assert g.to_darts_string() == DARTS_V2
    assert parse_genotype(str(g)) == g


def test_darts_range_concat_parses_to_the_same_genotype():
    g = parse_genotype(DARTS_V2_RANGE)
    assert g == darts_v2()
    assert g.concat == {"normal": (2, 3, 4, 5), "reduce": (2, 3, 4, 5)}
    assert str(g) == DARTS_V2
    # without concat fields, the default is every intermediate node
    bare = DARTS_V2.replace(", normal_concat=[2, 3, 4, 5]", "").replace(", reduce_concat=[2, 3, 4, 5]", "")
    assert parse_darts(bare) == darts_v2()


def test_nb201_string_round_trips_exactly():
    g = parse_genotype(NB201)
    assert g.space == "nasbench201"
    assert g.cells == {"cell": ((("nor_conv_3x3", 0),),
                                (("nor_conv_3x3", 0), ("avg_pool_3x3", 1)),
                                (("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2)))}
    assert g.concat == {}
    assert str(g) == NB201 == g.to_nb201_string()
    assert parse_genotype(f"  {NB201}\n") == g


def test_string_forms_refuse_the_wrong_cells():
    with pytest.raises(ValueError):
        parse_genotype(NB201).to_darts_string()
    with pytest.raises(ValueError):
        darts_v2().to_nb201_string()


# -- JSON -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [DARTS_V2, NB201])
def test_json_file_round_trip(text, tmp_path):
    g = parse_genotype(text)
    path = tmp_path / "g.json"
    g.save(path)
    assert not (tmp_path / "g.json.tmp").exists()
    data = json.loads(path.read_text())
    assert data["string"] == text and data["space"] == g.space
    assert Genotype.load(path) == g
    assert Genotype.from_dict(g.to_dict()) == g
    assert str(Genotype.load(path)) == text


def test_parse_genotype_accepts_every_form(tmp_path):
    g = darts_v2()
    run = tmp_path / "run"
    run.mkdir()
    g.save(run / "genotype.json")
    assert parse_genotype(str(run / "genotype.json")) == g     # a file
    assert parse_genotype(str(run)) == g                       # a run directory
    assert parse_genotype(json.dumps(g.to_dict())) == g        # JSON text
    assert parse_genotype(DARTS_V2) == g                       # DARTS string
    assert parse_genotype(NB201) == parse_nb201(NB201)         # NB201 string


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('sep_conv_3x3', 0), ], reduce=[)", "cannot parse DARTS genotype string"),
    ("Genotype(normal=[('sep_conv_3x3', 0)]", "not a DARTS genotype string"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0)], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)])", "'normal' must be a list of .* two per node"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)])", "'reduce' must be a list"),
    ("Genotype(normal=[('sep_conv_3x3', 0, 1), ('sep_conv_3x3', 1)], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)])", "'normal' must hold \\(op, input\\) pairs"),
    ("Genotype(normal=ops, reduce=[])", "cannot parse DARTS genotype string"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3|", "node 2 is '\\|nor_conv_3x3\\|'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~x|", "not a NAS-Bench-201 string: node 2"),
    ("|nor_conv_3x3~0", "not a NAS-Bench-201 string: node 1"),
    ('{"cell": 1}', "not a genotype: expected a mapping with a 'cells' key"),
    ('{"cells": ', "genotype JSON text does not parse"),
    ("no/such/genotype.json", "genotype file not found: no/such/genotype.json"),
        ("DARTS_V22", "neither a genotype file.*published genotype; did you mean 'DARTS_V2'"),
])
def test_bad_genotype_text_is_an_input_error(text, message):
    with pytest.raises(nas.InputError, match=message) as info:
        parse_genotype(text)
    assert "\n" not in str(info.value)


def test_bad_genotype_files_are_input_errors(tmp_path):
    with pytest.raises(nas.InputError, match="genotype file not found"):
        Genotype.load(tmp_path / "missing.json")
    with pytest.raises(nas.InputError, match="genotype file not found: .*missing.json"):
        parse_genotype(str(tmp_path / "missing.json"))
    with pytest.raises(nas.InputError, match="is a directory without genotype.json"):
        parse_genotype(str(tmp_path))  # a directory without genotype.json
    bad = tmp_path / "genotype.json"
    bad.write_text("normal: [sep_conv_3x3]\n")
    with pytest.raises(nas.InputError, match="is not a genotype JSON file"):
        parse_genotype(str(bad))
    with pytest.raises(nas.InputError, match="is not a genotype JSON file"):
        parse_genotype(str(tmp_path))  # the run directory form reaches the same file
    bad.write_text("[1, 2]")
    with pytest.raises(nas.InputError, match="no 'cells' key"):
        Genotype.load(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(nas.InputError, match="is not a genotype JSON file"):
        Genotype.load(bad)


N2 = "[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]"


@pytest.mark.parametrize("text", [
    f"Genotype(normal={N2}, normal_concat=range('x'), reduce={N2}, reduce_concat=[2])",
    f"Genotype(normal={N2}, normal_concat=['a'], reduce={N2}, reduce_concat=[2])",
    f"Genotype(normal={N2}, normal_concat=5, reduce={N2}, reduce_concat=[2])",
    "Genotype(normal={[1]: 2}, reduce=[])",
])
def test_malformed_darts_concat_is_an_input_error(text):
    with pytest.raises(nas.InputError):
        parse_genotype(text)


@pytest.mark.parametrize("text", ['{"cells": [["sep_conv_3x3", 0]]}',
                                  '{"cells": {"cell": [[["skip_connect", 0]]]}, "concat": [1]}'])
def test_genotype_json_with_lists_for_dicts_is_an_input_error(text):
    with pytest.raises(nas.InputError):
        parse_genotype(text)


def test_genotype_with_other_cells_has_a_string_and_saves(tmp_path):
    g = Genotype({"normal": darts_v2().cells["normal"]}, {"normal": (2, 3, 4, 5)}, space="darts")
    text = str(g)
    assert "sep_conv_3x3" in text
    g.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == g
    parsed = parse_genotype(text)
    assert (parsed.cells, parsed.concat) == (g.cells, g.concat)


# -- edge order and derivation ------------------------------------------------------------------
def test_edge_inputs_order():
    assert edge_inputs(2, 4) == DARTS_EDGES
    assert edge_inputs(1, 3) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert edge_inputs(2, 0) == []


def darts_weights(rows: dict[int, dict[str, float]]) -> torch.Tensor:
    """[14, 8] logits: zero except the given {edge: {op: logit}} entries."""
    w = torch.zeros(14, len(DARTS_OPS))
    for e, ops in rows.items():
        for op, value in ops.items():
            w[e, DARTS_OPS.index(op)] = value
    return w


# Edges: node0 = e0 (s0), e1 (s1); node1 = e2..e4; node2 = e5..e8; node3 = e9..e13.
HAND_LOGITS = {
    # node 0: input 1 is stronger, so it comes first
    1: {"dil_conv_5x5": 1.0},
    # node 1: inputs 1 and 2 tie exactly (identical rows); the lower input comes first
    3: {"avg_pool_3x3": 2.0}, 4: {"avg_pool_3x3": 2.0},
    # node 2: on edge 5 'none' dominates, but the edge is ranked (and named) by its strongest
    # other op, sep_conv_3x3, which still beats every other edge of the node
    5: {"none": 10.0, "sep_conv_3x3": 9.5}, 7: {"skip_connect": 0.5},
    # node 3: edge 9 is all 'none' (excluded), edges 13 > 11 > 10
    9: {"none": 10.0}, 10: {"skip_connect": 2.0}, 11: {"dil_conv_3x3": 3.0}, 13: {"sep_conv_5x5": 5.0},
}
HAND_NODES = (
    (("dil_conv_5x5", 1), ("max_pool_3x3", 0)),  # edge 0: all ops tie -> first non-none op
    (("avg_pool_3x3", 1), ("avg_pool_3x3", 2)),
    (("sep_conv_3x3", 0), ("skip_connect", 2)),
    (("sep_conv_5x5", 4), ("dil_conv_3x3", 2)),
)


def test_derive_cell_darts_rule_from_hand_set_weights():
    probs = darts_weights(HAND_LOGITS).softmax(-1)
    assert derive_cell(probs, DARTS_OPS, num_inputs=2, keep=2) == HAND_NODES
    # uniform weights: every op of every edge ties -> first non-none op, lowest inputs
    uniform = derive_cell(torch.full((14, 8), 0.125), DARTS_OPS, num_inputs=2, keep=2)
    assert uniform == tuple((("max_pool_3x3", 0), ("max_pool_3x3", 1)) for _ in range(4))
    # keep=1 and a longer exclude list
    probs = darts_weights(HAND_LOGITS).softmax(-1)
    nodes = derive_cell(probs, DARTS_OPS, num_inputs=2, keep=1, exclude=("none", "skip_connect"))
    assert nodes == ((("dil_conv_5x5", 1),), (("avg_pool_3x3", 1),), (("sep_conv_3x3", 0),),
                     (("sep_conv_5x5", 4),))


def test_derive_cell_keep_none_keeps_every_edge_with_none_allowed():
    w = torch.zeros(6, 5)
    for e, op in enumerate(["nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "none"]):
        w[e, NB201_OPS.index(op)] = 1.0 + e
    nodes = derive_cell(w, NB201_OPS, num_inputs=1, keep=None)
    assert nodes == ((("nor_conv_3x3", 0),),
                     (("none", 0), ("avg_pool_3x3", 1)),
                     (("skip_connect", 0), ("nor_conv_1x1", 1), ("none", 2)))


@pytest.mark.parametrize("shape, ops, inputs", [((13, 8), DARTS_OPS, 2), ((14, 7), DARTS_OPS, 2),
                                                ((7, 5), NB201_OPS, 1)])
def test_derive_cell_rejects_weights_of_the_wrong_shape(shape, ops, inputs):
    with pytest.raises(ValueError, match=r"do not (fit|make) a cell with \d inputs"):
        derive_cell(torch.zeros(shape), ops, num_inputs=inputs)


def test_derive_cell_keeps_two_inputs_by_default_and_counts_nodes_from_zero():
    probs = darts_weights(HAND_LOGITS).softmax(-1)
    assert derive_cell(probs, DARTS_OPS, num_inputs=2) == HAND_NODES
    assert nas.genotype.num_nodes(0, 2) == 0 and nas.genotype.num_nodes(2, 2) == 1
    assert nas.genotype.num_nodes(14, 2) == 4 and nas.genotype.num_nodes(6, 1) == 3
    with pytest.raises(ValueError, match="4 edges do not make a cell with 2 inputs"):
        nas.genotype.num_nodes(4, 2)


def tiny_supernet(space: str, **options) -> nas.Supernet:
    torch.manual_seed(0)
    opts = {"darts": {"C": 4, "cells": 3}, "nasbench201": {"C": 4, "cells_per_stage": 1}}[space]
    return nas.SEARCH_SPACES.get(space).supernet(10, "gdas", seed=0, **{**opts, **options})


def test_darts_supernet_genotype_from_hand_set_logits():
    model = tiny_supernet("darts")
    reduce_logits = darts_weights({e: {"max_pool_3x3": 1.0} for e in range(14)})
    reduce_logits[[2, 5, 9], DARTS_OPS.index("skip_connect")] = 3.0  # edges from input 0
    with torch.no_grad():
        model.arch_logits["normal"].copy_(darts_weights(HAND_LOGITS))
        model.arch_logits["reduce"].copy_(reduce_logits)
    g = model.genotype()
    expected_reduce = ((("max_pool_3x3", 0), ("max_pool_3x3", 1)),) + tuple(
        (("skip_connect", 0), ("max_pool_3x3", 1)) for _ in range(3))
    assert g == Genotype({"normal": HAND_NODES, "reduce": expected_reduce},
                         {"normal": (2, 3, 4, 5), "reduce": (2, 3, 4, 5)}, space="darts")
    assert parse_genotype(str(g)) == g


def test_darts_genotype_uses_softmax_strength_not_raw_logits():
    """DARTS ranks edges by the softmax probability of their best non-none op, so a large
    'none' logit weakens its edge although the edge's best op has the largest raw logit."""
    model = tiny_supernet("darts", fixed_reduction=True)
    logits = torch.zeros(14, 8)
    logits[0, DARTS_OPS.index("none")] = 8.0
    logits[0, DARTS_OPS.index("sep_conv_3x3")] = 6.0   # p ~ 0.12: weaker than edge 1
    logits[1, DARTS_OPS.index("dil_conv_3x3")] = 2.0   # p ~ 0.51
    with torch.no_grad():
        model.arch_logits["normal"].copy_(logits)
    g = model.genotype()
    assert set(g.cells) == {"normal"} and g.space == "darts"
    assert g.cells["normal"][0] == (("dil_conv_3x3", 1), ("sep_conv_3x3", 0))


def test_nb201_supernet_genotype_is_the_argmax_with_none_allowed():
    model = tiny_supernet("nasbench201")
    logits = torch.zeros(6, 5)
    for e, op in enumerate(["nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "none"]):
        logits[e, NB201_OPS.index(op)] = 1.0
    with torch.no_grad():
        model.arch_logits["cell"].copy_(logits)
    g = model.genotype()
    assert g.space == "nasbench201"
    assert str(g) == "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    assert parse_genotype(str(g)) == g


def test_genotype_is_immutable_and_normalised():
    g = Genotype({"cell": [[["skip_connect", "0"]]]}, {"cell": ["1"]})
    assert g.cells == {"cell": ((("skip_connect", 0),),)}
    assert g.concat == {"cell": (1,)}
    with pytest.raises(AttributeError):
        g.space = "x"  # type: ignore[misc]
    assert g.inputs == {"cell": 1}  # inferred: node 0 reads state 0
    # a concat has no place in the NAS-Bench-201 string: the text form is the JSON, exact
    assert str(g).startswith('{"space": ""') and parse_genotype(str(g)) == g
    assert str(Genotype(g.cells)) == "|skip_connect~0|"


# -- the text form of every space: a property over random genotypes -----------------------------
SPACES = {  # name -> (the space as a config names it, supernet options)
    "darts": ("darts", {"C": 2, "cells": 3}),
    "darts-frc": ("darts", {"C": 4, "cells": 3, "fixed_reduction": True}),
    "nasbench201": ("nasbench201", {"C": 2, "cells_per_stage": 1}),
    "example_plugin": (f"{ROOT / 'scripts' / 'example_plugin.py'}:SPACE", {"C": 2}),
    "example_plugin_concat": (f"{ROOT / 'scripts' / 'example_plugin_concat.py'}:SPACE", {"C": 2}),
    "mbconv": ("mbconv", {"stem": 2, "widths": [2, 4], "layers": [2, 1], "strides": [1, 2], "head": 0}),
}


def random_genotype(rng: random.Random, model: nas.Supernet, space: str) -> Genotype:
    """A random genotype of the shape ``model`` derives: random ops, inputs and (where the space
    has one) concat, so the text form is tried on more than argmax cells."""
    template = model.genotype()
    if template.layers:  # a chain: a random candidate per layer
        return Genotype({}, space=template.space, layers={
            p.name: rng.choice(p.ops) for p in model.choice_points()})
    cells, concat = {}, {}
    for kind, nodes in template.cells.items():
        first, ops = template.inputs[kind], model.op_names[kind]
        cells[kind] = [[(rng.choice(ops), rng.randrange(first + i) if len(node) < first + i else src)
                        for _, src in node] for i, node in enumerate(nodes)]
        if template.concat.get(kind):
            states = range(first + len(nodes))
            concat[kind] = sorted(rng.sample(states, rng.randint(1, len(states))))
    return Genotype(cells, concat, space=template.space or space, inputs=template.inputs)


@pytest.mark.parametrize("name", list(SPACES))
def test_the_text_form_names_the_space_and_reads_back_for_every_space(name):
    space, options = SPACES[name]
    rng = random.Random(name)
    model = nas.build_supernet(space, 10, "gdas", options=options)
    for trial in range(40):
        with torch.no_grad():
            for logits in model.arch_parameters():
                logits.copy_(torch.randn(logits.shape, generator=torch.Generator().manual_seed(trial)))
        derived = model.genotype()
        derived = derived if derived.space else Genotype(derived.cells, derived.concat, space,
                                                         inputs=derived.inputs)  # as search stamps it
        for g in (derived, random_genotype(rng, model, space)):
            text = str(g)
            assert parse_genotype(text) == g, text
            assert parse_genotype(text).space == g.space == (
                space if ":" in space else {"darts": "darts", "nasbench201": "nasbench201",
                                            "mbconv": "mbconv"}[space])
            assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
            # the published forms stay as they were; any other space's is its JSON
            if name == "darts":
                assert text.startswith("Genotype(normal=[")
            elif name == "nasbench201":
                assert text.startswith("|") and "~" in text
            elif name == "mbconv":
                assert text.startswith("Chain[mbconv](stage1.layer1=")
            else:
                assert json.loads(text)["space"] == g.space


def test_a_plugin_genotype_of_darts_shape_keeps_its_own_space():
    """The bug behind the JSON text form: a plugin's {normal, reduce} genotype used to print as a
    DARTS string, which reads back as another cell in the darts space."""
    nodes = [[("conv", 0)], [("conv", 0), ("pool", 1)], [("conv", 1), ("pool", 0), ("conv", 2)]]
    g = Genotype({"normal": nodes, "reduce": nodes}, {"normal": (2, 3), "reduce": (2, 3)},
                 space="my_space.py:SPACE")
    assert g.inputs == {"normal": 1, "reduce": 1} and not g.fits_darts_string()
    assert parse_genotype(str(g)) == g
    darts_shaped = Genotype(darts_v2().cells, darts_v2().concat, space="other_space")
    assert str(darts_shaped).startswith("{") and parse_genotype(str(darts_shaped)) == darts_shaped
    with pytest.raises(nas.InputError, match="'inputs' must give each cell kind"):
        Genotype({"cell": nodes}, inputs={"cell": 0})


def test_cell_titles_never_say_cell_twice():
    from nas.genotype import cell_title
    assert [cell_title(k) for k in ("normal", "reduce", "cell", "stem_cell")] == \
        ["normal cell", "reduce cell", "cell", "stem_cell"]
