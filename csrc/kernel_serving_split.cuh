// specsample verify kernel: the serving entry point spread over one block per row
// (verify_serving_split_kernel). Part of the kernel that verify_kernel.cuh assembles; like it,
// this file includes no system header, so NVRTC compiles it as it is.
//
// The one-block kernel (kernel_serving.cuh) walks a request's rows in sequence on one SM, and for
// every sampling row runs radix selections whose passes evaluate a float64 weight per element:
// compute-bound, milliseconds per call. Here a row's distribution is what it is independently of
// the accept decisions, so every row gets its own block, and for 16-bit rows the block never
// evaluates a weight per element:
//
//   grid (B, 2K+1, chunks), kServingThreads threads. Block (b, s, 0) owns target row s (s <= K) or
//   draft row s - K - 1 of request b, if the request owns that row (the others only count
//   themselves); at small batch a row counted by value is shared by `chunks` blocks (section 1b).
//   1. One pass over the row. A row whose distribution is needed (sampling request; target row,
//      or draft row given as logits) in a 16-bit dtype is counted by value: a histogram over the
//      65536 ordered 16-bit keys in shared memory (two 16-bit counts per word; the no-mass value,
//      -inf logits or zero probabilities, counted apart), one key and one shared-memory atomic
//      per element; its bad values, NaNs and maximum are read off the counts. Other rows: bad
//      values, maximum and first argmax (serving_scan_row's).
//   2. The distribution (top, cut, z) from the counts alone: top-k's cut from the counts, then the
//      distinct keys in use compacted into a list after the histogram so that the threads share
//      their float64 weights w(v) evenly (serving_weight, each distinct value once), z =
//      sum count(v) w(v), top-p's cut and the kept mass from the masses above each key, all with
//      fixed-order block scans (the same bits run after run). float32 rows, and a 16-bit row
//      where one value occurs 65536 times or more (a count would overflow, detected from the
//      totals), take the radix selections of the one-block kernel instead.
//   3. The row's record (top, cut, z, argmax, its status bits) to a workspace; the block that
//      brings the request's counter to 2K+1 resets it and finishes the request alone: ids and
//      coins, the status, the greedy chain or the accept tests (one thread per draft), and the
//      last token from row tau as the one-block kernel draws it (serving_draw_last), with q' and
//      p' of 16-bit rows looked up in tables of the kept keys (section 3).
//
// Same definitions, same float64 weights and accept tests; only the order of z's additions
// differs from the one-block kernel (both within float64 rounding of the reference's). The
// workspace belongs to one stream, so the launchers never use this kernel under CUDA-graph
// capture (nor with SPECSAMPLE_SERVING_SPLIT=0).
#pragma once

#include "kernel_serving.cuh"

namespace specsample {

// The histogram: 65536 16-bit keys, two 16-bit counts per 32-bit word, and one padding word per
// 64 so that thread t's 64 consecutive words (the scans' layout at 512 threads) fall in distinct
// banks across a warp.
constexpr int kServingHistWords = 32768;
constexpr int kServingHistPhys = kServingHistWords + kServingHistWords / 64;
constexpr int kServingHistBytes = kServingHistPhys * 4;
// Distinct keys the weight list after the histogram holds (u64 each; the histogram's space then
// holds their float64 weights): the largest that keeps the block within 227 KB of shared memory.
constexpr int kServingListCap = 10240;
constexpr int kServingDynamicBytes = kServingHistBytes + kServingListCap * 8;
// float64 entries of the last row's probability tables (section 3), in the same space
constexpr int kServingTableCap = kServingDynamicBytes / 8;
// u64 words of one row's record in the workspace: z, (top, cut), argmax, (status bits, empty)
constexpr int kServingRecordWords = 4;
constexpr u32 kServingNoKey = 0xffffffffu;

__device__ __forceinline__ int serving_hist_index(u32 word) { return (int)(word + (word >> 6)); }

#if defined(SPECSAMPLE_CUDA_HOST_EMULATION)
alignas(16) inline u32 emu_serving_hist[kServingDynamicBytes / 4];
inline long long emu_serving_radix_rows = 0;  // 16-bit rows that left the histogram path
__device__ __forceinline__ u32* serving_hist_smem() { return emu_serving_hist; }
#else
__device__ __forceinline__ u32* serving_hist_smem() {
  extern __shared__ __align__(16) u32 serving_dynamic_smem[];
  return serving_dynamic_smem;
}
#endif

// The ordered 16-bit key of a float16 / bfloat16 bit pattern (not NaN): a < b iff key(a) <
// key(b); -0.0 and 0.0 share 0x8000, so key 0 (a NaN pattern) never occurs.
__device__ __forceinline__ u32 serving_key16(u32 h) {
  if ((h & 0x7fffu) == 0) return 0x8000u;
  return (h & 0x8000u) ? (~h & 0xffffu) : (h | 0x8000u);
}

template <typename T>
__device__ __forceinline__ constexpr bool serving_is_bf16() {
  return false;
}
template <>
__device__ __forceinline__ constexpr bool serving_is_bf16<bf16>() {
  return true;
}

// The value of a 16-bit key (the inverse of serving_key16; 0x8000 gives +0.0).
__device__ __forceinline__ u32 serving_key16_bits(u32 key) {
  return (key & 0x8000u) ? (key & 0x7fffu) : (~key & 0xffffu);
}
template <typename T>
__device__ __forceinline__ float serving_key16_value(u32 key);
template <>
__device__ __forceinline__ float serving_key16_value<bf16>(u32 key) {
  return __uint_as_float(serving_key16_bits(key) << 16);
}
template <>
__device__ __forceinline__ float serving_key16_value<f16>(u32 key) {
  return half_bits_to_float(serving_key16_bits(key));
}
template <>
__device__ __forceinline__ float serving_key16_value<float>(u32) {  // never called: no histogram
  return 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Block scans in a fixed order (warp shuffles, then the warps in index order)
// ---------------------------------------------------------------------------------------------
// Exclusive suffix sum over the threads (the sum of x over threads with a larger index) and the
// block total. Integer or double; the same additions every run.
template <typename Acc>
__device__ __forceinline__ Acc serving_block_suffix(Acc x, Acc& total, double* slots) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  Acc incl = x;  // inclusive suffix within the warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const Acc y = __shfl_down_sync(0xffffffffu, incl, o);
    if (lane + o < 32) incl += y;
  }
  Acc excl = __shfl_down_sync(0xffffffffu, incl, 1);
  if (lane == 31) excl = 0;
  if (lane == 0) {
    Acc* s = reinterpret_cast<Acc*>(slots);
    s[warp] = incl;
  }
  __syncthreads();
  const Acc* s = reinterpret_cast<const Acc*>(slots);
  Acc above = 0, all = 0;
  for (int w = nw - 1; w >= 0; --w) {
    if (w == warp) above = all;
    all += s[w];
  }
  __syncthreads();
  total = all;
  return above + excl;
}

