// specsample: the bfloat16 tree kernels' launches (see torch_tree.cuh: compiled apart so that the
// extension's build runs the three dtypes in parallel).
#include "torch_tree.cuh"

namespace specsample {
template void launch_tree_typed<bf16>(int, bool, int64_t, cudaStream_t, const TreeLaunch&,
                                       const at::PhiloxCudaState&);
}  // namespace specsample
