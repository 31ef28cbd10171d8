// specsample: the automatic launch configuration of the verify kernels (host code only).
//
// Plain C++17 with no CUDA or torch header, so that the host's C++ compiler can build it alone:
// tests/test_launch_config.py compiles it into a small program and compares every choice over a
// grid of shapes with the Python copy the CuPy backend uses (specsample.backends._cuda_build).
// torch_common.cuh includes it for the cuda-cpp backend.
#pragma once

#include <algorithm>
#include <cstdint>

namespace specsample {

constexpr int kLaunchMaxStepRows = 16;  // kMaxStepRows of the kernel (static_assert in torch_common.cuh)

struct LaunchConfig {
  int cluster;
  int threads;
  int rows_per_step;
};

// Automatic launch configuration of the cuda-cpp launcher. The CuPy backend's Python copy
// (specsample.backends._cuda_build.choose_config) is checked against this one over a whole grid by
// tests/test_launch_config.py, which compiles this header with the host's C++ compiler.
inline LaunchConfig choose_config(int64_t B, int64_t K, int64_t V, bool greedy, int num_sms, bool clusters,
                           int elem_bytes) {
  LaunchConfig c{1, 512, 1};
  if (clusters) {
    if (greedy) {
      if (B <= 16) {
        // spread a request's rows over 16 SMs while the batch alone does not fill the GPU
        c.cluster = 16;
        if (B > 4) c.threads = 256;
      } else {
        // larger batches: at most 48 KB of a row per block, clusters of up to 8 (V = 128256
        // float32: 8 x 256 threads; V = 32000: 4 x 256). A request whose accepted run is long
        // then streams its rows on several SMs, while the next clusters take the SMs that
        // finished requests free (H100 sweep, docs/dev/cuda-kernel.md).
        const int64_t row_bytes = V * (int64_t)elem_bytes;
        int cl = 1;
        while (cl < 8 && row_bytes > (int64_t)cl * 49152) cl *= 2;
        c.cluster = cl;
        c.threads = cl >= 4 ? 256 : 512;
      }
    } else if (B <= 8) {
      // random mode, from the H100 sweep of (cluster, threads) (docs/dev/cuda-kernel.md)
      c.cluster = 16;
      c.threads = B <= 4 ? 512 : 256;
    } else if (B <= 16) {
      c.cluster = 16;
      c.threads = 128;
    } else if (B <= 32) {
      c.cluster = 8;
      c.threads = 256;
    } else if (B < 128) {
      c.cluster = 4;
      c.threads = 256;
    }
  }
  // greedy: at small batch examine n0, 2 n0, 4 n0, ... (up to 16) rows per step, n0 rows fitting
  // the kernel's per-block byte budget (latency: a long accepted run costs a few cluster round
  // trips); otherwise strictly one row per step (bytes: stop reading at the first mismatch)
  c.rows_per_step = (greedy && B <= 16 && c.cluster >= 4) ? kLaunchMaxStepRows : 1;
  (void)K;
  (void)num_sms;
  return c;
}

// Greedy mode: chunks per row of the split kernel (every row of every request at once over about
// one block per SM, combined by the last block), or 0 for the cluster kernel. The split kernel
// reads all K+1 rows whatever the acceptance, so it serves only calls whose rows all together are
// a few microseconds of DRAM time (H100: B = 1 with K = 4 and V = 128256, or K = 8 and V = 32000).
// The Python copy (specsample.backends._cuda_build.choose_split) is checked the same way.
constexpr int64_t kSplitMaxBytes = int64_t(3) << 20;
inline int choose_split(int64_t B, int64_t K, int64_t V, bool greedy, int num_sms, int elem_bytes) {
  const int64_t rows = B * (K + 1);
  if (!greedy || rows * V * (int64_t)elem_bytes > kSplitMaxBytes) return 0;
  return (int)std::max<int64_t>(1, num_sms / rows);
}

// Whether a call takes the kernels' 16-byte load path (one instantiation per path): V * element
// size a multiple of 16 and every base pointer the call streams on 16 bytes (greedy mode never
// reads p; p_addr 0: no draft probabilities).
inline bool rows_aligned(int64_t V, int elem_bytes, uintptr_t q_addr, uintptr_t p_addr, bool greedy) {
  return (V * (int64_t)elem_bytes) % 16 == 0 && q_addr % 16 == 0 &&
         (greedy || p_addr == 0 || p_addr % 16 == 0);
}

}  // namespace specsample
