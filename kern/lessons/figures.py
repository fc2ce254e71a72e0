"""The lessons' figures, drawn from the run's numbers and the real code's data (matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kern.cpu.grouped import LANES, lane_order
from kern.lessons.steps import WINOGRAD_A_T, WINOGRAD_B_T, WINOGRAD_G, Problem
from kern.ref import im2col


def write_all(folder: Path, rows: list, limits: dict, main: Problem, grouped: Problem) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        print("figures skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (
        ("ladder.png", _ladder),
        ("roofline.png", _roofline),
        ("im2col.png", _im2col),
        ("winograd.png", _winograd),
        ("lanes.png", _lanes),
    ):
        figure = draw(plt, rows=rows, limits=limits, main=main, grouped=grouped)
        figure.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    return written


def _ladder(plt, rows, limits, main, **_):
    timed = [r for r in rows if r.gflops is not None]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.2))
    labels = [f"{r.step}. {r.title}" for r in timed]
    axes.barh(
        labels, [r.gflops for r in timed], color=["#4c72b0" if r.where == "cpu" else "#55a868" for r in timed]
    )
    axes.axvline(limits["sgemm_gflops"], color="#c44e52", linestyle="--", label="this host's sgemm")
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("GFLOP/s (log scale)")
    axes.set_title(f"{main.name}: each step, checked and timed", fontsize=10)
    axes.legend(loc="lower right")
    return figure


def _roofline(plt, rows, limits, **_):
    points = [r for r in rows if r.gflops is not None and r.intensity > 0]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    intensity = np.logspace(-1, 3, 200)
    roof = np.minimum(limits["sgemm_gflops"], intensity * limits["memory_gbs"])
    axes.loglog(intensity, roof, color="#c44e52", label="min(sgemm, intensity x memory bandwidth)")
    for r in points:
        axes.scatter(r.intensity, r.gflops, color="#4c72b0")
        axes.annotate(str(r.step), (r.intensity, r.gflops), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("arithmetic intensity: FLOP per byte of memory traffic")
    axes.set_ylabel("GFLOP/s")
    axes.set_title(
        f"roofline: sgemm {limits['sgemm_gflops']:.0f} GFLOP/s, memory {limits['memory_gbs']:.1f} GB/s",
        fontsize=10,
    )
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _im2col(plt, main, **_):
    """A 6 x 6 corner of the layer's first two input channels, and what im2col makes of it."""
    k = main.weights.shape[2]
    patch = main.x[0, :2, :6, :6]
    columns = im2col(patch, k, main.stride, main.padding)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 3]})
    left.imshow(np.hstack([patch[0], np.full((6, 1), np.nan), patch[1]]), cmap="viridis")
    left.set_title("input: 2 channels x 6 x 6", fontsize=10)
    left.axis("off")
    right.imshow(columns, cmap="viridis", aspect="auto")
    right.set_title(
        f"im2col: {columns.shape[0]} taps (channel, ky, kx) x {columns.shape[1]} output pixels", fontsize=10
    )
    right.set_xlabel("output pixel")
    right.set_ylabel("tap")
    return figure


def _winograd(plt, main, **_):
    """The three transforms of F(2x2, 3x3), and one 4x4 tile of the layer's input before and
    after B^T d B."""
    tile = main.x[0, 0, :4, :4]
    transformed = WINOGRAD_B_T @ tile @ WINOGRAD_B_T.T
    figure, axes = plt.subplots(1, 5, figsize=(15, 3.2))
    for ax, (title, matrix) in zip(
        axes,
        (
            ("B^T (input)", WINOGRAD_B_T),
            ("G (weights)", WINOGRAD_G),
            ("A^T (output)", WINOGRAD_A_T),
            ("tile d", tile),
            ("B^T d B", transformed),
        ),
    ):
        ax.imshow(matrix, cmap="coolwarm", vmin=-np.abs(matrix).max(), vmax=np.abs(matrix).max())
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def _lanes(plt, grouped, **_):
    """grouped.lane_order for the grouped layer's first block: vector v holds channel c of
    eight groups, group 8b + j in lane j."""
    channels = grouped.x.shape[1]
    blocks = grouped.groups // LANES
    order = lane_order(channels, blocks)
    per_group = channels // grouped.groups
    vectors = min(per_group, 8)
    group_of = (order // per_group)[: vectors * LANES].reshape(vectors, LANES)
    channel_of = (order % per_group)[: vectors * LANES].reshape(vectors, LANES)
    figure, axes = plt.subplots(figsize=(8, 0.5 * vectors + 1))
    axes.imshow(group_of, cmap="tab20", aspect="auto")
    for (v, j), g in np.ndenumerate(group_of):
        axes.text(j, v, f"g{g} c{channel_of[v, j]}", ha="center", va="center", fontsize=8)
    axes.set_xlabel("vector lane")
    axes.set_ylabel("vector (one per channel of a group)")
    axes.set_title(f"{grouped.name}: eight groups side by side in the lanes", fontsize=10)
    return figure
