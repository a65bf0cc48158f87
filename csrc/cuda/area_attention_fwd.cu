// Area-attention forward on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate). Torch-free.
//
// One CTA per (batch, head, area) [x a query split, grid.y, when there are few sequences]. YOLOv12's areas are
// short (n = 400 tokens at 640x640, 1600 at 1280), so an area's whole K and V (n x head_dim x 2 bytes each) fit in
// shared memory: the CTA stages them once and its warps then sweep all their query tiles with no further
// barrier ("resident" plan). On sm_80+ the token-contiguous views stage through cp.async, every copy of K and V in
// flight at once (the register path of sm_75 and of the other layouts keeps 4 loads per thread in flight). Areas too
// long for the arch's shared memory stream K/V through smem in chunks, all warps of the CTA moving through the chunks
// together ("streaming" plan, FlashAttention-2 style).
//
// Layouts. q, k, v are (B, heads, D, N) with arbitrary element strides (views of the interleaved qkv conv
// output: token stride 1, d stride N, head stride 3*D*N; turbo halves; channels_last conv outputs: token
// stride C, d stride 1). K and V go to smem as [d][key] rows (the layout of an NCHW feature map, so the common
// case is a straight vectorised copy), each row chunk_keys + 8 elements long: an odd number of 16-byte units, so
// the 8 rows an ldmatrix phase reads fall in 8 different bank groups (no swizzle needed).
//   S = Q K^T : A = Q (16 queries x 16 d) in registers (loaded from global once per tile),
//               B = K^T fragments by ldmatrix.trans from the [d][key] rows.
//   O = P V   : A = P re-packed from the S accumulators (FA2's register reuse),
//               B = V fragments by ldmatrix (non-transposed) from the same [d][key] rows.
// Online softmax in base 2 on the raw fp32-accumulated scores s: the row max of the scaled scores is taken as
// c * max(s) (c * min(s) for a negative scale; c = scale * log2 e, in fp32, so nothing overflows where fp32 would
// not), and p = exp2(s * c - m) is one FFMA + ex2 per score. lse = (m + log2 l) * ln 2. Only the block holding
// the last valid key of a chunk is masked.
// Epilogue per warp: O / l (+ residual, in fp32), rounded once to the input dtype, transposed through a small
// per-warp smem buffer and stored contiguous (B, heads, D, N) with 32-byte row segments; lse (B, heads, N) fp32.
//
// Warps: 8 per CTA for D = 32 by default (<= 128 registers, 2 CTAs/SM by registers; 1-16 by AreaAttnFwdArgs::warps),
// 4 for D = 64; each warp owns 16 query rows at a time and steps through the keys 64 at a time (16 at a time for the tail; the partial tail is masked).
// sm_75 has no m16n8k16 for f16: each product is two m16n8k8. bf16 needs sm_80 (the sm_75 bf16 kernel is a trap).
// Shared memory per CTA: 2 * D * (chunk_keys + 8) * 2 bytes (K and V) + warps * D * 24 * 2 bytes (epilogue).
// D = 32: n = 400 resident takes 51 KB + 12 KB (fits sm_75's 64 KB); n = 1600 takes 201 KB + 12 KB (resident on
// sm_90 only; streamed elsewhere in chunks of 128 (sm_75) to 512 (sm_80) keys, sized for 2 CTAs per SM).
// The launch plan (area_attention_fwd_plan) is pure host code, checked per arch by tests/test_cuda_compile.py.
// On the CPU (tests/test_cuda_emu.py) the kernel runs through csrc/cuda/device.h's emulator, whose warp collectives
// stand in for the mma / ldmatrix / shfl wrappers below (their YOLOV12_FAST_CUDA_EMU branches), as sm_80+ does.
#include "attention_common.cuh"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "kernels.h"

