// specsample: torch binding of the fused verification kernel (backend `cuda-cpp`).
//
// Registers the custom op `specsample::verify` (CUDA implementation here; the fake/meta
// implementation is registered from Python in specsample.backends.cuda_cpp), so it composes with
// torch.compile and CUDA-graph capture. The other ops of the extension are in the
// verify_torch_*.cu files (torch_common.cuh lists them):
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

#include "torch_common.cuh"

namespace specsample {
namespace {

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
        SPECSAMPLE_CHECK(false, "specsample::verify: unsupported cluster size %d", (int)cfg.cluster);
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
  SPECSAMPLE_CHECK(K <= kMaxK, "specsample::verify: K=%lld exceeds the kernel's limit %d", (long long)K,
                   (int)kMaxK);
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

  auto [tokens, num, status] = chain_outputs(q, B, K);
  if (B == 0) return {tokens, num, status};

  at::PhiloxCudaState rng;
  if (!greedy && !u.defined()) rng = philox_for_call(generator, K + 1);

  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const bool clusters = clusters_available(prop);
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
