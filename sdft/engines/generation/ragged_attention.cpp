// Decoding attention over a padded per-slot KV cache that reads only each row's own columns, in one pass per
// (row, KV head): scores, softmax and the weighted sum of values, the scores kept in a small buffer that stays in L1.
// The matmul path reads every slot's cache up to the longest slot's length; on CPU decoding attention is bound by the
// cache read, so skipping the padding saves about the padded fraction, and doing the arithmetic in registers (8 columns'
// dot products at once, reduced together; value rows summed into register accumulators) keeps it under the read.
// Rows are the slots fed this forward (the others are not read at all); each row has several queries (a KV head's query
// heads, times the tokens fed to it), each query its own column count. Queries, scores and sums in fp32, like HF's
// eager attention; the cache in fp32, or in fp16 (`kv_cache: fp16`: half the bytes read, widened 8 at a time), or in
// bf16 for a bf16 model (its queries and output in bf16 too, the arithmetic still fp32). On a CPU with AVX-512 BF16 a
// bf16 cache is read 16 lanes wide with bf16 dot products (below), fast enough for a prompt's many queries as well.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

// 8 floats: one AVX register on x86, two NEON registers on ARM; `loose` reads them from any float address.
typedef float vec8 __attribute__((vector_size(32)));
typedef float loose8 __attribute__((vector_size(32), aligned(4)));
typedef int ivec8 __attribute__((vector_size(32)));

