"""Size and accuracy of weight sharing alone (no fine-tuning) per bit width; Huffman's gain.

    python benchmarks/compress_table.py --weights W --bits 8,7,6,5,4 \
        --eval ../shared/data/imagenet-val

Prints, for each bit width: the .sqz size, the size the same codes and gaps would take at fixed
width (Song Han's layout: b-bit codes, g-bit gaps), the ratio, and top-1/top-5 of the decoded
file. Masks are the model's own zeros (``--sparsity`` as in ``squeezenet compress``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from squeezenet.cli.common import int_list
from squeezenet.compress.pipeline import Options, compress


def fixed_width_bytes(result) -> int:
    """The same file with every code and gap at fixed width instead of Huffman-coded."""
    total = 0
    for r in result.records:
        if not r.shared:
            total += r.nbytes
            continue
        bits = max(1, (r.k - 1).bit_length())
        itemsize = 2 if r.dtype == "float16" else 4
        total += r.k * itemsize + (r.entries * (bits + r.gap_bits) + 7) // 8
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--bits", type=int_list(1, 8), default=[8, 7, 6, 5, 4])
    parser.add_argument("--sparsity", default="auto")
    parser.add_argument("--eval", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        options = Options(
            bits=tuple(args.bits), sparsity=args.sparsity, eval_data=args.eval, progress=False
        )
        report = compress(args.weights, Path(tmp) / "model.sqz", options)
    print(f"{args.weights}: float32 {report.original_size:,} bytes, "
          f"top-1 {report.before['top1']:.2%} top-5 {report.before['top5']:.2%}")  # fmt: skip
    print(f"{'bits':>4} {'.sqz bytes':>11} {'fixed-width':>11} {'Huffman gain':>12} "
          f"{'top-1':>7} {'top-5':>7}")  # fmt: skip
    for r in report.results:
        fixed = fixed_width_bytes(r)
        print(
            f"{r.bits:4d} {r.size:11,d} {fixed:11,d} {fixed / r.size:11.2f}x "
            f"{r.accuracy['top1']:7.2%} {r.accuracy['top5']:7.2%}"
        )


if __name__ == "__main__":
    main()
