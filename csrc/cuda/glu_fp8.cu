// The forward quantized to FP8 (Fp8Call, glu_kernels.h; docs/contract.md, "FP8 output"):
// act(gate) * value, rounded to the input's dtype unless told not to, and every block of
// outputs quantized by its own scale, in one pass over the inputs: each block's amax is
// reduced in shared memory before any of its elements is quantized.
#include "glu_cuda.cuh"

namespace glu_fused {
namespace cuda {
namespace {

// The word that stores n FP8 outputs at once.
template <int n>
struct QWord;
template <>
struct QWord<8> {
  using Type = uint2;
};
template <>
struct QWord<4> {
  using Type = uint32_t;
};
template <>
struct QWord<2> {
  using Type = uint16_t;
};

// What a launch does.
enum class Fp8Mode : int {
  Blocks = 0,          // every block of `block` outputs (a group, or a row) by its own scale
  TensorAmax = 1,      // the tensor's amax into *tensor_amax: the first of two launches
  TensorQuantize = 2,  // every output by the one scale: static, or from *tensor_amax
};

// Items (kSpan outputs each: 16 bytes of each input) whose activations a thread keeps from
// its first phase to its last. A row longer than kKeep items a thread (4096 16-bit outputs)
// computes the rest again once its amax is known, reading those inputs twice.
constexpr int kKeep = Fp8Staging::kItems;

// One thread of an FP8 launch, in three phases:
//   0. the activations of its items, kept, and their amax, shared;
//   1. Blocks of at most a thread-row: the amax of each of its blocks, from the partial
//      amaxes of the threads that hold it (consecutive lanes of one item); a row of the
//      whole block, or the tensor: the amaxes of 8 threads each, by the first 32;
//   2. the scale, written once per block (by the thread of its first element), then the
//      kept items quantized and stored, and the rest of a long row computed again.
// Blocks of at most kThreads * kSpan outputs (groups of 32 to 128; rows up to 2048 16-bit
// outputs) take one item a thread, a block's lanes side by side; longer rows (token
// granularity) take one block of threads each. Every block's scale comes from its amax
// before any of its elements is quantized, and each element is computed as the plain
// forward computes it (Element), so q and the scales are bitwise the rule applied to the
// plain result.
template <Activation A, typename scalar_t, typename Access>
struct Fp8Thread {
  using E = Element<A, scalar_t>;
  using N = Num<scalar_t>;
  using Scalar = ScalarAccess<scalar_t>;
  static constexpr int kSpan = Pack<scalar_t>::kSize;
  static constexpr bool kVector = Access::kWidth == kSpan;
  static constexpr int kPhases = 3;
  static constexpr int kMinBlocksPerSm = Fp8Staging::kMinBlocksPerSm;
  static constexpr int kTop = 32;  // threads that reduce the partial amaxes of a whole block
  static constexpr const char* kDirection = "fp8";

  struct State {
    float y[kKeep][kSpan];
    float amax;  // phase 1: of the thread's block (Blocks, short)
  };
  struct Shared {
    float amax[kThreads];
    float top[kTop];
  };

  Fp8Mode mode;
  Tiling tiling;
  PairLayout in;
  RunOffsets in_offsets;
  const scalar_t* gate;
  const scalar_t* value;
  typename E::Params params;
  bool round;
  Fp8Rule rule;
  Fp8Encoding encoding;
  bool long_rows;          // Blocks: one row a block of threads, several items a thread
  int64_t block;           // Blocks: outputs a scale
  int64_t place_mask;      // e & place_mask: e's place in its block (rows: e itself)
  int block_shift;         // e >> block_shift: e's block in its run (rows: 0)
  int64_t blocks_per_run;  // scales a run
  const float* static_scale;
  unsigned* tensor_amax;
  unsigned char* q;
  float* scales;
  // RowOptions: the bias, loaded with each item's inputs (its phase at the items: Run); the
  // token counts, whose refused rows' threads hold nothing (an amax of 0) and store nothing.
  BiasPairs<scalar_t> bias;
  RowCheck valid;

  // A run's gates and values as the accesses take them.
  struct Run {
    const scalar_t* g;
    const scalar_t* v;
    bool gate_first;
    PairPhase phase;
    PairPhase bias_phase;
  };

