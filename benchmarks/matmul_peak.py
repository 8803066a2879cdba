"""The machine's matmul ceiling (float32, or bfloat16 with ``--dtype``): GFLOP/s of large
square ``torch.mm`` (best of several timed runs after a warm-up), with torch's default thread
count, as the training runs use.

    python benchmarks/matmul_peak.py                    # 3072², best of 10
    python benchmarks/matmul_peak.py --quick            # 1024², best of 3
    python benchmarks/matmul_peak.py --dtype bfloat16   # the bfloat16 ceiling

Writes results/matmul_peak.json (``--dtype bfloat16``: matmul_peak_bfloat16.json; on CPUs
with AMX or AVX512-BF16 it is several times the float32 one, which is why ``make demo`` computes
in bfloat16 there). ``run_all.py`` divides distalign's training and decoding
FLOP rates by this number (FLOPs ≈ 6·params·tokens forward + backward, 2·params·tokens
forward or decoding).
"""

from __future__ import annotations

import argparse
import time

from common import environment, results_dir, write_json


def peak_gflops(n: int, repeats: int, dtype: str = "float32") -> dict:
    import torch

    kind = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    out = torch.empty(n, n, dtype=kind)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return {
        "n": n,
        "dtype": dtype,
        "repeats": repeats,
        "best_s": best,
        "gflops": 2 * n**3 / best / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 1024), min(args.repeats, 3)
    result = {**environment(), **peak_gflops(args.n, args.repeats, args.dtype), "quick": args.quick}
    name = "matmul_peak.json" if args.dtype == "float32" else f"matmul_peak_{args.dtype}.json"
    write_json(results_dir(args.quick) / name, result)
    print(f"{args.dtype} matmul {args.n}²: {result['gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
