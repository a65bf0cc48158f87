// racecheck on the CPU: the CUDA C++ kernels (PE, attention forward, attention backward) run through the emulator in a
// program built with -fsanitize=thread (tests/test_cuda_emu.py::test_kernels_under_thread_sanitizer). A CTA's threads
// are std::threads meeting at the CTA's barrier in __syncthreads() and at the warp's barrier in __syncwarp() / the warp
// collectives, so ThreadSanitizer reports every pair of accesses to one shared-memory (or global) location, one a
// write, from two threads that no barrier orders: what compute-sanitizer's racecheck reports on a GPU (read-after-write,
// write-after-read and write-after-write hazards), for the cases run here. The CTAs of a launch run at the same time
// (ctas_at_once), so two CTAs writing the same global element, or one reading what another writes, are reported too.
// What it cannot see: hazards between the lanes of one warp that a warp collective (mma.sync, ldmatrix, shfl)
// separates, as the emulated collectives meet at the warp's barrier; atomics (the kernels use none).
//
// Build with -DYF_EMU_RACE_CHECK (the emulator's mutex barrier: see cuda_emu.h).
// A standalone program, not a library loaded into Python: nothing but the kernels and the emulator is instrumented or
// running (no interpreter, torch or OpenMP threads whose synchronisation ThreadSanitizer cannot see). It makes its own
// inputs: random, in the views the modules pass (the interleaved qkv conv output, turbo's qk / v, channels_last).
//
// usage: race_check [pe|fwd|bwd|all] [full | random COUNT [--seed S]] [--skip-syncthreads K] [--skip-syncwarp K] [--alias-block-y] [--ctas N]
//                   [--fwd-keys 32]   (the forward's 32-key-step variant for the head_dim-32 cases)
// The options plant bugs (cuda_emu.h) in the kernels of the suite named (pe, fwd or bwd): every thread skips its K-th
// barrier, or every CTA sees blockIdx.y = 0 (CTAs meant to split the query tiles all do the same ones).
// Prints one line per case run; exit status 0, or ThreadSanitizer's (66) when it reported a race.
#ifndef YF_EMU_RACE_CHECK
#error "build the race check with -DYF_EMU_RACE_CHECK (cuda_emu.h's barrier that ThreadSanitizer reads correctly)"
#endif
#include "attention_emu.cpp"
#include "pe_emu.cpp"

#include <cstdio>
#include <random>
#include <string>

namespace {

constexpr int SM90[5] = {132, 9, 0, 232448, 233472};
constexpr int SM80[5] = {108, 8, 0, 166912, 167936};
constexpr int SM75[5] = {40, 7, 5, 65536, 65536};
constexpr int SMALL[5] = {1, 9, 0, 232448, 233472};  // one SM: no query split, a CTA runs every query group
// little shared memory: small areas stream in chunks of 64 keys (head_dim 32 on TINY, 64 on SMALLER)
constexpr int TINY[5] = {40, 7, 5, 24576, 24576};
constexpr int SMALLER[5] = {40, 7, 5, 40960, 40960};

std::mt19937 rng(1234);
// The forward's key steps for the head_dim-32 cases (--fwd-keys; 0 = the default 64).
int fwd_keys = 0;

// 16-bit values of `dtype` (0 float16, 1 bfloat16), normal random.
std::vector<uint16_t> randn16(size_t n, int dtype, float scale = 1.f) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<uint16_t> out(n);
  for (auto& x : out) {
    const float f = nd(rng);
    x = dtype == 0 ? __half_as_ushort(__float2half(f)) : __bfloat16_as_ushort(__float2bfloat16(f));
  }
  return out;
}

// q, k, v of (B, heads, D, N) as views (base element offset, strides b, h, d, n) into the buffers a module passes.
struct Qkv {
  std::vector<uint16_t> a, b;  // b: turbo's separate v
  const uint16_t *q, *k, *v;
  int64_t sq[4], sk[4], sv[4];
};

