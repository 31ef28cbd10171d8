// Runs csrc/kernel_block.cuh's block-verification kernels (verify(..., rule="block")) on the CPU
// (cuda_host.h): the split kernel, `chunks` blocks per request that meet in a global workspace,
// the last to count going on alone; or the one-block kernel (chunks = 0). Blocks run one after
// another, in the order given by `order` (so any block can be the request's last). Inputs come as
// raw little-endian arrays that tests/test_cuda_block_emulated.py writes into a folder:
//   meta.txt   B K V dtype(f32|bf16) has_p chunks threads order(0 ascending, 1 descending)
//   ids.bin (int64 [B, K]) target.bin [B, K+1, V] [draft.bin [B, K, V]] uniforms.bin (float32
//   [B, K+1])
// and writes tokens.bin (int64 [B, K+1]), num_out.bin (int64 [B]), status.bin (int32 [B]).
#include "cuda_host.h"

#include <cstdlib>
#include <functional>

#include "kernel_block.cuh"
#include "host_io.h"

using namespace specsample;

struct Meta {
  long long B = 0, V = 0;
  int K = 0, has_p = 0, chunks = 0, threads = 0, order = 0;
  std::string dtype;
};

template <typename T, bool ALIGNED>
static void launch(const Meta& m, const void* ids, const void* q, const void* p, const float* u,
                   i64* tok, i64* out_num, int* st) {
  static std::function<void()> body;
  const long long units = m.B * (m.chunks > 0 ? m.chunks : 1);
  std::vector<double> ws(m.chunks > 0 ? units * (m.K + 2) : 1, -1.0);  // garbage until written
  std::vector<u32> count(m.B, 0u);
  blockDim.x = (unsigned)m.threads;
  for (long long i = 0; i < units; ++i) {
    blockIdx.x = (unsigned)(m.order ? units - 1 - i : i);
    body = [&] {
      if (m.chunks > 0) {
        verify_block_split_kernel<T, ALIGNED>(ids, p, q, u, tok, out_num, st, m.V, (int)m.B, m.K, 1, 0,
                                              1, 0, 0, nullptr, nullptr, 0, 0, m.chunks, ws.data(),
                                              count.data());
      } else {
        verify_block_kernel<T, ALIGNED>(ids, p, q, u, tok, out_num, st, m.V, (int)m.B, m.K, 1, 0, 1, 0,
                                        0, nullptr, nullptr, 0, 0);
      }
    };
    emu_run_block([] { body(); });
  }
  for (long long b = 0; b < m.B; ++b) {
    if (count[b] != 0u) {
      std::fprintf(stderr, "request %lld: counter left at %u (must be 0 for the next call)\n", b, count[b]);
      std::exit(3);
    }
  }
}

template <typename T>
static void run(const std::string& dir, const Meta& m) {
  auto ids = slurp(dir + "/ids.bin"), target = slurp(dir + "/target.bin");
  auto draft = m.has_p ? slurp(dir + "/draft.bin") : std::vector<char>();
  auto u = slurp(dir + "/uniforms.bin");
  std::vector<i64> tok(m.B * (m.K + 1)), out_num(m.B);
  std::vector<int> st(m.B);
  const bool aligned = (m.V * (long long)sizeof(T)) % 16 == 0;
  const void* p = m.has_p ? (const void*)draft.data() : nullptr;
  auto go = [&](auto kernel) {
    kernel(m, ids.data(), target.data(), p, (const float*)u.data(), tok.data(), out_num.data(), st.data());
  };
  if (aligned) go(launch<T, true>);
  if (!aligned) go(launch<T, false>);
  write_array(dir + "/tokens.bin", tok, tok.size());
  write_array(dir + "/num_out.bin", out_num, m.B);
  write_array(dir + "/status.bin", st, m.B);
}

int main(int argc, char** argv) {
  return host_main(argc, argv, [](const std::string& dir) {
    std::ifstream f(dir + "/meta.txt");
    Meta m;
    f >> m.B >> m.K >> m.V >> m.dtype >> m.has_p >> m.chunks >> m.threads >> m.order;
    if (!f || m.K < 1 || m.K > kMaxK || m.threads < 32 || m.threads > 512 || m.threads % 32) {
      std::fprintf(stderr, "bad meta.txt\n");
      return 2;
    }
    return by_dtype(m.dtype, [&](auto t) { run<decltype(t)>(dir, m); });
  });
}
