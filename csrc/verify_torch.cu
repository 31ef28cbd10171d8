// specsample: torch binding of the fused verification kernel (backend `cuda-cpp`).
//
// Registers the custom op `specsample::verify` (CUDA implementation here; the fake/meta
// implementation is registered from Python in specsample.backends.cuda_cpp), so it composes with
// torch.compile and CUDA-graph capture:
//
//   specsample::verify(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs,
//                      Tensor? uniforms, Generator? generator, bool greedy,
//                      int cluster=0, int threads=0, int rows_per_step=0, int split=-1)
//                      -> (Tensor token_ids, Tensor num_emitted, Tensor status)
//
// status ([B] int32) holds the per-request flags of docs/contract.md ("Status"): the kernels check
// the values they read and never dereference a draft id outside [0, V).
//
// cluster / threads / rows_per_step = 0 pick the launch configuration automatically (see
// choose_config in launch_config.h); split = -1 lets greedy mode choose the split kernel at the
// smallest batches (see choose_split), 0 never uses it, N > 0 uses it with N chunks per row. Explicit values exist for
// tuning and for the tests, which check every variant.
//
// Random numbers: the generator's Philox (seed, offset) reaches the kernel through
// at::PhiloxCudaState, so under CUDA-graph capture each replay reads the offset that torch advances
// per replay and draws fresh numbers. Each call advances the offset by 4 * ceil((K+1)/4).

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "launch_config.h"
#include "verify_kernel.cuh"