// ---------------------------------------------------------------------------------------------
// 1. The row pass with the histogram
// ---------------------------------------------------------------------------------------------
// The 16-bit key of +inf (NaN keys lie above it and below the key of -inf).
template <typename T>
__device__ __forceinline__ u32 serving_key16_pinf() {
  return serving_is_bf16<T>() ? 0xff80u : 0xfc00u;
}

// The raw ordered keys of the two 16-bit values packed in `w` (low half first): serving_key16
// without its -0.0 case, two at a time (-0.0 gets 0x7fff, one below +0.0's 0x8000;
// serving_fold_negative_zero moves its count afterwards).
__device__ __forceinline__ u32 serving_raw_keys16x2(u32 w) {
  return w ^ (0x80008000u | (((w >> 15) & 0x00010001u) * 0x7fffu));
}

// Whether the histogram may count a row: each thread counts its elements of the row's no-mass
// value in one 16-bit half of a word of its own (below), so no thread may see 65536 elements.
template <typename T>
__device__ __forceinline__ bool serving_countable(i64 V) {
  constexpr int N = VecTraits<T>::N;
  const i64 nvec = (V + N - 1) / N;
  return (nvec + blockDim.x - 1) / blockDim.x * N < 65536;
}

// Counts every element of the row's 16-byte vectors [g_lo, g_hi) into `hist` (zeroed) by its raw
// 16-bit key, except the row's no-mass value (-inf logits, +0.0 probabilities: key `special`),
// whose atomics go to a word of the thread's own after the histogram (the list's space, unused
// until the distribution); returns the block's count of those. Per element: the key (two per
// packed word), the word's address or the thread's own, one shared-memory atomic; no branch. The
// checks and the maximum are read off the counts afterwards (serving_hist_summary), once -0.0's
// count is folded (serving_fold_negative_zero).
template <typename T>
__device__ __forceinline__ i64 serving_count_row(const T* row, i64 V, bool aligned, i64 g_lo,
                                                 i64 g_hi, u32 special, u32* hist, ServingSmem& sm) {
  constexpr int N = VecTraits<T>::N;  // 8
  u32* own = hist + kServingHistPhys + threadIdx.x;
  *own = 0u;  // (only this thread touches it until the block scan below)
  auto count = [&](u32 key) {
    u32* at = key == special ? own : hist + serving_hist_index(key >> 1);
    atomicAdd(at, 1u + (key & 1u) * 0xffffu);  // the key's 16-bit half
  };
  serving_row_vectors_in(row, V, aligned, g_lo, g_hi, [&](i64 g, const uint4& raw) {
    const u32 w4[4] = {raw.x, raw.y, raw.z, raw.w};
    if (g * N + N <= V) {  // every vector but a short last one
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const u32 keys = serving_raw_keys16x2(w4[p]);
        count(keys & 0xffffu);
        count(keys >> 16);
      }
    } else {
#pragma unroll
      for (int e = 0; e < N; ++e) {
        if (g * N + e < V) count((serving_raw_keys16x2(w4[e >> 1]) >> (16 * (e & 1))) & 0xffffu);
      }
    }
  });
  const u32 mine = *own >> (16u * (special & 1u));
  i64 all;
  serving_block_suffix<i64>((i64)mine, all, reinterpret_cast<double*>(sm.red));
  return all;
}

