#!/usr/bin/env python3
"""tests/gpu/torch/record_test_data.py OUTDIR: records the tracer's real test data on a GPU.

- OUTDIR/gpu-torch-trace.json.gz: a glake trace of a short GPT-2-style training job under the shim
  (GLAKE_TRACE, LD_PRELOAD of GLAKE_LIB or the build next to the repository);
- OUTDIR/torch-snapshot.pickle: a PyTorch memory snapshot (torch.cuda.memory._dump_snapshot) of the
  same job run natively, for `glake-trace import --torch`.
Both are shipped in tests/data/ and opened by tests/tracer/test_gpu_torch_trace.cpp.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import glake_torch as gt  # noqa: E402


def snapshot(path):
    import torch
    torch.cuda.memory._record_memory_history(max_entries=200000)
    model = gt.build_model("gpt2")
    gt.train(model, 4, 1234)
    torch.cuda.synchronize()
    torch.cuda.memory._dump_snapshot(path)
    torch.cuda.memory._record_memory_history(enabled=None)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if len(sys.argv) > 2 and sys.argv[2] == "--snapshot":
        snapshot(os.path.join(out, "torch-snapshot.pickle"))
        return 0
    env = gt.child_env("glake")
    env["GLAKE_TRACE"] = os.path.join(out, "gpu-torch-trace.json.gz")
    code = "import sys; sys.path.insert(0, %r); import glake_torch as gt; gt.train(gt.build_model('gpt2'), 4, 1234)" % HERE
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    subprocess.run([sys.executable, os.path.abspath(__file__), out, "--snapshot"], env=gt.child_env("native"), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
