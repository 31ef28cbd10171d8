// specsample verify kernel: block verification of chains (verify(..., rule="block"), random mode).
// Part of the kernel that verify_kernel.cuh assembles; like it, this file includes no system
// header, so NVRTC compiles it as it is. The rule, its indexing and its status bits are defined in
// docs/rules.md; core/reference_block.py is the float64 definition this kernel follows.
//
// One request per thread-block cluster of CL blocks (CL = 1 without Hopper clusters):
//
//  1. Warp 0 of every block decides what needs no row: the K ids (checked, never dereferenced
//     outside [0, V)), q and p at them, the K+1 coins (explicit, checked, or Philox exactly as the
//     token kernel draws them), and the prefix weights w_0..w_K in double, one step after another
//     with the reference's operations (w_{k+1} = min(1, (w_k q_k(x_k)) / p_k(x_k)), the ratio's
//     limit where p = 0), so the same bits. Meanwhile the other warps stream the bonus row q_K
//     (its sum and its bad values; used only if every draft is accepted).
//  2. Every warp streams its contiguous segment of the block's chunk of rows 0..K-1 of q and p
//     (16-byte loads, U vectors per lane in flight) and forms r = max(0, w_k q - p) per element
//     in double with the reference's rounding (__dmul_rn then __dsub_rn: never contracted into an
//     FMA), summed in double: the residual mass Z_k of row k (for row 0, w_0 = 1, the token-wise
//     residual), which is also the final row's sum when tau = k. Every element is checked
//     (NaN, infinite, negative). A request flagged in step 1 reads none of these rows (the split
//     kernel's first vectors, requested before step 1, excepted).
//  3. The warps' segment sums of every row make the block's chunk sums, which every block pushes
//     into the shared memory of every block of the cluster (remote stores, one cluster barrier);
//     the bad-value bits travel in one more slot. Every block then forms the same totals in the
//     same order: the thresholds h_{k-1} = Z_k / (Z_k + 1 - w_k) (1 where the denominator is 0),
//     h_{K-1} = w_K, tau = max{k + 1 : u_k < h_k}, the status (docs/rules.md, "Status") and the
//     final row's total. A residual summing to 0 falls back to q_tau: one more pass over that row
//     and one more exchange (probability zero in exact arithmetic).
//  4. The block whose chunk holds the threshold u_K * total finds the warp segment holding it,
//     re-reads that segment (from L2) split over all its threads (kept in registers), scans the
//     thread sums, and the crossing thread picks the element with every r_j formed exactly as in
//     step 2; a zero-weight token is never chosen, and a threshold rounded past the end takes the
//     last positive token.
//
// One launch, no workspace, no atomics in global memory, no host sync: CUDA-graph safe.
//
// The split variant (verify_block_split_kernel) serves the smallest batches, where a cluster of at
// most 16 SMs per request leaves most of the GPU idle: each request's vocabulary is cut into
// `chunks` chunks of one block each (about one block per SM over the batch), steps 1-2 run as
// above, and the cluster exchange of step 3 becomes a workspace in global memory: every block
// stores its slot sums (slot-major per request), and the block that brings the request's counter
// to `chunks` copies the request's records into shared memory at once, forms the totals, decides,
// and does step 4 alone over the whole crossing chunk (re-read from L2). That block resets the
// counter for the next call on the stream. The rows of step 2 are read a group of kBlockSplitRows
// at a time, every row's loads in flight before the first sum, since a split block's warp
// segments are a few vectors per lane; the first group's first vectors are requested before step
// 1, so that the DRAM works while warp 0 decides (at B = 1 they are the whole chunk). The hosts
// launch it only outside graph capture (the workspace belongs to one stream).
#pragma once

#include "kernel_common.cuh"
#include "kernel_philox.cuh"
#include "kernel_cluster.cuh"
#include "kernel_random.cuh"

