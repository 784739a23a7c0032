// The machinery of the CUDA kernels, shared by forward (glu_forward.cu) and backward
// (glu_backward.cu): element types, 16-byte accesses, how threads tile the runs of a
// PairLayout, and the executor that runs a thread body as a kernel or, serially, on the host.
//
// Every thread body is `__host__ __device__`: the same code that runs on the GPU can run on
// the host over CPU tensors ($GLU_FUSED_EMULATE_CUDA, see glu_ops.cpp), which is how the
// kernels' indexing, vector, phased and tail paths are tested on machines without a GPU.
//
// Only CUDA headers and the element-math headers are included: nvcc compiles this in seconds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

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
  using Scalar = scalar_t;
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

  // RowOptions' bias: x widened, plus b widened where `on`, unrounded (without a bias, x
  // itself: adding a zero would turn -0 into +0).
  GLU_HD static C biased(scalar_t x, scalar_t b, bool on) {
    const C c = N::widen(x);
    return on ? c + N::widen(b) : c;
  }

  // forward() at gate + bg and value + bv (where `on`).
  GLU_HD static scalar_t forward(scalar_t g, scalar_t v, scalar_t bg, scalar_t bv, bool on,
                                 const Params& p) {
    return N::round(Gated<A, C>::forward(biased(g, bg, on), biased(v, bv, on), p));
  }

  // The gradients at gate + bg and value + bv (where `on`), in the compute type, unrounded:
  // the bias gradient's partials sum them.
  GLU_HD static void backward(scalar_t g, scalar_t v, scalar_t dy, scalar_t bg, scalar_t bv,
                              bool on, const Params& p, C& dg, C& dv) {
    Gated<A, C>::backward(biased(g, bg, on), biased(v, bv, on), N::widen(dy), p, dg, dv);
  }
};

// x / d for 0 <= x < 2^63 without a 64-bit division (RunOffsets' multiply-high by a magic
// number, computed once per launch on the host); d == 1 is x itself.
struct Divider {
  int64_t d = 1;
  uint64_t magic = 0;
  int shift = 0;

  static Divider of(int64_t d) {
    Divider out;
    out.d = d;
    if (d > 1) {
      const auto u = static_cast<uint64_t>(d);
      int log2_ceil = 1;
      while ((uint64_t{1} << log2_ceil) < u) ++log2_ceil;
      using U128 = unsigned __int128;
      out.magic = static_cast<uint64_t>(((U128{1} << (63 + log2_ceil)) + u - 1) / u);
      out.shift = log2_ceil - 1;
    }
    return out;
  }

  GLU_HD int64_t quotient(int64_t x) const {
    if (d == 1) return x;
#ifdef __CUDA_ARCH__
    const uint64_t high = __umul64hi(static_cast<uint64_t>(x), magic);
#else
    const auto high = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(static_cast<uint64_t>(x)) * magic) >> 64);
#endif
    return static_cast<int64_t>(high >> shift);
  }
};

// RowOptions::row_valid without its 64-bit division: whether run r is below its group's
// token count; every run where there are no counts.
struct RowCheck {
  const int* valid_rows = nullptr;
  Divider per_group;

  static RowCheck of(const RowOptions& rows) {
    RowCheck out;
    out.valid_rows = rows.valid_rows;
    if (rows.valid_rows != nullptr) out.per_group = Divider::of(rows.rows_per_group);
    return out;
  }

