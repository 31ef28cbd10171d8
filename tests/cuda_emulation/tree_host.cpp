// Runs csrc/kernel_tree.cuh's verify_tree_kernel (the token rule) or csrc/kernel_traversal.cuh's
// verify_traversal_kernel on the CPU (cuda_host.h), one block per request, over inputs that
// tests/test_cuda_tree_emulated.py writes as raw little-endian arrays into a folder:
//   meta.txt   B N V dtype(f32|bf16) D traversal greedy has_p distinct without ids64 has_u seed
//              offset
//   ids.bin parents.bin (int64 [B, N]) num.bin (int64 [B]) target.bin [draft.bin] [uniforms.bin]
// and writes tokens.bin (int64 [B, D+1]), nodes.bin (int64 [B, D]), num_out.bin (int64 [B]),
// status.bin (int32 [B]). The coins are uniforms.bin (float32 [B, N+1]) when has_u, else the
// kernel's Philox draws with key `seed` and base counter `offset`.
#include "cuda_host.h"

#include <functional>

#include "kernel_traversal.cuh"
#include "host_io.h"

using namespace specsample;

struct Meta {
  long long B = 0, V = 0;
  int N = 0, D = 0, traversal = 0, greedy = 0, has_p = 0, distinct = 0, without = 0, ids64 = 1;
  int has_u = 1;
  unsigned long long seed = 0, offset = 0;
  std::string dtype;
};

template <typename T, bool HAS_P, bool ALIGNED>
static void launch(const Meta& m, const void* ids, const i64* par, const i64* num, const void* q,
                   const void* p, const float* u, i64* tok, i64* nodes, i64* out_num, int* st) {
  static std::function<void()> body;
  for (long long b = 0; b < m.B; ++b) {
    blockIdx.x = (unsigned)b;
    body = [&] {
      if (m.traversal) {
        verify_traversal_kernel<T, ALIGNED>(ids, m.ids64, par, num, q, p, u, tok, nodes, out_num, st,
                                            m.V, m.N, m.D, m.greedy, m.distinct, m.without, m.seed,
                                            m.offset, nullptr, nullptr, 0, 0);
      } else {
        verify_tree_kernel<T, HAS_P, ALIGNED>(ids, m.ids64, par, num, q, p, u, tok, nodes, out_num,
                                              st, m.V, m.N, m.D, m.greedy, m.distinct, m.without,
                                              m.seed, m.offset, nullptr, nullptr, 0, 0);
      }
    };
    emu_run_block([] { body(); });
  }
}

template <typename T>
static void run(const std::string& dir, const Meta& m) {
  auto ids = slurp(dir + "/ids.bin"), par = slurp(dir + "/parents.bin");
  auto num = slurp(dir + "/num.bin"), target = slurp(dir + "/target.bin");
  auto draft = m.has_p ? slurp(dir + "/draft.bin") : std::vector<char>();
  auto u = (m.greedy || !m.has_u) ? std::vector<char>() : slurp(dir + "/uniforms.bin");
  std::vector<i64> tok(m.B * (m.D + 1)), nodes(m.B * (m.D > 0 ? m.D : 1)), out_num(m.B);
  std::vector<int> st(m.B);
  const bool aligned = (m.V * (long long)sizeof(T)) % 16 == 0;
  const void* p = m.has_p ? (const void*)draft.data() : nullptr;
  const float* uu = u.empty() ? nullptr : (const float*)u.data();
  auto go = [&](auto kernel) {
    kernel(m, ids.data(), (const i64*)par.data(), (const i64*)num.data(), target.data(), p, uu,
           tok.data(), nodes.data(), out_num.data(), st.data());
  };
  if (m.has_p && aligned) go(launch<T, true, true>);
  if (m.has_p && !aligned) go(launch<T, true, false>);
  if (!m.has_p && aligned) go(launch<T, false, true>);
  if (!m.has_p && !aligned) go(launch<T, false, false>);
  write_array(dir + "/tokens.bin", tok, tok.size());
  write_array(dir + "/nodes.bin", nodes, m.B * m.D);
  write_array(dir + "/num_out.bin", out_num, m.B);
  write_array(dir + "/status.bin", st, m.B);
}

int main(int argc, char** argv) {
  return host_main(argc, argv, [](const std::string& dir) {
    std::ifstream f(dir + "/meta.txt");
    Meta m;
    f >> m.B >> m.N >> m.V >> m.dtype >> m.D >> m.traversal >> m.greedy >> m.has_p >> m.distinct >>
        m.without >> m.ids64 >> m.has_u >> m.seed >> m.offset;
    if (!f || m.N > kMaxTreeNodes) {
      std::fprintf(stderr, "bad meta.txt\n");
      return 2;
    }
    blockDim.x = kTreeThreads;
    return by_dtype(m.dtype, [&](auto t) { run<decltype(t)>(dir, m); });
  });
}
