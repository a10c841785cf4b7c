"""`nas plot`: op probabilities over the epochs of a run, and several runs' curves compared."""
from __future__ import annotations

import json

from PIL import Image

from nas import plot
from nas.cli import main


def fake_run(path, rising: str, epochs: int = 3, bench: bool = False):
    """A finished search's metrics.jsonl and probabilities.jsonl (NB201-like: 6 edges, 3 ops)."""
    path.mkdir(parents=True)
    ops, edges = ["none", "skip_connect", "nor_conv_3x3"], ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    with open(path / "probabilities.jsonl", "w") as f, open(path / "metrics.jsonl", "w") as m:
        for e in range(1, epochs + 1):
            hi = 0.4 + 0.1 * e
            row = [hi if op == rising else (1 - hi) / 2 for op in ops]
            f.write(json.dumps({"epoch": e, "ops": {"cell": ops}, "edges": {"cell": edges},
                                "probabilities": {"cell": [row] * 6}}) + "\n")
            m.write(json.dumps({"epoch": e, "train_loss": 2.0 / e, "entropy": 1.0 - 0.1 * e,
                                **({"benchmark_cifar10": 90 + e} if bench else {})}) + "\n")
    return path


def test_plot_one_run_draws_every_edge_and_a_legend(tmp_path, capsys):
    run = fake_run(tmp_path / "a", "skip_connect")
    assert main(["plot", str(run)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(run / "plots" / "ops_cell.png"), str(run / "plots" / "curves.png")]
    img = Image.open(run / "plots" / "ops_cell.png").convert("RGB")
    colors = {c for _, c in img.getcolors(1 << 20)}
    assert set(plot._PALETTE[:3]) <= colors  # one line per op, coloured as in the legend
    assert img.height > 2 * 150  # 6 edges in rows of 4


def test_plot_compares_runs_and_reports_bad_input_in_one_line(tmp_path, capsys):
    a = fake_run(tmp_path / "a", "skip_connect", bench=True)
    b = fake_run(tmp_path / "b", "nor_conv_3x3", epochs=2)
    out = tmp_path / "cmp"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_ops_cell.png", "b_ops_cell.png", "curves.png"]
    # the loss, entropy and benchmark panels; two runs in two colours
    curves = Image.open(out / "curves.png").convert("RGB")
    assert curves.width == 3 * 300 + 20 and set(plot._PALETTE[:2]) <= {c for _, c in curves.getcolors(1 << 20)}
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory: no metrics.jsonl" in err[0]


def test_heatmap_colours_are_on_a_fixed_scale():
    import torch
    near_uniform = plot.heatmap(torch.tensor([[0.32, 0.33, 0.35], [0.34, 0.33, 0.33]]),
                                ["a", "b", "c"], ["1<-0", "2<-0"], "cell, epoch 1")
    colors = {c for _, c in near_uniform.convert("RGB").getcolors(1 << 20)}
    # every cell is painted near the colour of 1/3; none at the ends of the scale, which a
    # scale stretched over 0.32 .. 0.35 would give them (a decision that is not there)
    assert {plot._color(0.32), plot._color(0.35)} <= colors
    assert plot._color(0.0) not in colors and plot._color(1.0) not in colors
    decided = plot.heatmap(torch.tensor([[0.0, 1.0]]), ["a", "b"], ["1<-0"], "t")
    assert {plot._color(0.0), plot._color(1.0)} <= {c for _, c in decided.getcolors(1 << 20)}


def test_scatter_marks_a_point_below_the_axis_and_drops_background_ones():
    """A collapsed search (70 on an 85-95 axis) must not look like an 85: it is drawn as a
    triangle on the floor; a background cell below the axis is left out, not piled on it."""
    red, grey = (220, 20, 20), (200, 200, 200)
    layers = {"cells": ([(0.0, 90.0), (5.0, 60.0)], grey, 1),
              "derived": ([(6.0, 70.0), (2.0, 92.0)], red, 4), "edge": ([(8.0, 90.0)], grey, 1)}
    img = plot.scatter(layers, {}, ylim=(85.0, 95.0), size=(400, 300))
    left, right, bottom = 60, 380, 230

    def column(x: float) -> list[tuple[int, int, int]]:
        px = round(left + x / 8.0 * (right - left))
        return [img.getpixel((px, y)) for y in range(bottom - 8, bottom)]

    assert red in column(6.0)            # the collapsed point: a triangle at the floor
    assert grey not in column(5.0)       # the background point below the axis: not drawn
    px = round(left + 2.0 / 8.0 * (right - left))
    py = round(bottom - (92.0 - 85.0) / 10.0 * (bottom - 30))
    assert img.getpixel((px, py)) == red  # points inside the axis are drawn where they are