namespace yolov12_fast {
namespace cuda {
namespace detail {  // (not anonymous: helpers an arch does not use would warn "declared but never referenced")

constexpr int kKeyBlock = 64;  // keys per online-softmax step (the tail of an area goes 16 keys at a time)
// The head_dim-32 kernel also comes with 32-key steps (AreaAttnFwdArgs::key_block = 32, $YOLOV12_FAST_CUDA_FWD_KEYS):
// half the score accumulators, so it fits 80 registers (<= 85 on sm_90: 3 CTAs of 8 warps per SM, 24 warps where
// the 64-key kernel's 127 registers allow 16; 64.5 KB of shared memory each at n = 400) for twice the
// online-softmax rescales per key (19 % more instructions per key: 154 per 32-key step against 259 per 64-key step
// in the sm_90a SASS). The H100 of 2026-11-27c measured the 64-key kernel latency-bound (146 us at P4 h8 b32, about 3x
// its issue bound) and Triton's 66-90 register kernels 15 % faster: an A/B variant for benchmarks/fwd_warps.py.
constexpr int kKeyBlockSmall = 32;

template <int D, int KB = kKeyBlock>
struct Config {
  static_assert(D == 32 || D == 64, "head_dim 32 or 64");
  static_assert(KB == kKeyBlock || (KB == kKeyBlockSmall && D == 32), "32-key steps: head_dim 32 only");
  // Warps per CTA are a launch parameter (AreaAttnFwdArgs::warps; the plan's default kWarps): each warp owns 16
  // query rows at a time, so the warps an area's query tiles spread over decide how many rounds a CTA takes (at n =
  // 400, 25 tiles: 8 warps take 4 rounds with one warp busy in the last, 5 warps 5 full rounds, 13 warps 2), and
  // with the arch's registers and shared memory how many CTAs share an SM. benchmarks/fwd_warps.py times them.
  static constexpr int kWarps = D == 32 ? 8 : 4;
  static constexpr int kMaxWarps = KB == kKeyBlockSmall ? 8 : D == 32 ? 16 : 4;  // sm_80+ code
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800) || defined(YF_EMU_SM75)
  // Turing code keeps kWarps fixed: its two-m16n8k8 products fill the 128 registers already, and a runtime count
  // spilled 20 bytes there. The launcher refuses other counts for code below sm_80.
  static constexpr bool kFixedWarps = true;
  static constexpr int kBoundThreads = kWarps * 32;
  static constexpr int kMinBlocks = D == 32 ? 2 : 1;
#else
  static constexpr bool kFixedWarps = false;
  static constexpr int kBoundThreads = kMaxWarps * 32;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static constexpr int kMinBlocks = KB == kKeyBlockSmall ? 3 : 1;  // 32-key steps: <= 85 registers, 3 CTAs per SM
#else
  // sm_80-sm_89: shared memory holds 2 CTAs of the resident n = 400 plan at most (164 KB per SM on sm_80), and at
  // 85 registers ptxas spilled 4 bytes there: 32-key steps keep <= 128 registers (2 CTAs of 8 warps)
  static constexpr int kMinBlocks = KB == kKeyBlockSmall ? 2 : 1;
#endif
#endif
  // Register budget: <= 128 registers for D = 32 (65536 / 512 threads on sm_80+, / (2 x 256) on Turing); D = 64
  // (more accumulators) may use up to 255 so that nothing spills.
};

struct FwdParams : AreaParams {  // q, k, v, where the sequences are, the staging plan (chunk = keys per chunk)
  const uint16_t* res;  // nullptr: no residual
  uint16_t* out;
  float* lse;
  Strides4 sr;
  int k_mode, v_mode;  // staging: 0 = d-fastest scalar, 1 = token-fastest scalar, 2/4/8 = token vectors
  float scale_log2;  // scale * log2(e)
};

// ------------------------------------------------------------------------------------------------------------
// one warp's 16 query rows

template <int D>
struct WarpState {
  uint32_t qa[D / 16][4];  // Q as mma A fragments, one per 16-wide slice of head_dim
  float o[D / 8][4];       // O accumulators, one per 8-wide slice of head_dim
  float m[2];              // running max (log2 domain) of rows g and g+8
  float l[2];              // running sum of this thread's columns (reduced over the quad at the end)
};

// Q rows q0 + {g, g+8} of the area (zero past n), straight from global into A fragments.
template <int D>
__device__ __forceinline__ void load_q(WarpState<D>& st, const uint16_t* __restrict__ qb, const Strides4& s, int q0,
                                       int n, int lane) {
  load_rows_a<D>(st.qa, qb, s.n, s.d, q0, n, lane);
#pragma unroll
  for (int i = 0; i < D / 8; ++i) st.o[i][0] = st.o[i][1] = st.o[i][2] = st.o[i][3] = 0.f;
  st.m[0] = st.m[1] = -INFINITY;
  st.l[0] = st.l[1] = 0.f;
}

// Keys [kb, kb + 16*NT16) of the smem chunk. MASK: keys >= kvalid are masked (they are zero-filled in smem);
// only the block that holds the chunk's last valid key needs it. POS: scale_log2 >= 0.
// The scale is folded into the exponent, p = exp2(s * c - m) as one FFMA on the raw score s (c = scale * log2 e):
// the row max of the scaled scores is c * max(raw) for c >= 0 and c * min(raw) for c < 0, so the raw scores are
// never multiplied one by one. Per score an unmasked block thus issues FMNMX, FFMA, MUFU, FADD (it was FMUL, the
// mask's index compare and FSEL, FMNMX, FADD, MUFU, FADD): the 64-key block loop of the head_dim-32 SASS went from
// 359 to 260 instructions per warp on sm_90a (358 -> 260 sm_80, 427 -> 329 sm_75), from issue-bound to ex2-bound
// by _aot's pipe model on sm_80/sm_90 (a predicted 1.3x there; Turing stays tensor-bound).
template <typename T, int D, int NT16, bool MASK, bool POS>
__device__ __forceinline__ void attend_block(WarpState<D>& st, uint32_t ks_base, uint32_t vs_base, int row, int kb,
                                             int kvalid, float scale_log2, int lane) {
  constexpr int NT8 = NT16 * 2;
  const int t = lane & 3;
  constexpr float kFar = POS ? -INFINITY : INFINITY;  // the raw score a masked key stands for

  // S = Q K^T: per 8-key tile, one ldmatrix.trans.x4 brings K^T fragments for 32 d (lane l addresses row d = l).
  float s[NT8][4];
  scores<T, D, NT8>(s, st.qa, ks_base, row, kb, lane);

  // online softmax (base 2), on the raw scores
  float mx[2] = {kFar, kFar};
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[j][e];
      if (MASK && kb + j * 8 + 2 * t + (e & 1) >= kvalid) x = kFar;
      s[j][e] = x;
      mx[e >> 1] = POS ? fmaxf(mx[e >> 1], x) : fminf(mx[e >> 1], x);
    }
  }
  // A row whose scaled scores so far are all -inf (fp32 overflow of finite inputs, -inf inputs) keeps m = -inf: its
  // exponents subtract the lowest finite float instead (mu), or 2^(-inf - -inf) would make NaN of keys that have
  // probability 0 (-inf - mu is still -inf).
  float alpha[2], mu[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = POS ? fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1)) : fminf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = POS ? fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2)) : fminf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(st.m[r], mx[r] * scale_log2);
    mu[r] = fmaxf(m_new, -FLT_MAX);
    alpha[r] = fast_exp2(st.m[r] - mu[r]);  // 0 while m = -inf (the first block, or all -inf so far)
    st.m[r] = m_new;
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      // a masked key: exponent -inf (not fma(-inf, c, .): NaN when c = 0)
      const float x = (MASK && s[j][e] == kFar) ? -INFINITY : fmaf(s[j][e], scale_log2, -mu[e >> 1]);
      const float p = fast_exp2(x);
      s[j][e] = p;
      sum[e >> 1] += p;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) st.l[r] = st.l[r] * alpha[r] + sum[r];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    st.o[i][0] *= alpha[0];
    st.o[i][1] *= alpha[0];
    st.o[i][2] *= alpha[1];
    st.o[i][3] *= alpha[1];
  }

  // O += P V: P re-packed as A fragments (two 8-key accumulator tiles = one 16-key A); one ldmatrix.x4 brings V
  // fragments for 16 keys x 16 d (matrices: d tile 2dp / keys 0-7, 2dp / 8-15, 2dp+1 / 0-7, 2dp+1 / 8-15).
  accumulate_rows<T, D, NT16>(st.o, s, vs_base, row, kb, lane);
}

