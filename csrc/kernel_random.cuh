// specsample verify kernel: random mode (rejection sampling).
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

#include "kernel_common.cuh"
#include "kernel_philox.cuh"
#include "kernel_cluster.cuh"

namespace specsample {

// ---------------------------------------------------------------------------------------------
// Random mode.
//
// Every warp of every block of the request's cluster makes the K accept/reject decisions itself,
// in registers (one draft per lane: its id, then q and p at the id, while the lane computes its
// Philox number), so no block-wide barrier stands between the decisions and the row's first loads.
// Block 0's warp 0 writes the outputs the decisions fix (accepted ids, -1 padding, the count) at
// once. Each warp then streams its own contiguous segment of the block's chunk of the row in waves
// of 32 x U vectors, issuing the next wave's loads before it reduces the current one. A warp
// records the residual sum of each of up to 32 groups of consecutive waves (lane j keeps group j's
// sum in a register) and its segment sum; the block's segment sums, added in warp order, make its
// chunk sum, which warp 0 pushes into the shared memory of every block of the cluster (distributed
// shared memory, st.async completing an mbarrier). While the chunk sums travel, each warp prepares
// its own prefix sums (wave groups; at small batch also its last wave, still in registers). Then
// each warp finds the chunk and the warp segment holding the threshold; only the warp that owns it
// goes on: it picks the wave group, scans the crossing wave (from registers when it was the
// segment's last one, else re-read from L2) and writes the last token.
//
// Arithmetic: r_j = max(0, q_j - p_j) is summed in float32 over one 16-byte vector (4 or 8
// elements), and those vector sums are added in double; the element where the threshold is
// crossed is then found with every r_j formed exactly in double.
// ---------------------------------------------------------------------------------------------
constexpr int kMaxWarpsRandom = 16;  // random mode: blockDim.x <= 512

// Vectors per lane in one wave (two waves in flight: the loop is double-buffered).
#ifndef SPECSAMPLE_WAVE_SMALL
#define SPECSAMPLE_WAVE_SMALL 2  // clusters of fewer than 16 blocks
#endif
#ifndef SPECSAMPLE_WAVE_LARGE
#define SPECSAMPLE_WAVE_LARGE 2  // clusters of 16 blocks (small batches)
#endif
#ifndef SPECSAMPLE_RANDOM_MIN_BLOCKS
#define SPECSAMPLE_RANDOM_MIN_BLOCKS 2  // blocks of 512 threads per SM (cluster < 16): <= 64 regs
#endif
template <int CL>
struct RandomShape {
  static constexpr int U = CL >= 16 ? SPECSAMPLE_WAVE_LARGE : SPECSAMPLE_WAVE_SMALL;
  // small batches (latency): scan the segment's last wave while the exchange completes
  static constexpr bool kPrecompute = CL >= 16;
  static constexpr int kMinBlocks = CL >= 16 ? 1 : SPECSAMPLE_RANDOM_MIN_BLOCKS;
};

// r_j = max(0, q_j - p_j) in double (exact: both are floats); p is one-hot(onehot) without draft
// probabilities. `j` and `onehot` compare as unsigned (onehot = -1: none).
__device__ __forceinline__ double residual_value(float qv, float pv, bool use_p, u32 j, int onehot) {
  const double qd = (double)qv;
  const double pd = use_p ? (double)pv : (j == (u32)onehot ? 1.0 : 0.0);
  const double r = qd - pd;
  return r > 0.0 ? r : 0.0;
}

// Residual sum of one 16-byte vector (index g of the row), in float32, returned as a double.
// Padding past V holds +0.0 and adds 0. With CHECK, `bad` collects 1 for a bad q value and 2 for a
// bad p value (see bad_prob).
template <typename T, bool CHECK = false>
__device__ __forceinline__ double vector_residual(const uint4& qw, const uint4& pw, u32 g, bool use_p,
                                                  int onehot, u32& bad) {
  constexpr int N = VecTraits<T>::N;
  float qv[N], pv[N];
  VecTraits<T>::unpack(qw, qv);
  VecTraits<T>::unpack(pw, pv);
  float acc = 0.0f;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    if constexpr (CHECK) {
      if (bad_prob(qv[e])) bad |= 1u;
      if (use_p && bad_prob(pv[e])) bad |= 2u;
    }
    const float d = use_p ? qv[e] - pv[e] : (g * N + e == (u32)onehot ? qv[e] - 1.0f : qv[e]);
    acc += fmaxf(d, 0.0f);
  }
  return acc <= kFloatMax ? (double)acc : kOverflowedSum;
}

