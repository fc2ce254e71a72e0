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
        ("caffe-time.png", _caffe_time),
    ):
        figure = draw(plt, rows=rows, limits=limits, main=main, grouped=grouped)
        if figure is None:  # its step did not run
            continue
        figure.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    return written


def _ladder(plt, rows, limits, main, **_):
    timed = [r for r in rows if r.gflops is not None]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.2))
    labels = [f"{r.step}. {r.title}" for r in timed]
    colours = ["#55a868" if r.where != "cpu" else "#dd8452" if r.step >= 14 else "#4c72b0" for r in timed]
    axes.barh(labels, [r.gflops for r in timed], color=colours)
    limit = limits["sgemm_gflops"]
    beyond = any(r.gflops > limit for r in timed)
    note = " (measured in a busy spell: steps pass it)" if beyond else ""
    axes.axvline(limit, color="#c44e52", linestyle="--", label=f"this host's sgemm, {limit:.0f} GFLOP/s{note}")
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("GFLOP/s (log scale)")
    axes.set_title(f"{main.name}: each step, checked and timed (backward: orange)", fontsize=10)
    axes.legend(loc="lower right")
    return figure


def _roofline(plt, rows, limits, **_):
    points = [r for r in rows if r.gflops is not None and r.intensity > 0]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    intensity = np.logspace(-1, 3, 200)
    roof = np.minimum(limits["sgemm_gflops"], intensity * limits["memory_gbs"])
    axes.loglog(intensity, roof, color="#c44e52", label="min(sgemm, intensity x memory bandwidth)")
    for number, r in enumerate(points):
        axes.scatter(r.intensity, r.gflops, color="#4c72b0")
        # Labels alternate above and below their points: neighbours (6 and 9) do not overlap.
        offset = (5, 5) if number % 2 == 0 else (5, -12)
        axes.annotate(str(r.step), (r.intensity, r.gflops), textcoords="offset points", xytext=offset)
    axes.set_xlabel("arithmetic intensity: FLOP per byte of memory traffic")
    axes.set_ylabel("GFLOP/s")
    axes.set_title(
        f"roofline: sgemm {limits['sgemm_gflops']:.0f} GFLOP/s, memory {limits['memory_gbs']:.1f} GB/s",
        fontsize=10,
    )
    # Below the axes, where no point can hide under it.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8)
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
    # One window of the input (channel 0, the first output pixel's k x k taps) and its column.
    from matplotlib.patches import Rectangle

    left.add_patch(Rectangle((-0.5, -0.5), k, k, fill=False, edgecolor="#c44e52", linewidth=2.5))
    taps = columns.shape[0]
    right.add_patch(Rectangle((-0.5, -0.5), 1, taps, fill=False, edgecolor="#c44e52", linewidth=2.5))
    right.set_title(
        f"im2col: {columns.shape[0]} taps (channel, ky, kx) x {columns.shape[1]} output pixels", fontsize=10
    )
    right.set_xlabel("output pixel")
    right.set_ylabel("tap")
    return figure


def _winograd(plt, main, **_):
    """F(2x2, 3x3) on one 4x4 tile of the layer's input (channel 0) and filter 0's weights for
    it: the transforms, U = G g G^T, V = B^T d B, their 16 products U * V (against the 36 of
    the direct 2x2 outputs), and Y = A^T (U * V) A, the 2x2 outputs of that channel."""
    tile = main.x[0, 0, :4, :4]
    weights = main.weights[0, 0]
    u = WINOGRAD_G @ weights @ WINOGRAD_G.T
    v = WINOGRAD_B_T @ tile @ WINOGRAD_B_T.T
    y = WINOGRAD_A_T @ (u * v) @ WINOGRAD_A_T.T
    figure, axes = plt.subplots(2, 5, figsize=(15, 6.4))
    for ax, (title, matrix) in zip(
        axes.reshape(-1),
        (
            ("B^T (input transform)", WINOGRAD_B_T),
            ("G (weight transform)", WINOGRAD_G),
            ("A^T (output transform)", WINOGRAD_A_T),
            ("tile d (4 x 4 input)", tile),
            ("weights g (3 x 3)", weights),
            ("V = B^T d B", v),
            ("U = G g G^T", u),
            ("U * V: 16 multiplies", u * v),
            ("Y = A^T (U * V) A: 2 x 2", y),
            ("direct: 4 x 9 = 36 multiplies", _direct_outputs(tile, weights)),
        ),
    ):
        ax.imshow(matrix, cmap="coolwarm", vmin=-np.abs(matrix).max(), vmax=np.abs(matrix).max())
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def _direct_outputs(tile: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The same 2x2 outputs by the definition (what Y must equal)."""
    return np.array([[np.sum(tile[i : i + 3, j : j + 3] * weights) for j in range(2)] for i in range(2)])


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
    axes.set_xticks(range(LANES))
    axes.set_yticks(range(vectors))
    axes.set_xlabel("vector lane")
    axes.set_ylabel("vector (one per channel of a group)")
    axes.set_title(f"{grouped.name}: eight groups side by side in the lanes", fontsize=10)
    return figure


def _caffe_time(plt, rows, **_):
    """Step 21: each layer's forward and backward milliseconds in one training pass."""
    found = [r for r in rows if r.per_layer]
    if not found:
        return None
    row = found[0]
    names = [name for name, _, _ in row.per_layer]
    forward = np.array([f for _, f, _ in row.per_layer])
    backward = np.array([b for _, _, b in row.per_layer])
    figure, axes = plt.subplots(figsize=(8, 0.28 * len(names) + 1.2))
    at = np.arange(len(names))
    axes.barh(at - 0.2, forward, height=0.4, color="#4c72b0", label=f"forward, {forward.sum():.0f} ms")
    axes.barh(at + 0.2, backward, height=0.4, color="#dd8452", label=f"backward, {backward.sum():.0f} ms")
    axes.set_yticks(at, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ms per layer (median)")
    axes.set_title(f"{row.layer}, batch 1: one training pass, layer by layer", fontsize=10)
    axes.legend(loc="lower right")
    return figure