static inline vec8 load(const float* p) { return *reinterpret_cast<const loose8*>(p); }
// 8 narrow floats widened one at a time, where the CPU has no instruction for it
template <typename T>
static inline vec8 widen_each(const T* p) {
  vec8 out;
  for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(p[i]);
  return out;
}
// 8 fp16 widened: one instruction where the CPU has F16C
#if defined(__F16C__)
static inline vec8 load(const at::Half* p) { return (vec8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#else
static inline vec8 load(const at::Half* p) { return widen_each(p); }
#endif
// 8 bf16 widened: a bf16 is the top half of an fp32, so each is zero-extended and shifted into place
#if defined(__AVX2__)
static inline vec8 load(const at::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (vec8)_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
#else
static inline vec8 load(const at::BFloat16* p) { return widen_each(p); }
#endif
static inline void store(float* p, vec8 v) { *reinterpret_cast<loose8*>(p) = v; }
static inline vec8 splat(float x) { return vec8{x, x, x, x, x, x, x, x}; }

// The lane sums of 8 vectors as one vector: out[c] = sum of a[c]'s lanes (three rounds of pairwise shuffles and adds).
static inline vec8 lane_sums(const vec8* a) {
  vec8 pairs[4], quads[2];
  for (int i = 0; i < 4; ++i)
    pairs[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)
    quads[i] = __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(quads[0], quads[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quads[0], quads[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// exp of x <= 0, a vector V (int lanes I) at a time (Cephes' polynomial on x - n ln 2, times 2^n; relative error
// about 1e-7, like a libm's).
template <typename V, typename I>
static inline V exp_nonpositive(V x) {
  const V floor = V{} - 87.f, one = V{} + 1.f;
  x = x < floor ? floor : x;
  const V t = x * 1.44269504088896341f - 0.5f;
  I n = __builtin_convertvector(t, I);  // x log2(e) to the nearest integer: t < 0 truncated toward zero
  const V nf = __builtin_convertvector(n, V);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  V y = V{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + one;
  const I two_to_n = (n + 127) << 23;
  return y * reinterpret_cast<const V&>(two_to_n);
}

// The largest of s[0 .. n), n > 0, a vector V at a time (std::max_element compares one float at a time: on a prompt's
// queries it took longer than the scores themselves).
template <typename V>
static inline float max_of(const float* s, int64_t n) {
  constexpr int lanes = sizeof(V) / sizeof(float);
  V top = V{} + s[0];
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    V block;
    std::memcpy(&block, s + j, sizeof(V));
    top = block > top ? block : top;
  }
  float out = s[0];
  for (int i = 0; i < lanes; ++i) out = std::max(out, top[i]);
  for (; j < n; ++j) out = std::max(out, s[j]);
  return out;
}

// One (row, KV head): queries q (queries x dim), its slot's keys and values (T: float or at::Half; column j at
// k + j * stride), each query m attending its first length[m] columns (0: a padding query, out zero). DIM = dim when
// fixed at compile time (the accumulators then live in registers), else 0. `scores` is this thread's scratch.
template <int64_t DIM, typename T>
static void attend_row_head(const float* q, const T* k, const T* v, int64_t stride, const int64_t* length,
                            int64_t queries, int64_t dim_at_run, float scale, float* out, std::vector<float>& scores) {
  const int64_t dim = DIM ? DIM : dim_at_run, chunks = dim / 8;
  const int64_t longest = *std::max_element(length, length + queries);
  scores.resize(queries * longest);
  // scores: 8 columns at a time, each block of keys read from memory once for all the queries (then from L1)
  int64_t j0 = 0;
  for (; j0 + 8 <= longest; j0 += 8)
    for (int64_t m = 0; m < queries; ++m) {
      if (length[m] <= j0) continue;
      const float* qm = q + m * dim;
      vec8 acc[8] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const vec8 qc = load(qm + 8 * c);
        for (int i = 0; i < 8; ++i) acc[i] += qc * load(k + (j0 + i) * stride + 8 * c);
      }
      store(scores.data() + m * longest + j0, lane_sums(acc) * splat(scale));
    }
  for (; j0 < longest; ++j0)  // the last columns, fewer than 8
    for (int64_t m = 0; m < queries; ++m) {
      if (length[m] <= j0) continue;
      vec8 acc = {};
      for (int64_t c = 0; c < chunks; ++c) acc += load(q + m * dim + 8 * c) * load(k + j0 * stride + 8 * c);
      float sum = 0.f;
      for (int i = 0; i < 8; ++i) sum += acc[i];
      scores[m * longest + j0] = sum * scale;
    }
  // softmax of each query over its own columns, then the weighted sum of their values
  for (int64_t m = 0; m < queries; ++m) {
    float* om = out + m * dim;
    const int64_t n = length[m];
    if (n == 0) {
      std::fill(om, om + dim, 0.f);
      continue;
    }
    float* sm = scores.data() + m * longest;
    const float top = max_of<vec8>(sm, n);
    vec8 total = {};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const vec8 e = exp_nonpositive<vec8, ivec8>(load(sm + j) - splat(top));
      store(sm + j, e);
      total += e;
    }
    float sum = 0.f;
    for (int i = 0; i < 8; ++i) sum += total[i];
    if (j < n) {  // the last columns through the same vector exp
      float tail[8] = {};
      std::copy(sm + j, sm + n, tail);
      const vec8 e = exp_nonpositive<vec8, ivec8>(load(tail) - splat(top));
      for (int64_t i = 0; i < n - j; ++i) sum += sm[j + i] = e[i];
    }
    vec8 acc[DIM ? DIM / 8 : 32] = {};  // a runtime dim is at most 256 (checked)
    for (j = 0; j < n; ++j) {
      const vec8 p = splat(sm[j]);
      const T* vj = v + j * stride;
      for (int64_t c = 0; c < chunks; ++c) acc[c] += p * load(vj + 8 * c);
    }
    const vec8 inverse = splat(1.f / sum);
    for (int64_t c = 0; c < chunks; ++c) store(om + 8 * c, acc[c] * inverse);
  }
}

#if defined(__AVX512BF16__)
// A bf16 cache on a CPU with AVX-512 BF16: 16 lanes, and each key's dot products with the queries taken straight from
// bf16 pairs (vdpbf16ps: 32 products per instruction, summed in fp32), with no widening. The queries are rounded to
// bf16 (a bf16 model's rotated queries are bf16 already: exact). Values are widened without shuffles: a 32-bit lane
// holding two bf16 gives the even one shifted up and the odd one masked, so the weighted sums are kept per even and
// odd dimension and interleaved once at the end. CHUNKS = head_dim / 32 (a bf16 register's worth of dimensions).
typedef float vec16 __attribute__((vector_size(64)));
typedef float loose16 __attribute__((vector_size(64), aligned(4)));
typedef int ivec16 __attribute__((vector_size(64)));

static inline vec16 load16(const float* p) { return *reinterpret_cast<const loose16*>(p); }
static inline void store16(float* p, vec16 v) { *reinterpret_cast<loose16*>(p) = v; }
static inline __m512bh load_pairs(const at::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
// 32 fp32 values rounded to bf16 (nearest even), in order: 16 pairs of consecutive values
static inline __m512bh bf16_pairs(const float* p) { return _mm512_cvtne2ps_pbh(load16(p + 16), load16(p)); }

// Softmax numerators in place: exp(s - max) for each of s[0 .. n), n > 0, zero from n up to `end` (a multiple of 16);
// their sum.
static inline float exp_in_place(float* s, int64_t n, int64_t end) {
  const ivec16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const float top = max_of<vec16>(s, n);
  vec16 total = {};
  for (int64_t j = 0; j < end; j += 16) {
    vec16 e = j < n ? exp_nonpositive<vec16, ivec16>(load16(s + j) - top) : vec16{};
    e = lane + (int)j < (int)n ? e : vec16{};
    total += e;
    store16(s + j, e);
  }
  float sum = 0.f;
  for (int i = 0; i < 16; ++i) sum += total[i];
  return sum;
}

// The lane sums of 16 vectors as one vector: out[c] = sum of a[c]'s lanes (lane_sums' rounds, one more).
static inline vec16 lane_sums16(const vec16* a) {
  vec16 pairs[8], quads[4], octs[2];
  for (int i = 0; i < 8; ++i)
    pairs[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  for (int i = 0; i < 4; ++i)
    quads[i] = __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
               __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  for (int i = 0; i < 2; ++i)
    octs[i] = __builtin_shufflevector(quads[2 * i], quads[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
              __builtin_shufflevector(quads[2 * i], quads[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  return __builtin_shufflevector(octs[0], octs[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(octs[0], octs[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}

template <int CHUNKS>
static void attend_row_head_bf16(const float* q, const at::BFloat16* k, const at::BFloat16* v, int64_t stride,
                                 const int64_t* length, int64_t queries, float scale, float* out,
                                 std::vector<float>& scores, std::vector<__m512bh>& query_pairs) {
  constexpr int64_t dim = 32 * CHUNKS, group = 8 / CHUNKS;  // queries summed together: 16 accumulators
  const int64_t longest = *std::max_element(length, length + queries), padded = (longest + 15) / 16 * 16;
  scores.resize((queries + 1) * padded);  // one more row: zeros, the weights of a group's missing members
  query_pairs.resize(queries * CHUNKS);
  for (int64_t i = 0; i < queries * CHUNKS; ++i) query_pairs[i] = bf16_pairs(q + 32 * i);
  // scores: 16 columns at a time, each block of keys read from memory once for all the queries (then from L1); the
  // last block's columns past the longest length re-read its last key (their scores are never used)
  for (int64_t j0 = 0; j0 < longest; j0 += 16) {
    const at::BFloat16* key[16];
    for (int i = 0; i < 16; ++i) key[i] = k + std::min(j0 + i, longest - 1) * stride;
    for (int64_t j = j0 + 32; j < std::min(j0 + 48, longest); ++j)  // two blocks ahead: memory latency hidden
      for (int64_t line = 0; line < dim; line += 32) __builtin_prefetch(k + j * stride + line);
    for (int64_t m = 0; m < queries; ++m) {
      if (length[m] <= j0) continue;
      vec16 acc[16] = {};
      for (int c = 0; c < CHUNKS; ++c) {
        const __m512bh qc = query_pairs[m * CHUNKS + c];
        for (int i = 0; i < 16; ++i) acc[i] = (vec16)_mm512_dpbf16_ps((__m512)acc[i], qc, load_pairs(key[i] + 32 * c));
      }
      store16(scores.data() + m * padded + j0, lane_sums16(acc) * scale);
    }
  }
  // per `group` queries: each one's softmax over its own columns (zero up to the group's longest), then the weighted
  // sums of the values, each value row widened once for the group
  for (int64_t m0 = 0; m0 < queries; m0 += group) {
    const int64_t members = std::min(group, queries - m0);
    const int64_t reach = *std::max_element(length + m0, length + m0 + members);
    float inverse[group] = {};
    const float* weights[group];
    for (int64_t r = 0; r < group; ++r) {
      float* sm = scores.data() + (r < members ? m0 + r : queries) * padded;  // past the members: the zero row
      weights[r] = sm;
      const int64_t n = r < members ? length[m0 + r] : 0;
      if (n == 0) {
        std::fill(sm, sm + reach, 0.f);
        continue;
      }
      inverse[r] = 1.f / exp_in_place(sm, n, (reach + 15) / 16 * 16);
    }
    vec16 even[group][CHUNKS] = {}, odd[group][CHUNKS] = {};
    for (int64_t j = 0; j < reach; ++j) {
      const at::BFloat16* vj = v + j * stride;
      if (j + 32 < reach)
        for (int64_t line = 0; line < dim; line += 32) __builtin_prefetch(vj + 32 * stride + line);
      float p[group];
      for (int64_t r = 0; r < group; ++r) p[r] = weights[r][j];
      for (int c = 0; c < CHUNKS; ++c) {
        const ivec16 raw = (ivec16)_mm512_loadu_si512(vj + 32 * c);
        const vec16 low = (vec16)(raw << 16), high = (vec16)(raw & (int)0xFFFF0000);
        for (int64_t r = 0; r < group; ++r) {
          even[r][c] += p[r] * low;
          odd[r][c] += p[r] * high;
        }
      }
    }
    for (int64_t r = 0; r < members; ++r)
      for (int c = 0; c < CHUNKS; ++c) {
        const vec16 e = even[r][c] * inverse[r], o = odd[r][c] * inverse[r];
        float* om = out + (m0 + r) * dim + 32 * c;
        store16(om, __builtin_shufflevector(e, o, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
        store16(om + 16, __builtin_shufflevector(e, o, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
      }
  }
}

// The lean stepper's two pointwise steps of a bf16 model, each one pass over its rows on AVX-512 BF16. Torch runs
// them as several bf16 ops, each widening its input to fp32 and rounding its output back (SiLU, then the product with
// up; RMSNorm's square, mean, scaling and weight): measured 1.5-4x slower. Same formulas and roundings as HF's
// modules; RMSNorm's fp32 sum runs in another order, so a row may differ from HF's in its last bf16 bit.
static inline vec16 widen16(__m256i bits) {  // 16 bf16 to fp32: each zero-extended and shifted into place
  return (vec16)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
static inline vec16 widen16(const at::BFloat16* p) { return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
static inline vec16 round16(vec16 x) {  // to bf16 (nearest even) and back: what storing a bf16 tensor keeps
  return widen16((__m256i)_mm512_cvtneps_pbh((__m512)x));
}
static inline void store_bf16(at::BFloat16* p, vec16 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh((__m512)x));
}

// out = bf16(silu(gate)) * up, rounded (HF's act_fn(gate_proj(x)) * up_proj(x)), from gate_up (rows, 2 I) = [gate, up].
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.scalar_type() == torch::kBFloat16 && gate_up.stride(-1) == 1 && gate_up.size(-1) % 32 == 0);
  const auto flat = gate_up.reshape({-1, gate_up.size(-1)});
  const int64_t rows = flat.size(0), width = flat.size(1) / 2, stride = flat.stride(0);
  auto sizes = gate_up.sizes().vec();
  sizes.back() = width;
  auto out = torch::empty(sizes, gate_up.options());
  const at::BFloat16* in = flat.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t i = 0; i < width; i += 16) {
        const vec16 g = widen16(in + r * stride + i), up = widen16(in + r * stride + width + i);
        const vec16 e = exp_nonpositive<vec16, ivec16>(g < 0 ? g : -g);  // exp(-|g|): never overflows
        const vec16 silu = (g < 0 ? g * e : g) / (1.f + e);
        store_bf16(op + r * width + i, round16(silu) * up);
      }
  });
  return out;
}

// HF's RMSNorm of one bf16 row from its squares' lane sums: bf16(x * rsqrt(mean(x^2) + eps)) (in fp32) times the bf16
// weight, rounded.
static inline void normalize_row(const at::BFloat16* in, vec16 squares, const at::BFloat16* weight, int64_t dim,
                                 double eps, at::BFloat16* out) {
  float sum = 0.f;
  for (int l = 0; l < 16; ++l) sum += squares[l];
  const float inverse = 1.f / std::sqrt(sum / static_cast<float>(dim) + static_cast<float>(eps));
  for (int64_t i = 0; i < dim; i += 16) store_bf16(out + i, widen16(weight + i) * round16(widen16(in + i) * inverse));
}

static void check_norm(const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && weight.scalar_type() == torch::kBFloat16 && x.stride(-1) == 1 &&
              weight.is_contiguous() && weight.numel() == x.size(-1) && x.size(-1) % 16 == 0);
}

// HF's RMSNorm of bf16 rows.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_norm(x, weight);
  const int64_t dim = x.size(-1);
  const auto flat = x.reshape({-1, dim});
  const int64_t rows = flat.size(0), stride = flat.stride(0);
  auto out = torch::empty(x.sizes(), x.options());
  const at::BFloat16* in = flat.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = weight.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      vec16 squares{};
      for (int64_t i = 0; i < dim; i += 16) {
        const vec16 v = widen16(in + r * stride + i);
        squares += v * v;
      }
      normalize_row(in + r * stride, squares, wp, dim, eps, op + r * dim);
    }
  });
  return out;
}

// A residual connection and the next RMSNorm in one pass over the rows (two ops over the activations before): x +=
// residual, each sum rounded to bf16 as torch's bf16 add rounds it, then HF's RMSNorm of the sums. x (a linear's
// fresh output) and residual contiguous, the same shape; -> the norm's output.
torch::Tensor add_rms_norm(torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight, double eps) {
  check_norm(x, weight);
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous() && residual.scalar_type() == torch::kBFloat16 &&
              residual.sizes() == x.sizes());
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  auto out = torch::empty(x.sizes(), x.options());
  at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const at::BFloat16* rp = residual.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = weight.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      vec16 squares{};
      for (int64_t i = r * dim; i < (r + 1) * dim; i += 16) {
        const vec16 v = round16(widen16(xp + i) + widen16(rp + i));
        store_bf16(xp + i, v);
        squares += v * v;
      }
      normalize_row(xp + r * dim, squares, wp, dim, eps, op + r * dim);
    }
  });
  return out;
}

// Each row's argmax over bf16 logits (rows, vocab), the first index among tied maxima as torch's argmax: 16 lanes
// keep their own running maximum and its first index (a later column replaces it only when strictly greater), then
// the lanes' best is the greatest value at the smallest index. Rows split over threads. torch's bf16 max over the last
// dim runs one scalar loop on one thread: ~2.7 ms of a decoding step's 96 x 49152 logits, while the other thread waits.
torch::Tensor argmax_rows(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == torch::kBFloat16 && logits.stride(1) == 1 &&
              logits.size(1) > 0);
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  auto out = torch::empty({rows}, logits.options().dtype(torch::kLong));
  const at::BFloat16* in = logits.data_ptr<at::BFloat16>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int64_t r = begin; r < end; ++r) {
      const at::BFloat16* row = in + r * stride;
      const int64_t whole = vocab / 16 * 16;
      float top = static_cast<float>(row[0]);
      int64_t index = 0;
      if (whole > 0) {
        __m512 best = (__m512)widen16(row);
        __m512i where = lanes;
        for (int64_t i = 16; i < whole; i += 16) {
          const __m512 v = (__m512)widen16(row + i);
          const __mmask16 greater = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
          best = _mm512_mask_mov_ps(best, greater, v);
          where = _mm512_mask_mov_epi32(where, greater, _mm512_add_epi32(lanes, _mm512_set1_epi32((int)i)));
        }
        top = _mm512_reduce_max_ps(best);
        const __mmask16 at_top = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
        index = at_top ? _mm512_mask_reduce_min_epi32(at_top, where) : 0;
      }
      for (int64_t i = std::max<int64_t>(whole, 1); i < vocab; ++i) {  // the columns past the last 16
        const float v = static_cast<float>(row[i]);
        if (v > top) top = v, index = i;
      }
      op[r] = index;
    }
  });
  return out;
}

// Many queries per (row, KV head), a prompt's prefilled through the kernel: attention as two small matrix products
// on vdpbf16ps. The row's keys are laid out once with 16 keys' same bf16 pair side by side, so a tile of 6 queries
// times 64 keys accumulates in 24 registers, each instruction taking one query pair broadcast against 16 keys (the
// per-query loop above spends as many instructions on each score's lane sum as on its dot products). The values are
// laid out once as pairs of consecutive keys, so the weighted sums go the same way: one probability pair broadcast
// against 16 dimensions. As HF's eager attention computes it: scores and softmax in fp32, the probabilities rounded to
// bf16 and multiplied with the bf16 values, summed in fp32 (the loop above keeps the probabilities in fp32). The
// queries go QUERY_TILE at a time, so their scores stay in L2 however long the prompt.
constexpr int64_t SCORE_TILE = 6, QUERY_TILE = 48;  // queries per register tile; per scores tile (a multiple of 6)
// from how many queries per (row, KV head) the tiled path runs (a decoding step has a KV head's query heads, a verify
// also each draft token's: fewer)
constexpr int64_t TILED_QUERIES = 32;

struct TiledScratch {
  std::vector<uint32_t> keys, values, query_pairs;  // bf16 pairs: keys block-transposed, values by key pairs, queries
  std::vector<float> scores;
  std::vector<uint16_t> probabilities;  // bf16, a query tile's, each row `padded` wide
};

// scores[r][16 b + i] = scale * q_r . k_(16 b + i), for the tile's 6 queries and NB blocks of 16 keys
template <int NB, int PAIRS>
static inline void score_tile(const uint32_t* query_pairs, const uint32_t* keys, float* scores, int64_t padded, float scale) {
  __m512 acc[SCORE_TILE][NB];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  for (int p = 0; p < PAIRS; ++p) {
    __m512bh key[NB];
    for (int b = 0; b < NB; ++b) key[b] = (__m512bh)_mm512_loadu_si512(keys + (b * PAIRS + p) * 16);
    for (int r = 0; r < SCORE_TILE; ++r) {
      const __m512bh query = (__m512bh)_mm512_set1_epi32(static_cast<int>(query_pairs[r * PAIRS + p]));
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], key[b], query);
    }
  }
  for (int r = 0; r < SCORE_TILE; ++r)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(scores + r * padded + 16 * b, _mm512_mul_ps(acc[r][b], _mm512_set1_ps(scale)));
}

