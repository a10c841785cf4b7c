"""Tests of nas.supernet (sampling modes, the GDAS estimator, parameters, seeding) on tiny
supernets of both built-in search spaces.

The networks are tiny (C=4, 8x8 images, batch 2) so that the whole file runs in seconds on a
2-core CPU. DARTS with ``cells=3`` has one normal cell (cell 0) and two reduction cells (cells 1
and 2, at cells//3 and 2*cells//3), so both cell kinds, and two cells sharing one sample, are
exercised. NAS-Bench-201 with ``cells_per_stage=1`` has three cells sharing one sample.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nas

SPACES = {"darts": {"C": 4, "cells": 3}, "nasbench201": {"C": 4, "cells_per_stage": 1}}
KINDS = {"darts": ("normal", "reduce"), "nasbench201": ("cell",)}
NUM_OPS = {"darts": 8, "nasbench201": 5}
EDGES = {"darts": 14, "nasbench201": 6}
IMAGE = 8
CLASSES = 10


def make(space: str, mode: str, seed: int = 0, init_seed: int = 0, **options) -> nas.Supernet:
    """A tiny supernet; ``init_seed`` fixes weights and logits, ``seed`` the sample stream."""
    torch.manual_seed(init_seed)
    opts = {**SPACES[space], **options}
    return nas.SEARCH_SPACES.get(space).supernet(CLASSES, mode, seed=seed, **opts)


def batch(seed: int = 0, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE, IMAGE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def search_cells(model: nas.Supernet) -> list[nas.SearchCell]:
    return [m for m in model.modules() if isinstance(m, nas.SearchCell)]


def kind_of(space: str, cell: nas.SearchCell) -> str:
    if space == "nasbench201":
        return "cell"
    return "reduce" if cell.reduction else "normal"


def expected_runs(model: nas.Supernet, space: str) -> set[tuple[int, int, int]]:
    """The (cell, edge, op) modules a gdas forward runs for ``model.last_index``: each edge's
    sampled op, except a sampled `none` (it adds zeros), unless every edge of its node sampled
    `none`: then the node's first edge runs it."""
    runs = set()
    for c, cell in enumerate(search_cells(model)):
        index, e = model.last_index[kind_of(space, cell)].tolist(), 0
        for node in range(cell.num_nodes):
            edges = range(e, e + cell.num_inputs + node)
            real = [j for j in edges if cell.edges[j].op_names[index[j]] != "none"]
            runs.update((c, j, index[j]) for j in real or edges[:1])
            e = edges.stop
    return runs


def name_order_softmax(model: nas.Supernet, kind: str) -> torch.Tensor:
    """softmax(logits) summed with the ops in name order, as the supernet computes it (so that a
    reordered op list gives the same weights to the bit)."""
    order = nas.supernet.canonical_order(model.op_names[kind])
    inverse = torch.argsort(torch.tensor(order))
    return model.arch_logits[kind][:, order].softmax(-1)[:, inverse]