void set(int64_t (&s)[4], int64_t b, int64_t h, int64_t d, int64_t n) { s[0] = b, s[1] = h, s[2] = d, s[3] = n; }

void make_qkv(Qkv& t, const std::string& layout, int64_t B, int64_t heads, int64_t D, int64_t N, int dtype) {
  if (layout == "interleaved") {  // ultralytics qkv, NCHW: head h owns channels [3Dh, 3D(h+1))
    t.a = randn16(B * heads * 3 * D * N, dtype);
    for (auto* s : {&t.sq, &t.sk, &t.sv}) set(*s, heads * 3 * D * N, 3 * D * N, N, 1);
    t.q = t.a.data(), t.k = t.q + D * N, t.v = t.k + D * N;
  } else if (layout == "turbo") {  // qk (all q then all k per image), v its own conv output
    t.a = randn16(B * 2 * heads * D * N, dtype);
    t.b = randn16(B * heads * D * N, dtype);
    set(t.sq, 2 * heads * D * N, D * N, N, 1), set(t.sk, 2 * heads * D * N, D * N, N, 1);
    set(t.sv, heads * D * N, D * N, N, 1);
    t.q = t.a.data(), t.k = t.q + heads * D * N, t.v = t.b.data();
  } else {  // channels_last qkv: channel stride 1, token stride 3C
    const int64_t C = heads * D;
    t.a = randn16(B * 3 * C * N, dtype);
    for (auto* s : {&t.sq, &t.sk, &t.sv}) set(*s, 3 * C * N, 3 * D, 1, 3 * C);
    t.q = t.a.data(), t.k = t.q + D, t.v = t.k + D;
  }
}

int failures = 0;

// The planted bug (the options) applies to the kernels of the suite named on the command line only (a backward case
// runs the forward first: a barrier missing from the forward must not be what the backward's check reports).
int plant_syncthreads = 0, plant_syncwarp = 0;
bool plant_alias = false;
void plant(bool on) {
  yf_emu::skip_syncthreads = on ? plant_syncthreads : 0;
  yf_emu::skip_syncwarp = on ? plant_syncwarp : 0;
  yf_emu::alias_block_y = on && plant_alias;
}
struct Planted {
  explicit Planted(bool on) { plant(on); }
  ~Planted() { plant(false); }
};
void check(int rc, const char* what) {
  if (rc != 0) {
    std::printf("FAILED (cudaError %d): %s\n", rc, what);
    ++failures;
  }
}

void pe_case(int64_t B, int64_t heads, int64_t D, int64_t H, int64_t W, int k, int dtype, bool with_x) {
  const int64_t N = H * W, C = heads * D;
  std::vector<uint16_t> qkv = randn16(B * 3 * C * N, dtype), w = randn16(C * k * k, dtype, 0.2f),
                        bias = randn16(C, dtype), x = randn16(B * C * N, dtype), out(B * C * N);
  const int64_t sv[4] = {heads * 3 * D * N, 3 * D * N, N, 1}, sx[4] = {C * N, D * N, N, 1};
  std::printf("pe B%ld heads%ld D%ld %ldx%ld k%d\n", B, heads, D, H, W, k);
  Planted planted(true);
  check(yf_emu_pe_add(qkv.data() + 2 * D * N, w.data(), bias.data(), with_x ? x.data() : nullptr, out.data(), sv,
                      with_x ? sx : nullptr, k * k, k, 1, 1, B, heads, D, H, W, k, dtype),
        "pe");
  // the backward's weight gradient (its staged tile is reused for the warps' sums: two more barriers), dout = x
  std::vector<float> partial(B * yf_emu_pe_wgrad_tiles(H, W, k) * C * (k * k + 1));
  check(yf_emu_pe_wgrad(x.data(), qkv.data() + 2 * D * N, partial.data(), sx, sv, B, heads, D, H, W, k, dtype),
        "pe wgrad");
}