// out[r] = sum over key pairs jp < pairs of the probability pair (r, jp) . the value pair jp, for R queries
template <int CHUNKS, int R>
static inline void weigh_tile(const uint32_t* probabilities, int64_t padded_pairs, const uint32_t* values, int64_t pairs,
                              int64_t members, float* out) {
  constexpr int64_t dim = 32 * CHUNKS, vectors = dim / 16;
  __m512 acc[R][vectors];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  for (int64_t jp = 0; jp < pairs; ++jp) {
    __m512bh value[vectors];
    for (int c = 0; c < vectors; ++c) value[c] = (__m512bh)_mm512_loadu_si512(values + jp * dim + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int>(probabilities[r * padded_pairs + jp]));
      for (int c = 0; c < vectors; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], value[c], p);
    }
  }
  for (int r = 0; r < members; ++r)
    for (int c = 0; c < vectors; ++c) _mm512_storeu_ps(out + r * dim + 16 * c, acc[r][c]);
}

template <int CHUNKS>
static void attend_row_head_tiled(const float* q, const at::BFloat16* k, const at::BFloat16* v, int64_t stride,
                                  const int64_t* length, int64_t queries, float scale, float* out, TiledScratch& s) {
  constexpr int PAIRS = 16 * CHUNKS;
  constexpr int64_t dim = 32 * CHUNKS, weigh_rows = CHUNKS == 2 ? 6 : 3;  // 24 accumulators either way
  const int64_t longest = *std::max_element(length, length + queries), blocks = (longest + 15) / 16, padded = blocks * 16;
  if (longest == 0) {
    std::fill(out, out + queries * dim, 0.f);
    return;
  }
  // keys: block b, pair p -> the pair p of keys 16 b .. 16 b + 15 (past the longest: the last key again, never used)
  s.keys.resize(blocks * PAIRS * 16);
  const uint32_t* key_pairs = reinterpret_cast<const uint32_t*>(k);
  for (int64_t b = 0; b < blocks; ++b)
    for (int i = 0; i < 16; ++i) {
      const uint32_t* key = key_pairs + std::min(16 * b + i, longest - 1) * (stride / 2);
      for (int p = 0; p < PAIRS; ++p) s.keys[(b * PAIRS + p) * 16 + i] = key[p];
    }
  // values: key pair jp, dimension d -> (v_2jp[d], v_2jp+1[d]); an odd longest's last pair ends with a zero value
  const __m512i first_half = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                              37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i second_half = _mm512_add_epi16(first_half, _mm512_set1_epi16(16));
  const int64_t value_pairs = (longest + 1) / 2;
  s.values.resize(value_pairs * dim);
  for (int64_t jp = 0; jp < value_pairs; ++jp)
    for (int c = 0; c < CHUNKS; ++c) {
      const __m512i even = _mm512_loadu_si512(v + 2 * jp * stride + 32 * c);
      const __m512i odd = 2 * jp + 1 < longest ? _mm512_loadu_si512(v + (2 * jp + 1) * stride + 32 * c) : _mm512_setzero_si512();
      _mm512_storeu_si512(s.values.data() + jp * dim + 32 * c, _mm512_permutex2var_epi16(even, first_half, odd));
      _mm512_storeu_si512(s.values.data() + jp * dim + 32 * c + 16, _mm512_permutex2var_epi16(even, second_half, odd));
    }
  const int64_t tiles = (queries + SCORE_TILE - 1) / SCORE_TILE * SCORE_TILE;  // queries padded with zero queries
  s.query_pairs.assign(tiles * PAIRS, 0);
  for (int64_t i = 0; i < queries * CHUNKS; ++i) _mm512_storeu_si512(s.query_pairs.data() + 16 * i, (__m512i)bf16_pairs(q + 32 * i));
  s.scores.resize(QUERY_TILE * padded);
  s.probabilities.resize(QUERY_TILE * padded);
  const uint32_t* probabilities = reinterpret_cast<const uint32_t*>(s.probabilities.data());
  for (int64_t t0 = 0; t0 < queries; t0 += QUERY_TILE) {
    const int64_t members = std::min(QUERY_TILE, queries - t0);
    for (int64_t m0 = 0; m0 < members; m0 += SCORE_TILE) {  // scores up to the longest of each 6 queries
      const int64_t* l = length + t0 + m0;
      const int64_t reach = *std::max_element(l, l + std::min(SCORE_TILE, members - m0));
      const uint32_t* qp = s.query_pairs.data() + (t0 + m0) * PAIRS;
      float* sp = s.scores.data() + m0 * padded;
      int64_t b = 0;
      for (; b + 4 <= (reach + 15) / 16; b += 4) score_tile<4, PAIRS>(qp, s.keys.data() + b * PAIRS * 16, sp + 16 * b, padded, scale);
      switch ((reach + 15) / 16 - b) {
        case 3: score_tile<3, PAIRS>(qp, s.keys.data() + b * PAIRS * 16, sp + 16 * b, padded, scale); break;
        case 2: score_tile<2, PAIRS>(qp, s.keys.data() + b * PAIRS * 16, sp + 16 * b, padded, scale); break;
        case 1: score_tile<1, PAIRS>(qp, s.keys.data() + b * PAIRS * 16, sp + 16 * b, padded, scale); break;
      }
    }
    for (int64_t r = 0; r < members; ++r) {  // each query's probabilities over its own columns, zero past them
      float* sm = s.scores.data() + r * padded;
      at::BFloat16* pm = reinterpret_cast<at::BFloat16*>(s.probabilities.data() + r * padded);
      const int64_t n = length[t0 + r];
      if (n == 0) {
        std::fill(s.probabilities.data() + r * padded, s.probabilities.data() + (r + 1) * padded, uint16_t{0});
        continue;
      }
      const float inverse = 1.f / exp_in_place(sm, n, padded);
      for (int64_t j = 0; j < padded; j += 16) store_bf16(pm + j, load16(sm + j) * inverse);
    }
    for (int64_t m0 = 0; m0 < members; m0 += weigh_rows) {
      const int64_t rows = std::min(weigh_rows, members - m0), *l = length + t0 + m0;
      weigh_tile<CHUNKS, weigh_rows>(probabilities + m0 * padded / 2, padded / 2, s.values.data(),
                                     (*std::max_element(l, l + rows) + 1) / 2, rows, out + (t0 + m0) * dim);
    }
  }
}
#endif

