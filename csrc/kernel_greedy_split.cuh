// specsample verify kernel: greedy mode at the smallest batches (every row at once, no cluster).
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

#include "kernel_greedy.cuh"

namespace specsample {

// ---------------------------------------------------------------------------------------------
// Greedy mode at the smallest batches: every row of every request at once, split over many
// blocks (no cluster), combined by the last block to finish.
//
// Block (b, r, c) computes the argmax key of chunk c (of `chunks`) of request b's row r and stores
// it in ws_keys; the block that brings the request's counter ws_count[b] to (K+1) * chunks decides
// the request (first row whose argmax differs from the draft) and resets the counter to 0 for the
// next call on the stream. Every row is read, matched or not: this trades bytes, which are cheap
// at B = 1, for latency (one pass over up to 2 blocks per SM instead of a chain of cluster steps).
// The counters must be zero before the first launch (the host zeroes them once).
// ---------------------------------------------------------------------------------------------
template <typename T, bool ALIGNED>
__device__ __forceinline__ void verify_greedy_split(const void* ids, const void* qv, i64* out_tokens,
                                                    i64* out_num, int* out_status, i64 V, int K,
                                                    int ids64, int chunks, u64* ws_keys,
                                                    u32* ws_count) {
  constexpr int N = VecTraits<T>::N;
  __shared__ u64 block_key;
  __shared__ int is_last;
  __shared__ i64 row_arg[kMaxK + 1];
  __shared__ bool row_bad[kMaxK + 1];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const i64 K1 = (i64)K + 1;
  const i64 unit = (i64)blockIdx.x;  // (b * K1 + r) * chunks + c
  const int c = (int)(unit % chunks);
  const i64 br = unit / chunks;  // b * K1 + r
  const i64 b = br / K1;
  const T* q = reinterpret_cast<const T*>(qv);
  const T* row = q + br * V;
  // the draft id this thread would compare, loaded now in case this block combines
  const i64 my_id = tid < K ? load_valid_id(ids, ids64, K, V, b, tid) : -1;
  if (tid == 0) block_key = 0;
  __syncthreads();
  const i64 NG = (V + N - 1) / N;
  i64 c_lo, c_hi, w_lo, w_hi;
  split_range(0, NG, chunks, c, c_lo, c_hi);
  split_range(c_lo, c_hi, nwarps, warp, w_lo, w_hi);
  greedy_rows<T, ALIGNED, 1>(row, V, (int)w_lo, (int)w_hi, lane, 1, &block_key);
  __syncthreads();
  if (tid == 0) {
    ws_keys[unit] = block_key;
    __threadfence();  // the key is visible GPU-wide before the count that announces it
    const u32 total = (u32)(K1 * chunks);
    is_last = atomicAdd(&ws_count[b], 1u) == total - 1 ? 1 : 0;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // acquire: the other blocks' keys, announced by their counts
  // argmax of every row: warp w takes rows w, w + nwarps, ...; lanes stride over the chunks
  for (i64 r = warp; r < K1; r += nwarps) {
    u64 m = 0;
    for (int cc = lane; cc < chunks; cc += 32) {
      const u64 y = __ldcg(reinterpret_cast<const unsigned long long*>(ws_keys) +
                           (b * K1 + r) * chunks + cc);
      m = y > m ? y : m;
    }
    m = warp_max_u64(m);
    if (lane == 0) {
      row_arg[r] = m == 0 ? 0 : (i64)(0xFFFFFFFFu - (u32)(m & 0xFFFFFFFFu));
      row_bad[r] = m == kBadRowKey;
    }
  }
  // an id out of range flags the request; otherwise the walk stops at the first row whose argmax
  // is not the draft or that holds a bad value (row K, the bonus row, always ends the run)
  const bool ids_bad = __syncthreads_or(tid < K && my_id < 0) != 0;
  __shared__ int kstar_s;
  if (tid == 0) kstar_s = K;
  __syncthreads();
  if (tid < K && (row_bad[tid] || my_id != row_arg[tid])) atomicMin(&kstar_s, tid);
  __syncthreads();
  const int kstar = kstar_s;
  const u32 flags = ids_bad ? kBadDraftId : (row_bad[kstar] ? kBadTarget : 0u);
  // (the host launches more than K threads per block)
  if (tid <= K) {
    out_tokens[b * K1 + tid] = flags ? -1 : (tid < kstar ? my_id : (tid == kstar ? row_arg[kstar] : -1));
  }
  if (tid == 0) {
    out_num[b] = flags ? 0 : kstar + 1;
    out_status[b] = (int)flags;
    ws_count[b] = 0;  // ready for the next call on this stream
  }
}

}  // namespace specsample