  GLU_HD bool operator()(int64_t r) const {
    if (valid_rows == nullptr) return true;
    const int64_t group = per_group.quotient(r);
    return r - group * per_group.d < valid_rows[group];
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

// The accesses of the emulated threads, by width, for $GLU_FUSED_EMULATE_CUDA_TRACE: how the
// tests see which path each part of a layout takes. Host code only: the GPU's kernels count
// nothing.
struct AccessCounts {
  uint64_t vector_loads = 0;
  uint64_t vector_stores = 0;
  uint64_t scalar_loads = 0;
  uint64_t scalar_stores = 0;
};
inline thread_local AccessCounts emulated_accesses;

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
  ++emulated_accesses.vector_loads;
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
  ++emulated_accesses.vector_stores;
  memcpy(p, pack.w, sizeof(pack.w));
#endif
}

template <typename scalar_t>
GLU_HD scalar_t load_one(const scalar_t* p) {
#ifndef __CUDA_ARCH__
  ++emulated_accesses.scalar_loads;
#endif
  return *p;
}

template <typename scalar_t>
GLU_HD void store_one(scalar_t* p, scalar_t x) {
#ifndef __CUDA_ARCH__
  ++emulated_accesses.scalar_stores;
#endif
  *p = x;
}

// Elements from p to the 16-byte boundary below it: p's phase. Pointers are element-aligned
// on the paths that use it.
template <typename scalar_t>
GLU_HD int phase_of(const scalar_t* p) {
  return static_cast<int>(reinterpret_cast<uintptr_t>(p) % 16) / static_cast<int>(sizeof(scalar_t));
}

// The 16-byte block at `at`, of which only the elements in [lo, hi) are used. The GPU reads
// it whole: a block that holds an element of a tensor can always be read. The emulation
// copies only those elements, so as not to read host memory outside the tensor; the others
// stay zero, and a shift that let one through would change a result.
template <typename scalar_t>
GLU_HD Pack<scalar_t> load_pack_of(const scalar_t* at, const scalar_t* lo, const scalar_t* hi) {
#ifdef __CUDA_ARCH__
  return load_pack(at);
#else
  check_aligned16(at);
  ++emulated_accesses.vector_loads;
  Pack<scalar_t> out;
  const scalar_t* from = at < lo ? lo : at;
  const scalar_t* to = at + Pack<scalar_t>::kSize < hi ? at + Pack<scalar_t>::kSize : hi;
  if (from < to) {
    memcpy(reinterpret_cast<char*>(out.w) + (from - at) * sizeof(scalar_t), from,
           (to - from) * sizeof(scalar_t));
  }
  return out;
#endif
}

// The 16-byte blocks that hold kPacks packs of consecutive elements from p, whatever p's
// phase: kPacks loads where it is 0, else kPacks + 1 from the boundary below p. They are
// staged as read, and put in place by shift_down once every item's loads are issued.
template <int kPacks, typename scalar_t>
GLU_HD void load_blocks(const scalar_t* p, int phase, Pack<scalar_t>* blocks) {
  constexpr int W = Pack<scalar_t>::kSize;
  if (phase == 0) {
#pragma unroll
    for (int i = 0; i < kPacks; ++i) blocks[i] = load_pack(p + i * W);
    return;
  }
  const scalar_t* base = p - phase;
#pragma unroll
  for (int i = 0; i <= kPacks; ++i) blocks[i] = load_pack_of(base + i * W, p, p + kPacks * W);
}

// The kPacks packs that the kPacks + 1 blocks of load_blocks hold from `phase` elements on:
// their words shifted down by phase * sizeof(scalar_t) bytes. The run-time shift is applied
// bit by bit of its word count, as selects (indexing by it would put the words in local
// memory), then by half a word for 2-byte elements.
template <int kPacks, typename scalar_t>
GLU_HD void shift_down(const Pack<scalar_t>* blocks, int phase, Pack<scalar_t>* out) {
  constexpr int kWords = 4 * kPacks;
  const int bytes = phase * static_cast<int>(sizeof(scalar_t));
  const int words = bytes / 4;
  uint32_t t[kWords + 2];
#pragma unroll
  for (int i = 0; i < kWords + 2; ++i) {
    t[i] = (words & 2) ? blocks[(i + 2) / 4].w[(i + 2) % 4] : blocks[i / 4].w[i % 4];
  }
  uint32_t u[kWords + 1];
#pragma unroll
  for (int i = 0; i < kWords + 1; ++i) {
    // 8-byte elements move by whole pairs of words.
    u[i] = (sizeof(scalar_t) < 8 && (words & 1)) ? t[i + 1] : t[i];
  }
  const bool half_word = sizeof(scalar_t) == 2 && bytes % 4 != 0;
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    out[i / 4].w[i % 4] = half_word ? (u[i] >> 16) | (u[i + 1] << 16) : u[i];
  }
}

