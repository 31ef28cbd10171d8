// specsample traversal kernel: traversal verification of trees (verify_tree(..., rule="traversal"))
// in random mode with draft probabilities, siblings drawn with replacement; one block per request,
// one launch per call. Greedy mode is the token rule's walk (verify_tree_kernel serves it).
// Part of the kernel sources that verify_kernel.cuh assembles; it needs only kernel_tree.cuh (and
// what that includes), so the cupy backend compiles it with NVRTC (no system header).
//
// Semantics: docs/rules.md ("Traversal verification"); specsample.reference_traversal.traverse is
// the float64 definition, followed decision for decision with the same operations in double
// (every w * q - p as __dmul_rn then __dsub_rn: never contracted into an FMA). Indexing as the tree
// kernel: position 0 is the root, position i+1 is node i, P_a is the draft row of position a's
// first child (the row its children were drawn from). Per request:
//   1. Structure (BAD_TREE) as the tree kernel; the real nodes' ids (BAD_DRAFT_ID) and coins
//      (explicit: BAD_UNIFORM; else Philox, the tree kernel's counters).
//   2. The target row of every position with children and its draft row P_a, read in full
//      (BAD_TARGET_VALUE, BAD_DRAFT_VALUE: both may be set). Then the drafted entries: each
//      node's entry in its parent's current row (cx, starting at Q_a(x_i)) and in P_a (px), and
//      the weights min(1, w_a cx / px) top-down in node order (thread 0, shared memory).
//   3. The walk in post order (thread 0 lists it once). A node passes when its coin is below its
//      weight. A rejected node's parent a streams its target and draft rows once, block-wide: its
//      current row is never stored but rebuilt element by element from Q_a, P_a and the scalars
//      of its earlier rejections (the weight then, the residual's sum, whether it fell back to
//      the row), the reference's elementwise operations one rejection after another; the
//      residual mass Z = sum max(0, w Q - P) and the current row's sum (for the zero fallback)
//      are block-reduced in double. Thread 0 then sets a's weight Z / (Z + 1 - w) (1 where the
//      denominator is not positive), records the rejection, updates the later siblings' entries
//      cx with the same operations and re-weights their subtrees.
//   4. The last token: at an accepted leaf (or a childless root) its target row, checked in full;
//      else the accepted position's last unnormalized residual, rebuilt as in 3. Drawn by the
//      tree kernel's tree_draw (inverse CDF with the last coin; ROW_SUM_OVERFLOW, ZERO_ROW).
// Reads: two full rows per position with children (step 2), two more per rejected node, and the
// last row twice (tree_draw's two passes, with its draft row when it is a residual). No
// workspace, no global atomics, no host sync: CUDA-graph safe.
#pragma once

#include "kernel_tree.cuh"