// One wave of a warp: this lane's vectors base + u*32 + lane, u < U (zeros past `hi`).
template <int U>
struct Wave {
  uint4 q[U], p[U];
};

// How a wave's vectors are loaded (decided once per call, outside the loops, so the hot loop has
// no per-vector branch):
//   kUnaligned: element by element (rows not on 16 bytes, or V not a multiple of N);
//   kAligned:   one 16-byte load per vector.
enum RowSource { kUnaligned = 0, kAligned = 1 };

template <typename T, int U, int SRC>
__device__ __forceinline__ void load_wave(Wave<U>& w, const T* qrow, const T* prow, int base, int hi,
                                          i64 V, int lane) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int g = base + u * 32 + lane;
    w.q[u] = make_uint4(0u, 0u, 0u, 0u);
    w.p[u] = make_uint4(0u, 0u, 0u, 0u);
    if (g < hi) {
      if constexpr (SRC == kAligned) {
        w.q[u] = __ldg(reinterpret_cast<const uint4*>(qrow) + g);
        if (prow != nullptr) w.p[u] = __ldg(reinterpret_cast<const uint4*>(prow) + g);
      } else {
        w.q[u] = load_raw(qrow, g, V, false);
        if (prow != nullptr) w.p[u] = load_raw(prow, g, V, false);
      }
    }
  }
}

__device__ __forceinline__ double warp_inclusive_scan(double x, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  return x;
}

// Two independent scans interleaved (one chain's latency instead of two).
__device__ __forceinline__ void warp_inclusive_scan2(double& x, double& y, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double a = __shfl_up_sync(0xffffffffu, x, o);
    const double c = __shfl_up_sync(0xffffffffu, y, o);
    if (lane >= o) {
      x += a;
      y += c;
    }
  }
}

// Exclusive prefix from an inclusive one.
__device__ __forceinline__ double exclusive_of(double incl, int lane) {
  const double e = __shfl_up_sync(0xffffffffu, incl, 1);
  return lane == 0 ? 0.0 : e;
}

// The lanes hold consecutive non-negative parts `v` of a sequence (lane order) that starts at
// `base`, with their inclusive and exclusive prefix sums. Returns the lane of the part where the
// running sum first exceeds t (among parts > 0); when rounding left t at or past the end, the last
// lane with a part > 0; -1 when all are 0. `before` receives base + the sum of the parts before it.
__device__ __forceinline__ int lane_crossing(double v, double incl, double excl, double base, double t,
                                             double& before) {
  const u32 hit = __ballot_sync(0xffffffffu, v > 0.0 && base + incl > t);
  const u32 pos = __ballot_sync(0xffffffffu, v > 0.0);
  const int l = hit ? __ffs(hit) - 1 : (pos ? 31 - __clz(pos) : -1);
  before = base + __shfl_sync(0xffffffffu, excl, l < 0 ? 0 : l);
  return l;
}

// A wave's residual sums, ready for the crossing search: per lane and slice u (vectors u*32 + lane)
// the vector sum r, the slice totals, and the inclusive prefix over the lanes of each slice.
template <int U>
struct WaveScan {
  double r[U], tot[U], incl[U], excl[U];
};

template <typename T, int U>
__device__ __forceinline__ void scan_wave(const Wave<U>& w, int base, bool use_p, int onehot, int lane,
                                          WaveScan<U>& s) {
  u32 unchecked = 0;  // scanned rows were checked while streamed
#pragma unroll
  for (int u = 0; u < U; ++u) {
    s.r[u] = vector_residual<T>(w.q[u], w.p[u], (u32)(base + u * 32 + lane), use_p, onehot, unchecked);
    s.incl[u] = s.r[u];
  }
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const double y = __shfl_up_sync(0xffffffffu, s.incl[u], o);
      if (lane >= o) s.incl[u] += y;
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    s.tot[u] = __shfl_sync(0xffffffffu, s.incl[u], 31);
    s.excl[u] = exclusive_of(s.incl[u], lane);
  }
}

