"""What a compression run produced: per-layer tables, a summary, JSON, and a size/accuracy plot."""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..io import atomic_write_bytes
from ..weights.formats.sqz import Record
from .pipeline import Report, Result


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
        rows.append(
            f"{r.path.name[:40]:40s} {r.bits:4d} {r.size:10,d} "
            f"{report.original_size / r.size:6.1f}x "
            f"{_percent(r.accuracy, 'top1')} {_percent(r.accuracy, 'top5')}"
        )
    return "\n".join(rows)


def _record_json(r: Record) -> dict:
    return {**r.to_json(), "bytes": r.nbytes, "nonzero": r.nonzero}


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
            }
            for r in report.results
        ],
    }


def plot(report: Report, path: str | Path) -> None:
    """Size (KB) against top-1 and top-5 for each bit width, the original as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report.results if r.accuracy]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, color in (("top1", "tab:blue"), ("top5", "tab:orange")):
        sizes = [r.size / 1000 for r in results]
        ax.plot(sizes, [100 * r.accuracy[key] for r in results], "o-", color=color, label=key)
        for r, x in zip(results, sizes, strict=True):
            ax.annotate(f"{r.bits} bit", (x, 100 * r.accuracy[key]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)  # fmt: skip
        if report.before:
            label = f"{key} original ({report.original_size / 1e6:.2f} MB float32)"
            ax.axhline(100 * report.before[key], color=color, ls="--", lw=0.8, label=label)
    ax.set_xlabel("file size (KB)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Deep Compression of {Path(report.weights).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
