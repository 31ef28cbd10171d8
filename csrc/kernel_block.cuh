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
//     (NaN, infinite, negative). A request flagged in step 1 reads none of these rows.
//  3. The warps' segment sums of every row make the block's chunk sums, which every block pushes
//     into the shared memory of every block of the cluster (remote stores, one cluster barrier);
//     the bad-value bits travel in one more slot. Every block then forms the same totals in the
//     same order: the thresholds h_{k-1} = Z_k / (Z_k + 1 - w_k) (1 where the denominator is 0),
//     h_{K-1} = w_K, tau = max{k + 1 : u_k < h_k}, the status (docs/rules.md, "Status") and the
//     final row's total. A residual summing to 0 falls back to q_tau: one more pass over that row
//     and one more exchange (probability zero in exact arithmetic).
//  4. The block whose chunk holds the threshold u_K * total finds the warp segment holding it,
//     re-reads that segment (from L2) split over all its threads, scans the thread sums, and the
//     crossing thread picks the element with every r_j formed exactly as in step 2; a zero-weight
//     token is never chosen, and a threshold rounded past the end takes the last positive token.
//
// One launch, no workspace, no atomics in global memory, no host sync: CUDA-graph safe.
#pragma once

#include "kernel_common.cuh"
#include "kernel_philox.cuh"
#include "kernel_cluster.cuh"
#include "kernel_random.cuh"