def randomize_logits(model: nas.Supernet, seed: int = 0, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


def test_tiny_darts_supernet_has_both_cell_kinds():
    """Guards the premise of the other tests: cells=3 gives 1 normal and 2 reduction cells."""
    model = make("darts", "gdas")
    kinds = [kind_of("darts", c) for c in search_cells(model)]
    assert kinds == ["normal", "reduce", "reduce"]
    assert all(len(c.edges) == 14 for c in search_cells(model))
    assert all(len(e.ops) == 8 for c in search_cells(model) for e in c.edges)


def test_unknown_mode_is_an_input_error():
    with pytest.raises(nas.InputError, match="unknown sampling mode 'hard'.*gdas, st, gumbel, softmax"):
        make("darts", "hard")


# -- 1. every mode trains both the logits and the weights ---------------------------------------
@pytest.mark.parametrize("mode", nas.MODES)
@pytest.mark.parametrize("space", SPACES)
def test_every_mode_gives_gradients_to_logits_and_weights(space, mode):
    model = make(space, mode, seed=1)
    x, y = batch()
    out = model(x)
    assert out.shape == (2, CLASSES)
    F.cross_entropy(out, y).backward()

    assert set(model.arch_logits) == set(KINDS[space])
    for kind, logits in model.arch_logits.items():
        grad = logits.grad
        assert grad is not None, kind
        assert torch.isfinite(grad).all(), kind
        assert grad.abs().sum() > 0, kind
        if mode in ("softmax", "gumbel"):
            # every op of every edge contributes to the output: every row moves
            assert (grad.abs().sum(dim=1) > 0).all(), kind

    for p in model.weight_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    assert model.stem[0].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.classifier.bias.grad.abs().sum() > 0
    op_grads = [p.grad for cell in search_cells(model) for edge in cell.edges
                for p in edge.ops.parameters() if p.grad is not None]
    assert op_grads, "no op parameter of any mixed edge got a gradient"
    assert any(g.abs().sum() > 0 for g in op_grads)


# -- 2. gdas runs exactly the sampled op of each edge -------------------------------------------
@pytest.mark.parametrize("space", SPACES)
def test_gdas_runs_exactly_the_sampled_op_per_edge(space):
    model = make(space, "gdas", seed=4)
    cells = search_cells(model)
    ran: list[tuple[int, int, int]] = []
    handles = []
    for c, cell in enumerate(cells):
        for e, edge in enumerate(cell.edges):
            for i, op in enumerate(edge.ops):
                handles.append(op.register_forward_hook(
                    lambda module, inp, out, key=(c, e, i): ran.append(key)))
    x, y = batch()
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()

    num_edges = sum(len(cell.edges) for cell in cells)
    assert num_edges == len(cells) * EDGES[space]
    assert set(model.last_index) == set(KINDS[space])
    for kind in KINDS[space]:
        assert model.last_index[kind].shape == (EDGES[space],)
    # at most one op per edge, the sampled one (every cell of a kind runs the one sample of that
    # kind), and a sampled `none` only where its node has nothing else to sum
    assert len(ran) == len(set(ran)) and set(ran) == expected_runs(model, space)
    nones = sum(int(model.last_index[kind_of(space, cell)][e]) == 0
                for cell in cells for e in range(len(cell.edges)))
    assert nones > 0 and len(ran) < num_edges  # this sample exercises the skipped `none`

    F.cross_entropy(out, y).backward()
    sampled_with_params = 0
    for cell in cells:
        index = model.last_index[kind_of(space, cell)]
        for e, edge in enumerate(cell.edges):
            for i, op in enumerate(edge.ops):
                params = list(op.parameters())
                if i == int(index[e]):
                    assert all(p.grad is not None for p in params), (e, edge.op_names[i])
                    sampled_with_params += bool(params)
                else:
                    assert all(p.grad is None for p in params), (e, edge.op_names[i])
    assert sampled_with_params > 0  # the check above was not vacuous


# -- 3. gdas and st: same sample, same forward, same gradients where they must agree ------------
def _capture_samples(monkeypatch) -> list[torch.Tensor]:
    """Record (with retained gradients) the weights of every sample the supernet hands its
    cells, one per cell kind, in the order of ``arch_logits``."""
    captured: list[torch.Tensor] = []
    real = nas.Supernet.sample

    def recording(self):
        drawn = real(self)
        for sample in drawn.values():
            sample.weights.retain_grad()
            captured.append(sample.weights)
        return drawn

    monkeypatch.setattr(nas.Supernet, "sample", recording)
    return captured


@pytest.mark.parametrize("space", SPACES)
def test_gdas_and_st_agree_for_the_same_sample(space, monkeypatch):
    captured = _capture_samples(monkeypatch)
    x, _ = batch(3)
    r = torch.randn(2, CLASSES, generator=torch.Generator().manual_seed(4))
    runs = {}
    for mode in ("gdas", "st"):
        captured.clear()
        model = make(space, mode, seed=7, init_seed=5)
        out = model(x)
        (out * r).sum().backward()
        runs[mode] = (model, out, dict(zip(model.arch_logits, captured)))
    (gdas, out_g, hard_g), (st, out_s, hard_s) = runs["gdas"], runs["st"]

    for kind in KINDS[space]:
        assert torch.equal(gdas.last_index[kind], st.last_index[kind])
        # both forwards used the same exact one-hot weights
        expected = F.one_hot(gdas.last_index[kind], NUM_OPS[space]).float()
        assert torch.equal(hard_g[kind].detach(), expected)
        assert torch.equal(hard_s[kind].detach(), expected)

    # The hard weights are exactly 0 and 1, so st's weighted sum adds exact zeros to the sampled
    # op's output: the forwards agree up to (here absent) rounding.
    torch.testing.assert_close(out_g, out_s, rtol=0, atol=1e-6)

    # Weight gradients: every parameter gdas trains gets the same gradient in st (the only
    # difference is the order in which autograd accumulates), and the ops gdas did not run get
    # none in st either (they run, but their hard weight is 0: no gradient is recorded for them)
    checked = 0
    for (name, p_g), (name_s, p_s) in zip(gdas.named_parameters(), st.named_parameters()):
        assert name == name_s
        if name.startswith("arch_logits"):
            continue
        if p_g.grad is None:
            assert p_s.grad is None, name
        else:
            torch.testing.assert_close(p_g.grad, p_s.grad, rtol=1e-4, atol=1e-6, msg=name)
            checked += ".edges." in name
    assert checked > 0  # some sampled op had weights

    # Gradients w.r.t. the hard weights: equal for the sampled op (<grad, op_k(x)> in both).
    # For an unsampled op st gives <grad, op_i(x)> and gdas the GDAS estimate sum(grad), which is
    # the same for every unsampled op of the edge.
    for kind in KINDS[space]:
        g_g, g_s, idx = hard_g[kind].grad, hard_s[kind].grad, gdas.last_index[kind]
        rows = torch.arange(EDGES[space])
        torch.testing.assert_close(g_g[rows, idx], g_s[rows, idx], rtol=1e-4, atol=1e-6)
        assert (g_s[:, 0] == 0).all()  # 'none' is op 0 in both spaces: <grad, 0> = 0
        for e in range(EDGES[space]):
            others = torch.cat([g_g[e, :idx[e]], g_g[e, idx[e] + 1:]])
            assert torch.equal(others, others[:1].expand_as(others)), (kind, e)


@pytest.mark.parametrize("space", SPACES)
def test_st_and_gdas_train_the_same_weights_in_a_step(space):
    """An SGD step with momentum and weight decay moves only the sampled ops' weights in both
    modes, by the same amounts: an unsampled op in st gets no gradient, not a zero one."""
    from nas.search import weight_step
    x, y = batch(3)
    after = {}
    for mode in ("gdas", "st"):
        model = make(space, mode, seed=7, init_seed=5)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(model.weight_parameters(), 0.1, momentum=0.9, weight_decay=0.1)
        weight_step(model, opt, x, y, grad_clip=0.0, amp=False)
        after[mode] = {n: p.detach().clone() for n, p in model.named_parameters()}
        moved = {n for n in before if not torch.equal(before[n], after[mode][n])}
        after[mode + " moved"] = moved
    assert after["gdas moved"] == after["st moved"]
    assert any(".edges." in n for n in after["st moved"])
    assert any(".edges." in n for n in after["st"]) and \
        any(".edges." in n and n not in after["st moved"] for n in after["st"])
    for n in after["gdas"]:  # rounding apart: autograd accumulates in another order
        torch.testing.assert_close(after["gdas"][n], after["st"][n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode", ["gdas", "st"])
@pytest.mark.parametrize("space", SPACES)
def test_hard_weight_gradients_are_the_estimators(space, mode, monkeypatch):
    """Recompute the gradient of every hard weight from the edges' output gradients g and the
    ops' outputs: st gives <g, op_i(x)> for every op; gdas gives that for the sampled op and
    sum(g) for every other op. Summed over the cells that share the sample."""
    captured = _capture_samples(monkeypatch)
    model = make(space, mode, seed=13, init_seed=2)
    cells = search_cells(model)
    op_out, edge_grad, handles = {}, {}, []

    def keep_output(key):
        def hook(module, inputs, output):
            op_out[key] = output.detach()
        return hook

    def keep_grad(key):
        def hook(module, inputs, output):
            # a fresh view, so that only this edge's gradient reaches the hook (an identity op
            # returns its input, which other edges read too); `none` returns constant zeros
            view = output.view_as(output) if output.requires_grad else output.detach().requires_grad_()
            view.register_hook(lambda g: edge_grad.__setitem__(key, g.detach()))
            return view
        return hook

    for c, cell in enumerate(cells):
        for e, edge in enumerate(cell.edges):
            handles.append(edge.register_forward_hook(keep_grad((c, e))))
            for i, op in enumerate(edge.ops):
                handles.append(op.register_forward_hook(keep_output((c, e, i))))
    x, y = batch(6)
    F.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    hard = dict(zip(model.arch_logits, captured))

    skipped = 0
    for kind in KINDS[space]:
        expected = torch.zeros(EDGES[space], NUM_OPS[space], dtype=torch.float64)
        index = model.last_index[kind]
        for c, cell in enumerate(cells):
            if kind_of(space, cell) != kind:
                continue
            node_of = [node for node, _ in nas.edge_inputs(cell.num_inputs, cell.num_nodes)]
            for e in range(EDGES[space]):
                if (c, e) not in edge_grad:  # gdas skipped this edge's `none`: the gradient
                    alive = [j for j in range(EDGES[space])  # reaching it is its node's
                             if node_of[j] == node_of[e] and (c, j) in edge_grad]
                    if not alive:  # a node that nothing reads (every edge out of it skipped)
                        continue   # gets no gradient at all
                    skipped += 1
                    edge_grad[(c, e)] = edge_grad[(c, alive[0])]
                g = edge_grad[(c, e)].double()
                for i in range(NUM_OPS[space]):
                    if mode == "gdas" and i != int(index[e]):
                        expected[e, i] += g.sum()
                    elif (c, e, i) in op_out:
                        expected[e, i] += (g * op_out[(c, e, i)].double()).sum()
                    else:  # a skipped `none`: <g, 0>
                        assert mode == "gdas" and cell.edges[e].op_names[i] == "none"
        assert expected.abs().max() > 0
        torch.testing.assert_close(hard[kind].grad.double(), expected, rtol=1e-4, atol=1e-6)
    assert (skipped > 0) == (mode == "gdas" and space == "nasbench201")  # this seed's samples


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last",
                                    "channels_last_grad", "channels_last_both", "expanded_grad"])
def test_sampled_op_forward_and_gdas_backward(layout):
    torch.manual_seed(0)
    k, num_ops = 2, 5
    if layout == "transposed":
        src = torch.randn(6, 7, requires_grad=True)
        out = src.t()
        assert not out.is_contiguous()
    elif layout in ("channels_last", "channels_last_both"):
        src = torch.randn(2, 3, 4, 5, requires_grad=True)
        out = src.contiguous(memory_format=torch.channels_last)
        assert not out.is_contiguous()
    else:
        src = torch.randn(2, 3, 4, 5, requires_grad=True)
        out = src * 1.0
    weights = F.one_hot(torch.tensor(k), num_ops).float().requires_grad_()
    y = nas.sampled_op(out, weights, k)
    assert torch.equal(y, out) and y.data_ptr() == out.data_ptr()  # unchanged, no copy

    if layout == "expanded_grad":
        grad = torch.ones(()).expand_as(y)  # what .sum().backward() feeds: stride 0
        y.sum().backward()
    else:
        grad = torch.randn(y.shape)
        if layout in ("channels_last_grad", "channels_last_both"):
            grad = grad.contiguous(memory_format=torch.channels_last)
        y.backward(grad)

    # Reference: the GDAS edge output w_k * out + sum_{i != k} w_i, differentiated by autograd.
    ref_w = weights.detach().clone().requires_grad_()
    ref_out = out.detach().clone().requires_grad_()
    ref = ref_w[k] * ref_out + sum(ref_w[i] for i in range(num_ops) if i != k)
    ref.backward(grad)

    expected = torch.full((num_ops,), grad.sum().item())
    expected[k] = (grad * out.detach()).sum()
    torch.testing.assert_close(weights.grad, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.grad, ref_w.grad, rtol=1e-5, atol=1e-5)
    # the gradient reaching the op output is the edge gradient itself
    expected_src = grad.t() if layout == "transposed" else grad
    torch.testing.assert_close(src.grad, expected_src, rtol=0, atol=0)


@pytest.mark.parametrize("space, sample", [
    ("nasbench201", {"cell": [0, 0, 0, 3, 0, 1]}),  # nodes 1 and 2 sum only `none`s
    ("darts", {"normal": [0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
               "reduce": [0, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]}),
])
def test_skipping_sampled_none_changes_no_value_or_gradient(space, sample):
    """A sampled `none` is not run (nor added) where its node has other inputs; where it has
    none, the node's first edge runs it. Forward and every gradient equal those of running it."""
    runs = {}
    for skip in (True, False):
        model = make(space, "gdas", seed=1, init_seed=3)
        with torch.no_grad():
            for kind, p in model.arch_logits.items():
                p.zero_()
                p[torch.arange(len(sample[kind])), torch.tensor(sample[kind])] = 40.0
        if not skip:  # every op counts as real: the sampled `none` runs and adds its zeros
            for cell in search_cells(model):
                for edge in cell.edges:
                    edge.zero = (False,) * len(edge.zero)
        calls = []
        for cell in search_cells(model):
            for edge in cell.edges:
                edge.ops[0].register_forward_hook(lambda m, i, o: calls.append(1))  # op 0: none
        x, y = batch(5)
        out = model(x)
        assert {k: v.tolist() for k, v in model.last_index.items()} == sample
        F.cross_entropy(out, y).backward()
        runs[skip] = out, {n: p.grad for n, p in model.named_parameters()}, len(calls)
    (out, grads, calls), (ref_out, ref_grads, ref_calls) = runs[True], runs[False]
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g is None) == (ref_grads[name] is None), name
        if g is not None:
            assert torch.equal(g, ref_grads[name]), name
    cells = len(search_cells(make(space, "gdas")))
    # every cell has two nodes that sum only `none`s: each runs one
    assert calls == 2 * cells and ref_calls == {"nasbench201": 4, "darts": 12}[space] * cells


def test_sampled_op_keeps_the_weights_dtype_and_is_a_no_op_without_grad():
    torch.manual_seed(0)
    out = torch.randn(2, 3, 4, 4).to(torch.bfloat16).requires_grad_()
    weights = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)  # float32, as under autocast
    y = nas.sampled_op(out, weights, 1)
    grad = torch.randn(y.shape).to(torch.bfloat16)
    y.backward(grad)
    assert weights.grad.dtype == torch.float32
    g, o = grad.double(), out.detach().double()
    # bfloat16 values multiply exactly in float32 and their sum accumulates in float32: the
    # float64 sum of the same values, to float32 rounding (a bfloat16 result is off by ~4e-3)
    torch.testing.assert_close(weights.grad.double(), torch.stack([g.sum(), (g * o).sum(), g.sum()]),
                               rtol=1e-5, atol=1e-5)

    plain = torch.randn(3)
    assert nas.sampled_op(plain, torch.tensor([1.0, 0.0]), 0) is plain