// kPacks packs of consecutive elements to p: 16-byte stores where p's phase is 0, else one
// element at a time (a wider store would write its neighbours' elements).
template <int kPacks, typename scalar_t>
GLU_HD void store_packs(scalar_t* p, int phase, const Pack<scalar_t>* packs) {
  constexpr int W = Pack<scalar_t>::kSize;
  if (phase == 0) {
#pragma unroll
    for (int i = 0; i < kPacks; ++i) store_pack(p + i * W, packs[i]);
    return;
  }
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
#pragma unroll
    for (int j = 0; j < W; ++j) store_one(p + i * W + j, packs[i].get(j));
  }
}

// The phases of a run's gates and values at its first item: of the interleaved pairs (`a`),
// or of the gates (`a`) and of the values (`b`). Items are whole packs apart, so the phase of
// every item of a run is the same.
struct PairPhase {
  int a = 0;
  int b = 0;
};

// How a thread reaches the gates, values and dense elements of kWidth consecutive outputs
// [e, e + kWidth) of one run. `g` and `v` point at the run's first gate and value; `es` is the
// layout's elem_stride. Loads return the packs as read (PairPacks for gate and value, Dense
// for a dense tensor), which are staged in registers as they are, and unpacked element by
// element only when the arithmetic needs them; `gate_first`: the gate is the first of each
// pair in memory.
//
// VectorAccess: 16-byte accesses. kPairs: the interleaved layout, where gate and value
// alternate: 2 * kWidth elements are read as two packs and split in registers.
//
// !kPhased: taken where every run starts 16-byte aligned in every tensor (pairs_aligned16,
// dense_aligned16); one 16-byte access per tensor and pack.
//
// kPhased: any other layout of element-aligned tensors (an odd hidden size, a sliced input, a
// row stride that is not a multiple of 16 bytes). Each run's items are shifted by a head of
// up to kWidth - 1 outputs, taken one element at a time, so that a stored tensor's items
// start on 16-byte boundaries; the ragged end of the run takes the scalar path as on the
// aligned path. The other tensors of the run may then lie at any phase against the items,
// and tensors of one layout often do: with an odd hidden size, a row's gates, values and
// outputs are each at a different phase. No one grouping of elements then fits them all;
// instead, a loaded tensor out of phase reads the 16-byte blocks that hold an item (one more
// than when in phase) and shifts them into place in registers, and a stored tensor out of
// phase (the value gradient of separate halves, when its phase differs from the gate
// gradient's) writes its elements one by one.
template <typename scalar_t, bool kPairs, bool kPhased>
struct VectorAccess {
  using Dense = Pack<scalar_t>;
  static constexpr int kWidth = Dense::kSize;
  static constexpr const char* kName =
      kPairs ? (kPhased ? "pairs-phased" : "pairs") : (kPhased ? "halves-phased" : "halves");

  // An item's gates and values as the arithmetic reads them. kPairs: 2 * kWidth interleaved
  // elements; else the gates, then the values.
  struct PairPacks {
    Dense x[2];
  };

  // An item's loads as issued, before ready() puts them in place: on the phased paths, the
  // blocks that hold the interleaved pairs (3), or the gates' (2) then the values' (2).
  struct StagedPairs {
    Dense x[!kPhased ? 2 : (kPairs ? 3 : 4)];
  };
  struct StagedDense {
    Dense x[kPhased ? 2 : 1];
  };

  // Outputs before a run's first item, so that the items of the pairs at g and v (the
  // stored ones) start on 16-byte boundaries. An odd phase of interleaved pairs has no such
  // head: they are then stored one by one, from no head.
  GLU_HD static int head_for_pairs(const scalar_t* g, const scalar_t* v) {
    if constexpr (!kPhased) return 0;
    if constexpr (!kPairs) return head_for_dense(g);
    const int phase = phase_of(g < v ? g : v);
    return phase % 2 != 0 ? 0 : ((kWidth - phase) % kWidth) / 2;
  }

  // Outputs before a run's first item, so that the items of the dense tensor at p start on
  // 16-byte boundaries.
  GLU_HD static int head_for_dense(const scalar_t* p) {
    if constexpr (!kPhased) return 0;
    return (kWidth - phase_of(p)) % kWidth;
  }

