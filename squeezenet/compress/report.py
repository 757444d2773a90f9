"""What a compression run produced: per-layer tables, a summary, JSON, and a size/accuracy plot."""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..io import atomic_write_bytes
from ..weights.formats.sqz import Record
from .pipeline import Report, Result, Search


def _percent(accuracy: dict | None, key: str) -> str:
    return f"{accuracy[key]:6.2%}" if accuracy else "     -"


def layer_table(result: Result) -> str:
    """Per-tensor density, bits, gap bits and bytes of one file."""
    lines = [
        f"{'tensor':32s} {'shape':>16s} {'density':>8s} {'bits':>4s} {'gap':>3s} {'bytes':>8s}"
    ]
    dense_bytes = 0
    for r in result.records:
        if not r.shared:
            dense_bytes += r.nbytes
            continue
        numel = math.prod(r.shape)
        lines.append(
            f"{r.name:32s} {'x'.join(map(str, r.shape)):>16s} {r.nonzero / numel:8.1%} "
            f"{math.ceil(math.log2(r.k)):4d} {r.gap_bits:3d} {r.nbytes:8,d}"
        )
    dense = [r for r in result.records if not r.shared]
    lines.append(f"{f'{len(dense)} dense tensors (biases...)':32s} {'':>16s} {'':>8s} "
                 f"{'':>4s} {'':>3s} {dense_bytes:8,d}")  # fmt: skip
    header = result.size - sum(r.nbytes for r in result.records)
    lines.append(f"{'header, metadata, checksum':32s} {'':>16s} {'':>8s} {'':>4s} {'':>3s} "
                 f"{header:8,d}")  # fmt: skip
    lines.append(f"{'total':32s} {'':>16s} {'':>8s} {'':>4s} {'':>3s} {result.size:8,d}")
    return "\n".join(lines)


def summary_table(report: Report) -> str:
    """One row for the original and one per bit width: bytes, ratio, top-1, top-5."""
    rows = [f"{'file':40s} {'bits':>4s} {'bytes':>10s} {'ratio':>6s} {'top-1':>7s} {'top-5':>7s}"]
    rows.append(
        f"{Path(report.weights).name[:31] + ' (float32)':40s} {'':>4s} {report.original_size:10,d} "
        f"{1:6.1f}x {_percent(report.before, 'top1')} {_percent(report.before, 'top5')}"
    )
    for r in report.results:
        bits = "mix" if r.bits is None else str(r.bits)
        rows.append(
            f"{r.path.name[:40]:40s} {bits:>4s} {r.size:10,d} "
            f"{report.original_size / r.size:6.1f}x "
            f"{_percent(r.accuracy, 'top1')} {_percent(r.accuracy, 'top5')}"
        )
    return "\n".join(rows)


def search_table(search: Search) -> str:
    """The allocations the search compressed for real: bytes, prediction, held-out accuracy."""
    held = search.holdout
    rows = [
        f"held-out split: {held['n']} images of --data, the original {held['top1']:.2%} top-1 "
        f"{held['top5']:.2%} top-5; calibration: {search.calibration} other images",
        f"{'':2s}{'bytes':>10s} {'planned':>10s} {'pred. KL':>9s} {'top-1':>7s} {'top-5':>7s}",
    ]
    for c in sorted(search.candidates, key=lambda c: c.size):
        mark = "* " if c is search.chosen else "  "
        rows.append(
            f"{mark}{c.size:10,d} {c.planned + search.overhead:10,d} {c.predicted:9.4f} "
            f"{_percent(c.accuracy, 'top1')} {_percent(c.accuracy, 'top5')}"
        )
    return "\n".join(rows + ["* written (planned: the knapsack's estimate before compressing)"])


def _record_json(r: Record) -> dict:
    return {**r.to_json(), "bytes": r.nbytes, "nonzero": r.nonzero}


