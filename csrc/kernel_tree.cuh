// specsample tree kernel: tree verification (Backend.verify_tree), greedy mode and every random
// rule of the token walk (target-only, and recursive rejection sampling over siblings drawn with
// or without replacement), one thread-block cluster per request, one launch per call.
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
//   3'. With draft probabilities (HAS_P): at each position the first child on its drafted entries
//      (u * p(x) < q(x) in double, verify()'s rule); after a rejection one pass over the q and p
//      rows per later sibling j (tree_sibling_pass): r_{j-1} is recomputed element by element
//      from q, p and the scalars of the earlier steps in the reference's float64 operations
//      (tree_rrs_chain), and the sums the decision needs are reduced over the cluster.
//   4. The last token (random mode): inverse CDF, with the last coin, of the stop position's
//      distribution: target-only, its row with its children's tokens set to zero (the row itself
//      when that sums to zero); with draft probabilities, max(0, q - p) after one rejected child
//      or the last residual after several (fallbacks as the reference's); at a leaf, its row. Pass 1:
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
  float px[kMaxTreeNodes];       // p[b, first sibling, token] (with draft probabilities)
  double S[kMaxTreeNodes];       // siblings: the sum of each step's residual
  double P[kMaxTreeNodes + 1];   // siblings: the draft mass left at each step (without repl.)
  int F[kMaxTreeNodes];          // siblings: 1 where a step's residual fell back to q'
  int ktok[kMaxTreeNodes];       // siblings: the children's tokens and nodes, in index order
  int knode[kMaxTreeNodes];
  double wred[kTreeWarps][7];    // sibling pass: warp sums
  double xch[2][7][16];          // sibling pass: each block's sums, per pass parity
  double sres[7];                // sibling pass: the cluster's sums
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

// ---------------------------------------------------------------------------------------------
// The distribution of the last token, element by element. Each functor gives r_j in double for
// the VEC elements of one vector from their target (and draft) values; `alt` selects the
// fallback the rule takes when the primary distribution sums to zero. A functor is a per-thread
// value: the target-only one keeps a cursor into the sorted list of dropped tokens, which only
// moves forward (each lane visits its vectors in increasing order).
// ---------------------------------------------------------------------------------------------
// Target-only: q with the stop position's children's tokens (drop[0..m), ascending) set to zero;
// the fallback (or a leaf: m = 0) is q itself.
struct TreeDrawDrop {
  static constexpr bool kNeedsP = false;
  const int* drop;
  int m;
  int dp;
  bool alt;
  template <int VEC>
  __device__ __forceinline__ void operator()(i64 j0, const float* q, const float*, double* r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) r[e] = (double)q[e];
    if (alt) return;
    while (dp < m && drop[dp] < j0) ++dp;
    for (int k = dp; k < m && drop[k] < j0 + VEC; ++k) {
      const int e = (int)(drop[k] - j0);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        if (i == e) r[i] = 0.0;
    }
  }
};

// One child with draft probabilities, rejected: max(0, q - p) (verify()'s residual); fallback q.
struct TreeDrawResidual {
  static constexpr bool kNeedsP = true;
  bool alt;
  template <int VEC>
  __device__ __forceinline__ void operator()(i64, const float* q, const float* p, double* r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const double d = (double)q[e] - (double)p[e];
      r[e] = alt ? (double)q[e] : (d > 0.0 ? d : 0.0);
    }
  }
};

// Recursive rejection sampling over siblings (docs/contract-trees.md): the residual r_{j-1} of
// step j and its fallback q'_{j-1}, recomputed from q, p and the scalars of the earlier steps in
// the reference's float64 operations:
//   r_0 = max(0, q - p) (fallback q); q'_k = r_{k-1} / S_{k-1};
//   p'_k = p, or p with the tokens of children 0..k-1 zeroed, / P_k (without replacement);
//   r_k = max(0, q'_k - p'_k) (fallback q'_k).
// Also gives p with the tokens of children 0..j-2 zeroed (for P_j).
__device__ __forceinline__ void tree_rrs_chain(const double* S, const int* F, const double* P,
                                               const int* ktok, int j, bool without, i64 elem,
                                               double q, double p, double& a, double& alt,
                                               double& pz) {
  a = q - p > 0.0 ? q - p : 0.0;
  alt = q;
  pz = p;
  for (int k = 1; k < j; ++k) {
    const double rk = F[k - 1] ? alt : a;
    const double qc = rk / S[k - 1];
    if (elem == ktok[k - 1]) pz = 0.0;
    const double pc = without ? (P[k] > 0.0 ? pz / P[k] : pz) : p;
    a = qc - pc > 0.0 ? qc - pc : 0.0;
    alt = qc;
  }
}

