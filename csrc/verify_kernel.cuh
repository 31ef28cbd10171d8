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
//   The residual is summed in float32 within one 16-byte vector (4 or 8 elements; DESIGN.md:
//   "accumulated in float32 or wider") and in double across vectors, and the element where the
//   threshold is crossed is found with every r_j formed in double exactly as the reference does:
//   the tokens differ from the reference only where the threshold lies within ~1e-7 of a vector
//   sum of a token boundary (never observed in the exactness checks).
//   Greedy: accept while x == argmax(q[b,k]) (ties -> smallest index); last token = argmax of the
//   first mismatching row, or of row K.
//
// Work decomposition: one request per thread-block CLUSTER of CL blocks (CL = 1 without Hopper
// clusters). The row that must be read in full (q and p at the first rejection, or the bonus row)
// is split into CL contiguous chunks, one per block, and each block's chunk into one contiguous
// segment per warp. Each lane streams 16-byte vectors of its warp's segment (coalesced, two waves
// in flight). The sums travel between the blocks of the cluster through distributed shared
// memory, so the cluster needs no global workspace, no atomics in global memory and no second
// launch (random mode: see "Random mode" below; greedy: argmax keys, gathered per step).
// One exception: greedy mode at the smallest batches reads every row at once over many blocks
// without a cluster and combines through a small global workspace (see verify_greedy_split).
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

// Development only (-DSPECSAMPLE_TRACE=1, CuPy builds): thread 0 (MARK) or lane 0 of a warp
// (MARK_WARP) of each block stores the SM clock at the phase marks below, so
// scripts/trace_phases.py can print where a call's time goes.
#if defined(SPECSAMPLE_TRACE) && SPECSAMPLE_TRACE
extern "C" {
__device__ unsigned long long specsample_trace[16 * 1024];
}
#define SPECSAMPLE_MARK(i)                                                                 \
  do {                                                                                      \
    if (threadIdx.x == 0 && blockIdx.x < 1024) specsample_trace[blockIdx.x * 16 + (i)] = clock64(); \
  } while (0)
// lane 0 of whichever warp gets there (a phase only one warp of the block reaches)
#define SPECSAMPLE_MARK_WARP(i)                                                                 \
  do {                                                                                          \
    if ((threadIdx.x & 31) == 0 && blockIdx.x < 1024) specsample_trace[blockIdx.x * 16 + (i)] = clock64(); \
  } while (0)
#else
#define SPECSAMPLE_MARK(i) \
  do {                     \
  } while (0)