def _search_json(search: Search | None) -> dict | None:
    if search is None:
        return None
    return {
        "target_bytes": search.target_bytes,
        "max_drop": search.max_drop,
        "calibration_images": search.calibration,
        "holdout": search.holdout,
        "overhead_bytes": search.overhead,
        "candidates": [
            {
                "bytes": c.size,
                "planned_bytes": c.planned + search.overhead,
                "predicted_kl": c.predicted,
                "holdout": c.accuracy,
                "chosen": c is search.chosen,
            }
            for c in search.candidates
        ],  # fmt: skip
    }


def to_json(report: Report) -> dict:
    return {
        "weights": report.weights,
        "float32_bytes": report.original_size,
        "before": report.before,
        "target_density": report.densities,
        "seconds": round(report.seconds, 1),
        "results": [
            {
                "bits": r.bits,
                "file": str(r.path),
                "bytes": r.size,
                "accuracy": r.accuracy,
                "tensors": [_record_json(t) for t in r.records],
                "choices": r.choices
                and {role: {"bits": c.bits, "density": c.density} for role, c in r.choices.items()},
            }
            for r in report.results
        ],
        "search": _search_json(report.search),
    }


def plot(report: Report, path: str | Path) -> None:
    """Size (KB) against top-1 and top-5: of each bit width, or of every file a search tried
    (on its held-out split, the written one circled, the --eval measurement as stars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if report.search is not None:
        _plot_search(ax, report)
    else:
        _plot_bits(ax, report)
    ax.set_xlabel("file size (KB)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Deep Compression of {Path(report.weights).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _plot_bits(ax, report: Report) -> None:
    results = [r for r in report.results if r.accuracy]
    for key, color in (("top1", "tab:blue"), ("top5", "tab:orange")):
        sizes = [r.size / 1000 for r in results]
        ax.plot(sizes, [100 * r.accuracy[key] for r in results], "o-", color=color, label=key)
        for r, x in zip(results, sizes, strict=True):
            ax.annotate(f"{r.bits} bit", (x, 100 * r.accuracy[key]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)  # fmt: skip
        if report.before:
            label = f"{key} original ({report.original_size / 1e6:.2f} MB float32)"
            ax.axhline(100 * report.before[key], color=color, ls="--", lw=0.8, label=label)


def _plot_search(ax, report: Report) -> None:
    search = report.search
    tried = sorted(search.candidates, key=lambda c: c.size)
    sizes = [c.size / 1000 for c in tried]
    for key, color in (("top1", "tab:blue"), ("top5", "tab:orange")):
        values = [100 * c.accuracy[key] for c in tried]
        ax.plot(sizes, values, "o-", color=color, label=f"{key}, held-out split (tried)")
        chosen = search.chosen
        ax.plot(chosen.size / 1000, 100 * chosen.accuracy[key], "o", ms=11, mfc="none",
                color=color)  # fmt: skip
        ax.axhline(100 * search.holdout[key], color=color, ls="--", lw=0.8,
                   label=f"{key} original, held-out split")  # fmt: skip
        result = report.results[0]
        if result.accuracy:
            ax.plot(result.size / 1000, 100 * result.accuracy[key], "*", ms=12, color=color,
                    label=f"{key} of the written file on --eval")  # fmt: skip
    if search.target_bytes is not None:
        ax.axvline(search.target_bytes / 1000, color="gray", lw=0.8, label="--target-bytes")
    # the knapsack's frontier: least predicted KL divergence of the logits at each size
    frontier = [(b + search.overhead, kl) for b, kl in search.frontier if kl > 0]
    if frontier:
        twin = ax.twinx()
        twin.semilogy([b / 1000 for b, _ in frontier], [kl for _, kl in frontier], color="gray",
                      lw=0.8, ls=":")  # fmt: skip
        twin.set_ylabel("predicted KL divergence (dotted)", color="gray", fontsize=8)
        ax.set_xlim(0.8 * min(sizes), 1.25 * max(sizes))
