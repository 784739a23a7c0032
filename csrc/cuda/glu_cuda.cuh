// The machinery of the CUDA kernels, shared by forward (glu_forward.cu) and backward
// (glu_backward.cu): element types, 16-byte accesses, how threads tile the runs of a
// PairLayout, and the executor that runs a thread body as a kernel or, serially, on the host.
//
// Every thread body is `__host__ __device__`: the same code that runs on the GPU can run on
// the host over CPU tensors ($GLU_FUSED_EMULATE_CUDA, see glu_ops.cpp), which is how the
// kernels' indexing, vector and tail paths are tested on machines without a GPU.
//
// Only CUDA headers and the element-math headers are included: nvcc compiles this in seconds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../glu_dispatch.h"
#include "../glu_kernels.h"

namespace glu_fused {
namespace cuda {

// Threads per block. 256 lets 8 blocks share an SM, and fixed, it lets each thread's run and
// lane come from shifts.
constexpr int kThreads = 256;
// Largest grid (gridDim.x) a launch may have.
constexpr int64_t kMaxBlocks = 0x7fffffff;

struct CudaTypes {
  using Half = __half;
  using BFloat16 = __nv_bfloat16;
};

GLU_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
GLU_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A storage type's compute type (float, or double for double) and its conversions: loads
// widen exactly, and the result is rounded once, to nearest even.
template <typename scalar_t>
struct Num;

template <>
struct Num<__half> {
  using Compute = float;
  GLU_HD static float widen(__half x) { return __half2float(x); }
  GLU_HD static __half round(float x) { return __float2half_rn(x); }
};

template <>
struct Num<__nv_bfloat16> {
  using Compute = float;
  GLU_HD static float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
  GLU_HD static __nv_bfloat16 round(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Num<float> {
  using Compute = float;
  GLU_HD static float widen(float x) { return x; }
  GLU_HD static float round(float x) { return x; }
};

template <>
struct Num<double> {
  using Compute = double;
  GLU_HD static double widen(double x) { return x; }
  GLU_HD static double round(double x) { return x; }
};

// One element of each direction, in the compute type, rounded once: the only arithmetic of
// the kernels, so the vector and the scalar paths agree bit for bit.
template <Activation A, typename scalar_t>
struct Element {
  using N = Num<scalar_t>;
  using C = typename N::Compute;
  using Params = ActParams<C>;

  GLU_HD static scalar_t forward(scalar_t g, scalar_t v, const Params& p) {
    return N::round(Gated<A, C>::forward(N::widen(g), N::widen(v), p));
  }

  GLU_HD static void backward(scalar_t g, scalar_t v, scalar_t dy, const Params& p, scalar_t& dg,
                              scalar_t& dv) {
    C dg_c, dv_c;
    Gated<A, C>::backward(N::widen(g), N::widen(v), N::widen(dy), p, dg_c, dv_c);
    dg = N::round(dg_c);
    dv = N::round(dv_c);
  }

  static Params params(const ActivationCall& op) {
    return {static_cast<C>(op.alpha), static_cast<C>(op.limit)};
  }
};

// 16 bytes of elements, the widest access a thread makes, held as the four 32-bit words it
// is loaded as: 16-bit elements stay two to a register while staged, and are shifted out one
// by one only when the arithmetic needs them.
template <typename scalar_t>
struct Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(scalar_t));
  uint32_t w[4] = {0, 0, 0, 0};

  GLU_HD scalar_t get(int j) const {
    scalar_t out;
    if constexpr (sizeof(scalar_t) == 2) {
      const auto bits = static_cast<uint16_t>(w[j / 2] >> (16 * (j % 2)));
      memcpy(&out, &bits, sizeof(out));
    } else {
      memcpy(&out, &w[j * sizeof(scalar_t) / 4], sizeof(out));
    }
    return out;
  }

