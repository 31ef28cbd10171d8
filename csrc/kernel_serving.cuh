// specsample verify kernel: the serving entry point (docs/serving.md), one block per request.
// Part of the kernel that verify_kernel.cuh assembles; like it, this file includes no system
// header, so NVRTC compiles it as it is.
//
// A serving call verifies ragged drafts (num_draft[b] of K padded slots) with per-request
// temperature (0 = greedy), top-k and top-p, target (and draft) rows given as logits or as
// probabilities, and coins from explicit uniforms, per-request seeds or one generator key. The
// float64 reference (specsample.reference_serving) is the definition; this kernel follows the
// triton serving kernel's algorithm (backends/_triton_serving.py) with the same float64 weights
// and sums, and replaces its bisections by MSB-first radix selections over the ordered key.
//
// One block of kServingThreads threads per request, no workspace, no atomics in global memory:
//   1. ids, parameters and coins into shared memory (bad ids and bad explicit coins flagged);
//   2. every owned row once: bad values (NaN, +inf; probabilities also -inf or negative), each
//      target row's maximum and argmax (ties to the smallest index), each draft row's maximum;
//   3. greedy requests: accepted while the draft equals the argmax of its row;
//   4. sampling requests, row after row until the first rejection: the row's distribution as
//      (cut, z): token j has probability w_j / z where key(x_j) >= cut, else 0, with
//      w_j = exp((x_j - max) / T) (logits) or (x_j / max)^(1/T) (probabilities) in float64;
//      top-k's cut is the key of the k-th largest value, top-p's the smallest key t with
//      sum{w_j : key_j > t, key_j >= cut_k} < p * z_k; the accept test u * p'(x) < q'(x);
//   5. the last row: the residual max(0, q' - p') (q' when all zero) or the bonus row q', summed
//      in float64, then the inverse CDF (smallest j with cumsum(r)[j] > u * sum(r), never a
//      zero-weight token; a threshold rounded past the end takes the last positive token).
//
// Radix selection: the ordered key is the float32 bit pattern mapped to a u32 that sorts as the
// value (-0.0 and 0.0 share a key). A selection walks the 32 key bits MSB first, 4 bits (16
// digits) per row pass; every thread keeps the 16 digit totals in registers (counts for top-k,
// float64 weights for top-p) and the block adds them in a fixed order, so every sum, and therefore
// every token, is the same from run to run. 8 passes per filter, against ~32 for a bisection.
#pragma once

#include "kernel_common.cuh"
#include "kernel_philox.cuh"