// Every (row, KV head) pair, spread over the threads, each with its own head_dim instantiation.
template <typename T>
static void run(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                const torch::Tensor& slots, const torch::Tensor& lengths, double scale, torch::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1), queries = q.size(2), dim = q.size(3);
  const float* qp = q.data_ptr<float>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t s0 = keys.stride(0), s1 = keys.stride(1), s2 = keys.stride(2);
  const float s = static_cast<float>(scale);
  // The (row, KV head) items split among the threads by the columns their queries attend, not by their count: rows'
  // lengths differ (slots fill longest prompt first), and an even split by count left one thread reading most of the
  // cache; a prompt prefilled through the kernel has as many queries as tokens.
  const int64_t items = rows * heads, parts = std::min<int64_t>(at::get_num_threads(), items);
  std::vector<int64_t> read(items + 1, 0);  // columns attended by items before i (+1 each, so every item counts)
  for (int64_t i = 0; i < items; ++i) {
    const int64_t* length = lp + (i / heads) * queries;
    read[i + 1] = read[i] + std::accumulate(length, length + queries, int64_t{1});
  }
  std::vector<int64_t> first(parts + 1);  // part p: items first[p] .. first[p + 1] - 1
  for (int64_t p = 0; p <= parts; ++p)
    first[p] = std::lower_bound(read.begin(), read.end(), read[items] * p / parts) - read.begin();
  at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    // each thread's scratch kept from call to call: allocated afresh, its pages were faulted in (and zeroed by the
    // kernel) on every call, ~10% of a prompt's attention
    static thread_local std::vector<float> scores;
