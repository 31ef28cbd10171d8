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
#include "torch_tree.cuh"

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
  SPECSAMPLE_CHECK(N <= kMaxTreeNodes, "specsample::verify_tree: N=%lld exceeds the kernel's limit %d",
                   (long long)N, (int)kMaxTreeNodes);
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
  SPECSAMPLE_CHECK(!trav || cluster <= 1,
                   "specsample::verify_tree: traversal runs one block per request (cluster 0 or 1), got %lld",
                   (long long)cluster);
  const int64_t D = max_depth;
  auto opts = q.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({B, D + 1}, opts);
  at::Tensor num = at::empty({B}, opts);
  at::Tensor nodes = at::empty({B, D}, opts);
  at::Tensor status = at::empty({B}, q.options().dtype(at::kInt));
  if (B == 0) return {tokens, num, nodes, status};

  at::PhiloxCudaState rng;
  if (!greedy && !u.defined()) rng = philox_for_call(generator, N + 1);
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const bool clusters = clusters_available(prop);
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
