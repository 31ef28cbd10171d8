// specsample: the fused verification kernel of speculative decoding (rejection sampling + greedy).
//
// ONE kernel body, compiled twice:
//   * by nvcc, inside the torch extension (csrc/verify_torch.cu -> backend `cuda-cpp`);
//   * by NVRTC, through cupy.RawModule (backend `cupy`).
// It therefore includes no header at all (no <cstdint>, no cuda_fp16.h, no curand): the types,
// the half/bfloat16 conversions, Philox4x32-10 and the cluster primitives are written here.
//
// Semantics (DESIGN.md, "Semantics with uniforms"; specsample.reference is the float64 definition):
//   1. for k < K with x = ids[b,k]: accept iff u[b,k] * p[b,k,x] < q[b,k,x]  (p = 1 without draft
//      probabilities). Computed in double: the product of two floats is exact in double, so the
//      decision equals the float64 reference's bit for bit. An id outside [0, V) is a rejection.
//   2. first rejection k*: r = max(0, q[b,k*] - p[b,k*]) (p = one-hot(x) without draft probs);
//      if sum(r) == 0, r = q[b,k*]. All accepted: r = q[b,K] (the bonus row).
//   3. last token = smallest j with cumsum(r)[j] > u[b,K] * sum(r); never a token with r_j = 0.
//   Every r_j is formed in double from the stored values exactly as the reference does, and the
//   sums are accumulated in double, so only the summation ORDER differs from the reference
//   (relative differences ~1e-16 of the total): in practice the tokens are identical.
//   Greedy: accept while x == argmax(q[b,k]) (ties -> smallest index); last token = argmax of the
//   first mismatching row, or of row K.
//
// Work decomposition: one request per thread-block CLUSTER of CL blocks (CL = 1 without Hopper
// clusters). The row that must be read in full (q and p at the first rejection, or the bonus row)
// is split into CL contiguous chunks, one per block, and each block's chunk into one contiguous
// segment per warp. Each lane streams 16-byte vectors of its warp's segment (coalesced, several in
// flight). Partial sums are combined in a fixed, sequential order (segment -> chunk -> row), and
// the chunk sums travel between the blocks of the cluster through distributed shared memory, so the
// cluster needs no global workspace, no atomics in global memory and no second launch. The block
// owning the chunk where the cumulative sum crosses the threshold re-reads only the crossing
// warp segment (a few KB, from L2) and scans it.
//
// Random numbers (when no explicit uniforms are given): Philox4x32-10, key = (seed_lo, seed_hi),
// counter = (n_lo, n_hi, b_lo, b_hi) with n = (offset + i) / 4, word (offset + i) % 4, for the
// i-th uniform of request b (i = 0..K-1: the accept draws; i = K: the final draw). This is the
// stream curand_init(seed, subsequence=b, offset) + curand() produces; a 32-bit word w becomes the
// float (w >> 8) * 2^-24 in [0, 1) (24 random bits, exactly representable). Each call consumes
// K+1 numbers per subsequence, so the caller advances the generator's offset by
// 4 * ceil((K+1) / 4) (torch's convention: offsets count 32-bit numbers per thread, multiples of 4).
// The accept draws and the final draw use distinct (counter, word) positions.
#pragma once

// Development only (-DSPECSAMPLE_TRACE=1, CuPy builds): thread 0 of each block stores the SM clock
// at the phase marks below, so scripts/trace_phases.py can print where a call's time goes.
#if defined(SPECSAMPLE_TRACE) && SPECSAMPLE_TRACE
extern "C" {
__device__ unsigned long long specsample_trace[16 * 1024];
}
#define SPECSAMPLE_MARK(i)                                                                 \
  do {                                                                                      \
    if (threadIdx.x == 0 && blockIdx.x < 1024) specsample_trace[blockIdx.x * 16 + (i)] = clock64(); \
  } while (0)
#else
#define SPECSAMPLE_MARK(i) \
  do {                     \
  } while (0)
#endif