#if defined(__AVX512BF16__)
    static thread_local std::vector<__m512bh> query_pairs;
    static thread_local TiledScratch tiled;
#endif
    for (int64_t i = first[part_begin]; i < first[part_end]; ++i) {
      const int64_t offset = sp[i / heads] * s0 + (i % heads) * s1, at = i * queries * dim;
      const int64_t* length = lp + (i / heads) * queries;
#if defined(__AVX512BF16__)
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        if ((dim == 64 || dim == 128) && queries >= TILED_QUERIES && s2 % 2 == 0) {
          if (dim == 64)
            attend_row_head_tiled<2>(qp + at, kp + offset, vp + offset, s2, length, queries, s, op + at, tiled);
          else
            attend_row_head_tiled<4>(qp + at, kp + offset, vp + offset, s2, length, queries, s, op + at, tiled);
          continue;
        }
        if (dim == 64 || dim == 128) {
          if (dim == 64)
            attend_row_head_bf16<2>(qp + at, kp + offset, vp + offset, s2, length, queries, s, op + at, scores, query_pairs);
          else
            attend_row_head_bf16<4>(qp + at, kp + offset, vp + offset, s2, length, queries, s, op + at, scores, query_pairs);
          continue;
        }
      }
#endif
      if (dim == 64)
        attend_row_head<64>(qp + at, kp + offset, vp + offset, s2, length, queries, dim, s, op + at, scores);
      else if (dim == 128)
        attend_row_head<128>(qp + at, kp + offset, vp + offset, s2, length, queries, dim, s, op + at, scores);
      else
        attend_row_head<0>(qp + at, kp + offset, vp + offset, s2, length, queries, dim, s, op + at, scores);
    }
  });
}

