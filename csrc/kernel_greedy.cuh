// specsample verify kernel: greedy mode, one cluster per request.
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

#include "kernel_common.cuh"
#include "kernel_cluster.cuh"

namespace specsample {

// Greedy at small batch: the first step examines as many rows as fit this many bytes per block
// (then 2x, 4x, ... that many). Bytes are cheap there and each step costs a round trip through
// the cluster, so a long accepted run over a short vocabulary takes one step instead of log2(K).
#ifndef SPECSAMPLE_GREEDY_STEP_BYTES
#define SPECSAMPLE_GREEDY_STEP_BYTES 16384
#endif
#ifndef SPECSAMPLE_GREEDY_STEP_GROWTH
#define SPECSAMPLE_GREEDY_STEP_GROWTH 2
#endif
// Greedy blocks of 512 threads per SM the register budget must allow in the large-batch kernels
// (clusters of 1-8; 2: 64 registers, twice the requests in flight of an uncapped kernel).
#ifndef SPECSAMPLE_GREEDY_MIN_BLOCKS
#define SPECSAMPLE_GREEDY_MIN_BLOCKS 2
#endif


// Greedy key: larger probability wins, then the smaller index. Probabilities are >= 0, so their
// float bits order like their values (+0.0 is canonicalized from -0.0). Padding gets key 0. A row
// holding a bad value gets kBadRowKey, above every real key, so it survives every max-reduction.
__device__ __forceinline__ u64 argmax_key(float v, i64 j) {
  return ((u64)__float_as_uint(v + 0.0f) << 32) | (u64)(0xFFFFFFFFu - (u32)j);
}
constexpr u64 kBadRowKey = ~0ull;

struct GreedySmem {
  u64 row_key[kMaxStepRows];          // this block's argmax key of each row of the step
  u64 peer_key[2][kMaxStepRows][16];  // [step parity][row][block]: every block's key, pushed
  u64 bar[2];                         // [step parity]: the exchange's mbarrier (clusters)
  i64 xhat[kMaxK];                    // draft ids (or -1 when out of range)
};

// ---------------------------------------------------------------------------------------------
// Greedy: argmax of nr <= NR consecutive rows (row0, row0 + V, ...) over one warp segment
// [lo, hi); the warp's result for row i is atomically max-ed into keys[i] (shared memory).
// ---------------------------------------------------------------------------------------------
template <typename T, int NR, int U, bool ALIGNED>
__device__ __forceinline__ void greedy_group(const T* row0, i64 V, int lo, int hi, int lane, int nr,
                                             u64* keys) {
  constexpr int N = VecTraits<T>::N;
  float bestv[NR];
  int besti[NR];
  bool bad[NR];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    bestv[i] = -1.0f;
    besti[i] = 0;
    bad[i] = false;
  }
  // 32-bit vector indices: a row has fewer than 2^31 vectors (token ids fit 32 bits)
  for (int base = lo + lane; base < hi + lane; base += 32 * U) {
    uint4 raw[NR][U];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = base + u * 32;
        raw[i][u] = make_uint4(0u, 0u, 0u, 0u);
        if (g < hi && i < nr) raw[i][u] = load_raw(row0 + i * V, (i64)g, V, ALIGNED);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = base + u * 32;
      if (g < hi) {
        const int j0 = g * N;
#pragma unroll
        for (int i = 0; i < NR; ++i) {
          if (NR > 1 && i >= nr) break;
          float v[N];
          VecTraits<T>::unpack(raw[i][u], v);
          // a lane visits its indices in increasing order: strict '>' keeps the smallest index of
          // a tie. Padding past V reads +0.0 at larger indices and never beats a real element.
#pragma unroll
          for (int e = 0; e < N; ++e) {
            bad[i] |= bad_prob(v[e]);
            if (v[e] > bestv[i]) {
              bestv[i] = v[e];
              besti[i] = j0 + e;
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    const u64 key = bad[i] ? kBadRowKey : (bestv[i] >= 0.0f ? argmax_key(bestv[i], besti[i]) : 0ull);
    const u64 m = warp_max_u64(key);
    if (lane == 0 && m != 0 && i < nr) {
      atomicMax(reinterpret_cast<unsigned long long*>(&keys[i]), (unsigned long long)m);
    }
  }
}

// Greedy launch shape. Clusters of 16 blocks serve small batches (latency: rows of a step are
// streamed up to 8 at a time, no register cap); smaller clusters serve larger batches, one row per
// step, where a 64-register cap (two 512-thread or four 256-thread blocks per SM) keeps more
// requests in flight: there, rows are streamed one at a time.
#ifndef SPECSAMPLE_GREEDY_GROUP_MIN_CL
#define SPECSAMPLE_GREEDY_GROUP_MIN_CL 16
#endif
template <int CL>
struct GreedyShape {
  static constexpr bool kWide = CL >= SPECSAMPLE_GREEDY_GROUP_MIN_CL;
  static constexpr int kGroup = kWide ? 8 : 1;  // rows streamed together (loads in flight)
  static constexpr int kMinBlocks = kWide ? 1 : SPECSAMPLE_GREEDY_MIN_BLOCKS;
};

// Greedy: nr <= G consecutive rows, 8 vectors per lane in flight for 1, 2 or up to 4 rows and
// one per row above that (half as many when rows are not all 16-byte aligned: the element-wise
// loads need more registers).
template <typename T, bool ALIGNED, int G>
__device__ __forceinline__ void greedy_rows(const T* row0, i64 V, int lo, int hi, int lane, int nr,
                                            u64* keys) {
  constexpr int A = ALIGNED ? 2 : 1;
  if (G == 1 || nr == 1) {
    greedy_group<T, 1, 4 * A, ALIGNED>(row0, V, lo, hi, lane, 1, keys);
  } else if (nr == 2) {
    greedy_group<T, 2, 2 * A, ALIGNED>(row0, V, lo, hi, lane, nr, keys);
  } else if (nr <= 4) {
    greedy_group<T, 4, A, ALIGNED>(row0, V, lo, hi, lane, nr, keys);
  } else {
    greedy_group<T, (G > 4 ? G : 4), 1, ALIGNED>(row0, V, lo, hi, lane, nr, keys);
  }
}

// Greedy mode: the kernel body. ALIGNED: every row of q starts on 16 bytes (chosen by the host).
template <typename T, int CL, bool ALIGNED>
__device__ __forceinline__ void verify_greedy(const Params& P) {
  constexpr int N = VecTraits<T>::N;
  __shared__ GreedySmem s;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  if constexpr (CL > 1) {
    if (tid == 0) {
      mbar_init(&s.bar[0], 1);
      mbar_init(&s.bar[1], 1);
      mbar_fence_init();
    }
  }
  cluster_arrive_relaxed<CL>();  // paired with the wait before the first remote store
  const u32 rank = cluster_rank<CL>();
  const i64 b = (i64)cluster_id<CL>();
  const int K = P.K;
  const i64 V = P.V;
  const T* q = reinterpret_cast<const T*>(P.q);  // greedy mode never reads p
  const i64 K1 = (i64)K + 1;
  const i64 NG = (V + N - 1) / N;  // vectors per row
  const bool spin = P.B <= 4;  // tiny batch: poll the exchange's mbarrier

  // This block's chunk of a row, and this warp's segment of the chunk (vector indices).
  i64 c_lo, c_hi, w_lo, w_hi;
  split_range(0, NG, CL, (int)rank, c_lo, c_hi);
  split_range(c_lo, c_hi, nwarps, warp, w_lo, w_hi);

  // The draft ids are only compared after the first step's rows, which do not depend on them:
  // load them now, store them (validated: out of range -> -1, a mismatch) once the rows are in.
  const i64 my_id = tid < K ? load_valid_id(P.ids, P.ids64, K, V, b, tid) : -1;

  if (tid < kMaxStepRows) s.row_key[tid] = 0;
  __syncthreads();
  const int R = P.rows_per_step < 1 ? 1 : (P.rows_per_step > kMaxStepRows ? kMaxStepRows : P.rows_per_step);
  int kstar = K;
  i64 final_token = 0;
  u32 flags = 0;
  // Steps grow geometrically (n0, 2 n0, 4 n0, ... rows, capped at R): a mismatch at row 0 reads
  // n0 rows, a long accepted run needs only ~log2(K / n0) cluster round trips. n0 is as many rows
  // as fit SPECSAMPLE_GREEDY_STEP_BYTES per block (at least 1). R = 1: strictly row by row.
  const i64 row_bytes_per_block = (V * (i64)sizeof(T) + CL - 1) / CL;
  const i64 fit = (i64)SPECSAMPLE_GREEDY_STEP_BYTES / (row_bytes_per_block > 0 ? row_bytes_per_block : 1);
  int step = fit < 1 ? 1 : (fit > R ? R : (int)fit);
  for (int s0 = 0, s1 = 0, si = 0; s0 <= K;
       s0 = s1, step = step < R ? SPECSAMPLE_GREEDY_STEP_GROWTH * step : R, ++si) {
    const int rows_now = step < R ? step : R;
    s1 = (s0 + rows_now < K + 1) ? s0 + rows_now : K + 1;
    const int nrows = s1 - s0;
    const int buf = si & 1;
    // stream the rows of the step, G at a time (their loads in flight together)
    constexpr int G = GreedyShape<CL>::kGroup;
    for (int r0 = s0; r0 < s1; r0 += G) {
      const int nr = (s1 - r0 < G) ? s1 - r0 : G;
      const T* row0 = q + (b * K1 + r0) * V;
      greedy_rows<T, ALIGNED, G>(row0, V, (int)w_lo, (int)w_hi, lane, nr, &s.row_key[r0 - s0]);
    }
    if (si == 0) {
      if (tid < K) s.xhat[tid] = my_id;
      for (int k = tid + blockDim.x; k < K; k += blockDim.x) s.xhat[k] = load_valid_id(P.ids, P.ids64, K, V, b, k);
    }
    __syncthreads();  // this block's keys of the step (and, after the first, the ids) are in
    if (si == 0) cluster_wait<CL>();  // every block of the cluster has started
    // warp 0 sends the block's keys to every block of the cluster (itself included) and clears
    // them for the next step
    if (warp == 0) {
      if constexpr (CL > 1) {
        if (lane == 0) mbar_arrive_expect_tx(&s.bar[buf], (u32)(CL * nrows * sizeof(u64)));
      }
      for (int i = lane; i < nrows * CL; i += 32) {
        const int r = i / CL, c = i % CL;
        const u64 key = s.row_key[r];
        if constexpr (CL > 1) {
          st_async_peer_u64(&s.peer_key[buf][r][rank], &s.bar[buf], (u32)c, key);
        } else {
          s.peer_key[buf][r][0] = key;
        }
      }
      __syncwarp();
      if (lane < kMaxStepRows) s.row_key[lane] = 0;
    }
    if constexpr (CL > 1) mbar_wait_parity(&s.bar[buf], (u32)((si >> 1) & 1), spin);
    __syncthreads();  // the keys have arrived; the cleared row keys are seen by every warp
    // an id out of range flags the request before any row counts (every warp sees the same ids)
    if (si == 0) {
      bool id_bad = false;
      for (int k = lane; k < K; k += 32) id_bad |= s.xhat[k] < 0;
      if (__any_sync(0xffffffffu, id_bad)) {
        flags = kBadDraftId;
        break;
      }
    }
    // every warp decides the step: lane r takes row s0 + r's argmax over the blocks; a row with a
    // bad value ends the walk (flagged)
    u64 m = 0;
    bool stop_here = false;
    if (lane < nrows) {
      for (int c = 0; c < CL; ++c) {
        const u64 y = s.peer_key[buf][lane][c];
        m = y > m ? y : m;
      }
      const i64 a = m == 0 ? 0 : (i64)(0xFFFFFFFFu - (u32)(m & 0xFFFFFFFFu));
      const int k = s0 + lane;
      stop_here = k == K || m == kBadRowKey || s.xhat[k] != a;
    }
    const u32 stops = __ballot_sync(0xffffffffu, stop_here);
    if (stops) {
      const int l = __ffs(stops) - 1;
      const u64 ml = __shfl_sync(0xffffffffu, m, l);
      kstar = s0 + l;
      final_token = ml == 0 ? 0 : (i64)(0xFFFFFFFFu - (u32)(ml & 0xFFFFFFFFu));
      if (ml == kBadRowKey) flags = kBadTarget;
      break;
    }
  }
  if (rank != 0) return;
  const i64 out_base = b * K1;
  for (int k = tid; k <= K; k += blockDim.x) {
    P.out_tokens[out_base + k] = flags ? -1 : (k < kstar ? s.xhat[k] : (k == kstar ? final_token : -1));
  }
  if (tid == 0) {
    P.out_num[b] = flags ? 0 : kstar + 1;
    P.out_status[b] = (int)flags;
  }
}

}  // namespace specsample
