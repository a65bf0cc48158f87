// Area-attention backward on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate). Torch-free.
//
// Given dO, the forward's lse (natural log, per query) and Delta = rowsum(dO * O) (O without the residual; a small
// first kernel computes it), with P = exp(scale q.k - lse) recomputed from scratch (no n x n tensor anywhere):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - Delta),  dK = scale dS^T Q,  dQ = scale dS K.
// Two gradient kernels, no atomics (deterministic, like the Triton backward): dK/dV per key tile sweeping the area's queries,
// dQ per query tile sweeping its keys. Both are the forward kernel's structure (area_attention_fwd.cu) with roles
// swapped: one CTA per (batch, head, area) [x a tile split, grid.y], the swept tensors staged in shared memory as
// [d][token] rows (resident, or streamed in chunks when the area is long), each warp owning 16 rows at a time with
// its own operands in registers as mma A fragments.
//
// dK/dV kernel, per warp: 16 keys (K and V as A fragments); per step of 32 queries:
//   S^T = K Q^T and dP^T = V dO^T   (B = Q^T / dO^T by ldmatrix.trans from the staged [d][query] rows),
//   P^T = exp2(S^T scale log2e - lse log2e), dS^T = P^T (dP^T - Delta)   (lse, Delta of the step's queries: smem),
//   dV += P^T dO,  dK += dS^T Q   (A = P^T / dS^T re-packed from the accumulators, B = dO / Q by ldmatrix).
// dQ kernel, per warp: 16 queries (Q and dO as A fragments, lse and Delta of its rows in registers); per step of 32
// keys: S = Q K^T, dP = dO V^T (B by ldmatrix.trans from the staged [d][key] rows), P, dS as above,
// dQ += dS K (B = K by ldmatrix). Epilogues scale dK and dQ by `scale` and store through the forward's per-warp
// transpose buffer, contiguous (B, heads, D, N).
// P and dS go to the tensor cores in the input dtype (as in FlashAttention-2); everything else is fp32.
#include "attention_common.cuh"