// -0.0's count, kept under its raw key 0x7fff by serving_count_row, joins +0.0's (logits: the
// value 0) or the no-mass count (probabilities: returned, to add to it). A carry out of +0.0's
// half is seen as any overflow is (the counts no longer add up).
__device__ __forceinline__ i64 serving_fold_negative_zero(u32* hist, bool logits) {
  u32* neg = hist + serving_hist_index(0x7fffu >> 1);
  const u32 word = *neg;
  const u32 c = word >> 16;
  __syncthreads();  // every thread has read it
  if (threadIdx.x == 0 && c != 0) {
    *neg = word & 0xffffu;
    if (logits) hist[serving_hist_index(0x8000u >> 1)] += c;
  }
  __syncthreads();
  return logits ? 0 : (i64)c;
}

// What the counts say about the row: whether they add up to the elements counted (else a count
// overflowed), a bad value (logits: NaN or +inf; probabilities: also -inf or negative), a NaN,
// and the largest key with mass (kServingNoKey: none).
struct ServingHistSummary {
  bool complete;
  u32 bad;
  u32 nan;
  u32 top_key;
};

template <typename T>
__device__ ServingHistSummary serving_hist_summary(const u32* hist, i64 counted, bool logits,
                                                   ServingSmem& sm) {
  const int W = kServingHistWords / (int)blockDim.x;
  const u32 w0 = (u32)threadIdx.x * (u32)W;
  const u32 pinf = serving_key16_pinf<T>();
  const u32 ninf = ~(serving_key16_bits(pinf) | 0x8000u) & 0xffffu;  // the key of -inf
  const u32 lo_ok = logits ? ninf + 1u : 0x8001u;                    // keys with mass: [lo_ok, pinf)
  i64 mine = 0;
  u32 bad = 0, nan = 0, top = 0;
  for (int i = 0; i < W; ++i) {
    const u32 word = hist[serving_hist_index(w0 + (u32)i)];
    if (word == 0) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const u32 cnt = half ? (word >> 16) : (word & 0xffffu);
      const u32 key = 2u * (w0 + (u32)i) + (u32)half;
      if (cnt == 0) continue;
      mine += cnt;
      if (key > pinf || key < ninf) nan = 1;
      if (key >= pinf || key < lo_ok) bad = 1;  // (the no-mass value is counted apart)
      if (key >= lo_ok && key < pinf) top = key;
    }
  }
  i64 total;
  serving_block_suffix<i64>(mine, total, reinterpret_cast<double*>(sm.red));
  ServingHistSummary r;
  r.complete = total == counted;
  r.bad = serving_block_or(bad, sm);
  r.nan = serving_block_or(nan, sm);
  const u32 t = (u32)serving_block_max((i64)top, sm);
  r.top_key = t == 0 ? kServingNoKey : t;
  return r;
}

// ---------------------------------------------------------------------------------------------
// 1b. A row counted by several blocks
// ---------------------------------------------------------------------------------------------
// A batch with fewer rows than the GPU has SMs would leave most SMs idle while one block per row
// counts 128K elements. The launcher then gives every row `chunks` blocks (grid z): block c
// counts its share of the row's vectors into its own histogram, adds the nonzero words into the
// row's histogram in global memory and marks the 64-word segments it touched; the block that
// arrives last copies the marked segments into its shared memory, leaves the global words zeroed,
// and goes on as the row's only block would. The counts are integers, so the merged histogram is
// the same whichever block arrives last. Rows that are not counted by value take one block (c = 0).
//
// The rows' space (ws_rows, zeroed by the launcher, left zeroed): per row of the batch
// (request-major), kServingHistWords words of histogram, then the arrival counter, the count of
// no-mass elements and kServingChunkMaskWords words of segment bits, padded to
// kServingChunkRowStride words.
constexpr int kServingChunkMax = 8;
constexpr int kServingChunkSegments = kServingHistWords / 64;
constexpr int kServingChunkMaskWords = kServingChunkSegments / 32;
constexpr int kServingChunkRowStride = kServingHistWords + 32;

struct ServingChunkRow {
  u32* hist;
  u32* arrivals;
  u32* apart;
  u32* mask;
};

__device__ __forceinline__ ServingChunkRow serving_chunk_row(u32* ws_rows, i64 r) {
  u32* base = ws_rows + r * kServingChunkRowStride;
  return {base, base + kServingHistWords, base + kServingHistWords + 1, base + kServingHistWords + 2};
}

// This block's counts into the row's histogram in global memory (one atomic per nonzero word),
// and the bits of the segments they touch.
__device__ __forceinline__ void serving_chunk_flush(const u32* hist, const ServingChunkRow& g) {
  const int W = kServingHistWords / (int)blockDim.x;  // a multiple of 64 (at most 512 threads)
  const u32 w0 = (u32)threadIdx.x * (u32)W;
  for (int s0 = 0; s0 < W; s0 += 64) {
    u32 any = 0;
    for (int i = s0; i < s0 + 64; ++i) {
      const u32 word = hist[serving_hist_index(w0 + (u32)i)];
      if (word != 0) atomicAdd(g.hist + w0 + i, word);
      any |= word;
    }
    const u32 seg = (w0 + (u32)s0) >> 6;
    if (any) atomicOr(g.mask + (seg >> 5), 1u << (seg & 31u));
  }
}