  // Elements are set once each, into a zeroed pack.
  GLU_HD void set(int j, scalar_t x) {
    if constexpr (sizeof(scalar_t) == 2) {
      uint16_t bits;
      memcpy(&bits, &x, sizeof(bits));
      w[j / 2] |= uint32_t{bits} << (16 * (j % 2));
    } else {
      memcpy(&w[j * sizeof(scalar_t) / 4], &x, sizeof(x));
    }
  }
};

#ifndef __CUDA_ARCH__
// The emulation's stand-in for the GPU's misaligned-address fault: a 16-byte access that is
// not 16-byte aligned is a bug in the choice of path, which memcpy alone would hide.
inline void check_aligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    throw std::logic_error("glu_fused: misaligned 16-byte access in a CUDA kernel");
  }
}
#endif

// Read-only inputs go through the non-coherent path (ld.global.nc.v4); on the host, memcpy.
template <typename scalar_t>
GLU_HD Pack<scalar_t> load_pack(const scalar_t* p) {
  Pack<scalar_t> out;
#ifdef __CUDA_ARCH__
  const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p));
  out.w[0] = bits.x;
  out.w[1] = bits.y;
  out.w[2] = bits.z;
  out.w[3] = bits.w;
#else
  check_aligned16(p);
  memcpy(out.w, p, sizeof(out.w));
#endif
  return out;
}

template <typename scalar_t>
GLU_HD void store_pack(scalar_t* p, const Pack<scalar_t>& pack) {
#ifdef __CUDA_ARCH__
  // A plain store of a uint4 may be split into four 32-bit stores; __stwb is one st.v4.
  __stwb(reinterpret_cast<uint4*>(p), make_uint4(pack.w[0], pack.w[1], pack.w[2], pack.w[3]));
#else
  check_aligned16(p);
  memcpy(p, pack.w, sizeof(pack.w));
#endif
}

// How a thread reaches the gates, values and dense elements of kWidth consecutive outputs
// [e, e + kWidth) of one run. `g` and `v` point at the run's first gate and value; `es` is the
// layout's elem_stride. Loads return the packs as read (PairPacks for gate and value, Dense
// for a dense tensor), which are staged in registers as they are, and unpacked element by
// element only when the arithmetic needs them; `gate_first`: the gate is the first of each
// pair in memory.
//
// VectorAccess: one 16-byte access per tensor. Taken only where every run starts 16-byte
// aligned in every tensor (pairs_aligned16, dense_aligned16). kPairs: the interleaved
// layout, where gate and value alternate: 2 * kWidth elements are read as two packs and
// split in registers.
template <typename scalar_t, bool kPairs>
struct VectorAccess {
  using Dense = Pack<scalar_t>;
  static constexpr int kWidth = Dense::kSize;

  // !kPairs: the gates, then the values. kPairs: 2 * kWidth interleaved elements.
  struct PairPacks {
    Dense a;
    Dense b;
  };

  GLU_HD static PairPacks load_pair(const scalar_t* g, const scalar_t* v, int64_t e, int64_t) {
    if constexpr (kPairs) {
      const scalar_t* at = (g < v ? g : v) + 2 * e;
      return {load_pack(at), load_pack(at + kWidth)};
    } else {
      return {load_pack(g + e), load_pack(v + e)};
    }
  }

  GLU_HD static void store_pair(scalar_t* g, scalar_t* v, int64_t e, int64_t,
                                const PairPacks& packs) {
    if constexpr (kPairs) {
      scalar_t* at = (g < v ? g : v) + 2 * e;
      store_pack(at, packs.a);
      store_pack(at + kWidth, packs.b);
    } else {
      store_pack(g + e, packs.a);
      store_pack(v + e, packs.b);
    }
  }

  // Element j's gate and value (j a compile-time index after unrolling).
  GLU_HD static void unpack(const PairPacks& packs, int j, bool gate_first, scalar_t& gate,
                            scalar_t& value) {
    if constexpr (kPairs) {
      const Dense& half = j < kWidth / 2 ? packs.a : packs.b;
      const int i = 2 * (j % (kWidth / 2));
      // Select values, not indices: a run-time index would put the pack in local memory.
      const scalar_t first = half.get(i);
      const scalar_t second = half.get(i + 1);
      gate = gate_first ? first : second;
      value = gate_first ? second : first;
    } else {
      gate = packs.a.get(j);
      value = packs.b.get(j);
    }
  }