namespace yolov12_fast {
namespace cuda {
namespace detail {

constexpr int kBwdBlock = 32;  // tokens swept per step (the tail of an area goes 16 at a time)
// Unmasked code for the full blocks, the mask in the block holding the chunk's last valid token only: sm_80 / sm_90
// (the d32 sweep loops went from 162 / 250 to 128 / 177 SASS instructions on sm_80, 179 / 266 to 130 / 177 on
// sm_90a, dQ / dK-dV). Turing (and its emulator build) keeps one masked block code: at its 128-register bound the
// extra block codes spill (8 bytes in the dK/dV kernel).
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800) || defined(YF_EMU_SM75)
constexpr bool kBwdSplitMask = false;
#else
constexpr bool kBwdSplitMask = true;
#endif

template <int D>
struct BwdConfig {
  static_assert(D == 32 || D == 64, "head_dim 32 or 64");
  static constexpr int kWarps = D == 32 ? 8 : 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinBlocks = D == 32 ? 2 : 1;  // as the forward: <= 128 registers for D = 32
};

struct BwdParams : AreaParams {  // q, k, v, where the sequences are, the staging plan (chunk = tokens per chunk)
  const uint16_t* dout;
  const float* lse;    // (B, heads, N) contiguous, natural log
  const float* delta;  // (B, heads, N) contiguous, rowsum(dO * (out - residual))
  uint16_t* dq;        // each contiguous (B, heads, D, N)
  uint16_t* dk;
  uint16_t* dv;
  Strides4 sdo;
  int mode_a, mode_b;  // staging modes of the two staged tensors: dK/dV: q, dout; dQ: k, v
  float scale, scale_log2;
};

// ------------------------------------------------------------------------------------------------------------
// Delta = rowsum(dO * (O - R)) per query (O: the forward's output with the residual R added): one thread per token
// of one (batch, head), reading the D rows with the token stride (coalesced for NCHW-like layouts). D is a template
// parameter so that the loop unrolls and a thread's 2-3 x D loads are all in flight at once: with D a runtime value
// they went a few at a time, and the kernel took 12.6 us at P5 h4 batch 32 on the H100 of 2026-11-27b, about 5x the
// 2.2 us its 6.6 MB take at 3 TB/s.

struct DeltaParams {
  const uint16_t* dout;
  const uint16_t* out;
  const uint16_t* res;  // nullptr: none
  float* delta;         // (B, heads, N) contiguous
  Strides4 sdo, so, sr;
  int64_t N;
  int heads;
};

template <typename T, int D>
__global__ void __launch_bounds__(256) area_attention_bwd_delta_kernel(const DeltaParams p) {
  const int64_t tok = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (tok >= p.N) return;
  const int bh = blockIdx.y, h = bh % p.heads, b = bh / p.heads;
  const uint16_t* dob = p.dout + b * p.sdo.b + h * p.sdo.h + tok * p.sdo.n;
  const uint16_t* ob = p.out + b * p.so.b + h * p.so.h + tok * p.so.n;
  const uint16_t* rb = p.res ? p.res + b * p.sr.b + h * p.sr.h + tok * p.sr.n : nullptr;
  // in groups of 16 rows: a group's loads are issued before its FMAs (left to itself the compiler interleaved them 2
  // rows at a time, 16 dependent memory round trips for D = 32)
  constexpr int G = 16;
  float acc = 0.f;
#pragma unroll
  for (int d0 = 0; d0 < D; d0 += G) {
    uint16_t o[G], g[G], r[G];
#pragma unroll
    for (int i = 0; i < G; ++i) {
      o[i] = __ldg(ob + (d0 + i) * p.so.d);
      g[i] = __ldg(dob + (d0 + i) * p.sdo.d);
      r[i] = rb ? __ldg(rb + (d0 + i) * p.sr.d) : uint16_t(0);
    }
#pragma unroll
    for (int i = 0; i < G; ++i) {
      float oi = Elem<T>::to_float(o[i]);
      if (rb) oi -= Elem<T>::to_float(r[i]);
      acc = fmaf(Elem<T>::to_float(g[i]), oi, acc);
    }
  }
  p.delta[(int64_t)bh * p.N + tok] = acc;
}

// ------------------------------------------------------------------------------------------------------------
// dK / dV and dQ: one kernel, its role a template flag (DKDV). Both stage two tensors of the area as [d][token] rows
// (dK/dV: Q and dO, plus lse * log2e and Delta of the chunk's queries; dQ: K and V), and each warp holds two 16-row
// tiles as A fragments (dK/dV: K and V of 16 keys; dQ: Q and dO of 16 queries, with lse and Delta of its rows).

template <int D>
struct BwdTile {
  uint32_t a[D / 16][4], b[D / 16][4];  // dK/dV: K, V of this warp's 16 keys; dQ: Q, dO of its 16 queries
  float acc0[D / 8][4], acc1[D / 8][4];  // dK/dV: dK, dV; dQ: dQ (acc1 unused)
  float ls[2], dl[2];                    // dQ: lse * log2e (at least -FLT_MAX) and Delta of rows g, g + 8
};

// Tokens [tb, tb + 16*NT16) of the staged chunk (queries for dK/dV, keys for dQ); MASK: those >= tvalid contribute
// nothing (only the block holding the chunk's last valid token needs it: its zero-filled tokens would otherwise
// count with P = 2^(0 - lse)). xs, ys: shared addresses of the two staged tensors; ls / dl: lse * log2e and Delta of
// the chunk's queries (dK/dV only).
template <typename T, int D, bool DKDV, int NT16, bool MASK>
__device__ __forceinline__ void bwd_block(BwdTile<D>& w, uint32_t xs, uint32_t ys, const float* ls, const float* dl,
                                          int row, int tb, int tvalid, float scale_log2, int lane) {
  constexpr int NT8 = NT16 * 2;
  const int t = lane & 3;
  float p[NT8][4], dp[NT8][4];
  scores<T, D, NT8>(p, w.a, xs, row, tb, lane);   // dK/dV: S^T = K Q^T; dQ: S = Q K^T
  scores<T, D, NT8>(dp, w.b, ys, row, tb, lane);  // dK/dV: dP^T = V dO^T; dQ: dP = dO V^T
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int ti = tb + j * 8 + 2 * t + (e & 1);  // the staged token of this element
      float pe = 0.f, dse = 0.f;
      if (!MASK || ti < tvalid) {  // a row of -inf scores: lse = -inf, clamped, P = 0
        const float lse2 = DKDV ? fmaxf(ls[ti], -FLT_MAX) : w.ls[e >> 1];
        pe = fast_exp2(p[j][e] * scale_log2 - lse2);
        dse = pe * (dp[j][e] - (DKDV ? dl[ti] : w.dl[e >> 1]));
      }
      p[j][e] = pe;
      dp[j][e] = dse;
    }
  }
  if constexpr (DKDV) {
    accumulate_rows<T, D, NT16>(w.acc1, p, ys, row, tb, lane);   // dV += P^T dO
    accumulate_rows<T, D, NT16>(w.acc0, dp, xs, row, tb, lane);  // dK += dS^T Q
  } else {
    accumulate_rows<T, D, NT16>(w.acc0, dp, xs, row, tb, lane);  // dQ += dS K
  }
}