  GLU_HD Run run_of(int64_t run) const {
    const int64_t at = in_offsets(run);
    Run r{gate + at, value + at, false, {}, {}};
    r.gate_first = r.g < r.v;
    r.phase = Access::pair_phase(r.g, r.v, 0);  // every item's: they are whole packs apart
    if (bias.on()) r.bias_phase = Access::pair_phase(bias.gate, bias.value, 0);
    return r;
  }

  // y at gate + bg and value + bv where there is a bias (else bg, bv are unused).
  GLU_HD float act(scalar_t g, scalar_t v, scalar_t bg, scalar_t bv) const {
    const bool on = bias.on();
    if (round) return static_cast<float>(N::widen(E::forward(g, v, bg, bv, on, params)));
    using C = typename N::Compute;
    return static_cast<float>(
        Gated<A, C>::forward(E::biased(g, bg, on), E::biased(v, bv, on), params));
  }

  // y of the n outputs of the item at e (zeros past n: they leave an amax alone), from its
  // staged loads on the vector paths.
  GLU_HD void compute(const Run& r, int64_t e, int64_t n, const typename Access::StagedPairs& staged,
                      float (&y)[kSpan]) const {
    if constexpr (kVector) {
      if (n == kSpan) {
        const auto packs = Access::ready(staged, r.phase);
        typename Access::PairPacks b{};
        if (bias.on()) {
          b = Access::ready(
              Access::load_pair(bias.gate, bias.value, e, in.elem_stride, r.bias_phase),
              r.bias_phase);
        }
#pragma unroll
        for (int j = 0; j < kSpan; ++j) {
          scalar_t g, v, bg, bv;
          Access::unpack(packs, j, r.gate_first, g, v);
          Access::unpack(b, j, bias.gate_first(), bg, bv);
          y[j] = act(g, v, bg, bv);
        }
        return;
      }
    }
#pragma unroll
    for (int j = 0; j < kSpan; ++j) {
      y[j] = 0.0f;
      if (j < n) {
        const auto x = Scalar::load_pair(r.g, r.v, e + j, in.elem_stride);
        typename Scalar::PairPacks b{};
        if (bias.on()) b = Scalar::load_pair(bias.gate, bias.value, e + j, in.elem_stride);
        y[j] = act(x.gate, x.value, b.gate, b.value);
      }
    }
  }

  GLU_HD float item_amax(const float (&y)[kSpan], float m) const {
#pragma unroll
    for (int j = 0; j < kSpan; ++j) m = Fp8Rule::nan_max(m, y[j]);
    return m;
  }

  // Phase 0: the kept items' activations (all their loads issued first) and the amax of all
  // the thread's items.
  GLU_HD float first_pass(const Stretch& s, State& st) const {
    const Run r = run_of(s.run);
    typename Access::StagedPairs staged[kKeep];
    if constexpr (kVector) {
#pragma unroll
      for (int u = 0; u < kKeep; ++u) {
        const int64_t e = s.first + u * s.step;
        if (e + kSpan <= s.end) staged[u] = Access::load_pair(r.g, r.v, e, in.elem_stride, r.phase);
      }
    }
    float m = 0.0f;
#pragma unroll
    for (int u = 0; u < kKeep; ++u) {
      const int64_t e = s.first + u * s.step;
      if (e >= s.end) continue;
      compute(r, e, min64(kSpan, s.end - e), staged[u], st.y[u]);
      m = item_amax(st.y[u], m);
    }
    if (mode == Fp8Mode::TensorQuantize) return m;
    for (int64_t e = s.first + kKeep * s.step; e < s.end; e += s.step) {
      float y[kSpan];
      again(r, e, min64(kSpan, s.end - e), y);
      m = item_amax(y, m);
    }
    return m;
  }

  // An item past the kept ones, computed from its loads.
  GLU_HD void again(const Run& r, int64_t e, int64_t n, float (&y)[kSpan]) const {
    typename Access::StagedPairs staged;
    if constexpr (kVector) {
      if (n == kSpan) staged = Access::load_pair(r.g, r.v, e, in.elem_stride, r.phase);
    }
    compute(r, e, n, staged, y);
  }