namespace specsample {

constexpr int kBlockMaxWarps = 16;        // blockDim.x <= 512
constexpr int kBlockSlots = kMaxK + 2;    // row slots: 0..K-1 residual rows, K bonus, K+1 fallback
constexpr int kBlockBadSlot = kBlockSlots;  // the chunk slot carrying the bad-value bits

// Split kernel: rows of step 2 read at once (every row's loads in flight before the first sum).
#ifndef SPECSAMPLE_BLOCK_SPLIT_ROWS
#define SPECSAMPLE_BLOCK_SPLIT_ROWS 8
#endif
constexpr int kBlockSplitRows = SPECSAMPLE_BLOCK_SPLIT_ROWS;
static_assert(kBlockSplitRows >= 1 && kBlockSplitRows <= 16, "SPECSAMPLE_BLOCK_SPLIT_ROWS: 1..16");

// Step 4: 16-byte vectors per thread of the crossing segment kept in registers between its sum and
// the crossing thread's walk (more are read again by that thread).
#ifndef SPECSAMPLE_BLOCK_PICK_VECS
#define SPECSAMPLE_BLOCK_PICK_VECS 4
#endif
static_assert(SPECSAMPLE_BLOCK_PICK_VECS >= 1 && SPECSAMPLE_BLOCK_PICK_VECS <= 16,
              "SPECSAMPLE_BLOCK_PICK_VECS: 1..16");

// Split kernel: the request's workspace records the last block copies into shared memory (all
// loads in flight at once) when they fit, K = 8 needing 10 per chunk; more are read from L2.
constexpr int kBlockSplitRecords = 2048;

#ifndef SPECSAMPLE_BLOCK_WAVE
#define SPECSAMPLE_BLOCK_WAVE 4  // 16-byte vectors per lane in flight, per row read
#endif

// Cluster kernel: small calls (every row of the call fitting in this many bytes, well inside the
// L2) ask for all rows 0..K-1 of their warp segments at once with L2 prefetches before streaming
// them: a request reads 2K rows, and the loads in flight alone (U vectors of q and of p per lane)
// would leave the DRAM idle between rows at small batch. 0 disables it.
#ifndef SPECSAMPLE_BLOCK_PREFETCH_BYTES
#define SPECSAMPLE_BLOCK_PREFETCH_BYTES (32ll << 20)
#endif

// Bits of the row checks (step 2 and the bonus row), OR-ed over the cluster.
constexpr u32 kBlockBadQ = 1, kBlockBadP = 2, kBlockBadBonus = 4;

template <int CL>
struct BlockSmem {
  double w[kMaxK + 1];                          // prefix weights w_0..w_K
  float u[kMaxK + 1];                           // coins
  float qx[kMaxK], px[kMaxK];                   // drafted entries (warp 0's scratch)
  i64 x[kMaxK];                                 // draft ids (-1: out of range)
  double wsum[kBlockSlots][kBlockMaxWarps];     // this block's warp-segment sums, per row slot
  double chunk[kBlockSlots + 1][CL];            // every block's chunk sum per slot (+ bad bits)
  double tot[kBlockSlots];                      // cluster totals per slot
  double tsum[kBlockMaxWarps];                  // step 4: the crossing segment's warp sums
  u32 flags;                                    // step-1 flags, then the request's status
  int tau, slot, pick, lastpos;
  int is_last;  // split kernel: this block completes the request
  double total;
};

// r = max(0, w q - p) in double, rounded as the reference rounds it.
__device__ __forceinline__ double block_residual_value(double w, float qv, double pv) {
  const double r = __dsub_rn(__dmul_rn(w, (double)qv), pv);
  return r > 0.0 ? r : 0.0;
}

// Element j of a row slot: q itself (`plain`: the bonus row or the fallback), else the residual
// with weight w against p (prow != null) or one-hot(onehot).
__device__ __forceinline__ double block_value(bool plain, double w, float qv, float pv, bool use_p,
                                              i64 j, i64 onehot) {
  if (plain) return (double)qv;
  return block_residual_value(w, qv, use_p ? (double)pv : (j == onehot ? 1.0 : 0.0));
}

// The warp segment [lo, hi) (vector indices) of a row slot for warp `warp` of this block. The
// bonus row (slot K) is split over warps 1.. (warp 0 decides meanwhile) when there are several.
__device__ __forceinline__ void block_segment(i64 c_lo, i64 c_hi, int nwarps, int warp, bool bonus,
                                              i64& lo, i64& hi) {
  if (bonus && nwarps > 1) {
    if (warp == 0) {
      lo = hi = c_lo;
      return;
    }
    split_range(c_lo, c_hi, nwarps - 1, warp - 1, lo, hi);
    return;
  }
  split_range(c_lo, c_hi, nwarps, warp, lo, hi);
}

// L2 prefetch of the 128-byte lines of vectors [lo, hi) (16 bytes each) of one row of
// `row_bytes` bytes, over a warp; every address prefetched lies inside the row. (A hint only: the
// host build of tests/cuda_emulation leaves it out.)
__device__ __forceinline__ void block_prefetch_l2(const void* row, i64 lo, i64 hi, i64 row_bytes,
                                                  int lane) {
#if defined(__CUDA_ARCH__)
  const char* base = reinterpret_cast<const char*>(row);
  const i64 end = hi * 16 < row_bytes ? hi * 16 : row_bytes;
  for (i64 off = lo * 16 + (i64)lane * 128; off < end; off += 32 * 128) {
    asm volatile("{ .reg .u64 a;\n\tcvta.to.global.u64 a, %0;\n\tprefetch.global.L2 [a]; }" ::"l"(base + off));
  }
#endif
}

// One warp's segment [lo, hi) of one row: the sum of its values (every lane gets it) and, with
// `check`, the bad-value bits (qbit for q, kBlockBadP for p) OR-ed into `bad`.
template <typename T, bool ALIGNED>
__device__ __forceinline__ double block_stream(const T* qrow, const T* prow, bool plain, double w,
                                               i64 onehot, i64 lo, i64 hi, i64 V, int lane,
                                               bool check, u32 qbit, u32& bad) {
  constexpr int N = VecTraits<T>::N;
  constexpr int U = SPECSAMPLE_BLOCK_WAVE;
  const bool use_p = prow != nullptr;
  double acc = 0.0;
  for (i64 base = lo + lane; base < hi; base += 32 * U) {
    uint4 qw[U], pw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const i64 g = base + u * 32;
      qw[u] = make_uint4(0u, 0u, 0u, 0u);
      pw[u] = qw[u];
      if (g < hi) {
        qw[u] = load_raw(qrow, g, V, ALIGNED);
        if (use_p) pw[u] = load_raw(prow, g, V, ALIGNED);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const i64 g = base + u * 32;
      if (g < hi) {
        float qv[N], pv[N];
        VecTraits<T>::unpack(qw[u], qv);
        VecTraits<T>::unpack(pw[u], pv);
        double vs = 0.0;
#pragma unroll
        for (int e = 0; e < N; ++e) {
          if (check) {
            if (bad_prob(qv[e])) bad |= qbit;
            if (use_p && bad_prob(pv[e])) bad |= kBlockBadP;
          }
          vs += block_value(plain, w, qv[e], pv[e], use_p, g * N + e, onehot);
        }
        acc += vs;
      }
    }
  }
  return warp_sum(acc);
}

// Vector g of rows k0..k0+R-1 of q and p (zero for rows >= K and for g >= hi).
template <typename T, bool ALIGNED, int R>
__device__ __forceinline__ void block_load_rows(const T* q, const T* p, i64 b, int K, int k0, i64 g,
                                                i64 hi, i64 V, uint4 (&qw)[R], uint4 (&pw)[R]) {
  const i64 K1 = (i64)K + 1;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int k = k0 + r;
    qw[r] = make_uint4(0u, 0u, 0u, 0u);
    pw[r] = qw[r];
    if (k < K && g < hi) {
      qw[r] = load_raw(q + (b * K1 + k) * V, g, V, ALIGNED);
      if (p != nullptr) pw[r] = load_raw(p + (b * (i64)K + k) * V, g, V, ALIGNED);
    }
  }
}