template <typename T, int D, bool DKDV>
__global__ void __launch_bounds__(BwdConfig<D>::kThreads, BwdConfig<D>::kMinBlocks)
    area_attention_bwd_kernel(const BwdParams p) {
  if constexpr (!arch_has_mma<T>()) {
    __trap();
  } else {
    constexpr int NW = BwdConfig<D>::kWarps;
    constexpr int NT = BwdConfig<D>::kThreads;
    YF_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int row = p.smem_row;
    uint16_t* Xs = reinterpret_cast<uint16_t*>(smem_raw);  // dK/dV: Q rows [d][query]; dQ: K rows [d][key]
    uint16_t* Ys = Xs + D * row;                             // dK/dV: dO rows; dQ: V rows
    float* Ls = reinterpret_cast<float*>(Ys + D * row);      // dK/dV: lse * log2e of the chunk's queries
    float* Dl = Ls + p.chunk;                                // dK/dV: Delta
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint16_t* epi = reinterpret_cast<uint16_t*>(Dl + p.chunk) + warp * (D * kEpiRow);

    const Sequence sq = this_sequence(p.heads, p.area, p.n);
    const int64_t bh = sq.bh, t0 = sq.t0;
    const uint16_t* qg = seq_base(p.q, p.sq, sq);
    const uint16_t* kg = seq_base(p.k, p.sk, sq);
    const uint16_t* vg = seq_base(p.v, p.sv, sq);
    const uint16_t* dog = seq_base(p.dout, p.sdo, sq);
    const float* lg = p.lse + bh * p.N + t0;
    const float* deltag = p.delta + bh * p.N + t0;
    // staged (X, Y) and held (A, B) tensors of this role
    const uint16_t* xg = DKDV ? qg : kg;
    const uint16_t* yg = DKDV ? dog : vg;
    const Strides4& sx = DKDV ? p.sq : p.sk;
    const Strides4& sy = DKDV ? p.sdo : p.sv;
    const uint16_t* ag = DKDV ? kg : qg;
    const uint16_t* bg = DKDV ? vg : dog;
    const Strides4& sa = DKDV ? p.sk : p.sq;
    const Strides4& sb = DKDV ? p.sv : p.sdo;

    const int n = p.n;
    const int tiles = (int)(((int64_t)n + 15) / 16);
    const int groups = (tiles + NW - 1) / NW;
    const int chunks = p.resident ? 1 : (int)(((int64_t)n + p.chunk - 1) / p.chunk);
    const uint32_t xs = smem_addr(Xs), ys = smem_addr(Ys);

    bool staged = false;
    for (int grp = blockIdx.y; grp < groups; grp += gridDim.y) {
      const int tile = grp * NW + warp;
      const bool active = tile < tiles;  // idle warps still help stage
      BwdTile<D> w;
      if (active) {
        load_rows_a<D>(w.a, ag, sa.n, sa.d, tile * 16, n, lane);
        load_rows_a<D>(w.b, bg, sb.n, sb.d, tile * 16, n, lane);
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) w.acc0[i][e] = w.acc1[i][e] = 0.f;
        if constexpr (!DKDV) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int qi = tile * 16 + (lane >> 2) + r * 8;
            w.ls[r] = qi < n ? fmaxf(lg[qi] * kLog2e, -FLT_MAX) : 0.f;
            w.dl[r] = qi < n ? deltag[qi] : 0.f;
          }
        }
      }
      for (int c = 0; c < chunks; ++c) {
        const int c0 = c * p.chunk;
        const int cvalid = min(p.chunk, n - c0);
        const int cend = (cvalid + 15) & ~15;
        if (!p.resident || !staged) {  // CTA-uniform
          __syncthreads();  // every warp is done with the previous chunk
          stage<D, NT>(Xs, xg, sx, p.mode_a, c0, cend, n, row, p.async_staging);
          stage<D, NT>(Ys, yg, sy, p.mode_b, c0, cend, n, row, p.async_staging);
          if constexpr (DKDV) {
            for (int i = threadIdx.x; i < cend; i += NT) {
              const bool ok = i < cvalid;
              Ls[i] = ok ? lg[c0 + i] * kLog2e : 0.f;
              Dl[i] = ok ? deltag[c0 + i] : 0.f;
            }
          }
          cp_async_wait_all();  // the two tensors' copies were in flight together (and with Ls / Dl's loads)
          __syncthreads();
          staged = true;
        }
        if (active) {
          int tb = 0;
          if constexpr (kBwdSplitMask) {
            for (; tb + kBwdBlock <= cvalid; tb += kBwdBlock)  // full blocks: no mask
              bwd_block<T, D, DKDV, kBwdBlock / 16, false>(w, xs, ys, Ls, Dl, row, tb, cvalid, p.scale_log2, lane);
            for (; tb + 16 <= cvalid; tb += 16)
              bwd_block<T, D, DKDV, 1, false>(w, xs, ys, Ls, Dl, row, tb, cvalid, p.scale_log2, lane);
            if (tb < cend)  // the partial last 16 tokens
              bwd_block<T, D, DKDV, 1, true>(w, xs, ys, Ls, Dl, row, tb, cvalid, p.scale_log2, lane);
          } else {
            for (; tb + kBwdBlock <= cend; tb += kBwdBlock)
              bwd_block<T, D, DKDV, kBwdBlock / 16, true>(w, xs, ys, Ls, Dl, row, tb, cvalid, p.scale_log2, lane);
            for (; tb < cend; tb += 16)
              bwd_block<T, D, DKDV, 1, true>(w, xs, ys, Ls, Dl, row, tb, cvalid, p.scale_log2, lane);
          }
        }
      }
      if (active) {
        const int64_t out0 = bh * D * p.N + t0;
        store_rows<T, D>(w.acc0, p.scale, epi, (DKDV ? p.dk : p.dq) + out0, p.N, tile * 16, n, lane);
        if constexpr (DKDV) store_rows<T, D>(w.acc1, 1.f, epi, p.dv + out0, p.N, tile * 16, n, lane);
      }
    }
  }
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------------------
// host side

