// What the host programs of tests/cuda_emulation share: the folder of raw little-endian arrays
// their test writes (inputs) and reads back (outputs), the one-argument command line, and the
// float32 / bfloat16 dispatch. Include after the kernel header (for specsample::bf16).
#pragma once

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

inline std::vector<char> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

template <typename T>
inline void write_array(const std::string& path, const std::vector<T>& v, size_t n) {
  std::ofstream(path, std::ios::binary).write((const char*)v.data(), (std::streamsize)(n * sizeof(T)));
}

// main(argc, argv) of a host program: its one argument is the folder; `run(dir)` reads meta.txt
// and the arrays and returns the exit status.
template <typename F>
inline int host_main(int argc, char** argv, F run) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  return run(std::string(argv[1]));
}

// f(float{}) for "f32", f(bf16{}) for "bf16"; 2 (and a message) for anything else.
template <typename F>
inline int by_dtype(const std::string& dtype, F f) {
  if (dtype == "f32") {
    f(float{});
  } else if (dtype == "bf16") {
    f(specsample::bf16{});
  } else {
    std::fprintf(stderr, "dtype must be f32 or bf16\n");
    return 2;
  }
  return 0;
}
