#!/usr/bin/env python
"""Bias and spread of the Gumbel gradient estimators against the exact gradient.

    python scripts/estimators.py [--draws 4000] [--seed 0] [--out DIR]

Three problems whose expected loss is computable by enumeration, each a loss f(D) of one-hot
samples D of softmax(theta):

- ``categorical``: one categorical of 6 categories through (w . D - 0.45)^2;
- ``cell``: 3 independent categoricals of 5 categories (a tiny cell) through (sum_e w_e . D_e - 1)^2;
- ``toy``: theta of shape 128 x 2, loss mean |D[:, 1] - 0.45|^3 (the Gumbel literature's toy;
  the exact expectation is p1 * 0.55^3 + p0 * 0.45^3 per row).

Estimators: ``st`` (straight-through Gumbel-softmax, the surrogate behind gdas), ``gumbel_rao``
(8 conditional draws), ``reinmax``, ``reinforce`` (4 samples, leave-one-out baseline; no
temperature), and decoupled straight-through at a fixed forward temperature (``decoupled_f0.5``,
``decoupled_f2``: the one-hot drawn from softmax(theta / tau_f), the gradient through the
relaxation at the table's tau; measured, like the others, against the exact gradient of the
expected loss under softmax(theta)). For each temperature it reports the bias |mean(g_hat) - g| / |g| and the spread
sqrt(sum var(g_hat)) / |g| over ``--draws`` draws, writes estimators.md and estimators.png
(bias and spread against tau, log scales) into ``--out``, and prints the table.
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nas import gumbel  # noqa: E402
from nas.errors import InputError, OneLineParser  # noqa: E402
from nas.runtime import check_output  # noqa: E402

TAUS = (0.1, 0.3, 1.0, 3.0, 10.0)
ESTIMATORS = ("st", "gumbel_rao", "reinmax", "reinforce", "decoupled_f0.5", "decoupled_f2")
Loss = Callable[[torch.Tensor], torch.Tensor]  # one-hot [N, *shape] -> loss [N]


def problems(gen: torch.Generator) -> dict[str, tuple[torch.Tensor, Loss]]:
    """name -> (theta, loss of a batch of one-hot samples)."""
    w6, w3 = torch.randn(6, generator=gen), torch.randn(3, 5, generator=gen)
    return {
        "categorical": (torch.randn(6, generator=gen), lambda d: ((d * w6).sum(-1) - 0.45) ** 2),
        "cell": (torch.randn(3, 5, generator=gen), lambda d: ((d * w3).sum((-1, -2)) - 1.0) ** 2),
        "toy": (torch.randn(128, 2, generator=gen),
                lambda d: ((d[..., 1] - 0.45).abs() ** 3).mean(-1)),
    }


def exact_gradient(theta: torch.Tensor, loss: Loss) -> torch.Tensor:
    """d/dtheta of E[loss(D)], by enumerating every outcome (or row by row for the toy)."""
    t = theta.clone().requires_grad_(True)
    p = t.softmax(-1)
    rows, k = (theta.shape[0], theta.shape[1]) if theta.dim() == 2 else (1, theta.shape[0])
    if rows > 8:  # the toy's loss is a mean of per-row terms: its expectation is too
        eye = torch.eye(k)
        per = torch.stack([loss(eye[j].expand(rows, k).unsqueeze(0)) for j in range(k)])  # [k, 1]
        value = sum(p[:, j].mean() * per[j].squeeze() for j in range(k))
    else:
        eye, value = torch.eye(k), 0.0
        for combo in itertools.product(range(k), repeat=rows):
            d = eye[list(combo)].reshape(theta.shape)
            prob = torch.stack([p.reshape(rows, k)[r, c] for r, c in enumerate(combo)]).prod()
            value = value + prob * loss(d.unsqueeze(0)).squeeze()
    (grad,) = torch.autograd.grad(value, t)
    return grad


def estimate(name: str, theta: torch.Tensor, loss: Loss, tau: float, draws: int,
             gen: torch.Generator) -> torch.Tensor:
    """``draws`` independent gradient estimates, shape [draws, *theta.shape]."""
    t = theta.expand(draws, *theta.shape).clone().requires_grad_(True)
    if name == "reinforce":
        samples = 4
        idx = [gumbel.perturb(t.detach(), gen).argmax(-1) for _ in range(samples)]
        eye = torch.eye(theta.shape[-1])
        losses = torch.stack([loss(eye[i]) for i in idx])  # [samples, draws]
        baseline = (losses.sum(0) - losses) / (samples - 1)
        logp = torch.stack([t.log_softmax(-1).gather(-1, i.unsqueeze(-1)).squeeze(-1)
                            .reshape(draws, -1).sum(-1) for i in idx])
        ((losses - baseline).detach() * logp).mean(0).sum().backward()
        return t.grad
    if name.startswith("decoupled_f"):  # what Supernet.sample does with tau_forward
        d, _ = gumbel.gumbel_softmax(t / float(name[len("decoupled_f"):]), tau, hard=True,
                                     generator=gen)
        loss(d).sum().backward()
        return t.grad
    d, index = gumbel.gumbel_softmax(t, tau, hard=True, generator=gen)
    if name == "gumbel_rao":
        d = gumbel.gumbel_rao(t, index, tau, samples=8, generator=gen)
    elif name == "reinmax":
        d = gumbel.reinmax(t, index, tau)
    loss(d).sum().backward()
    return t.grad


def measure(draws: int, seed: int) -> list[dict]:
    """One row per problem, estimator and temperature."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for pname, (theta, loss) in problems(gen).items():
        exact = exact_gradient(theta, loss)
        norm = exact.norm().item()
        for est in ESTIMATORS:
            for tau in (TAUS if est != "reinforce" else (1.0,)):
                g = estimate(est, theta, loss, tau, draws, gen)
                rows.append({"problem": pname, "estimator": est, "tau": tau if est != "reinforce" else None,
                             "bias": (g.mean(0) - exact).norm().item() / norm,
                             "spread": g.var(0).sum().sqrt().item() / norm})
    return rows