// All keys [0, kend) of the smem chunk (kend a multiple of 16); keys >= kvalid masked (in the last block only).
template <typename T, int D, int KB, bool POS>
__device__ __forceinline__ void attend_keys(WarpState<D>& st, uint32_t ks_base, uint32_t vs_base, int row, int kend,
                                            int kvalid, float scale_log2, int lane) {
  int kb = 0;
  for (; kb + KB <= kvalid; kb += KB)  // full blocks: no mask
    attend_block<T, D, KB / 16, false, POS>(st, ks_base, vs_base, row, kb, kvalid, scale_log2, lane);
  for (; kb + 16 <= kvalid; kb += 16)
    attend_block<T, D, 1, false, POS>(st, ks_base, vs_base, row, kb, kvalid, scale_log2, lane);
  if (kb < kend)  // the partial last 16 keys
    attend_block<T, D, 1, true, POS>(st, ks_base, vs_base, row, kb, kvalid, scale_log2, lane);
}

template <typename T, int D, int KB>
__device__ __forceinline__ void attend_chunk(WarpState<D>& st, const uint16_t* Ks, const uint16_t* Vs, int row,
                                             int kend, int kvalid, float scale_log2, int lane) {
  const uint32_t ks_base = smem_addr(Ks), vs_base = smem_addr(Vs);
  if (scale_log2 >= 0.f)  // uniform over the launch
    attend_keys<T, D, KB, true>(st, ks_base, vs_base, row, kend, kvalid, scale_log2, lane);
  else
    attend_keys<T, D, KB, false>(st, ks_base, vs_base, row, kend, kvalid, scale_log2, lane);
}

