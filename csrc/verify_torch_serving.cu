// ---------------------------------------------------------------------------------------------
// specsample::verify_serving: the serving entry point (docs/serving.md), one launch: the split
// kernel (kernel_serving_split.cuh; (B, 2K+1, chunks) blocks: one or more per row, with this
// stream's workspace)
// or, under CUDA-graph capture, where a block cannot have its shared memory, or with
// SPECSAMPLE_SERVING_SPLIT=0, the one-block kernel (kernel_serving.cuh; B blocks, no workspace).
// Inputs are the validated padded layout of specsample.serving.ServingInputs (contiguous, on one
// device): ids [B, K] int32/int64, num_draft [B] int64 in [0, K], target [B, K+1, V] and draft
// [B, K, V] (float32/float16/bfloat16 logits or probabilities), temperature / top_p [B] float32,
// top_k [B] int64, param_flags [B] int32; coins from uniforms [B, K+1] float32, else seeds /
// offsets [B] int64, else the generator (advanced by 4 * ceil((K+1)/4), read through
// PhiloxCudaState as the verify op does).
// ---------------------------------------------------------------------------------------------
#include "torch_common.cuh"

#include <algorithm>
#include <cstdlib>
namespace specsample {
namespace {

// The split kernel unless SPECSAMPLE_SERVING_SPLIT=0 asks for the one-block kernel (read at every
// call, as the CuPy launcher does).
bool serving_split_requested() {
  const char* v = std::getenv("SPECSAMPLE_SERVING_SPLIT");
  return !(v != nullptr && v[0] == '0' && v[1] == '\0');
}

// Blocks per counted row of the split kernel (kernel_serving_split.cuh, section 1b); 1 for
// float32. SPECSAMPLE_SERVING_CHUNKS=N (read at every call) gives N, at most kServingChunkMax;
// otherwise, when the batch's rows fill at most half the SMs, as many as fill them, at most
// kServingChunkMax, each with at least 1024 16-byte vectors of the row.
// backends/_cupy_serving.py's split_chunks is the same rule.
int serving_split_chunks(int64_t B, int64_t K, int64_t V, int64_t elem, int64_t sms) {
  if (elem != 2) return 1;
  const char* v = std::getenv("SPECSAMPLE_SERVING_CHUNKS");
  if (v != nullptr && v[0] != '\0') {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    SPECSAMPLE_CHECK(v[0] >= '0' && v[0] <= '9' && *end == '\0' && n >= 1,
                     "SPECSAMPLE_SERVING_CHUNKS must be a positive integer, got '%s'", v);
    return (int)std::min<long>(n, kServingChunkMax);
  }
  const int64_t rows = B * (2 * K + 1);
  if (2 * rows > sms) return 1;
  const int64_t by_vectors = std::max<int64_t>((V + 7) / 8 / 1024, 1);
  return (int)std::min<int64_t>({(int64_t)kServingChunkMax, sms / rows, by_vectors});
}

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
#define SPECSAMPLE_SERVING_KERNEL_ARGS                                                              \
  ids.data_ptr(), ids.scalar_type() == at::kLong ? 1 : 0,                                           \
      reinterpret_cast<const i64*>(num.data_ptr<int64_t>()),                                        \
      reinterpret_cast<const T*>(target.data_ptr()),                                                \
      draft.defined() ? reinterpret_cast<const T*>(draft.data_ptr()) : nullptr,                     \
      temp.data_ptr<float>(), reinterpret_cast<const i64*>(top_k.data_ptr<int64_t>()),              \
      top_p.data_ptr<float>(), pflags.data_ptr<int>(), u.defined() ? u.data_ptr<float>() : nullptr, \
      seeds.defined() ? reinterpret_cast<const i64*>(seeds.data_ptr<int64_t>()) : nullptr,          \
      offsets.defined() ? reinterpret_cast<const i64*>(offsets.data_ptr<int64_t>()) : nullptr,      \
      (u64)seed, (u64)offset, captured ? reinterpret_cast<const i64*>(rng.seed_.ptr) : nullptr,      \
      captured ? reinterpret_cast<const i64*>(rng.offset_.ptr) : nullptr,                           \
      captured ? (u64)rng.offset_intragraph_ : (u64)0, captured ? 1 : 0,                            \
      reinterpret_cast<i64*>(tokens.data_ptr<int64_t>()),                                           \
      reinterpret_cast<i64*>(out_num.data_ptr<int64_t>()), status.data_ptr<int>(), (i64)V, K,       \
      target_logits ? 1 : 0, draft.defined() ? 1 : 0, draft_logits ? 1 : 0, coins, aligned ? 1 : 0
  // The split kernel (docs/dev/cuda-kernel.md) unless SPECSAMPLE_SERVING_SPLIT=0; its workspace
  // belongs to this stream, so under graph capture (a graph may be replayed on any stream) always
  // the one-block kernel, which needs none.
  // (The 16-bit split kernels need more shared memory than pre-Hopper GPUs give a block.)
  const int smem = VecTraits<T>::N == 8 ? kServingDynamicBytes : 0;  // histogram and list
  auto fits = [smem] {
    return (size_t)smem + sizeof(ServingSplitSmem) <=
           at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  };
  if (serving_split_requested() && !captured && fits() && !stream_is_capturing(stream)) {
    const int rows = 2 * K + 1;
    const auto* prop = at::cuda::getCurrentDeviceProperties();
    const int chunks = serving_split_chunks(B, K, V, (int64_t)sizeof(T), prop->multiProcessorCount);
    // the request counters, then (16-byte aligned) the rows' space of section 1b
    const int64_t rows_at = (B + 3) / 4 * 4;
    const int64_t counters = chunks > 1 ? rows_at + B * rows * (int64_t)kServingChunkRowStride : B;
    auto ws = split_workspace(B * rows * kServingRecordWords, counters, target.device(), stream);
    u32* ws_rows = chunks > 1 ? ws.second + rows_at : nullptr;
    if (smem > 0) {
      static std::once_flag once;
      std::call_once(once, [smem] {
        C10_CUDA_CHECK(cudaFuncSetAttribute(verify_serving_split_kernel<T>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      });
    }
    verify_serving_split_kernel<T>
        <<<dim3((unsigned)B, (unsigned)rows, (unsigned)chunks), dim3(kServingThreads), smem, stream>>>(
            SPECSAMPLE_SERVING_KERNEL_ARGS, ws.first, ws.second, ws_rows, chunks);
  } else {
    verify_serving_kernel<T><<<dim3((unsigned)B), dim3(kServingThreads), 0, stream>>>(
        SPECSAMPLE_SERVING_KERNEL_ARGS);
  }
#undef SPECSAMPLE_SERVING_KERNEL_ARGS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor serving_param(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

void check_serving_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t n,
                          const at::Device& dev) {
  SPECSAMPLE_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == n && t.device() == dev,
                   "specsample::verify_serving: %s must be a [B] %s tensor on the target's device", name,
                   c10::toString(dtype));
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
  SPECSAMPLE_CHECK(K <= kMaxK, "specsample::verify_serving: K=%lld exceeds the kernel's limit %d",
                   (long long)K, (int)kMaxK);
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

  auto [tokens, out_num, status] = chain_outputs(target, B, K);
  if (B == 0) return {tokens, out_num, status};

  at::PhiloxCudaState rng;
  if (coins == kServingCoinsGenerator) rng = philox_for_call(generator, K + 1);
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
