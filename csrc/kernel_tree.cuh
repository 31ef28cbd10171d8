// specsample tree kernel: tree verification (Backend.verify_tree), greedy and the random
// target-only rule (draft_probs=None), one thread-block cluster per request, one launch per call.
// Part of the kernel sources that verify_kernel.cuh assembles; it needs only kernel_common.cuh,
// kernel_philox.cuh and kernel_cluster.cuh, so the cupy backend compiles it on its own with NVRTC
// (no system header).
//
// Semantics: docs/contract-trees.md; specsample.reference_tree is the float64 definition. Nodes
// 0..N-1 are in topological order, parents[b, i] is -1 (child of the root) or an earlier node;
// position 0 is the root, position i+1 is node i; target row a of request b is q[b, a, :].
//
// One cluster of CL blocks of kTreeThreads threads per request (CL = 1: one block; the host picks
// CL from the batch size). Every block repeats steps 1-3 (a few hundred bytes, from L2 after the
// first block), so no exchange stands before the first row load; the rows read in full are split
// between the blocks, whose sums (random) or argmax keys (greedy) travel through distributed
// shared memory, one cluster barrier per exchange:
//   1. Structure, before any probability is read: num_nodes in 0..N and every real node's parent
//      -1 or an earlier node (BAD_TREE); when max_depth < num_nodes every real node climbs to the
//      root, at most max_depth + 1 steps (BAD_TREE when deeper); under the rules that need
//      distinct siblings, two real siblings with one token (REPEATED_SIBLING). One thread per node,
//      each verdict OR-ed over the block.
//      The children of every position go into shared memory as first-child / next-sibling lists
//      (the repeated-sibling check walks them).
//   2. Values read up front: the real nodes' ids (BAD_DRAFT_ID); random mode also the drafted
//      entries q[b, parent position, token] (BAD_TARGET_VALUE) and the coins of the real nodes
//      and the last coin (BAD_UNIFORM when explicit).
//   3. The walk. Random target-only: thread 0 walks from the root on shared memory alone (the
//      first child's coin against the raw cumulative entries of the children, in double, child by
//      child: the reference's additions in its order, so the decisions match it bit for bit) and
//      stops at a leaf or where no child is accepted; then the cluster reads that one row.
//      Greedy: per position the cluster's argmax of the row (packed (value bits, ~index) keys:
//      ties to the smallest index), then the first child holding it.
//   4. The last token (random mode): inverse CDF of the stop position's row with its children's
//      tokens set to zero (the row itself when that sums to zero), with the last coin. Pass 1:
//      each warp streams super-waves of G * 32 16-byte vectors (G a multiple of kTreeBatch, so
//      every lane has kTreeBatch loads in flight) and stores one double per super-wave in shared
//      memory (float32 within a vector, double across vectors, as the chain kernel sums); the
//      block's sum goes to every block of the cluster, and the block where u * total is crossed
//      goes on alone. Pass 2: a block scan over its slots finds the super-wave, one warp
//      re-reads it (kTreeBatch loads in flight per lane) and picks the element in double: the
//      first element whose running sum exceeds the threshold, else (rounding) the last positive
//      element at that level, so a zero-probability token is never drawn.
// Status bits as the chain kernel (kernel_common.cuh); a flagged request writes -1 rows, 0 emitted.
// Ids outside [0, V) are never dereferenced; padding nodes are never read.
//
// Random numbers (no explicit uniforms): node i's coin is the i-th uniform of subsequence b,
// philox_uniform(seed, offset, b, i), and the last coin is i = N: the chain kernel's stream, so a
// chain tree draws exactly verify()'s coins. The caller advances the generator by
// 4 * ceil((N+1)/4).
#pragma once

#include "kernel_cluster.cuh"
#include "kernel_common.cuh"
#include "kernel_philox.cuh"