  GLU_HD void store(int64_t run, int64_t e, int64_t n, const float (&y)[kSpan], float r) const {
    unsigned char bytes[kSpan];
#pragma unroll
    for (int j = 0; j < kSpan; ++j) bytes[j] = encoding.encode(rule.saturate(y[j] * r));
    const int64_t at = run * in.run_len + e;
    if (n == kSpan && at % kSpan == 0) {
      using Word = typename QWord<kSpan>::Type;
      Word w;
      memcpy(&w, bytes, sizeof w);
      *reinterpret_cast<Word*>(q + at) = w;
#ifndef __CUDA_ARCH__
      ++emulated_accesses.vector_stores;
#endif
      return;
    }
    for (int j = 0; j < n; ++j) {
      q[at + j] = bytes[j];
#ifndef __CUDA_ARCH__
      ++emulated_accesses.scalar_stores;
#endif
    }
  }

  GLU_HD float top_amax(const Shared& sh) const {
    float m = 0.0f;
    for (int i = 0; i < kTop; ++i) m = Fp8Rule::nan_max(m, sh.top[i]);
    return m;
  }

  // The one scale of TensorQuantize.
  GLU_HD float tensor_scale() const {
    if (static_scale != nullptr) return *static_scale;
    float amax;
    memcpy(&amax, tensor_amax, sizeof amax);
    return rule.scale(amax);
  }

  // The scale of the thread's block(s), and where it is written.
  GLU_HD float scale_of(const Stretch& s, uint32_t block_index, uint32_t thread, const State& st,
                        const Shared& sh) const {
    if (mode == Fp8Mode::TensorQuantize) {
      const float scale = tensor_scale();
      if (block_index == 0 && thread == 0) scales[0] = scale;
      return scale;
    }
    const float scale = rule.scale(long_rows ? top_amax(sh) : st.amax);
    // Written by the thread of the block's first element (a lane past the run's end holds
    // no block, though its place may be 0).
    if ((s.first & place_mask) == 0 && s.first < s.end) {
      scales[s.run * blocks_per_run + (s.first >> block_shift)] = scale;
    }
    return scale;
  }

