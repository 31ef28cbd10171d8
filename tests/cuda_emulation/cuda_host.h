// A host-side stand-in for the CUDA built-ins the serving, tree and block kernels use, so that the
// very source of csrc/kernel_serving.cuh, kernel_tree.cuh, kernel_traversal.cuh and
// kernel_block.cuh runs on a CPU. Every CUDA thread of a block is a fiber (ucontext) of one
// OS thread; __syncthreads and the warp shuffles are barriers at which a fiber yields until its
// block (or warp) has arrived; __shared__ variables are function statics (one block runs at a
// time). It is a test harness (tests/test_cuda_*_emulated.py), not a CUDA implementation:
// only what the kernel calls is here, and float16 conversions (inline PTX) are not emulated.
#pragma once

// Kernel code that must differ on the host (dynamic shared memory) tests this.
#define SPECSAMPLE_CUDA_HOST_EMULATION 1

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <vector>

struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};

inline dim3 threadIdx;  // set by the scheduler before it resumes a fiber
inline dim3 blockIdx;
inline dim3 blockDim;

// ---- fibers -----------------------------------------------------------------------------------
constexpr int kEmuMaxThreads = 1024;
inline ucontext_t emu_scheduler;
inline ucontext_t emu_fiber[kEmuMaxThreads];
inline bool emu_done[kEmuMaxThreads];
inline void (*emu_body)() = nullptr;

inline void emu_yield() { swapcontext(&emu_fiber[threadIdx.x], &emu_scheduler); }

struct EmuBarrier {
  int arrived = 0;
  unsigned generation = 0;
  void wait(int parties) {
    const unsigned g = generation;
    if (++arrived == parties) {
      arrived = 0;
      ++generation;
      return;
    }
    while (generation == g) emu_yield();
  }
};
inline EmuBarrier emu_block_barrier;
inline EmuBarrier emu_warp_barrier[kEmuMaxThreads / 32];
inline std::uint64_t emu_exchange[kEmuMaxThreads / 32][32];

inline void emu_entry(int t) {
  threadIdx.x = (unsigned)t;
  emu_body();
  emu_done[t] = true;
  swapcontext(&emu_fiber[t], &emu_scheduler);
}

// Runs body() as blockDim.x fibers until all return (one block).
inline void emu_run_block(void (*body)()) {
  const int n = (int)blockDim.x;
  static std::vector<std::vector<char>> stacks(kEmuMaxThreads, std::vector<char>(1 << 17));
  emu_body = body;
  for (int t = 0; t < n; ++t) {
    emu_done[t] = false;
    getcontext(&emu_fiber[t]);
    emu_fiber[t].uc_stack.ss_sp = stacks[t].data();
    emu_fiber[t].uc_stack.ss_size = stacks[t].size();
    emu_fiber[t].uc_link = &emu_scheduler;
    makecontext(&emu_fiber[t], (void (*)())emu_entry, 1, t);
  }
  for (int left = n; left > 0;) {
    left = 0;
    for (int t = 0; t < n; ++t) {
      if (emu_done[t]) continue;
      threadIdx.x = (unsigned)t;
      swapcontext(&emu_scheduler, &emu_fiber[t]);
      if (!emu_done[t]) ++left;
    }
  }
}

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define asm(...) ((void)0)  // inline PTX (float16 conversion): not emulated

inline void __syncthreads() { emu_block_barrier.wait((int)blockDim.x); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}

template <typename T>
inline T emu_shuffle(T x, int src, bool keep) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &x, sizeof(T));
  emu_exchange[warp][lane] = bits;
  emu_warp_barrier[warp].wait(32);
  const std::uint64_t got = emu_exchange[warp][keep ? lane : src];
  emu_warp_barrier[warp].wait(32);
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T x, int o) {
  return emu_shuffle(x, (threadIdx.x & 31) ^ o, false);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T x, int o) {
  const int lane = threadIdx.x & 31;
  return emu_shuffle(x, lane - o, lane < o);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T x, int o) {
  const int lane = threadIdx.x & 31;
  return emu_shuffle(x, lane + o, lane + o > 31);
}

// ---- what the tree kernels add (csrc/kernel_tree.cuh, csrc/kernel_traversal.cuh) ---------------
// One block runs at a time and its fibers switch only at barriers, so the shared-memory atomics
// are plain read-modify-writes.
inline int atomicMin(int* a, int v) {
  const int old = *a;
  if (v < old) *a = v;
  return old;
}
inline int atomicMax(int* a, int v) {
  const int old = *a;
  if (v > old) *a = v;
  return old;
}
inline unsigned atomicOr(unsigned* a, unsigned v) {
  const unsigned old = *a;
  *a = old | v;
  return old;
}

inline int emu_or_flag = 0;
// Three barriers: every vote is in before any is read, every read is done before the reset, and
// the reset is done before the next call's votes.
inline int __syncthreads_or(int pred) {
  if (pred) emu_or_flag = 1;
  __syncthreads();
  const int r = emu_or_flag;
  __syncthreads();
  if (threadIdx.x == 0) emu_or_flag = 0;
  __syncthreads();
  return r;
}

inline unsigned __ballot_sync(unsigned, int pred) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  emu_exchange[warp][lane] = pred ? 1u : 0u;
  emu_warp_barrier[warp].wait(32);
  unsigned mask = 0;
  for (int l = 0; l < 32; ++l) mask |= emu_exchange[warp][l] ? (1u << l) : 0u;
  emu_warp_barrier[warp].wait(32);
  return mask;
}
template <typename T>
inline T __shfl_sync(unsigned, T x, int src) {
  return emu_shuffle(x, src & 31, false);
}
inline int __ffs(unsigned x) { return x == 0 ? 0 : __builtin_ctz(x) + 1; }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }
inline double __longlong_as_double(long long i) {
  double d;
  std::memcpy(&d, &i, 8);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long i;
  std::memcpy(&i, &d, 8);
  return i;
}
// Round-to-nearest double arithmetic (the harness is built with -ffp-contract=off: never an FMA).
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

// ---- what the block kernels add (csrc/kernel_block.cuh) -----------------------------------------
// The split kernel's blocks meet in global memory: here they run one after another, so the
// workspace's cache hints and fences are plain accesses and the counter a plain add.
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barrier[threadIdx.x >> 5].wait(32); }
inline void __threadfence() {}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
template <typename T>
inline void __stcg(T* p, T v) {
  *p = v;
}
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  const unsigned old = *a;
  *a = old + v;
  return old;
}