void attention_case(bool backward, const std::string& layout, int dtype, int64_t D, int64_t B, int64_t heads,
                    int64_t H, int64_t W, int64_t area, bool with_res, const int* dev) {
  const int64_t N = H * W, n = B * heads * D * N;
  Qkv t;
  make_qkv(t, layout, B, heads, D, N, dtype);
  std::vector<uint16_t> res = randn16(n, dtype), out(n), dout = randn16(n, dtype), dq(n), dk(n), dv(n);
  std::vector<float> lse(B * heads * N), delta(B * heads * N);
  const int64_t sc[4] = {heads * D * N, D * N, N, 1};
  const float scale = 1.f / std::sqrt((float)D);
  const void* r = with_res ? res.data() : nullptr;
  int plan[6];
  (backward ? yf_emu_attention_bwd_plan : yf_emu_attention_plan)(N / area, D, dev, plan);
  std::printf("%s %s %s D%ld B%ld heads%ld %ldx%ld area%ld%s sm%d%d %s\n", backward ? "bwd" : "fwd", layout.c_str(),
              dtype ? "bf16" : "fp16", D, B, heads, H, W, area, with_res ? " residual" : "", dev[1], dev[2],
              plan[0] ? (plan[1] ? "resident" : "streamed") : "UNSUPPORTED");
  yf_emu_set_fwd_key_block(D == 32 ? fwd_keys : 0);
  {
    Planted planted(!backward);
    check(yf_emu_attention_fwd(t.q, t.k, t.v, r, out.data(), lse.data(), t.sq, t.sk, t.sv, with_res ? sc : nullptr, B,
                               heads, D, N, area, scale, dtype, dev),
          "attention forward");
  }
  std::printf("  forward grid %u x %u CTAs of %u threads\n", yf_emu::grid_dim.x, yf_emu::grid_dim.y, yf_emu::block_dim.x);
  if (backward) {
    Planted planted(true);
    check(yf_emu_attention_bwd(t.q, t.k, t.v, dout.data(), out.data(), r, lse.data(), delta.data(), dq.data(),
                               dk.data(), dv.data(), t.sq, t.sk, t.sv, sc, sc, with_res ? sc : nullptr, B, heads, D,
                               N, area, scale, dtype, dev),
          "attention backward");
  }
  if (backward)
    std::printf("  backward (dQ) grid %u x %u CTAs of %u threads\n", yf_emu::grid_dim.x, yf_emu::grid_dim.y,
                yf_emu::block_dim.x);
}

// The cases: the plans (resident K/V; streamed in chunks, the last one partial; several query groups per CTA), the
// query split over CTAs (many SMs, one sequence) and none (few SMs), areas that cut rows, a partial last tile (n not a
// multiple of 16), batch 3, each layout, dtype and head_dim, with and without residual. The quick set runs in about
// a minute under ThreadSanitizer; `full` adds the shapes of 640 (400 tokens per area), a few minutes more.
struct AttentionCase {
  const char* layout;
  int dtype;
  int64_t D, B, heads, H, W, area;
  bool with_res;
  const int* dev;
  bool full_only;
};
constexpr AttentionCase kAttentionCases[] = {
    {"turbo", 1, 32, 2, 1, 6, 10, 4, false, SM80, false},          // areas cut rows: 15 tokens each
    {"interleaved", 1, 32, 1, 1, 13, 11, 1, false, SMALL, false},  // 143 tokens: partial tile, 2 groups, 1 CTA
    {"interleaved", 0, 32, 1, 1, 13, 11, 1, true, SM90, false},    // the query split over 2 CTAs
    {"channels_last", 0, 32, 1, 1, 13, 11, 1, false, TINY, false}, // streamed: chunks of 64, 64, 15
    {"channels_last", 0, 64, 1, 1, 9, 11, 1, true, SMALLER, false},  // head_dim 64 streamed: 64, 35
    {"turbo", 0, 64, 3, 1, 7, 7, 1, true, SM90, false},            // batch 3, 49 tokens
    {"interleaved", 0, 32, 1, 2, 20, 20, 1, true, SM90, true},     // P5 at 640: 400 tokens resident
    {"channels_last", 0, 64, 1, 1, 20, 20, 1, true, SM75, true},   // 400 tokens streamed on Turing
    {"interleaved", 0, 32, 1, 1, 21, 22, 1, false, SM75, true},    // 462 tokens: 4 chunks, the last partial
};