// The last block of a row: the row's counts into `hist` (its own are among them) and the global
// words zeroed for the next call; returns the row's count of no-mass elements.
__device__ __forceinline__ i64 serving_chunk_take(u32* hist, const ServingChunkRow& g) {
  const int W = kServingHistWords / (int)blockDim.x;
  const u32 w0 = (u32)threadIdx.x * (u32)W;
  for (int s0 = 0; s0 < W; s0 += 64) {
    const u32 seg = (w0 + (u32)s0) >> 6;
    // an unmarked segment: no block counted there, this one's words are zero as well
    if (!((__ldcg(g.mask + (seg >> 5)) >> (seg & 31u)) & 1u)) continue;
    uint4* src = reinterpret_cast<uint4*>(g.hist + w0 + s0);
#pragma unroll 4
    for (int j = 0; j < 16; ++j) {
      const uint4 v = __ldcg(src + j);
      __stcg(src + j, make_uint4(0u, 0u, 0u, 0u));
      const u32 w = w0 + (u32)s0 + 4u * (u32)j;  // the 4 words share a segment: no padding between
      u32* dst = hist + serving_hist_index(w);
      dst[0] = v.x;
      dst[1] = v.y;
      dst[2] = v.z;
      dst[3] = v.w;
    }
  }
  const i64 apart = (i64)__ldcg(g.apart);
  __syncthreads();  // every thread has read the bits and the count
  if ((int)threadIdx.x < kServingChunkMaskWords) g.mask[threadIdx.x] = 0u;
  if (threadIdx.x == 0) *g.apart = 0u;
  __syncthreads();  // the histogram is complete
  return apart;
}

// ---------------------------------------------------------------------------------------------
// 2. The distribution from the histogram
// ---------------------------------------------------------------------------------------------
// transform_row's (cut, z) from complete counts of a row with mass and no bad value: keys are
// visited from the largest down, each thread owning kServingHistWords / blockDim.x consecutive
// words.
template <typename T>
__device__ void serving_hist_dist(const u32* hist, i64 V, float top, double temp, bool logits,
                                  i64 top_k, float top_p, ServingDist& d, ServingSmem& sm,
                                  u32& shared_key, double& shared_z) {
  const int W = kServingHistWords / (int)blockDim.x;  // words per thread
  const u32 w0 = (u32)threadIdx.x * (u32)W;
  double* slots = reinterpret_cast<double*>(sm.red);
  auto count_of = [&](int i, int half) -> u32 {  // i: word within the thread's range
    const u32 word = hist[serving_hist_index(w0 + (u32)i)];
    return half ? (word >> 16) : (word & 0xffffu);
  };
  auto weight = [&](u32 key) -> double {
    return serving_weight(serving_key16_value<T>(key), top, temp, logits);
  };
  // Most threads' keys are all unused (a row's values fill a few binades: a few warps' ranges),
  // and the passes below skip them, so the warps with nothing to count skip whole passes.
  u32 used = 0;
  for (int i = 0; i < W; ++i) used |= hist[serving_hist_index(w0 + (u32)i)];

  // top-k's cut: the k-th largest value (a k beyond the values with mass keeps them all)
  u32 floor_key = 0;  // 0: no top-k cut (key 0 is a NaN's, never counted here)
  i64 mine = 0;
  if (top_k > 0 && top_k < V && used) {
    for (int i = 0; i < W; ++i) {
      const u32 word = hist[serving_hist_index(w0 + (u32)i)];
      mine += (word & 0xffffu) + (word >> 16);
    }
  }
  i64 total_count = 0;
  const i64 above_count =
      (top_k > 0 && top_k < V) ? serving_block_suffix<i64>(mine, total_count, slots) : 0;
  if (top_k > 0 && top_k < V && top_k <= total_count) {
    if (threadIdx.x == 0) shared_key = 0;
    __syncthreads();
    if (above_count < top_k && top_k <= above_count + mine) {
      i64 run = above_count;
      for (int i = W - 1; i >= 0 && run < top_k; --i) {
        for (int half = 1; half >= 0; --half) {
          run += count_of(i, half);
          if (run >= top_k) {
            shared_key = 2u * (w0 + (u32)i) + (u32)half;
            break;
          }
        }
      }
    }
    __syncthreads();
    floor_key = shared_key;
    __syncthreads();
  }

  // The keys with mass at or above the floor, largest first, as a list after the histogram, so
  // that their float64 weights are shared evenly by the threads (a thread's own 128 keys can all
  // be in use, 128 dependent weights on one thread). With more distinct values than the list
  // holds, each thread visits its own keys instead.
  int nz = 0;
  for (int i = 0; i < W && used; ++i) {
    const u32 word = hist[serving_hist_index(w0 + (u32)i)];
    const u32 key = 2u * (w0 + (u32)i);
    nz += ((word & 0xffffu) != 0 && key >= floor_key) + ((word >> 16) != 0 && key + 1u >= floor_key);
  }
  i64 entries;
  const i64 first = serving_block_suffix<i64>((i64)nz, entries, slots);
  const bool listed = entries <= kServingListCap;
  u64* list = reinterpret_cast<u64*>(const_cast<u32*>(hist) + kServingHistPhys);
  double* wts = reinterpret_cast<double*>(const_cast<u32*>(hist));  // once the list is built
  i64 lo = 0, hi = 0;  // this thread's slice of the list
  if (listed) {
    i64 pos = first;
    for (int i = W - 1; i >= 0 && used; --i) {
      for (int half = 1; half >= 0; --half) {
        const u32 cnt = count_of(i, half);
        const u32 key = 2u * (w0 + (u32)i) + (u32)half;
        if (cnt != 0 && key >= floor_key) list[pos++] = ((u64)key << 32) | cnt;
      }
    }
    __syncthreads();  // the histogram is no longer read: its space holds the weights
    const int n = (int)blockDim.x;
    const int chunk = n - 1 - (int)threadIdx.x;  // higher threads take the earlier (larger) keys
    lo = entries * chunk / n;
    hi = entries * (chunk + 1) / n;
  }
  // f(key, count, list index or -1) for this thread's keys, largest first, until f returns false
  auto for_each_key = [&](auto&& f) {
    if (listed) {
      for (i64 e = lo; e < hi; ++e) {
        if (!f((u32)(list[e] >> 32), (u32)(list[e] & 0xffffffffu), e)) return;
      }
      return;
    }
    for (int i = W - 1; i >= 0 && used; --i) {
      for (int half = 1; half >= 0; --half) {
        const u32 cnt = count_of(i, half);
        const u32 key = 2u * (w0 + (u32)i) + (u32)half;
        if (cnt != 0 && key >= floor_key && !f(key, cnt, (i64)-1)) return;
      }
    }
  };

  // masses: z, then top-p's cut and the kept mass
  double m = 0.0;
  u32 lowest = kServingNoKey;
  for_each_key([&](u32 key, u32 cnt, i64 e) {
    const double w = weight(key);
    if (e >= 0) wts[e] = w;
    m += (double)cnt * w;
    lowest = key;
    return true;
  });
  double z;
  const double above = serving_block_suffix<double>(m, z, slots);
  u32 cut = floor_key;
  double z_kept = z;
  if (top_p < 1.0f) {
    const double goal = (double)top_p * z;
    u32 cand = kServingNoKey;
    double run = above;
    for_each_key([&](u32 key, u32 cnt, i64 e) {
      if (!(run < goal)) return false;
      cand = key;
      run += (double)cnt * (e >= 0 ? wts[e] : weight(key));
      return true;
    });
    const u32 lowest_all = (u32)serving_block_min((i64)lowest, sm);
    const u32 c = (u32)serving_block_min((i64)cand, sm);
    if (c != kServingNoKey && c == cand) shared_z = run;
    __syncthreads();
    if (c != kServingNoKey && c > lowest_all) {  // else every value above the floor is kept
      cut = c;
      z_kept = shared_z;
    }
    __syncthreads();
  }
  d.top = top;
  d.cut = cut == 0 ? 0u : serving_key(serving_key16_value<T>(cut));
  d.z = z_kept;
}