namespace specsample {

constexpr int kServingThreads = 512;
constexpr int kServingWarps = kServingThreads / 32;
constexpr int kServingDigits = 16;  // 4 key bits per radix pass
constexpr int kServingLevels = 8;   // 32 key bits
// The last token's draw (serving_draw_last): at most this many units per row, and this many
// vectors of each row in flight per lane.
constexpr int kServingDrawUnits = 256;
constexpr int kServingDrawLoads = 4;

// coin sources
constexpr int kServingCoinsUniforms = 0;   // explicit [B, K+1] float32
constexpr int kServingCoinsSeeds = 1;      // per-request seeds / offsets (subsequence 0)
constexpr int kServingCoinsGenerator = 2;  // one key: subsequence b, as the verify kernels draw

struct ServingSmem {
  double red[kServingWarps][kServingDigits];
  float fval[kServingWarps];
  i64 ival[kServingWarps];
  u32 uval[kServingWarps];
  i64 ids[kMaxK];
  float coin[kMaxK + 1];
  float top[kMaxK + 1];
  float dtop[kMaxK + 1];
  i64 amax[kMaxK + 1];
  double units[kServingDrawUnits];  // the last draw's unit sums (serving_draw_last)
};

// The ordered key of a float32 value (not NaN): a < b iff key(a) < key(b).
__device__ __forceinline__ u32 serving_key(float x) {
  if (x == 0.0f) return 0x80000000u;
  const u32 bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// A value the status flags: logits NaN or +inf (-inf masks a token); probabilities NaN,
// infinite or negative (-0.0 is fine).
__device__ __forceinline__ bool serving_bad(float x, bool logits) {
  return logits ? !(x <= kFloatMax) : bad_prob(x);
}

// The float64 weight of x given its row's maximum `top` and the temperature (> 0); 0 where x or
// the whole row has no mass.
__device__ __forceinline__ double serving_weight(float x, float top, double temp, bool logits) {
  if (logits) {
    if (!(top >= -kFloatMax) || !(x >= -kFloatMax)) return 0.0;  // -inf: no mass
    return exp(((double)x - (double)top) / temp);
  }
  if (!(top > 0.0f) || !(x > 0.0f)) return 0.0;
  const double ratio = (double)x / (double)top;
  return temp == 1.0 ? ratio : pow(ratio, 1.0 / temp);
}

// One row's sampling distribution: probability w / z where key >= cut.
struct ServingDist {
  float top;
  u32 cut;
  double z;
};

__device__ __forceinline__ double serving_prob(float x, const ServingDist& d, double temp, bool logits) {
  if (serving_key(x) < d.cut || !(d.z > 0.0)) return 0.0;
  return serving_weight(x, d.top, temp, logits) / d.z;
}

// ---------------------------------------------------------------------------------------------
// Block reductions (fixed order: every thread gets the same bits, run after run)
// ---------------------------------------------------------------------------------------------
// Sums of kServingDigits per-thread values; every thread gets the block totals in `out`.
__device__ __forceinline__ void serving_block_sums(const double* acc, double* out, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int d = 0; d < kServingDigits; ++d) {
    const double s = warp_sum(acc[d]);
    if (lane == 0) sm.red[warp][d] = s;
  }
  __syncthreads();
#pragma unroll
  for (int d = 0; d < kServingDigits; ++d) {
    double s = 0.0;
    for (int w = 0; w < nw; ++w) s += sm.red[w][d];
    out[d] = s;
  }
  __syncthreads();
}

__device__ __forceinline__ double serving_block_sum(double x, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  x = warp_sum(x);
  if (lane == 0) sm.red[warp][0] = x;
  __syncthreads();
  double s = 0.0;
  for (int w = 0; w < nw; ++w) s += sm.red[w][0];
  __syncthreads();
  return s;
}

// Exclusive prefix sum over the threads in index order (the lanes by shuffles, then the warps in
// order) and the block's total in `total`, the same additions every run.
__device__ __forceinline__ double serving_block_prefix(double x, double& total, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  double incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  const double up = __shfl_up_sync(0xffffffffu, incl, 1);
  const double excl = lane > 0 ? up : 0.0;
  if (lane == 31) sm.red[warp][0] = incl;
  __syncthreads();
  double before = 0.0, t = 0.0;
  for (int w = 0; w < nw; ++w) {
    if (w == warp) before = t;
    t += sm.red[w][0];
  }
  __syncthreads();
  total = t;
  return before + excl;
}

__device__ __forceinline__ u32 serving_block_or(u32 x, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  x = warp_or(x);
  if (lane == 0) sm.uval[warp] = x;
  __syncthreads();
  u32 s = 0;
  for (int w = 0; w < nw; ++w) s |= sm.uval[w];
  __syncthreads();
  return s;
}

__device__ __forceinline__ i64 serving_block_min(i64 x, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const i64 y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y < x ? y : x;
  }
  if (lane == 0) sm.ival[warp] = x;
  __syncthreads();
  i64 s = sm.ival[0];
  for (int w = 1; w < nw; ++w) s = sm.ival[w] < s ? sm.ival[w] : s;
  __syncthreads();
  return s;
}

__device__ __forceinline__ i64 serving_block_max(i64 x, ServingSmem& sm) {
  return -serving_block_min(-x, sm);
}

// (maximum, index of its first occurrence) over the block; NaN never passed (the caller passes
// -inf for it). Ties go to the smallest index.
__device__ __forceinline__ void serving_block_argmax(float& top, i64& arg, ServingSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float t = __shfl_xor_sync(0xffffffffu, top, o);
    const i64 a = __shfl_xor_sync(0xffffffffu, arg, o);
    if (t > top || (t == top && a < arg)) {
      top = t;
      arg = a;
    }
  }
  if (lane == 0) {
    sm.fval[warp] = top;
    sm.ival[warp] = arg;
  }
  __syncthreads();
  top = sm.fval[0];
  arg = sm.ival[0];
  for (int w = 1; w < nw; ++w) {
    const float t = sm.fval[w];
    const i64 a = sm.ival[w];
    if (t > top || (t == top && a < arg)) {
      top = t;
      arg = a;
    }
  }
  __syncthreads();
}