namespace {
using namespace detail;

template <typename T, int D, bool DKDV>
LaunchCache& bwd_cache() {
  static LaunchCache cache;
  return cache;
}

template <typename T, int D>
cudaError_t launch_bwd(BwdParams p, const AreaAttnFwdPlan& plan, int64_t seqs, const DeviceInfo& dev,
                       cudaStream_t stream, const AreaAttnBwdArgs& a) {
  const DType dt = std::is_same<T, __nv_bfloat16>::value ? DType::kBFloat16 : DType::kFloat16;
  const int required = area_attention_fwd_required_arch(dt);
  constexpr int threads = BwdConfig<D>::kThreads, warps = BwdConfig<D>::kWarps;
  DeltaParams dp{};
  dp.dout = static_cast<const uint16_t*>(a.dout);
  dp.out = static_cast<const uint16_t*>(a.out);
  dp.res = static_cast<const uint16_t*>(a.residual);
  dp.delta = a.delta;
  dp.sdo = a.sdout;
  dp.so = a.sout;
  dp.sr = a.sres;
  dp.N = a.tokens;
  dp.heads = (int)a.heads;
  const dim3 dgrid((unsigned)((a.tokens + 255) / 256), (unsigned)(a.batch * a.heads));
  cudaError_t err = launch_kernel(area_attention_bwd_delta_kernel<T, D>, dgrid, dim3(256), 0, stream, dp);
  if (err != cudaSuccess) return err;
  p.mode_a = staging_mode(a.q, a.sq, a.batch, a.heads, p.n);
  p.mode_b = staging_mode(a.dout, a.sdout, a.batch, a.heads, p.n);
  err = launch_split(area_attention_bwd_kernel<T, D, true>, bwd_cache<T, D, true>(), required, threads, warps,
                     plan.smem_bytes, p.n, seqs, dev, stream, p);
  if (err != cudaSuccess) return err;
  p.mode_a = staging_mode(a.k, a.sk, a.batch, a.heads, p.n);
  p.mode_b = staging_mode(a.v, a.sv, a.batch, a.heads, p.n);
  return launch_split(area_attention_bwd_kernel<T, D, false>, bwd_cache<T, D, false>(), required, threads, warps,
                      plan.smem_bytes, p.n, seqs, dev, stream, p);
}

}  // namespace

