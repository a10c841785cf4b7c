"""Pictures for people: a cell or a chain as Graphviz DOT text or PNG, and op probabilities as a
heatmap (a chain's: one grid of choice points x ops).

PNGs are drawn with Pillow (installed with torchvision), so they work without Graphviz; when
the ``dot`` program exists, ``save_cell_png`` uses it instead.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .choices import ChoicePoint
from .errors import InputError
from .genotype import Genotype, cell_title
from .runtime import path_problem

_FONT = ImageFont.load_default()
_STOPS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]  # viridis


def _color(value: float) -> tuple[int, int, int]:
    value = min(max(value, 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(value), len(_STOPS) - 2)
    t = value - i
    return tuple(round(a + (b - a) * t) for a, b in zip(_STOPS[i], _STOPS[i + 1]))


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_FONT)
    return right - left, bottom - top


def cell_states(genotype: Genotype, kind: str) -> tuple[list[str], int]:
    """A cell's states by their numbers in the genotype (inputs first, then nodes), and how many
    of them are cell inputs. Every view (TensorBoard tags, heatmaps, ``genotype show``, pictures)
    uses these numbers."""
    nodes, concat = genotype.cells[kind], genotype.concat.get(kind, ())
    num_inputs = genotype.inputs[kind]
    for i, node in enumerate(nodes):
        late = [src for _, src in node if src >= num_inputs + i]
        if late:
            raise InputError(f"genotype {cell_title(kind)}: node {num_inputs + i} reads state {late[0]}, "
                             f"but only states 0..{num_inputs + i - 1} exist before it")
    if concat and max(concat) >= num_inputs + len(nodes):
        raise InputError(f"genotype {cell_title(kind)}: its output concatenates state {max(concat)}, "
                         f"but only states 0..{num_inputs + len(nodes) - 1} exist")
    return [str(i) for i in range(num_inputs + len(nodes))], num_inputs


def state_label(i: int, num_inputs: int) -> str:
    """A state's number, with what a cell input is: ``0: c_{k-2}`` (DARTS), ``0: input`` (NB201)."""
    if i >= num_inputs:
        return str(i)
    return f"{i}: input" if num_inputs == 1 else f"{i}: c_{{k-{num_inputs - i}}}"