  GLU_HD static void pack(PairPacks& packs, int j, bool gate_first, scalar_t gate,
                          scalar_t value) {
    if constexpr (kPairs) {
      Dense& half = j < kWidth / 2 ? packs.a : packs.b;
      const int i = 2 * (j % (kWidth / 2));
      half.set(i, gate_first ? gate : value);
      half.set(i + 1, gate_first ? value : gate);
    } else {
      packs.a.set(j, gate);
      packs.b.set(j, value);
    }
  }

  GLU_HD static Dense load_dense(const scalar_t* p, int64_t e) { return load_pack(p + e); }
  GLU_HD static void store_dense(scalar_t* p, int64_t e, const Dense& d) { store_pack(p + e, d); }
};

// ScalarAccess: one element at a time, any alignment and any elem_stride. The path of
// misaligned layouts, and of the last, partial vector of a run on the vector path.
template <typename scalar_t>
struct ScalarAccess {
  static constexpr int kWidth = 1;

  struct Dense {
    scalar_t x;
    GLU_HD scalar_t get(int) const { return x; }
    GLU_HD void set(int, scalar_t value) { x = value; }
  };
  struct PairPacks {
    scalar_t gate;
    scalar_t value;
  };

  GLU_HD static PairPacks load_pair(const scalar_t* g, const scalar_t* v, int64_t e, int64_t es) {
    return {g[e * es], v[e * es]};
  }

  GLU_HD static void store_pair(scalar_t* g, scalar_t* v, int64_t e, int64_t es,
                                const PairPacks& packs) {
    g[e * es] = packs.gate;
    v[e * es] = packs.value;
  }

  GLU_HD static void unpack(const PairPacks& packs, int, bool, scalar_t& gate, scalar_t& value) {
    gate = packs.gate;
    value = packs.value;
  }

  GLU_HD static void pack(PairPacks& packs, int, bool, scalar_t gate, scalar_t value) {
    packs.gate = gate;
    packs.value = value;
  }

  GLU_HD static Dense load_dense(const scalar_t* p, int64_t e) { return {p[e]}; }
  GLU_HD static void store_dense(scalar_t* p, int64_t e, const Dense& d) { p[e] = d.x; }
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether every run of a layout starts its pairs (gate, value) on 16-byte boundaries: the
// first pair is aligned (with elem_stride 2, the one of gate and value that comes first in
// memory; otherwise each alone) and runs start a whole number of packs apart.
template <typename scalar_t>
bool pairs_aligned16(const PairLayout& layout, const void* gate, const void* value) {
  constexpr int64_t width = Pack<scalar_t>::kSize;
  const bool first = layout.elem_stride == 2 ? aligned16(gate < value ? gate : value)
                                             : aligned16(gate) && aligned16(value);
  const bool several_per_outer = layout.runs_per_outer > 1;
  const bool several_outers = layout.runs > layout.runs_per_outer;
  return first && (!several_per_outer || layout.run_stride % width == 0) &&
         (!several_outers || layout.outer_stride % width == 0);
}

// Whether every run of a dense tensor (rows of run_len elements) starts on a 16-byte
// boundary; with a single run, its length is free (the partial vector at its end takes the
// scalar path).
template <typename scalar_t>
bool dense_aligned16(const PairLayout& layout, const void* p) {
  constexpr int64_t width = Pack<scalar_t>::kSize;
  return aligned16(p) && (layout.runs == 1 || layout.run_len % width == 0);
}

// PairLayout::run_offset without a 64-bit division in any thread (one costs a thread some
// 70 instructions and a call). A split along the last dim (runs_per_outer == 1, the common
// case) is one multiplication; the others divide by runs_per_outer as a multiply-high by a
// magic number that the host computes once per launch (Granlund and Montgomery, "Division by
// invariant integers using multiplication", 1994, theorem 4.2 with N = 63: exact for every
// 0 <= r < 2^63).
struct RunOffsets {
  int64_t runs_per_outer = 1;
  int64_t outer_stride = 0;
  int64_t run_stride = 0;
  uint64_t magic = 0;
  int shift = 0;