  // The phases of the pairs at g and v at output e.
  GLU_HD static PairPhase pair_phase(const scalar_t* g, const scalar_t* v, int64_t e) {
    if constexpr (!kPhased) return {};
    if constexpr (kPairs) return {phase_of((g < v ? g : v) + 2 * e), 0};
    return {phase_of(g + e), phase_of(v + e)};
  }

  GLU_HD static int dense_phase(const scalar_t* p, int64_t e) {
    if constexpr (!kPhased) return 0;
    return phase_of(p + e);
  }

  GLU_HD static StagedPairs load_pair(const scalar_t* g, const scalar_t* v, int64_t e, int64_t,
                                      const PairPhase& phase) {
    StagedPairs staged;
    if constexpr (!kPhased) {
      if constexpr (kPairs) {
        const scalar_t* at = (g < v ? g : v) + 2 * e;
        staged.x[0] = load_pack(at);
        staged.x[1] = load_pack(at + kWidth);
      } else {
        staged.x[0] = load_pack(g + e);
        staged.x[1] = load_pack(v + e);
      }
    } else if constexpr (kPairs) {
      load_blocks<2>((g < v ? g : v) + 2 * e, phase.a, staged.x);
    } else {
      load_blocks<1>(g + e, phase.a, &staged.x[0]);
      load_blocks<1>(v + e, phase.b, &staged.x[2]);
    }
    return staged;
  }

  GLU_HD static PairPacks ready(const StagedPairs& staged, const PairPhase& phase) {
    PairPacks packs;
    if constexpr (!kPhased) {
      packs.x[0] = staged.x[0];
      packs.x[1] = staged.x[1];
    } else if constexpr (kPairs) {
      shift_down<2>(staged.x, phase.a, packs.x);
    } else {
      shift_down<1>(&staged.x[0], phase.a, &packs.x[0]);
      shift_down<1>(&staged.x[2], phase.b, &packs.x[1]);
    }
    return packs;
  }

  GLU_HD static void store_pair(scalar_t* g, scalar_t* v, int64_t e, int64_t,
                                const PairPacks& packs, const PairPhase& phase) {
    if constexpr (!kPhased) {
      if constexpr (kPairs) {
        scalar_t* at = (g < v ? g : v) + 2 * e;
        store_pack(at, packs.x[0]);
        store_pack(at + kWidth, packs.x[1]);
      } else {
        store_pack(g + e, packs.x[0]);
        store_pack(v + e, packs.x[1]);
      }
    } else if constexpr (kPairs) {
      store_packs<2>((g < v ? g : v) + 2 * e, phase.a, packs.x);
    } else {
      store_packs<1>(g + e, phase.a, &packs.x[0]);
      store_packs<1>(v + e, phase.b, &packs.x[1]);
    }
  }

  // Element j's gate and value (j a compile-time index after unrolling).
  GLU_HD static void unpack(const PairPacks& packs, int j, bool gate_first, scalar_t& gate,
                            scalar_t& value) {
    if constexpr (kPairs) {
      const Dense& half = j < kWidth / 2 ? packs.x[0] : packs.x[1];
      const int i = 2 * (j % (kWidth / 2));
      // Select values, not indices: a run-time index would put the pack in local memory.
      const scalar_t first = half.get(i);
      const scalar_t second = half.get(i + 1);
      gate = gate_first ? first : second;
      value = gate_first ? second : first;
    } else {
      gate = packs.x[0].get(j);
      value = packs.x[1].get(j);
    }
  }

  GLU_HD static void pack(PairPacks& packs, int j, bool gate_first, scalar_t gate, scalar_t value) {
    if constexpr (kPairs) {
      Dense& half = j < kWidth / 2 ? packs.x[0] : packs.x[1];
      const int i = 2 * (j % (kWidth / 2));
      half.set(i, gate_first ? gate : value);
      half.set(i + 1, gate_first ? value : gate);
    } else {
      packs.x[0].set(j, gate);
      packs.x[1].set(j, value);
    }
  }