// Rows k0..k0+R-1 (those < K) of one warp's segment [lo, hi) at once, every row's q and p vectors
// loaded before the first sum: the split kernel's segments are a few vectors per lane, so reading
// row after row would cost a round trip per row. `qw` / `pw` come holding each lane's first
// vectors (g = lo + lane, requested by block_load_rows: the caller issues that request early);
// each next vector is requested after the current one is added. Per row, the lanes add their
// vectors in the same order as block_stream, so the sums (`sums`, every lane) are the same bits.
// Bad values OR into `bad` as kBlockBadQ / kBlockBadP.
template <typename T, bool ALIGNED, int R>
__device__ __forceinline__ void block_stream_rows(const T* q, const T* p, i64 b, int K, int k0,
                                                  const double* w, const i64* x, i64 lo, i64 hi, i64 V,
                                                  int lane, u32& bad, double (&sums)[R], uint4 (&qw)[R],
                                                  uint4 (&pw)[R]) {
  constexpr int N = VecTraits<T>::N;
  const bool use_p = p != nullptr;
  double acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0;
  for (i64 g = lo + lane; g < hi; g += 32) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int k = k0 + r;
      if (k < K) {
        float qv[N], pv[N];
        VecTraits<T>::unpack(qw[r], qv);
        VecTraits<T>::unpack(pw[r], pv);
        const i64 onehot = use_p ? -1 : x[k];
        double vs = 0.0;
#pragma unroll
        for (int e = 0; e < N; ++e) {
          if (bad_prob(qv[e])) bad |= kBlockBadQ;
          if (use_p && bad_prob(pv[e])) bad |= kBlockBadP;
          vs += block_value(false, w[k], qv[e], pv[e], use_p, g * N + e, onehot);
        }
        acc[r] += vs;
      }
    }
    if (g + 32 < hi) block_load_rows<T, ALIGNED, R>(q, p, b, K, k0, g + 32, hi, V, qw, pw);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) sums[r] = warp_sum(acc[r]);
}