def to_dot(genotype: Genotype, kind: str) -> str:
    """The cell ``kind`` as Graphviz DOT text (node ids are the state numbers)."""
    states, num_inputs = cell_states(genotype, kind)
    lines = [f'digraph "{kind}" {{', "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname=helvetica];',
             '  edge [fontname=helvetica, fontsize=10];']
    for i, name in enumerate(states):
        color = "darkseagreen2" if i < num_inputs else "lightblue"
        lines.append(f'  "{name}" [label="{state_label(i, num_inputs)}", fillcolor={color}];')
    for i, node in enumerate(genotype.cells[kind]):
        for op, src in node:
            lines.append(f'  "{states[src]}" -> "{states[num_inputs + i]}" [label="{op}"];')
    if genotype.concat.get(kind):
        lines.append('  "out" [label="c_{k}", fillcolor=palegoldenrod];')
        for i in genotype.concat[kind]:
            lines.append(f'  "{states[i]}" -> "out" [color=gray];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _arc(x0: float, x1: float, y: float, height: float) -> list[tuple[float, float]]:
    """Half an ellipse from (x0, y) to (x1, y), ``height`` above y (below, if negative)."""
    cx, a = (x0 + x1) / 2, (x1 - x0) / 2
    return [(cx - a * math.cos(t), y - height * math.sin(t))
            for t in (math.pi * k / 40 for k in range(41))]


Box = tuple[float, float, float, float]
Arc = tuple[list[tuple[float, float]], str]


def cell_layout(genotype: Genotype, kind: str) -> tuple[list[str], list[Box], list[Arc], int, int]:
    """Where ``cell_image`` puts things: state labels, their boxes, the edges as polylines with
    their op ("" for a concat edge), and the picture's size.

    The states sit in one row in number order; every op edge is an arc above the row and every
    concat edge an arc below it, so no edge passes through a node. An arc's height grows with
    its span, so arcs that share a midpoint keep their labels apart.
    """
    states, num_inputs = cell_states(genotype, kind)
    concat = genotype.concat.get(kind, ())
    labels = [state_label(i, num_inputs) for i in range(len(states))] + (["c_{k}"] if concat else [])
    step, margin, rise = 130, 30, 24
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [_text_size(probe, t) for t in labels]
    widest, box_h = max(w for w, _ in sizes) + 16, max(h for _, h in sizes) + 12
    edges = [(src, num_inputs + i, op) for i, node in enumerate(genotype.cells[kind])
             for op, src in node]
    out = len(states)
    up = max([rise + 0.36 * step * (b - a) for a, b, _ in edges], default=0)
    down = max([rise + 0.18 * step * (out - i) for i in concat], default=0)
    top = margin + 14 + up
    centre = [margin + widest / 2 + step * i for i in range(len(labels))]
    half = [w / 2 + 8 for w, _ in sizes]
    boxes = [(c - h, top, c + h, top + box_h) for c, h in zip(centre, half)]
    # leave a box from the right half of its side, arrive on the left half
    arcs = [(_arc(centre[a] + half[a] / 2, centre[b] - half[b] / 2, top,
                  rise + 0.36 * step * (b - a)), op) for a, b, op in edges]
    arcs += [(_arc(centre[i] + half[i] / 2, centre[out] - half[out] / 2, top + box_h,
                   -(rise + 0.18 * step * (out - i))), "") for i in concat]
    width = 2 * margin + step * (len(labels) - 1) + widest
    return labels, boxes, arcs, int(width), int(top + box_h + down + margin + 14)


def cell_image(genotype: Genotype, kind: str) -> Image.Image:
    """Draw the cell ``kind`` with Pillow (layout: ``cell_layout``), edges labelled with their op."""
    labels, boxes, arcs, width, height = cell_layout(genotype, kind)
    num_inputs = cell_states(genotype, kind)[1]
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for pts, op in arcs:
        fill = (90, 90, 90) if op else (190, 190, 190)
        draw.line(pts, fill=fill, width=2)
        (px, py), (ex, ey) = pts[-3], pts[-1]
        norm = math.hypot(ex - px, ey - py) or 1.0
        ux, uy = (ex - px) / norm, (ey - py) / norm
        draw.polygon([(ex, ey), (ex - 9 * ux - 4 * uy, ey - 9 * uy + 4 * ux),
                      (ex - 9 * ux + 4 * uy, ey - 9 * uy - 4 * ux)], fill=fill)
    for pts, op in arcs:  # labels at the apex, over every line
        if op:
            x, y = pts[len(pts) // 2]
            w, h = _text_size(draw, op)
            draw.rectangle([x - w / 2 - 2, y - h / 2 - 2, x + w / 2 + 2, y + h / 2 + 2], fill="white")
            draw.text((x - w / 2, y - h / 2), op, fill=(20, 20, 120), font=_FONT)
    output = len(labels) - 1 if genotype.concat.get(kind) else -1
    for i, (label, box) in enumerate(zip(labels, boxes)):
        color = (200, 230, 200) if i < num_inputs else (255, 240, 180) if i == output \
            else (200, 220, 245)
        draw.rounded_rectangle(box, radius=6, fill=color, outline=(60, 60, 60))
        w, _ = _text_size(draw, label)
        draw.text(((box[0] + box[2] - w) / 2, box[1] + 6), label, fill="black", font=_FONT)
    caption = cell_title(kind)
    draw.text((30, height - 22), caption, fill="black", font=_FONT)
    return img


def save_cell_png(genotype: Genotype, kind: str, path: str | Path) -> str:
    """Write the cell as PNG: with Graphviz ``dot`` when installed, else with Pillow."""
    return _save_png(to_dot(genotype, kind), lambda: cell_image(genotype, kind), path)


def save_chain_png(genotype: Genotype, path: str | Path) -> str:
    """Write a chain genotype as PNG: with Graphviz ``dot`` when installed, else with Pillow."""
    return _save_png(chain_dot(genotype), lambda: chain_image(genotype), path)


def _save_png(dot_text: str, draw: Callable[[], Image.Image], path: str | Path) -> str:
    """``dot_text`` drawn by Graphviz into ``path``, else ``draw()``'s picture; which one drew it."""
    dot = shutil.which("dot")
    if dot:
        result = subprocess.run([dot, "-Tpng", "-o", str(path)], input=dot_text,
                                text=True, capture_output=True)
        if result.returncode == 0:
            return "graphviz"
    draw().save(path)
    return "pillow"


def chain_dot(genotype: Genotype) -> str:
    """A chain genotype as Graphviz DOT text: input, each layer with its op, output."""
    lines = ['digraph "chain" {', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname=helvetica];']
    names = ["input", *genotype.layers, "output"]
    for i, name in enumerate(names):
        op = genotype.layers.get(name)
        label = f"{name}\\n{op}" if op else name
        color = "lightblue" if op else "darkseagreen2"
        lines.append(f'  "n{i}" [label="{label}", fillcolor={color}];')
    lines += [f'  "n{i}" -> "n{i + 1}";' for i in range(len(names) - 1)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def chain_image(genotype: Genotype) -> Image.Image:
    """Draw a chain genotype with Pillow: one box per layer (its name and op), top to bottom."""
    if not genotype.layers:
        raise InputError("not a chain genotype: it has no layers to draw")
    labels = ["input"] + [f"{name}: {op}" for name, op in genotype.layers.items()] + ["output"]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [_text_size(probe, t) for t in labels]
    box_w, box_h, gap, margin = max(w for w, _ in sizes) + 20, max(h for _, h in sizes) + 12, 18, 20
    img = Image.new("RGB", (box_w + 2 * margin, margin * 2 + len(labels) * (box_h + gap)), "white")
    draw = ImageDraw.Draw(img)
    for i, (label, (w, _)) in enumerate(zip(labels, sizes)):
        top = margin + i * (box_h + gap)
        if i:  # the arrow from the box above
            cx = margin + box_w / 2
            draw.line([(cx, top - gap), (cx, top - 2)], fill=(90, 90, 90), width=2)
            draw.polygon([(cx, top - 1), (cx - 4, top - 8), (cx + 4, top - 8)], fill=(90, 90, 90))
        edge = i in (0, len(labels) - 1)
        draw.rounded_rectangle([margin, top, margin + box_w, top + box_h], radius=6,
                               fill=(200, 230, 200) if edge else (200, 220, 245), outline=(60, 60, 60))
        draw.text((margin + (box_w - w) / 2, top + 6), label, fill="black", font=_FONT)
    return img


def chain_probabilities(probs: dict[str, torch.Tensor], points: Sequence[ChoicePoint],
                        ops: Sequence[str]) -> torch.Tensor:
    """One ``[choice points, ops]`` grid of a chain's op probabilities; NaN where a layer has
    no such candidate."""
    grid = torch.full((len(points), len(ops)), math.nan)
    for i, p in enumerate(points):
        row = probs[p.group][p.row].detach().float().cpu()
        for k, op in enumerate(p.ops):
            grid[i, ops.index(op)] = row[k]
    return grid


def heatmap(probs: torch.Tensor, ops: Sequence[str], row_names: Sequence[str],
            title: str = "") -> Image.Image:
    """Edges x ops probabilities as a colour grid, values written in, each row's largest outlined.

    Colours are on the fixed scale 0 (dark purple) .. 1 (yellow), the same in every picture, so
    that near-uniform probabilities look near-uniform (a scale stretched over each picture's own
    range would paint 0.32 against 0.35 as a decision). A NaN (a candidate a chain's layer does
    not have) is a blank grey cell.
    """
    probs = probs.detach().float().cpu()
    rows, cols = probs.shape
    title = f"{title}  (colour: 0 .. 1)" if title else title
    cw, ch = 44, 18
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(_text_size(probe, r)[0] for r in row_names) + 12
    top = max(_text_size(probe, o)[0] for o in ops) + 12 + (16 if title else 0)
    img = Image.new("RGB", (left + cols * cw + 8, top + rows * ch + 8), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black", font=_FONT)
    for j, op in enumerate(ops):  # column headers, written vertically
        w, h = _text_size(draw, op)
        label = Image.new("RGB", (w + 2, h + 4), "white")
        ImageDraw.Draw(label).text((1, 0), op, fill="black", font=_FONT)
        label = label.rotate(90, expand=True)
        img.paste(label, (left + j * cw + (cw - label.width) // 2, top - label.height - 4))
    for i, name in enumerate(row_names):
        draw.text((4, top + i * ch + 3), name, fill="black", font=_FONT)
        row_max = probs[i].nan_to_num(-1.0).max().item()
        for j in range(cols):
            v = probs[i, j].item()
            x0, y0 = left + j * cw, top + i * ch
            if math.isnan(v):
                draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=(225, 225, 225))
                continue
            shade = min(max(v, 0.0), 1.0)
            draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=_color(shade),
                           outline="red" if v == row_max else None)
            draw.text((x0 + 8, y0 + 3), f"{v:.2f}", fill="white" if shade < 0.6 else "black",
                      font=_FONT)
    return img


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow RGB image as a uint8 ``[3, H, W]`` tensor (for TensorBoard)."""
    data = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).contiguous()


# -- curves over epochs: `nas plot RUN [RUN ...]` ------------------------------------------------
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
Series = dict[str, list[tuple[float, float]]]


def _axes(draw: ImageDraw.ImageDraw, box: Box, series: Series, colors: dict[str, tuple],
          title: str, ylim: tuple[float, float] | None) -> None:
    """One chart: frame, min/max ticks on both axes, a polyline per series."""
    x0, y0, x1, y1 = box
    points = [p for pts in series.values() for p in pts]
    if not points:
        draw.text((x0 + 4, y0 + 4), f"{title}: no data", fill="black", font=_FONT)
        return
    lo_x, hi_x = min(p[0] for p in points), max(p[0] for p in points)
    lo_y, hi_y = ylim or (min(p[1] for p in points), max(p[1] for p in points))
    hi_x, hi_y = (hi_x if hi_x > lo_x else lo_x + 1), (hi_y if hi_y > lo_y else lo_y + 1)
    left, bottom, top = x0 + 40, y1 - 16, y0 + 16
    draw.text((left, y0 + 2), title, fill="black", font=_FONT)
    draw.rectangle([left, top, x1 - 6, bottom], outline=(120, 120, 120))
    for value, y in ((hi_y, top), (lo_y, bottom)):
        draw.text((x0 + 2, y - 5), f"{value:.3g}", fill=(80, 80, 80), font=_FONT)
    for value, x in ((lo_x, left), (hi_x, x1 - 6)):
        text = f"{value:g}"
        draw.text((x - _text_size(draw, text)[0] / 2, bottom + 3), text, fill=(80, 80, 80), font=_FONT)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - lo_x) / (hi_x - lo_x) * (x1 - 6 - left),
                bottom - (min(max(y, lo_y), hi_y) - lo_y) / (hi_y - lo_y) * (bottom - top))

    for name, pts in series.items():
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colors[name], width=2)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colors[name])


def _legend(draw: ImageDraw.ImageDraw, x: float, y: float, colors: dict[str, tuple]) -> None:
    for name, color in colors.items():
        draw.rectangle([x, y + 3, x + 14, y + 9], fill=color)
        draw.text((x + 18, y), name, fill="black", font=_FONT)
        x += 30 + _text_size(draw, name)[0]


def charts(panels: dict[str, Series], title: str = "", columns: int = 4,
           ylim: tuple[float, float] | None = None, size: tuple[int, int] = (230, 150)) -> Image.Image:
    """A grid of line charts (one per panel), the same series names in the same colours, one legend."""
    names = list(dict.fromkeys(n for series in panels.values() for n in series))
    colors = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    w, h = size
    img = Image.new("RGB", (max(columns * w + 20, 400), rows * h + 60), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 6), title, fill="black", font=_FONT)
    for k, (panel, series) in enumerate(panels.items()):
        x, y = 10 + (k % columns) * w, 24 + (k // columns) * h
        _axes(draw, (x, y, x + w - 10, y + h - 8), series, colors, panel, ylim)
    _legend(draw, 10, img.height - 26, colors)
    return img


Points = list[tuple[float, float]]


def scatter(layers: dict[str, tuple[Points, tuple[int, int, int] | None, int]],
            lines: dict[str, Points], vlines: Sequence[float] = (), title: str = "",
            xlabel: str = "", ylabel: str = "", ylim: tuple[float, float] | None = None,
            size: tuple[int, int] = (900, 560)) -> Image.Image:
    """A scatter plot: ``layers`` name -> (points, colour or None for the palette, radius),
    drawn in order; ``lines`` as polylines in black shades; dashed verticals at ``vlines``.

    A point outside ``ylim`` is left out if its radius is 1 (background), else drawn as a
    triangle on the edge it passed, with its value beside it: a collapsed search stays visible.
    """
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 70
    pts = [p for pts, _, _ in layers.values() for p in pts] + [p for v in lines.values() for p in v]
    lo_x, hi_x = min((p[0] for p in pts), default=0.0), max((p[0] for p in pts), default=1.0)
    lo_x, hi_x = min([lo_x, *vlines]), max([hi_x, *vlines])
    lo_y, hi_y = ylim or (min((p[1] for p in pts), default=0.0), max((p[1] for p in pts), default=1.0))
    hi_x, hi_y = (hi_x if hi_x > lo_x else lo_x + 1), (hi_y if hi_y > lo_y else lo_y + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - lo_x) / (hi_x - lo_x) * (right - left),
                bottom - (min(max(y, lo_y), hi_y) - lo_y) / (hi_y - lo_y) * (bottom - top))

    draw.text((10, 4), title, fill="black", font=_FONT)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for k in range(6):
        x, y = lo_x + k * (hi_x - lo_x) / 5, lo_y + k * (hi_y - lo_y) / 5
        tx, ty = at(x, y)
        label = f"{x:.4g}"
        draw.text((tx - _text_size(draw, label)[0] / 2, bottom + 4), label, fill=(80, 80, 80), font=_FONT)
        draw.text((6, ty - 6), f"{y:.4g}", fill=(80, 80, 80), font=_FONT)
    draw.text(((left + right) / 2 - _text_size(draw, xlabel)[0] / 2, bottom + 18), xlabel,
              fill="black", font=_FONT)
    draw.text((left + 4, top + 2), ylabel, fill="black", font=_FONT)
    for x in vlines:
        px, _ = at(x, lo_y)
        for y in range(int(top), int(bottom), 8):
            draw.line([(px, y), (px, min(y + 4, bottom))], fill=(150, 150, 150))
        draw.text((px + 3, bottom - 14), f"{x:g}", fill=(110, 110, 110), font=_FONT)
    colors, k = {}, 0
    for name, (points, color, radius) in layers.items():
        if color is None:
            color, k = _PALETTE[k % len(_PALETTE)], k + 1
        colors[name] = color
        for x, y in points:
            px, py = at(x, y)
            if lo_y <= y <= hi_y:
                draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=color)
            elif radius > 1:  # a marked point off the axis: a triangle at the edge, and its value
                base = py - 2 * radius - 1 if y < lo_y else py + 2 * radius + 1
                draw.polygon([(px - radius - 1, base), (px + radius + 1, base), (px, py)], fill=color)
                draw.text((px + radius + 3, min(base, py) - (4 if y < lo_y else -2)), f"{y:.4g}",
                          fill=color, font=_FONT)
    for i, (name, points) in enumerate(lines.items()):
        shade = (40 * i, 40 * i, 40 * i)
        step = [q for a, b in zip(points, points[1:]) for q in (at(*a), at(b[0], a[1]))]
        if points:
            step.append(at(*points[-1]))
        if len(step) > 1:
            draw.line(step, fill=shade, width=2)
        colors[name] = shade
    x, y = 10, h - 40
    for name, color in colors.items():
        width = 30 + _text_size(draw, name)[0]
        if x + width > w:
            x, y = 10, y + 16
        draw.rectangle([x, y + 3, x + 14, y + 9], fill=color)
        draw.text((x + 18, y), name, fill="black", font=_FONT)
        x += width
    return img


def _jsonl(path: Path) -> list[dict]:
    """The records of a run's ``.jsonl`` file; a last line without its newline (the run was
    killed while writing it) is left out, any other line that is not a record is an error."""
    import json
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file of JSON records") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)):
            if number == len(lines):  # torn: no newline after it
                continue
            raise InputError(f"{path}, line {number}: not a record of this tool (a JSON object "
                             "with an epoch); fix or delete that line")
        records.append(record)
    return records


def output_dir(out: Path, what: str) -> Path | None:
    """Make the directory pictures go into; returns the outermost directory it created (None
    if it existed), for ``discard``. One line, and nothing made, if it cannot be."""
    problem = path_problem(out)
    if problem:
        raise InputError(f"{what} {str(out)!r}: {problem}")
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"{what} {out} is a file; {what} names the directory to write the "
                             "pictures in")
        outermost = out
        while not outermost.parent.exists() and outermost.parent != outermost:
            outermost = outermost.parent
        made = None if out.exists() else outermost
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {what} {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        discard(made)
        raise InputError(f"cannot write in {what} {out}: permission denied")
    return made


def discard(made: Path | None) -> None:
    """Remove what ``output_dir`` made (files written into it too), after a failed write."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def metrics_dir(run: str | Path) -> Path:
    """The directory of a finished search or retraining (a ``nas run`` directory: its search/)."""
    run = Path(run)
    for folder in (run, run / "search", run / "train"):
        try:
            if (folder / "metrics.jsonl").is_file():
                return folder
        except (OSError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
            raise InputError(f"cannot read the run {str(run)!r}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    raise InputError(f"{run} is not a run directory: no metrics.jsonl in it or in its search/ "
                     "or train/")


COMPARED = {"train_loss": "training loss", "arch_loss": "architecture loss", "entropy":
            "mean edge entropy (nats)", "test_acc": "test accuracy (%)",
            "benchmark_cifar10": "NAS-Bench-201 CIFAR-10 accuracy (%)"}


def _chain_charts(records: list[dict], label: str) -> Image.Image:
    """A chain run's op probabilities over the epochs: one panel per layer, one line per op."""
    panels = {}
    for group, ops in records[-1]["ops"].items():
        layer = records[-1]["edges"][group][0]
        panels[layer] = {op: [(r["epoch"], float(r["probabilities"][group][0][o])) for r in records]
                         for o, op in enumerate(ops)}
    top = max(v for r in records for rows in r["probabilities"].values() for v in rows[0])
    return charts(panels, f"{label}: op probabilities of every layer of the chain over the epochs",
                  ylim=(0.0, math.ceil(top * 20) / 20))


def plot_runs(runs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Draw each run's op probabilities over the epochs (one chart per edge, one line per op) and
    compare the runs' curves (loss, entropy, accuracy, benchmark accuracy); returns the files."""
    out = Path(out)
    folders = [metrics_dir(r) for r in runs]
    images: dict[str, Image.Image] = {}  # drawn first: a bad record writes nothing
    labels = [str(r) for r in runs]
    for label, folder in zip(labels, folders):
        path = folder / "probabilities.jsonl"
        if not path.is_file():
            continue
        records = _jsonl(path)
        if not records:
            continue
        stem = Path(label).name if len(folders) > 1 else ""
        try:
            if records[-1].get("chain"):  # one picture: a panel per layer
                images[f"{stem + '_' if stem else ''}ops_chain.png"] = _chain_charts(records, label)
                continue
            for kind, ops in records[-1]["ops"].items():
                panels = {}
                for e, edge in enumerate(records[-1]["edges"][kind]):
                    panels[edge] = {op: [(r["epoch"], float(r["probabilities"][kind][e][o]))
                                         for r in records] for o, op in enumerate(ops)}
                top = max(v for r in records for row in r["probabilities"][kind] for v in row)
                images[f"{stem + '_' if stem else ''}ops_{kind}.png"] = charts(
                    panels, f"{label}: op probabilities of every edge of the {cell_title(kind)} "
                    "over the epochs (edge = node<-input)", ylim=(0.0, math.ceil(top * 20) / 20))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise InputError(f"{path}: its records do not hold the ops, edges and probabilities "
                             "this tool writes") from None
    metrics = [_jsonl(folder / "metrics.jsonl") for folder in folders]
    panels = {}
    for key, title in COMPARED.items():
        series = {label: [(m["epoch"], m[key]) for m in lines
                          if isinstance(m.get(key), (int, float)) and not isinstance(m[key], bool)]
                  for label, lines in zip(labels, metrics)}
        if any(series.values()):
            panels[title] = {k: v for k, v in series.items() if v}
    if panels:
        images["curves.png"] = charts(panels, "per epoch", columns=3, size=(300, 200))
    made = output_dir(out, "--out")
    written = []
    try:
        for name, img in images.items():
            written.append(out / name)
            img.save(written[-1])
    except OSError as exc:
        discard(made)
        raise InputError(f"cannot write the plots in {out}: {exc.strerror or exc}") from None
    return written