namespace specsample {
static_assert(kLaunchMaxStepRows == kMaxStepRows, "launch_config.h and the kernel disagree");
namespace {

// The split kernels' workspace on one (device, stream): 8-byte slots (greedy: a key per (request,
// row, chunk); block: a record of doubles per block) and a counter per request. The counters are zeroed once, when allocated (on the stream, before the
// kernel), and each request's last block resets its counter, so every call ordered by the stream
// finds them zero. Other streams get their own workspace; under graph capture the cluster kernel
// is used instead (a graph may be replayed on any stream). Never freed: the buffers are small, and
// static tensors must not be destroyed after the CUDA context at exit.
struct SplitWorkspace {
  at::Tensor keys, counters;
};

std::pair<u64*, u32*> split_workspace(int64_t n_keys, int64_t n_counters, const at::Device& dev,
                                      cudaStream_t stream) {
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
bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

template <typename T, bool ALIGNED>
void launch_split(int chunks, int64_t B, cudaStream_t stream, const void* ids, const void* q,
                  int64_t* tok, int64_t* num, int* st, int64_t V, int K, int ids64,
                  const at::Device& dev) {
  const int64_t units = B * (K + 1) * (int64_t)chunks;
  auto ws = split_workspace(units, B, dev, stream);
  // 256 threads: more than K (every draft id has a thread in the combining block)
  verify_greedy_split_kernel<T, ALIGNED><<<dim3((unsigned)units), dim3(256), 0, stream>>>(
      ids, q, reinterpret_cast<i64*>(tok), reinterpret_cast<i64*>(num), st, (i64)V, (int)B, K, ids64,
      chunks, ws.first, ws.second);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool cluster_size_ok(int cl) { return cl == 1 || cl == 2 || cl == 4 || cl == 8 || cl == 16; }

template <typename T, bool GREEDY, bool ALIGNED>
void launch_typed(const LaunchConfig& cfg, int64_t B, cudaStream_t stream, const void* ids,
                  const void* p, const void* q, const float* u, int64_t* tok, int64_t* num, int* st,
                  int64_t V, int K, int ids64, const at::PhiloxCudaState& rng) {
  const uint64_t seed = rng.captured_ ? 0 : rng.seed_.val;
  const uint64_t offset = rng.captured_ ? 0 : rng.offset_.val;
  const int64_t* seed_ptr = rng.captured_ ? rng.seed_.ptr : nullptr;
  const int64_t* offset_ptr = rng.captured_ ? rng.offset_.ptr : nullptr;
  const uint64_t intragraph = rng.captured_ ? rng.offset_intragraph_ : 0;
  const int captured = rng.captured_ ? 1 : 0;
  const dim3 block(cfg.threads);
#define SPECSAMPLE_ARGS                                                                             \
  ids, p, q, u, reinterpret_cast<i64*>(tok), reinterpret_cast<i64*>(num), st, (i64)V, (int)B, K,     \
      ids64,                                                                                        \
      GREEDY ? 1 : 0, cfg.rows_per_step, (u64)seed, (u64)offset,                                   \
      reinterpret_cast<const i64*>(seed_ptr), reinterpret_cast<const i64*>(offset_ptr),            \
      (u64)intragraph, captured
  if (cfg.cluster == 1) {
    verify_kernel<T, GREEDY, ALIGNED><<<dim3((unsigned)B), block, 0, stream>>>(SPECSAMPLE_ARGS);
  } else {
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
    const dim3 grid((unsigned)(B * cfg.cluster));
    switch (cfg.cluster) {
      case 2:
        verify_cluster_kernel<T, 2, GREEDY, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_ARGS);
        break;
      case 4:
        verify_cluster_kernel<T, 4, GREEDY, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_ARGS);
        break;
      case 8:
        verify_cluster_kernel<T, 8, GREEDY, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_ARGS);
        break;
      case 16: {
        static std::once_flag once;
        std::call_once(once, [] {
          C10_CUDA_CHECK(cudaFuncSetAttribute(verify_cluster_kernel<T, 16, GREEDY, ALIGNED>,
                                              cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        });
        verify_cluster_kernel<T, 16, GREEDY, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_ARGS);
        break;
      }
      default:
        TORCH_CHECK(false, "specsample::verify: unsupported cluster size ", cfg.cluster);
    }
#else
    TORCH_CHECK(false, "specsample::verify: thread-block clusters need sm_90 or newer");
#endif
  }
#undef SPECSAMPLE_ARGS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_mode(bool greedy, bool aligned, const LaunchConfig& cfg, int64_t B, cudaStream_t stream,
                 const void* ids, const void* p, const void* q, const float* u, int64_t* tok,
                 int64_t* num, int* st, int64_t V, int K, int ids64, const at::PhiloxCudaState& rng) {
  if (greedy && aligned) {
    launch_typed<T, true, true>(cfg, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  } else if (greedy) {
    launch_typed<T, true, false>(cfg, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  } else if (aligned) {
    launch_typed<T, false, true>(cfg, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  } else {
    launch_typed<T, false, false>(cfg, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  }
}

template <typename T>
void launch_split_path(bool aligned, int chunks, int64_t B, cudaStream_t stream, const void* ids,
                       const void* q, int64_t* tok, int64_t* num, int* st, int64_t V, int K,
                       int ids64, const at::Device& dev) {
  if (aligned) {
    launch_split<T, true>(chunks, B, stream, ids, q, tok, num, st, V, K, ids64, dev);
  } else {
    launch_split<T, false>(chunks, B, stream, ids, q, tok, num, st, V, K, ids64, dev);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_cuda(const at::Tensor& draft_token_ids,
                                               const std::optional<at::Tensor>& draft_probs,
                                               const at::Tensor& target_probs,
                                               const std::optional<at::Tensor>& uniforms,
                                               std::optional<at::Generator> generator, bool greedy,
                                               int64_t cluster, int64_t threads,
                                               int64_t rows_per_step, int64_t split) {
  TORCH_CHECK(target_probs.is_cuda(), "specsample::verify: target_probs must be a CUDA tensor");
  TORCH_CHECK(target_probs.dim() == 3, "specsample::verify: target_probs must be [B, K+1, V]");
  TORCH_CHECK(draft_token_ids.dim() == 2, "specsample::verify: draft_token_ids must be [B, K]");
  const int64_t B = draft_token_ids.size(0), K = draft_token_ids.size(1), V = target_probs.size(2);
  TORCH_CHECK(target_probs.size(0) == B && target_probs.size(1) == K + 1,
              "specsample::verify: target_probs must be [B, K+1, V]");
  TORCH_CHECK(K <= kMaxK, "specsample::verify: K=", K, " exceeds the kernel's limit ", kMaxK);
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "specsample::verify: V must be in [1, 2^31)");
  TORCH_CHECK(B < (int64_t(1) << 27), "specsample::verify: B too large");
  const auto st = target_probs.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "specsample::verify: probabilities must be float32, float16 or bfloat16");
  const auto it = draft_token_ids.scalar_type();
  TORCH_CHECK(it == at::kInt || it == at::kLong, "specsample::verify: ids must be int32 or int64");
  c10::cuda::CUDAGuard guard(target_probs.device());

  const at::Tensor q = target_probs.contiguous();
  const at::Tensor ids = draft_token_ids.contiguous();
  at::Tensor p;
  if (draft_probs.has_value() && draft_probs->defined()) {
    p = draft_probs->contiguous();
    TORCH_CHECK(p.scalar_type() == st && p.dim() == 3 && p.size(0) == B && p.size(1) == K &&
                    p.size(2) == V,
                "specsample::verify: draft_probs must be [B, K, V] with target_probs' dtype");
  }
  at::Tensor u;
  if (uniforms.has_value() && uniforms->defined()) {
    u = uniforms->contiguous();
    TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == B && u.size(1) == K + 1,
                "specsample::verify: uniforms must be float32 [B, K+1]");
  }

  auto opts = q.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({B, K + 1}, opts);
  at::Tensor num = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, q.options().dtype(at::kInt));
  if (B == 0) return {tokens, num, status};

  at::PhiloxCudaState rng;
  if (!greedy && !u.defined()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state((uint64_t)(((K + 1 + 3) / 4) * 4));
  }

  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
  const bool clusters = prop->major >= 9;
#else
  const bool clusters = false;
#endif
  LaunchConfig cfg = choose_config(B, K, V, greedy, prop->multiProcessorCount, clusters,
                                   (int)target_probs.element_size());
  if (cluster > 0) {
    TORCH_CHECK(cluster_size_ok((int)cluster) && (cluster == 1 || clusters),
                "specsample::verify: cluster must be 1, 2, 4, 8 or 16 (>1 needs sm_90)");
    cfg.cluster = (int)cluster;
  }
  if (threads > 0) {
    TORCH_CHECK(threads % 32 == 0 && threads <= 512, "specsample::verify: threads must be a multiple of 32, <= 512");
    cfg.threads = (int)threads;
  }
  if (rows_per_step > 0) cfg.rows_per_step = (int)std::min<int64_t>(rows_per_step, kMaxStepRows);

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const void* pp = p.defined() ? p.data_ptr() : nullptr;
  const float* up = u.defined() ? u.data_ptr<float>() : nullptr;
  const int ids64 = it == at::kLong ? 1 : 0;
  int64_t* tok = tokens.data_ptr<int64_t>();
  int64_t* nm = num.data_ptr<int64_t>();
  int* stp = status.data_ptr<int>();
  // the kernels' 16-byte load path (one instantiation per path; rows_aligned in launch_config.h):
  // V * element size a multiple of 16 and every base pointer the call reads on 16 bytes (greedy
  // mode never reads p)
  const bool aligned = rows_aligned(V, (int)target_probs.element_size(),
                                    reinterpret_cast<uintptr_t>(q.data_ptr()),
                                    reinterpret_cast<uintptr_t>(pp), greedy);

  // greedy at the smallest batches: the split kernel (see choose_split), unless the call asks for
  // a cluster-kernel configuration, or the stream is being captured into a graph
  TORCH_CHECK(split >= -1, "specsample::verify: split must be -1 (automatic), 0 (off) or a chunk count");
  int chunks = 0;
  if (greedy) {
    if (split > 0) {
      chunks = (int)std::min<int64_t>(split, 1 << 20);
    } else if (split < 0 && cluster == 0 && threads == 0 && rows_per_step == 0) {
      chunks = choose_split(B, K, V, true, prop->multiProcessorCount, (int)target_probs.element_size());
    }
    if (chunks > 0 && stream_is_capturing(stream)) chunks = 0;
  }
  if (chunks > 0) {
    const auto dev = target_probs.device();
    switch (st) {
      case at::kFloat:
        launch_split_path<float>(aligned, chunks, B, stream, ids.data_ptr(), q.data_ptr(), tok, nm, stp, V, (int)K, ids64, dev);
        break;
      case at::kHalf:
        launch_split_path<f16>(aligned, chunks, B, stream, ids.data_ptr(), q.data_ptr(), tok, nm, stp, V, (int)K, ids64, dev);
        break;
      default:
        launch_split_path<bf16>(aligned, chunks, B, stream, ids.data_ptr(), q.data_ptr(), tok, nm, stp, V, (int)K, ids64, dev);
        break;
    }
    return {tokens, num, status};
  }
  switch (st) {
    case at::kFloat:
      launch_mode<float>(greedy, aligned, cfg, B, stream, ids.data_ptr(), pp, q.data_ptr(), up, tok, nm, stp, V,
                         (int)K, ids64, rng);
      break;
    case at::kHalf:
      launch_mode<f16>(greedy, aligned, cfg, B, stream, ids.data_ptr(), pp, q.data_ptr(), up, tok, nm, stp, V,
                       (int)K, ids64, rng);
      break;
    default:
      launch_mode<bf16>(greedy, aligned, cfg, B, stream, ids.data_ptr(), pp, q.data_ptr(), up, tok, nm, stp, V,
                        (int)K, ids64, rng);
      break;
  }
  return {tokens, num, status};
}

}  // namespace
}  // namespace specsample

TORCH_LIBRARY(specsample, m) {
  m.def(
      "verify(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs, Tensor? uniforms, "
      "Generator? generator, bool greedy, int cluster=0, int threads=0, int rows_per_step=0, "
      "int split=-1) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(specsample, CUDA, m) { m.impl("verify", &specsample::verify_cuda); }

// ---------------------------------------------------------------------------------------------
// Block verification (rule="block", random mode): specsample::verify_block
//
//   specsample::verify_block(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs,
//                            Tensor? uniforms, Generator? generator, int cluster, int threads,
//                            int split=0) -> (Tensor token_ids, Tensor num_emitted, Tensor status)
//
// One launch of verify_block_kernel / verify_block_cluster_kernel (csrc/kernel_block.cuh), one
// cluster of `cluster` blocks of `threads` threads per request, or, with split > 0 and outside
// graph capture, of verify_block_split_kernel with `split` blocks per request; the Python caller
// picks all three (specsample.backends._cuda_block.block_launch_config and block_split_chunks).
// The generator advances as for verify.
// ---------------------------------------------------------------------------------------------
namespace specsample {
namespace {

template <typename T, bool ALIGNED>
void launch_block_typed(int cl, int threads, int64_t B, cudaStream_t stream, const void* ids,
                        const void* p, const void* q, const float* u, int64_t* tok, int64_t* num,
                        int* st, int64_t V, int K, int ids64, const at::PhiloxCudaState& rng) {
  const uint64_t seed = rng.captured_ ? 0 : rng.seed_.val;
  const uint64_t offset = rng.captured_ ? 0 : rng.offset_.val;
  const int64_t* seed_ptr = rng.captured_ ? rng.seed_.ptr : nullptr;
  const int64_t* offset_ptr = rng.captured_ ? rng.offset_.ptr : nullptr;
  const uint64_t intragraph = rng.captured_ ? rng.offset_intragraph_ : 0;
  const int captured = rng.captured_ ? 1 : 0;
  const dim3 block(threads);
#define SPECSAMPLE_BLOCK_ARGS                                                                      \
  ids, p, q, u, reinterpret_cast<i64*>(tok), reinterpret_cast<i64*>(num), st, (i64)V, (int)B, K,     \
      ids64, 0, 1, (u64)seed, (u64)offset, reinterpret_cast<const i64*>(seed_ptr),                  \
      reinterpret_cast<const i64*>(offset_ptr), (u64)intragraph, captured
  if (cl == 1) {
    verify_block_kernel<T, ALIGNED><<<dim3((unsigned)B), block, 0, stream>>>(SPECSAMPLE_BLOCK_ARGS);
  } else {
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
    const dim3 grid((unsigned)(B * cl));
    switch (cl) {
      case 2:
        verify_block_cluster_kernel<T, 2, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_BLOCK_ARGS);
        break;
      case 4:
        verify_block_cluster_kernel<T, 4, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_BLOCK_ARGS);
        break;
      case 8:
        verify_block_cluster_kernel<T, 8, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_BLOCK_ARGS);
        break;
      case 16: {
        static std::once_flag once;
        std::call_once(once, [] {
          C10_CUDA_CHECK(cudaFuncSetAttribute(verify_block_cluster_kernel<T, 16, ALIGNED>,
                                              cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        });
        verify_block_cluster_kernel<T, 16, ALIGNED><<<grid, block, 0, stream>>>(SPECSAMPLE_BLOCK_ARGS);
        break;
      }
      default:
        TORCH_CHECK(false, "specsample::verify_block: unsupported cluster size ", cl);
    }
#else
    TORCH_CHECK(false, "specsample::verify_block: thread-block clusters need sm_90 or newer");
#endif
  }
#undef SPECSAMPLE_BLOCK_ARGS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The split block kernel (kernel_block.cuh): `chunks` blocks of kBlockSplitThreads threads per
// request, with the split workspace of this (device, stream) holding one record per block.
constexpr int kBlockSplitThreads = 256;  // the kernel's __launch_bounds__

template <typename T, bool ALIGNED>
void launch_block_split(int chunks, int64_t B, cudaStream_t stream, const void* ids, const void* p,
                        const void* q, const float* u, int64_t* tok, int64_t* num, int* st, int64_t V,
                        int K, int ids64, const at::PhiloxCudaState& rng, const at::Device& dev) {
  const int64_t units = B * (int64_t)chunks;
  const int64_t stride = (int64_t)K + 2 + ((int64_t)K + 1) * (kBlockSplitThreads / 32);
  auto ws = split_workspace(units * stride, B, dev, stream);
  const uint64_t seed = rng.captured_ ? 0 : rng.seed_.val;
  const uint64_t offset = rng.captured_ ? 0 : rng.offset_.val;
  verify_block_split_kernel<T, ALIGNED><<<dim3((unsigned)units), dim3(kBlockSplitThreads), 0, stream>>>(
      ids, p, q, u, reinterpret_cast<i64*>(tok), reinterpret_cast<i64*>(num), st, (i64)V, (int)B, K,
      ids64, 0, 1, (u64)seed, (u64)offset, nullptr, nullptr, (u64)0, 0, chunks,
      reinterpret_cast<double*>(ws.first), ws.second);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_block_path(bool aligned, int cl, int threads, int64_t B, cudaStream_t stream,
                       const void* ids, const void* p, const void* q, const float* u, int64_t* tok,
                       int64_t* num, int* st, int64_t V, int K, int ids64,
                       const at::PhiloxCudaState& rng) {
  if (aligned) {
    launch_block_typed<T, true>(cl, threads, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  } else {
    launch_block_typed<T, false>(cl, threads, B, stream, ids, p, q, u, tok, num, st, V, K, ids64, rng);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_block_cuda(
    const at::Tensor& draft_token_ids, const std::optional<at::Tensor>& draft_probs,
    const at::Tensor& target_probs, const std::optional<at::Tensor>& uniforms,
    std::optional<at::Generator> generator, int64_t cluster, int64_t threads, int64_t split) {
  TORCH_CHECK(target_probs.is_cuda(), "specsample::verify_block: target_probs must be a CUDA tensor");
  TORCH_CHECK(target_probs.dim() == 3, "specsample::verify_block: target_probs must be [B, K+1, V]");
  TORCH_CHECK(draft_token_ids.dim() == 2, "specsample::verify_block: draft_token_ids must be [B, K]");
  const int64_t B = draft_token_ids.size(0), K = draft_token_ids.size(1), V = target_probs.size(2);
  TORCH_CHECK(target_probs.size(0) == B && target_probs.size(1) == K + 1,
              "specsample::verify_block: target_probs must be [B, K+1, V]");
  TORCH_CHECK(K <= kMaxK, "specsample::verify_block: K=", K, " exceeds the kernel's limit ", kMaxK);
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "specsample::verify_block: V must be in [1, 2^31)");
  TORCH_CHECK(B < (int64_t(1) << 27), "specsample::verify_block: B too large");
  const auto st = target_probs.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "specsample::verify_block: probabilities must be float32, float16 or bfloat16");
  const auto it = draft_token_ids.scalar_type();
  TORCH_CHECK(it == at::kInt || it == at::kLong, "specsample::verify_block: ids must be int32 or int64");
  TORCH_CHECK(cluster_size_ok((int)cluster), "specsample::verify_block: cluster must be 1, 2, 4, 8 or 16, got ",
              cluster);
  TORCH_CHECK(threads >= 32 && threads % 32 == 0 && threads <= 512,
              "specsample::verify_block: threads must be a multiple of 32 in [32, 512], got ", threads);
  TORCH_CHECK(split >= 0 && split <= (int64_t(1) << 16),
              "specsample::verify_block: split must be 0 (the cluster kernel) or a chunk count <= 65536, got ",
              split);
  TORCH_CHECK(B * split < (int64_t(1) << 31), "specsample::verify_block: B * split too large");
  c10::cuda::CUDAGuard guard(target_probs.device());

  const at::Tensor q = target_probs.contiguous();
  const at::Tensor ids = draft_token_ids.contiguous();
  at::Tensor p;
  if (draft_probs.has_value() && draft_probs->defined()) {
    p = draft_probs->contiguous();
    TORCH_CHECK(p.scalar_type() == st && p.dim() == 3 && p.size(0) == B && p.size(1) == K &&
                    p.size(2) == V,
                "specsample::verify_block: draft_probs must be [B, K, V] with target_probs' dtype");
  }
  at::Tensor u;
  if (uniforms.has_value() && uniforms->defined()) {
    u = uniforms->contiguous();
    TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == B && u.size(1) == K + 1,
                "specsample::verify_block: uniforms must be float32 [B, K+1]");
  }
  auto opts = q.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({B, K + 1}, opts);
  at::Tensor num = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, q.options().dtype(at::kInt));
  if (B == 0) return {tokens, num, status};

  at::PhiloxCudaState rng;
  if (!u.defined()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state((uint64_t)(((K + 1 + 3) / 4) * 4));
  }
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
  TORCH_CHECK(cluster == 1 || at::cuda::getCurrentDeviceProperties()->major >= 9,
              "specsample::verify_block: cluster > 1 needs sm_90");
#endif
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const void* pp = p.defined() ? p.data_ptr() : nullptr;
  const float* up = u.defined() ? u.data_ptr<float>() : nullptr;
  const int ids64 = it == at::kLong ? 1 : 0;
  const bool aligned = rows_aligned(V, (int)target_probs.element_size(),
                                    reinterpret_cast<uintptr_t>(q.data_ptr()),
                                    reinterpret_cast<uintptr_t>(pp), false);
  int64_t* tok = tokens.data_ptr<int64_t>();
  int64_t* nm = num.data_ptr<int64_t>();
  int* stp = status.data_ptr<int>();
  // the split kernel's workspace belongs to this stream: under graph capture (a graph may be
  // replayed on any stream, and its replays would share one counter), the cluster kernel
  if (split > 0 && !rng.captured_ && !stream_is_capturing(stream)) {
    const auto dev = target_probs.device();
    const int chunks = (int)split;
#define SPECSAMPLE_SPLIT_CALL(T)                                                                     \
  (aligned ? launch_block_split<T, true>(chunks, B, stream, ids.data_ptr(), pp, q.data_ptr(), up, tok, nm, \
                                         stp, V, (int)K, ids64, rng, dev)                              \
           : launch_block_split<T, false>(chunks, B, stream, ids.data_ptr(), pp, q.data_ptr(), up, tok, nm, \
                                          stp, V, (int)K, ids64, rng, dev))
    switch (st) {
      case at::kFloat:
        SPECSAMPLE_SPLIT_CALL(float);
        break;
      case at::kHalf:
        SPECSAMPLE_SPLIT_CALL(f16);
        break;
      default:
        SPECSAMPLE_SPLIT_CALL(bf16);
        break;
    }
#undef SPECSAMPLE_SPLIT_CALL
    return {tokens, num, status};
  }
  switch (st) {
    case at::kFloat:
      launch_block_path<float>(aligned, (int)cluster, (int)threads, B, stream, ids.data_ptr(), pp,
                               q.data_ptr(), up, tok, nm, stp, V, (int)K, ids64, rng);
      break;
    case at::kHalf:
      launch_block_path<f16>(aligned, (int)cluster, (int)threads, B, stream, ids.data_ptr(), pp,
                             q.data_ptr(), up, tok, nm, stp, V, (int)K, ids64, rng);
      break;
    default:
      launch_block_path<bf16>(aligned, (int)cluster, (int)threads, B, stream, ids.data_ptr(), pp,
                              q.data_ptr(), up, tok, nm, stp, V, (int)K, ids64, rng);
      break;
  }
  return {tokens, num, status};
}

}  // namespace
}  // namespace specsample

TORCH_LIBRARY_FRAGMENT(specsample, m) {
  m.def(
      "verify_block(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs, "
      "Tensor? uniforms, Generator? generator, int cluster, int threads, int split=0) -> "
      "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(specsample, CUDA, m) { m.impl("verify_block", &specsample::verify_block_cuda); }

// ---------------------------------------------------------------------------------------------
// specsample::verify_serving: the serving entry point (docs/serving.md; kernel_serving.cuh), one
// launch of verify_serving_kernel, B blocks. Inputs are the validated padded layout of
// specsample.serving.ServingInputs (contiguous, on one device): ids [B, K] int32/int64,
// num_draft [B] int64 in [0, K], target [B, K+1, V] and draft [B, K, V] (float32/float16/bfloat16
// logits or probabilities), temperature / top_p [B] float32, top_k [B] int64, param_flags [B]
// int32; coins from uniforms [B, K+1] float32, else seeds / offsets [B] int64, else the generator
// (advanced by 4 * ceil((K+1)/4), read through PhiloxCudaState as the verify op does).
// ---------------------------------------------------------------------------------------------
namespace specsample {
namespace {

template <typename T>
void launch_serving_typed(int64_t B, cudaStream_t stream, const at::Tensor& ids, const at::Tensor& num,
                          const at::Tensor& target, const at::Tensor& draft, const at::Tensor& temp,
                          const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& pflags,
                          const at::Tensor& u, const at::Tensor& seeds, const at::Tensor& offsets,
                          const at::PhiloxCudaState& rng, int coins, at::Tensor& tokens,
                          at::Tensor& out_num, at::Tensor& status, int64_t V, int K,
                          bool target_logits, bool draft_logits, bool aligned) {
  const bool captured = coins == kServingCoinsGenerator && rng.captured_;
  const uint64_t seed = coins == kServingCoinsGenerator && !captured ? rng.seed_.val : 0;
  const uint64_t offset = coins == kServingCoinsGenerator && !captured ? rng.offset_.val : 0;
  verify_serving_kernel<T><<<dim3((unsigned)B), dim3(kServingThreads), 0, stream>>>(
      ids.data_ptr(), ids.scalar_type() == at::kLong ? 1 : 0,
      reinterpret_cast<const i64*>(num.data_ptr<int64_t>()),
      reinterpret_cast<const T*>(target.data_ptr()),
      draft.defined() ? reinterpret_cast<const T*>(draft.data_ptr()) : nullptr,
      temp.data_ptr<float>(), reinterpret_cast<const i64*>(top_k.data_ptr<int64_t>()),
      top_p.data_ptr<float>(), pflags.data_ptr<int>(), u.defined() ? u.data_ptr<float>() : nullptr,
      seeds.defined() ? reinterpret_cast<const i64*>(seeds.data_ptr<int64_t>()) : nullptr,
      offsets.defined() ? reinterpret_cast<const i64*>(offsets.data_ptr<int64_t>()) : nullptr,
      (u64)seed, (u64)offset, captured ? reinterpret_cast<const i64*>(rng.seed_.ptr) : nullptr,
      captured ? reinterpret_cast<const i64*>(rng.offset_.ptr) : nullptr,
      captured ? (u64)rng.offset_intragraph_ : (u64)0, captured ? 1 : 0,
      reinterpret_cast<i64*>(tokens.data_ptr<int64_t>()),
      reinterpret_cast<i64*>(out_num.data_ptr<int64_t>()), status.data_ptr<int>(), (i64)V, K,
      target_logits ? 1 : 0, draft.defined() ? 1 : 0, draft_logits ? 1 : 0, coins, aligned ? 1 : 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor serving_param(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

void check_serving_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t n,
                          const at::Device& dev) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == n && t.device() == dev,
              "specsample::verify_serving: ", name, " must be a [B] ", c10::toString(dtype),
              " tensor on the target's device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_serving_cuda(
    const at::Tensor& draft_token_ids, const at::Tensor& num_draft_tokens, const at::Tensor& target_in,
    const std::optional<at::Tensor>& draft_in, const at::Tensor& temperature_in,
    const at::Tensor& top_k_in, const at::Tensor& top_p_in, const at::Tensor& param_flags_in,
    const std::optional<at::Tensor>& uniforms, const std::optional<at::Tensor>& seeds_in,
    const std::optional<at::Tensor>& offsets_in, std::optional<at::Generator> generator,
    bool target_logits, bool draft_logits) {
  TORCH_CHECK(target_in.is_cuda() && target_in.dim() == 3,
              "specsample::verify_serving: target must be a CUDA tensor [B, K+1, V]");
  TORCH_CHECK(draft_token_ids.dim() == 2, "specsample::verify_serving: draft_token_ids must be [B, K]");
  const int64_t B = draft_token_ids.size(0), K = draft_token_ids.size(1), V = target_in.size(2);
  TORCH_CHECK(target_in.size(0) == B && target_in.size(1) == K + 1,
              "specsample::verify_serving: target must be [B, K+1, V]");
  TORCH_CHECK(K <= kMaxK, "specsample::verify_serving: K=", K, " exceeds the kernel's limit ", kMaxK);
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "specsample::verify_serving: V must be in [1, 2^31)");
  TORCH_CHECK(B < (int64_t(1) << 31), "specsample::verify_serving: B too large");
  const auto st = target_in.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "specsample::verify_serving: target must be float32, float16 or bfloat16");
  const auto it = draft_token_ids.scalar_type();
  TORCH_CHECK(it == at::kInt || it == at::kLong, "specsample::verify_serving: ids must be int32 or int64");
  c10::cuda::CUDAGuard guard(target_in.device());
  const auto dev = target_in.device();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor ids = draft_token_ids.contiguous();
  TORCH_CHECK(ids.device() == dev, "specsample::verify_serving: draft_token_ids must be on the target's device");
  const at::Tensor draft = serving_param(draft_in);
  if (draft.defined()) {
    TORCH_CHECK(draft.scalar_type() == st && draft.dim() == 3 && draft.size(0) == B &&
                    draft.size(1) == K && draft.size(2) == V && draft.device() == dev,
                "specsample::verify_serving: draft must be [B, K, V] with the target's dtype and device");
  }
  const at::Tensor num = num_draft_tokens.contiguous();
  const at::Tensor temp = temperature_in.contiguous();
  const at::Tensor top_k = top_k_in.contiguous();
  const at::Tensor top_p = top_p_in.contiguous();
  const at::Tensor pflags = param_flags_in.contiguous();
  check_serving_vector(num, "num_draft_tokens", at::kLong, B, dev);
  check_serving_vector(temp, "temperature", at::kFloat, B, dev);
  check_serving_vector(top_k, "top_k", at::kLong, B, dev);
  check_serving_vector(top_p, "top_p", at::kFloat, B, dev);
  check_serving_vector(pflags, "param_flags", at::kInt, B, dev);
  const at::Tensor u = serving_param(uniforms);
  const at::Tensor seeds = serving_param(seeds_in);
  const at::Tensor offsets = serving_param(offsets_in);
  int coins = kServingCoinsGenerator;
  if (u.defined()) {
    TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == B && u.size(1) == K + 1 &&
                    u.device() == dev,
                "specsample::verify_serving: uniforms must be float32 [B, K+1] on the target's device");
    coins = kServingCoinsUniforms;
  } else if (seeds.defined()) {
    check_serving_vector(seeds, "seeds", at::kLong, B, dev);
    TORCH_CHECK(offsets.defined(), "specsample::verify_serving: seeds need offsets");
    check_serving_vector(offsets, "offsets", at::kLong, B, dev);
    coins = kServingCoinsSeeds;
  }

  auto opts = target.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({B, K + 1}, opts);
  at::Tensor out_num = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, target.options().dtype(at::kInt));
  if (B == 0) return {tokens, out_num, status};

  at::PhiloxCudaState rng;
  if (coins == kServingCoinsGenerator) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state((uint64_t)(((K + 1 + 3) / 4) * 4));
  }
  const int eb = (int)target.element_size();
  const bool aligned = (V * eb) % 16 == 0 && reinterpret_cast<uintptr_t>(target.data_ptr()) % 16 == 0 &&
                       (!draft.defined() || reinterpret_cast<uintptr_t>(draft.data_ptr()) % 16 == 0);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
#define SPECSAMPLE_SERVING_ARGS                                                                     \
  B, stream, ids, num, target, draft, temp, top_k, top_p, pflags, u, seeds, offsets, rng, coins,    \
      tokens, out_num, status, V, (int)K, target_logits, draft_logits, aligned
  switch (st) {
    case at::kFloat:
      launch_serving_typed<float>(SPECSAMPLE_SERVING_ARGS);
      break;
    case at::kHalf:
      launch_serving_typed<f16>(SPECSAMPLE_SERVING_ARGS);
      break;
    default:
      launch_serving_typed<bf16>(SPECSAMPLE_SERVING_ARGS);
      break;
  }
#undef SPECSAMPLE_SERVING_ARGS
  return {tokens, out_num, status};
}

}  // namespace
}  // namespace specsample

TORCH_LIBRARY_FRAGMENT(specsample, m) {
  m.def(
      "verify_serving(Tensor draft_token_ids, Tensor num_draft_tokens, Tensor target, Tensor? draft, "
      "Tensor temperature, Tensor top_k, Tensor top_p, Tensor param_flags, Tensor? uniforms, "
      "Tensor? seeds, Tensor? offsets, Generator? generator, bool target_logits, "
      "bool draft_logits) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(specsample, CUDA, m) { m.impl("verify_serving", &specsample::verify_serving_cuda); }

// ---------------------------------------------------------------------------------------------
// Tree verification: specsample::verify_tree (kernel_tree.cuh), one block per request.
//
//   specsample::verify_tree(Tensor draft_token_ids, Tensor parents, Tensor num_nodes,
//                           Tensor? draft_probs, Tensor target_probs, Tensor? uniforms,
//                           Generator? generator, bool greedy, bool distinct, bool without,
//                           int max_depth, int cluster=0, bool traversal=False)
//                           -> (Tensor token_ids, Tensor num_emitted, Tensor accepted_nodes,
//                               Tensor status)
//
// The inputs come validated from Backend.verify_tree (shapes, dtypes, device); values are checked
// in the kernel. draft_probs (random mode only) selects recursive rejection sampling over
// siblings, drawn without replacement when `without` is set; None the target-only rule. Random mode without uniforms advances the generator by 4 * ceil((N+1)/4).
// cluster = 0 picks the blocks per request with tree_cluster_size (below; _cuda_tree.py holds the
// Python copy the cupy backend uses); 1, 2, 4, 8 or 16 force it (tests, tuning).
// traversal (random mode, draft_probs given): traversal verification (kernel_traversal.cuh), one
// block per request (cluster must be 0 or 1); the generator is advanced as for the token rule.
// ---------------------------------------------------------------------------------------------
namespace specsample {
namespace {

// Blocks per request: 16 up to B = 4, then the largest of 8, 4, 2 that keeps B * CL blocks within
// one per SM, else 1 (one 512-thread block per SM: ~104 registers per thread).
int tree_cluster_size(int64_t B, int num_sms, bool clusters) {
  if (!clusters) return 1;
  if (B <= 4) return 16;
  for (int cl = 8; cl > 1; cl /= 2) {
    if (B * cl <= num_sms) return cl;
  }
  return 1;
}

struct TreeLaunch {
  const void* ids;
  int ids64;
  const int64_t* par;
  const int64_t* cnt;
  const void* q;
  const void* p;
  const float* u;
  int64_t* tok;
  int64_t* acc;
  int64_t* num;
  int* st;
  int64_t V;
  int N, D;
  bool greedy, distinct, without;
};

// Traversal verification: one block per request, one instantiation per dtype and load path.
template <typename T>
void launch_traversal(bool aligned, int64_t B, cudaStream_t stream, const TreeLaunch& a,
                      const at::PhiloxCudaState& rng) {
  const uint64_t seed = rng.captured_ ? 0 : rng.seed_.val;
  const uint64_t offset = rng.captured_ ? 0 : rng.offset_.val;
  const int64_t* seed_ptr = rng.captured_ ? rng.seed_.ptr : nullptr;
  const int64_t* offset_ptr = rng.captured_ ? rng.offset_.ptr : nullptr;
  const uint64_t intragraph = rng.captured_ ? rng.offset_intragraph_ : 0;
  auto kernel = aligned ? verify_traversal_kernel<T, true> : verify_traversal_kernel<T, false>;
  kernel<<<dim3((unsigned)B), dim3(kTreeThreads), 0, stream>>>(
      a.ids, a.ids64, reinterpret_cast<const i64*>(a.par), reinterpret_cast<const i64*>(a.cnt), a.q,
      a.p, a.u, reinterpret_cast<i64*>(a.tok), reinterpret_cast<i64*>(a.acc),
      reinterpret_cast<i64*>(a.num), a.st, (i64)a.V, a.N, a.D, 0, 0, 0, (u64)seed, (u64)offset,
      reinterpret_cast<const i64*>(seed_ptr), reinterpret_cast<const i64*>(offset_ptr),
      (u64)intragraph, rng.captured_ ? 1 : 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int CL, bool HAS_P, bool ALIGNED>
void launch_tree_cl(int64_t B, cudaStream_t stream, const TreeLaunch& a, const at::PhiloxCudaState& rng) {
  const uint64_t seed = rng.captured_ ? 0 : rng.seed_.val;
  const uint64_t offset = rng.captured_ ? 0 : rng.offset_.val;
  const int64_t* seed_ptr = rng.captured_ ? rng.seed_.ptr : nullptr;
  const int64_t* offset_ptr = rng.captured_ ? rng.offset_.ptr : nullptr;
  const uint64_t intragraph = rng.captured_ ? rng.offset_intragraph_ : 0;
#define SPECSAMPLE_TREE_ARGS                                                                       \
  a.ids, a.ids64, reinterpret_cast<const i64*>(a.par), reinterpret_cast<const i64*>(a.cnt), a.q,   \
      a.p, a.u, reinterpret_cast<i64*>(a.tok), reinterpret_cast<i64*>(a.acc),                      \
      reinterpret_cast<i64*>(a.num), a.st, (i64)a.V, a.N, a.D, a.greedy ? 1 : 0,                    \
      a.distinct ? 1 : 0, a.without ? 1 : 0, (u64)seed, (u64)offset,                               \
      reinterpret_cast<const i64*>(seed_ptr), reinterpret_cast<const i64*>(offset_ptr),            \
      (u64)intragraph, rng.captured_ ? 1 : 0
  if constexpr (CL == 1) {
    verify_tree_kernel<T, HAS_P, ALIGNED><<<dim3((unsigned)B), dim3(kTreeThreads), 0, stream>>>(SPECSAMPLE_TREE_ARGS);
  } else {
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
    if constexpr (CL > 8) {
      static std::once_flag once;
      std::call_once(once, [] {
        C10_CUDA_CHECK(cudaFuncSetAttribute(verify_tree_cluster_kernel<T, CL, HAS_P, ALIGNED>,
                                            cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      });
    }
    verify_tree_cluster_kernel<T, CL, HAS_P, ALIGNED>
        <<<dim3((unsigned)(B * CL)), dim3(kTreeThreads), 0, stream>>>(SPECSAMPLE_TREE_ARGS);
#else
    TORCH_CHECK(false, "specsample::verify_tree: thread-block clusters need sm_90 or newer");
#endif
  }
#undef SPECSAMPLE_TREE_ARGS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool HAS_P, bool ALIGNED>
void launch_tree_cluster(int cl, int64_t B, cudaStream_t stream, const TreeLaunch& a,
                         const at::PhiloxCudaState& rng) {
  switch (cl) {
    case 1: launch_tree_cl<T, 1, HAS_P, ALIGNED>(B, stream, a, rng); break;
    case 2: launch_tree_cl<T, 2, HAS_P, ALIGNED>(B, stream, a, rng); break;
    case 4: launch_tree_cl<T, 4, HAS_P, ALIGNED>(B, stream, a, rng); break;
    case 8: launch_tree_cl<T, 8, HAS_P, ALIGNED>(B, stream, a, rng); break;
    case 16: launch_tree_cl<T, 16, HAS_P, ALIGNED>(B, stream, a, rng); break;
    default: TORCH_CHECK(false, "specsample::verify_tree: unsupported cluster size ", cl);
  }
}

template <typename T>
void launch_tree_typed(int cl, bool aligned, int64_t B, cudaStream_t stream, const TreeLaunch& a,
                       const at::PhiloxCudaState& rng) {
  const bool has_p = a.p != nullptr;
  if (has_p && aligned) {
    launch_tree_cluster<T, true, true>(cl, B, stream, a, rng);
  } else if (has_p) {
    launch_tree_cluster<T, true, false>(cl, B, stream, a, rng);
  } else if (aligned) {
    launch_tree_cluster<T, false, true>(cl, B, stream, a, rng);
  } else {
    launch_tree_cluster<T, false, false>(cl, B, stream, a, rng);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(
    const at::Tensor& draft_token_ids, const at::Tensor& parents, const at::Tensor& num_nodes,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
    const std::optional<at::Tensor>& uniforms, std::optional<at::Generator> generator, bool greedy,
    bool distinct, bool without, int64_t max_depth, int64_t cluster, bool traversal) {
  TORCH_CHECK(target_probs.is_cuda() && target_probs.dim() == 3,
              "specsample::verify_tree: target_probs must be a CUDA tensor [B, N+1, V]");
  const int64_t B = target_probs.size(0), N = target_probs.size(1) - 1, V = target_probs.size(2);
  TORCH_CHECK(draft_token_ids.dim() == 2 && draft_token_ids.size(0) == B && draft_token_ids.size(1) == N,
              "specsample::verify_tree: draft_token_ids must be [B, N]");
  TORCH_CHECK(parents.scalar_type() == at::kLong && parents.dim() == 2 && parents.size(0) == B &&
                  parents.size(1) == N,
              "specsample::verify_tree: parents must be int64 [B, N]");
  TORCH_CHECK(num_nodes.scalar_type() == at::kLong && num_nodes.dim() == 1 && num_nodes.size(0) == B,
              "specsample::verify_tree: num_nodes must be int64 [B]");
  TORCH_CHECK(N <= kMaxTreeNodes, "specsample::verify_tree: N=", N, " exceeds the kernel's limit ",
              kMaxTreeNodes);
  TORCH_CHECK(max_depth >= 0 && max_depth < (int64_t(1) << 30),
              "specsample::verify_tree: max_depth must be in [0, 2^30)");
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "specsample::verify_tree: V must be in [1, 2^31)");
  TORCH_CHECK(B < (int64_t(1) << 31), "specsample::verify_tree: B too large");
  const auto st = target_probs.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "specsample::verify_tree: probabilities must be float32, float16 or bfloat16");
  const auto it = draft_token_ids.scalar_type();
  TORCH_CHECK(it == at::kInt || it == at::kLong, "specsample::verify_tree: ids must be int32 or int64");
  c10::cuda::CUDAGuard guard(target_probs.device());

  const at::Tensor q = target_probs.contiguous();
  const at::Tensor ids = draft_token_ids.contiguous();
  const at::Tensor par = parents.contiguous();
  const at::Tensor cnt = num_nodes.contiguous();
  at::Tensor p;
  if (!greedy && draft_probs.has_value() && draft_probs->defined() && N > 0) {
    p = draft_probs->contiguous();
    TORCH_CHECK(p.scalar_type() == st && p.dim() == 3 && p.size(0) == B && p.size(1) == N &&
                    p.size(2) == V,
                "specsample::verify_tree: draft_probs must be [B, N, V] with target_probs' dtype");
  }
  at::Tensor u;
  if (!greedy && uniforms.has_value() && uniforms->defined()) {
    u = uniforms->contiguous();
    TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == B && u.size(1) == N + 1,
                "specsample::verify_tree: uniforms must be float32 [B, N+1]");
  }
  const bool trav = traversal && !greedy;
  TORCH_CHECK(!trav || N == 0 || p.defined(),
              "specsample::verify_tree: traversal=True in random mode needs draft_probs");
  TORCH_CHECK(!trav || cluster <= 1,
              "specsample::verify_tree: traversal runs one block per request (cluster 0 or 1), got ",
              cluster);
  const int64_t D = max_depth;
  auto opts = q.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({B, D + 1}, opts);
  at::Tensor num = at::empty({B}, opts);
  at::Tensor nodes = at::empty({B, D}, opts);
  at::Tensor status = at::empty({B}, q.options().dtype(at::kInt));
  if (B == 0) return {tokens, num, nodes, status};

  at::PhiloxCudaState rng;
  if (!greedy && !u.defined()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state((uint64_t)(((N + 1 + 3) / 4) * 4));
  }
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
#if defined(SPECSAMPLE_CLUSTERS) && SPECSAMPLE_CLUSTERS
  const bool clusters = prop->major >= 9;
#else
  const bool clusters = false;
#endif
  int cl = tree_cluster_size(B, prop->multiProcessorCount, clusters);
  if (cluster > 0) {
    TORCH_CHECK(cluster_size_ok((int)cluster) && (cluster == 1 || clusters),
                "specsample::verify_tree: cluster must be 1, 2, 4, 8 or 16 (>1 needs sm_90)");
    cl = (int)cluster;
  }
  const void* pp = p.defined() ? p.data_ptr() : nullptr;
  const bool aligned = rows_aligned(V, (int)target_probs.element_size(),
                                    reinterpret_cast<uintptr_t>(q.data_ptr()),
                                    reinterpret_cast<uintptr_t>(pp), false);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TreeLaunch a;
  a.ids = ids.data_ptr();
  a.ids64 = it == at::kLong ? 1 : 0;
  a.par = par.data_ptr<int64_t>();
  a.cnt = cnt.data_ptr<int64_t>();
  a.q = q.data_ptr();
  a.p = pp;
  a.u = u.defined() ? u.data_ptr<float>() : nullptr;
  a.tok = tokens.data_ptr<int64_t>();
  a.acc = nodes.data_ptr<int64_t>();
  a.num = num.data_ptr<int64_t>();
  a.st = status.data_ptr<int>();
  a.V = V;
  a.N = (int)N;
  a.D = (int)D;
  a.greedy = greedy;
  a.distinct = distinct;
  a.without = without;
  if (trav) {
    switch (st) {
      case at::kFloat: launch_traversal<float>(aligned, B, stream, a, rng); break;
      case at::kHalf: launch_traversal<f16>(aligned, B, stream, a, rng); break;
      default: launch_traversal<bf16>(aligned, B, stream, a, rng); break;
    }
    return {tokens, num, nodes, status};
  }
  switch (st) {
    case at::kFloat:
      launch_tree_typed<float>(cl, aligned, B, stream, a, rng);
      break;
    case at::kHalf:
      launch_tree_typed<f16>(cl, aligned, B, stream, a, rng);
      break;
    default:
      launch_tree_typed<bf16>(cl, aligned, B, stream, a, rng);
      break;
  }
  return {tokens, num, nodes, status};
}

}  // namespace
}  // namespace specsample

TORCH_LIBRARY_FRAGMENT(specsample, m) {
  m.def(
      "verify_tree(Tensor draft_token_ids, Tensor parents, Tensor num_nodes, Tensor? draft_probs, "
      "Tensor target_probs, Tensor? uniforms, Generator? generator, bool greedy, bool distinct, "
      "bool without, int max_depth, int cluster=0, bool traversal=False) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(specsample, CUDA, m) { m.impl("verify_tree", &specsample::verify_tree_cuda); }