def markdown(rows: list[dict], draws: int) -> str:
    """The table: one line per problem and estimator, bias / spread per temperature."""
    head = "| problem | estimator | " + " | ".join(f"tau {t:g}" for t in TAUS) + " |"
    lines = [f"Relative bias / spread of each estimator over {draws} draws (lower is better).", "",
             head, "|---|---|" + "---:|" * len(TAUS)]
    for (pname, est), group in itertools.groupby(rows, key=lambda r: (r["problem"], r["estimator"])):
        group = list(group)
        cells = [f"{r['bias']:.3f} / {r['spread']:.2f}" for r in group]
        if est == "reinforce":
            cells = [cells[0] + " (any tau)"] + [""] * (len(TAUS) - 1)
        lines.append(f"| {pname} | {est} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Bias and spread against tau (log-log), one panel per problem and quantity."""
    colours = {"st": (31, 119, 180), "gumbel_rao": (44, 160, 44), "reinmax": (214, 39, 40),
               "reinforce": (148, 103, 189), "decoupled_f0.5": (255, 127, 14),
               "decoupled_f2": (140, 86, 75)}
    names = list(dict.fromkeys(r["problem"] for r in rows))
    pw, ph, m = 300, 220, 45
    img = Image.new("RGB", (pw * len(names), ph * 2 + 30), "white")
    draw = ImageDraw.Draw(img)
    for col, pname in enumerate(names):
        for row, key in enumerate(("bias", "spread")):
            x0, y0 = col * pw + m, row * ph + m // 2
            w, h = pw - m - 10, ph - m
            sel = [r for r in rows if r["problem"] == pname]
            vals = [max(r[key], 1e-4) for r in sel]
            lo, hi = math.log10(min(vals)), math.log10(max(vals))
            hi = hi if hi > lo else lo + 1
            draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
            draw.text((x0 + 4, y0 + 2), f"{pname}: {key}", fill="black")
            draw.text((x0 - m + 2, y0), f"{10 ** hi:.2g}", fill="black")
            draw.text((x0 - m + 2, y0 + h - 10), f"{10 ** lo:.2g}", fill="black")

            def xy(tau: float, v: float) -> tuple[float, float]:
                fx = (math.log10(tau) + 1) / 2  # tau in [0.1, 10]
                fy = (math.log10(max(v, 1e-4)) - lo) / (hi - lo)
                return x0 + fx * w, y0 + h - fy * h

            for est in ESTIMATORS:
                pts = [xy(r["tau"] or 1.0, r[key]) for r in sel if r["estimator"] == est]
                if est == "reinforce":
                    draw.line([(x0, pts[0][1]), (x0 + w, pts[0][1])], fill=colours[est], width=1)
                else:
                    draw.line(pts, fill=colours[est], width=2)
            for tau in TAUS:
                draw.text((xy(tau, 1)[0] - 8, y0 + h + 2), f"{tau:g}", fill="black")
    x = 10
    for est in ESTIMATORS:
        draw.rectangle([x, ph * 2 + 12, x + 12, ph * 2 + 22], fill=colours[est])
        draw.text((x + 16, ph * 2 + 12), est + (" (no tau)" if est == "reinforce" else ""), fill="black")
        x += 150
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=4000, help="gradient estimates per cell of the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/estimators", help="directory for estimators.md/.png")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws must be at least 2, got {args.draws}")
    try:
        check_output(args.out, "--out", directory=True)
    except InputError as exc:
        p.error(str(exc))
    torch.set_num_threads(1)
    rows = measure(args.draws, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, args.draws)
    (out / "estimators.md").write_text(text)
    plot(rows, out / "estimators.png")
    print(text + f"\nwritten: {out / 'estimators.md'}, {out / 'estimators.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