@pytest.mark.parametrize("layout", ["contiguous", "channels_last_grad"])
def test_the_gdas_dot_product_accumulates_bfloat16_in_float32(layout):
    """<grad, out> of a large bfloat16 activation, as under bf16 autocast: float32 accuracy."""
    g = torch.Generator().manual_seed(0)
    out = (1 + torch.rand(8, 16, 32, 32, generator=g)).to(torch.bfloat16).requires_grad_()
    grad = (1 + torch.rand(out.shape, generator=g)).to(torch.bfloat16)
    if layout == "channels_last_grad":  # the layouts differ: the other path of the product
        grad = grad.contiguous(memory_format=torch.channels_last)
    weights = torch.tensor([0.0, 1.0], requires_grad=True)
    nas.sampled_op(out, weights, 1).backward(grad)
    exact = (grad.double() * out.detach().double()).sum()
    assert abs(weights.grad[1].double() - exact) / exact < 1e-5, (weights.grad[1].item(), exact.item())
    assert weights.grad[0].double() == pytest.approx(grad.double().sum().item(), rel=1e-5)


def largest_allocation(fn) -> int:
    """The largest CPU allocation (bytes) of any op ``fn`` runs, by the (legacy: it starts in
    milliseconds) autograd profiler."""
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.function_events), default=0)