  static RunOffsets of(const PairLayout& layout) {
    RunOffsets o{layout.runs_per_outer, layout.outer_stride, layout.run_stride};
    if (o.runs_per_outer > 1) {
      const auto d = static_cast<uint64_t>(o.runs_per_outer);
      int log2_ceil = 1;
      while ((uint64_t{1} << log2_ceil) < d) ++log2_ceil;
      using U128 = unsigned __int128;
      o.magic = static_cast<uint64_t>(((U128{1} << (63 + log2_ceil)) + d - 1) / d);
      o.shift = log2_ceil - 1;
    }
    return o;
  }

  GLU_HD static uint64_t mul_hi(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
    return __umul64hi(a, b);
#else
    return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
  }

  GLU_HD int64_t operator()(int64_t r) const {
    if (runs_per_outer == 1) return r * outer_stride;
    const auto outer = static_cast<int64_t>(mul_hi(static_cast<uint64_t>(r), magic) >> shift);
    return outer * outer_stride + (r - outer * runs_per_outer) * run_stride;
  }
};

// The stretch of a run that one thread covers: outputs first, first + step, ... below end,
// each the start of kWidth consecutive outputs.
struct Stretch {
  int64_t run;
  int64_t first;
  int64_t end;
  int64_t step;
};

// How the grid covers the runs. A block holds (kThreads >> lanes_log2) runs side by side,
// each with 2^lanes_log2 threads (its lanes), so that short runs still fill whole blocks;
// a long run is cut into `parts` parts of part_len elements, one block each. A thread takes
// `items` items of `width` outputs, `step` apart, in its part.
struct Tiling {
  int64_t runs = 0;
  int64_t run_len = 0;
  int lanes_log2 = 0;
  int64_t part_len = 0;
  uint32_t parts = 1;
  uint32_t blocks = 0;

  // False where the grid would exceed 2^31 - 1 blocks: never below 2^39 elements.
  static bool plan(int64_t runs, int64_t run_len, int width, int items, Tiling& out) {
    Tiling t;
    t.runs = runs;
    t.run_len = run_len;
    // Lanes per run: enough for the whole run, up to a whole block.
    const int64_t lanes_wanted = ceil_div(ceil_div(run_len, width), items);
    while ((int64_t{1} << t.lanes_log2) < lanes_wanted && (1 << t.lanes_log2) < kThreads) {
      ++t.lanes_log2;
    }
    const int64_t groups = ceil_div(runs, kThreads >> t.lanes_log2);
    t.part_len = (int64_t{width} * items) << t.lanes_log2;
    const int64_t parts = ceil_div(run_len, t.part_len);
    if (groups * parts > kMaxBlocks) return false;
    t.parts = static_cast<uint32_t>(parts);
    t.blocks = static_cast<uint32_t>(groups * parts);
    out = t;
    return true;
  }