namespace specsample {

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// 16-bit storage types (bit patterns); converted to float with a PTX cvt, no headers needed.
struct f16 {
  unsigned short bits;
};
struct bf16 {
  unsigned short bits;
};

constexpr int kMaxWarps = 32;       // blockDim.x <= 1024
constexpr int kMaxK = 128;          // draft tokens per request
constexpr int kMaxStepRows = 16;    // greedy: rows examined per step
constexpr int kGreedyGroup = 4;     // greedy: rows streamed together (loads in flight)

#ifndef SPECSAMPLE_REGSCAN
#define SPECSAMPLE_REGSCAN 1  // scan a one-wave crossing segment from registers (no re-read)
#endif
#ifndef SPECSAMPLE_MIN_BLOCKS
#define SPECSAMPLE_MIN_BLOCKS 1  // blocks of 512 threads per SM the register budget must allow
#endif

// ---------------------------------------------------------------------------------------------
// Element conversion and 16-byte vector loads
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(f16 x) {
  float f;
  asm("{.reg .b16 h;\n\tmov.b16 h, %1;\n\tcvt.f32.f16 %0, h;}" : "=f"(f) : "h"(x.bits));
  return f;
}
__device__ __forceinline__ float to_float(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

__device__ __forceinline__ float half_bits_to_float(u32 h) {
  float f;
  unsigned short s = (unsigned short)h;
  asm("{.reg .b16 h;\n\tmov.b16 h, %1;\n\tcvt.f32.f16 %0, h;}" : "=f"(f) : "h"(s));
  return f;
}

template <typename T>
struct VecTraits;
template <>
struct VecTraits<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void unpack(const uint4& w, float* v) {
    v[0] = __uint_as_float(w.x);
    v[1] = __uint_as_float(w.y);
    v[2] = __uint_as_float(w.z);
    v[3] = __uint_as_float(w.w);
  }
  __device__ __forceinline__ static u32 bits(const float* p) { return __float_as_uint(__ldg(p)); }
  __device__ __forceinline__ static float load1(const float* p) { return __ldg(p); }
};
template <>
struct VecTraits<f16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(const uint4& w, float* v) {
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = half_bits_to_float(ws[i] & 0xffffu);
      v[2 * i + 1] = half_bits_to_float(ws[i] >> 16);
    }
  }
  __device__ __forceinline__ static u32 bits(const f16* p) {
    return (u32)__ldg(reinterpret_cast<const unsigned short*>(p));
  }
  __device__ __forceinline__ static float load1(const f16* p) { return half_bits_to_float(bits(p)); }
};
template <>
struct VecTraits<bf16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(const uint4& w, float* v) {
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(ws[i] << 16);
      v[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static u32 bits(const bf16* p) {
    return (u32)__ldg(reinterpret_cast<const unsigned short*>(p));
  }
  __device__ __forceinline__ static float load1(const bf16* p) { return __uint_as_float(bits(p) << 16); }
};

// Vector g of a row = elements [g*N, g*N + N), returned as its 16 raw bytes (unpacked later, so
// that several vectors in flight cost 4 registers each). `aligned` says every row starts on 16
// bytes; otherwise, and for the last, partial vector of a row, the elements are read one by one
// (never past the row's end) and packed; elements past V read as +0.0.
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* row, i64 g, i64 V, bool aligned) {
  constexpr int N = VecTraits<T>::N;
  const i64 j0 = g * N;
  if (aligned && j0 + N <= V) return __ldg(reinterpret_cast<const uint4*>(row) + g);
  u32 w[4] = {0u, 0u, 0u, 0u};
  if (N == 4) {
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = (j0 + e < V) ? VecTraits<T>::bits(row + j0 + e) : 0u;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const u32 x = (j0 + e < V) ? VecTraits<T>::bits(row + j0 + e) : 0u;
      w[e >> 1] |= (e & 1) ? (x << 16) : x;
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11), written from the published algorithm.
// ---------------------------------------------------------------------------------------------
struct U32x4 {
  u32 x, y, z, w;
};

__host__ __device__ __forceinline__ U32x4 philox4x32_10(U32x4 c, u32 k0, u32 k1) {
  const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const u64 p0 = (u64)M0 * c.x;
    const u64 p1 = (u64)M1 * c.z;
    const u32 hi0 = (u32)(p0 >> 32), lo0 = (u32)p0;
    const u32 hi1 = (u32)(p1 >> 32), lo1 = (u32)p1;
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// The i-th uniform of subsequence `sub` (see the header comment for the layout).
__device__ __forceinline__ float philox_uniform(u64 seed, u64 offset, u64 sub, u64 i) {
  const u64 n = offset + i;
  const u64 ctr = n >> 2;
  const U32x4 r = philox4x32_10(U32x4{(u32)ctr, (u32)(ctr >> 32), (u32)sub, (u32)(sub >> 32)},
                                (u32)seed, (u32)(seed >> 32));
  const u32 word = (u32)(n & 3u);
  const u32 w = word == 0 ? r.x : word == 1 ? r.y : word == 2 ? r.z : r.w;
  return (float)(w >> 8) * (1.0f / 16777216.0f);
}

// ---------------------------------------------------------------------------------------------
// Cluster primitives (Hopper and later): inline PTX, so NVRTC needs no cooperative_groups header.
// With CL == 1 they reduce to block-local operations.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

template <int CL>
__device__ __forceinline__ u32 cluster_rank() {
  if constexpr (CL == 1) {
    return 0;
  } else {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
  }
}

template <int CL>
__device__ __forceinline__ u32 cluster_id() {
  if constexpr (CL == 1) {
    return blockIdx.x;
  } else {
    u32 r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
  }
}

// All threads of all blocks of the cluster; orders shared-memory writes before peers' reads.
template <int CL>
__device__ __forceinline__ void cluster_barrier() {
  if constexpr (CL == 1) {
    __syncthreads();
  } else {
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n\t"
        "barrier.cluster.wait.acquire.aligned;" ::
            : "memory");
  }
}

template <int CL>
__device__ __forceinline__ double ld_peer_f64(const double* local, u32 rank) {
  if constexpr (CL == 1) {
    return *local;
  } else {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
    double v;
    asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(remote) : "memory");
    return v;
  }
}