def test_the_gdas_dot_product_reads_activations_of_one_layout_in_place():
    """<grad, out> of two float32 tensors of the same layout (contiguous, channels-last) is read
    in place: no temporary the size of the activation each step. Two layouts need a product."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 8, 16, 16, generator=g), torch.rand(4, 8, 16, 16, generator=g)
    size = a.numel() * a.element_size()
    exact = (a.double() * b.double()).sum()
    last = [t.contiguous(memory_format=torch.channels_last) for t in (a, b)]
    for x, y in ((a, b), last):
        assert nas.supernet._dot(x, y).double().item() == pytest.approx(exact.item(), rel=1e-5)
        assert largest_allocation(lambda: nas.supernet._dot(x, y)) < size // 100
    assert nas.supernet._dot(a, last[1]).double().item() == pytest.approx(exact.item(), rel=1e-5)
    assert largest_allocation(lambda: nas.supernet._dot(a, last[1])) >= size
    # two dtypes: accumulated in the wider one
    half = a.to(torch.bfloat16)
    exact_half = (half.double() * b.double()).sum()
    assert nas.supernet._dot(half, b).double().item() == pytest.approx(exact_half.item(), rel=1e-6)


def test_the_dot_product_sums_every_chunk_in_the_wider_dtype_on_the_device(monkeypatch):
    """Upcast in chunks: every chunk counts, the sum is kept in the wider of the two dtypes
    (float64 here) and on the tensors' device (meta: shapes only)."""
    monkeypatch.setattr(nas.supernet, "_DOT_CHUNK", 1000)
    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 4, 16, 16, generator=g, dtype=torch.float64)
    b = torch.rand(2, 4, 16, 16, generator=g).to(torch.bfloat16)
    exact = (a * b.double()).sum().item()
    assert abs(nas.supernet._dot(a, b).item() - exact) < 1e-9 * exact  # float32 is off by ~1e-7
    assert abs(nas.supernet._dot(b, a).item() - exact) < 1e-9 * exact
    m = torch.device("meta")
    assert nas.supernet._dot(b.to(m), b.to(m)).device.type == "meta"