#define SPECSAMPLE_MARK_WARP(i) \
  do {                          \
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

constexpr int kMaxK = 128;          // draft tokens per request
constexpr int kMaxStepRows = 16;    // greedy: rows examined per step

// Per-request status bits (specsample.Status; docs/contract.md, "Status"). A flagged request's
// outputs are all -1, 0 emitted. Every kernel checks exactly the values the contract says are read.
constexpr u32 kBadDraftId = 1;     // a draft id outside [0, V)
constexpr u32 kBadTarget = 2;      // a target probability read is NaN, infinite or negative
constexpr u32 kBadDraft = 4;       // a draft probability read is NaN, infinite or negative
constexpr u32 kBadUniform = 8;     // an explicit uniform outside [0, 1)
constexpr u32 kZeroRow = 16;       // the last token's distribution sums to zero
constexpr u32 kRowOverflow = 32;   // ... sums past the largest float32
constexpr float kFloatMax = 3.402823466e38f;
constexpr double kFloatMaxD = 3.4028234663852886e38;
// A vector sum that overflowed float32, kept finite but above the float32 range: the row is then
// flagged kRowOverflow, and +inf never meets the -inf that marks a bad draft value below.
constexpr double kOverflowedSum = 6.805646932770577e38;

// NaN, infinite or negative (-0.0 is a valid probability).
__device__ __forceinline__ bool bad_prob(float v) { return !(v >= 0.0f && v <= kFloatMax); }

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

// ---------------------------------------------------------------------------------------------
// Warp / block helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ u32 warp_or(u32 x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x |= __shfl_xor_sync(0xffffffffu, x, o);
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
// Kernel parameters
// ---------------------------------------------------------------------------------------------
struct Params {
  const void* ids;        // [B, K] int32 or int64
  const void* p;          // [B, K, V] or null
  const void* q;          // [B, K+1, V]
  const float* uniforms;  // [B, K+1] or null
  i64* out_tokens;        // [B, K+1]
  i64* out_num;           // [B]
  int* out_status;        // [B]
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

// Split barrier phases (clusters): arrive early, wait late.
template <int CL>
__device__ __forceinline__ void cluster_arrive_relaxed() {
  if constexpr (CL > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
template <int CL>
__device__ __forceinline__ void cluster_wait() {
  if constexpr (CL > 1) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}

template <int CL>
__device__ __forceinline__ void st_peer_f64(double* local, u32 rank, double v) {
  if constexpr (CL == 1) {
    *local = v;
  } else {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
    asm volatile("st.shared::cluster.f64 [%0], %1;" ::"r"(remote), "d"(v) : "memory");
  }
}

// The segment sums travel between the blocks of a cluster as asynchronous remote stores that
// complete a transaction count on the receiving block's mbarrier (st.async): a block waits only
// for the bytes it expects, with no cluster-wide barrier and no release fence on the GPU's memory.
// SPECSAMPLE_ASYNC_EXCHANGE=0 uses remote stores + one cluster barrier instead.
#ifndef SPECSAMPLE_ASYNC_EXCHANGE
#define SPECSAMPLE_ASYNC_EXCHANGE 1
#endif

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// One arrival that also announces `bytes` of transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// spin: poll without suspending (at tiny batch the SM has nothing else to run, and a suspended
// thread wakes up late); otherwise let the hardware suspend the waiting threads.
__device__ __forceinline__ void mbar_wait_parity(u64* bar, u32 parity, bool spin) {
  if (spin) {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "SPIN:\n\t"
        "mbarrier.test_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra SPIN;\n}" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
  } else {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "WAIT:\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra WAIT;\n}" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
  }
}
// v -> `local`'s twin in block `rank` of the cluster, completing 8 bytes on that block's `bar`.
__device__ __forceinline__ void st_async_peer_u64(u64* local, u64* bar, u32 rank, u64 v) {
  u32 ra, rb;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rb) : "r"(smem_addr(bar)), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];" ::"r"(ra), "l"(v),
               "r"(rb)
               : "memory");
}
// The same for a double: its 8 bytes travel as they are.
__device__ __forceinline__ void st_async_peer_f64(double* local, u64* bar, u32 rank, double v) {
  st_async_peer_u64(reinterpret_cast<u64*>(local), bar, rank, (u64)__double_as_longlong(v));
}

// Shared memory of the random-mode body.
template <int CL>
struct RandomSmem {
  double seg_local[2][kMaxWarpsRandom];  // [attempt][warp]: this block's segment sums
  double chunk_all[2][CL];               // [attempt][block rank]: every block's chunk sum
  u64 bar[2];                            // [attempt]: the exchange's mbarrier (async exchange)
};

// Draft id k of request b (int32 or int64 ids, [B, K]).
__device__ __forceinline__ i64 load_id(const void* ids, int ids64, int K, i64 b, int k) {
  return ids64 ? __ldg(reinterpret_cast<const i64*>(ids) + b * K + k)
               : (i64)__ldg(reinterpret_cast<const int*>(ids) + b * K + k);
}
__device__ __forceinline__ i64 load_id(const Params& P, i64 b, int k) { return load_id(P.ids, P.ids64, P.K, b, k); }
// The same, validated: an id outside [0, V) becomes -1 (a rejection or mismatch, never dereferenced).
__device__ __forceinline__ i64 load_valid_id(const void* ids, int ids64, int K, i64 V, i64 b, int k) {
  const i64 x = load_id(ids, ids64, K, b, k);
  return (x >= 0 && x < V) ? x : -1;
}

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
  SPECSAMPLE_MARK(0);
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
  SPECSAMPLE_MARK(1);
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
    SPECSAMPLE_MARK(2);
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
    SPECSAMPLE_MARK_WARP(3);
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
    SPECSAMPLE_MARK_WARP(5);
    return;
  }
  if (lane_crossing(seg_v, seg_incl, exclusive_of(seg_incl, lane), before_chunk, t, before_seg) != warp) {
    SPECSAMPLE_MARK_WARP(5);
    return;
  }
  SPECSAMPLE_MARK_WARP(6);
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
  SPECSAMPLE_MARK_WARP(4);
  if (lane == 0) P.out_tokens[last_slot] = token;
  SPECSAMPLE_MARK_WARP(5);
}

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