// Calls f(j, x) for every element j < V of `row` this thread owns (16-byte vectors, strided over
// the block: thread t holds vectors t, t + blockDim, ...).
template <typename T, typename F>
__device__ __forceinline__ void serving_row_for_each(const T* row, i64 V, bool aligned, F&& f) {
  constexpr int N = VecTraits<T>::N;
  const i64 nvec = (V + N - 1) / N;
  for (i64 g = threadIdx.x; g < nvec; g += blockDim.x) {
    float v[N];
    VecTraits<T>::unpack(load_raw<T>(row, g, V, aligned), v);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const i64 j = g * N + e;
      if (j < V) f(j, v[e]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Radix selections over the ordered key
// ---------------------------------------------------------------------------------------------
// top-k: the key of the k-th largest value counted with multiplicity, i.e. the largest t with
// #{key >= t} >= k (0 < k < V).
template <typename T>
__device__ u32 serving_kth_key(const T* row, i64 V, bool aligned, i64 k, ServingSmem& sm) {
  u32 prefix = 0;      // the key bits fixed so far
  i64 above = 0;       // elements whose key's fixed bits exceed `prefix`
  for (int level = 0; level < kServingLevels; ++level) {
    const int shift = 28 - 4 * level;
    const u32 hmask = level == 0 ? 0u : (0xffffffffu << (shift + 4));
    double acc[kServingDigits];
#pragma unroll
    for (int d = 0; d < kServingDigits; ++d) acc[d] = 0.0;
    serving_row_for_each(row, V, aligned, [&](i64, float x) {
      const u32 key = serving_key(x);
      if ((key & hmask) == prefix) {
        const u32 digit = (key >> shift) & 15u;
#pragma unroll
        for (int d = 0; d < kServingDigits; ++d) acc[d] += digit == (u32)d ? 1.0 : 0.0;
      }
    });
    double count[kServingDigits];
    serving_block_sums(acc, count, sm);
    int pick = 0;
    for (int d = kServingDigits - 1; d >= 0; --d) {
      const i64 c = (i64)count[d];
      if (above + c >= k) {
        pick = d;
        break;
      }
      above += c;
    }
    prefix |= (u32)pick << shift;
  }
  return prefix;
}

// top-p: the smallest key t >= floor with sum{w_j : key_j > t, key_j >= floor} < goal, where
// goal = p * z and z, the total weight of the keys >= floor, is computed by the first pass.
// Returns the cut; sets z (the kept weight before top-p) and z_kept (the weight of key >= cut).
template <typename T>
__device__ u32 serving_top_p_key(const T* row, i64 V, bool aligned, u32 floor, float top, double temp,
                                 bool logits, float top_p, double& z, double& z_kept,
                                 ServingSmem& sm) {
  u32 prefix = 0;
  double above = 0.0;  // weight of the candidates whose fixed key bits exceed `prefix`
  double goal = 0.0, last_digit_mass = 0.0;
  for (int level = 0; level < kServingLevels; ++level) {
    const int shift = 28 - 4 * level;
    const u32 hmask = level == 0 ? 0u : (0xffffffffu << (shift + 4));
    double acc[kServingDigits];
#pragma unroll
    for (int d = 0; d < kServingDigits; ++d) acc[d] = 0.0;
    serving_row_for_each(row, V, aligned, [&](i64, float x) {
      const u32 key = serving_key(x);
      if (key >= floor && (key & hmask) == prefix) {
        const double w = serving_weight(x, top, temp, logits);
        const u32 digit = (key >> shift) & 15u;
#pragma unroll
        for (int d = 0; d < kServingDigits; ++d) acc[d] += digit == (u32)d ? w : 0.0;
      }
    });
    double mass[kServingDigits];
    serving_block_sums(acc, mass, sm);
    if (level == 0) {
      z = 0.0;
      for (int d = 0; d < kServingDigits; ++d) z += mass[d];
      goal = (double)top_p * z;
    }
    // the smallest digit whose upper end leaves less than goal above it (the top digit always
    // does: `above` < goal is the invariant)
    int pick = kServingDigits - 1;
    double run = above, at_pick = above;
    for (int d = kServingDigits - 1; d >= 0; --d) {
      if (!(run < goal)) break;
      pick = d;
      at_pick = run;
      run += mass[d];
    }
    above = at_pick;
    last_digit_mass = mass[pick];
    prefix |= (u32)pick << shift;
  }
  if (prefix <= floor) {
    z_kept = z;
    return floor;
  }
  z_kept = above + last_digit_mass;
  return prefix;
}

// The distribution of one row (transform_row in specsample.reference_serving).
template <typename T>
__device__ ServingDist serving_row_dist(const T* row, i64 V, bool aligned, float top, double temp,
                                        bool logits, i64 top_k, float top_p, ServingSmem& sm) {
  ServingDist d;
  d.top = top;
  d.cut = 0u;
  if (top_k > 0 && top_k < V) d.cut = serving_kth_key(row, V, aligned, top_k, sm);
  if (top_p < 1.0f) {
    double z = 0.0, z_kept = 0.0;
    d.cut = serving_top_p_key(row, V, aligned, d.cut, top, temp, logits, top_p, z, z_kept, sm);
    d.z = z_kept;
    return d;
  }
  double acc = 0.0;
  const u32 cut = d.cut;
  serving_row_for_each(row, V, aligned, [&](i64, float x) {
    if (serving_key(x) >= cut) acc += serving_weight(x, top, temp, logits);
  });
  d.z = serving_block_sum(acc, sm);
  return d;
}

// q' and p' of an element of value x, computed from the rows' distributions
// (kernel_serving_split.cuh's ServingTableProbs looks the same values up in tables).
struct ServingDirectProbs {
  ServingDist qd, dd;
  double temp;
  bool tlogits, dlogits;
  __device__ __forceinline__ double q(float x) const { return serving_prob(x, qd, temp, tlogits); }
  __device__ __forceinline__ double p(float x) const {
    return dlogits ? serving_prob(x, dd, temp, true) : (double)x;
  }
};

// One element of the last row: max(0, q' - p') where `residual`, else q'.
template <typename Probs>
__device__ __forceinline__ double serving_last(float xq, float xd, i64 j, const Probs& probs,
                                               bool has_draft, i64 x_tau, bool residual) {
  const double q = probs.q(xq);
  if (!residual) return q;
  if (!(q > 0.0)) return 0.0;  // max(0, 0 - p) with p >= 0: the draft value is not needed
  const double p = has_draft ? probs.p(xd) : (j == x_tau ? 1.0 : 0.0);
  const double r = q - p;
  return r > 0.0 ? r : 0.0;
}

// ---------------------------------------------------------------------------------------------
// Steps shared by the one-block kernel below and the split kernel (kernel_serving_split.cuh)
// ---------------------------------------------------------------------------------------------
// Where a request's coins come from (kServingCoins*), with the pointers each source reads.
struct ServingCoins {
  int source;
  const float* uniforms;  // [B, K+1]
  const i64* seeds;       // [B]
  const i64* offsets;     // [B]
  u64 seed, offset;       // the generator's key (when not captured)
  const i64* seed_ptr;    // ... read here under graph capture
  const i64* offset_ptr;
  u64 offset_intragraph;
  int captured;
};

// Step 1: request b's ids into sm.ids (a bad id is flagged and replaced by 0) and, for a sampling
// request, its coins 0..nd into sm.coin. Returns this thread's bad bits (kBadDraftId,
// kBadUniform); the caller ORs them over the block, which also orders the shared-memory writes.
__device__ __forceinline__ u32 serving_ids_coins(const void* ids, int ids64, int K, i64 b, int nd,
                                                 bool greedy, const ServingCoins& c, i64 V,
                                                 ServingSmem& sm) {
  const int tid = threadIdx.x;
  u32 bad = 0;
  for (int k = tid; k < nd; k += blockDim.x) {
    const i64 x = load_id(ids, ids64, K, b, k);
    if (x < 0 || x >= V) bad |= kBadDraftId;
    sm.ids[k] = (x >= 0 && x < V) ? x : 0;
  }
  if (!greedy) {
    u64 key = c.seed, base = c.offset;
    if (c.source == kServingCoinsGenerator && c.captured) {
      key = (u64)*c.seed_ptr;
      base = (u64)*c.offset_ptr + c.offset_intragraph;
    }
    for (int k = tid; k <= nd; k += blockDim.x) {
      float u;
      if (c.source == kServingCoinsUniforms) {
        u = __ldg(c.uniforms + b * (K + 1) + k);
        if (!(u >= 0.0f && u < 1.0f)) bad |= kBadUniform;
      } else if (c.source == kServingCoinsSeeds) {
        u = philox_uniform((u64)__ldg(c.seeds + b), (u64)__ldg(c.offsets + b), 0, (u64)k);
      } else {
        u = philox_uniform(key, base, (u64)b, (u64)k);
      }
      sm.coin[k] = u;
    }
  }
  return bad;
}

// Calls f(g, raw) for every 16-byte vector g in [g_lo, g_hi) of `row` this thread owns (strided
// over the block, in increasing g), eight vectors requested before any is used.
template <typename T, typename F>
__device__ __forceinline__ void serving_row_vectors_in(const T* row, i64 V, bool aligned, i64 g_lo,
                                                       i64 g_hi, F&& f) {
  constexpr int L = 8;
  const i64 step = blockDim.x;
  for (i64 g0 = g_lo + threadIdx.x; g0 < g_hi; g0 += L * step) {
    uint4 raw[L];
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const i64 g = g0 + l * step;
      raw[l] = g < g_hi ? load_raw<T>(row, g, V, aligned) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const i64 g = g0 + l * step;
      if (g >= g_hi) break;
      f(g, raw[l]);
    }
  }
}

// The same over the whole row.
template <typename T, typename F>
__device__ __forceinline__ void serving_row_vectors(const T* row, i64 V, bool aligned, F&& f) {
  constexpr int N = VecTraits<T>::N;
  serving_row_vectors_in(row, V, aligned, 0, (V + N - 1) / N, f);
}

// Step 2 for one row: its bad values (`bad_bit`), NaN, maximum and the first index holding it,
// as block-wide values.
template <typename T>
__device__ __forceinline__ void serving_scan_row(const T* row, i64 V, bool aligned, bool logits,
                                                 u32 bad_bit, float& top, i64& arg, u32& bad,
                                                 u32& nan, ServingSmem& sm) {
  constexpr int N = VecTraits<T>::N;
  float t = -__int_as_float(0x7f800000);
  i64 a = V;
  u32 b = 0, n = 0;
  serving_row_vectors(row, V, aligned, [&](i64 g, const uint4& raw) {
    float v[N];
    VecTraits<T>::unpack(raw, v);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const i64 j = g * N + e;
      const float x = v[e];
      if (j >= V) break;
      if (serving_bad(x, logits)) b = bad_bit;
      if (x != x) {
        n = 1;
      } else if (x > t) {  // j grows within a thread: the first index of a tie stays
        t = x;
        a = j;
      }
    }
  });
  nan = serving_block_or(n, sm);
  bad = serving_block_or(b, sm);
  serving_block_argmax(t, a, sm);
  top = t;
  arg = a < V ? a : 0;
}

// Step 5: the last token, drawn from row tau: the residual max(0, q' - p') (q' when that sums to
// zero; `residual` false: the bonus row q'), summed in float64, then the inverse CDF (smallest j
// with cumsum(r)[j] > coin * sum(r), never a zero-weight token; a threshold rounded past the end
// takes the last positive token). d_row is the draft row tau (null without one).
//
// One pass over the row with every lane keeping kServingDrawLoads vectors of each row in flight:
// the row is cut into at most kServingDrawUnits units of consecutive vectors, each warp sums its
// units (a lane's vectors in float64, then the warp in a fixed order) into sm.units, and the
// inverse CDF runs on those sums; only the unit where the threshold is crossed is read again.
// (Walking the row tile by tile, a block reduction per tile with one load per lane in flight,
// made the draw a chain of a few dozen dependent steps on one SM.) Out of line: inlined, the
// loads in flight push the kernels past 128 registers into spills.
template <typename T, typename Probs>
__device__ __noinline__ i64 serving_draw_last(const T* q_row, const T* d_row, const ServingDist& qd,
                                 const Probs& probs, bool has_draft, i64 x_tau, bool residual,
                                 float coin, i64 V, bool aligned, ServingSmem& sm) {
  constexpr int N = VecTraits<T>::N;
  constexpr int L = kServingDrawLoads;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  const i64 nvec = (V + N - 1) / N;
  // a unit: `per_unit` consecutive vectors, a multiple of 32 * L (one round of loads per warp)
  const i64 round = 32 * L;
  i64 per_unit = (nvec + kServingDrawUnits - 1) / kServingDrawUnits;
  per_unit = (per_unit + round - 1) / round * round;
  const int units = (int)((nvec + per_unit - 1) / per_unit);
  // The draft row's vector is read only where the target vector has mass: r = max(0, q' - p')
  // needs p' only where q' > 0, and under top-k / top-p few elements have it.
  auto has_mass = [&](const uint4& raw, i64 g) {
    float vq[N];
    VecTraits<T>::unpack(raw, vq);
    bool any = false;
#pragma unroll
    for (int e = 0; e < N; ++e) any |= g * N + e < V && serving_key(vq[e]) >= qd.cut;
    return any && qd.z > 0.0;
  };
  auto values = [&](i64 g, const uint4& raw_q, const uint4& raw_d, double* r) {
    float vq[N], vd[N];
    VecTraits<T>::unpack(raw_q, vq);
    VecTraits<T>::unpack(raw_d, vd);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const i64 j = g * N + e;
      r[e] = j < V ? serving_last(vq[e], vd[e], j, probs, has_draft, x_tau, residual) : 0.0;
    }
  };
  // r of this lane's vectors g0, g0 + 32, ... (L of them), summed in float64 (added one by one:
  // `values`' r[N] array here spills the ServingTableProbs instantiations)
  auto lane_sum = [&](i64 g0) {
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    uint4 rq[L], rd[L];
#pragma unroll
    for (int i = 0; i < L; ++i) {
      const i64 g = g0 + 32 * i;
      rq[i] = g < nvec ? load_raw<T>(q_row, g, V, aligned) : zero;
    }
#pragma unroll
    for (int i = 0; i < L; ++i) {
      const i64 g = g0 + 32 * i;
      const bool need = d_row != nullptr && residual && g < nvec && has_mass(rq[i], g);
      rd[i] = need ? load_raw<T>(d_row, g, V, aligned) : zero;
    }
    double acc = 0.0;
#pragma unroll
    for (int i = 0; i < L; ++i) {
      float vq[N], vd[N];
      VecTraits<T>::unpack(rq[i], vq);
      VecTraits<T>::unpack(rd[i], vd);
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const i64 j = (g0 + 32 * i) * N + e;
        if (j < V) acc += serving_last(vq[e], vd[e], j, probs, has_draft, x_tau, residual);
      }
    }
    return acc;
  };

  double total = 0.0, before = 0.0;  // before: this thread's exclusive prefix of the unit sums
  int first_u = 0, last_u = 0;       // this thread's units [first_u, last_u)
  for (int pass = 0; pass < 2; ++pass) {
    for (int u = warp; u < units; u += nw) {
      double acc = 0.0;
      for (i64 g0 = (i64)u * per_unit + lane; g0 < (i64)(u + 1) * per_unit; g0 += round) {
        acc += lane_sum(g0);
      }
      acc = warp_sum(acc);
      if (lane == 0) sm.units[u] = acc;
    }
    __syncthreads();
    // the total, in unit order: thread t sums units [first_u, last_u), then a block scan
    first_u = (int)((i64)units * tid / (int)blockDim.x);
    last_u = (int)((i64)units * (tid + 1) / (int)blockDim.x);
    double mine = 0.0;
    for (int u = first_u; u < last_u; ++u) mine += sm.units[u];
    before = serving_block_prefix(mine, total, sm);
    if (!(residual && !(total > 0.0))) break;
    residual = false;  // an empty residual falls back to q'
  }

  // the unit where the threshold is crossed (else, rounding, the last unit with mass)
  const double thr = (double)coin * total;
  int cross_u = units, last_mass_u = -1;
  double run = before, cross_before = 0.0, last_mass_before = 0.0;
  for (int u = first_u; u < last_u; ++u) {
    const double s = sm.units[u];
    if (s > 0.0) {
      if (cross_u == units && run + s > thr) {
        cross_u = u;
        cross_before = run;
      }
      last_mass_u = u;
      last_mass_before = run;
    }
    run += s;
  }
  // (the block reductions' barriers also end every thread's reads of sm.units)
  const int cu = (int)serving_block_min((i64)cross_u, sm);
  const int lu = cu == units ? (int)serving_block_max((i64)last_mass_u, sm) : cu;
  if (lu < 0) return 0;  // no mass at all (the callers rule that out)
  if (cu != units ? cross_u == cu : last_mass_u == lu) {
    sm.units[0] = cu != units ? cross_before : last_mass_before;  // the prefix before the unit
  }
  __syncthreads();
  cross_before = sm.units[0];
  cross_u = lu;

  // that unit, tile by tile (one vector per thread, in index order)
  const i64 u_end = (i64)(cross_u + 1) * per_unit < nvec ? (i64)(cross_u + 1) * per_unit : nvec;
  double running = cross_before;
  i64 token = -1, last_pos = -1;
  for (i64 g0 = (i64)cross_u * per_unit; g0 < u_end; g0 += blockDim.x) {
    const i64 g = g0 + tid;
    double r[N];
    if (g < u_end) {
      const uint4 raw_q = load_raw<T>(q_row, g, V, aligned);
      const bool need = d_row != nullptr && residual && has_mass(raw_q, g);
      values(g, raw_q, need ? load_raw<T>(d_row, g, V, aligned) : make_uint4(0u, 0u, 0u, 0u), r);
    } else {
#pragma unroll
      for (int e = 0; e < N; ++e) r[e] = 0.0;
    }
    double s = 0.0;
    i64 pos = -1;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      s += r[e];
      if (r[e] > 0.0) pos = g * N + e;
    }
    double tile;
    double c = running + serving_block_prefix(s, tile, sm);
    i64 cross = (i64)1 << 62;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      c += r[e];
      if (r[e] > 0.0 && c > thr && cross == ((i64)1 << 62)) cross = g * N + e;
    }
    cross = serving_block_min(cross, sm);
    const i64 tile_last = serving_block_max(pos, sm);
    if (tile_last >= 0) last_pos = tile_last;
    if (cross != ((i64)1 << 62)) {
      token = cross;
      break;
    }
    running += tile;
  }
  return token >= 0 ? token : (last_pos >= 0 ? last_pos : 0);
}

