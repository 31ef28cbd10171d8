// Runs csrc/kernel_serving.cuh's verify_serving_kernel, or kernel_serving_split.cuh's
// verify_serving_split_kernel, on the CPU (cuda_host.h) over inputs that
// tests/test_cuda_serving_emulated.py writes as raw little-endian arrays into a folder:
//   meta.txt   B K V dtype(f32|bf16) target_logits has_draft draft_logits coins threads ids64 kernel
//              chunks (kernel: 0 one block per request; 1 split, blocks in launch order; 2 split,
//              blocks in reverse order, so that another block finishes each request; 3 split with
//              `chunks` blocks per counted row, every row's last chunk first, rows in reverse
//              order, so that every row's count is in flight at once and chunk 0 finishes it)
//   ids.bin num.bin target.bin [draft.bin] temp.bin top_k.bin top_p.bin flags.bin
//   [uniforms.bin | seeds.bin offsets.bin]
// and writes tokens.bin (int64 [B, K+1]), num_out.bin (int64 [B]), status.bin (int32 [B]) and
// radix_rows.txt (the split kernel's 16-bit rows that left the histogram path).
#include "cuda_host.h"

#include <functional>

#include "kernel_serving_split.cuh"
#include "host_io.h"

using namespace specsample;

template <typename T>
static void run(const std::string& dir, long long B, int K, long long V, int tl, int hd, int dl,
                int coins, int threads) {
  auto ids = slurp(dir + "/ids.bin"), num = slurp(dir + "/num.bin"), target = slurp(dir + "/target.bin");
  auto draft = hd ? slurp(dir + "/draft.bin") : std::vector<char>();
  auto temp = slurp(dir + "/temp.bin"), top_k = slurp(dir + "/top_k.bin"), top_p = slurp(dir + "/top_p.bin");
  auto flags = slurp(dir + "/flags.bin");
  std::vector<char> u, seeds, offsets;
  if (coins == kServingCoinsUniforms) u = slurp(dir + "/uniforms.bin");
  if (coins == kServingCoinsSeeds) {
    seeds = slurp(dir + "/seeds.bin");
    offsets = slurp(dir + "/offsets.bin");
  }
  int ids64 = 1, kernel = 0, chunks = 1;
  {
    std::ifstream m(dir + "/meta.txt");
    std::string skip;
    for (int i = 0; i < 9; ++i) m >> skip;
    m >> ids64 >> kernel >> chunks;
  }
  std::vector<i64> tokens(B * (K + 1)), out_num(B);
  std::vector<int> status(B);
  const bool aligned = (V * (long long)sizeof(T)) % 16 == 0;
  blockDim.x = threads;
  static std::function<void()> body;
  if (kernel == 0) {
    for (long long b = 0; b < B; ++b) {
      blockIdx.x = (unsigned)b;
      blockIdx.y = 0;
      body = [&] {
        verify_serving_kernel<T>(
            ids.data(), ids64, (const i64*)num.data(), (const T*)target.data(),
            hd ? (const T*)draft.data() : nullptr, (const float*)temp.data(), (const i64*)top_k.data(),
            (const float*)top_p.data(), (const int*)flags.data(), u.empty() ? nullptr : (const float*)u.data(),
            seeds.empty() ? nullptr : (const i64*)seeds.data(),
            offsets.empty() ? nullptr : (const i64*)offsets.data(), 0, 0, nullptr, nullptr, 0, 0,
            tokens.data(), out_num.data(), status.data(), V, K, tl, hd, dl, coins, aligned ? 1 : 0);
      };
      emu_run_block([] { body(); });
    }
  } else {
    // a workspace of garbage (every record read must have been written by this call) and zeroed
    // counters, which the kernel must leave zeroed
    const long long slots = 2LL * K + 1;
    if (kernel != 3) chunks = 1;
    std::vector<u64> ws(B * slots * kServingRecordWords, 0x7ff4dead7ff4deadull);
    std::vector<u32> count(B, 0u);
    std::vector<u32> rows(chunks > 1 ? B * slots * kServingChunkRowStride : 0, 0u);
    for (long long n = 0; n < B * slots * chunks; ++n) {
      const long long unit = kernel == 1 ? n : B * slots * chunks - 1 - n;  // kernel 3: chunk-major
      blockIdx.x = (unsigned)((unit % (B * slots)) / slots);
      blockIdx.y = (unsigned)(unit % slots);
      blockIdx.z = (unsigned)(unit / (B * slots));
      body = [&] {
        verify_serving_split_kernel<T>(
            ids.data(), ids64, (const i64*)num.data(), (const T*)target.data(),
            hd ? (const T*)draft.data() : nullptr, (const float*)temp.data(), (const i64*)top_k.data(),
            (const float*)top_p.data(), (const int*)flags.data(), u.empty() ? nullptr : (const float*)u.data(),
            seeds.empty() ? nullptr : (const i64*)seeds.data(),
            offsets.empty() ? nullptr : (const i64*)offsets.data(), 0, 0, nullptr, nullptr, 0, 0,
            tokens.data(), out_num.data(), status.data(), V, K, tl, hd, dl, coins, aligned ? 1 : 0,
            ws.data(), count.data(), rows.empty() ? nullptr : rows.data(), chunks);
      };
      emu_run_block([] { body(); });
    }
    for (long long b = 0; b < B; ++b) {
      if (count[b] != 0) {
        std::fprintf(stderr, "request %lld: counter left at %u\n", b, count[b]);
        std::exit(3);
      }
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] != 0) {
        std::fprintf(stderr, "row space word %zu left at %u\n", i, rows[i]);
        std::exit(3);
      }
    }
  }
  write_array(dir + "/tokens.bin", tokens, tokens.size());
  write_array(dir + "/num_out.bin", out_num, out_num.size());
  write_array(dir + "/status.bin", status, status.size());
  if (FILE* f = std::fopen((dir + "/radix_rows.txt").c_str(), "w")) {
    std::fprintf(f, "%lld\n", emu_serving_radix_rows);
    std::fclose(f);
  }
}

int main(int argc, char** argv) {
  return host_main(argc, argv, [](const std::string& dir) {
    std::ifstream m(dir + "/meta.txt");
    long long B, V;
    int K, tl, hd, dl, coins, threads;
    std::string dtype;
    m >> B >> K >> V >> dtype >> tl >> hd >> dl >> coins >> threads;
    if (!m || threads % 32 != 0 || threads / 32 > kServingWarps) {
      std::fprintf(stderr, "bad meta.txt\n");
      return 2;
    }
    return by_dtype(dtype, [&](auto t) { run<decltype(t)>(dir, B, K, V, tl, hd, dl, coins, threads); });
  });
}