static void check_cache(const torch::Tensor& keys, const torch::Tensor& values) {
  const auto cache_type = keys.scalar_type();
  TORCH_CHECK((cache_type == torch::kFloat || cache_type == torch::kHalf || cache_type == torch::kBFloat16) &&
              values.scalar_type() == cache_type &&
              keys.sizes() == values.sizes() && keys.strides() == values.strides() && keys.stride(3) == 1);
  TORCH_CHECK(keys.size(3) % 8 == 0 && keys.size(3) <= 256, "head_dim must be a multiple of 8, at most 256");
}

static void attend_rows(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                        const torch::Tensor& slots, const torch::Tensor& lengths, double scale, torch::Tensor& out) {
  TORCH_CHECK(lengths.min().item<int64_t>() >= 0 && lengths.max().item<int64_t>() <= keys.size(2) &&
              slots.min().item<int64_t>() >= 0 && slots.max().item<int64_t>() < keys.size(0));
  if (keys.scalar_type() == torch::kHalf)
    run<at::Half>(q, keys, values, slots, lengths, scale, out);
  else if (keys.scalar_type() == torch::kBFloat16)
    run<at::BFloat16>(q, keys, values, slots, lengths, scale, out);
  else
    run<float>(q, keys, values, slots, lengths, scale, out);
}

