// Runs the CUDA wavefront kernels (cuda/soft_dtw_wavefront.cuh) on the host, one
// emulated thread per block, so their indexing can be tested without a GPU
// (tests/test_soft_dtw.py::test_cuda_wavefront_emulated). One thread per block is an
// exact emulation here: cells of one diagonal never read each other, so a block's
// threads are only ever separated by __syncthreads at diagonal boundaries.
//
// stdin:  variant(standard|otam) dtype(float|double) smem(0|1) gamma B N M,
//         then B*N*M costs and B upstream gradients
// stdout: B values, then B*N*M gradients
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#define SDTW_EMULATE_CUDA
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
struct EmuDim3 {
  int x = 0;
};
static EmuDim3 blockIdx, threadIdx, blockDim;
static unsigned char* sdtw_emu_smem = nullptr;
static inline void __syncthreads() {}
using std::max;
using std::min;

#include "../cuda/soft_dtw_wavefront.cuh"

using namespace tap_fast::sdtw;

template <typename T>
int run(const Grid& g, bool use_smem, double gamma, int B) {
  const int64_t cells = int64_t(g.n) * g.m;
  std::vector<T> cost(B * cells), grad_out(B), R(int64_t(B) * g.rows() * g.cols()), out(B),
      grad(B * cells), scratch(int64_t(B) * 7 * g.rows());
  std::vector<unsigned char> smem(7 * g.rows() * sizeof(T));
  for (auto& v : cost) {
    double x;
    std::cin >> x;
    v = T(x);
  }
  for (auto& v : grad_out) {
    double x;
    std::cin >> x;
    v = T(x);
  }
  sdtw_emu_smem = smem.data();
  blockDim.x = 1;
  threadIdx.x = 0;
  for (int b = 0; b < B; ++b) {
    blockIdx.x = b;
    forward_kernel<T>(cost.data(), R.data(), out.data(), scratch.data(), g, T(gamma), use_smem);
  }
  for (int b = 0; b < B; ++b) {
    blockIdx.x = b;
    backward_kernel<T>(grad_out.data(), R.data(), grad.data(), scratch.data(), g, T(gamma),
                       use_smem);
  }
  for (auto v : out) std::printf("%.17g\n", double(v));
  for (auto v : grad) std::printf("%.17g\n", double(v));
  return 0;
}

int main() {
  std::string variant, dtype;
  int smem, B, N, M;
  double gamma;
  std::cin >> variant >> dtype >> smem >> gamma >> B >> N >> M;
  const Grid g{N, M, variant == "otam" ? kOtam : kStandard};
  return dtype == "float" ? run<float>(g, smem != 0, gamma, B)
                          : run<double>(g, smem != 0, gamma, B);
}