  GLU_HD void operator()(int phase, uint32_t block_index, uint32_t thread, State& st,
                         Shared& sh) const {
    Stretch s;
    bool active = tiling.locate(block_index, thread, s);
    active = active && valid(s.run);  // a refused row: as a thread past the last run
    if (active) tiling.place(kSpan, 0, s);
    const bool whole = mode == Fp8Mode::TensorAmax || long_rows;  // one amax for the block
    if (phase == 0) {
      sh.amax[thread] = active ? first_pass(s, st) : 0.0f;
      return;
    }
    if (phase == 1) {
      if (whole && thread < kTop) {
        float m = 0.0f;
        for (int i = 0; i < kThreads / kTop; ++i) {
          m = Fp8Rule::nan_max(m, sh.amax[thread * (kThreads / kTop) + i]);
        }
        sh.top[thread] = m;
      } else if (!whole && mode == Fp8Mode::Blocks && active) {
        // The block's lanes: from the one that holds its first element, ceil(block / kSpan).
        const int64_t lane0 = thread - (s.first & place_mask) / kSpan;
        const int64_t lanes = (block + kSpan - 1) / kSpan;
        float m = 0.0f;
        for (int64_t i = 0; i < lanes; ++i) m = Fp8Rule::nan_max(m, sh.amax[lane0 + i]);
        st.amax = m;
      }
      return;
    }
    if (mode == Fp8Mode::TensorAmax) {
      if (thread == 0) {
        const float m = top_amax(sh);
        unsigned bits;
        memcpy(&bits, &m, sizeof bits);  // >= 0 or NaN: its bits order as the floats, NaN last
#ifdef __CUDA_ARCH__
        atomicMax(tensor_amax, bits);
#else
        if (bits > *tensor_amax) *tensor_amax = bits;
#endif
      }
      return;
    }
    if (!active) {
      // The tensor's scale is written even where the first row is refused.
      if (mode == Fp8Mode::TensorQuantize && block_index == 0 && thread == 0) {
        scales[0] = tensor_scale();
      }
      return;
    }
    const float r = 1.0f / scale_of(s, block_index, thread, st, sh);
#pragma unroll
    for (int u = 0; u < kKeep; ++u) {
      const int64_t e = s.first + u * s.step;
      if (e < s.end) store(s.run, e, min64(kSpan, s.end - e), st.y[u], r);
    }
    if (mode != Fp8Mode::Blocks) return;
    const Run run = run_of(s.run);
    for (int64_t e = s.first + kKeep * s.step; e < s.end; e += s.step) {
      float y[kSpan];
      const int64_t n = min64(kSpan, s.end - e);
      again(run, e, n, y);
      store(s.run, e, n, y, r);
    }
  }
};

int log2_of(int64_t power_of_two) {
  int k = 0;
  while ((int64_t{1} << k) < power_of_two) ++k;
  return k;
}

template <Activation A, typename scalar_t>
struct Fp8Forward {
  static int run(const Fp8Call& call, const Executor& exec) {
    const auto* gate = static_cast<const scalar_t*>(call.gate);
    const auto* value = static_cast<const scalar_t*>(call.value);
    // The phased accesses only: an aligned layout is their phase 0, a run-time branch that
    // costs little here, where the aligned variants would cost two fifths of this file's
    // build. float64 takes the scalar path (FP8 from float64 is for tests, not speed).
    const auto bias = BiasPairs<scalar_t>::of(call.rows);
    const bool vectorizable =
        pairs_vectorizable(call.in, gate, value) && bias_vectorizable(call.in, bias);
    return with_access<scalar_t, false>(call.in, vectorizable, false, [&](auto access) {
      using Thread = Fp8Thread<A, scalar_t, decltype(access)>;
      constexpr int kSpan = Thread::kSpan;
      Thread t{};
      t.in = call.in;
      t.in_offsets = RunOffsets::of(call.in);
      t.gate = gate;
      t.value = value;
      t.params = Element<A, scalar_t>::params(call.op);
      t.round = call.round_to_input;
      t.rule = call.rule;
      t.encoding = encoding_of(call.kind);
      t.static_scale = call.static_scale;
      t.tensor_amax = call.tensor_amax;
      t.q = static_cast<unsigned char*>(call.q);
      t.scales = call.scales;
      t.bias = bias;
      t.valid = RowCheck::of(call.rows);
      const int64_t runs = call.in.runs, len = call.in.run_len;
      const auto launch = [&](Fp8Mode mode, int items) {
        t.mode = mode;
        if (!Tiling::plan(runs, len, kSpan, items, t.tiling)) return int(cudaErrorInvalidConfiguration);
        return exec.run_phased(t.tiling.blocks, t, decltype(access)::kName);
      };
      if (call.block == 0) {
        if (call.static_scale == nullptr) {
          const int error = launch(Fp8Mode::TensorAmax, kKeep);
          if (error != cudaSuccess) return error;
        }
        return launch(Fp8Mode::TensorQuantize, kKeep);
      }
      // A block is a group of 32 to 128 outputs, or a whole run (the plan splits runs of
      // several rows): the lanes of a thread-row start at a block's first element.
      const bool group = call.block <= 128 && (call.block & (call.block - 1)) == 0;
      if (!group && call.block != len) return int(cudaErrorInvalidValue);
      t.block = call.block;
      t.blocks_per_run = len / call.block;
      const bool rows = !group;
      t.long_rows = rows && len > int64_t{kThreads} * kSpan;
      t.place_mask = rows ? ~int64_t{0} : call.block - 1;  // groups: 32, 64 or 128
      t.block_shift = rows ? 63 : log2_of(call.block);
      // Long rows: enough items a thread for a row a block of threads (parts == 1).
      const int64_t items = t.long_rows ? ceil_div(len, int64_t{kThreads} * kSpan) : 1;
      if (items > 0x7fffffff) return int(cudaErrorInvalidConfiguration);
      return launch(Fp8Mode::Blocks, static_cast<int>(items));
    });
  }
};

}  // namespace
}  // namespace cuda

int gated_forward_fp8_cuda(const Fp8Call& call, void* stream) {
  const cuda::Executor exec{static_cast<cudaStream_t>(stream), false};
  return dispatch<cuda::Fp8Forward, cuda::CudaTypes>(call, exec);
}

void gated_forward_fp8_cuda_emulated(const Fp8Call& call) {
  const cuda::Executor exec{nullptr, true};
  cuda::check_emulated(dispatch<cuda::Fp8Forward, cuda::CudaTypes>(call, exec), "fp8 forward");
}

}  // namespace glu_fused
