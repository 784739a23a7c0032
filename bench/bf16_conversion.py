"""float32 -> bfloat16 conversion on AVX-512: the CPU kernels' (ATen's integer rounding)
against the AVX-512 BF16 instruction, alone, in cache and at the kernels' result size, and
the inputs whose results differ (bench/cpp/bf16_conversion.cpp). Issue 26: measure both and
keep the faster.

    python bench/bf16_conversion.py [--mib 32] [--out bench/results/<cpu>/bf16_conversion.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "cpp" / "bf16_conversion.cpp"
FLAGS = ["-O2", "-std=c++17", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]


def run(mib: float, repeats: int) -> str:
    """The program's report; a line starting "skipped:" where the CPU or compiler cannot."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return "skipped: no C++ compiler"
    with tempfile.TemporaryDirectory() as folder:
        exe = os.path.join(folder, "bf16_conversion")
        build = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", exe], capture_output=True, text=True
        )
        if build.returncode != 0:
            return f"skipped: {compiler} cannot build it:\n{build.stderr[-2000:]}"
        done = subprocess.run([exe, str(mib), str(repeats)], capture_output=True, text=True)
        done.check_returncode()
        return done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=32.0, help="float32 input size")
    parser.add_argument("--repeats", type=int, default=15, help="passes; the best is kept")
    parser.add_argument("--out", help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    report = run(args.mib, args.repeats)
    print(report, end="")
    if args.out:
        Path(args.out).write_text(f"# float32 -> bfloat16 on AVX-512\n\n```\n{report}```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
