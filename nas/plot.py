"""Pictures for people: a cell as Graphviz DOT text or PNG, and op probabilities as a heatmap.

PNGs are drawn with Pillow (installed with torchvision), so they work without Graphviz; when
the ``dot`` program exists, ``save_cell_png`` uses it instead.
"""
from __future__ import annotations

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
    """Names of a cell's states, and how many of them are cell inputs."""
    nodes, concat = genotype.cells[kind], genotype.concat.get(kind, ())
    num_inputs = min(concat) if concat else 1
    if num_inputs == 1:  # NAS-Bench-201 numbering: state 0 is the input
        return [str(i) for i in range(1 + len(nodes))], 1
    inputs = [f"c_{{k-{num_inputs - i}}}" for i in range(num_inputs)]
    return inputs + [str(i) for i in range(len(nodes))], num_inputs


def to_dot(genotype: Genotype, kind: str) -> str:
    """The cell ``kind`` as Graphviz DOT text."""
    states, num_inputs = cell_states(genotype, kind)
    output = "c_{k}" if genotype.concat.get(kind) else states[-1]
    lines = [f'digraph "{kind}" {{', "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname=helvetica];',
             '  edge [fontname=helvetica, fontsize=10];']
    for i, name in enumerate(states):
        color = "darkseagreen2" if i < num_inputs else "lightblue"
        lines.append(f'  "{name}" [fillcolor={color}];')
    for i, node in enumerate(genotype.cells[kind]):
        for op, src in node:
            lines.append(f'  "{states[src]}" -> "{states[num_inputs + i]}" [label="{op}"];')
    if genotype.concat.get(kind):
        lines.append(f'  "{output}" [fillcolor=palegoldenrod];')
        for i in genotype.concat[kind]:
            lines.append(f'  "{states[i]}" -> "{output}" [color=gray];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def cell_image(genotype: Genotype, kind: str) -> Image.Image:
    """Draw the cell ``kind`` with Pillow: states left to right, edges labelled with their op."""
    states, num_inputs = cell_states(genotype, kind)
    concat = genotype.concat.get(kind, ())
    names = states + (["c_{k}"] if concat else [])
    col_w, row_h, margin = 170, 60, 30
    # inputs in the first column, then one column per node, zigzagging so edges do not overlap
    pos = {}
    for i in range(num_inputs):
        pos[i] = (margin, margin + row_h // 2 + i * 3 * row_h)
    for i in range(len(genotype.cells[kind])):
        pos[num_inputs + i] = (margin + (i + 1) * col_w, margin + (i % 2) * 3 * row_h + row_h)
    if concat:
        pos[len(states)] = (margin + (len(genotype.cells[kind]) + 1) * col_w, margin + 2 * row_h)
    width = max(x for x, _ in pos.values()) + col_w
    height = max(y for _, y in pos.values()) + row_h + margin
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def box(i: int) -> tuple[int, int, int, int]:
        x, y = pos[i]
        w, h = _text_size(draw, names[i])
        return x, y, x + max(w + 16, 40), y + h + 12

    def curve(a: int, b: int, bend: float, fill: tuple[int, int, int]) -> tuple[float, float]:
        ax0, ay0, ax1, ay1 = box(a)
        bx0, by0, bx1, by1 = box(b)
        p0, p2 = (ax1, (ay0 + ay1) / 2), (bx0, (by0 + by1) / 2)
        p1 = ((p0[0] + p2[0]) / 2, (p0[1] + p2[1]) / 2 + bend)
        pts = [((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t * t * p2[0],
                (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t * t * p2[1])
               for t in (k / 24 for k in range(25))]
        draw.line(pts, fill=fill, width=2)
        ex, ey = pts[-1]
        draw.polygon([(ex, ey), (ex - 8, ey - 4), (ex - 8, ey + 4)], fill=fill)
        return pts[15]  # labels near the target, where a node's few edges fan in

    labels = []
    for i, node in enumerate(genotype.cells[kind]):
        for k, (op, src) in enumerate(node):
            bend = (k - (len(node) - 1) / 2) * 50
            labels.append((curve(src, num_inputs + i, bend, (90, 90, 90)), op))
    if concat:
        for i in concat:
            curve(i, len(states), 0, (190, 190, 190))
    for (x, y), op in labels:
        w, h = _text_size(draw, op)
        draw.rectangle([x - w / 2 - 2, y - h / 2 - 2, x + w / 2 + 2, y + h / 2 + 2], fill="white")
        draw.text((x - w / 2, y - h / 2), op, fill=(20, 20, 120), font=_FONT)
    for i in pos:
        color = (200, 230, 200) if i < num_inputs else (255, 240, 180) if i == len(states) \
            else (200, 220, 245)
        draw.rounded_rectangle(box(i), radius=6, fill=color, outline=(60, 60, 60))
        x0, y0, _, _ = box(i)
        draw.text((x0 + 8, y0 + 6), names[i], fill="black", font=_FONT)
    draw.text((margin, height - margin + 8), f"{kind} cell", fill="black", font=_FONT)
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