struct TreeDrawSiblings {
  static constexpr bool kNeedsP = true;
  const TreeSmem* sm;  // S, F, P, ktok
  int j;               // the number of children tried: the distribution is r_{j-1}
  bool without;
  bool alt;
  template <int VEC>
  __device__ __forceinline__ void operator()(i64 j0, const float* q, const float* p, double* r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      double a, al, pz;
      tree_rrs_chain(sm->S, sm->F, sm->P, sm->ktok, j, without, j0 + e, (double)q[e], (double)p[e],
                     a, al, pz);
      r[e] = alt ? al : a;
    }
  }
};

// Vectors in flight per lane in a row pass: kTreeBatch for one row; for two rows (draft
// probabilities) 2 of float32, 1 of 16-bit types (8 elements each), within 128 registers.
template <typename T, bool TWO_ROWS>
__device__ __forceinline__ constexpr int tree_batch() {
  return TWO_ROWS ? (VecTraits<T>::N == 4 ? kTreeBatch / 4 : kTreeBatch / 8) : kTreeBatch;
}

// Waves of 32 vectors per super-wave (slot) of a row of NV vectors: a multiple of kTreeBatch.
__device__ __forceinline__ int tree_waves_per_slot(i64 NV) {
  const i64 waves = (NV + 31) / 32;
  const i64 per = (waves + (i64)kTreeBatch * kTreeSlots - 1) / ((i64)kTreeBatch * kTreeSlots);
  return (int)(per * kTreeBatch);
}