namespace specsample {

constexpr int kTravCheckBatch = 4;  // step 2: vectors of each row in flight per thread

struct TravSmem {
  double w[kMaxTreeNodes + 1];   // each position's current acceptance weight (0: the root)
  double cx[kMaxTreeNodes];      // node i's entry in its parent position's current row
  double px[kMaxTreeNodes];      // node i's entry in its parent's draft row P_a
  double hw[kMaxTreeNodes];      // at node i's rejection: its parent's weight,
  double ht[kMaxTreeNodes];      //   the residual's sum (the row's sum where it fell back),
  int hf[kMaxTreeNodes];         //   1 where the residual summed to zero and the row was kept
  int nrej[kMaxTreeNodes + 1];   // rejected children of each position (a prefix of its children)
  int order[kMaxTreeNodes];      // the nodes in post order
  int sub[kMaxTreeNodes];        // thread 0's scratch: nodes under the later siblings
  double gw[kMaxTreeNodes];      // the history of the position a row pass reads, in order
  double gt[kMaxTreeNodes];
  int gf[kMaxTreeNodes];
  int gm;
  double red[2][kTreeWarps];     // block reductions: warp sums
};

// min(1, w q / p) in double; a draft entry of 0 gives 1 if w q > 0 else 0 (reference path_weight).
__device__ __forceinline__ double trav_weight(double w, double q, double p) {
  const double num = __dmul_rn(w, q);
  if (p > 0.0) {
    const double r = num / p;
    return r < 1.0 ? r : 1.0;
  }
  return num > 0.0 ? 1.0 : 0.0;
}

// One rejection's elementwise update of a row entry: r = max(0, w cur - p) (cur itself where the
// residual fell back), then cur = r / total where total > 0. With `last`, the unnormalized r.
__device__ __forceinline__ double trav_step(double w, double total, int fell, bool last, double cur,
                                            double p) {
  const double d = __dsub_rn(__dmul_rn(w, cur), p);
  const double r = fell ? cur : (d > 0.0 ? d : 0.0);
  if (last) return r;
  return total > 0.0 ? r / total : cur;
}

// A position's row entry after its m recorded rejections (gw, gt, gf), from its target entry q
// and draft entry p; with `last`, its last unnormalized residual (q itself when m = 0).
__device__ __forceinline__ double trav_row(const TravSmem& t, int m, bool last, double q,
                                           double p) {
  double cur = q;
  for (int k = 0; k < m; ++k) {
    cur = trav_step(t.gw[k], t.gt[k], t.gf[k], last && k == m - 1, cur, p);
  }
  return cur;
}

// tree_draw's element functor: the accepted position's last residual.
struct TravDrawResidual {
  static constexpr bool kNeedsP = true;
  const TravSmem* t;
  bool alt;  // unused: a residual summing to zero is ZERO_ROW (no fallback pass)
  template <int VEC>
  __device__ __forceinline__ void operator()(i64, const float* q, const float* p, double* r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) r[e] = trav_row(*t, t->gm, true, (double)q[e], (double)p[e]);
  }
};

// Thread 0: position a's recorded rejections, in order, into t.gw/gt/gf (t.gm of them).
__device__ __forceinline__ void trav_gather(const TreeSmem& s, TravSmem& t, int a) {
  int m = 0;
  for (int c = s.first[a]; c >= 0 && m < t.nrej[a]; c = s.next[c], ++m) {
    t.gw[m] = t.hw[c];
    t.gt[m] = t.ht[c];
    t.gf[m] = t.hf[c];
  }
  t.gm = m;
}

// Every vector of a q row and a p row, block-wide, NB vectors of each in flight per thread:
// f(vq, vp) on the unpacked values of each pair (elements past V read as 0).
template <typename T, bool ALIGNED, int NB, class F>
__device__ __forceinline__ void trav_stream(const T* qrow, const T* prow, i64 V, F&& f) {
  constexpr int VEC = VecTraits<T>::N;
  const i64 NV = (V + VEC - 1) / VEC;
  for (i64 g0 = threadIdx.x; g0 < NV; g0 += (i64)kTreeThreads * NB) {
    uint4 wq[NB], wp[NB];
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      const i64 g = g0 + (i64)i * kTreeThreads;
      wq[i] = g < NV ? load_raw(qrow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
      wp[i] = g < NV ? load_raw(prow, g, V, ALIGNED) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      float vq[VEC], vp[VEC];
      VecTraits<T>::unpack(wq[i], vq);
      VecTraits<T>::unpack(wp[i], vp);
      f(vq, vp);
    }
  }
}