@pytest.mark.parametrize("estimator", ["gumbel_rao", "reinmax"])
def test_an_estimator_changes_only_hard_samples(estimator):
    """A soft (gumbel mode) sample stays a soft point of the simplex whatever the estimator: the
    estimators are gradient surrogates of a one-hot."""
    model, ref = make("nasbench201", "gumbel"), make("nasbench201", "gumbel")
    model.estimator = estimator
    model.train(), ref.train()
    w, w_ref = model.sample()["cell"].weights, ref.sample()["cell"].weights
    assert torch.equal(w, w_ref) and w.max() < 1.0


def test_the_training_draw_caches_the_op_order_on_the_logits_device():
    """The op-name order a draw reads is cached under the logits' device (on a GPU, a CPU copy
    would be moved to it every step)."""
    model = make("nasbench201", "gdas")
    model.train()
    model.sample()
    assert list(model._orders) == [("cell", torch.device("cpu"))]


def test_fixed_sampling_logits_follow_the_logits_dtype_and_the_generator_their_device():
    """The weight steps' fixed logits are cast to the architecture logits (a float64 supernet
    draws float64 weights), and the noise comes from a generator of the logits' device."""
    model = make("nasbench201", "gdas").double()
    model.sampling_logits = {"cell": torch.zeros(5)}
    model.train()
    assert model.sample()["cell"].weights.dtype == torch.float64
    assert list(model._generators) == [torch.device("cpu")]


def test_the_forward_temperature_tempers_hard_draws_only():
    """tau_forward = 2 draws the one-hot of a gdas sample from softmax(logits / 2) (the same
    draw as halved logits at tau_forward 1); a soft (gumbel mode) sample ignores it."""
    drawn = {}
    for name, tau_forward, scale in (("tempered", 2.0, 1.0), ("halved", 1.0, 0.5), ("plain", 1.0, 1.0)):
        model = make("nasbench201", "gdas", init_seed=1)
        with torch.no_grad():
            model.arch_logits["cell"].mul_(300.0 * scale)  # sharp: the temperature shows
        model.tau_forward = tau_forward
        model.train()
        drawn[name] = [model.sample()["cell"].index for _ in range(20)]
    assert drawn["tempered"] == drawn["halved"] != drawn["plain"]
    soft = [make("nasbench201", "gumbel", init_seed=1) for _ in range(2)]
    soft[0].tau_forward = 2.0
    w = [m.train().sample()["cell"].weights for m in soft]
    assert torch.equal(w[0], w[1])