// q (rows, kv_heads, queries, head_dim) contiguous; keys, values (slots, kv_heads, width, head_dim), unit last stride,
// the same strides; slots (rows) the cache slot of each row; lengths (rows, queries) the columns each query attends.
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& slots, const torch::Tensor& lengths, double scale) {
  check_cache(keys, values);
  TORCH_CHECK(q.is_contiguous() && q.scalar_type() == torch::kFloat &&
              slots.scalar_type() == torch::kLong && slots.is_contiguous() &&
              lengths.scalar_type() == torch::kLong && lengths.is_contiguous() && lengths.size(0) == slots.size(0) &&
              q.size(0) == slots.size(0) && lengths.size(1) == q.size(2) && q.size(1) == keys.size(1) &&
              q.size(3) == keys.size(3) && slots.numel() > 0 && lengths.numel() > 0);
  auto out = torch::empty_like(q);
  attend_rows(q, keys, values, slots, lengths, scale, out);
  return out;
}

// x * cos + rotate_half(x) * sin over one head, rounded as torch rounds it in the model's dtype Q: each product, then
// the sum, each rounded to Q (no FMA; for fp32 the roundings are no-ops).
template <typename Q>
__attribute__((optimize("fp-contract=off")))
static void rotate(const Q* x, const Q* cos, const Q* sin, int64_t dim, float* out) {
  const int64_t half = dim / 2;
  auto in = [](Q value) { return static_cast<float>(value); };
  auto round = [](float value) { return static_cast<float>(static_cast<Q>(value)); };
  for (int64_t i = 0; i < half; ++i) out[i] = round(round(in(x[i]) * in(cos[i])) + round(-in(x[i + half]) * in(sin[i])));
  for (int64_t i = half; i < dim; ++i) out[i] = round(round(in(x[i]) * in(cos[i])) + round(in(x[i - half]) * in(sin[i])));
}

// decode_layer's work once its arguments are checked, for a projection in Q and a cache in T: RoPE and the cache
// writes of the fed tokens, the rotated queries laid out per row (fp32, as attend_rows takes them), attention, and the
// result gathered back in token order, in Q.
template <typename Q, typename T>
static torch::Tensor layer(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                           torch::Tensor& keys, torch::Tensor& values, const int64_t* sp, const int64_t* cp,
                           const int64_t* rp, const int64_t* op, const torch::Tensor& slots,
                           const torch::Tensor& lengths, int64_t heads, int64_t width, double scale) {
  const int64_t tokens = qkv.size(0), kv_heads = keys.size(1), dim = keys.size(3), group = heads / kv_heads;
  const int64_t rows = slots.size(0), s0 = keys.stride(0), s1 = keys.stride(1), s2 = keys.stride(2);
  auto q = torch::zeros({rows, kv_heads, group * width, dim}, qkv.options().dtype(torch::kFloat));
  float* qp = q.data_ptr<float>();
  at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rotated(dim);
    for (int64_t t = begin; t < end; ++t) {
      const Q* x = qkv.data_ptr<Q>() + t * qkv.size(1);
      const Q* c = cos.data_ptr<Q>() + t * dim;
      const Q* s = sin.data_ptr<Q>() + t * dim;
      for (int64_t h = 0; h < heads; ++h)  // query head h is query g of KV head h / group
        rotate(x + h * dim, c, s, dim, qp + ((rp[t] * kv_heads + h / group) * group * width + (h % group) * width + op[t]) * dim);
      for (int64_t h = 0; h < kv_heads; ++h) {
        rotate(x + (heads + h) * dim, c, s, dim, rotated.data());
        const Q* v = x + (heads + kv_heads + h) * dim;
        const int64_t at = sp[t] * s0 + h * s1 + cp[t] * s2;
        T* k_out = keys.data_ptr<T>() + at;
        T* v_out = values.data_ptr<T>() + at;
        for (int64_t i = 0; i < dim; ++i)
          k_out[i] = static_cast<T>(rotated[i]), v_out[i] = static_cast<T>(static_cast<float>(v[i]));
      }
    }
  });
  auto attended = torch::empty_like(q);
  attend_rows(q, keys, values, slots, lengths, scale, attended);
  auto out = torch::empty({tokens, heads * dim}, qkv.options());
  const float* ap = attended.data_ptr<float>();
  Q* outp = out.data_ptr<Q>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const float* from = ap + ((rp[t] * kv_heads + h / group) * group * width + (h % group) * width + op[t]) * dim;
      std::transform(from, from + dim, outp + (t * heads + h) * dim, [](float value) { return static_cast<Q>(value); });
    }
  return out;
}