  GLU_HD static StagedDense load_dense(const scalar_t* p, int64_t e, int phase) {
    StagedDense staged;
    if constexpr (kPhased) {
      load_blocks<1>(p + e, phase, staged.x);
    } else {
      staged.x[0] = load_pack(p + e);
    }
    return staged;
  }

  GLU_HD static Dense ready(const StagedDense& staged, int phase) {
    if constexpr (!kPhased) return staged.x[0];
    Dense d;
    shift_down<1>(staged.x, phase, &d);
    return d;
  }

  // Dense outputs are stored in phase: their run's head aligns them.
  GLU_HD static void store_dense(scalar_t* p, int64_t e, const Dense& d) { store_pack(p + e, d); }

  // A dense output whose run's head aligned another tensor: out of phase, element by element.
  GLU_HD static void store_dense_in_phase(scalar_t* p, int64_t e, const Dense& d, int phase) {
    if constexpr (!kPhased) {
      store_pack(p + e, d);
    } else {
      store_packs<1>(p + e, phase, &d);
    }
  }
};

// ScalarAccess: one element at a time, any alignment and any elem_stride. The path of
// layouts the vector paths cannot take (elements not aligned to their size, gradients with
// another elem_stride than the input's), and of the heads and ragged ends of runs on them.
template <typename scalar_t>
struct ScalarAccess {
  static constexpr int kWidth = 1;
  static constexpr const char* kName = "scalar";

  struct Dense {
    scalar_t x;
    GLU_HD scalar_t get(int) const { return x; }
    GLU_HD void set(int, scalar_t value) { x = value; }
  };
  struct PairPacks {
    scalar_t gate;
    scalar_t value;
  };
  using StagedPairs = PairPacks;
  using StagedDense = Dense;

  GLU_HD static int head_for_pairs(const scalar_t*, const scalar_t*) { return 0; }
  GLU_HD static int head_for_dense(const scalar_t*) { return 0; }
  GLU_HD static PairPhase pair_phase(const scalar_t*, const scalar_t*, int64_t) { return {}; }
  GLU_HD static int dense_phase(const scalar_t*, int64_t) { return 0; }

  GLU_HD static PairPacks load_pair(const scalar_t* g, const scalar_t* v, int64_t e, int64_t es,
                                    const PairPhase& = {}) {
    return {load_one(g + e * es), load_one(v + e * es)};
  }

  GLU_HD static void store_pair(scalar_t* g, scalar_t* v, int64_t e, int64_t es,
                                const PairPacks& packs, const PairPhase& = {}) {
    store_one(g + e * es, packs.gate);
    store_one(v + e * es, packs.value);
  }

  GLU_HD static PairPacks ready(const PairPacks& packs, const PairPhase&) { return packs; }
  GLU_HD static Dense ready(const Dense& d, int) { return d; }

  GLU_HD static void unpack(const PairPacks& packs, int, bool, scalar_t& gate, scalar_t& value) {
    gate = packs.gate;
    value = packs.value;
  }

  GLU_HD static void pack(PairPacks& packs, int, bool, scalar_t gate, scalar_t value) {
    packs.gate = gate;
    packs.value = value;
  }

  GLU_HD static Dense load_dense(const scalar_t* p, int64_t e, int = 0) {
    return {load_one(p + e)};
  }
  GLU_HD static void store_dense(scalar_t* p, int64_t e, const Dense& d) { store_one(p + e, d.x); }
  GLU_HD static void store_dense_in_phase(scalar_t* p, int64_t e, const Dense& d, int) {
    store_one(p + e, d.x);
  }
};

// act(gate) * value of an item's elements: the forward's outputs, and the in-place
// backward's (so both store bitwise the same results).
template <typename E, typename Acc>
GLU_HD typename Acc::Dense forward_outputs(const typename Acc::PairPacks& x, bool gate_first,
                                           const typename E::Params& params) {
  typename Acc::Dense result;
#pragma unroll
  for (int j = 0; j < Acc::kWidth; ++j) {
    typename E::Scalar gj, vj;
    Acc::unpack(x, j, gate_first, gj, vj);
    result.set(j, E::forward(gj, vj, params));
  }
  return result;
}