// A request's status: its parameter bits, then the bits of the values it owns (`bad`, OR-ed over
// the block) and, for a sampling request, a target row without mass (`empty`).
__device__ __forceinline__ u32 serving_flags(u32 params, u32 bad, u32 empty, bool greedy) {
  u32 flags = params | (bad & (kBadDraftId | kBadTarget));
  if (!greedy) {
    flags |= bad & (kBadUniform | kBadDraft);
    if (empty) flags |= kZeroRow;
  }
  return flags;
}

// Step 3, a greedy request: the drafts are accepted while they equal their row's argmax (sm.amax);
// returns the position of the last token, whose token is sm.amax there.
__device__ __forceinline__ int serving_greedy_chain(int nd, const ServingSmem& sm) {
  for (int k = 0; k < nd; ++k) {
    if (sm.ids[k] != sm.amax[k]) return k;
  }
  return nd;
}

// The outputs of request b: drafts 0..n_out-1, then `last` (n_out + 1 tokens, -1 after), or a
// flagged request's -1s and its status.
__device__ __forceinline__ void serving_write(i64 b, int K, u32 flags, int n_out, i64 last,
                                              i64* out_tokens, i64* out_num, int* out_status,
                                              const ServingSmem& sm) {
  i64* tok = out_tokens + b * (i64)(K + 1);
  for (int k = threadIdx.x; k <= K; k += blockDim.x) {
    tok[k] = flags ? -1 : (k < n_out ? sm.ids[k] : (k == n_out ? last : -1));
  }
  if (threadIdx.x == 0) {
    out_num[b] = flags ? 0 : n_out + 1;
    out_status[b] = (int)flags;
  }
}