// The VEC values of vector g of the rows (p only when the functor reads it): r in double, and
// the bad-value verdicts of q and p.
template <typename T, bool ALIGNED, class Elem>
__device__ __forceinline__ void tree_vector(const uint4& wq, const uint4& wp, i64 g, Elem& f,
                                            double* r, bool& qbad, bool& pbad) {
  constexpr int VEC = VecTraits<T>::N;
  float vq[VEC], vp[VEC];
  VecTraits<T>::unpack(wq, vq);
#pragma unroll
  for (int e = 0; e < VEC; ++e) qbad |= bad_prob(vq[e]);
  if constexpr (Elem::kNeedsP) {
    VecTraits<T>::unpack(wp, vp);
#pragma unroll
    for (int e = 0; e < VEC; ++e) pbad |= bad_prob(vp[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) vp[e] = 0.0f;
  }
  f.template operator()<VEC>(g * VEC, vq, vp, r);
}

// Pass 1 of the draw: the super-wave sums of r over slots [s_lo, s_hi) into s.slots[0..), and
// this thread's bad-value verdicts (elements past V read as zero).
template <typename T, bool ALIGNED, class Elem>
__device__ void tree_row_sums(TreeSmem& s, const T* qrow, const T* prow, i64 V, Elem f, int G,
                              int s_lo, int s_hi, bool& qbad, bool& pbad) {
  constexpr int VEC = VecTraits<T>::N;
  constexpr int NB = tree_batch<T, Elem::kNeedsP>();  // vectors in flight per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 NV = (V + VEC - 1) / VEC;
  for (int sl = s_lo + warp; sl < s_hi; sl += kTreeWarps) {
    double acc = 0.0;
    for (int k0 = 0; k0 < G; k0 += NB) {
      uint4 wq[NB], wp[NB];
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const i64 g = ((i64)sl * G + k0 + i) * 32 + lane;
        const bool in = g < NV;
        wq[i] = in ? load_raw(qrow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
        if constexpr (Elem::kNeedsP) {
          wp[i] = in ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
        } else {
          wp[i] = wq[i];
        }
      }
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const i64 g = ((i64)sl * G + k0 + i) * 32 + lane;
        double r[VEC];
        tree_vector<T, ALIGNED>(wq[i], wp[i], g, f, r, qbad, pbad);
        double vs = 0.0;
#pragma unroll
        for (int e = 0; e < VEC; ++e) vs += r[e];
        acc += vs;
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) s.slots[sl - s_lo] = acc;
  }
}

// Pass 2 of the draw: the token where thr is crossed, within slots [s_lo, s_hi) whose mass
// starts at base0 (see the header). Every thread of the block calls it; returns the token.
template <typename T, bool ALIGNED, class Elem>
__device__ i64 tree_pick(TreeSmem& s, const T* qrow, const T* prow, i64 V, Elem f, int G,
                         int s_lo, int s_hi, double base0, double thr) {
  constexpr int VEC = VecTraits<T>::N;
  constexpr int NB = tree_batch<T, Elem::kNeedsP>();
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
    bool unused_q = false, unused_p = false;
    for (int k0 = 0; k0 < G && token < 0; k0 += NB) {
      uint4 wq[NB], wp[NB];
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const i64 g = ((i64)slot * G + k0 + i) * 32 + lane;
        const bool in = g < NV;
        wq[i] = in ? load_raw(qrow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
        if constexpr (Elem::kNeedsP) {
          wp[i] = in ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
        } else {
          wp[i] = wq[i];
        }
      }
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        if (token >= 0) continue;
        const i64 g = ((i64)slot * G + k0 + i) * 32 + lane;
        double r[VEC];
        tree_vector<T, ALIGNED>(wq[i], wp[i], g, f, r, unused_q, unused_p);
        double mine = 0.0;
#pragma unroll
        for (int e = 0; e < VEC; ++e) mine += r[e];
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
            if (r[e] > 0.0) {
              if (t < 0 && run + r[e] > thr) t = g * VEC + e;
              tl = g * VEC + e;
            }
            run += r[e];
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

// The last token from the distribution `f` of the stop position's rows (every block of the
// cluster calls it): pass 1 in every block, the block sums exchanged (NaN: a bad target value,
// -inf: a bad draft value), the fallback pass when the primary distribution sums to zero and
// `fallback` allows it, then the pick in the block holding the threshold. Sets *flags (bad
// values, ROW_SUM_OVERFLOW, ZERO_ROW) and *writer (the block that holds the token); returns the
// token in that block.
template <typename T, int CL, bool ALIGNED, class Elem>
__device__ i64 tree_draw(TreeSmem& s, const T* qrow, const T* prow, i64 V, Elem f, bool fallback,
                         float u_last, u32 rank, u32* flags, int* writer) {
  const int tid = threadIdx.x;
  const i64 NV = (V + VecTraits<T>::N - 1) / VecTraits<T>::N;
  const int G = tree_waves_per_slot(NV);
  const int NS = (int)(((NV + 31) / 32 + G - 1) / G);
  i64 lo64, hi64;
  split_range(0, NS, CL, (int)rank, lo64, hi64);
  const int s_lo = (int)lo64, s_hi = (int)hi64;
  double total = 0.0;
  int used = 0;
  for (int pass = 0; pass < 2; ++pass) {
    used = pass;
    f.alt = pass == 1;
    bool qbad = false, pbad = false;
    tree_row_sums<T, ALIGNED>(s, qrow, prow, V, f, G, s_lo, s_hi, qbad, pbad);
    const int any_q = __syncthreads_or(qbad ? 1 : 0);
    const int any_p = __syncthreads_or(pbad ? 1 : 0);
    if (tid < CL) {
      double mine = 0.0;
      for (int i = 0; i < s_hi - s_lo; ++i) mine += s.slots[i];
      if (any_p) mine = -__longlong_as_double(0x7ff0000000000000ll);  // -inf
      if (any_q) mine = __longlong_as_double(-1ll);                   // NaN
      st_peer_f64<CL>(&s.ctot[pass][rank], (u32)tid, mine);
    }
    cluster_barrier<CL>();  // every block's sum has arrived (one buffer per pass)
    total = 0.0;
    for (int r = 0; r < CL; ++r) total += s.ctot[pass][r];  // the same sum in every block
    if (total == 0.0 && fallback && pass == 0) {
      __syncthreads();  // the slots are rewritten
      continue;
    }
    break;
  }
  *writer = 0;
  if (total != total) {
    *flags = kBadTarget;
  } else if (total < 0.0) {
    *flags = kBadDraft;
  } else if (total > kFloatMaxD) {
    *flags = kRowOverflow;
  } else if (total == 0.0) {
    *flags = kZeroRow;
  }
  if (*flags) return 0;
  // the block where the threshold is crossed (else the last block holding mass)
  const double thr = (double)u_last * total;
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
  *writer = chosen;
  if ((int)rank != chosen) return 0;
  f.alt = used == 1;
  return tree_pick<T, ALIGNED>(s, qrow, prow, V, f, G, s_lo, s_hi, before, thr);
}

// Pass j (1 <= j < m) over a position's rows, for the decision on child j (token ktok[j]): the
// sums of r_{j-1}'s two candidates (o[0], o[1]), both at the token (o[2], o[3]), p at the token
// (o[4]), P_j (o[5], without replacement) and the bad-value bits (o[6]: 2 target, 1 draft),
// over the whole cluster, into s.sres[0..7) (every block gets the same values, summed in block
// order). `parity` alternates the exchange buffers between passes.
template <typename T, int CL, bool ALIGNED>
__device__ void tree_sibling_pass(TreeSmem& s, const T* qrow, const T* prow, i64 V, int j,
                                  bool without, u32 rank, int parity) {
  constexpr int VEC = VecTraits<T>::N;
  constexpr int NB = tree_batch<T, true>();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const i64 NV = (V + VEC - 1) / VEC;
  i64 g_lo, g_hi;
  split_range(0, NV, CL, (int)rank, g_lo, g_hi);
  const i64 x = s.ktok[j];
  const i64 drop = s.ktok[j - 1];
  double acc[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  bool qb = false, pb = false;
  for (i64 g0 = g_lo; g0 < g_hi; g0 += (i64)kTreeThreads * NB) {
    uint4 wq[NB], wp[NB];
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      const i64 g = g0 + (i64)i * kTreeThreads + tid;
      const bool in = g < g_hi;
      wq[i] = in ? load_raw(qrow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      wp[i] = in ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      const i64 g = g0 + (i64)i * kTreeThreads + tid;
      float vq[VEC], vp[VEC];
      VecTraits<T>::unpack(wq[i], vq);
      VecTraits<T>::unpack(wp[i], vp);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        qb |= bad_prob(vq[e]);
        pb |= bad_prob(vp[e]);
        const i64 je = g * VEC + e;
        double a, al, pz;
        tree_rrs_chain(s.S, s.F, s.P, s.ktok, j, without, je, (double)vq[e], (double)vp[e], a, al,
                       pz);
        acc[0] += a;
        acc[1] += al;
        if (je == x) {
          acc[2] += a;
          acc[3] += al;
          acc[4] += (double)vp[e];
        }
        if (without && je != drop) acc[5] += pz;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 6; ++k) acc[k] = warp_sum(acc[k]);
  const u32 bits = warp_or((qb ? 2u : 0u) | (pb ? 1u : 0u));
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 6; ++k) s.wred[warp][k] = acc[k];
    s.wred[warp][6] = (double)bits;
  }
  __syncthreads();
  if (tid < 7) {  // this block's value k, pushed into every block of the cluster
    double v = 0.0;
    u32 vb = 0;
    for (int w = 0; w < kTreeWarps; ++w) {
      v += s.wred[w][tid];
      vb |= (u32)s.wred[w][tid];
    }
    if (tid == 6) v = (double)vb;
    for (int r = 0; r < CL; ++r) st_peer_f64<CL>(&s.xch[parity][tid][rank], (u32)r, v);
  }
  cluster_barrier<CL>();  // every block's values have arrived
  if (tid < 7) {
    double v = 0.0;
    u32 vb = 0;
    for (int r = 0; r < CL; ++r) {
      v += s.xch[parity][tid][r];
      vb |= (u32)s.xch[parity][tid][r];
    }
    s.sres[tid] = tid == 6 ? (double)vb : v;
  }
  __syncthreads();
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

// Coin i of request b: uniforms[at] (flagged kBadUniform in f outside [0, 1)), or without
// uniforms word i of the request's Philox stream.
__device__ __forceinline__ float tree_coin(const float* uniforms, i64 at, u64 seed, u64 offset,
                                           i64 b, int i, u32& f) {
  if (uniforms == nullptr) return philox_uniform(seed, offset, (u64)b, (u64)i);
  const float u = __ldg(uniforms + at);
  if (!(u >= 0.0f && u < 1.0f)) f |= kBadUniform;
  return u;
}

// Step 1 of the tree and traversal kernels: request b's node count, parents and tokens, the depth
// bound and the children lists (first child of each position, next sibling of each node) into
// shared memory. Returns kTreeBadTree for a malformed tree (then only s.n, s.par and s.tok are
// set), else 0; n is the number of real nodes (0 when num_nodes[b] is out of range).
__device__ __forceinline__ u32 load_tree_structure(TreeSmem& s, const void* ids, int ids64,
                                                   const i64* parents, const i64* num_nodes,
                                                   i64 b, int N, int D, int& n) {
  const int tid = threadIdx.x;
  if (tid == 0) {
    const i64 n64 = __ldg(num_nodes + b);
    s.n = (n64 < 0 || n64 > N) ? -1 : (int)n64;
    s.flags = 0;
  }
  __syncthreads();
  const int n_raw = s.n;
  n = n_raw < 0 ? 0 : n_raw;
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
  return tree_bad ? kTreeBadTree : 0u;
}

// The whole request, in each block of its cluster (parameters: SPECSAMPLE_TREE_PARAMS below).
// HAS_P: random mode with draft probabilities (p_raw [B, N, V]; `without`: siblings drawn
// without replacement).
template <typename T, int CL, bool HAS_P, bool ALIGNED>
__device__ void verify_tree_block(TreeSmem& s, const void* ids, int ids64, const i64* parents,
                                  const i64* num_nodes, const T* q, const void* p_raw,
                                  const float* uniforms, i64* out_tokens, i64* out_nodes,
                                  i64* out_num, int* out_status, i64 V, int N, int D, int greedy,
                                  int distinct, int without, u64 seed, u64 offset,
                                  const i64* seed_ptr, const i64* offset_ptr,
                                  u64 offset_intragraph, int captured) {
  const int tid = threadIdx.x;
  const i64 b = (i64)cluster_id<CL>();
  const u32 rank = cluster_rank<CL>();
  const i64 N1 = (i64)N + 1;
  // every block of the cluster has started before any writes into its shared memory; the blocks
  // repeat steps 1-3 (the same reads, from L2) and split each row between them
  cluster_barrier<CL>();

  // ---- 1. structure ----------------------------------------------------------------------------
  int n;
  u32 flags = load_tree_structure(s, ids, ids64, parents, num_nodes, b, N, D, n);
  const bool tree_bad = flags != 0;
  if (!tree_bad && distinct) {  // an earlier sibling with the same token
    bool bad = false;
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
          if constexpr (HAS_P) {  // node i's entry in its first sibling's draft row
            const i64 fs = s.first[s.par[i] + 1];
            const float px = VecTraits<T>::load1(reinterpret_cast<const T*>(p_raw) + (b * N + fs) * V + x);
            if (bad_prob(px)) f |= kBadDraft;
            s.px[i] = px;
          }
        }
      }
      if (!greedy && (i < n || i == N)) s.u[i] = tree_coin(uniforms, b * N1 + i, sd, off, b, i, f);
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
  } else if (flags == 0 && !HAS_P) {
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
    token = tree_draw<T, CL, ALIGNED>(s, q + (b * N1 + stop) * V, q, V,
                                      TreeDrawDrop{s.drop, cnt, 0, false}, cnt > 0, s.u[N], rank,
                                      &flags, &writer);
  } else if (flags == 0) {
    // with draft probabilities: recursive rejection sampling over the siblings, one position at
    // a time (docs/contract-trees.md); every block decides every step from exchanged sums
    const T* p = reinterpret_cast<const T*>(p_raw);
    int pos = 0, xpass = 0;
    for (;;) {
      const int c0 = s.first[pos];
      const T* qrow = q + (b * N1 + pos) * V;
      if (c0 < 0) {  // a leaf: the last token from its target row
        token = tree_draw<T, CL, ALIGNED>(s, qrow, q, V, TreeDrawDrop{s.drop, 0, 0, false}, false,
                                          s.u[N], rank, &flags, &writer);
        break;
      }
      if ((double)s.u[c0] * (double)s.px[c0] < (double)s.qx[c0]) {  // verify()'s rule, exact
        if (tid == 0) s.path[npath] = c0;
        ++npath;
        pos = c0 + 1;
        continue;
      }
      const T* prow = p + (b * (i64)N + c0) * V;
      int m = 0;
      for (int c = c0; c >= 0; c = s.next[c]) ++m;
      if (m == 1) {  // verify()'s residual max(0, q - p)
        token = tree_draw<T, CL, ALIGNED>(s, qrow, prow, V, TreeDrawResidual{false}, true, s.u[N],
                                          rank, &flags, &writer);
        break;
      }
      if (tid == 0) {
        int k = 0;
        for (int c = c0; c >= 0; c = s.next[c], ++k) {
          s.ktok[k] = (int)s.tok[c];
          s.knode[k] = c;
        }
      }
      __syncthreads();
      int hit = -1;
      for (int j = 1; j < m; ++j) {
        tree_sibling_pass<T, CL, ALIGNED>(s, qrow, prow, V, j, without != 0, rank, xpass++ & 1);
        const double* o = s.sres;
        const int bits = (int)o[6];
        if (j == 1 && bits) {  // the rows are read whole for the first time here
          flags = (bits & 2) ? kBadTarget : kBadDraft;
          break;
        }
        const bool fj = o[0] == 0.0;  // r_{j-1} sums to zero: its fallback q'_{j-1}
        const double sj = fj ? o[1] : o[0];
        if (tid == 0) {
          s.S[j - 1] = sj;
          s.F[j - 1] = fj ? 1 : 0;
          s.P[j] = o[5];
        }
        __syncthreads();
        if (sj == 0.0) {
          flags = kZeroRow;
          break;
        }
        const double qcur = (fj ? o[3] : o[2]) / sj;
        const double pcur = without ? (o[5] > 0.0 ? o[4] / o[5] : o[4]) : o[4];
        if ((double)s.u[s.knode[j]] * pcur < qcur) {
          hit = s.knode[j];
          break;
        }
      }
      if (flags) break;
      if (hit >= 0) {
        if (tid == 0) s.path[npath] = hit;
        ++npath;
        pos = hit + 1;
        __syncthreads();  // ktok, knode, S, F, P are rewritten at the next position
        continue;
      }
      token = tree_draw<T, CL, ALIGNED>(s, qrow, prow, V,
                                        TreeDrawSiblings{&s, m, without != 0, false},
                                        true, s.u[N], rank, &flags, &writer);
      break;
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
// Entry points: grid = B * CL blocks of kTreeThreads threads. Parameters one by one (CuPy packs
// scalars and pointers, not structs). parents and num_nodes are int64; p [B, N, V] (HAS_P only);
// out_tokens [B, D+1], out_nodes [B, D] (unused when D = 0), out_num [B] int64, out_status [B]
// int32.
// ---------------------------------------------------------------------------------------------
#define SPECSAMPLE_TREE_PARAMS                                                                     \
  const void *ids, int ids64, const i64 *parents, const i64 *num_nodes, const void *q,             \
      const void *p, const float *uniforms, i64 *out_tokens, i64 *out_nodes, i64 *out_num,          \
      int *out_status, i64 V, int N, int D, int greedy, int distinct, int without, u64 seed,        \
      u64 offset, const i64 *seed_ptr, const i64 *offset_ptr, u64 offset_intragraph, int captured
#define SPECSAMPLE_TREE_CALL(CL)                                                                   \
  __shared__ TreeSmem s;                                                                           \
  verify_tree_block<T, CL, HAS_P, ALIGNED>(s, ids, ids64, parents, num_nodes,                      \
                                           reinterpret_cast<const T*>(q), p, uniforms, out_tokens, \
                                           out_nodes, out_num, out_status, V, N, D, greedy,        \
                                           distinct, without, seed, offset, seed_ptr, offset_ptr,  \
                                           offset_intragraph, captured);

// One block per request (any architecture).
template <typename T, bool HAS_P, bool ALIGNED>
__global__ void __launch_bounds__(kTreeThreads, 1) verify_tree_kernel(SPECSAMPLE_TREE_PARAMS) {
  SPECSAMPLE_TREE_CALL(1)
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
// One cluster of CL blocks per request (sm_90+; CL = 16 needs the non-portable cluster size
// attribute set on the function before launch): grid = B * CL blocks.
template <typename T, int CL, bool HAS_P, bool ALIGNED>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(kTreeThreads, 1)
    verify_tree_cluster_kernel(SPECSAMPLE_TREE_PARAMS) {
  SPECSAMPLE_TREE_CALL(CL)
}
#endif

#undef SPECSAMPLE_TREE_CALL

}  // namespace specsample