  // False for threads past the last run.
  GLU_HD bool stretch(uint32_t block, uint32_t thread, int width, Stretch& s) const {
    const uint32_t group = block / parts;
    const uint32_t part = block - group * parts;
    s.run = int64_t{group} * (kThreads >> lanes_log2) + (thread >> lanes_log2);
    if (s.run >= runs) return false;
    const int64_t lane = thread & ((1u << lanes_log2) - 1);
    const int64_t part_begin = int64_t{part} * part_len;
    s.first = part_begin + lane * width;
    s.end = min64(run_len, part_begin + part_len);
    s.step = int64_t{width} << lanes_log2;
    return true;
  }
};

// Tensors a direction reads for each output element: the gate and the value, and backward
// also the upstream gradient. Each is one 16-byte load per item on the vector path.
constexpr int kForwardInputs = 2;
constexpr int kBackwardInputs = 3;

// How a direction's threads hide memory latency for one storage type: `kItems` items per
// thread, all of whose loads are issued before the first is used, and the blocks an SM must
// hold at once (__launch_bounds__), which caps the registers a thread may use at
// 65536 / (kThreads * kMinBlocksPerSm). tests/test_cuda_occupancy.py computes the bytes in
// flight per SM that these give.
template <typename scalar_t, int kInputs>
struct Staging {
  static constexpr int kItems = 2;
  // A budget of 128 registers a thread, which every variant fits without spilling (under 80,
  // some GELU variants spill).
  static constexpr int kMinBlocksPerSm = 2;
};

// Calls load(u, e) then finish(u, e) for each full item u of a thread's stretch, and
// partial(e) for the one that the run's end cuts short, if any. Each phase is one unrolled
// loop, so that all the items' loads are issued before the first result is computed.
template <int kItems, int kWidth, typename Load, typename Finish, typename Partial>
GLU_HD void for_each_item(const Stretch& s, const Load& load, const Finish& finish,
                          const Partial& partial) {
#pragma unroll
  for (int u = 0; u < kItems; ++u) {
    const int64_t e = s.first + u * s.step;
    if (e + kWidth <= s.end) load(u, e);
  }
#pragma unroll
  for (int u = 0; u < kItems; ++u) {
    const int64_t e = s.first + u * s.step;
    if (e + kWidth <= s.end) finish(u, e);
  }
  if constexpr (kWidth > 1) {
#pragma unroll
    for (int u = 0; u < kItems; ++u) {
      const int64_t e = s.first + u * s.step;
      if (e < s.end && e + kWidth > s.end) partial(e);
    }
  }
}

template <typename Thread>
__global__ void __launch_bounds__(kThreads, Thread::kMinBlocksPerSm)
    glu_kernel(const Thread thread) {
  thread(blockIdx.x, threadIdx.x);
}

// Runs a thread body over a tiling's grid: as a kernel on `stream`, or on the host, block by
// block and thread by thread (the emulation). Returns a cudaError_t.
struct Executor {
  cudaStream_t stream = nullptr;
  bool on_host = false;

  template <typename Thread>
  int run(const Tiling& tiling, const Thread& thread) const {
    if (on_host) {
      for (uint32_t b = 0; b < tiling.blocks; ++b) {
        for (uint32_t t = 0; t < kThreads; ++t) thread(b, t);
      }
      return cudaSuccess;
    }
    glu_kernel<Thread><<<tiling.blocks, kThreads, 0, stream>>>(thread);
    return cudaGetLastError();
  }
};

// Plans the tiling for an access path and runs the thread body that `make(tiling, Access{})`
// returns; cudaErrorInvalidConfiguration where the grid would be too large.
template <typename Access, int kItems, typename Make>
int run_path(const Executor& exec, const PairLayout& layout, const Make& make) {
  Tiling tiling;
  if (!Tiling::plan(layout.runs, layout.run_len, Access::kWidth, kItems, tiling)) {
    return cudaErrorInvalidConfiguration;
  }
  return exec.run(tiling, make(tiling, Access{}));
}

// Runs a thread body on the fastest path the layout allows: 16-byte accesses where every
// tensor is `aligned` (interleaved pairs or separate halves), else one element at a time.
template <typename scalar_t, int kInputs, typename Make>
int run_fastest_path(const Executor& exec, const PairLayout& layout, bool aligned,
                     const Make& make) {
  constexpr int kItems = Staging<scalar_t, kInputs>::kItems;
  if (!aligned) return run_path<ScalarAccess<scalar_t>, kItems>(exec, layout, make);
  if (layout.elem_stride == 2) {
    return run_path<VectorAccess<scalar_t, true>, kItems>(exec, layout, make);
  }
  return run_path<VectorAccess<scalar_t, false>, kItems>(exec, layout, make);
}

// The emulation returns what a launch would: a cudaError_t that the GPU's caller checks
// (glu_ops.cpp), and that the emulated entry points, which return nothing, throw. The torch
// binding turns the exception into a RuntimeError.
inline void check_emulated(int error, const char* direction) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("glu_fused: emulated CUDA ") + direction +
                             " kernel failed: " +
                             cudaGetErrorString(static_cast<cudaError_t>(error)));
  }
}

}  // namespace cuda
}  // namespace glu_fused