def test_an_st_sample_of_three_kinds_reads_each_kind_s_own_ops():
    """st mode reads every kind's sampled ops back in one transfer: each kind gets its own."""
    ops = ("a", "b", "c")
    model = nas.Supernet("st", {"x": (2, ops), "y": (3, ops), "z": (4, ops)}, seed=0)
    with torch.no_grad():
        for k, v in model.arch_logits.items():
            v.normal_(generator=torch.Generator().manual_seed(len(k)))
    model.train()
    sample = model.sample()
    assert {k: list(v.sampled) for k, v in sample.items()} == \
        {k: v.tolist() for k, v in model.last_index.items()}


def test_the_sample_stream_is_seeded_by_the_seed_and_the_draw_count():
    """Draw n of seed s uses one generator per device, re-seeded with (s * 0x9E3779B97F4A7C15 + n)
    mod 2^63: the stream of a seed is fixed, so runs reproduce across versions."""
    model = make("nasbench201", "gdas", seed=1)
    model.samples_drawn = 5
    gen = model._generator(torch.device("cpu"))
    assert gen is model._generator(torch.device("cpu"))  # made once, re-seeded
    expected = torch.Generator().manual_seed((0x9E3779B97F4A7C15 + 5) % 2 ** 63)
    model.samples_drawn = 5
    assert torch.equal(torch.rand(4, generator=model._generator(torch.device("cpu"))),
                       torch.rand(4, generator=expected))


def test_an_arch_sample_indexes_an_edge_as_weights_and_op():
    weights = torch.eye(3)
    w, op = nas.ArchSample(weights, [2, 0, 1])[1]
    assert torch.equal(w, weights[1]) and op == 0
    w, op = nas.ArchSample(weights)[2]
    assert torch.equal(w, weights[2]) and op is None


def test_a_mixed_edge_given_weights_and_an_op_attaches_the_gdas_gradient():
    """What a plugin calling MixedEdge(x, weights, index) gets: op ``index``'s output, and the
    edge's hard weights' GDAS gradient (<g, out> for that op, sum(g) for the others)."""
    torch.manual_seed(0)
    edge = nas.MixedEdge(("skip_connect", "nor_conv_1x1", "avg_pool_3x3"), 4)
    x = torch.randn(2, 4, 5, 5)
    weights = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)
    out = edge(x, weights, 1)
    assert torch.equal(out, edge.ops[1](x))
    g = torch.randn(out.shape)
    out.backward(g)
    expected = torch.stack([g.sum(), (g * edge.ops[1](x)).sum(), g.sum()])
    torch.testing.assert_close(weights.grad, expected.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(edge(x, None, 2), edge.ops[2](x))  # unweighted: the caller attaches them


def test_a_node_with_only_its_edge_weights_learning_still_gets_their_gradient():
    out = torch.randn(2, 3, 4, 4)
    grad = torch.randn(2, 3, 4, 4)
    weights = torch.tensor([[0.0, 1.0]])  # frozen op weights
    edge_weights = torch.tensor([1.0, 0.0], requires_grad=True)
    node = nas.sampled_node(weights, 0, [1], [out], keep=[True, False], edge_weights=edge_weights)
    node.backward(grad)
    torch.testing.assert_close(edge_weights.grad, torch.stack([(grad * out).sum(), grad.sum()]),
                               rtol=1e-5, atol=1e-5)


def test_the_hard_weights_gradient_keeps_their_dtype_and_device():
    out = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    weights = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    edge_weights = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    nas.sampled_node(weights, 0, [1], [out], edge_weights=edge_weights).sum().backward()
    assert weights.grad.dtype == edge_weights.grad.dtype == torch.float64
    assert weights.grad[0, 0].item() == out.numel()  # sum(grad) of ones, exact in float64
    m = torch.device("meta")  # another device (shapes only): nothing is made on the CPU
    w = torch.zeros(1, 2, device=m, requires_grad=True)
    e = torch.zeros(1, device=m, requires_grad=True)
    nas.sampled_node(w, 0, [1], [torch.zeros(2, 3, 4, 4, device=m)], edge_weights=e).sum().backward()
    assert w.grad.device.type == e.grad.device.type == "meta"

def test_float64_hard_weights_get_float64_accurate_gradients():
    """The gradients are computed in the weights' dtype, not rounded through float32."""
    g = torch.Generator().manual_seed(3)
    out = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    weights = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    edge_weights = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    nas.sampled_node(weights, 0, [1], [out], edge_weights=edge_weights).sum().backward()
    dot = out.sum().item()  # <ones, out>
    assert abs(weights.grad[0, 1].item() - dot) < 1e-12 and abs(edge_weights.grad[0].item() - dot) < 1e-12
    assert float(torch.tensor(dot, dtype=torch.float32)) != dot  # float32 would show


# -- 4. the parameter partition -----------------------------------------------------------------
@pytest.mark.parametrize("space, options, shapes", [
    ("darts", {}, {"normal": (14, 8), "reduce": (14, 8)}),
    ("darts", {"fixed_reduction": True}, {"normal": (14, 8)}),
    ("darts", {"ops": ("none", "skip_connect", "sep_conv_3x3")}, {"normal": (14, 3), "reduce": (14, 3)}),
    ("nasbench201", {}, {"cell": (6, 5)}),
])
def test_parameter_partition_is_exact(space, options, shapes):
    model = make(space, "gdas", **options)
    arch, weights = model.arch_parameters(), model.weight_parameters()
    every = list(model.parameters())
    arch_ids, weight_ids = {id(p) for p in arch}, {id(p) for p in weights}
    assert len(arch_ids) == len(arch) and len(weight_ids) == len(weights)  # no duplicates
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in every}
    assert len(arch) + len(weights) == len(every)
    names = {name: p for name, p in model.named_parameters() if id(p) in arch_ids}
    assert {n: tuple(p.shape) for n, p in names.items()} == \
        {f"arch_logits.{k}": s for k, s in shapes.items()}
    assert all(p is model.arch_logits[k] for k, p in zip(shapes, arch))
    assert sum(p.numel() for p in weights) > 0