// The same at gate + bias and value + bias where the bias is `on` (RowOptions): the packs `b`
// hold an item's gate and value biases as `x` holds its gates and values, the gate first in
// memory where `bias_first`.
template <typename E, typename Acc>
GLU_HD typename Acc::Dense forward_outputs(const typename Acc::PairPacks& x, bool gate_first,
                                           const typename Acc::PairPacks& b, bool bias_first,
                                           bool on, const typename E::Params& params) {
  typename Acc::Dense result;
#pragma unroll
  for (int j = 0; j < Acc::kWidth; ++j) {
    typename E::Scalar gj, vj, bgj, bvj;
    Acc::unpack(x, j, gate_first, gj, vj);
    Acc::unpack(b, j, bias_first, bgj, bvj);
    result.set(j, E::forward(gj, vj, bgj, bvj, on, params));
  }
  return result;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t>
bool element_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(scalar_t) == 0;
}

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

// RowOptions' bias, in the inputs' dtype: the gate's and the value's of column e at
// e * elem_stride, as one run of the layout's pairs (adjacent where they interleave).
template <typename scalar_t>
struct BiasPairs {
  const scalar_t* gate = nullptr;
  const scalar_t* value = nullptr;

  static BiasPairs of(const RowOptions& rows) {
    return {static_cast<const scalar_t*>(rows.gate_bias),
            static_cast<const scalar_t*>(rows.value_bias)};
  }
  GLU_HD bool on() const { return gate != nullptr; }
  GLU_HD bool gate_first() const { return gate < value; }
};

// Whether the vector paths can take a layout's pairs at all: element-aligned, and
// interleaved pairs (elem_stride 2) adjacent in memory.
template <typename scalar_t>
bool pairs_vectorizable(const PairLayout& layout, const scalar_t* gate, const scalar_t* value) {
  const bool adjacent = gate + 1 == value || value + 1 == gate;
  return element_aligned<scalar_t>(gate) && element_aligned<scalar_t>(value) &&
         (layout.elem_stride == 1 || (layout.elem_stride == 2 && adjacent));
}