// ---------------------------------------------------------------------------------------------
// 3. The last row's probabilities from tables
// ---------------------------------------------------------------------------------------------
// The last block draws the last token alone: serving_draw_last's passes evaluate q' (and p' for a
// residual) per element, float64 exp and divisions that the warp executes wherever one lane needs
// them. For 16-bit rows the kept values lie in a short range of 16-bit keys ([key of the cut, key
// of the maximum]; a few hundred under top-p), so the block first evaluates q' (and a draft row's
// p') once per key of that range into shared memory, and the passes look them up.

// The smallest 16-bit key in [key(-inf), key(+inf)] whose value's serving_key is >= `key32`
// (key(+inf) + 1 if none); serving_key of the values is nondecreasing over that range.
template <typename T>
__device__ __forceinline__ u32 serving_key16_at_least(u32 key32) {
  const u32 pinf = serving_key16_pinf<T>();
  u32 lo = ~(serving_key16_bits(pinf) | 0x8000u) & 0xffffu, hi = pinf + 1u;  // [lo, hi)
  while (lo < hi) {
    const u32 mid = (lo + hi) >> 1;
    if (serving_key(serving_key16_value<T>(mid)) >= key32) {
      hi = mid;
    } else {
      lo = mid + 1u;
    }
  }
  return lo;
}

// One row's q' (or p') for the keys [lo, lo + n), in `w`; keys below `mass_lo` have none, and
// the keys in [mass_lo, lo) (a range longer than the table) are evaluated one by one.
struct ServingKeyTable {
  const double* w;
  u32 lo;
  u32 n;
  u32 mass_lo;
};

// The keys a row's distribution can give mass to, [its cut (or the smallest value with mass),
// its maximum], the largest `cap` of them tabled; n = 0 without mass.
template <typename T>
__device__ __forceinline__ ServingKeyTable serving_key_range(const ServingDist& d, bool logits,
                                                             u32 cap) {
  ServingKeyTable t{nullptr, 0u, 0u, 0u};
  if (!(d.z > 0.0)) return t;
  const u32 floor32 = logits ? serving_key(-kFloatMax) : serving_key(__uint_as_float(1u));
  t.mass_lo = serving_key16_at_least<T>(d.cut > floor32 ? d.cut : floor32);
  const u32 hi = serving_key16_at_least<T>(serving_key(d.top));
  if (hi < t.mass_lo) return t;
  t.n = hi - t.mass_lo + 1u < cap ? hi - t.mass_lo + 1u : cap;
  t.lo = hi + 1u - t.n;
  return t;
}