# -- 5. samples are a function of (seed, samples_drawn) -----------------------------------------
def _index_sequence(model: nas.Supernet, steps: int = 4, disturb: bool = False) -> list[dict]:
    x, _ = batch()
    seq = []
    with torch.no_grad():
        for _ in range(steps):
            if disturb:
                torch.rand(100)  # the global RNG must not matter
            model(x)
            seq.append({k: v.clone() for k, v in model.last_index.items()})
    return seq


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)
               for da, db in zip(a, b))


@pytest.mark.parametrize("space", SPACES)
def test_same_seed_gives_same_samples(space):
    kinds = len(KINDS[space])
    a, b, c = (make(space, "gdas", seed=s) for s in (11, 11, 12))
    seq_a = _index_sequence(a)
    assert a.samples_drawn == 4 * kinds
    seq_b = _index_sequence(b, disturb=True)
    seq_c = _index_sequence(c)
    assert _same(seq_a, seq_b)
    assert not _same(seq_a, seq_c)
    # successive draws of one stream differ too
    assert not all(_same([seq_a[0]], [s]) for s in seq_a[1:])
    # eval mode draws nothing
    a.eval()
    _index_sequence(a, steps=1)
    assert a.samples_drawn == 4 * kinds


def test_state_dict_restores_the_sample_stream():
    a = make("darts", "gdas", seed=21, init_seed=1)
    _index_sequence(a, steps=2)
    a.tau, a.tau_forward = 0.37, 1.5
    state = a.state_dict()
    assert state["_extra_state"] == {"sample_seed": 21, "samples_drawn": 4, "tau": 0.37,
                                     "tau_forward": 1.5}

    b = make("darts", "gdas", seed=0, init_seed=2)
    b.load_state_dict(state)
    assert (b.sample_seed, b.samples_drawn, b.tau, b.tau_forward) == (21, 4, 0.37, 1.5)
    x, _ = batch(5)
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert all(torch.equal(a.last_index[k], b.last_index[k]) for k in KINDS["darts"])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


# -- 6. soft modes and eval mode ----------------------------------------------------------------
@pytest.mark.parametrize("space", SPACES)
def test_softmax_mode_weights_are_exactly_the_softmax(space):
    model = make(space, "softmax")
    randomize_logits(model, seed=3)
    sample = model.sample()
    for kind, logits in model.arch_logits.items():
        assert sample[kind].index is None
        assert torch.equal(sample[kind].weights, name_order_softmax(model, kind))
        torch.testing.assert_close(sample[kind].weights, logits.softmax(-1), rtol=0, atol=1e-7)
    assert model.samples_drawn == 0 and model.last_index == {}


@pytest.mark.parametrize("space", SPACES)
def test_gumbel_mode_weights_are_noisy_points_of_the_simplex(space):
    soft, gdas, st = (make(space, mode, seed=9) for mode in ("gumbel", "gdas", "st"))
    for m in (soft, gdas, st):
        randomize_logits(m, seed=3)
    s_soft, s_gdas, s_st = soft.sample(), gdas.sample(), st.sample()
    for kind, logits in soft.arch_logits.items():
        w = s_soft[kind].weights
        assert s_soft[kind].index is None
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(EDGES[space]), rtol=0, atol=1e-6)
        assert (w - logits.softmax(-1)).abs().max() > 1e-2  # noise was added
        # the same (seed, samples_drawn) gives the same noise in every mode: the hard sample of
        # gdas/st is the argmax of the soft one
        assert torch.equal(gdas.last_index[kind], w.argmax(-1))
        assert s_gdas[kind].index == w.argmax(-1).tolist()
        assert s_st[kind].index is None  # st runs every op
        assert torch.equal(s_st[kind].weights, F.one_hot(w.argmax(-1), NUM_OPS[space]).float())


