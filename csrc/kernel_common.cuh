// specsample verify kernel: types, limits, status bits, element loads, warp helpers and the kernel parameters.
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

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
// flagged kRowOverflow, and +inf never meets the -inf that marks a bad draft value (kernel_random.cuh).
constexpr double kOverflowedSum = 6.805646932770577e38;

// NaN, infinite or negative (-0.0 is a valid probability).
__device__ __forceinline__ bool bad_prob(float v) { return !(v >= 0.0f && v <= kFloatMax); }

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

// The float16 bit pattern of x (exact for a value that came from float16).
__device__ __forceinline__ u32 float_to_half_bits(float x) {
  unsigned short s = 0;
  asm("{.reg .b16 h;\n\tcvt.rn.f16.f32 h, %1;\n\tmov.b16 %0, h;}" : "=h"(s) : "f"(x));
  return s;
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

// The chain kernels' parameter list: passed one by one (not as a struct) so that CuPy, which packs
// scalars and pointers but not structs, launches the very same kernels as the torch extension;
// SPECSAMPLE_MAKE_PARAMS packs them into `P`.
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

}  // namespace specsample
