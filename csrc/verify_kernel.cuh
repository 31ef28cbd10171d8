// specsample: the fused verification kernel of speculative decoding (rejection sampling + greedy).
//
// ONE kernel body, compiled twice:
//   * by nvcc, inside the torch extension (csrc/verify_torch*.cu -> backend `cuda-cpp`);
//   * by NVRTC, through cupy.RawModule (backend `cupy`).
// It therefore includes no system header (no <cstdint>, no cuda_fp16.h, no curand): the types,
// the half/bfloat16 conversions, Philox4x32-10 and the cluster primitives are written in its parts:
//   kernel_common.cuh        types, limits, status bits, 16-byte loads, warp helpers, Params
//   kernel_philox.cuh        Philox4x32-10
//   kernel_cluster.cuh       cluster primitives: distributed shared memory, mbarriers, st.async
//   kernel_random.cuh        random mode (verify_random)
//   kernel_greedy.cuh        greedy mode, one cluster per request (verify_greedy)
//   kernel_greedy_split.cuh  greedy mode at the smallest batches (verify_greedy_split)
//   kernel_block.cuh         block verification, rule="block" (verify_block_kernel)
//   kernel_serving.cuh       the serving entry point, one block per request (verify_serving_kernel)
//   kernel_serving_split.cuh the serving entry point, one block per row (verify_serving_split_kernel)
//   kernel_tree.cuh          tree verification, one block per request (verify_tree_kernel)
//   kernel_traversal.cuh     traversal verification of trees, rule="traversal"
//                            (verify_traversal_kernel)
//   verify_kernel.cuh        this file: the entry points (__global__ kernels) both hosts launch
// Compile-time A/B knobs (SPECSAMPLE_*, each #ifndef-guarded where it is used; every non-default
// value is built and checked by tests/test_kernel_knobs.py): GREEDY_STEP_BYTES,
// GREEDY_STEP_GROWTH, GREEDY_MIN_BLOCKS, GREEDY_GROUP_MIN_CL (kernel_greedy.cuh); WAVE_SMALL,
// WAVE_LARGE, RANDOM_MIN_BLOCKS (kernel_random.cuh); ASYNC_EXCHANGE (kernel_cluster.cuh);
// BLOCK_WAVE, BLOCK_PREFETCH_BYTES, BLOCK_SPLIT_ROWS, BLOCK_PICK_VECS (kernel_block.cuh, checked
// by tests/test_cuda_block.py).
//
// Semantics (docs/contract.md; specsample.reference is the float64 definition):
//   1. for k < K with x = ids[b,k]: accept iff u[b,k] * p[b,k,x] < q[b,k,x]  (p = 1 without draft
//      probabilities). Computed in double: the product of two floats is exact in double, so the
//      decision equals the float64 reference's bit for bit.
//   2. first rejection k*: r = max(0, q[b,k*] - p[b,k*]) (p = one-hot(x) without draft probs);
//      if sum(r) == 0, r = q[b,k*]. All accepted: r = q[b,K] (the bonus row).
//   3. last token = smallest j with cumsum(r)[j] > u[b,K] * sum(r); never a token with r_j = 0.
//   The residual is summed in float32 within one 16-byte vector (4 or 8 elements; docs/contract.md:
//   "accumulated in float32 or wider") and in double across vectors, and the element where the
//   threshold is crossed is found with every r_j formed in double exactly as the reference does:
//   the tokens differ from the reference only where the threshold lies within ~1e-7 of a vector
//   sum of a token boundary (never observed in the exactness checks).
//   Greedy: accept while x == argmax(q[b,k]) (ties -> smallest index); last token = argmax of the
//   first mismatching row, or of row K.
//   Status (docs/contract.md, "Status"): every id is checked (never dereferenced outside [0, V)),
//   and in random mode every drafted entry and explicit uniform; then the rows the decision reads
//   (random: the row drawn from, its sum checked for zero and for the float32 range; greedy: each
//   row walked, a row with a bad value ending the walk). A flagged request writes all -1, 0
//   emitted and its bits in out_status; the others are unaffected.
//
// Work decomposition: one request per thread-block CLUSTER of CL blocks (CL = 1 without Hopper
// clusters). The row that must be read in full (q and p at the first rejection, or the bonus row)
// is split into CL contiguous chunks, one per block, and each block's chunk into one contiguous
// segment per warp. Each lane streams 16-byte vectors of its warp's segment (coalesced, two waves
// in flight). The sums travel between the blocks of the cluster through distributed shared
// memory, so the cluster needs no global workspace, no atomics in global memory and no second
// launch (random mode: see "Random mode" below; greedy: argmax keys, gathered per step).
// One exception: greedy mode at the smallest batches reads every row at once over many blocks
// without a cluster and combines through a small global workspace (see verify_greedy_split).
//
// Random numbers (when no explicit uniforms are given): Philox4x32-10, key = (seed_lo, seed_hi),
// counter = (n_lo, n_hi, b_lo, b_hi) with n = (offset + i) / 4, word (offset + i) % 4, for the
// i-th uniform of request b (i = 0..K-1: the accept draws; i = K: the final draw). This is the
// stream curand_init(seed, subsequence=b, offset) + curand() produces; a 32-bit word w becomes the
// float (w >> 8) * 2^-24 in [0, 1) (24 random bits, exactly representable). Each call consumes
// K+1 numbers per subsequence, so the caller advances the generator's offset by
// 4 * ceil((K+1) / 4) (torch's convention: offsets count 32-bit numbers per thread, multiples of 4).
// The accept draws and the final draw use distinct (counter, word) positions.
#pragma once