template <int CL>
__device__ __forceinline__ u64 ld_peer_u64(const u64* local, u32 rank) {
  if constexpr (CL == 1) {
    return *local;
  } else {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
    u64 v;
    asm volatile("ld.shared::cluster.u64 %0, [%1];" : "=l"(v) : "r"(remote) : "memory");
    return v;
  }
}

// ---------------------------------------------------------------------------------------------
// Warp / block helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ u64 warp_max_u64(u64 x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const u64 y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
}

// Greedy key: larger probability wins, then the smaller index. Probabilities are >= 0, so their
// float bits order like their values (+0.0 is canonicalized from -0.0). Padding gets key 0.
__device__ __forceinline__ u64 argmax_key(float v, i64 j) {
  return ((u64)__float_as_uint(v + 0.0f) << 32) | (u64)(0xFFFFFFFFu - (u32)j);
}

struct Smem {
  double seg_sum[kMaxWarps];   // random: this block's per-warp segment sums (sequential order)
  double warp_tmp[kMaxWarps];  // block scan scratch
  double chunk_sum;            // random: this block's chunk sum (read by peers)
  double threshold;            // random: u_K * total
  double seg_base;             // random: cumulative sum before the crossing segment
  u64 row_key[kMaxStepRows];   // greedy: this block's argmax key of each row of the step
  u64 peer_key[kMaxStepRows][16];  // greedy: every block's key per row (gathered by rank 0..)
  double peer_sum[16];         // random: every block's chunk sum (gathered in parallel)
  i64 xhat[kMaxK];             // draft ids (or -1 when out of range)
  i64 found;                   // random: crossing index found by the rescan
  i64 last_pos;                // random: last positive index of the rescanned segment
  i64 final_token;
  int kstar;
  int owner;                   // block rank that writes the outputs
  int seg;                     // crossing warp segment
  float u_final;
  int stop;
};

// Contiguous partition helper: part `i` of `parts` over [lo, hi).
__device__ __forceinline__ void split_range(i64 lo, i64 hi, int parts, int i, i64& a, i64& b) {
  const i64 n = hi - lo;
  const i64 per = (n + parts - 1) / parts;
  a = lo + per * i;
  b = a + per;
  if (a > hi) a = hi;
  if (b > hi) b = hi;
}

// ---------------------------------------------------------------------------------------------
// Random mode: sum of r over the vectors [lo, hi) of one warp segment.
// ---------------------------------------------------------------------------------------------
#ifndef SPECSAMPLE_UNROLL
#define SPECSAMPLE_UNROLL 4
#endif
constexpr int kUnrollRandom = SPECSAMPLE_UNROLL;  // vectors per lane and stream in flight

template <typename T>
__device__ __forceinline__ double residual_value(float qv, float pv, bool use_p, int j, int onehot) {
  const double qd = (double)qv;
  const double pd = use_p ? (double)pv : (j == onehot ? 1.0 : 0.0);
  const double r = qd - pd;
  return r > 0.0 ? r : 0.0;
}

template <typename T, int U>
__device__ __forceinline__ void load_wave(const T* qrow, const T* prow, i64 base, i64 hi, i64 V,
                                          bool aligned, int lane, uint4 (&qw)[U], uint4 (&pw)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const i64 g = base + u * 32 + lane;
    qw[u] = make_uint4(0u, 0u, 0u, 0u);
    pw[u] = make_uint4(0u, 0u, 0u, 0u);
    if (g < hi) {
      qw[u] = load_raw(qrow, g, V, aligned);
      if (prow != nullptr) pw[u] = load_raw(prow, g, V, aligned);
    }
  }
}