namespace specsample {

constexpr int kTreeThreads = 512;
constexpr int kTreeWarps = kTreeThreads / 32;
constexpr int kMaxTreeNodes = 128;  // N per request (the backends' max_k)
constexpr int kTreeSlots = 1024;    // super-wave sums of one row in shared memory
constexpr int kTreeBatch = 8;       // 16-byte loads in flight per lane in the row passes
constexpr int kTreeNone = 0x7fffffff;
constexpr u32 kTreeBadTree = 64;    // specsample.Status.BAD_TREE
constexpr u32 kTreeRepeated = 128;  // specsample.Status.REPEATED_SIBLING
constexpr u64 kTreeBadKey = ~0ull;  // greedy: a row with a bad value (above every real key)

// v -> `local`'s twin in block `rank` of the cluster (the block's own when CL == 1).
template <int CL>
__device__ __forceinline__ void tree_st_peer_u64(u64* local, u32 rank, u64 v) {
  if constexpr (CL == 1) {
    *local = v;
  } else {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
    asm volatile("st.shared::cluster.u64 [%0], %1;" ::"r"(remote), "l"(v) : "memory");
  }
}

struct TreeSmem {
  int par[kMaxTreeNodes];        // parent node (-1: the root), real nodes only
  i64 tok[kMaxTreeNodes];        // token, real nodes only
  float qx[kMaxTreeNodes];       // q[b, parent position, token] (random mode)
  float u[kMaxTreeNodes + 1];    // coins of the real nodes, then u[N]: the last coin
  int first[kMaxTreeNodes + 1];  // first child of each position, -1 if none
  int next[kMaxTreeNodes];       // next sibling of each real node, -1 if none
  int drop[kMaxTreeNodes];       // tokens of the stop position's children, ascending
  int path[kMaxTreeNodes];       // accepted nodes
  double slots[kTreeSlots];      // pass 1: one sum per super-wave (this block's range)
  double ctot[2][16];            // clusters: each block's row sum, per pass (NaN: a bad value)
  u64 ckey[2][16];               // clusters: each block's argmax key, per step parity (~0: bad)
  double wsum[kTreeWarps];       // block scan: warp totals
  u64 wkey[kTreeWarps];          // greedy: warp argmax keys
  u32 flags;
  int n, npath, stop, m, sel, last, slot;
  double base, total;
  i64 token;
};

// Greedy key of element j: larger value wins, then the smaller index (-0.0 counts as +0.0).
__device__ __forceinline__ u64 tree_key(float v, i64 j) {
  return ((u64)__float_as_uint(v + 0.0f) << 32) | (u64)(0xFFFFFFFFu - (u32)j);
}

__device__ __forceinline__ double tree_shfl_up(double x, int d) {
  return __shfl_up_sync(0xffffffffu, x, d);
}

// Inclusive scan of x over the warp's lanes.
__device__ __forceinline__ double tree_warp_scan(double x, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const double y = tree_shfl_up(x, d);
    if (lane >= d) x += y;
  }
  return x;
}

// Exclusive scan of x over the block (every thread calls it); returns the prefix, total in *total.
__device__ __forceinline__ double tree_block_scan(TreeSmem& s, double x, double* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const double incl = tree_warp_scan(x, lane);
  if (lane == 31) s.wsum[warp] = incl;
  __syncthreads();
  double before = 0.0, all = 0.0;
#pragma unroll
  for (int w = 0; w < kTreeWarps; ++w) {
    const double t = s.wsum[w];
    if (w < warp) before += t;
    all += t;
  }
  __syncthreads();  // wsum is reused by the next scan
  *total = all;
  return before + incl - x;
}

// The VEC elements of vector g as floats, the tokens in drop[0..m) (ascending) set to zero.
// `dp` is the lane's cursor into drop: it only moves forward, so a lane visiting its vectors in
// increasing order reads each dropped token once.
template <typename T>
__device__ __forceinline__ void tree_unpack_drop(const uint4& w, i64 g, const int* drop, int m,
                                                 int& dp, float* v) {
  constexpr int VEC = VecTraits<T>::N;
  VecTraits<T>::unpack(w, v);
  const i64 j0 = g * VEC;
  while (dp < m && drop[dp] < j0) ++dp;
  for (int k = dp; k < m && drop[k] < j0 + VEC; ++k) {
    const int e = (int)(drop[k] - j0);
#pragma unroll
    for (int i = 0; i < VEC; ++i)
      if (i == e) v[i] = 0.0f;
  }
}