namespace specsample {

constexpr int kBlockMaxWarps = 16;        // blockDim.x <= 512
constexpr int kBlockSlots = kMaxK + 2;    // row slots: 0..K-1 residual rows, K bonus, K+1 fallback
constexpr int kBlockBadSlot = kBlockSlots;  // the chunk slot carrying the bad-value bits

#ifndef SPECSAMPLE_BLOCK_WAVE
#define SPECSAMPLE_BLOCK_WAVE 4  // 16-byte vectors per lane in flight, per row read
#endif

// Small calls (every row of the call fitting in this many bytes, well inside the L2) ask for all
// rows 0..K-1 of their warp segments at once with L2 prefetches before streaming them: a request
// reads 2K rows, and the loads in flight alone (U vectors of q and of p per lane) would leave the
// DRAM idle between rows at small batch. 0 disables it.
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
// `row_bytes` bytes, over a warp; every address prefetched lies inside the row.
__device__ __forceinline__ void block_prefetch_l2(const void* row, i64 lo, i64 hi, i64 row_bytes,
                                                  int lane) {
  const char* base = reinterpret_cast<const char*>(row);
  const i64 end = hi * 16 < row_bytes ? hi * 16 : row_bytes;
  for (i64 off = lo * 16 + (i64)lane * 128; off < end; off += 32 * 128) {
    asm volatile("{ .reg .u64 a;\n\tcvta.to.global.u64 a, %0;\n\tprefetch.global.L2 [a]; }" ::"l"(base + off));
  }
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

template <typename T, int CL, bool ALIGNED>
__device__ __forceinline__ void verify_block(const Params& P, BlockSmem<CL>& sm) {
  constexpr int N = VecTraits<T>::N;
  cluster_arrive_relaxed<CL>();  // paired with the wait before the first remote store
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const u32 rank = cluster_rank<CL>();
  const i64 b = (i64)cluster_id<CL>();
  const int K = P.K;
  const i64 V = P.V;
  const i64 K1 = (i64)K + 1;
  const T* q = reinterpret_cast<const T*>(P.q);
  const T* p = reinterpret_cast<const T*>(P.p);
  const i64 NG = (V + N - 1) / N;  // vectors per row
  i64 c_lo, c_hi;
  split_range(0, NG, CL, (int)rank, c_lo, c_hi);
  u32 bad = 0;
  if (SPECSAMPLE_BLOCK_PREFETCH_BYTES > 0 &&
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
  const u32 flags1 = sm.flags;
  {
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
    if (flags1) hi = lo;  // a request flagged in step 1 reads no row
    for (int k = 0; k < K; ++k) {
      const T* qrow = q + (b * K1 + k) * V;
      const T* prow = p != nullptr ? p + (b * (i64)K + k) * V : nullptr;
      const i64 onehot = p != nullptr ? -1 : sm.x[k];
      const double s = block_stream<T, ALIGNED>(qrow, prow, false, sm.w[k], onehot, lo, hi, V, lane,
                                                true, kBlockBadQ, bad);
      if (lane == 0) sm.wsum[k][warp] = s;
    }
  }
  bad = warp_or(bad);
  if (lane == 0) sm.tsum[warp] = __longlong_as_double((long long)bad);
  __syncthreads();

  // ---- 3. chunk sums to every block of the cluster; totals; tau; status ---------------------------
  cluster_wait<CL>();  // every block of the cluster has started (its shared memory exists)
  for (int s = threadIdx.x; s <= K + 1; s += blockDim.x) {
    double v = 0.0;
    if (s <= K) {
      for (int w = 0; w < nwarps; ++w) v += sm.wsum[s][w];
    } else {
      u32 bits = 0;
      for (int w = 0; w < nwarps; ++w) bits |= (u32)__double_as_longlong(sm.tsum[w]);
      v = __longlong_as_double((long long)bits);
    }
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
  __syncthreads();
  const int tau = sm.tau;
  if (!sm.flags && tau < K && sm.total == 0.0) {
    // the residual sums to zero: draw from q_tau itself (the same decision in every block)
    i64 lo, hi;
    block_segment(c_lo, c_hi, nwarps, warp, false, lo, hi);
    const double s = block_stream<T, ALIGNED>(q + (b * K1 + tau) * V, nullptr, true, 1.0, -1, lo, hi,
                                              V, lane, false, 0u, bad);
    if (lane == 0) sm.wsum[K + 1][warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      double v = 0.0;
      for (int w = 0; w < nwarps; ++w) v += sm.wsum[K + 1][w];
      for (int r = 0; r < CL; ++r) st_peer_f64<CL>(&sm.chunk[K + 1][rank], (u32)r, v);
    }
    cluster_barrier<CL>();
    if (threadIdx.x == 0) {
      double v = 0.0;
      for (int r = 0; r < CL; ++r) v += sm.chunk[K + 1][r];
      sm.tot[K + 1] = v;
      sm.total = v;
      sm.slot = K + 1;
    }
    __syncthreads();
  }
  const int slot = sm.slot;
  const double total = sm.total;
  u32 flags = sm.flags;
  if (!flags) flags = total > kFloatMaxD ? kRowOverflow : total == 0.0 ? kZeroRow : 0u;
  if (rank == 0 && warp == 0) {
    if (flags) {
      write_flagged_outputs(P, b, flags, lane);
    } else {
      const i64 base = b * K1;
      for (int k = lane; k <= K; k += 32) {
        if (k < tau) P.out_tokens[base + k] = sm.x[k];  // accepted ids are in range
        if (k > tau) P.out_tokens[base + k] = -1;
      }
      if (lane == 0) {
        P.out_num[b] = tau + 1;
        P.out_status[b] = 0;
      }
    }
  }
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
  const bool plain = slot >= K;
  const T* qrow = q + (b * K1 + (slot == K ? K : tau)) * V;
  const T* prow = (!plain && p != nullptr) ? p + (b * (i64)K + tau) * V : nullptr;
  const i64 onehot = (!plain && p == nullptr) ? sm.x[tau] : -1;
  const double w = plain ? 1.0 : sm.w[tau];
  i64 lo, hi;
  block_segment(c_lo, c_hi, nwarps, cwarp, slot == K, lo, hi);
  const i64 per = (hi - lo + blockDim.x - 1) / blockDim.x;
  const i64 my_lo = lo + per * threadIdx.x < hi ? lo + per * threadIdx.x : hi;
  const i64 my_hi = my_lo + per < hi ? my_lo + per : hi;
  double mine = 0.0;
  for (i64 g = my_lo; g < my_hi; ++g) {
    const uint4 qw = load_raw(qrow, g, V, ALIGNED);
    const uint4 pw = prow != nullptr ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
    float qv[N], pv[N];
    VecTraits<T>::unpack(qw, qv);
    VecTraits<T>::unpack(pw, pv);
#pragma unroll
    for (int e = 0; e < N; ++e) mine += block_value(plain, w, qv[e], pv[e], prow != nullptr, g * N + e, onehot);
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
  for (i64 g = my_lo; g < my_hi && token < 0; ++g) {
    const uint4 qw = load_raw(qrow, g, V, ALIGNED);
    const uint4 pw = prow != nullptr ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
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
  }
  P.out_tokens[b * K1 + tau] = token >= 0 ? token : (last >= 0 ? last : 0);
}

// ---------------------------------------------------------------------------------------------
// Entry points (the same parameter list as the token kernels, so both hosts pack them alike;
// greedy and rows_per_step are unused).
// ---------------------------------------------------------------------------------------------
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(512, 1) verify_block_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  __shared__ BlockSmem<1> sm;
  verify_block<T, 1, ALIGNED>(P, sm);
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