def test_gumbel_mode_divides_by_tau():
    """Same noise, two temperatures: log-weight differences scale exactly by 1/tau."""
    model = make("nasbench201", "gumbel", seed=4)
    randomize_logits(model, seed=1)
    logs = {}
    for tau in (1.0, 0.25):
        model.tau, model.samples_drawn = tau, 0
        w = model.sample()["cell"].weights.detach().double()
        logs[tau] = w.log() - w.log()[:, :1]
    torch.testing.assert_close(logs[0.25], 4.0 * logs[1.0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", nas.MODES)
@pytest.mark.parametrize("space", SPACES)  # darts tracks BN statistics, NB201 does not
def test_eval_mode_is_deterministic_and_noise_free(space, mode):
    model = make(space, mode, seed=6)
    randomize_logits(model, seed=2)
    model.eval()
    x, _ = batch(1)
    with torch.no_grad():
        out1, out2 = model(x), model(x)
    assert torch.equal(out1, out2)
    assert model.samples_drawn == 0
    sample = model.sample()
    for kind, logits in model.arch_logits.items():
        if mode in ("gdas", "st"):
            assert torch.equal(model.last_index[kind], logits.argmax(-1))
            assert sample[kind].index == logits.argmax(-1).tolist()
            assert torch.equal(sample[kind].weights.detach(),
                               F.one_hot(logits.argmax(-1), NUM_OPS[space]).float())
        else:
            assert sample[kind].index is None
            assert torch.equal(sample[kind].weights, name_order_softmax(model, kind))


@pytest.mark.parametrize("space", SPACES)
def test_eval_gdas_and_st_run_the_same_argmax_network(space):
    x, _ = batch(2)
    outs = []
    for mode in ("gdas", "st"):
        model = make(space, mode, init_seed=8)
        randomize_logits(model, seed=5)
        model.eval()
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)


def test_entropy_of_uniform_logits_is_log_num_ops():
    model = make("darts", "softmax")
    with torch.no_grad():
        for p in model.arch_parameters():
            p.zero_()
    assert model.entropy() == pytest.approx(math.log(8), abs=1e-6)
    probs = model.probabilities()
    assert not any(p.requires_grad for p in probs.values())


# -- 7. host syncs -----------------------------------------------------------------------------
@pytest.mark.parametrize("space, mode, training, expected", [
    ("darts", "gdas", True, 1),   # normal + reduce indices in one transfer
    ("darts", "gdas", False, 1),
    ("darts", "st", True, 1),     # which op's weights get gradients: read once for all edges
    ("darts", "st", False, 1),
    ("darts", "gumbel", True, 0),
    ("darts", "softmax", True, 0),
    ("nasbench201", "gdas", True, 1),
])
def test_host_syncs_per_forward(space, mode, training, expected, monkeypatch):
    model = make(space, mode, seed=3)
    model.train(training)
    x, _ = batch()
    calls = {"tolist": 0, "item": 0}
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self, *args, **kwargs):
        calls["tolist"] += 1
        return real_tolist(self, *args, **kwargs)

    def item(self, *args, **kwargs):
        calls["item"] += 1
        return real_item(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    model(x)
    monkeypatch.undo()
    assert calls == {"tolist": expected, "item": 0}


# -- the benchmark's guard (not timed) ----------------------------------------------------------
@pytest.mark.parametrize("order", ["weights_first", "arch_first"])
@pytest.mark.parametrize("space", SPACES)
def test_guard_gdas_never_runs_more_ops_than_edges(space, order):
    """Through real search steps (weight step and architecture step of nas.search, backward
    included), no forward of a gdas supernet ever runs more op modules than it has edges."""
    from nas.search import arch_step, weight_step

    model = make(space, "gdas", seed=4)
    edges = sum(len(cell.edges) for cell in search_cells(model))
    counts: list[int] = []
    expected: list[int] = []
    model.register_forward_pre_hook(lambda module, args: counts.append(0))
    model.register_forward_hook(
        lambda module, args, out: expected.append(len(expected_runs(model, space))))
    op_modules = [op for cell in search_cells(model) for edge in cell.edges for op in edge.ops]
    for op in op_modules:
        op.register_forward_hook(lambda module, inputs, output: counts.__setitem__(-1, counts[-1] + 1))
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9)
    a_opt = torch.optim.Adam(model.arch_parameters(), 0.1)
    model.tau = 5.0
    for step in range(4):
        (xw, yw), (xa, ya) = batch(2 * step), batch(2 * step + 1)
        if order == "arch_first":
            arch_step(model, a_opt, xa, ya, amp=False)
        weight_step(model, w_opt, xw, yw, grad_clip=5.0, amp=False)
        if order == "weights_first":
            arch_step(model, a_opt, xa, ya, amp=False)
    assert len(counts) == 8  # two forwards per step, nothing re-run in backward
    assert max(counts) <= edges and counts == expected
