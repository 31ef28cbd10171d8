// specsample: the tree kernels' launches for the torch binding (host code, nvcc).
//
// verify_torch_tree.cu (the op) calls launch_tree_typed<T>; its three instantiations are compiled
// in verify_torch_tree_float.cu, _half.cu and _bfloat16.cu (declared extern below), because each
// dtype's 20 kernels (5 cluster sizes x draft probabilities or not x the two load paths) take as
// long to compile as the rest of the extension together. One block, or one cluster of CL blocks, of
// kTreeThreads threads per request (kernel_tree.cuh).
#pragma once

#include "torch_common.cuh"

namespace specsample {

// The arguments of one tree launch (the op's validated tensors, as pointers).
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
    default: SPECSAMPLE_CHECK(false, "specsample::verify_tree: unsupported cluster size %d", (int)cl);
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

extern template void launch_tree_typed<float>(int, bool, int64_t, cudaStream_t, const TreeLaunch&,
                                              const at::PhiloxCudaState&);
extern template void launch_tree_typed<f16>(int, bool, int64_t, cudaStream_t, const TreeLaunch&,
                                            const at::PhiloxCudaState&);
extern template void launch_tree_typed<bf16>(int, bool, int64_t, cudaStream_t, const TreeLaunch&,
                                             const at::PhiloxCudaState&);

}  // namespace specsample