// Steps 1 and 2 for one block's chunk [c_lo, c_hi) (vector indices) of request b: the decisions in
// shared memory (x, q and p at the drafts, coins, prefix weights, step-1 flags), this block's
// warp-segment sums of every row slot 0..K in sm.wsum, and each warp's bad-value bits in sm.tsum.
// SPLIT reads step 2's rows kBlockSplitRows at a time (block_stream_rows). Ends with a barrier.
template <typename T, int CL, bool ALIGNED, bool SPLIT>
__device__ __forceinline__ void block_rows(const Params& P, BlockSmem<CL>& sm, i64 b, i64 c_lo,
                                           i64 c_hi) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int K = P.K;
  const i64 V = P.V;
  const i64 K1 = (i64)K + 1;
  const T* q = reinterpret_cast<const T*>(P.q);
  const T* p = reinterpret_cast<const T*>(P.p);
  u32 bad = 0;
  // Split: each lane's first vectors of rows 0..kBlockSplitRows-1 are requested before step 1, so
  // that their DRAM round trip overlaps the decisions' (the ids, then the drafted entries): at
  // B = 1 that is the whole chunk. A request flagged in step 1 ignores them.
  uint4 row_q[kBlockSplitRows], row_p[kBlockSplitRows];
  if constexpr (SPLIT) {
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
    block_load_rows<T, ALIGNED, kBlockSplitRows>(q, p, b, K, 0, lo + lane, hi, V, row_q, row_p);
  }
  // Cluster kernel: small calls ask for their rows with L2 prefetches first (the split kernel's
  // request above does this job there: prefetching too cost it 4-5 us at B = 1).
  if (!SPLIT && SPECSAMPLE_BLOCK_PREFETCH_BYTES > 0 &&
      (i64)P.B * ((p != nullptr ? 2 : 1) * (i64)K + 1) * V * (i64)sizeof(T) <= SPECSAMPLE_BLOCK_PREFETCH_BYTES) {
    // a 16-byte vector holds N elements, so vector g starts g * 16 bytes into its row
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
    const i64 row_bytes = V * (i64)sizeof(T);
    for (int k = 0; k < K; ++k) {
      block_prefetch_l2(q + (b * K1 + k) * V, lo, hi, row_bytes, lane);
      if (p != nullptr) block_prefetch_l2(p + (b * (i64)K + k) * V, lo, hi, row_bytes, lane);
    }
  }

  // ---- 1. decisions (warp 0) while the other warps stream the bonus row ------------------------
  if (warp == 0) {
    u64 seed = P.seed, offset = P.offset;
    if (P.captured) {
      seed = (u64)*P.seed_ptr;
      offset = (u64)*P.offset_ptr + P.offset_intragraph;
    }
    u32 f = 0;
    for (int k0 = 0; k0 <= K; k0 += 32) {
      const int k = k0 + lane;
      i64 x = -1;
      float qx = 0.0f, px = 1.0f;  // p = 1 without draft probabilities
      if (k < K) {
        x = load_id(P, b, k);
        if (x < 0 || x >= V) {  // out of range: flagged, never dereferenced
          x = -1;
          f |= kBadDraftId;
        } else {
          qx = VecTraits<T>::load1(q + (b * K1 + k) * V + x);
          if (bad_prob(qx)) f |= kBadTarget;
          if (p != nullptr) {
            px = VecTraits<T>::load1(p + (b * (i64)K + k) * V + x);
            if (bad_prob(px)) f |= kBadDraft;
          }
        }
        sm.x[k] = x;
        sm.qx[k] = qx;
        sm.px[k] = px;
      }
      if (k <= K) {
        float u;
        if (P.uniforms) {
          u = __ldg(P.uniforms + b * K1 + k);
          if (!(u >= 0.0f && u < 1.0f)) f |= kBadUniform;
        } else {
          u = philox_uniform(seed, offset, (u64)b, (u64)k);
        }
        sm.u[k] = u;
      }
    }
    f = warp_or(f);
    __syncwarp();
    if (lane == 0) {
      // the prefix weights, step by step as the reference computes them
      double w = 1.0;
      sm.w[0] = w;
      for (int k = 0; k < K; ++k) {
        const double num = __dmul_rn(w, (double)sm.qx[k]);
        const double pk = (double)sm.px[k];
        if (pk > 0.0) {
          const double ratio = __ddiv_rn(num, pk);
          w = ratio < 1.0 ? ratio : 1.0;
        } else {
          w = num > 0.0 ? 1.0 : 0.0;
        }
        sm.w[k + 1] = w;
      }
      sm.flags = f;
    }
  }
  const T* bonus = q + (b * K1 + K) * V;
  {
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, true, lo, hi);
    if (warp != 0 || nwarps == 1) {
      const double s = block_stream<T, ALIGNED>(bonus, nullptr, true, 1.0, -1, lo, hi, V, lane, true,
                                                kBlockBadBonus, bad);
      if (lane == 0) sm.wsum[K][warp] = s;
    } else if (lane == 0) {
      sm.wsum[K][0] = 0.0;
    }
  }
  __syncthreads();

  // ---- 2. rows 0..K-1 of q and p, in full ---------------------------------------------------------
  {
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
    if (sm.flags) hi = lo;  // a request flagged in step 1 reads no (further) row
    if constexpr (SPLIT) {
      for (int k0 = 0; k0 < K; k0 += kBlockSplitRows) {
        if (k0 > 0) block_load_rows<T, ALIGNED, kBlockSplitRows>(q, p, b, K, k0, lo + lane, hi, V, row_q, row_p);
        double s[kBlockSplitRows];
        block_stream_rows<T, ALIGNED, kBlockSplitRows>(q, p, b, K, k0, sm.w, sm.x, lo, hi, V, lane, bad, s,
                                                       row_q, row_p);
        if (lane == 0) {
#pragma unroll
          for (int r = 0; r < kBlockSplitRows; ++r) {
            if (k0 + r < K) sm.wsum[k0 + r][warp] = s[r];
          }
        }
      }
    } else {
      for (int k = 0; k < K; ++k) {
        const T* qrow = q + (b * K1 + k) * V;
        const T* prow = p != nullptr ? p + (b * (i64)K + k) * V : nullptr;
        const i64 onehot = p != nullptr ? -1 : sm.x[k];
        const double s = block_stream<T, ALIGNED>(qrow, prow, false, sm.w[k], onehot, lo, hi, V, lane,
                                                  true, kBlockBadQ, bad);
        if (lane == 0) sm.wsum[k][warp] = s;
      }
    }
  }
  bad = warp_or(bad);
  if (lane == 0) sm.tsum[warp] = __longlong_as_double((long long)bad);
  __syncthreads();
}

// This block's value of slot s (0..K: the sum of its warp segments; K + 1: the warps' bad-value
// bits, carried in a double's bits), as step 3 publishes it.
template <int CL>
__device__ __forceinline__ double block_chunk_value(const BlockSmem<CL>& sm, int s, int K, int nwarps) {
  if (s <= K) {
    double v = 0.0;
    for (int w = 0; w < nwarps; ++w) v += sm.wsum[s][w];
    return v;
  }
  u32 bits = 0;
  for (int w = 0; w < nwarps; ++w) bits |= (u32)__double_as_longlong(sm.tsum[w]);
  return __longlong_as_double((long long)bits);
}

