"""PNG plots of a results file: effective bandwidth against input size, a line per contender
and a dashed line for the copy bandwidth; one figure per dtype, a panel per function and
direction.

    python bench/plot.py bench/results/cpu-amd-epyc-avx2/results.json   # remakes its plots
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import contender_order, rows


def plot(results: dict, out_dir: Path) -> list[str]:
    """Writes bandwidth_<dtype>.png into `out_dir`; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = rows(results)
    copy_gbps = results["copy_bandwidth"]["gb_per_s"]
    names = contender_order(results)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    written = []
    for dtype in dict.fromkeys(r.dtype for r in all_rows):
        of_dtype = [r for r in all_rows if r.dtype == dtype]
        functions = list(dict.fromkeys(r.function for r in of_dtype))
        directions = list(dict.fromkeys(r.direction for r in of_dtype))
        fig, axes = plt.subplots(
            len(functions),
            len(directions),
            figsize=(4.2 * len(directions), 2.8 * len(functions)),
            squeeze=False,
            sharex=True,
        )
        for i, function in enumerate(functions):
            for j, direction in enumerate(directions):
                ax = axes[i][j]
                panel = [r for r in of_dtype if r.function == function and r.direction == direction]
                for name in names:
                    points = sorted(
                        (r.input_bytes / 2**20, r.gb_per_s) for r in panel if r.contender == name
                    )
                    if points:
                        ax.plot(*zip(*points), marker=".", label=name, color=colors[name])
                ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label="copy")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(f"{function} {direction}", fontsize=9)
                ax.grid(True, which="major", alpha=0.3)
                if j == 0:
                    ax.set_ylabel("GB/s")
                if i == len(functions) - 1:
                    ax.set_xlabel("input MiB")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.suptitle(
            f"{results['environment']['device_name']}, {dtype}: effective bandwidth "
            "(bytes read + written / time)",
            y=0.995,
            fontsize=10,
        )
        top = 1 - 0.75 / fig.get_figheight()
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, top + 0.005 * 7),
            ncol=len(labels),
            fontsize=9,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0, 1, top))
        name = f"bandwidth_{dtype}.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results.json written by bench/run.py")
    args = parser.parse_args()
    for name in plot(json.loads(args.results.read_text()), args.results.parent):
        print(args.results.parent / name)


if __name__ == "__main__":
    main()