AreaAttnFwdPlan area_attention_bwd_plan(int64_t n, int64_t head_dim, const DeviceInfo& dev) {
  AreaAttnFwdPlan plan{};
  if (!area_attention_fwd_supports_head_dim(head_dim) || n < 1) return plan;
  plan.warps = head_dim == 32 ? BwdConfig<32>::kWarps : BwdConfig<64>::kWarps;
  const int64_t epi = (int64_t)plan.warps * head_dim * kEpiRow * 2;
  const int64_t per_tok = 2 * head_dim * 2 + 8;  // two staged rows of 2-byte elements + lse and Delta (fp32)
  const int64_t pad = 2 * head_dim * 2 * 8;      // the staged rows' 8-element pad
  const int64_t n16 = round_up(n, 16);
  if (per_tok * n16 + pad + epi <= dev.smem_per_block_optin) {
    plan.resident = true;
    plan.chunk_keys = (int)n16;
  } else {
    // streamed in chunks of a multiple of 64 tokens sized for two CTAs per SM, or whatever fits one CTA
    const int64_t budget = std::min<int64_t>(dev.smem_per_block_optin, dev.smem_per_sm / 2 - 1024);
    int64_t chunk = (budget - epi - pad) / per_tok / 64 * 64;
    if (chunk < 64) chunk = (dev.smem_per_block_optin - epi - pad) / per_tok / 64 * 64;
    if (chunk < 64) return plan;
    plan.resident = false;
    plan.chunk_keys = (int)std::min<int64_t>(chunk, n16);
  }
  plan.smem_row = plan.chunk_keys + 8;
  plan.smem_bytes = (int)(2 * head_dim * 2 * plan.smem_row + 8 * (int64_t)plan.chunk_keys + epi);
  plan.supported = true;
  return plan;
}

cudaError_t area_attention_bwd(const AreaAttnBwdArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  int64_t seqs = 0;
  const cudaError_t bad = check_attention_launch(a.batch, a.heads, a.tokens, a.area, a.dtype, dev, &seqs);
  if (bad != cudaSuccess || seqs == 0) return bad;
  if (a.batch * a.heads > 65535) return cudaErrorInvalidValue;  // the delta kernel's grid.y
  const int64_t n = a.tokens / a.area;
  const AreaAttnFwdPlan plan = area_attention_bwd_plan(n, a.head_dim, dev);
  if (!plan.supported) return cudaErrorNotSupported;

  BwdParams p{};
  set_area_params(p, a, plan, n);
  p.dout = static_cast<const uint16_t*>(a.dout);
  p.lse = a.lse;
  p.delta = a.delta;
  p.dq = static_cast<uint16_t*>(a.dq);
  p.dk = static_cast<uint16_t*>(a.dk);
  p.dv = static_cast<uint16_t*>(a.dv);
  p.sdo = a.sdout;
  p.scale = a.scale;
  p.scale_log2 = a.scale * kLog2e;

  const bool half = a.dtype == DType::kFloat16;
  if (a.head_dim == 32)
    return half ? launch_bwd<__half, 32>(p, plan, seqs, dev, stream, a)
                : launch_bwd<__nv_bfloat16, 32>(p, plan, seqs, dev, stream, a);
  return half ? launch_bwd<__half, 64>(p, plan, seqs, dev, stream, a)
              : launch_bwd<__nv_bfloat16, 64>(p, plan, seqs, dev, stream, a);
}

}  // namespace cuda
}  // namespace yolov12_fast
