// specsample verify kernel: Philox4x32-10, the in-kernel random numbers.
// Part of the kernel that verify_kernel.cuh assembles (its header describes the design); like it,
// this file includes no system header, so NVRTC compiles it as it is.
#pragma once

#include "kernel_common.cuh"

namespace specsample {

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

}  // namespace specsample