template <typename T>
__device__ __forceinline__ void serving_fill_table(ServingKeyTable& t, double* w,
                                                   const ServingDist& d, double temp, bool logits) {
  for (u32 i = threadIdx.x; i < t.n; i += blockDim.x) {
    w[i] = serving_prob(serving_key16_value<T>(t.lo + i), d, temp, logits);
  }
  t.w = w;
}

// Out of line: rows whose kept range outgrows the table only (keeps the lookups' registers low).
inline __device__ __noinline__ double serving_prob_untabled(float x, const ServingDist& d,
                                                            double temp, bool logits) {
  return serving_prob(x, d, temp, logits);
}

// q' and p' by key: the same values as ServingDirectProbs (each table entry is its formula at
// that key's value; -0.0 shares +0.0's key and its weight), looked up.
template <typename T>
struct ServingTableProbs {
  ServingDirectProbs direct;
  ServingKeyTable qt, pt;
  __device__ __forceinline__ static double at(const ServingKeyTable& t, float x,
                                              const ServingDist& d, double temp, bool logits) {
    const u32 key =
        serving_key16(serving_is_bf16<T>() ? __float_as_uint(x) >> 16 : float_to_half_bits(x));
    if (key - t.lo < t.n) return t.w[key - t.lo];  // (keys below lo wrap past n)
    if (key < t.mass_lo) return 0.0;
    return serving_prob_untabled(x, d, temp, logits);
  }
  __device__ __forceinline__ double q(float x) const {
    return at(qt, x, direct.qd, direct.temp, direct.tlogits);
  }
  __device__ __forceinline__ double p(float x) const {
    return direct.dlogits ? at(pt, x, direct.dd, direct.temp, true) : (double)x;
  }
};

// ---------------------------------------------------------------------------------------------
// 4. The kernel
// ---------------------------------------------------------------------------------------------
struct ServingSplitSmem {
  ServingSmem base;
  ServingDist qd[kMaxK + 1];
  ServingDist dd[kMaxK];
  u32 key;
  double z;
  int is_last;
};

// u64 words of one request's records: 2K+1 rows.
__device__ __forceinline__ i64 serving_split_request_words(int K) {
  return (i64)(2 * K + 1) * kServingRecordWords;
}