// The element of lane l's vector g where base + cumsum (exact, in double) first exceeds t; the
// vector's last positive element when rounding says otherwise (-1 if it has none). Lane l only.
template <typename T>
__device__ __forceinline__ int pick_in_vector(const uint4& qw, const uint4& pw, u32 g, double before,
                                              double t, bool use_p, int onehot) {
  constexpr int N = VecTraits<T>::N;
  float qv[N], pv[N];
  VecTraits<T>::unpack(qw, qv);
  VecTraits<T>::unpack(pw, pv);
  double a = before;
  int hit = -1, last = -1;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const double r = residual_value(qv[e], pv[e], use_p, g * N + e, onehot);
    a += r;
    if (r > 0.0) {
      last = (int)(g * N + e);
      if (hit < 0 && a > t) hit = (int)(g * N + e);
    }
  }
  return hit >= 0 ? hit : last;
}

// One wave (vectors base + u*32 + lane) with its scan: if `run` + its cumulative residual crosses
// t, returns the element; otherwise adds the wave's sum to `run`, records its last positive
// element in `last` (unchanged when it has none) and returns -1.
template <typename T, int U>
__device__ __forceinline__ int pick_in_wave(const Wave<U>& w, const WaveScan<U>& s, int base, bool use_p,
                                            int onehot, double t, double& run, int& last, int lane) {
  int us = -1, ulast = -1;
  double base_us = run;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (s.tot[u] > 0.0) {
      ulast = u;
      if (us < 0 && run + s.tot[u] > t) {
        us = u;
        base_us = run;
      }
    }
    if (us < 0) run += s.tot[u];
  }
  const int pick = us >= 0 ? us : ulast;
  if (pick < 0) return -1;
  // slice `pick`, selected without dynamic register indexing
  double rs = 0.0, is = 0.0, es = 0.0;
  uint4 qs = make_uint4(0u, 0u, 0u, 0u), ps = qs;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (u == pick) {
      rs = s.r[u];
      is = s.incl[u];
      es = s.excl[u];
      qs = w.q[u];
      ps = w.p[u];
    }
  }
  // no crossing in this wave: its last positive element (t = +inf picks the last positive lane)
  const double tt = us >= 0 ? t : __longlong_as_double(0x7ff0000000000000LL);
  double before;
  const int l = lane_crossing(rs, is, es, us >= 0 ? base_us : 0.0, tt, before);
  int token = 0;
  if (lane == l) token = pick_in_vector<T>(qs, ps, (u32)(base + pick * 32 + lane), before, tt, use_p, onehot);
  token = __shfl_sync(0xffffffffu, token, l < 0 ? 0 : l);
  if (us >= 0) return token;
  last = token;
  return -1;
}

// Stream one warp segment [lo, hi) (vector indices) of a row, the next wave's loads issued before
// the current one is reduced. Returns the segment sum (every lane); lane j's `group_sum` is the sum
// of waves [j*G, (j+1)*G); `cur` is left holding the last wave. A segment holding a bad q value
// returns NaN, one holding a bad p value (and no bad q value) -inf: added up across the cluster,
// NaN wins over -inf and both over any sum, so the total tells the status (target before draft).
template <typename T, int U, int SRC>
__device__ __forceinline__ double stream_segment(const T* qrow, const T* prow, int onehot, int lo, int hi,
                                                 i64 V, int lane, int nwaves, int G, Wave<U>& cur,
                                                 double& group_sum) {
  const bool use_p = prow != nullptr;
  double seg = 0.0, acc = 0.0;
  u32 bad = 0;
  group_sum = 0.0;
  if (nwaves > 0) load_wave<T, U, SRC>(cur, qrow, prow, lo, hi, V, lane);
  int in_group = 0, group = 0;
  for (int i = 0; i < nwaves; ++i) {
    const int base = lo + i * 32 * U;
    const bool more = i + 1 < nwaves;
    Wave<U> nxt;
    if (more) load_wave<T, U, SRC>(nxt, qrow, prow, base + 32 * U, hi, V, lane);
#pragma unroll
    for (int u = 0; u < U; ++u)
      acc += vector_residual<T, true>(cur.q[u], cur.p[u], (u32)(base + u * 32 + lane), use_p, onehot, bad);
    if (++in_group == G || !more) {
      const double gs = warp_sum(acc);
      if (lane == group) group_sum = gs;
      seg += gs;
      acc = 0.0;
      in_group = 0;
      ++group;
    }
    if (more) cur = nxt;
  }
  bad = warp_or(bad);
  if (bad & 1u) return __longlong_as_double(0x7ff8000000000000LL);  // NaN
  if (bad & 2u) return __longlong_as_double((long long)0xfff0000000000000ULL);  // -inf
  return seg;
}