// O / l (+ residual) -> out rows q0..q0+15 of the area (contiguous (B, heads, D, N)), lse.
template <typename T, int D>
__device__ __forceinline__ void epilogue(const WarpState<D>& st, uint16_t* __restrict__ epi,
                                         const uint16_t* __restrict__ rb, const Strides4& sr,
                                         uint16_t* __restrict__ ob, float* __restrict__ lb, int64_t N, int q0,
                                         int n, int lane) {
  const int g = lane >> 2, t = lane & 3;
  float l[2], inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = st.l[r];
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.f / l[r];
  }
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = i * 8 + 2 * t + (e & 1);
      const int rl = g + (e >> 1) * 8;  // row within the tile
      float val = st.o[i][e] * inv[e >> 1];
      if (rb != nullptr && q0 + rl < n)
        val += Elem<T>::to_float(__ldg(rb + (int64_t)(q0 + rl) * sr.n + (int64_t)d * sr.d));
      epi[d * kEpiRow + rl] = Elem<T>::from_float(val);
    }
  }
  __syncwarp();
  flush_rows<D>(epi, ob, N, q0, n, lane);
  if (t == 0) {
    if (q0 + g < n) lb[q0 + g] = (st.m[0] + __log2f(l[0])) * kLn2;
    if (q0 + g + 8 < n) lb[q0 + g + 8] = (st.m[1] + __log2f(l[1])) * kLn2;
  }
  __syncwarp();  // the buffer is reused by this warp's next tile
}

// ------------------------------------------------------------------------------------------------------------
// the kernel

