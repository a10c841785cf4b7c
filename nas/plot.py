"""Pictures for people: a cell as Graphviz DOT text or PNG, and op probabilities as a heatmap.

PNGs are drawn with Pillow (installed with torchvision), so they work without Graphviz; when
the ``dot`` program exists, ``save_cell_png`` uses it instead.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .genotype import Genotype

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
    num_inputs = min(concat) if concat else 1
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
    caption = "cell" if kind == "cell" else f"{kind} cell"
    draw.text((30, height - 22), caption, fill="black", font=_FONT)
    return img


def save_cell_png(genotype: Genotype, kind: str, path: str | Path) -> str:
    """Write the cell as PNG: with Graphviz ``dot`` when installed, else with Pillow."""
    dot = shutil.which("dot")
    if dot:
        result = subprocess.run([dot, "-Tpng", "-o", str(path)], input=to_dot(genotype, kind),
                                text=True, capture_output=True)
        if result.returncode == 0:
            return "graphviz"
    cell_image(genotype, kind).save(path)
    return "pillow"


def heatmap(probs: torch.Tensor, ops: Sequence[str], row_names: Sequence[str],
            title: str = "") -> Image.Image:
    """Edges x ops probabilities as a colour grid, values written in, each row's largest outlined."""
    probs = probs.detach().float().cpu()
    rows, cols = probs.shape
    low, high = probs.min().item(), probs.max().item()
    span = high - low if high > low else 1.0  # colours stretch over the grid's own range
    title = f"{title}  (colour: {low:.2f} .. {high:.2f})" if title else title
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
        row_max = probs[i].max().item()
        for j in range(cols):
            v = probs[i, j].item()
            x0, y0 = left + j * cw, top + i * ch
            shade = (v - low) / span
            draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=_color(shade),
                           outline="red" if v == row_max else None)
            draw.text((x0 + 8, y0 + 3), f"{v:.2f}", fill="white" if shade < 0.6 else "black",
                      font=_FONT)
    return img


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow RGB image as a uint8 ``[3, H, W]`` tensor (for TensorBoard)."""
    data = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).contiguous()