// Warp 0, once sm.tot[0..K] hold the request's slot totals and `rb` its bad-value bits: the
// thresholds, tau (a later pass overrides an earlier failure), the status and the final slot.
template <int CL>
__device__ __forceinline__ void block_decide(BlockSmem<CL>& sm, int K, u32 rb, int lane) {
  const u32 flags1 = sm.flags;
  int tau = 0;
  for (int k0 = 0; k0 < K; k0 += 32) {
    const int k = k0 + lane;
    bool pass = false;
    if (k < K) {
      double h;
      if (k == K - 1) {
        h = sm.w[K];
      } else {
        const double z = sm.tot[k + 1];
        const double denom = __dsub_rn(__dadd_rn(z, 1.0), sm.w[k + 1]);
        h = denom > 0.0 ? __ddiv_rn(z, denom) : 1.0;
      }
      pass = (double)sm.u[k] < h;
    }
    const u32 mask = __ballot_sync(0xffffffffu, pass);
    if (mask) tau = k0 + 32 - __clz(mask);  // a later pass overrides
  }
  if (lane == 0) {
    u32 f = flags1;
    if (!f) f = ((rb & kBlockBadQ) ? kBadTarget : 0u) | ((rb & kBlockBadP) ? kBadDraft : 0u);
    if (!f && tau == K && (rb & kBlockBadBonus)) f = kBadTarget;
    sm.flags = f;
    sm.tau = tau;
    sm.slot = tau;
    sm.total = sm.tot[tau];
  }
}

// The request's outputs but the last token (one warp): -1 everywhere when flagged, else the
// accepted drafts, -1 after the last token, num_emitted and status.
template <int CL>
__device__ __forceinline__ void block_write_prefix(const Params& P, const BlockSmem<CL>& sm, i64 b,
                                                   u32 flags, int tau, int lane) {
  if (flags) {
    write_flagged_outputs(P, b, flags, lane);
    return;
  }
  const int K = P.K;
  const i64 base = b * ((i64)K + 1);
  for (int k = lane; k <= K; k += 32) {
    if (k < tau) P.out_tokens[base + k] = sm.x[k];  // accepted ids are in range
    if (k > tau) P.out_tokens[base + k] = -1;
  }
  if (lane == 0) {
    P.out_num[b] = tau + 1;
    P.out_status[b] = 0;
  }
}

// Step 4 inside the crossing warp segment [lo, hi) of the final slot (every thread of the block):
// the segment split over the block's threads, the thread sums scanned in thread order from
// `before_seg`, and the crossing thread's element, every r_j formed exactly as in step 2. A
// zero-weight token is never chosen; a threshold rounded past the end takes the last positive one.
template <typename T, bool ALIGNED, int CL>
__device__ __forceinline__ void block_pick(const Params& P, BlockSmem<CL>& sm, i64 b, int slot,
                                           int tau, double t, double before_seg, i64 lo, i64 hi) {
  constexpr int N = VecTraits<T>::N;
  constexpr int PV = SPECSAMPLE_BLOCK_PICK_VECS;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = P.K;
  const i64 V = P.V;
  const i64 K1 = (i64)K + 1;
  const T* q = reinterpret_cast<const T*>(P.q);
  const T* p = reinterpret_cast<const T*>(P.p);
  const bool plain = slot >= K;
  const T* qrow = q + (b * K1 + (slot == K ? K : tau)) * V;
  const T* prow = (!plain && p != nullptr) ? p + (b * (i64)K + tau) * V : nullptr;
  const i64 onehot = (!plain && p == nullptr) ? sm.x[tau] : -1;
  const double w = plain ? 1.0 : sm.w[tau];
  const i64 per = (hi - lo + blockDim.x - 1) / blockDim.x;
  const i64 my_lo = lo + per * threadIdx.x < hi ? lo + per * threadIdx.x : hi;
  const i64 my_hi = my_lo + per < hi ? my_lo + per : hi;
  // Up to PV vectors per thread stay in registers from the sum to the walk (one round trip to L2
  // instead of two); more are read again by the crossing thread.
  const bool in_regs = per <= PV;
  uint4 qs[PV], ps[PV];
  double mine = 0.0;
  if (in_regs) {
#pragma unroll
    for (int v = 0; v < PV; ++v) {
      const i64 g = my_lo + v;
      qs[v] = make_uint4(0u, 0u, 0u, 0u);
      ps[v] = qs[v];
      if (g < my_hi) {
        qs[v] = load_raw(qrow, g, V, ALIGNED);
        if (prow != nullptr) ps[v] = load_raw(prow, g, V, ALIGNED);
      }
    }
#pragma unroll
    for (int v = 0; v < PV; ++v) {
      const i64 g = my_lo + v;
      if (g < my_hi) {
        float qv[N], pv[N];
        VecTraits<T>::unpack(qs[v], qv);
        VecTraits<T>::unpack(ps[v], pv);
#pragma unroll
        for (int e = 0; e < N; ++e) mine += block_value(plain, w, qv[e], pv[e], prow != nullptr, g * N + e, onehot);
      }
    }
  } else {
    for (i64 g = my_lo; g < my_hi; ++g) {
      const uint4 qw = load_raw(qrow, g, V, ALIGNED);
      const uint4 pw = prow != nullptr ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      float qv[N], pv[N];
      VecTraits<T>::unpack(qw, qv);
      VecTraits<T>::unpack(pw, pv);
#pragma unroll
      for (int e = 0; e < N; ++e) mine += block_value(plain, w, qv[e], pv[e], prow != nullptr, g * N + e, onehot);
    }
  }
  // block-wide exclusive prefix of the thread sums, in thread order
  const double wincl = warp_inclusive_scan(mine, lane);
  if (lane == 31) sm.tsum[warp] = wincl;
  if (threadIdx.x == 0) {
    sm.pick = 0x7fffffff;
    sm.lastpos = -1;
  }
  __syncthreads();
  double wbase = before_seg;
  for (int v = 0; v < warp; ++v) wbase += sm.tsum[v];
  const double before = wbase + (wincl - mine);
  const bool hit = mine > 0.0 && before + mine > t;
  if (hit) atomicMin(&sm.pick, (int)threadIdx.x);
  if (mine > 0.0) atomicMax(&sm.lastpos, (int)threadIdx.x);
  __syncthreads();
  const int chosen = sm.pick != 0x7fffffff ? sm.pick : sm.lastpos;
  if ((int)threadIdx.x != chosen) {
    if (chosen < 0 && threadIdx.x == 0) P.out_tokens[b * K1 + tau] = 0;  // unreachable in practice
    return;
  }
  const bool crossing = sm.pick != 0x7fffffff;
  const double tt = crossing ? t : __longlong_as_double(0x7ff0000000000000LL);  // +inf: last positive
  double a = before;
  i64 token = -1, last = -1;
  auto walk = [&](const uint4& qw, const uint4& pw, i64 g) {
    float qv[N], pv[N];
    VecTraits<T>::unpack(qw, qv);
    VecTraits<T>::unpack(pw, pv);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const double r = block_value(plain, w, qv[e], pv[e], prow != nullptr, g * N + e, onehot);
      a += r;
      if (r > 0.0) {
        last = g * N + e;
        if (token < 0 && a > tt) token = g * N + e;
      }
    }
  };
  if (in_regs) {
#pragma unroll
    for (int v = 0; v < PV; ++v) {
      if (my_lo + v < my_hi && token < 0) walk(qs[v], ps[v], my_lo + v);
    }
  } else {
    for (i64 g = my_lo; g < my_hi && token < 0; ++g) {
      const uint4 qw = load_raw(qrow, g, V, ALIGNED);
      const uint4 pw = prow != nullptr ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      walk(qw, pw, g);
    }
  }
  P.out_tokens[b * K1 + tau] = token >= 0 ? token : (last >= 0 ? last : 0);
}