// Whether a bias (if any) can take the (phased) vector paths of the layout it goes with.
template <typename scalar_t>
bool bias_vectorizable(const PairLayout& layout, const BiasPairs<scalar_t>& bias) {
  return !bias.on() || pairs_vectorizable(layout, bias.gate, bias.value);
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
// each the start of kWidth consecutive outputs; and, for the run's first thread, the head
// [0, head) of outputs before the run's first item (on the phased paths).
struct Stretch {
  int64_t run;
  int64_t first;
  int64_t end;
  int64_t step;
  int64_t head;
  int64_t part_begin;
  int64_t lane;
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

  // A thread's run, part and lane; false for threads past the last run.
  GLU_HD bool locate(uint32_t block, uint32_t thread, Stretch& s) const {
    const uint32_t group = block / parts;
    const uint32_t part = block - group * parts;
    s.run = int64_t{group} * (kThreads >> lanes_log2) + (thread >> lanes_log2);
    if (s.run >= runs) return false;
    s.lane = thread & ((1u << lanes_log2) - 1);
    s.part_begin = int64_t{part} * part_len;
    return true;
  }

  // The thread's items, once the run's items are shifted by `head` outputs. Parts start
  // `head` outputs later too, and the last one still reaches the run's end: there are
  // ceil(run_len / part_len) of them.
  GLU_HD void place(int width, int64_t head, Stretch& s) const {
    head = min64(head, run_len);
    s.first = head + s.part_begin + s.lane * width;
    s.end = min64(run_len, head + s.part_begin + part_len);
    s.step = int64_t{width} << lanes_log2;
    s.head = s.part_begin == 0 && s.lane == 0 ? head : 0;
  }
};

// Tensors a direction reads for each output element: the gate and the value, and backward
// also the upstream gradient. Each is one 16-byte load per item on the vector path.
constexpr int kForwardInputs = 2;
constexpr int kBackwardInputs = 3;

// How a direction's threads hide memory latency for one storage type: `kItems` items per
// thread, all of whose loads are issued before the first is used, and the blocks an SM must
// hold at once (__launch_bounds__), which caps the registers a thread may use at
// 65536 / (kThreads * kMinBlocksPerSm).
//
// An H200 needs about 25 KB in flight per SM to stream at full bandwidth; this aims at more
// than 40 KB for every variant (tests/test_cuda_occupancy.py computes the figures from the
// compiled kernels). Forward stages 4 items of 2 loads, 128 bytes a thread; backward, 2 items
// of 3, 96 bytes. Within 128 registers, every variant holds at least 2 blocks: 64 KB and
// 48 KB per SM for the heaviest (GELU's erfc), more for lighter ones that hold 3 or 4. Two
// forward items (64 bytes) would need 3 blocks, hence 80 registers, to reach 48 KB; the
// 16-bit GELU forward took about 90 to 110 at 2 items. Backward's GELU variants already use
// up to all 128 registers with 2 items.
template <typename scalar_t, int kInputs>
struct Staging {
  static constexpr int kItems = kInputs == kForwardInputs ? 4 : 2;
  static constexpr int kMinBlocksPerSm = 2;
};

// FP8 output (glu_fp8.cu): the items whose activations a thread keeps from its first phase to
// its last, all their loads issued first (a row longer than kItems items a thread computes
// the rest again once its amax is known), with the gate and the value loaded for each.
struct Fp8Staging {
  static constexpr int kItems = 2;
  static constexpr int kInputs = kForwardInputs;
  static constexpr int kMinBlocksPerSm = 3;
};

// Calls load(u, e) then finish(u, e) for each full item u of a thread's stretch, and
// edge(begin, end) for the outputs that no full item covers: the one item that the run's end
// cuts short, and the run's head. Each phase is one unrolled loop, so that all the items'
// loads are issued before the first result is computed.
template <int kItems, int kWidth, typename Load, typename Finish, typename Edge>
GLU_HD void for_each_item(const Stretch& s, const Load& load, const Finish& finish,
                          const Edge& edge) {
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
      if (e < s.end && e + kWidth > s.end) edge(e, s.end);
    }
    if (s.head > 0) edge(0, s.head);
  }
}

template <typename Thread>
__global__ void __launch_bounds__(kThreads, Thread::kMinBlocksPerSm)
    glu_kernel(const Thread thread) {
  thread(blockIdx.x, threadIdx.x);
}

// A thread body in phases with a barrier between them (__syncthreads): what the threads of
// a block share (Thread::Shared, in shared memory) and what each keeps (Thread::State, in
// registers) carry across. Every thread runs every phase, so every barrier is reached.
template <typename Thread>
__global__ void __launch_bounds__(kThreads, Thread::kMinBlocksPerSm)
    glu_phased_kernel(const Thread thread) {
  __shared__ typename Thread::Shared shared;
  typename Thread::State state;
#pragma unroll
  for (int phase = 0; phase < Thread::kPhases; ++phase) {
    if (phase > 0) __syncthreads();
    thread(phase, blockIdx.x, threadIdx.x, state, shared);
  }
}

// $GLU_FUSED_EMULATE_CUDA_TRACE: a line on stderr for each emulated launch.
inline void trace_emulated(const char* direction, const char* path, const AccessCounts& n) {
  static const bool enabled = [] {
    const char* value = std::getenv("GLU_FUSED_EMULATE_CUDA_TRACE");
    return value != nullptr && std::string(value) != "0";
  }();
  if (!enabled) return;
  std::fprintf(stderr,
               "glu_fused emulated %s: path=%s vector_loads=%llu vector_stores=%llu "
               "scalar_loads=%llu scalar_stores=%llu\n",
               direction, path, static_cast<unsigned long long>(n.vector_loads),
               static_cast<unsigned long long>(n.vector_stores),
               static_cast<unsigned long long>(n.scalar_loads),
               static_cast<unsigned long long>(n.scalar_stores));
}

// Runs a thread body over a tiling's grid: as a kernel on `stream`, or on the host, block by
// block and thread by thread (the emulation). Returns a cudaError_t.
struct Executor {
  cudaStream_t stream = nullptr;
  bool on_host = false;

