"""tests/gpu/torch/glake_torch.py: what the PyTorch jobs and scripts/bench_train.py share.

- Glake: a ctypes binding of shim/glake.h, through the symbols the preloaded libglake.so exports
  (ctypes.CDLL(None)); absent when the process runs without glake.
- process_gpu_used(): this process's device memory as NVML counts it (nvidia-smi), in bytes.
- Models built from configs with random weights (no downloads): GPT-2 style and Llama style.
- train(): the training loop of the jobs: activation checkpointing, bf16 autocast, AdamW, and a new
  batch size and sequence length every step, from a seeded generator (identical in every run).
- child_env(): the environment of a run natively, under expandable_segments, or under glake.
"""

import ctypes
import os
import random
import subprocess
import time

GLAKE_STATUS = {0: "not started", 1: "on", 2: "off"}


class GlakeStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "requested", "requested_peak", "blocks", "blocks_peak", "physical", "physical_peak",
        "mapped", "mapped_peak", "cached", "allocs", "frees", "creates", "releases", "maps", "unmaps",
        "stitches", "reclaims", "ooms", "driver_ns", "passthrough_allocs", "capture_frees_held",
        "slow_allocs", "slow_ns")]


class Glake:
    """glake.h through the preloaded library (or the one at `path`); `available` is False without it."""

    def __init__(self, path=None):
        lib = ctypes.CDLL(path)
        self.available = hasattr(lib, "glake_stats")
        if not self.available:
            return
        self._lib = lib
        lib.glake_stats.argtypes = [ctypes.c_int, ctypes.POINTER(GlakeStats), ctypes.c_size_t]
        lib.glake_stats.restype = ctypes.c_int
        lib.glake_status.restype = ctypes.c_int
        lib.glake_trim.argtypes = [ctypes.c_int, ctypes.c_size_t]
        lib.glake_validate.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.glake_owns.argtypes = [ctypes.c_void_p]
        lib.glake_version.restype = ctypes.c_char_p

    def status(self):
        return GLAKE_STATUS.get(self._lib.glake_status(), "?") if self.available else "absent"

    def stats(self, device=0):
        if not self.available:
            return None
        s = GlakeStats()
        self._lib.glake_stats(device, ctypes.byref(s), ctypes.sizeof(s))
        return {name: getattr(s, name) for name, _ in GlakeStats._fields_}

    def validate(self, device=0):
        if not self.available:
            return ""
        buf = ctypes.create_string_buffer(512)
        r = self._lib.glake_validate(device, buf, len(buf))
        return "" if r <= 0 else buf.value.decode()

    def owns(self, ptr):
        return self.available and self._lib.glake_owns(ctypes.c_void_p(ptr)) == 1


def process_gpu_used(pid=None):
    """Bytes of device memory NVML charges to this process (its CUDA context included), or None."""
    pid = pid or os.getpid()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) << 20
    return None