// The residual sums to zero (probability zero in exact arithmetic): the final slot becomes q_tau
// itself, streamed over [c_lo, c_hi) into sm.wsum[K + 1]; returns this block's sum of it.
template <typename T, bool ALIGNED, int CL>
__device__ __forceinline__ double block_fallback_sums(const Params& P, BlockSmem<CL>& sm, i64 b, int tau,
                                                      i64 c_lo, i64 c_hi) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const T* q = reinterpret_cast<const T*>(P.q);
  u32 unused = 0;
  i64 lo, hi;
  block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
  const double s = block_stream<T, ALIGNED>(q + (b * ((i64)P.K + 1) + tau) * P.V, nullptr, true, 1.0,
                                            -1, lo, hi, P.V, lane, false, 0u, unused);
  if (lane == 0) sm.wsum[P.K + 1][warp] = s;
  __syncthreads();
  double v = 0.0;
  for (int w = 0; w < nwarps; ++w) v += sm.wsum[P.K + 1][w];
  return v;
}

template <typename T, int CL, bool ALIGNED>
__device__ __forceinline__ void verify_block(const Params& P, BlockSmem<CL>& sm) {
  cluster_arrive_relaxed<CL>();  // paired with the wait before the first remote store
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const u32 rank = cluster_rank<CL>();
  const i64 b = (i64)cluster_id<CL>();
  const int K = P.K;
  const i64 NG = (P.V + VecTraits<T>::N - 1) / VecTraits<T>::N;  // vectors per row
  i64 c_lo, c_hi;
  split_range(0, NG, CL, (int)rank, c_lo, c_hi);
  block_rows<T, CL, ALIGNED, false>(P, sm, b, c_lo, c_hi);

  // ---- 3. chunk sums to every block of the cluster; totals; tau; status ---------------------------
  cluster_wait<CL>();  // every block of the cluster has started (its shared memory exists)
  for (int s = threadIdx.x; s <= K + 1; s += blockDim.x) {
    const double v = block_chunk_value<CL>(sm, s, K, nwarps);
    const int slot = s <= K ? s : kBlockBadSlot;
    for (int r = 0; r < CL; ++r) st_peer_f64<CL>(&sm.chunk[slot][rank], (u32)r, v);
  }
  cluster_barrier<CL>();
  for (int s = threadIdx.x; s <= K; s += blockDim.x) {
    double v = 0.0;
    for (int r = 0; r < CL; ++r) v += sm.chunk[s][r];
    sm.tot[s] = v;
  }
  __syncthreads();
  if (warp == 0) {
    u32 rb = 0;
    for (int r = 0; r < CL; ++r) rb |= (u32)__double_as_longlong(sm.chunk[kBlockBadSlot][r]);
    block_decide<CL>(sm, K, rb, lane);
  }
  __syncthreads();
  const int tau = sm.tau;
  if (!sm.flags && tau < K && sm.total == 0.0) {
    // the residual sums to zero: draw from q_tau itself (the same decision in every block)
    const double v = block_fallback_sums<T, ALIGNED, CL>(P, sm, b, tau, c_lo, c_hi);
    if (threadIdx.x == 0) {
      for (int r = 0; r < CL; ++r) st_peer_f64<CL>(&sm.chunk[K + 1][rank], (u32)r, v);
    }
    cluster_barrier<CL>();
    if (threadIdx.x == 0) {
      double tot = 0.0;
      for (int r = 0; r < CL; ++r) tot += sm.chunk[K + 1][r];
      sm.tot[K + 1] = tot;
      sm.total = tot;
      sm.slot = K + 1;
    }
    __syncthreads();
  }
  const int slot = sm.slot;
  const double total = sm.total;
  u32 flags = sm.flags;
  if (!flags) flags = total > kFloatMaxD ? kRowOverflow : total == 0.0 ? kZeroRow : 0u;
  if (rank == 0 && warp == 0) block_write_prefix<CL>(P, sm, b, flags, tau, lane);
  if (flags) return;

  // ---- 4. the last token: the crossing block, warp segment, thread, element ----------------------
  const double t = (double)sm.u[K] * total;
  double before_chunk = 0.0, before_seg = 0.0;
  int cwarp = -1;
  {
    const double cv = lane < CL ? sm.chunk[slot][lane] : 0.0;
    const double cincl = warp_inclusive_scan(cv, lane);
    if (lane_crossing(cv, cincl, exclusive_of(cincl, lane), 0.0, t, before_chunk) != (int)rank) return;
    const double sv = lane < nwarps ? sm.wsum[slot][lane] : 0.0;
    const double sincl = warp_inclusive_scan(sv, lane);
    cwarp = lane_crossing(sv, sincl, exclusive_of(sincl, lane), before_chunk, t, before_seg);
  }
  if (cwarp < 0) cwarp = 0;  // no positive segment (rounding): the scan below finds nothing either
  i64 lo, hi;
  block_segment(c_lo, c_hi, nwarps, cwarp, slot == K, lo, hi);
  block_pick<T, ALIGNED, CL>(P, sm, b, slot, tau, t, before_seg, lo, hi);
}

