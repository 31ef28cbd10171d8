// specsample: what the torch binding's translation units share (host code, nvcc).
//
// The binding of backend `cuda-cpp` is split over several .cu files that ninja compiles in
// parallel into one extension (the tree kernels alone were three quarters of a one-file build):
//   verify_torch.cu                     specsample::verify (the token rule), TORCH_LIBRARY
//   verify_torch_block.cu               specsample::verify_block (rule="block")
//   verify_torch_serving.cu             specsample::verify_serving
//   verify_torch_tree.cu                specsample::verify_tree (and the traversal launch)
//   verify_torch_tree_{float,half,bfloat16}.cu   the tree kernels' launches, one dtype each
// Each includes this header; the kernels come from verify_kernel.cuh, instantiated only where they
// are launched.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "launch_config.h"
#include "verify_kernel.cuh"

// Raise c10::Error (RuntimeError in Python) with a printf-formatted message when `cond` is false.
// The message reaches TORCH_CHECK as one const char*, which libc10 turns into the exception itself.
// A TORCH_CHECK that formats numbers (c10::str, an ostringstream built in this library) crashed the
// process with SIGSEGV on Hopper hosts instead of raising, while literal messages raised; see
// docs/backends/cuda-cpp.md. Every binding check with a number in its message uses this macro.
#define SPECSAMPLE_CHECK(cond, ...)                                                   \
  do {                                                                                \
    if (C10_UNLIKELY(!(cond))) {                                                      \
      char specsample_check_message_[512];                                            \
      std::snprintf(specsample_check_message_, sizeof(specsample_check_message_),     \
                    __VA_ARGS__);                                                     \
      TORCH_CHECK(false, static_cast<const char*>(specsample_check_message_));        \
    }                                                                                 \
  } while (0)

namespace specsample {
static_assert(kLaunchMaxStepRows == kMaxStepRows, "launch_config.h and the kernel disagree");

// The split kernels' workspace on one (device, stream): 8-byte slots (greedy: a key per (request,
// row, chunk); block: a record of doubles per block) and a counter per request. The counters are
// zeroed once, when allocated (on the stream, before the kernel), and each request's last block
// resets its counter, so every call ordered by the stream finds them zero. Other streams get their
// own workspace; under graph capture the cluster kernels are used instead (a graph may be replayed
// on any stream). Never freed: the buffers are small, and static tensors must not be destroyed
// after the CUDA context at exit. An inline function: one map for every translation unit.
struct SplitWorkspace {
  at::Tensor keys, counters;
};

inline std::pair<u64*, u32*> split_workspace(int64_t n_keys, int64_t n_counters,
                                             const at::Device& dev, cudaStream_t stream) {
  static std::mutex mutex;
  static auto* workspaces = new std::map<std::pair<int, cudaStream_t>, SplitWorkspace>();
  std::lock_guard<std::mutex> lock(mutex);
  SplitWorkspace& ws = (*workspaces)[{(int)dev.index(), stream}];
  if (!ws.keys.defined() || ws.keys.numel() < n_keys) {
    ws.keys = at::empty({std::max<int64_t>(n_keys, 4096)}, at::TensorOptions().dtype(at::kLong).device(dev));
  }
  if (!ws.counters.defined() || ws.counters.numel() < n_counters) {
    ws.counters = at::zeros({std::max<int64_t>(n_counters, 64)}, at::TensorOptions().dtype(at::kInt).device(dev));
  }
  return {reinterpret_cast<u64*>(ws.keys.data_ptr()), reinterpret_cast<u32*>(ws.counters.data_ptr())};
}

// Whether `stream` is being captured; an error (the legacy stream while another stream captures)
// counts as capturing: the cluster kernel is always safe.
inline bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

inline bool cluster_size_ok(int cl) { return cl == 1 || cl == 2 || cl == 4 || cl == 8 || cl == 16; }

// Whether the kernels may be launched in thread-block clusters on this device (built for sm_90+
// and running on it).
inline bool clusters_available(const cudaDeviceProp* prop) {
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
  return prop->major >= 9;
#else
  (void)prop;
  return false;
#endif
}

// The generator's Philox state for a call drawing `coins` uniforms per request: the offset
// advances by 4 * ceil(coins / 4); no generator: the device's default CUDA generator.
inline at::PhiloxCudaState philox_for_call(const std::optional<at::Generator>& generator,
                                           int64_t coins) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state((uint64_t)(((coins + 3) / 4) * 4));
}

// A chain op's outputs on `like`'s device, uninitialized: token_ids [B, K+1] int64, num_emitted
// [B] int64, status [B] int32.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_outputs(const at::Tensor& like, int64_t B,
                                                                    int64_t K) {
  const auto opts = like.options().dtype(at::kLong);
  return {at::empty({B, K + 1}, opts), at::empty({B}, opts),
          at::empty({B}, like.options().dtype(at::kInt))};
}

}  // namespace specsample