template <typename T>
__device__ void verify_serving_split(const void* ids, int ids64, const i64* num_draft, const T* target,
                                     const T* draft, const float* temperature,
                                     const i64* top_k_ptr, const float* top_p_ptr,
                                     const int* param_flags, const ServingCoins& coins,
                                     i64* out_tokens, i64* out_num, int* out_status, i64 V, int K,
                                     bool tlogits, bool has_draft, bool dlogits, bool aligned,
                                     u64* ws, u32* ws_count, u32* ws_rows, int chunks,
                                     ServingSplitSmem& sp) {
  constexpr bool kHist = VecTraits<T>::N == 8;  // 16-bit types
  ServingSmem& sm = sp.base;
  const i64 b = blockIdx.x;
  const int s = (int)blockIdx.y;
  const int chunk = (int)blockIdx.z;
  const int tid = threadIdx.x;
  const int nd = (int)__ldg(num_draft + b);
  const float temp_f = __ldg(temperature + b);
  const bool greedy = temp_f == 0.0f;
  const double temp = (!greedy && temp_f > 0.0f) ? (double)temp_f : 1.0;
  const i64 top_k = __ldg(top_k_ptr + b);
  const float top_p = __ldg(top_p_ptr + b);
  const T* q_base = target + b * (i64)(K + 1) * V;
  const T* d_base = has_draft ? draft + b * (i64)K * V : nullptr;
  u64* req = ws + b * serving_split_request_words(K);

  // ---- 1, 2: this block's row --------------------------------------------------------------------
  const bool is_target = s <= K;
  const int k = is_target ? s : s - K - 1;
  const bool owned = is_target ? k <= nd : (!greedy && has_draft && k < nd);
  // counted by value (section 1) by `chunks` blocks (section 1b); every other row by block 0
  const bool chunked =
      kHist && owned && !greedy && (is_target || dlogits) && chunks > 1 && serving_countable<T>(V);
  if (!chunked && chunk != 0) return;
  if (owned) {
    const T* row = is_target ? q_base + (i64)k * V : d_base + (i64)k * V;
    const bool logits = is_target ? tlogits : dlogits;
    const u32 bad_bit = is_target ? kBadTarget : kBadDraft;
    const bool transform = !greedy && (is_target || dlogits);
    float top;
    i64 arg;
    u32 bad, nan;
    ServingDist d;
    d.top = 0.0f;
    d.cut = 0u;
    d.z = 0.0;
    bool need_dist = transform;  // still to compute, by radix
    // (`chunked`'s test without `chunks`, spelled out again: a flag kept live through the row's
    // passes costs the 16-bit kernels a spill at 128 registers)
    if (kHist && transform && serving_countable<T>(V)) {
      u32* hist = serving_hist_smem();
      for (int i = tid; i < kServingHistPhys / 4; i += blockDim.x) {
        reinterpret_cast<uint4*>(hist)[i] = make_uint4(0u, 0u, 0u, 0u);
      }
      __syncthreads();
      // the no-mass value: -inf logits, +-0.0 probabilities
      const u32 special = logits ? (~(serving_key16_bits(serving_key16_pinf<T>()) | 0x8000u) & 0xffffu) : 0x8000u;
      const i64 nvec = (V + VecTraits<T>::N - 1) / VecTraits<T>::N;
      i64 apart;
      if (chunked) {
        const i64 per = (nvec + chunks - 1) / chunks;
        const i64 g_lo = (i64)chunk * per < nvec ? (i64)chunk * per : nvec;
        const i64 g_hi = g_lo + per < nvec ? g_lo + per : nvec;
        const i64 mine = serving_count_row(row, V, aligned, g_lo, g_hi, special, hist, sm);
        const ServingChunkRow g = serving_chunk_row(ws_rows, b * (2 * K + 1) + s);
        serving_chunk_flush(hist, g);
        if (tid == 0 && mine != 0) atomicAdd(g.apart, (u32)mine);
        __threadfence();  // this block's counts are in before its arrival is
        __syncthreads();
        if (tid == 0) {
          const u32 seen = atomicAdd(g.arrivals, 1u);
          sp.is_last = seen == (u32)(chunks - 1) ? 1 : 0;
          if (sp.is_last) *g.arrivals = 0u;
        }
        __syncthreads();
        if (!sp.is_last) return;
        __threadfence();  // acquire: the other blocks' counts, announced by their arrivals
        apart = serving_chunk_take(hist, g);
      } else {
        apart = serving_count_row(row, V, aligned, 0, nvec, special, hist, sm);
      }
      apart += serving_fold_negative_zero(hist, logits);
      const ServingHistSummary h = serving_hist_summary<T>(hist, V - apart, logits, sm);
      if (h.complete) {
        bad = h.bad ? bad_bit : 0u;
        nan = h.nan;
        arg = 0;  // (a sampling row's argmax is not used)
        top = h.top_key != kServingNoKey ? serving_key16_value<T>(h.top_key)
                                         : (logits ? -__int_as_float(0x7f800000) : 0.0f);
        const bool no_mass = h.top_key == kServingNoKey;
        if (!bad && !no_mass) {
          serving_hist_dist<T>(hist, V, top, temp, logits, top_k, top_p, d, sm, sp.key, sp.z);
        }
        need_dist = false;
      } else {  // a count overflowed: the plain pass, then radix selections
#if defined(SPECSAMPLE_CUDA_HOST_EMULATION)
        if (tid == 0) ++emu_serving_radix_rows;  // (the CPU tests check which rows come here)
#endif
        serving_scan_row(row, V, aligned, logits, bad_bit, top, arg, bad, nan, sm);
      }
    } else {
      serving_scan_row(row, V, aligned, logits, bad_bit, top, arg, bad, nan, sm);
    }
    const bool no_mass = logits ? !(top >= -kFloatMax) : !(top > 0.0f);
    if (need_dist && !bad && !no_mass) {
      d = serving_row_dist(row, V, aligned, top, temp, logits, top_k, top_p, sm);
    }
    if (tid == 0) {
      const u32 empty = (is_target && !nan && no_mass) ? 1u : 0u;
      __stcg(req + (i64)s * kServingRecordWords + 0, (u64)__double_as_longlong(d.z));
      __stcg(req + (i64)s * kServingRecordWords + 1, (u64)__float_as_uint(top) | ((u64)d.cut << 32));
      // (a sampling row's argmax is not used: not kept live through its radix selections)
      __stcg(req + (i64)s * kServingRecordWords + 2, transform ? (u64)0 : (u64)arg);
      __stcg(req + (i64)s * kServingRecordWords + 3, (u64)bad | ((u64)empty << 32));
    }
  }
  __threadfence();  // this block's record is visible GPU-wide before the count announces it
  __syncthreads();
  if (tid == 0) {
    const u32 seen = atomicAdd(&ws_count[b], 1u);
    sp.is_last = seen == (u32)(2 * K) ? 1 : 0;
    if (sp.is_last) ws_count[b] = 0;  // every block of this call has counted: ready for the next
  }
  __syncthreads();
  if (!sp.is_last) return;
  __threadfence();  // acquire: the other blocks' records, announced by their counts

  // ---- 3. the request ----------------------------------------------------------------------------
  u32 bad = serving_ids_coins(ids, ids64, K, b, nd, greedy, coins, V, sm);
  u32 empty = 0;
  for (int r = tid; r < 2 * K + 1; r += blockDim.x) {
    const bool tgt = r <= K;
    const int kk = tgt ? r : r - K - 1;
    if (!(tgt ? kk <= nd : (!greedy && has_draft && kk < nd))) continue;
    const u64 w0 = __ldcg(req + (i64)r * kServingRecordWords + 0);
    const u64 w1 = __ldcg(req + (i64)r * kServingRecordWords + 1);
    const u64 w2 = __ldcg(req + (i64)r * kServingRecordWords + 2);
    const u64 w3 = __ldcg(req + (i64)r * kServingRecordWords + 3);
    ServingDist d;
    d.z = __longlong_as_double((long long)w0);
    d.top = __uint_as_float((u32)(w1 & 0xffffffffu));
    d.cut = (u32)(w1 >> 32);
    bad |= (u32)(w3 & 0xffffffffu);
    if (tgt) {
      empty |= (u32)(w3 >> 32);
      sp.qd[kk] = d;
      sm.amax[kk] = (i64)w2;
    } else {
      sp.dd[kk] = d;
    }
  }
  bad = serving_block_or(bad, sm);  // also orders the shared-memory writes above
  empty = serving_block_or(empty, sm);
  const u32 flags = serving_flags((u32)__ldg(param_flags + b), bad, empty, greedy);
  if (flags) {
    serving_write(b, K, flags, 0, 0, out_tokens, out_num, out_status, sm);
    return;
  }
  int n_out = nd;
  i64 last = 0;
  if (greedy) {
    n_out = serving_greedy_chain(nd, sm);
    last = sm.amax[n_out];
  } else {
    // the accept tests, one thread per draft; tau = the first rejection
    i64 first = nd;
    for (int kk = tid; kk < nd; kk += blockDim.x) {
      const i64 x = sm.ids[kk];
      const double q_at = serving_prob(VecTraits<T>::load1(q_base + (i64)kk * V + x), sp.qd[kk], temp, tlogits);
      double p_at = 1.0;
      if (has_draft) {
        const float dv = VecTraits<T>::load1(d_base + (i64)kk * V + x);
        p_at = dlogits ? serving_prob(dv, sp.dd[kk], temp, true) : (double)dv;
      }
      if (!((double)sm.coin[kk] * p_at < q_at) && kk < first) first = kk;
    }
    const int tau = (int)serving_block_min(first, sm);
    n_out = tau;
    ServingDist dd;
    dd.top = 0.0f;
    dd.cut = 0u;
    dd.z = 0.0;
    if (has_draft && dlogits && tau < nd) dd = sp.dd[tau];
    const T* d_row = (has_draft && tau < nd) ? d_base + (i64)tau * V : nullptr;
    const ServingDist qd = sp.qd[tau];
    const ServingDirectProbs direct{qd, dd, temp, tlogits, dlogits};
    const bool residual = tau < nd;
    const i64 x_tau = residual ? sm.ids[tau] : -1;
    const i64 t_row = (i64)tau * V;
    if constexpr (kHist) {
      constexpr u32 cap = kServingTableCap / 2;  // each row's share of the tables
      ServingTableProbs<T> probs{direct, serving_key_range<T>(qd, tlogits, cap), {}};
      if (residual && has_draft && dlogits) probs.pt = serving_key_range<T>(dd, true, cap);
      double* w = reinterpret_cast<double*>(serving_hist_smem());
      serving_fill_table<T>(probs.qt, w, qd, temp, tlogits);
      serving_fill_table<T>(probs.pt, w + cap, dd, temp, true);
      __syncthreads();
      last = serving_draw_last<T>(q_base + t_row, d_row, qd, probs, has_draft, x_tau, residual,
                                  sm.coin[nd], V, aligned, sm);
    } else {
      last = serving_draw_last<T>(q_base + t_row, d_row, qd, direct, has_draft, x_tau, residual,
                                  sm.coin[nd], V, aligned, sm);
    }
  }
  serving_write(b, K, 0, n_out, last, out_tokens, out_num, out_status, sm);
}