// ---------------------------------------------------------------------------------------------
// Greedy mode at the smallest batches: every row of every request at once, split over many
// blocks (no cluster), combined by the last block to finish.
//
// Block (b, r, c) computes the argmax key of chunk c (of `chunks`) of request b's row r and stores
// it in ws_keys; the block that brings the request's counter ws_count[b] to (K+1) * chunks decides
// the request (first row whose argmax differs from the draft) and resets the counter to 0 for the
// next call on the stream. Every row is read, matched or not: this trades bytes, which are cheap
// at B = 1, for latency (one pass over up to 2 blocks per SM instead of a chain of cluster steps).
// The counters must be zero before the first launch (the host zeroes them once).
// ---------------------------------------------------------------------------------------------
template <typename T, bool ALIGNED>
__device__ __forceinline__ void verify_greedy_split(const void* ids, const void* qv, i64* out_tokens,
                                                    i64* out_num, int* out_status, i64 V, int K,
                                                    int ids64, int chunks, u64* ws_keys,
                                                    u32* ws_count) {
  constexpr int N = VecTraits<T>::N;
  __shared__ u64 block_key;
  __shared__ int is_last;
  __shared__ i64 row_arg[kMaxK + 1];
  __shared__ bool row_bad[kMaxK + 1];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const i64 K1 = (i64)K + 1;
  const i64 unit = (i64)blockIdx.x;  // (b * K1 + r) * chunks + c
  const int c = (int)(unit % chunks);
  const i64 br = unit / chunks;  // b * K1 + r
  const i64 b = br / K1;
  const T* q = reinterpret_cast<const T*>(qv);
  const T* row = q + br * V;
  // the draft id this thread would compare, loaded now in case this block combines
  const i64 my_id = tid < K ? load_valid_id(ids, ids64, K, V, b, tid) : -1;
  if (tid == 0) block_key = 0;
  __syncthreads();
  const i64 NG = (V + N - 1) / N;
  i64 c_lo, c_hi, w_lo, w_hi;
  split_range(0, NG, chunks, c, c_lo, c_hi);
  split_range(c_lo, c_hi, nwarps, warp, w_lo, w_hi);
  greedy_rows<T, ALIGNED, 1>(row, V, (int)w_lo, (int)w_hi, lane, 1, &block_key);
  __syncthreads();
  if (tid == 0) {
    ws_keys[unit] = block_key;
    __threadfence();  // the key is visible GPU-wide before the count that announces it
    const u32 total = (u32)(K1 * chunks);
    is_last = atomicAdd(&ws_count[b], 1u) == total - 1 ? 1 : 0;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // acquire: the other blocks' keys, announced by their counts
  // argmax of every row: warp w takes rows w, w + nwarps, ...; lanes stride over the chunks
  for (i64 r = warp; r < K1; r += nwarps) {
    u64 m = 0;
    for (int cc = lane; cc < chunks; cc += 32) {
      const u64 y = __ldcg(reinterpret_cast<const unsigned long long*>(ws_keys) +
                           (b * K1 + r) * chunks + cc);
      m = y > m ? y : m;
    }
    m = warp_max_u64(m);
    if (lane == 0) {
      row_arg[r] = m == 0 ? 0 : (i64)(0xFFFFFFFFu - (u32)(m & 0xFFFFFFFFu));
      row_bad[r] = m == kBadRowKey;
    }
  }
  // an id out of range flags the request; otherwise the walk stops at the first row whose argmax
  // is not the draft or that holds a bad value (row K, the bonus row, always ends the run)
  const bool ids_bad = __syncthreads_or(tid < K && my_id < 0) != 0;
  __shared__ int kstar_s;
  if (tid == 0) kstar_s = K;
  __syncthreads();
  if (tid < K && (row_bad[tid] || my_id != row_arg[tid])) atomicMin(&kstar_s, tid);
  __syncthreads();
  const int kstar = kstar_s;
  const u32 flags = ids_bad ? kBadDraftId : (row_bad[kstar] ? kBadTarget : 0u);
  // (the host launches more than K threads per block)
  if (tid <= K) {
    out_tokens[b * K1 + tid] = flags ? -1 : (tid < kstar ? my_id : (tid == kstar ? row_arg[kstar] : -1));
  }
  if (tid == 0) {
    out_num[b] = flags ? 0 : kstar + 1;
    out_status[b] = (int)flags;
    ws_count[b] = 0;  // ready for the next call on this stream
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points. The parameters are passed one by one (not as a struct) so that CuPy, which packs
// scalars and pointers but not structs, launches the very same kernels as the torch extension.
// ---------------------------------------------------------------------------------------------
#define SPECSAMPLE_KERNEL_PARAMS                                                                   \
  const void *ids, const void *p, const void *q, const float *uniforms, i64 *out_tokens,           \
      i64 *out_num, int *out_status, i64 V, int B, int K, int ids64, int greedy,                   \
      int rows_per_step, u64 seed, u64 offset, const i64 *seed_ptr, const i64 *offset_ptr,         \
      u64 offset_intragraph, int captured

#define SPECSAMPLE_MAKE_PARAMS                                                                     \
  Params P;                                                                                        \
  P.ids = ids;                                                                                     \
  P.p = p;                                                                                         \
  P.q = q;                                                                                         \
  P.uniforms = uniforms;                                                                           \
  P.out_tokens = out_tokens;                                                                       \
  P.out_num = out_num;                                                                             \
  P.out_status = out_status;                                                                       \
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

// Every kernel is instantiated per mode (GREEDY) and per load path (ALIGNED: every row the call
// may stream starts on 16 bytes and V * sizeof(T) is a multiple of 16, so one 16-byte load reads
// one vector). The host decides both (rows_aligned in _cuda_build.py and verify_torch.cu), so
// each instantiation holds one path: leaner registers, and compact code, which matters at small
// batch, where the kernel's instructions are fetched from DRAM after the L2 has been flushed
// (~1 us at B = 1 against one kernel holding both load paths; docs/perf-notes-cuda.md, session 6).
template <typename T, int CL, bool GREEDY, bool ALIGNED>
__device__ __forceinline__ void verify_body(const Params& P) {
  if constexpr (GREEDY) {
    verify_greedy<T, CL, ALIGNED>(P);
  } else {
    __shared__ RandomSmem<CL> sm;
    verify_random<T, CL, ALIGNED ? kAligned : kUnaligned>(P, sm);
  }
}

// Blocks of 512 threads per SM the register budget must allow.
template <int CL, bool GREEDY>
struct MinBlocks {
  static constexpr int value = GREEDY ? GreedyShape<CL>::kMinBlocks : RandomShape<CL>::kMinBlocks;
};

// One block per request (any architecture).
template <typename T, bool GREEDY, bool ALIGNED>
__global__ void __launch_bounds__(512, (MinBlocks<1, GREEDY>::value)) verify_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, 1, GREEDY, ALIGNED>(P);
}

// Greedy mode, every row at once over many blocks (see verify_greedy_split); grid = B * (K+1) *
// chunks blocks.
template <typename T, bool ALIGNED>
__global__ void __launch_bounds__(512, 2) verify_greedy_split_kernel(
    const void* ids, const void* q, i64* out_tokens, i64* out_num, int* out_status, i64 V, int B,
    int K, int ids64, int chunks, u64* ws_keys, u32* ws_count) {
  (void)B;
  verify_greedy_split<T, ALIGNED>(ids, q, out_tokens, out_num, out_status, V, K, ids64, chunks, ws_keys,
                                  ws_count);
}

#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
// One cluster of CL blocks per request (sm_90+). CL = 16 needs the non-portable cluster size
// attribute set on the function before launch.
template <typename T, int CL, bool GREEDY, bool ALIGNED>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(512, (MinBlocks<CL, GREEDY>::value))
    verify_cluster_kernel(SPECSAMPLE_KERNEL_PARAMS) {
  SPECSAMPLE_MAKE_PARAMS
  verify_body<T, CL, GREEDY, ALIGNED>(P);
}
#endif

}  // namespace specsample