// Shared memory of the random-mode body.
template <int CL>
struct RandomSmem {
  double seg_local[2][kMaxWarpsRandom];  // [attempt][warp]: this block's segment sums
  double chunk_all[2][CL];               // [attempt][block rank]: every block's chunk sum
  u64 bar[2];                            // [attempt]: the exchange's mbarrier (async exchange)
};

// Outputs of request b known once the drafts are decided, written by one warp: the accepted ids,
// -1 after the last token, and the count. The last token itself (position kstar) comes later.
__device__ __forceinline__ void write_decided_outputs(const Params& P, i64 b, int kstar, i64 id_lane,
                                                      int lane) {
  const int K = P.K;
  const i64 base = b * ((i64)K + 1);
  for (int k0 = 0; k0 <= K; k0 += 32) {
    const int k = k0 + lane;
    if (k > K) break;
    if (k == kstar) continue;
    // accepted ids are in range
    P.out_tokens[base + k] = k > kstar ? -1 : (k0 == 0 ? id_lane : load_id(P, b, k));
  }
  if (lane == 0) {
    P.out_num[b] = kstar + 1;
    P.out_status[b] = 0;
  }
}

// Outputs of a flagged request, written by one warp: all -1, 0 emitted, the status bits. In random
// mode the same warp may have written write_decided_outputs before: each slot is written by the
// same lane both times, so program order makes these writes the final ones.
__device__ __forceinline__ void write_flagged_outputs(const Params& P, i64 b, u32 flags, int lane) {
  const i64 base = b * ((i64)P.K + 1);
  for (int k = lane; k <= P.K; k += 32) P.out_tokens[base + k] = -1;
  if (lane == 0) {
    P.out_num[b] = 0;
    P.out_status[b] = (int)flags;
  }
}