// Waves of 32 vectors per super-wave (slot) of a row of NV vectors: a multiple of kTreeBatch.
__device__ __forceinline__ int tree_waves_per_slot(i64 NV) {
  const i64 waves = (NV + 31) / 32;
  const i64 per = (waves + (i64)kTreeBatch * kTreeSlots - 1) / ((i64)kTreeBatch * kTreeSlots);
  return (int)(per * kTreeBatch);
}

// Pass 1 of the draw: the super-wave sums of row (tokens in drop set to zero) into s.slots[0..NS).
// Returns this thread's verdict on the row's values (true: a NaN, infinite or negative value).
template <typename T, bool ALIGNED>
__device__ bool tree_row_sums(TreeSmem& s, const T* row, i64 V, int m, int G, int s_lo, int s_hi) {
  constexpr int VEC = VecTraits<T>::N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 NV = (V + VEC - 1) / VEC;
  bool bad = false;
  int dp = 0;
  for (int sl = s_lo + warp; sl < s_hi; sl += kTreeWarps) {
    double acc = 0.0;
    for (int k0 = 0; k0 < G; k0 += kTreeBatch) {
      uint4 w[kTreeBatch];
#pragma unroll
      for (int i = 0; i < kTreeBatch; ++i) {
        const i64 g = ((i64)sl * G + k0 + i) * 32 + lane;
        w[i] = g < NV ? load_raw(row, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int i = 0; i < kTreeBatch; ++i) {
        const i64 g = ((i64)sl * G + k0 + i) * 32 + lane;
        float v[VEC];
        VecTraits<T>::unpack(w[i], v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) bad |= bad_prob(v[e]);
        tree_unpack_drop<T>(w[i], g, s.drop, m, dp, v);
        float vs = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) vs += v[e];
        acc += (double)vs;
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) s.slots[sl - s_lo] = acc;
  }
  return bad;
}

// Pass 2 of the draw: the token where thr = u * total is crossed (see the header). Every thread
// calls it; returns the token in every thread.
template <typename T, bool ALIGNED>
__device__ i64 tree_pick(TreeSmem& s, const T* row, i64 V, int m, int G, int s_lo, int s_hi,
                         double base0, double thr) {
  constexpr int VEC = VecTraits<T>::N;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const i64 NV = (V + VEC - 1) / VEC;
  // level 1: contiguous slots per thread, a block scan over the threads
  const int NS = s_hi - s_lo;  // slots of this block, s.slots[0..NS)
  const int per = (NS + kTreeThreads - 1) / kTreeThreads;
  const int lo = tid * per < NS ? tid * per : NS;
  const int hi = lo + per < NS ? lo + per : NS;
  double own = 0.0;
  for (int i = lo; i < hi; ++i) own += s.slots[i];
  if (tid == 0) {
    s.sel = kTreeNone;
    s.last = -1;
  }
  double total;
  const double before = base0 + tree_block_scan(s, own, &total);  // (its barriers order the writes)
  if (own > 0.0) {
    if (before + own > thr) atomicMin(&s.sel, tid);
    atomicMax(&s.last, tid);
  }
  __syncthreads();
  const int owner = s.sel != kTreeNone ? s.sel : s.last;
  if (tid == owner) {  // level 2: the slot
    double run = before, last_base = before;
    int slot = -1, last_slot = lo;
    for (int i = lo; i < hi; ++i) {
      const double x = s.slots[i];
      if (x > 0.0) {
        if (slot < 0 && run + x > thr) {
          slot = i;
          s.base = run;
        }
        last_slot = i;
        last_base = run;
      }
      run += x;
    }
    if (slot < 0) {
      slot = last_slot;
      s.base = last_base;
    }
    s.slot = slot;
  }
  __syncthreads();
  if (owner < 0) return 0;  // the row sums to zero: flagged by the caller, never reached
  if (warp == 0) {  // level 3: the wave and the lane, level 4: the element
    const int slot = s_lo + s.slot;
    double base = s.base;
    i64 token = -1, last_tok = -1;
    for (int k0 = 0; k0 < G && token < 0; k0 += kTreeBatch) {
      uint4 w[kTreeBatch];
#pragma unroll
      for (int i = 0; i < kTreeBatch; ++i) {
        const i64 g = ((i64)slot * G + k0 + i) * 32 + lane;
        w[i] = g < NV ? load_raw(row, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int i = 0; i < kTreeBatch; ++i) {
        if (token >= 0) continue;
        const i64 g = ((i64)slot * G + k0 + i) * 32 + lane;
        float v[VEC];
        int dp = 0;
        tree_unpack_drop<T>(w[i], g, s.drop, m, dp, v);
        float vs = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) vs += v[e];
        const double mine = (double)vs;
        const double incl = tree_warp_scan(mine, lane);
        // the first lane whose running sum crosses, and the last lane holding mass
        const u32 cross = __ballot_sync(0xffffffffu, mine > 0.0 && base + incl > thr);
        const u32 mass = __ballot_sync(0xffffffffu, mine > 0.0);
        const int pick_lane = cross ? __ffs(cross) - 1 : (mass ? 31 - __clz(mass) : -1);
        if (pick_lane >= 0) {
          // the element within the lane's vector, in double
          i64 t = -1, tl = -1;
          double run = base + incl - mine;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const double r = (double)v[e];
            if (r > 0.0) {
              if (t < 0 && run + r > thr) t = g * VEC + e;
              tl = g * VEC + e;
            }
            run += r;
          }
          const i64 chosen = t >= 0 ? t : tl;
          const i64 c = __shfl_sync(0xffffffffu, chosen, pick_lane);
          if (cross) {
            token = c;
          } else {
            last_tok = c;
          }
        }
        base += __shfl_sync(0xffffffffu, incl, 31);
      }
    }
    if (lane == 0) s.token = token >= 0 ? token : (last_tok >= 0 ? last_tok : 0);
  }
  __syncthreads();
  return s.token;
}

