// specsample verify kernel: thread-block cluster primitives (distributed shared memory, mbarriers).
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

#include "kernel_common.cuh"

namespace specsample {

// ---------------------------------------------------------------------------------------------
// Cluster primitives (Hopper and later): inline PTX, so NVRTC needs no cooperative_groups header.
// With CL == 1 they reduce to block-local operations.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

template <int CL>
__device__ __forceinline__ u32 cluster_rank() {
  if constexpr (CL == 1) {
    return 0;
  } else {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
  }
}

template <int CL>
__device__ __forceinline__ u32 cluster_id() {
  if constexpr (CL == 1) {
    return blockIdx.x;
  } else {
    u32 r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
  }
}

// All threads of all blocks of the cluster; orders shared-memory writes before peers' reads.
template <int CL>
__device__ __forceinline__ void cluster_barrier() {
  if constexpr (CL == 1) {
    __syncthreads();
  } else {
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n\t"
        "barrier.cluster.wait.acquire.aligned;" ::
            : "memory");
  }
}

// Split barrier phases (clusters): arrive early, wait late.
template <int CL>
__device__ __forceinline__ void cluster_arrive_relaxed() {
  if constexpr (CL > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
template <int CL>
__device__ __forceinline__ void cluster_wait() {
  if constexpr (CL > 1) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}

template <int CL>
__device__ __forceinline__ void st_peer_f64(double* local, u32 rank, double v) {
  if constexpr (CL == 1) {
    *local = v;
  } else {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
    asm volatile("st.shared::cluster.f64 [%0], %1;" ::"r"(remote), "d"(v) : "memory");
  }
}

// The segment sums travel between the blocks of a cluster as asynchronous remote stores that
// complete a transaction count on the receiving block's mbarrier (st.async): a block waits only
// for the bytes it expects, with no cluster-wide barrier and no release fence on the GPU's memory.
// SPECSAMPLE_ASYNC_EXCHANGE=0 uses remote stores + one cluster barrier instead.
#ifndef SPECSAMPLE_ASYNC_EXCHANGE
#define SPECSAMPLE_ASYNC_EXCHANGE 1
#endif

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// One arrival that also announces `bytes` of transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// spin: poll without suspending (at tiny batch the SM has nothing else to run, and a suspended
// thread wakes up late); otherwise let the hardware suspend the waiting threads.
__device__ __forceinline__ void mbar_wait_parity(u64* bar, u32 parity, bool spin) {
  if (spin) {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "SPIN:\n\t"
        "mbarrier.test_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra SPIN;\n}" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
  } else {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "WAIT:\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra WAIT;\n}" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
  }
}
// v -> `local`'s twin in block `rank` of the cluster, completing 8 bytes on that block's `bar`.
__device__ __forceinline__ void st_async_peer_u64(u64* local, u64* bar, u32 rank, u64 v) {
  u32 ra, rb;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rb) : "r"(smem_addr(bar)), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];" ::"r"(ra), "l"(v),
               "r"(rb)
               : "memory");
}
// The same for a double: its 8 bytes travel as they are.
__device__ __forceinline__ void st_async_peer_f64(double* local, u64* bar, u32 rank, double v) {
  st_async_peer_u64(reinterpret_cast<u64*>(local), bar, rank, (u64)__double_as_longlong(v));
}

}  // namespace specsample