// ---------------------------------------------------------------------------------------------
// The request, one block
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ void verify_serving(const void* ids, int ids64, const i64* num_draft, const T* target,
                               const T* draft, const float* temperature, const i64* top_k_ptr,
                               const float* top_p_ptr, const int* param_flags,
                               const ServingCoins& coins, i64* out_tokens, i64* out_num,
                               int* out_status, i64 V, int K, bool tlogits, bool has_draft,
                               bool dlogits, bool aligned, ServingSmem& sm) {
  const i64 b = blockIdx.x;
  const int tid = threadIdx.x;
  const int nd = (int)__ldg(num_draft + b);
  const float temp_f = __ldg(temperature + b);
  const bool greedy = temp_f == 0.0f;
  const double temp = (!greedy && temp_f > 0.0f) ? (double)temp_f : 1.0;
  const i64 top_k = __ldg(top_k_ptr + b);
  const float top_p = __ldg(top_p_ptr + b);

  // Step 1: ids and coins.
  u32 bad = serving_ids_coins(ids, ids64, K, b, nd, greedy, coins, V, sm);

  // Step 2: every owned row once.
  const T* q_base = target + b * (i64)(K + 1) * V;
  const T* d_base = has_draft ? draft + b * (i64)K * V : nullptr;
  u32 empty = 0;
  for (int k = 0; k <= nd; ++k) {
    float top;
    i64 arg;
    u32 row_bad, nan;
    serving_scan_row(q_base + (i64)k * V, V, aligned, tlogits, kBadTarget, top, arg, row_bad, nan, sm);
    bad |= row_bad;
    const bool no_mass = tlogits ? !(top >= -kFloatMax) : !(top > 0.0f);
    if (!nan && no_mass) empty = 1;
    if (tid == 0) {
      sm.top[k] = top;
      sm.amax[k] = arg;
    }
    if (has_draft && !greedy && k < nd) {
      float dtop;
      u32 dnan;
      serving_scan_row(d_base + (i64)k * V, V, aligned, dlogits, kBadDraft, dtop, arg, row_bad, dnan, sm);
      bad |= row_bad;
      if (tid == 0) sm.dtop[k] = dtop;
    }
  }
  bad = serving_block_or(bad, sm);  // also orders the shared-memory writes above
  const u32 flags = serving_flags((u32)__ldg(param_flags + b), bad, empty, greedy);
  if (flags) {
    serving_write(b, K, flags, 0, 0, out_tokens, out_num, out_status, sm);
    return;
  }

  // Step 3: greedy.
  int n_out = nd;  // the position of the last token
  i64 last = 0;
  if (greedy) {
    n_out = serving_greedy_chain(nd, sm);
    last = sm.amax[n_out];
  } else {
    // Step 4: row after row until the first rejection.
    ServingDist qd, dd;
    dd.top = 0.0f;
    dd.cut = 0u;
    dd.z = 0.0;
    int tau = nd;
    for (int k = 0; k <= nd; ++k) {
      qd = serving_row_dist(q_base + (i64)k * V, V, aligned, sm.top[k], temp, tlogits, top_k, top_p, sm);
      if (k == nd) break;
      const i64 x = sm.ids[k];
      const double q_at = serving_prob(VecTraits<T>::load1(q_base + (i64)k * V + x), qd, temp, tlogits);
      double p_at = 1.0;
      if (has_draft) {
        const float dv = VecTraits<T>::load1(d_base + (i64)k * V + x);
        if (dlogits) {
          dd = serving_row_dist(d_base + (i64)k * V, V, aligned, sm.dtop[k], temp, true, top_k, top_p, sm);
          p_at = serving_prob(dv, dd, temp, true);
        } else {
          p_at = (double)dv;
        }
      }
      if (!((double)sm.coin[k] * p_at < q_at)) {
        tau = k;
        break;
      }
    }
    n_out = tau;

    // Step 5: the last row.
    const T* d_row = (has_draft && tau < nd) ? d_base + (i64)tau * V : nullptr;
    const ServingDirectProbs probs{qd, dd, temp, tlogits, dlogits};
    last = serving_draw_last<T>(q_base + (i64)tau * V, d_row, qd, probs, has_draft,
                                tau < nd ? sm.ids[tau] : -1, tau < nd, sm.coin[nd], V, aligned, sm);
  }
  serving_write(b, K, 0, n_out, last, out_tokens, out_num, out_status, sm);
}

