#!/usr/bin/env python3
"""scripts/bench_kernel_speed.py: do PyTorch's kernels run as fast on glake's memory as on PyTorch's?

The allocator only decides where tensors live, yet where they live can change how fast kernels run
(tests/gpu/bench_chunk_bandwidth.cu: the physical chunks under a buffer). This runs the same kernels,
timed with CUDA events (median of 40 after 5 warm-up runs), in one fresh process per configuration
(native, expandable, glake by default; --rounds times, the order rotating), and prints each kernel's median time
beside native's in the same round:
  - copy_1GiB: y.copy_(x), 1 GiB fp32 each (memory-bound, near the GPU's peak bandwidth);
  - matmul_8k: bf16 8192 x 8192 @ 8192 x 8192 (compute-bound);
  - gather_16M: x[idx], 16M random indices into x (latency- and TLB-bound);
  - add_256x3MiB: t.add_(1) over 256 tensors of 3 MiB (many mid-size tensors, as in a training step);
  - empty_1000: host time (not the GPU's) of 1000 torch.empty() of 4 KiB to 1 MiB, each dropped at
    once: what the allocator costs a host-bound job per tensor (PyTorch's Python and C++ included, the
    same in every configuration; configuration cudaasync is PyTorch's cudaMallocAsync backend on
    CUDA's own pool, the backend glake is reached through).
Needs libglake.so for glake (GLAKE_LIB, or build-gpu/ or build/).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "gpu", "torch"))
import glake_torch as gt  # noqa: E402

CONFIGS = ("native", "expandable", "glake")  # the defaults; --configs may name any of gt.CONFIG_ENV


def worker():
    import torch

    def bench(f, n=40):
        for _ in range(5):
            f()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(n):
            s.record()
            f()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        return statistics.median(times)

    def host_ms(f, n=40):
        for _ in range(5):
            f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    sizes = [(1 << 10) * (1 + (i * 37) % 256) for i in range(1000)]  # 4 KiB to 1 MiB of fp32

    def empty_1000():
        for n in sizes:
            torch.empty(n, device="cuda")

    torch.manual_seed(0)
    x = torch.randn(1 << 28, device="cuda")
    y = torch.empty_like(x)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    idx = torch.randint(0, x.numel(), (1 << 24,), device="cuda")
    ts = [torch.randn(3 << 18, device="cuda") for _ in range(256)]
    return {"copy_1GiB": bench(lambda: y.copy_(x)), "matmul_8k": bench(lambda: a @ b),
            "gather_16M": bench(lambda: x[idx]), "add_256x3MiB": bench(lambda: [t.add_(1.0) for t in ts]),
            "empty_1000": host_ms(empty_1000)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return 0
    configs = args.configs.split(",")
    rounds = []
    for k in range(args.rounds):
        order = configs[k % len(configs):] + configs[:k % len(configs)]
        r = {}
        for c in order:
            p = subprocess.run([sys.executable, __file__, "--worker"], env=gt.config_env(c), capture_output=True,
                               text=True)
            if p.returncode != 0:
                print(f"{c}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
                return 1
            r[c] = json.loads(p.stdout.strip().splitlines()[-1])
        rounds.append(r)
    kernels = list(rounds[0][configs[0]])
    print(f"median time, ms (x native's in the same round, median over {args.rounds} rounds)")
    print("kernel".ljust(14) + "".join(c.rjust(20) for c in configs))
    for kname in kernels:
        cells = []
        for c in configs:
            ms = statistics.median(r[c][kname] for r in rounds)
            ratio = statistics.median(r[c][kname] / r["native"][kname] for r in rounds) if "native" in configs else 1
            cells.append(f"{ms:.3f} ({ratio:.3f}x)".rjust(20))
        print(kname.ljust(14) + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