void attention_cases(bool backward, bool full) {
  for (const AttentionCase& c : kAttentionCases)
    if (full || !c.full_only)
      attention_case(backward, c.layout, c.dtype, c.D, c.B, c.heads, c.H, c.W, c.area, c.with_res, c.dev);
}

// `random COUNT`: COUNT cases drawn at random (seeded by --seed): PE maps and kernel sizes; attention and its backward
// over layouts, dtypes, head_dims, batch / heads 1-2, 1-4 areas of up to ~200 tokens, every device kind (cases a
// device has no plan for are drawn again). A fuzz campaign beyond the fixed cases, not run in CI.
void random_cases(int count, bool pe, bool fwd, bool bwd) {
  const int* devices[] = {SM90, SM80, SM75, SMALL, TINY, SMALLER};
  const char* layouts[] = {"interleaved", "turbo", "channels_last"};
  auto pick = [](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < count; ++i) {
    if (pe) {
      const int ks[] = {3, 5, 7};
      pe_case(pick(1, 2), pick(1, 2), pick(1, 3), pick(1, 24), pick(1, 140), ks[pick(0, 2)], pick(0, 1), pick(0, 1));
    }
    if (!fwd && !bwd) continue;
    for (;;) {
      // n tokens per area, the map H x W with W any divisor of area * n: areas cut rows where W does not divide n
      const int64_t D = pick(0, 1) ? 64 : 32, area = pick(1, 4), n = pick(1, 200), N = area * n;
      std::vector<int64_t> divisors;
      for (int64_t w = 1; w <= N; ++w)
        if (N % w == 0) divisors.push_back(w);
      const int64_t W = divisors[pick(0, (int)divisors.size() - 1)];
      const int* dev = devices[pick(0, 5)];
      const int dtype = dev[1] < 8 ? 0 : pick(0, 1);
      int plan[6];
      yf_emu_attention_bwd_plan(n, D, dev, plan);
      if (!plan[0]) continue;
      attention_case(bwd && (!fwd || pick(0, 1)), layouts[pick(0, 2)], dtype, D, pick(1, 2), pick(1, 2), N / W, W,
                     area, pick(0, 1), dev);
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string what = "all";
  bool full = false;
  int random = 0;
  yf_emu::ctas_at_once = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--skip-syncthreads" && i + 1 < argc) plant_syncthreads = std::atoi(argv[++i]);
    else if (a == "--skip-syncwarp" && i + 1 < argc) plant_syncwarp = std::atoi(argv[++i]);
    else if (a == "--alias-block-y") plant_alias = true;
    else if (a == "--ctas" && i + 1 < argc) yf_emu::ctas_at_once = std::atoi(argv[++i]);
    else if (a == "--fwd-keys" && i + 1 < argc) fwd_keys = std::atoi(argv[++i]);
    else if (a == "full") full = true;
    else if (a == "random" && i + 1 < argc) random = std::atoi(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) rng.seed(std::atoi(argv[++i]));
    else if (a == "pe" || a == "fwd" || a == "bwd" || a == "all") what = a;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (random > 0) {
    random_cases(random, what == "pe" || what == "all", what == "fwd" || what == "all", what == "bwd" || what == "all");
    return failures ? 1 : 0;
  }
  if (what == "pe" || what == "all") {
    pe_case(1, 2, 2, 20, 20, 7, 0, true);
    pe_case(2, 1, 3, 15, 20, 5, 1, false);
    pe_case(1, 1, 2, 6, 300, 7, 0, true);  // wider than one tile
    pe_case(1, 1, 1, 7, 9, 3, 0, true);
  }
  if (what == "fwd" || what == "all") attention_cases(false, full);
  if (what == "bwd" || what == "all") attention_cases(true, full);
  return failures ? 1 : 0;
}