def child_env(mode, extra=None):
    """The environment of a child run: 'native', 'expandable' (PyTorch's expandable_segments),
    'cudaasync' (PyTorch's cudaMallocAsync backend on CUDA's own pool, no glake) or 'glake' (LD_PRELOAD
    of GLAKE_LIB, or the build next to the repository)."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        env.pop(k, None)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if mode == "expandable":
        env["PYTORCH_ALLOC_CONF"] = env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    elif mode == "cudaasync":
        env["PYTORCH_ALLOC_CONF"] = env["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"
    elif mode == "glake":
        env["LD_PRELOAD"] = glake_lib()
    elif mode != "native":
        raise ValueError(mode)
    env.update(extra or {})
    return env


# The configurations the benchmarks compare, by name: (child_env mode, extra variables).
CONFIG_ENV = {
    "native": ("native", {}),
    # native once more, in its own process: beside "native" in the same rounds, the spread of the
    # machine itself (an A/A comparison) against which the others' step ratios are read.
    "native-again": ("native", {}),
    "expandable": ("expandable", {}),
    "glake": ("glake", {}),
    "cudaasync": ("cudaasync", {}),  # PyTorch's cudaMallocAsync backend on CUDA's own pool
    "glake-nostitch": ("glake", {"GLAKE_STITCH": "0"}),
    "glake-32m": ("glake", {"GLAKE_MAX_CREATE": "32M"}),  # grows in physical allocations of up to 32 MiB
    "glake-nochunks": ("glake", {"GLAKE_SMALL_LIMIT": "0"}),  # every request among the large blocks
    "glake-lend": ("glake", {"GLAKE_LEND": "1"}),  # windows may begin with lent page tails
    # PyTorch's own caching allocator (the user chose it), its segments from glake: glake's memory
    # without PyTorch's cudaMallocAsync backend.
    "glake-segments": ("glake", {"PYTORCH_ALLOC_CONF": "backend:native", "PYTORCH_CUDA_ALLOC_CONF": "backend:native"}),
}


def config_env(name):
    """child_env() of a configuration of CONFIG_ENV."""
    mode, extra = CONFIG_ENV[name]
    return child_env(mode, extra)


def glake_lib():
    lib = os.environ.get("GLAKE_LIB")
    if lib:  # the library asked for, or none: another one found in its place would be measured unnoticed
        if not os.path.isfile(lib):
            raise FileNotFoundError(f"GLAKE_LIB={lib}: no such file (build it, or unset GLAKE_LIB to use "
                                    "build-gpu/ or build/)")
        return os.path.abspath(lib)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    builds = [b for b in ("build-gpu", "build") if os.path.exists(os.path.join(root, b, "build.ninja"))]
    if not builds:
        # A fresh checkout on a GPU machine: configured as scripts/demo does (no libunwind there).
        cuda_root = os.environ.get("CUDA_ROOT", "/usr/local/cuda")
        r = subprocess.run(["meson", "setup", os.path.join(root, "build-gpu"), "-Dlibunwind=disabled",
                            f"-Dtoolkit_root={cuda_root}"], cwd=root, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"libglake.so not found and build-gpu cannot be set up (set GLAKE_LIB): "
                               f"{r.stderr.strip()[-500:]}")
        builds = ["build-gpu"]
    build = os.path.join(root, builds[0])
    # Brought up to date with the sources first: a library built before a change would be measured in
    # its place (ninja does nothing when it is current).
    r = subprocess.run(["ninja", "-C", build, "shim/libglake.so"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot build {build}/shim/libglake.so: {r.stderr.strip()[-500:]}")
    lib = os.path.join(build, "shim", "libglake.so")
    if not os.path.isfile(lib):
        raise FileNotFoundError(f"{lib}: not there after building {build}")
    return lib


# ---- models ---------------------------------------------------------------------------------------

def build_model(kind, size="small", seed=0):
    """A causal LM from a config, random weights (seeded), on the GPU in fp32 (trained under bf16
    autocast). kind: 'gpt2' or 'llama'; size: 'small' (tests), 'bench' (GPT-2 12 x 768, Llama 12 x 1024,
    vocabulary 8192) or 'real' (the shapes of the jobs in shared/traces: GPT-2 medium, 24 x 1024 with
    GPT-2's vocabulary; a 1.1B Llama, 22 x 2048, GQA, TinyLlama's shapes and vocabulary)."""
    import torch
    import transformers
    torch.manual_seed(seed)
    if kind == "gpt2":
        dims = dict(small=dict(n_layer=4, n_embd=256, n_head=4, vocab_size=8192),
                    bench=dict(n_layer=12, n_embd=768, n_head=12, vocab_size=8192),
                    real=dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257))[size]
        config = transformers.GPT2Config(n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, use_cache=False, attn_implementation="sdpa", **dims)
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "llama":
        dims = dict(small=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=8192),
                    bench=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                               num_attention_heads=16, num_key_value_heads=4, vocab_size=8192),
                    real=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                              num_attention_heads=32, num_key_value_heads=4, vocab_size=32000))[size]
        config = transformers.LlamaConfig(max_position_embeddings=2048, use_cache=False,
                                          attn_implementation="sdpa", **dims)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.cuda()


def step_shapes(steps, seed, max_batch=8, min_len=64, max_len=1024):
    """(batch, length) of every step: a new pair each step, the same in every run with this seed."""
    rng = random.Random(seed)
    return [(rng.randint(1, max_batch), rng.randint(min_len, max_len)) for _ in range(steps)]


def train(model, steps, seed, vocab=8192, max_batch=8, max_len=1024, before_step=None, lr=1e-4, enqueue_times=None):
    """Trains with activation checkpointing, bf16 autocast and AdamW on random tokens. Returns the
    losses and the step times (seconds, synchronized). before_step(i), if given, is called before
    step i starts (and before its clock does). enqueue_times, if a list, gets each step's time until
    its last launch returned (before the synchronize): near the step time, the step is bound by the
    host."""
    import torch
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    losses, times = [], []
    for i, (b, n) in enumerate(step_shapes(steps, seed, max_batch=max_batch, max_len=max_len)):
        torch.cuda.synchronize()
        if before_step is not None:
            before_step(i)
        t0 = time.perf_counter()
        ids = torch.randint(0, vocab, (b, n), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if enqueue_times is not None:
            enqueue_times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, times


def memory_snapshot(glake, device=0):
    """PyTorch's view of memory beside glake's, at one moment."""
    import torch
    stats = torch.cuda.memory_stats(device)
    snap = {
        "allocated": stats.get("allocated_bytes.all.current", 0),
        "allocated_peak": stats.get("allocated_bytes.all.peak", 0),
        "reserved": stats.get("reserved_bytes.all.current", 0),
        "reserved_peak": stats.get("reserved_bytes.all.peak", 0),
        "max_memory_allocated": torch.cuda.max_memory_allocated(device),
        "max_memory_reserved": torch.cuda.max_memory_reserved(device),
    }
    g = glake.stats(device)
    if g is not None:
        snap["glake"] = g
    return snap
