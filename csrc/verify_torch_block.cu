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
#include "torch_common.cuh"
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
        SPECSAMPLE_CHECK(false, "specsample::verify_block: unsupported cluster size %d", (int)cl);
    }
#else
    TORCH_CHECK(false, "specsample::verify_block: thread-block clusters need sm_90 or newer");
#endif
  }
#undef SPECSAMPLE_BLOCK_ARGS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The split block kernel (kernel_block.cuh): `chunks` blocks of kBlockSplitThreads threads per
// request, with the split workspace of this (device, stream) holding (K + 2) doubles per block
// (block_split_request_doubles per request).
constexpr int kBlockSplitThreads = 256;  // the kernel's __launch_bounds__

template <typename T, bool ALIGNED>
void launch_block_split(int chunks, int64_t B, cudaStream_t stream, const void* ids, const void* p,
                        const void* q, const float* u, int64_t* tok, int64_t* num, int* st, int64_t V,
                        int K, int ids64, const at::PhiloxCudaState& rng, const at::Device& dev) {
  const int64_t units = B * (int64_t)chunks;
  auto ws = split_workspace(units * ((int64_t)K + 2), B, dev, stream);
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
  SPECSAMPLE_CHECK(K <= kMaxK, "specsample::verify_block: K=%lld exceeds the kernel's limit %d",
                   (long long)K, (int)kMaxK);
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "specsample::verify_block: V must be in [1, 2^31)");
  TORCH_CHECK(B < (int64_t(1) << 27), "specsample::verify_block: B too large");
  const auto st = target_probs.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "specsample::verify_block: probabilities must be float32, float16 or bfloat16");
  const auto it = draft_token_ids.scalar_type();
  TORCH_CHECK(it == at::kInt || it == at::kLong, "specsample::verify_block: ids must be int32 or int64");
  SPECSAMPLE_CHECK(cluster_size_ok((int)cluster),
                   "specsample::verify_block: cluster must be 1, 2, 4, 8 or 16, got %lld", (long long)cluster);
  SPECSAMPLE_CHECK(threads >= 32 && threads % 32 == 0 && threads <= 512,
                   "specsample::verify_block: threads must be a multiple of 32 in [32, 512], got %lld",
                   (long long)threads);
  SPECSAMPLE_CHECK(split >= 0 && split <= (int64_t(1) << 16),
                   "specsample::verify_block: split must be 0 (the cluster kernel) or a chunk count <= 65536, "
                   "got %lld",
                   (long long)split);
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
  auto [tokens, num, status] = chain_outputs(q, B, K);
  if (B == 0) return {tokens, num, status};

  at::PhiloxCudaState rng;
  if (!u.defined()) rng = philox_for_call(generator, K + 1);
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