#include "kernel_common.cuh"
#include "kernel_greedy.cuh"
#include "kernel_greedy_split.cuh"
#include "kernel_random.cuh"
#include "kernel_serving.cuh"  // the serving entry point (verify_serving_kernel)
#include "kernel_serving_split.cuh"  // ... one block per row (verify_serving_split_kernel)
#include "kernel_tree.cuh"
#include "kernel_traversal.cuh"  // rule="traversal" (verify_traversal_kernel)

namespace specsample {

// ---------------------------------------------------------------------------------------------
// Entry points, with the parameter list SPECSAMPLE_KERNEL_PARAMS (kernel_common.cuh).
// ---------------------------------------------------------------------------------------------

// Every kernel is instantiated per mode (GREEDY) and per load path (ALIGNED: every row the call
// may stream starts on 16 bytes and V * sizeof(T) is a multiple of 16, so one 16-byte load reads
// one vector). The host decides both (rows_aligned in _cuda_build.py and launch_config.h), so
// each instantiation holds one path: leaner registers, and compact code, which matters at small
// batch, where the kernel's instructions are fetched from DRAM after the L2 has been flushed
// (~1 us at B = 1 against one kernel holding both load paths; docs/dev/cuda-kernel.md).
template <typename T, int CL, bool GREEDY, bool ALIGNED>
__device__ __forceinline__ void verify_body(const Params& P) {
  if constexpr (GREEDY) {
    verify_greedy<T, CL, ALIGNED>(P);
  } else {
    __shared__ RandomSmem<CL> sm;
    verify_random<T, CL, ALIGNED ? kAligned : kUnaligned>(P, sm);
  }
}

// Blocks of 512 threads per SM the register budget must allow.
template <int CL, bool GREEDY>
struct MinBlocks {
  static constexpr int value = GREEDY ? GreedyShape<CL>::kMinBlocks : RandomShape<CL>::kMinBlocks;
};

// One block per request (any architecture).
template <typename T, bool GREEDY, bool ALIGNED>
__global__ void __launch_bounds__(512, (MinBlocks<1, GREEDY>::value)) verify_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, 1, GREEDY, ALIGNED>(P);
}

// Greedy mode, every row at once over many blocks (see verify_greedy_split); grid = B * (K+1) *
// chunks blocks.
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(512, 2) verify_greedy_split_kernel(
    const void* ids, const void* q, i64* out_tokens, i64* out_num, int* out_status, i64 V, int B,
    int K, int ids64, int chunks, u64* ws_keys, u32* ws_count) {
  (void)B;
  verify_greedy_split<T, ALIGNED>(ids, q, out_tokens, out_num, out_status, V, K, ids64, chunks, ws_keys,
                                  ws_count);
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
// One cluster of CL blocks per request (sm_90+). CL = 16 needs the non-portable cluster size
// attribute set on the function before launch.
template <typename T, int CL, bool GREEDY, bool ALIGNED>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(512, (MinBlocks<CL, GREEDY>::value))
    verify_cluster_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, CL, GREEDY, ALIGNED>(P);
}
#endif

}  // namespace specsample

// Block verification (rule="block"): its own kernels, with the same parameter list
// (SPECSAMPLE_KERNEL_PARAMS, kernel_common.cuh).
#include "kernel_block.cuh"