template <typename T, int U>
__device__ __forceinline__ double wave_sum(const uint4 (&qw)[U], const uint4 (&pw)[U], i64 base,
                                           bool use_p, int onehot, int lane) {
  constexpr int N = VecTraits<T>::N;
  double acc = 0.0;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int j0 = (int)(base + u * 32 + lane) * N;  // V < 2^31: in-row indices fit 32 bits
    float qv[N], pv[N];
    VecTraits<T>::unpack(qw[u], qv);
    VecTraits<T>::unpack(pw[u], pv);
#pragma unroll
    for (int e = 0; e < N; ++e) acc += residual_value<T>(qv[e], pv[e], use_p, j0 + e, onehot);
  }
  return acc;
}

// Sum of r over the vectors [lo, hi) of one warp segment (this lane's share). The first wave of
// vectors stays in qw/pw: when the segment is a single wave, the crossing search reuses it from
// registers instead of reading the segment again.
template <typename T>
__device__ __forceinline__ double segment_residual_sum(const T* qrow, const T* prow, int onehot,
                                                       i64 lo, i64 hi, i64 V, bool aligned, int lane,
                                                       uint4 (&qw)[kUnrollRandom],
                                                       uint4 (&pw)[kUnrollRandom]) {
  constexpr int U = kUnrollRandom;
  const bool use_p = prow != nullptr;
  load_wave<T, U>(qrow, prow, lo, hi, V, aligned, lane, qw, pw);
  double acc = wave_sum<T, U>(qw, pw, lo, use_p, onehot, lane);
  for (i64 base = lo + 32 * U; base < hi; base += 32 * U) {
    uint4 qx[U], px[U];
    load_wave<T, U>(qrow, prow, base, hi, V, aligned, lane, qx, px);
    acc += wave_sum<T, U>(qx, px, base, use_p, onehot, lane);
  }
  return acc;
}

// Exclusive block scan of one double per thread (blockDim.x threads); returns the exclusive prefix
// and, through `total`, the block total. Uses s.warp_tmp; ends with a __syncthreads.
__device__ double block_exclusive_scan(double x, double& total, Smem& s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  double incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  double lane_excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) lane_excl = 0.0;
  if (lane == 31) s.warp_tmp[warp] = incl;
  __syncthreads();
  if (threadIdx.x == 0) {
    double acc = 0.0;
    for (int w = 0; w < nwarps; ++w) {
      const double t = s.warp_tmp[w];
      s.warp_tmp[w] = acc;
      acc += t;
    }
    s.chunk_sum = acc;  // scratch: the block total (chunk_sum is no longer read by peers here)
  }
  __syncthreads();
  total = s.chunk_sum;
  const double excl = s.warp_tmp[warp] + lane_excl;
  __syncthreads();
  return excl;
}