// One decoding layer's attention from its fused Q/K/V projection, for fed tokens packed one after another: RoPE on
// queries and keys, keys and values written to each token's cache slot and column, the queries laid out per row (a KV
// head's query heads folded into the query axis, as decode_attention takes them), attention, and the result back in
// token order. What the stepper otherwise does in a dozen small torch ops per layer.
// qkv (tokens, (heads + 2 kv_heads) head_dim) in fp32 (cache fp32 or fp16) or bf16 (cache bf16); cos, sin (tokens,
// head_dim) in qkv's dtype; slot, column, row, offset (tokens): the token's cache slot and column, its row among the
// attended `slots` and its place among its row's tokens; lengths (rows, group width) as decode_attention's.
// -> (tokens, heads head_dim) in qkv's dtype
torch::Tensor decode_layer(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                           torch::Tensor& keys, torch::Tensor& values, const torch::Tensor& slot,
                           const torch::Tensor& column, const torch::Tensor& row, const torch::Tensor& offset,
                           const torch::Tensor& slots, const torch::Tensor& lengths, int64_t heads, double scale) {
  check_cache(keys, values);
  const int64_t tokens = qkv.size(0), kv_heads = keys.size(1), dim = keys.size(3), group = heads / kv_heads;
  const int64_t rows = slots.size(0), width = lengths.size(1) / group;
  const auto dtype = qkv.scalar_type(), cache_type = keys.scalar_type();
  for (const auto* index : {&slot, &column, &row, &offset})
    TORCH_CHECK(index->scalar_type() == torch::kLong && index->is_contiguous() && index->numel() == tokens);
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(1) == (heads + 2 * kv_heads) * dim &&
              cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == dtype &&
              sin.scalar_type() == dtype && cos.size(0) == tokens && sin.size(0) == tokens &&
              cos.size(1) == dim && sin.size(1) == dim && heads % kv_heads == 0 &&
              slots.scalar_type() == torch::kLong && slots.is_contiguous() && lengths.scalar_type() == torch::kLong &&
              lengths.is_contiguous() && lengths.size(0) == rows && lengths.size(1) == group * width);
  TORCH_CHECK((dtype == torch::kFloat && cache_type != torch::kBFloat16) ||
                  (dtype == torch::kBFloat16 && cache_type == torch::kBFloat16),
              "decode_layer takes an fp32 projection (fp32 or fp16 cache) or a bf16 one (bf16 cache)");
  const int64_t* sp = slot.data_ptr<int64_t>();
  const int64_t* cp = column.data_ptr<int64_t>();
  const int64_t* rp = row.data_ptr<int64_t>();
  const int64_t* op = offset.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < keys.size(0) && cp[t] >= 0 && cp[t] < keys.size(2) && rp[t] >= 0 &&
                rp[t] < rows && op[t] >= 0 && op[t] < width);
  if (dtype == torch::kBFloat16)
    return layer<at::BFloat16, at::BFloat16>(qkv, cos, sin, keys, values, sp, cp, rp, op, slots, lengths, heads, width, scale);
  if (cache_type == torch::kHalf)
    return layer<float, at::Half>(qkv, cos, sin, keys, values, sp, cp, rp, op, slots, lengths, heads, width, scale);
  return layer<float, float>(qkv, cos, sin, keys, values, sp, cp, rp, op, slots, lengths, heads, width, scale);
}

// Whether a bf16 cache is read through AVX-512 BF16 (head_dim 64 or 128): fast enough to serve prefill's many queries.
bool reads_bf16_pairs() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "softmax(q.k * scale) @ v over each query's own cache columns");
  m.def("decode_layer", &decode_layer, "RoPE, cache writes and decode_attention of one layer's fed tokens");
  m.def("reads_bf16_pairs", &reads_bf16_pairs, "whether a bf16 cache is read through AVX-512 BF16");
#if defined(__AVX512BF16__)
  m.def("silu_mul", &silu_mul, "bf16(silu(gate)) * up of a bf16 [gate, up] projection");
  m.def("rms_norm", &rms_norm, "HF's RMSNorm of bf16 rows");
  m.def("add_rms_norm", &add_rms_norm, "x += residual (bf16), then HF's RMSNorm of x");
  m.def("argmax_rows", &argmax_rows, "each row's argmax (first of ties) over bf16 logits");
#endif
}