// The whole request (parameters: SPECSAMPLE_TREE_PARAMS; greedy, distinct and without unused).
template <typename T, bool ALIGNED>
__device__ void verify_traversal_block(TreeSmem& s, TravSmem& t, const void* ids, int ids64,
                                       const i64* parents, const i64* num_nodes, const T* q,
                                       const T* p, const float* uniforms, i64* out_tokens,
                                       i64* out_nodes, i64* out_num, int* out_status, i64 V, int N,
                                       int D, u64 seed, u64 offset, const i64* seed_ptr,
                                       const i64* offset_ptr, u64 offset_intragraph, int captured) {
  constexpr int VEC = VecTraits<T>::N;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const i64 b = (i64)blockIdx.x;
  const i64 N1 = (i64)N + 1;

  // ---- 1. structure, ids, coins -----------------------------------------------------------------
  int n;
  u32 flags = load_tree_structure(s, ids, ids64, parents, num_nodes, b, N, D, n);
  if (flags == 0) {
    u64 sd = seed, off = offset;
    if (uniforms == nullptr && captured) {
      sd = (u64)*seed_ptr;
      off = (u64)*offset_ptr + offset_intragraph;
    }
    u32 f = 0;
    for (int i = tid; i <= N; i += kTreeThreads) {
      if (i < n && (s.tok[i] < 0 || s.tok[i] >= V)) f |= kBadDraftId;
      if (i < n || i == N) s.u[i] = tree_coin(uniforms, b * N1 + i, sd, off, b, i, f);
    }
    f = warp_or(f);
    if (lane == 0 && f) atomicOr(&s.flags, f);
    __syncthreads();
    flags = s.flags;
  }

  // ---- 2. every row with children and its draft row, in full; entries and weights ---------------
  if (flags == 0) {
    u32 f = 0;
    for (int a = 0; a <= n; ++a) {
      const int c = s.first[a];
      if (c < 0) continue;
      const T* qrow = q + (b * N1 + a) * V;
      const T* prow = p + (b * (i64)N + c) * V;
      auto check = [&](const float* vq, const float* vp) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          if (bad_prob(vq[e])) f |= kBadTarget;
          if (bad_prob(vp[e])) f |= kBadDraft;
        }
      };
      trav_stream<T, ALIGNED, kTravCheckBatch>(qrow, prow, V, check);
    }
    f = warp_or(f);
    if (lane == 0 && f) atomicOr(&s.flags, f);
    for (int i = tid; i < n; i += kTreeThreads) {
      const int a = s.par[i] + 1;
      t.cx[i] = (double)VecTraits<T>::load1(q + (b * N1 + a) * V + s.tok[i]);
      t.px[i] = (double)VecTraits<T>::load1(p + (b * (i64)N + s.first[a]) * V + s.tok[i]);
    }
    __syncthreads();
    flags = s.flags;
  }
  if (flags == 0 && tid == 0) {
    t.w[0] = 1.0;
    t.nrej[0] = 0;
    for (int i = 0; i < n; ++i) {
      t.w[i + 1] = trav_weight(t.w[s.par[i] + 1], t.cx[i], t.px[i]);
      t.nrej[i + 1] = 0;
    }
    // post order: the leftmost leaf, then each node after its subtree, children in index order
    int k = 0, c = s.first[0];
    while (c >= 0) {
      while (s.first[c + 1] >= 0) c = s.first[c + 1];
      t.order[k++] = c;
      while (c >= 0 && s.next[c] < 0) {
        c = s.par[c];
        if (c >= 0) t.order[k++] = c;
      }
      if (c >= 0) c = s.next[c];
    }
  }
  __syncthreads();

  // ---- 3. the walk ------------------------------------------------------------------------------
  int accepted = -1;
  for (int k = 0; flags == 0 && k < n; ++k) {
    const int node = t.order[k];
    if ((double)s.u[node] < t.w[node + 1]) {
      accepted = node;
      break;
    }
    const int a = s.par[node] + 1;  // the parent position loses a child
    if (tid == 0) trav_gather(s, t, a);
    __syncthreads();
    const double wa = t.w[a];
    const int m = t.gm;
    const T* qrow = q + (b * N1 + a) * V;
    const T* prow = p + (b * (i64)N + s.first[a]) * V;
    double z = 0.0, cs = 0.0;
    auto mass = [&](const float* vq, const float* vp) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {  // elements past V read as 0: they add 0
        const double pe = (double)vp[e];
        const double cur = trav_row(t, m, false, (double)vq[e], pe);
        const double d = __dsub_rn(__dmul_rn(wa, cur), pe);
        z += d > 0.0 ? d : 0.0;
        cs += cur;
      }
    };
    trav_stream<T, ALIGNED, tree_batch<T, true>()>(qrow, prow, V, mass);
    z = warp_sum(z);
    cs = warp_sum(cs);
    if (lane == 0) {
      t.red[0][warp] = z;
      t.red[1][warp] = cs;
    }
    __syncthreads();
    if (tid == 0) {
      z = 0.0;
      cs = 0.0;
      for (int w = 0; w < kTreeWarps; ++w) {
        z += t.red[0][w];
        cs += t.red[1][w];
      }
      const double denom = __dsub_rn(__dadd_rn(z, 1.0), wa);
      const int fell = z == 0.0 ? 1 : 0;
      const double total = fell ? cs : z;
      t.hw[node] = wa;
      t.ht[node] = total;
      t.hf[node] = fell;
      t.nrej[a] += 1;
      t.w[a] = denom > 0.0 ? z / denom : 1.0;
      // the later siblings' entries in a's new row, then their subtrees' weights
      for (int c = s.next[node]; c >= 0; c = s.next[c]) {
        t.cx[c] = trav_step(wa, total, fell, false, t.cx[c], t.px[c]);
      }
      for (int i = node + 1; i < n; ++i) {
        const int pi = s.par[i];
        const int in = (pi + 1 == a) || (pi > node && t.sub[pi]);
        t.sub[i] = in;
        if (in) t.w[i + 1] = trav_weight(t.w[pi + 1], t.cx[i], t.px[i]);
      }
    }
    __syncthreads();
  }

  // ---- 4. the accepted path and the last token --------------------------------------------------
  int npath = 0;
  for (int x = accepted; x >= 0; x = s.par[x]) ++npath;
  if (flags == 0 && tid == 0) {
    int k = npath;
    for (int x = accepted; x >= 0; x = s.par[x]) s.path[--k] = x;
  }
  i64 token = 0;
  int writer = 0;
  if (flags == 0) {
    const int pos = accepted + 1;
    const T* qrow = q + (b * N1 + pos) * V;
    if (s.first[pos] < 0) {  // a leaf (or a childless root): its target row, read now
      token = tree_draw<T, 1, ALIGNED>(s, qrow, q, V, TreeDrawDrop{s.drop, 0, 0, false}, false,
                                       s.u[N], 0u, &flags, &writer);
    } else {  // every child of pos was rejected: its last residual
      if (tid == 0) trav_gather(s, t, pos);
      __syncthreads();
      const T* prow = p + (b * (i64)N + s.first[pos]) * V;
      token = tree_draw<T, 1, ALIGNED>(s, qrow, prow, V, TravDrawResidual{&t, false}, false,
                                       s.u[N], 0u, &flags, &writer);
    }
  }

  // ---- outputs ----------------------------------------------------------------------------------
  __syncthreads();  // s.path complete
  const bool ok = flags == 0;
  for (int j = tid; j <= D; j += kTreeThreads) {
    i64 tk = -1;
    if (ok && j < npath) tk = s.tok[s.path[j]];
    if (ok && j == npath) tk = token;
    out_tokens[b * ((i64)D + 1) + j] = tk;
    if (j < D) out_nodes[b * (i64)D + j] = (ok && j < npath) ? (i64)s.path[j] : -1;
  }
  if (tid == 0) {
    out_num[b] = ok ? npath + 1 : 0;
    out_status[b] = (int)flags;
  }
}

// Entry point: grid = B blocks of kTreeThreads threads, the tree kernel's parameter list (p is
// [B, N, V], required when N > 0).
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(kTreeThreads, 1) verify_traversal_kernel(SPECSAMPLE_TREE_PARAMS) {
  (void)greedy;
  (void)distinct;
  (void)without;
  __shared__ TreeSmem s;
  __shared__ TravSmem t;
  verify_traversal_block<T, ALIGNED>(s, t, ids, ids64, parents, num_nodes,
                                     reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(p),
                                     uniforms, out_tokens, out_nodes, out_num, out_status, V, N, D,
                                     seed, offset, seed_ptr, offset_ptr, offset_intragraph,
                                     captured);
}

}  // namespace specsample