template <typename T, int D, int KB = kKeyBlock>
__global__ void __launch_bounds__(Config<D, KB>::kBoundThreads, Config<D, KB>::kMinBlocks)
    area_attention_fwd_kernel(const FwdParams p) {
  if constexpr (!arch_has_mma<T>()) {
    __trap();
  } else {
    // warps per CTA: the launch's (whole warps, <= kMaxWarps); Turing code: kWarps, which the launcher guarantees
    const int NW = Config<D, KB>::kFixedWarps ? Config<D, KB>::kWarps : (int)(blockDim.x >> 5);
    YF_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int row = p.smem_row;
    uint16_t* Ks = reinterpret_cast<uint16_t*>(smem_raw);
    uint16_t* Vs = Ks + D * row;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint16_t* epi = Vs + D * row + warp * (D * kEpiRow);

    // which sequence; *g below: its global bases
    const Sequence sq = this_sequence(p.heads, p.area, p.n);
    const int64_t bh = sq.bh, t0 = sq.t0;
    const uint16_t* qg = seq_base(p.q, p.sq, sq);
    const uint16_t* kg = seq_base(p.k, p.sk, sq);
    const uint16_t* vg = seq_base(p.v, p.sv, sq);
    const uint16_t* rg = p.res ? seq_base(p.res, p.sr, sq) : nullptr;
    uint16_t* og = p.out + bh * D * p.N + t0;
    float* lg = p.lse + bh * p.N + t0;

    const int n = p.n;
    const int q_tiles = (int)(((int64_t)n + 15) / 16);  // 64-bit: n may come within 15 of INT_MAX
    const int groups = (q_tiles + NW - 1) / NW;  // NW query tiles (one per warp) per group
    const int chunks = p.resident ? 1 : (int)(((int64_t)n + p.chunk - 1) / p.chunk);

    // Resident: K/V are staged once (first pass below) and the warps then run with no further barrier.
    // Streaming: for each query group the CTA moves through the K/V chunks together.
    bool staged = false;
    for (int grp = blockIdx.y; grp < groups; grp += gridDim.y) {
      const int tile = grp * NW + warp;
      const bool active = tile < q_tiles;  // idle warps still help stage
      WarpState<D> st;
      if (active) load_q<D>(st, qg, p.sq, tile * 16, n, lane);
      for (int c = 0; c < chunks; ++c) {
        const int c0 = c * p.chunk;
        const int cvalid = min(p.chunk, n - c0);
        const int cend = (cvalid + 15) & ~15;
        if (!p.resident || !staged) {  // CTA-uniform
          __syncthreads();  // every warp is done with the previous chunk
          stage<D, 0>(Ks, kg, p.sk, p.k_mode, c0, cend, n, row, p.async_staging);
          stage<D, 0>(Vs, vg, p.sv, p.v_mode, c0, cend, n, row, p.async_staging);
          cp_async_wait_all();  // K and V were in flight together
          __syncthreads();
          staged = true;
        }
        if (active) attend_chunk<T, D, KB>(st, Ks, Vs, row, cend, cvalid, p.scale_log2, lane);
      }
      if (active) epilogue<T, D>(st, epi, rg, p.sr, og, lg, p.N, tile * 16, n, lane);
    }
  }
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------------------
// host side

namespace {
using namespace detail;

template <typename T, int D, int KB = kKeyBlock>
LaunchCache& fwd_cache() {
  static LaunchCache cache;
  return cache;
}

template <typename T, int D>
int code_arch() {
  return code_arch_of(area_attention_fwd_kernel<T, D>, fwd_cache<T, D>());
}

template <typename T, int D, int KB = kKeyBlock>
cudaError_t launch(const FwdParams& p, const AreaAttnFwdPlan& plan, int64_t seqs, const DeviceInfo& dev,
                   cudaStream_t stream) {
  const DType dt = std::is_same<T, __nv_bfloat16>::value ? DType::kBFloat16 : DType::kFloat16;
  const int arch = code_arch<T, D>();
  if (arch > 0 && arch < 80 && plan.warps != Config<D, KB>::kWarps) return cudaErrorInvalidValue;  // Turing: fixed
  return launch_split(area_attention_fwd_kernel<T, D, KB>, fwd_cache<T, D, KB>(),
                      area_attention_fwd_required_arch(dt), plan.warps * 32, plan.warps, plan.smem_bytes, p.n, seqs,
                      dev, stream, p);
}

}  // namespace

bool area_attention_fwd_supports_head_dim(int64_t head_dim) { return head_dim == 32 || head_dim == 64; }

int area_attention_fwd_code_arch(DType dtype, int64_t head_dim) {
  if (dtype == DType::kFloat16) return head_dim == 32 ? code_arch<__half, 32>() : code_arch<__half, 64>();
  if (dtype == DType::kBFloat16)
    return head_dim == 32 ? code_arch<__nv_bfloat16, 32>() : code_arch<__nv_bfloat16, 64>();
  return -1;
}

bool area_attention_fwd_supports_key_block(int64_t head_dim, int key_block) {
  return area_attention_fwd_supports_head_dim(head_dim) &&
         (key_block == 0 || key_block == kKeyBlock || (key_block == kKeyBlockSmall && head_dim == 32));
}

int area_attention_fwd_max_warps(int64_t head_dim, int code_arch, int key_block) {
  if (!area_attention_fwd_supports_key_block(head_dim, key_block)) return 0;
  if (code_arch > 0 && code_arch < 80) return head_dim == 32 ? Config<32>::kWarps : Config<64>::kWarps;
  if (key_block == kKeyBlockSmall) return Config<32, kKeyBlockSmall>::kMaxWarps;
  return head_dim == 32 ? Config<32>::kMaxWarps : Config<64>::kMaxWarps;
}

AreaAttnFwdPlan area_attention_fwd_plan(int64_t n, int64_t head_dim, const DeviceInfo& dev, int warps,
                                        int key_block) {
  AreaAttnFwdPlan plan{};
  if (!area_attention_fwd_supports_key_block(head_dim, key_block) || n < 1) return plan;
  if (warps < 0 || warps > area_attention_fwd_max_warps(head_dim, 0, key_block)) return plan;
  plan.warps = warps > 0 ? warps : head_dim == 32 ? Config<32>::kWarps : Config<64>::kWarps;
  const int64_t epi = (int64_t)plan.warps * head_dim * kEpiRow * 2;
  const int64_t per_key = 2 * head_dim * 2;  // one key of K and of V, 2-byte elements
  const int64_t n16 = round_up(n, 16);
  const int64_t resident = per_key * (n16 + 8) + epi;
  if (resident <= dev.smem_per_block_optin) {
    plan.resident = true;
    plan.chunk_keys = (int)n16;
  } else {
    // Streaming: chunks of a multiple of 64 keys sized so that two CTAs share an SM (one computes while the
    // other stages; sm_80+ reserves 1 KB of shared memory per CTA), or whatever fits one CTA.
    int64_t budget = std::min<int64_t>(dev.smem_per_block_optin, dev.smem_per_sm / 2 - 1024);
    int64_t chunk = ((budget - epi) / per_key - 8) / kKeyBlock * kKeyBlock;
    if (chunk < kKeyBlock) chunk = ((dev.smem_per_block_optin - epi) / per_key - 8) / kKeyBlock * kKeyBlock;
    if (chunk < kKeyBlock) return plan;
    plan.resident = false;
    plan.chunk_keys = (int)std::min<int64_t>(chunk, n16);
  }
  plan.smem_row = plan.chunk_keys + 8;
  plan.smem_bytes = (int)(per_key * plan.smem_row + epi);
  plan.supported = true;
  return plan;
}

cudaError_t area_attention_fwd(const AreaAttnFwdArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  int64_t seqs = 0;
  const cudaError_t bad = check_attention_launch(a.batch, a.heads, a.tokens, a.area, a.dtype, dev, &seqs);
  if (bad != cudaSuccess || seqs == 0) return bad;
  const int64_t n = a.tokens / a.area;
  const AreaAttnFwdPlan plan = area_attention_fwd_plan(n, a.head_dim, dev, a.warps, a.key_block);
  if (!plan.supported)
    return area_attention_fwd_supports_head_dim(a.head_dim) &&
                   (!area_attention_fwd_supports_key_block(a.head_dim, a.key_block) || a.warps < 0 ||
                    a.warps > area_attention_fwd_max_warps(a.head_dim, 0, a.key_block))
               ? cudaErrorInvalidValue : cudaErrorNotSupported;

  FwdParams p{};
  set_area_params(p, a, plan, n);
  p.res = static_cast<const uint16_t*>(a.residual);
  p.out = static_cast<uint16_t*>(a.out);
  p.lse = a.lse;
  p.sr = a.sr;
  p.k_mode = staging_mode(a.k, a.sk, a.batch, a.heads, n);
  p.v_mode = staging_mode(a.v, a.sv, a.batch, a.heads, n);
  p.scale_log2 = a.scale * kLog2e;

  const bool half = a.dtype == DType::kFloat16;
  if (a.head_dim == 32 && a.key_block == kKeyBlockSmall)
    return half ? launch<__half, 32, kKeyBlockSmall>(p, plan, seqs, dev, stream)
                : launch<__nv_bfloat16, 32, kKeyBlockSmall>(p, plan, seqs, dev, stream);
  if (a.head_dim == 32)
    return half ? launch<__half, 32>(p, plan, seqs, dev, stream) : launch<__nv_bfloat16, 32>(p, plan, seqs, dev, stream);
  return half ? launch<__half, 64>(p, plan, seqs, dev, stream) : launch<__nv_bfloat16, 64>(p, plan, seqs, dev, stream);
}

}  // namespace cuda
}  // namespace yolov12_fast