// ---------------------------------------------------------------------------------------------
// Greedy: argmax of NR consecutive rows (row0, row0 + V, ...) over one warp segment [lo, hi);
// the warp's result for row i is atomically max-ed into keys[i] (shared memory).
// ---------------------------------------------------------------------------------------------
template <typename T, int NR, int U>
__device__ __forceinline__ void greedy_group(const T* row0, i64 V, i64 lo, i64 hi, bool aligned,
                                             int lane, u64* keys) {
  constexpr int N = VecTraits<T>::N;
  float bestv[NR];
  int besti[NR];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    bestv[i] = -1.0f;
    besti[i] = 0;
  }
  for (i64 base = lo; base < hi; base += 32 * U) {
    uint4 raw[NR][U];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const i64 g = base + u * 32 + lane;
        raw[i][u] = make_uint4(0u, 0u, 0u, 0u);
        if (g < hi) raw[i][u] = load_raw(row0 + i * V, g, V, aligned);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const i64 g = base + u * 32 + lane;
      if (g < hi) {
        const int j0 = (int)g * N;
#pragma unroll
        for (int i = 0; i < NR; ++i) {
          float v[N];
          VecTraits<T>::unpack(raw[i][u], v);
          // a lane visits its indices in increasing order: strict '>' keeps the smallest index of
          // a tie. Padding past V reads +0.0 at larger indices and never beats a real element.
#pragma unroll
          for (int e = 0; e < N; ++e) {
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
    const u64 key = bestv[i] >= 0.0f ? argmax_key(bestv[i], besti[i]) : 0ull;
    const u64 m = warp_max_u64(key);
    if (lane == 0 && m != 0) atomicMax(reinterpret_cast<unsigned long long*>(&keys[i]), (unsigned long long)m);
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel body
// ---------------------------------------------------------------------------------------------
struct Params {
  const void* ids;        // [B, K] int32 or int64
  const void* p;          // [B, K, V] or null
  const void* q;          // [B, K+1, V]
  const float* uniforms;  // [B, K+1] or null
  i64* out_tokens;        // [B, K+1]
  i64* out_num;           // [B]
  i64 V;
  int B, K;
  int ids64;
  int greedy;
  int rows_per_step;      // greedy: rows examined per step (1..kMaxStepRows)
  u64 seed, offset;       // Philox, when not captured
  const i64* seed_ptr;    // Philox, under CUDA-graph capture: *seed_ptr, *offset_ptr + intragraph
  const i64* offset_ptr;
  u64 offset_intragraph;
  int captured;
};

template <typename T, int CL, bool GREEDY>
__device__ __forceinline__ void verify_body(const Params& P) {
  constexpr int N = VecTraits<T>::N;
  __shared__ Smem s;
  SPECSAMPLE_MARK(0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const u32 rank = cluster_rank<CL>();
  const i64 b = (i64)cluster_id<CL>();
  const int K = P.K;
  const i64 V = P.V;
  const T* q = reinterpret_cast<const T*>(P.q);
  const T* p = reinterpret_cast<const T*>(P.p);
  const i64 K1 = (i64)K + 1;
  const i64 NG = (V + N - 1) / N;  // vectors per row
  const bool aligned = ((V * (i64)sizeof(T)) % 16 == 0) &&
                       (reinterpret_cast<u64>(P.q) % 16 == 0) &&
                       (p == nullptr || reinterpret_cast<u64>(P.p) % 16 == 0);

  // This block's chunk of a row, and this warp's segment of the chunk (vector indices).
  i64 c_lo, c_hi, w_lo, w_hi;
  split_range(0, NG, CL, (int)rank, c_lo, c_hi);
  split_range(c_lo, c_hi, nwarps, warp, w_lo, w_hi);

  // Draft ids, validated (out of range -> -1: a rejection, never dereferenced).
  for (int k = tid; k < K; k += blockDim.x) {
    i64 x = P.ids64 ? __ldg(reinterpret_cast<const i64*>(P.ids) + b * K + k)
                    : (i64)__ldg(reinterpret_cast<const int*>(P.ids) + b * K + k);
    s.xhat[k] = (x >= 0 && x < V) ? x : -1;
  }

  u64 seed = P.seed, offset = P.offset;
  if (P.captured) {
    seed = (u64)*P.seed_ptr;
    offset = (u64)*P.offset_ptr + P.offset_intragraph;
  }
  __syncthreads();
  SPECSAMPLE_MARK(1);

  if constexpr (!GREEDY) {
    // ---- 1. accept / reject: warp 0, 32 drafts at a time ---------------------------------------
    if (warp == 0) {
      int kstar = K;
      for (int k0 = 0; k0 < K; k0 += 32) {
        const int k = k0 + lane;
        bool reject = false;
        if (k < K) {
          const i64 x = s.xhat[k];
          if (x < 0) {
            reject = true;
          } else {
            const float u = P.uniforms ? __ldg(P.uniforms + b * K1 + k)
                                       : philox_uniform(seed, offset, (u64)b, (u64)k);
            const double pd = p ? (double)VecTraits<T>::load1(p + (b * K + k) * V + x) : 1.0;
            const double qd = (double)VecTraits<T>::load1(q + (b * K1 + k) * V + x);
            reject = !((double)u * pd < qd);  // exact: a float product fits a double
          }
        }
        const u32 mask = __ballot_sync(0xffffffffu, reject);
        if (mask) {
          kstar = k0 + __ffs(mask) - 1;
          break;
        }
      }
      if (lane == 0) {
        s.kstar = kstar;
        s.u_final = P.uniforms ? __ldg(P.uniforms + b * K1 + K)
                               : philox_uniform(seed, offset, (u64)b, (u64)K);
      }
    }
    __syncthreads();
    SPECSAMPLE_MARK(2);
    const int kstar = s.kstar;
    const double u_final = (double)s.u_final;
    const T* qrow = q + (b * K1 + kstar) * V;
    const T* prow = (p != nullptr && kstar < K) ? p + (b * K + kstar) * V : nullptr;
    int onehot = (p == nullptr && kstar < K) ? (int)s.xhat[kstar] : -1;

    // ---- 2. the row's total and the chunk holding the threshold --------------------------------
    double total = 0.0, base = 0.0;
    int owner = 0;
    uint4 qw[kUnrollRandom], pw[kUnrollRandom];
    for (int attempt = 0; attempt < 2; ++attempt) {
      const double part =
          warp_sum(segment_residual_sum<T>(qrow, prow, onehot, w_lo, w_hi, V, aligned, lane, qw, pw));
      if (lane == 0) s.seg_sum[warp] = part;
      __syncthreads();
      if (attempt == 0) SPECSAMPLE_MARK(3);
      if (tid == 0) {
        double acc = 0.0;
        for (int w = 0; w < nwarps; ++w) acc += s.seg_sum[w];
        s.chunk_sum = acc;
      }
      cluster_barrier<CL>();
      if (attempt == 0) SPECSAMPLE_MARK(4);
      // gather the CL chunk sums (one distributed-shared-memory load per thread, in parallel)
      if (tid < CL) s.peer_sum[tid] = ld_peer_f64<CL>(&s.chunk_sum, (u32)tid);
      __syncthreads();
      if (tid == 0) {
        total = 0.0;
        for (int c = 0; c < CL; ++c) total += s.peer_sum[c];
        const double t = u_final * total;
        // smallest chunk whose cumulative sum exceeds t; rounding fallback: last positive chunk
        double acc = 0.0, last_base = 0.0;
        int c_star = -1, last_pos = 0;
        for (int c = 0; c < CL; ++c) {
          const double sc = s.peer_sum[c];
          if (sc > 0.0) {
            last_pos = c;
            last_base = acc;
          }
          const double next = acc + sc;
          if (c_star < 0 && sc > 0.0 && next > t) {
            c_star = c;
            base = acc;
          }
          acc = next;
        }
        if (c_star < 0) {
          c_star = last_pos;
          base = last_base;
        }
        s.threshold = t;
        s.seg_base = base;
        s.owner = c_star;
        s.warp_tmp[0] = total;
      }
      cluster_barrier<CL>();  // peers have read our chunk_sum; smem may be reused
      if (attempt == 0) SPECSAMPLE_MARK(5);
      total = s.warp_tmp[0];
      owner = s.owner;
      if (total > 0.0 || (prow == nullptr && onehot < 0)) break;
      // sum(max(0, q - p)) == 0: fall back to q (same for every block of the cluster)
      prow = nullptr;
      onehot = -1;
      __syncthreads();
    }
    if ((int)rank != owner) return;

    const i64 out_base = b * K1;
    if (!(total > 0.0)) {
      // target row all zeros (undefined by the contract): token 0, as the reference does
      if (tid == 0) s.final_token = 0;
    } else {
      // ---- 3. the crossing warp segment of the owner's chunk ----------------------------------
      const double t = s.threshold;
      if (tid == 0) {
        double acc = s.seg_base, last_base = s.seg_base;
        int seg = -1, last_pos = 0;
        for (int w = 0; w < nwarps; ++w) {
          if (s.seg_sum[w] > 0.0) {
            last_pos = w;
            last_base = acc;
          }
          const double next = acc + s.seg_sum[w];
          if (seg < 0 && s.seg_sum[w] > 0.0 && next > t) {
            seg = w;
            s.seg_base = acc;
          }
          acc = next;
        }
        if (seg < 0) {
          seg = last_pos;
          s.seg_base = last_base;
        }
        s.seg = seg;
        s.found = 0x7fffffffffffffffLL;
        s.last_pos = 0;
      }
      __syncthreads();
      i64 g_lo, g_hi;
      split_range(c_lo, c_hi, nwarps, s.seg, g_lo, g_hi);
      const bool use_p = prow != nullptr;
#if SPECSAMPLE_REGSCAN
      if (g_hi - g_lo <= 32 * kUnrollRandom) {
        // ---- 4a. the crossing segment is one wave: scan it from the registers of its warp ----
        if (warp == s.seg) {
          double run = s.seg_base;
          i64 hit = 0x7fffffffffffffffLL, lastp = -1;
#pragma unroll
          for (int u = 0; u < kUnrollRandom; ++u) {
            const i64 g = g_lo + u * 32 + lane;
            float qv[N], pv[N];
            VecTraits<T>::unpack(qw[u], qv);
            VecTraits<T>::unpack(pw[u], pv);
            double r[N];
            double mine = 0.0;
#pragma unroll
            for (int e = 0; e < N; ++e) {
              r[e] = g < g_hi ? residual_value<T>(qv[e], pv[e], use_p, (int)(g * N) + e, onehot) : 0.0;
              mine += r[e];
            }
            double incl = mine;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
              const double y = __shfl_up_sync(0xffffffffu, incl, o);
              if (lane >= o) incl += y;
            }
            double excl = __shfl_up_sync(0xffffffffu, incl, 1);
            if (lane == 0) excl = 0.0;
            double a = run + excl;
#pragma unroll
            for (int e = 0; e < N; ++e) {
              a += r[e];
              if (r[e] > 0.0) {
                lastp = g * N + e;
                if (hit == 0x7fffffffffffffffLL && a > t) hit = g * N + e;
              }
            }
            run += __shfl_sync(0xffffffffu, incl, 31);
          }
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) {
            const i64 h = __shfl_xor_sync(0xffffffffu, hit, o);
            const i64 l = __shfl_xor_sync(0xffffffffu, lastp, o);
            hit = h < hit ? h : hit;
            lastp = l > lastp ? l : lastp;
          }
          if (lane == 0) {
            s.found = hit;
            s.last_pos = lastp + 1;
          }
        }
        __syncthreads();
      } else
#endif
      {
      double run = s.seg_base;
      // ---- 4. rescan the segment (L2-resident) with the whole block, blockDim vectors a pass --
      for (i64 pass = g_lo; pass < g_hi; pass += blockDim.x) {
        const i64 g = pass + tid;
        float qv[N], pv[N];
        double r[N];
        double mine = 0.0;
        if (g < g_hi) {
          VecTraits<T>::unpack(load_raw(qrow, g, V, aligned), qv);
          if (use_p) VecTraits<T>::unpack(load_raw(prow, g, V, aligned), pv);
#pragma unroll
          for (int e = 0; e < N; ++e) {
            r[e] = residual_value<T>(qv[e], use_p ? pv[e] : 0.0f, use_p, (int)(g * N) + e, onehot);
            mine += r[e];
          }
        } else {
#pragma unroll
          for (int e = 0; e < N; ++e) r[e] = 0.0;
        }
        double pass_total;
        const double excl = block_exclusive_scan(mine, pass_total, s);
        double a = run + excl;
        i64 hit = -1, lastp = -1;
#pragma unroll
        for (int e = 0; e < N; ++e) {
          a += r[e];
          if (r[e] > 0.0) {
            lastp = g * N + e;
            if (hit < 0 && a > t) hit = g * N + e;
          }
        }
        if (hit >= 0) atomicMin(reinterpret_cast<unsigned long long*>(&s.found), (unsigned long long)hit);
        if (lastp >= 0) atomicMax(reinterpret_cast<unsigned long long*>(&s.last_pos), (unsigned long long)(lastp + 1));
        __syncthreads();
        if (s.found != 0x7fffffffffffffffLL) break;
        run += pass_total;
      }
      }
      if (tid == 0) {
        // last_pos holds (index + 1) of the last positive element (0: none seen)
        s.final_token = s.found != 0x7fffffffffffffffLL ? s.found : (s.last_pos > 0 ? s.last_pos - 1 : 0);
      }
    }
    __syncthreads();
    SPECSAMPLE_MARK(6);
    // ---- 5. outputs ------------------------------------------------------------------------------
    for (int k = tid; k <= K; k += blockDim.x) {
      P.out_tokens[out_base + k] = k < kstar ? s.xhat[k] : (k == kstar ? s.final_token : -1);
    }
    if (tid == 0) P.out_num[b] = kstar + 1;
    SPECSAMPLE_MARK(7);
  } else {
  // ================================ greedy ========================================================
  const int R = P.rows_per_step < 1 ? 1 : (P.rows_per_step > kMaxStepRows ? kMaxStepRows : P.rows_per_step);
  int kstar = -1;
  i64 final_token = 0;
  if (tid < kMaxStepRows) s.row_key[tid] = 0;
  __syncthreads();
  // Steps grow geometrically (1, 2, 4, ... rows, capped at R): a mismatch at row 0 reads one row,
  // a long accepted run needs only ~log2(K) cluster round trips. R = 1: strictly row by row.
  int step = 1;
  for (int s0 = 0, s1 = 0; s0 <= K; s0 = s1, step = step < R ? 2 * step : R) {
    const int rows_now = step < R ? step : R;
    s1 = (s0 + rows_now < K + 1) ? s0 + rows_now : K + 1;
    // stream the rows of the step, up to kGreedyGroup rows at a time (their loads in flight
    // together); a group of NR live rows keeps 8 vectors per lane in flight
    for (int r0 = s0; r0 < s1; r0 += kGreedyGroup) {
      const int nr = (s1 - r0 < kGreedyGroup) ? s1 - r0 : kGreedyGroup;
      const T* row0 = q + (b * K1 + r0) * V;
      if (nr == 1) {
        greedy_group<T, 1, 8>(row0, V, w_lo, w_hi, aligned, lane, &s.row_key[r0 - s0]);
      } else if (nr == 2) {
        greedy_group<T, 2, 4>(row0, V, w_lo, w_hi, aligned, lane, &s.row_key[r0 - s0]);
      } else if (nr == 3) {
        greedy_group<T, 3, 2>(row0, V, w_lo, w_hi, aligned, lane, &s.row_key[r0 - s0]);
      } else {
        greedy_group<T, 4, 2>(row0, V, w_lo, w_hi, aligned, lane, &s.row_key[r0 - s0]);
      }
    }
    cluster_barrier<CL>();
    // gather every block's key of every row of the step (in parallel), then decide
    for (int i = tid; i < (s1 - s0) * CL; i += blockDim.x) {
      s.peer_key[i / CL][i % CL] = ld_peer_u64<CL>(&s.row_key[i / CL], (u32)(i % CL));
    }
    __syncthreads();
    if (tid == 0) {
      int stop = 0;
      for (int k = s0; k < s1 && !stop; ++k) {
        u64 m = 0;
        for (int c = 0; c < CL; ++c) {
          const u64 y = s.peer_key[k - s0][c];
          m = y > m ? y : m;
        }
        const i64 a = m == 0 ? 0 : (i64)(0xFFFFFFFFu - (u32)(m & 0xFFFFFFFFu));
        if (k == K || s.xhat[k] != a) {
          stop = 1;
          s.kstar = k;
          s.final_token = a;
        }
      }
      s.stop = stop;
    }
    cluster_barrier<CL>();  // every peer has read our row keys
    if (tid < kMaxStepRows) s.row_key[tid] = 0;
    const int stop = s.stop;
    __syncthreads();
    if (stop) {
      kstar = s.kstar;
      final_token = s.final_token;
      break;
    }
  }
  if (rank != 0) return;
  const i64 out_base = b * K1;
  for (int k = tid; k <= K; k += blockDim.x) {
    P.out_tokens[out_base + k] = k < kstar ? s.xhat[k] : (k == kstar ? final_token : -1);
  }
  if (tid == 0) P.out_num[b] = kstar + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points. The parameters are passed one by one (not as a struct) so that CuPy, which packs
// scalars and pointers but not structs, launches the very same kernels as the torch extension.
// ---------------------------------------------------------------------------------------------
#define SPECSAMPLE_KERNEL_PARAMS                                                                   \
  const void *ids, const void *p, const void *q, const float *uniforms, i64 *out_tokens,           \
      i64 *out_num, i64 V, int B, int K, int ids64, int greedy, int rows_per_step, u64 seed,       \
      u64 offset, const i64 *seed_ptr, const i64 *offset_ptr, u64 offset_intragraph, int captured

#define SPECSAMPLE_MAKE_PARAMS                                                                     \
  Params P;                                                                                        \
  P.ids = ids;                                                                                     \
  P.p = p;                                                                                         \
  P.q = q;                                                                                         \
  P.uniforms = uniforms;                                                                           \
  P.out_tokens = out_tokens;                                                                       \
  P.out_num = out_num;                                                                             \
  P.V = V;                                                                                         \
  P.B = B;                                                                                         \
  P.K = K;                                                                                         \
  P.ids64 = ids64;                                                                                 \
  P.greedy = greedy;                                                                               \
  P.rows_per_step = rows_per_step;                                                                 \
  P.seed = seed;                                                                                   \
  P.offset = offset;                                                                               \
  P.seed_ptr = seed_ptr;                                                                           \
  P.offset_ptr = offset_ptr;                                                                       \
  P.offset_intragraph = offset_intragraph;                                                         \
  P.captured = captured;

// One block per request (any architecture). GREEDY selects the mode at compile time (two leaner
// kernels instead of one that holds both paths' registers).
template <typename T, bool GREEDY>
__global__ void __launch_bounds__(512, SPECSAMPLE_MIN_BLOCKS) verify_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, 1, GREEDY>(P);
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
// One cluster of CL blocks per request (sm_90+). CL = 16 needs the non-portable cluster size
// attribute set on the function before launch.
template <typename T, int CL, bool GREEDY>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(512, SPECSAMPLE_MIN_BLOCKS)
    verify_cluster_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, CL, GREEDY>(P);
}
#endif

}  // namespace specsample