  template <typename Thread>
  int run(const Tiling& tiling, const Thread& thread, const char* path) const {
    if (on_host) {
      emulated_accesses = {};
      for (uint32_t b = 0; b < tiling.blocks; ++b) {
        for (uint32_t t = 0; t < kThreads; ++t) thread(b, t);
      }
      trace_emulated(Thread::kDirection, path, emulated_accesses);
      return cudaSuccess;
    }
    glu_kernel<Thread><<<tiling.blocks, kThreads, 0, stream>>>(thread);
    return cudaGetLastError();
  }

  // A phased thread body over `blocks` blocks. On the host, block by block: each phase runs
  // every thread before the next begins (the barrier), over shared memory that starts as
  // NaN, so that a read of what no thread wrote changes a result.
  template <typename Thread>
  int run_phased(uint32_t blocks, const Thread& thread, const char* path) const {
    if (on_host) {
      emulated_accesses = {};
      std::vector<typename Thread::State> states(kThreads);
      auto shared = std::make_unique<typename Thread::Shared>();
      for (uint32_t b = 0; b < blocks; ++b) {
        std::memset(static_cast<void*>(shared.get()), 0xff, sizeof(typename Thread::Shared));
        for (auto& state : states) state = typename Thread::State{};
        for (int phase = 0; phase < Thread::kPhases; ++phase) {
          for (uint32_t t = 0; t < kThreads; ++t) thread(phase, b, t, states[t], *shared);
        }
      }
      trace_emulated(Thread::kDirection, path, emulated_accesses);
      return cudaSuccess;
    }
    if (blocks == 0) return cudaSuccess;
    glu_phased_kernel<Thread><<<blocks, kThreads, 0, stream>>>(thread);
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
  return exec.run(tiling, make(tiling, Access{}), Access::kName);
}

// Which path a launch takes: 16-byte accesses throughout where every run of every tensor is
// `aligned`; 16-byte accesses for the bulk of each run where the tensors are merely
// `vectorizable` (the phased paths); else one element at a time. Interleaved pairs or
// separate halves, as the layout's elem_stride says.
// f(Access{}) for that path; kAligned false: no aligned variants (vectorizable layouts take
// the phased ones) and float64 scalar only, so fewer are compiled.
template <typename scalar_t, bool kAligned = true, typename F>
int with_access(const PairLayout& layout, bool vectorizable, bool aligned, const F& f) {
  if (!vectorizable) return f(ScalarAccess<scalar_t>{});
  const bool pairs = layout.elem_stride == 2;
  if constexpr (kAligned) {
    if (aligned) {
      return pairs ? f(VectorAccess<scalar_t, true, false>{})
                   : f(VectorAccess<scalar_t, false, false>{});
    }
  }
  if constexpr (sizeof(scalar_t) == 8 && !kAligned) {
    return f(ScalarAccess<scalar_t>{});
  } else {
    return pairs ? f(VectorAccess<scalar_t, true, true>{})
                 : f(VectorAccess<scalar_t, false, true>{});
  }
}

// Runs the thread body that make(tiling, Access{}) returns on that path.
template <typename scalar_t, int kInputs, typename Make>
int run_fastest_path(const Executor& exec, const PairLayout& layout, bool vectorizable,
                     bool aligned, const Make& make) {
  constexpr int kItems = Staging<scalar_t, kInputs>::kItems;
  return with_access<scalar_t>(layout, vectorizable, aligned, [&](auto access) {
    return run_path<decltype(access), kItems>(exec, layout, make);
  });
}

// The emulation returns what a launch would: a cudaError_t that the GPU's caller checks
// (glu_ops.cpp), and that the emulated entry points, which return nothing, throw. The torch
// binding turns the exception into a RuntimeError.
inline void check_emulated(int error, const char* direction) {
  if (error != cudaSuccess) {
    throw std::runtime_error(
        std::string("glu_fused: emulated CUDA ") + direction +
        " kernel failed: " + cudaGetErrorString(static_cast<cudaError_t>(error)));
  }
}

}  // namespace cuda
}  // namespace glu_fused