// Doubles of one request's split workspace: slot-major, the chunk sums of slots 0..K and the
// chunks' bad-value bits (slot K + 1), one per chunk: (K + 2) * chunks.
__device__ __forceinline__ i64 block_split_request_doubles(int K, int chunks) {
  return ((i64)K + 2) * chunks;
}

// The split variant (header comment): block (b, c) of b * chunks + c handles chunk c of request b.
// ws holds B requests' records (block_split_request_doubles each); ws_count one zeroed counter
// per request; rec_s kBlockSplitRecords doubles of shared memory (the last block's copy).
template <typename T, bool ALIGNED>
__device__ __forceinline__ void verify_block_split(const Params& P, BlockSmem<1>& sm, double* rec_s,
                                                   int chunks, double* ws, u32* ws_count) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const i64 unit = (i64)blockIdx.x;
  const int rank = (int)(unit % chunks);
  const i64 b = unit / chunks;
  const int K = P.K;
  const i64 NG = (P.V + VecTraits<T>::N - 1) / VecTraits<T>::N;  // vectors per row
  i64 c_lo, c_hi;
  split_range(0, NG, chunks, rank, c_lo, c_hi);
  block_rows<T, 1, ALIGNED, true>(P, sm, b, c_lo, c_hi);

  // ---- 3. this block's chunk sums to the workspace; the last block of the request goes on ---------
  double* req = ws + b * block_split_request_doubles(K, chunks);
  for (int s = threadIdx.x; s <= K + 1; s += blockDim.x) {
    __stcg(req + (i64)s * chunks + rank, block_chunk_value<1>(sm, s, K, nwarps));
  }
  __threadfence();  // this thread's stores are visible GPU-wide before the count announces them
  __syncthreads();
  if (threadIdx.x == 0) {
    const u32 seen = atomicAdd(&ws_count[b], 1u);
    sm.is_last = seen == (u32)chunks - 1 ? 1 : 0;
    if (sm.is_last) ws_count[b] = 0;  // every block of this call has counted: ready for the next
  }
  __syncthreads();
  if (!sm.is_last) return;
  __threadfence();  // acquire: the other blocks' records, announced by their counts

  // Every record into shared memory at once when they fit (one round trip to L2, not one per
  // 32 chunks and slot); else each is read from L2 where it is used.
  const int n_rec = (K + 2) * chunks;
  const bool staged = n_rec <= kBlockSplitRecords;
  if (staged) {
    constexpr int L = 8;
    for (int i0 = threadIdx.x; i0 < n_rec; i0 += L * (int)blockDim.x) {
      double v[L];
#pragma unroll
      for (int l = 0; l < L; ++l) {
        const int i = i0 + l * (int)blockDim.x;
        v[l] = i < n_rec ? __ldcg(req + i) : 0.0;
      }
#pragma unroll
      for (int l = 0; l < L; ++l) {
        const int i = i0 + l * (int)blockDim.x;
        if (i < n_rec) rec_s[i] = v[l];
      }
    }
    __syncthreads();
  }
  auto record = [&](int s, int c) -> double {
    return staged ? rec_s[s * chunks + c] : __ldcg(req + (i64)s * chunks + c);
  };

  // totals in a fixed order (whichever block comes last): warp w takes slots w, w + nwarps, ...;
  // lanes stride over the chunks, then a fixed shuffle tree
  __shared__ u32 rb_s;
  for (int s = warp; s <= K + 1; s += nwarps) {
    double v = 0.0;
    u32 bits = 0;
    for (int c = lane; c < chunks; c += 32) {
      const double x = record(s, c);
      if (s <= K) {
        v += x;
      } else {
        bits |= (u32)__double_as_longlong(x);
      }
    }
    if (s <= K) {
      v = warp_sum(v);
      if (lane == 0) sm.tot[s] = v;
    } else {
      bits = warp_or(bits);
      if (lane == 0) rb_s = bits;
    }
  }
  __syncthreads();
  if (warp == 0) block_decide<1>(sm, K, rb_s, lane);
  __syncthreads();
  const int tau = sm.tau;
  bool whole_row = false;
  if (!sm.flags && tau < K && sm.total == 0.0) {
    // the residual sums to zero: draw from q_tau itself, streamed whole by this block
    const double v = block_fallback_sums<T, ALIGNED, 1>(P, sm, b, tau, 0, NG);
    if (threadIdx.x == 0) {
      sm.tot[K + 1] = v;
      sm.total = v;
      sm.slot = K + 1;
    }
    __syncthreads();
    whole_row = true;
  }
  const int slot = sm.slot;
  const double total = sm.total;
  u32 flags = sm.flags;
  if (!flags) flags = total > kFloatMaxD ? kRowOverflow : total == 0.0 ? kZeroRow : 0u;
  if (warp == 0) block_write_prefix<1>(P, sm, b, flags, tau, lane);
  if (flags) return;

  // ---- 4. the last token: the crossing chunk (every warp computes the same scan, so no broadcast
  // is needed), then the crossing thread and element of that chunk -----------------------------------
  const double t = (double)sm.u[K] * total;
  if (whole_row) {
    const double sv = lane < nwarps ? sm.wsum[K + 1][lane] : 0.0;
    const double sincl = warp_inclusive_scan(sv, lane);
    double before_seg = 0.0;
    int cwarp = lane_crossing(sv, sincl, exclusive_of(sincl, lane), 0.0, t, before_seg);
    if (cwarp < 0) cwarp = 0;
    i64 lo, hi;
    block_segment(0, NG, nwarps, cwarp, false, lo, hi);
    block_pick<T, ALIGNED, 1>(P, sm, b, slot, tau, t, before_seg, lo, hi);
    return;
  }
  // the first chunk whose running sum passes t, 32 chunks at a time; else the last positive one
  int cchunk = -1, lastpos = -1;
  double base = 0.0, before_chunk = 0.0, before_last = 0.0;
  for (int c0 = 0; c0 < chunks; c0 += 32) {
    const int c = c0 + lane;
    const double v = c < chunks ? record(slot, c) : 0.0;
    const double incl = warp_inclusive_scan(v, lane);
    const double excl = exclusive_of(incl, lane);
    const u32 hit = __ballot_sync(0xffffffffu, v > 0.0 && base + incl > t);
    const u32 pos = __ballot_sync(0xffffffffu, v > 0.0);
    if (hit) {
      const int l = __ffs(hit) - 1;
      cchunk = c0 + l;
      before_chunk = base + __shfl_sync(0xffffffffu, excl, l);
      break;
    }
    if (pos) {
      const int l = 31 - __clz(pos);
      lastpos = c0 + l;
      before_last = base + __shfl_sync(0xffffffffu, excl, l);
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (cchunk < 0) {
    cchunk = lastpos < 0 ? 0 : lastpos;  // (rounding past the end: the last positive chunk)
    before_chunk = before_last;
  }
  i64 k_lo, k_hi;
  split_range(0, NG, chunks, cchunk, k_lo, k_hi);
  block_pick<T, ALIGNED, 1>(P, sm, b, slot, tau, t, before_chunk, k_lo, k_hi);
}

// ---------------------------------------------------------------------------------------------
// Entry points (the same parameter list as the token kernels, so both hosts pack them alike;
// greedy and rows_per_step are unused; the split kernel adds its chunks and workspace).
// ---------------------------------------------------------------------------------------------
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(512, 1) verify_block_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  __shared__ BlockSmem<1> sm;
  verify_block<T, 1, ALIGNED>(P, sm);
}

template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(256, 1) verify_block_split_kernel(SPECSAMPLE_KERNEL_PARAMS, int chunks,
                                                                     double* ws, u32* ws_count) {
  SPECSAMPLE_MAKE_PARAMS
  __shared__ BlockSmem<1> sm;
  __shared__ double rec_s[kBlockSplitRecords];
  verify_block_split<T, ALIGNED>(P, sm, rec_s, chunks, ws, ws_count);
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
template <typename T, int CL, bool ALIGNED>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(512, 1)
    verify_block_cluster_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  __shared__ BlockSmem<CL> sm;
  verify_block<T, CL, ALIGNED>(P, sm);
}
#endif

}  // namespace specsample
