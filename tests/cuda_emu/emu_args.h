// What the emulator harnesses (pe_emu.cpp, attention_emu.cpp) share: turning the C entry points' plain arrays into
// the launchers' argument structs.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace yf_emu_args {

namespace kc = yolov12_fast::cuda;

// Element strides (b, h, d, n) from an array of 4; all zero for nullptr (an absent optional tensor).
inline kc::Strides4 strides(const int64_t* s) { return s ? kc::Strides4{s[0], s[1], s[2], s[3]} : kc::Strides4{}; }

// The device the launcher answers as: sm_count, cc_major, cc_minor, smem_per_block_optin, smem_per_sm.
inline kc::DeviceInfo device(const int* d) { return kc::DeviceInfo{d[0], d[1], d[2], d[3], d[4]}; }

// The fields both attention launchers' arguments share.
template <typename Args>
void set_qkv(Args& a, const void* q, const void* k, const void* v, const int64_t* sq, const int64_t* sk,
             const int64_t* sv, int64_t batch, int64_t heads, int64_t head_dim, int64_t tokens, int64_t area,
             float scale, int dtype) {
  a.q = q;
  a.k = k;
  a.v = v;
  a.sq = strides(sq);
  a.sk = strides(sk);
  a.sv = strides(sv);
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.tokens = tokens;
  a.area = area;
  a.scale = scale;
  a.dtype = static_cast<kc::DType>(dtype);
}

// The fields both PE launchers' arguments share (kc::PePlane).
inline void set_pe_plane(kc::PePlane& a, const void* v, const int64_t* sv, int64_t batch, int64_t heads,
                         int64_t head_dim, int64_t H, int64_t W, int ksize, int dtype) {
  a.v = v;
  a.sv = strides(sv);
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.H = H;
  a.W = W;
  a.ksize = ksize;
  a.dtype = static_cast<kc::DType>(dtype);
}

// A launch plan as supported, resident, warps, chunk_keys, smem_row, smem_bytes -> out[0..6).
inline void plan_out(const kc::AreaAttnFwdPlan& p, int* out) {
  const int vals[6] = {p.supported, p.resident, p.warps, p.chunk_keys, p.smem_row, p.smem_bytes};
  for (int i = 0; i < 6; ++i) out[i] = vals[i];
}

}  // namespace yf_emu_args
