// Decoding attention over a padded per-slot KV cache that reads only each slot's own columns.
// The matmul path reads every slot's cache up to the longest slot's length; on CPU that read is the cost
// (memory-bound), so skipping the padding saves about the padded fraction. fp32 only, like the scores HF computes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <limits>

// body(i, slot, head, length) for every (slot, kv_head) pair i, spread over the threads; length is the slot's column
// count, at most the cache width.
template <typename Body>
void for_each_slot_head(int64_t slots, int64_t heads, const torch::Tensor& lengths, int64_t width, const Body& body) {
  const int64_t* lp = lengths.data_ptr<int64_t>();
  at::parallel_for(0, slots * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i, i / heads, i % heads, std::min(lp[i / heads], width));
  });
}

// q (slots, kv_heads, group, head_dim) contiguous; keys (slots, kv_heads, width, head_dim) with unit last stride;
// lengths (slots) int64, the columns each slot attends. Returns scale * q.k for j < lengths, -inf beyond:
// (slots, kv_heads, group, width).
torch::Tensor ragged_scores(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& lengths, double scale) {
  TORCH_CHECK(q.is_contiguous() && keys.stride(3) == 1 && q.scalar_type() == torch::kFloat &&
              keys.scalar_type() == torch::kFloat && lengths.scalar_type() == torch::kLong);
  const int64_t slots = q.size(0), heads = q.size(1), group = q.size(2), dim = q.size(3), width = keys.size(2);
  auto scores = torch::empty({slots, heads, group, width}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  const int64_t k0 = keys.stride(0), k1 = keys.stride(1), k2 = keys.stride(2);
  const float s = static_cast<float>(scale), minus_inf = -std::numeric_limits<float>::infinity();
  for_each_slot_head(slots, heads, lengths, width, [&](int64_t i, int64_t slot, int64_t head, int64_t length) {
    const float* qi = qp + i * group * dim;
    const float* ki = kp + slot * k0 + head * k1;
    float* si = sp + i * group * width;
    for (int64_t j = 0; j < length; ++j) {  // each key row is read once for the whole query group
      const float* kj = ki + j * k2;
      for (int64_t g = 0; g < group; ++g) {
        const float* qg = qi + g * dim;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < dim; ++d) acc += qg[d] * kj[d];
        si[g * width + j] = acc * s;
      }
    }
    for (int64_t g = 0; g < group; ++g)
      for (int64_t j = length; j < width; ++j) si[g * width + j] = minus_inf;
  });
  return scores;
}

// probs (slots, kv_heads, group, width) contiguous, zero past lengths; values like keys. Returns probs @ values over
// each slot's own columns: (slots, kv_heads, group, head_dim).
torch::Tensor ragged_mix(const torch::Tensor& probs, const torch::Tensor& values, const torch::Tensor& lengths) {
  TORCH_CHECK(probs.is_contiguous() && values.stride(3) == 1 && probs.scalar_type() == torch::kFloat &&
              values.scalar_type() == torch::kFloat && lengths.scalar_type() == torch::kLong);
  const int64_t slots = probs.size(0), heads = probs.size(1), group = probs.size(2), width = probs.size(3);
  const int64_t dim = values.size(3);
  auto out = torch::zeros({slots, heads, group, dim}, probs.options());
  const float* pp = probs.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t v0 = values.stride(0), v1 = values.stride(1), v2 = values.stride(2);
  for_each_slot_head(slots, heads, lengths, width, [&](int64_t i, int64_t slot, int64_t head, int64_t length) {
    const float* pi = pp + i * group * width;
    const float* vi = vp + slot * v0 + head * v1;
    float* oi = op + i * group * dim;
    for (int64_t j = 0; j < length; ++j) {  // each value row is read once for the whole query group
      const float* vj = vi + j * v2;
      for (int64_t g = 0; g < group; ++g) {
        const float p = pi[g * width + j];
        float* og = oi + g * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) og[d] += p * vj[d];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_scores", &ragged_scores, "q.k over each slot's own cache columns, -inf beyond");
  m.def("ragged_mix", &ragged_mix, "probs @ values over each slot's own cache columns");
}