// ---------------------------------------------------------------------------------------------
// Entry point: grid = B blocks of kServingThreads threads. Parameters one by one (CuPy packs
// scalars and pointers, not structs). coins: kServingCoins*; seed / offset (or, when `captured`,
// *seed_ptr and *offset_ptr + offset_intragraph) key the generator stream.
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kServingThreads) verify_serving_kernel(
    const void* ids, int ids64, const i64* num_draft, const T* target, const T* draft,
    const float* temperature, const i64* top_k, const float* top_p, const int* param_flags,
    const float* uniforms, const i64* seeds, const i64* offsets, u64 seed, u64 offset,
    const i64* seed_ptr, const i64* offset_ptr, u64 offset_intragraph, int captured, i64* out_tokens,
    i64* out_num, int* out_status, i64 V, int K, int target_logits, int has_draft, int draft_logits,
    int coins, int aligned) {
  __shared__ ServingSmem sm;
  const ServingCoins c{coins,  uniforms,   seeds,      offsets,           seed,
                       offset, seed_ptr,   offset_ptr, offset_intragraph, captured};
  verify_serving<T>(ids, ids64, num_draft, target, draft, temperature, top_k, top_p, param_flags, c,
                    out_tokens, out_num, out_status, V, K, target_logits != 0, has_draft != 0,
                    draft_logits != 0, aligned != 0, sm);
}

}  // namespace specsample
