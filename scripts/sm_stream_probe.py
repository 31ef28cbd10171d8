# ruff: noqa: B023
"""How fast can a few SMs pull a row from DRAM? (development tool, GPU machine)

Reads T bytes spread over N blocks (one per SM) with every load issued at once, by four methods:
16-byte loads through the read-only path (``ldg``), 16-byte loads cached in L2 only (``ldcg``),
bulk asynchronous copies into shared memory (``tma``), and half of each block's bytes by each of
``ldg`` and ``tma`` at the same time (``mix``). Timed with the project's Timer (L2 flushed), beside
an empty kernel: the difference is the time the bytes take at that many SMs.

    python scripts/sm_stream_probe.py
"""

from __future__ import annotations

import cupy
import torch
from specsample.reports.timing import Timer, TimingPolicy

SRC = r"""
extern "C" __global__ void empty(float* out) {}

template <bool CG>
__device__ __forceinline__ float ldg_sum(const uint4* s, int nvec) {
  uint4 v[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int g = threadIdx.x + i * blockDim.x;
    // clamped index, no branch: every load is issued before any is used
    const int c = g < nvec ? g : nvec - 1;
    v[i] = CG ? __ldcg(s + c) : __ldg(s + c);
  }
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < 16; ++i)
    if (threadIdx.x + i * blockDim.x < nvec) acc += __uint_as_float(v[i].x) + __uint_as_float(v[i].y) + __uint_as_float(v[i].z) + __uint_as_float(v[i].w);
  return acc;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

// thread 0 copies `bytes` (multiple of 16) from src into smem in pieces of <= 32 KB, one mbarrier
__device__ __forceinline__ void tma_issue(unsigned long long* bar, char* smem, const char* src, int bytes) {
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bar)));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
    for (int off = 0; off < bytes; off += 32768) {
      const int n = bytes - off < 32768 ? bytes - off : 32768;
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
          ::"r"(smem_u32(smem + off)), "l"(src + off), "r"(n), "r"(smem_u32(bar)) : "memory");
    }
  }
}

__device__ __forceinline__ float tma_wait_sum(unsigned long long* bar, const char* smem, int bytes) {
  asm volatile(
      "{\n\t.reg .pred done;\n"
      "W:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n\t"
      "@!done bra W;\n}" ::"r"(smem_u32(bar)) : "memory");
  float acc = 0.0f;
  const float4* s = reinterpret_cast<const float4*>(smem);
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x) {
    const float4 v = s[i];
    acc += v.x + v.y + v.z + v.w;
  }
  return acc;
}

extern "C" __global__ void ldg(const char* src, int bytes, float* out) {
  const float a = ldg_sum<false>(reinterpret_cast<const uint4*>(src + (long long)blockIdx.x * bytes), bytes / 16);
  if (a == 12345.0f) out[0] = a;
}
extern "C" __global__ void ldcg(const char* src, int bytes, float* out) {
  const float a = ldg_sum<true>(reinterpret_cast<const uint4*>(src + (long long)blockIdx.x * bytes), bytes / 16);
  if (a == 12345.0f) out[0] = a;
}
extern "C" __global__ void tma(const char* src, int bytes, float* out) {
  extern __shared__ __align__(128) char smem[];
  __shared__ __align__(8) unsigned long long bar;
  tma_issue(&bar, smem, src + (long long)blockIdx.x * bytes, bytes);
  __syncthreads();
  const float a = tma_wait_sum(&bar, smem, bytes);
  if (a == 12345.0f) out[0] = a;
}
extern "C" __global__ void mix(const char* src, int bytes, float* out) {
  extern __shared__ __align__(128) char smem[];
  __shared__ __align__(8) unsigned long long bar;
  const char* s = src + (long long)blockIdx.x * bytes;
  const int half = (bytes / 2) & ~15;
  tma_issue(&bar, smem, s, half);
  const float b = ldg_sum<false>(reinterpret_cast<const uint4*>(s + half), (bytes - half) / 16);
  __syncthreads();
  const float a = tma_wait_sum(&bar, smem, half) + b;
  if (a == 12345.0f) out[0] = a;
}
"""

mod = cupy.RawModule(code=SRC, options=("-std=c++17",), name_expressions=None)
kernels = {n: mod.get_function(n) for n in ("empty", "ldg", "ldcg", "tma", "mix")}
for n in ("tma", "mix"):
    kernels[n].max_dynamic_shared_size_bytes = 200 * 1024
timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=30, max_samples=300, budget_s=5.0),
)
src = torch.rand(64 << 20, device="cuda")  # 256 MB
out = torch.zeros(1, device="cuda")
THREADS = 512


def run(name: str, blocks: int, bytes_per_block: int) -> float:
    k = kernels[name]
    smem = bytes_per_block if name in ("tma", "mix") else 0
    args = (src.data_ptr(), cupy.int32(bytes_per_block), out.data_ptr())

    def call(i):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            k((blocks,), (THREADS,), args, shared_mem=smem)

    return timer.measure(call).to_dict()["median"] * 1e6


base = run("empty", 16, 0)
print(f"empty kernel: {base:.2f} us (16 blocks)")
print(
    f"{'total':>7} {'blocks':>6} {'KB/blk':>6} "
    + " ".join(f"{n:>8}" for n in ("ldg", "ldcg", "tma", "mix"))
    + "  (us; KB/us/SM after the empty kernel)"
)
for total_kb in (512, 1024, 2048):
    for blocks in (8, 16, 32, 64, 128):
        per = total_kb * 1024 // blocks
        if per > 128 * 1024 * 16 // 16 or per > THREADS * 16 * 16 or per > 200 * 1024:
            continue
        ts = [run(n, blocks, per) for n in ("ldg", "ldcg", "tma", "mix")]
        rates = [per / 1024 / max(t - base, 1e-3) for t in ts]
        print(
            f"{total_kb:6d}K {blocks:6d} {per // 1024:6d} "
            + " ".join(f"{t:8.2f}" for t in ts)
            + "  | "
            + " ".join(f"{r:6.1f}" for r in rates),
            flush=True,
        )