// Greedy: this block's argmax key over vectors [g_lo, g_hi) of row (kTreeBadKey for a NaN,
// infinite or negative value), in every thread.
template <typename T, bool ALIGNED>
__device__ u64 tree_row_key(TreeSmem& s, const T* row, i64 V, i64 g_lo, i64 g_hi) {
  constexpr int VEC = VecTraits<T>::N;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  u64 best = 0;
  bool rbad = false;
  for (i64 g0 = g_lo; g0 < g_hi; g0 += (i64)kTreeThreads * kTreeBatch) {
    uint4 w[kTreeBatch];
#pragma unroll
    for (int i = 0; i < kTreeBatch; ++i) {
      const i64 g = g0 + (i64)i * kTreeThreads + tid;
      w[i] = g < g_hi ? load_raw(row, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < kTreeBatch; ++i) {
      const i64 g = g0 + (i64)i * kTreeThreads + tid;
      float v[VEC];
      VecTraits<T>::unpack(w[i], v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const i64 j = g * VEC + e;
        if (g < g_hi && j < V) {
          rbad |= bad_prob(v[e]);
          const u64 key = tree_key(v[e], j);
          best = key > best ? key : best;
        }
      }
    }
  }
  best = warp_max_u64(rbad ? kTreeBadKey : best);
  if (lane == 0) s.wkey[warp] = best;
  __syncthreads();
  u64 m = 0;
#pragma unroll
  for (int w = 0; w < kTreeWarps; ++w) m = s.wkey[w] > m ? s.wkey[w] : m;
  __syncthreads();  // wkey is reused by the next row
  return m;
}

// The whole request (one block). Parameters: see SPECSAMPLE_TREE_PARAMS in verify_kernel.cuh.
template <typename T, int CL, bool ALIGNED>
__device__ void verify_tree_block(TreeSmem& s, const void* ids, int ids64, const i64* parents,
                                  const i64* num_nodes, const T* q, const float* uniforms,
                                  i64* out_tokens, i64* out_nodes, i64* out_num, int* out_status,
                                  i64 V, int N, int D, int greedy, int distinct, u64 seed,
                                  u64 offset, const i64* seed_ptr, const i64* offset_ptr,
                                  u64 offset_intragraph, int captured) {
  const int tid = threadIdx.x;
  const i64 b = (i64)cluster_id<CL>();
  const u32 rank = cluster_rank<CL>();
  const i64 N1 = (i64)N + 1;
  // every block of the cluster has started before any writes into its shared memory; the blocks
  // repeat steps 1-3 (the same reads, from L2) and split each row between them
  cluster_barrier<CL>();

  // ---- 1. structure ----------------------------------------------------------------------------
  if (tid == 0) {
    const i64 n64 = __ldg(num_nodes + b);
    s.n = (n64 < 0 || n64 > N) ? -1 : (int)n64;
    s.flags = 0;
  }
  __syncthreads();
  const int n_raw = s.n;
  const int n = n_raw < 0 ? 0 : n_raw;
  bool bad = false;
  for (int i = tid; i < n; i += kTreeThreads) {
    const i64 pi = __ldg(parents + b * N + i);
    bad |= pi < -1 || pi >= i;
    s.par[i] = (pi < -1 || pi >= i) ? -1 : (int)pi;
    s.tok[i] = load_id(ids, ids64, N, b, i);
  }
  int tree_bad = __syncthreads_or(bad ? 1 : 0) || n_raw < 0;
  if (!tree_bad && D < n) {  // depths: each node climbs at most D + 1 steps
    bad = false;
    for (int i = tid; i < n; i += kTreeThreads) {
      int d = 0;
      for (int j = i; j >= 0 && d <= D; j = s.par[j]) ++d;
      bad |= d > D;
    }
    tree_bad = __syncthreads_or(bad ? 1 : 0);
  }
  u32 flags = tree_bad ? kTreeBadTree : 0u;
  if (!tree_bad) {  // the children lists: first child of each position, next sibling of each node
    for (int i = tid; i <= n; i += kTreeThreads) s.first[i] = kTreeNone;
    __syncthreads();
    for (int i = tid; i < n; i += kTreeThreads) {
      const int pi = s.par[i];
      atomicMin(&s.first[pi + 1], i);
      int nx = -1;
      for (int j = i + 1; j < n; ++j) {
        if (s.par[j] == pi) {
          nx = j;
          break;
        }
      }
      s.next[i] = nx;
    }
    __syncthreads();
    for (int i = tid; i <= n; i += kTreeThreads) {
      if (s.first[i] == kTreeNone) s.first[i] = -1;
    }
    __syncthreads();
  }
  if (!tree_bad && distinct) {  // an earlier sibling with the same token
    bad = false;
    for (int i = tid; i < n; i += kTreeThreads) {
      for (int c = s.first[s.par[i] + 1]; c != i; c = s.next[c]) bad |= s.tok[c] == s.tok[i];
    }
    if (__syncthreads_or(bad ? 1 : 0)) flags = kTreeRepeated;
  }

  // ---- 2. values read up front -----------------------------------------------------------------
  if (flags == 0) {
    u64 sd = seed, off = offset;
    if (!greedy && uniforms == nullptr && captured) {
      sd = (u64)*seed_ptr;
      off = (u64)*offset_ptr + offset_intragraph;
    }
    u32 f = 0;
    for (int i = tid; i <= N; i += kTreeThreads) {
      if (i < n) {
        const i64 x = s.tok[i];
        if (x < 0 || x >= V) {
          f |= kBadDraftId;
        } else if (!greedy) {
          const float qx = VecTraits<T>::load1(q + (b * N1 + s.par[i] + 1) * V + x);
          if (bad_prob(qx)) f |= kBadTarget;
          s.qx[i] = qx;
        }
      }
      if (!greedy && (i < n || i == N)) {
        float u;
        if (uniforms != nullptr) {
          u = __ldg(uniforms + b * N1 + i);
          if (!(u >= 0.0f && u < 1.0f)) f |= kBadUniform;
        } else {
          u = philox_uniform(sd, off, (u64)b, (u64)i);
        }
        s.u[i] = u;
      }
    }
    f = warp_or(f);
    if ((tid & 31) == 0 && f) atomicOr(&s.flags, f);
    __syncthreads();
    flags = s.flags;
  }

  // ---- 3./4. the walk and the last token ------------------------------------------------------------
  int npath = 0, writer = 0;  // writer: the block of the cluster that writes the outputs
  i64 token = 0;
  if (flags == 0 && greedy) {
    constexpr int VEC = VecTraits<T>::N;
    const i64 NV = (V + VEC - 1) / VEC;
    i64 g_lo, g_hi;
    split_range(0, NV, CL, (int)rank, g_lo, g_hi);
    int pos = 0;
    for (int step = 0;; ++step) {
      const u64 key = tree_row_key<T, ALIGNED>(s, q + (b * N1 + pos) * V, V, g_lo, g_hi);
      if (tid < CL) tree_st_peer_u64<CL>(&s.ckey[step & 1][rank], (u32)tid, key);
      cluster_barrier<CL>();  // every block's key has arrived (the buffers alternate per step)
      u64 m = 0;
#pragma unroll
      for (int r = 0; r < CL; ++r) m = s.ckey[step & 1][r] > m ? s.ckey[step & 1][r] : m;
      if (m == kTreeBadKey) {
        flags = kBadTarget;
        break;
      }
      const i64 best = (i64)(0xFFFFFFFFu - (u32)(m & 0xFFFFFFFFu));
      int c = s.first[pos];
      while (c >= 0 && s.tok[c] != best) c = s.next[c];
      if (c < 0) {
        token = best;
        break;
      }
      if (tid == 0) s.path[npath] = c;
      ++npath;
      pos = c + 1;
    }
  } else if (flags == 0) {
    if (tid == 0) {  // target-only: the whole walk reads shared memory only
      int pos = 0, np = 0;
      for (;;) {
        int c = s.first[pos];
        if (c < 0) break;  // a leaf
        const double u0 = (double)s.u[c];
        double lo = 0.0;
        int hit = -1;
        for (; c >= 0; c = s.next[c]) {
          const double qc = (double)s.qx[c];
          const double hi = lo + qc;
          if (qc > 0.0 && lo <= u0 && u0 < hi) {
            hit = c;
            break;
          }
          lo = hi;
        }
        if (hit < 0) break;
        s.path[np++] = hit;
        pos = hit + 1;
      }
      s.npath = np;
      s.stop = pos;
    }
    __syncthreads();
    npath = s.npath;
    const int stop = s.stop;
    // the stop position's children's tokens, ascending (distinct: REPEATED_SIBLING is checked)
    int cnt = 0;
    for (int c = s.first[stop]; c >= 0; c = s.next[c]) ++cnt;
    for (int i = tid; i < n; i += kTreeThreads) {
      if (s.par[i] == stop - 1) {
        int rank_i = 0;
        for (int c = s.first[stop]; c >= 0; c = s.next[c]) rank_i += s.tok[c] < s.tok[i];
        s.drop[rank_i] = (int)s.tok[i];
      }
    }
    __syncthreads();
    const T* row = q + (b * N1 + stop) * V;
    const i64 NV = (V + VecTraits<T>::N - 1) / VecTraits<T>::N;
    const int G = tree_waves_per_slot(NV);
    const int NS = (int)(((NV + 31) / 32 + G - 1) / G);
    i64 lo64, hi64;
    split_range(0, NS, CL, (int)rank, lo64, hi64);
    const int s_lo = (int)lo64, s_hi = (int)hi64;
    int m = cnt, used = 0;
    double total = 0.0;
    for (int pass = 0; pass < 2; ++pass) {
      used = pass;
      const bool rowbad = tree_row_sums<T, ALIGNED>(s, row, V, m, G, s_lo, s_hi);
      const int any_bad = __syncthreads_or(rowbad ? 1 : 0);
      if (tid < CL) {
        double mine = 0.0;
        for (int i = 0; i < s_hi - s_lo; ++i) mine += s.slots[i];
        st_peer_f64<CL>(&s.ctot[pass][rank], (u32)tid, any_bad ? __longlong_as_double(-1ll) : mine);
      }
      cluster_barrier<CL>();  // every block's sum has arrived (one buffer per pass)
      total = 0.0;
      for (int r = 0; r < CL; ++r) total += s.ctot[pass][r];  // the same sum in every block
      // every token left is zero: draw from the row itself (its values are checked already)
      if (total == 0.0 && m > 0 && pass == 0) {
        m = 0;
        __syncthreads();  // the slots are rewritten
        continue;
      }
      break;
    }
    if (total != total) {
      flags = kBadTarget;
    } else if (total > kFloatMaxD) {
      flags = kRowOverflow;
    } else if (total == 0.0) {
      flags = kZeroRow;
    } else {
      // the block where the threshold is crossed (else the last block holding mass)
      const double thr = (double)s.u[N] * total;
      double before = 0.0, run = 0.0, last_before = 0.0;
      int chosen = -1, last = 0;
      for (int r = 0; r < CL; ++r) {
        const double x = s.ctot[used][r];
        if (x > 0.0) {
          if (chosen < 0 && run + x > thr) {
            chosen = r;
            before = run;
          }
          last = r;
          last_before = run;
        }
        run += x;
      }
      if (chosen < 0) {
        chosen = last;
        before = last_before;
      }
      writer = chosen;
      if ((int)rank == chosen) token = tree_pick<T, ALIGNED>(s, row, V, m, G, s_lo, s_hi, before, thr);
    }
  }

  // ---- outputs (one block of the cluster) -----------------------------------------------------------
  __syncthreads();  // s.path complete
  if ((int)rank != writer) return;
  const bool ok = flags == 0;
  for (int j = tid; j <= D; j += kTreeThreads) {
    i64 t = -1;
    if (ok && j < npath) t = s.tok[s.path[j]];
    if (ok && j == npath) t = token;
    out_tokens[b * ((i64)D + 1) + j] = t;
    if (j < D) out_nodes[b * (i64)D + j] = (ok && j < npath) ? (i64)s.path[j] : -1;
  }
  if (tid == 0) {
    out_num[b] = ok ? npath + 1 : 0;
    out_status[b] = (int)flags;
  }
}

// ---------------------------------------------------------------------------------------------
// Entry point: grid = B blocks of kTreeThreads threads. Parameters one by one (CuPy packs scalars
// and pointers, not structs). parents and num_nodes are int64; out_tokens [B, D+1], out_nodes
// [B, D] (unused when D = 0), out_num [B] int64, out_status [B] int32.
// ---------------------------------------------------------------------------------------------
#define SPECSAMPLE_TREE_PARAMS                                                                     \
  const void *ids, int ids64, const i64 *parents, const i64 *num_nodes, const void *q,             \
      const float *uniforms, i64 *out_tokens, i64 *out_nodes, i64 *out_num, int *out_status, i64 V, \
      int N, int D, int greedy, int distinct, u64 seed, u64 offset, const i64 *seed_ptr,            \
      const i64 *offset_ptr, u64 offset_intragraph, int captured
#define SPECSAMPLE_TREE_CALL(CL)                                                                   \
  __shared__ TreeSmem s;                                                                           \
  verify_tree_block<T, CL, ALIGNED>(s, ids, ids64, parents, num_nodes,                             \
                                    reinterpret_cast<const T*>(q), uniforms, out_tokens,           \
                                    out_nodes, out_num, out_status, V, N, D, greedy, distinct,     \
                                    seed, offset, seed_ptr, offset_ptr, offset_intragraph,         \
                                    captured);

// One block per request (any architecture).
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(kTreeThreads, 1) verify_tree_kernel(SPECSAMPLE_TREE_PARAMS) {
  SPECSAMPLE_TREE_CALL(1)
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
// One cluster of CL blocks per request (sm_90+; CL = 16 needs the non-portable cluster size
// attribute set on the function before launch): grid = B * CL blocks.
template <typename T, int CL, bool ALIGNED>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(kTreeThreads, 1)
    verify_tree_cluster_kernel(SPECSAMPLE_TREE_PARAMS) {
  SPECSAMPLE_TREE_CALL(CL)
}
#endif

#undef SPECSAMPLE_TREE_CALL

}  // namespace specsample
