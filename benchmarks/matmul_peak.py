"""The machine's fp32 matmul ceiling: GFLOP/s of large square ``torch.mm`` (best of several
timed runs after a warm-up), with torch's default thread count, as the training runs use.

    python benchmarks/matmul_peak.py            # 3072², best of 10
    python benchmarks/matmul_peak.py --quick    # 1024², best of 3

Writes results/matmul_peak.json. ``run_all.py`` divides distalign's training and decoding
FLOP rates by this number (FLOPs ≈ 6·params·tokens forward + backward, 2·params·tokens
forward or decoding).
"""

from __future__ import annotations

import argparse
import time

from common import environment, results_dir, write_json


def peak_gflops(n: int, repeats: int) -> dict:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return {"n": n, "repeats": repeats, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 1024), min(args.repeats, 3)
    result = {**environment(), **peak_gflops(args.n, args.repeats), "quick": args.quick}
    write_json(results_dir(args.quick) / "matmul_peak.json", result)
    print(f"fp32 matmul {args.n}²: {result['gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