template <typename T, int CL, int SRC>
__device__ __forceinline__ void verify_random(const Params& P, RandomSmem<CL>& sm) {
  constexpr bool kAsync = CL > 1 && SPECSAMPLE_ASYNC_EXCHANGE;
  constexpr int U = RandomShape<CL>::U;
  constexpr int N = VecTraits<T>::N;
  if constexpr (kAsync) {
    if (threadIdx.x == 0) {
      mbar_init(&sm.bar[0], 1);
      mbar_init(&sm.bar[1], 1);
      mbar_fence_init();
    }
  }
  cluster_arrive_relaxed<CL>();  // paired with the wait before the first remote store
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const u32 rank = cluster_rank<CL>();
  const i64 b = (i64)cluster_id<CL>();
  const int K = P.K;
  const i64 V = P.V;
  const i64 K1 = (i64)K + 1;
  const T* q = reinterpret_cast<const T*>(P.q);
  const T* p = reinterpret_cast<const T*>(P.p);
  const int NG = (int)((V + N - 1) / N);  // vectors per row (V < 2^31)
  u64 seed = P.seed, offset = P.offset;
  if (P.captured) {
    seed = (u64)*P.seed_ptr;
    offset = (u64)*P.offset_ptr + P.offset_intragraph;
  }

  // ---- 1. decisions, 32 drafts per step, in every warp -----------------------------------------
  // Every id, drafted entry and explicit uniform is checked (not only those before the first
  // rejection): the status must not depend on where the walk stops.
  int kstar = K;
  i64 x_star = -1, id_lane = -1;  // rejected id (-1: out of range); lane k's id for k < 32
  float u_final = 0.0f;
  u32 flags = 0;
  for (int k0 = 0; k0 <= K; k0 += 32) {
    const int k = k0 + lane;
    u32 f = 0;
    i64 x = -1;
    if (k < K) {
      x = load_id(P, b, k);
      if (x < 0 || x >= V) {  // out of range: flagged, never dereferenced
        x = -1;
        f |= kBadDraftId;
      }
    }
    float qx = 0.0f, px = 1.0f;  // p = 1 without draft probabilities
    if (x >= 0) {
      qx = VecTraits<T>::load1(q + (b * K1 + k) * V + x);
      if (bad_prob(qx)) f |= kBadTarget;
      if (p != nullptr) {
        px = VecTraits<T>::load1(p + (b * (i64)K + k) * V + x);
        if (bad_prob(px)) f |= kBadDraft;
      }
    }
    float u = 0.0f;
    if (k <= K) {
      if (P.uniforms) {
        u = __ldg(P.uniforms + b * K1 + k);
        if (!(u >= 0.0f && u < 1.0f)) f |= kBadUniform;
      } else {
        u = philox_uniform(seed, offset, (u64)b, (u64)k);
      }
    }
    const bool reject = k < K && !(x >= 0 && (double)u * (double)px < (double)qx);  // exact in double
    if (k0 == 0) id_lane = x;
    if (K - k0 < 32) u_final = __shfl_sync(0xffffffffu, u, K - k0);  // the last pass of the loop
    flags |= warp_or(f);
    const u32 mask = __ballot_sync(0xffffffffu, reject);
    if (mask && kstar == K) {
      const int l = __ffs(mask) - 1;
      kstar = k0 + l;
      x_star = __shfl_sync(0xffffffffu, x, l);
    }
  }
  if (rank == 0 && warp == 0) write_decided_outputs(P, b, kstar, id_lane, lane);
  const i64 last_slot = b * K1 + kstar;  // out_tokens index of the last token

  // ---- 2. stream this warp's segment of the row --------------------------------------------------
  const T* qrow = q + (b * K1 + kstar) * V;
  const T* prow = (p != nullptr && kstar < K) ? p + (b * (i64)K + kstar) * V : nullptr;
  int onehot = (p == nullptr && kstar < K) ? (int)x_star : -1;
  i64 c_lo, c_hi, w_lo64, w_hi64;
  split_range(0, NG, CL, (int)rank, c_lo, c_hi);
  split_range(c_lo, c_hi, nwarps, warp, w_lo64, w_hi64);
  // A request flagged already reads no row: its segments are empty, its total 0 (every warp of the
  // cluster sees the same flags, so the exchange below still completes). Branching out here
  // instead costs the streaming loop registers (spills under the 64-register cap).
  const int w_lo = (int)w_lo64, w_hi = flags ? w_lo : (int)w_hi64;
  const int nwaves = (w_hi - w_lo + 32 * U - 1) / (32 * U);
  const int G = (nwaves + 31) / 32;  // waves per recorded group (at most 32 groups)
  Wave<U> cur;
  WaveScan<U> last_scan;  // the segment's last wave, scanned while the exchange completes
  double group_sum = 0.0, group_incl = 0.0, group_excl = 0.0, total = 0.0;
  double chunk = 0.0, chunk_incl = 0.0, seg_v = 0.0, seg_incl = 0.0;
  const bool spin = P.B <= 4;  // tiny batch: poll the exchange's mbarrier
  int att = 0;
  for (;; ++att) {
    const double seg =
        stream_segment<T, U, SRC>(qrow, prow, onehot, w_lo, w_hi, V, lane, nwaves, G, cur, group_sum);
    // every block of the cluster has started (its shared memory and mbarriers exist)
    // this block's chunk sum = its warps' segment sums in order, pushed by warp 0 to every block
    if (lane == 0) sm.seg_local[att][warp] = seg;
    __syncthreads();
    if (att == 0) cluster_wait<CL>();
    if (warp == 0) {
      double mine = 0.0;
      for (int w = 0; w < nwarps; ++w) mine += sm.seg_local[att][w];
      if constexpr (kAsync) {
        if (lane == 0) mbar_arrive_expect_tx(&sm.bar[att], (u32)(CL * sizeof(double)));
        if (lane < CL) st_async_peer_f64(&sm.chunk_all[att][rank], &sm.bar[att], (u32)lane, mine);
      } else {
        if (lane < CL) st_peer_f64<CL>(&sm.chunk_all[att][rank], (u32)lane, mine);
      }
    }
    // while the sums travel: this warp's own prefix sums (wave groups; with short segments, also
    // its last wave, kept in registers)
    group_incl = warp_inclusive_scan(group_sum, lane);
    group_excl = exclusive_of(group_incl, lane);
    if constexpr (RandomShape<CL>::kPrecompute) {
      if (nwaves > 0) scan_wave<T, U>(cur, w_lo + (nwaves - 1) * 32 * U, prow != nullptr, onehot, lane, last_scan);
    }
    if constexpr (kAsync) {
      mbar_wait_parity(&sm.bar[att], 0, spin);
    } else {
      cluster_barrier<CL>();
    }
    // ---- 3. every warp: the chunk sums (lane c: block c) and this block's segment sums (lane w),
    // with their prefix sums (two scans, interleaved); the total
    chunk = lane < CL ? sm.chunk_all[att][lane] : 0.0;
    seg_v = lane < nwarps ? sm.seg_local[att][lane] : 0.0;
    chunk_incl = chunk;
    seg_incl = seg_v;
    warp_inclusive_scan2(chunk_incl, seg_incl, lane);
    total = __shfl_sync(0xffffffffu, chunk_incl, 31);
    // a positive, NaN (bad q) or -inf (bad p) total ends the search; only a zero one falls back
    if (!(total == 0.0) || (prow == nullptr && onehot < 0) || att == 1) break;
    // sum(max(0, q - p)) == 0: draw from q itself (the same decision in every warp of the cluster)
    prow = nullptr;
    onehot = -1;
  }
  {
    const u32 row_flags = flags         ? flags
                          : total != total ? kBadTarget
                          : total < 0.0   ? kBadDraft
                          : total > kFloatMaxD ? kRowOverflow
                          : total == 0.0 ? kZeroRow
                                         : 0u;
    if (row_flags) {  // the same in every warp of the cluster
      if (rank == 0 && warp == 0) write_flagged_outputs(P, b, row_flags, lane);
      return;
    }
  }
  const double t = (double)u_final * total;
  double before_chunk, before_seg, before_group;
  if (lane_crossing(chunk, chunk_incl, exclusive_of(chunk_incl, lane), 0.0, t, before_chunk) != (int)rank) {
    return;
  }
  if (lane_crossing(seg_v, seg_incl, exclusive_of(seg_incl, lane), before_chunk, t, before_seg) != warp) {
    return;
  }
  // ---- 4. the owning warp: the wave group, then the element --------------------------------------
  const int j = lane_crossing(group_sum, group_incl, group_excl, before_seg, t, before_group);
  const bool use_p = prow != nullptr;
  double run = before_group;
  int last = -1, token = -1;
  if (G == 1 && j == nwaves - 1) {
    if constexpr (!RandomShape<CL>::kPrecompute) scan_wave<T, U>(cur, w_lo + j * 32 * U, use_p, onehot, lane, last_scan);
    token = pick_in_wave<T, U>(cur, last_scan, w_lo + j * 32 * U, use_p, onehot, t, run, last, lane);
  } else {
    const int wv1 = (j + 1) * G < nwaves ? (j + 1) * G : nwaves;
    for (int i = j * G; i < wv1 && token < 0; ++i) {
      Wave<U> w;
      WaveScan<U> sc;
      load_wave<T, U, SRC>(w, qrow, prow, w_lo + i * 32 * U, w_hi, V, lane);
      scan_wave<T, U>(w, w_lo + i * 32 * U, use_p, onehot, lane, sc);
      token = pick_in_wave<T, U>(w, sc, w_lo + i * 32 * U, use_p, onehot, t, run, last, lane);
    }
  }
  if (token < 0) token = last >= 0 ? last : 0;
  if (lane == 0) P.out_tokens[last_slot] = token;
}

}  // namespace specsample