// ---------------------------------------------------------------------------------------------
// Entry point: grid (B, 2K+1, chunks) of kServingThreads threads, kServingDynamicBytes of dynamic
// shared memory for 16-bit types (none for float32). Parameters as verify_serving_kernel's, plus
// ws (B * (2K+1) * kServingRecordWords u64), ws_count (B zeroed u32, left zeroed) and, with
// chunks > 1 (16-bit types only), ws_rows (B * (2K+1) * kServingChunkRowStride zeroed u32, 16-byte
// aligned, left zeroed; section 1b).
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kServingThreads) verify_serving_split_kernel(
    const void* ids, int ids64, const i64* num_draft, const T* target, const T* draft,
    const float* temperature, const i64* top_k, const float* top_p, const int* param_flags,
    const float* uniforms, const i64* seeds, const i64* offsets, u64 seed, u64 offset,
    const i64* seed_ptr, const i64* offset_ptr, u64 offset_intragraph, int captured, i64* out_tokens,
    i64* out_num, int* out_status, i64 V, int K, int target_logits, int has_draft, int draft_logits,
    int coins, int aligned, u64* ws, u32* ws_count, u32* ws_rows, int chunks) {
  __shared__ ServingSplitSmem sp;
  const ServingCoins c{coins,  uniforms,   seeds,      offsets,           seed,
                       offset, seed_ptr,   offset_ptr, offset_intragraph, captured};
  verify_serving_split<T>(ids, ids64, num_draft, target, draft, temperature, top_k, top_p,
                          param_flags, c, out_tokens, out_num, out_status, V, K, target_logits != 0,
                          has_draft != 0, draft_logits != 0, aligned != 0, ws, ws_count, ws_rows,
                          chunks, sp);
}

}  // namespace specsample
