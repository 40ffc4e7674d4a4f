// Decoding attention over a padded per-slot KV cache that reads only each row's own columns.
// The matmul path reads every slot's cache up to the longest slot's length; on CPU that read is the cost
// (memory-bound), so skipping the padding saves about the padded fraction. Rows are the slots fed this forward (the
// others are not read at all); each row has several queries (a KV head's query heads, times the tokens fed to it),
// each query its own column count. fp32 only, like the scores HF computes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

// body(i, slot, head, lengths) for every (row, kv_head) pair i, spread over the threads: slot is the row's cache slot,
// lengths its queries' column counts (each at most the cache width), longest their maximum.
template <typename Body>
void for_each_row_head(const torch::Tensor& slots, int64_t heads, const torch::Tensor& lengths, const Body& body) {
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  const int64_t queries = lengths.size(1);
  at::parallel_for(0, slots.size(0) * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t* row_lengths = lp + (i / heads) * queries;
      body(i, sp[i / heads], i % heads, row_lengths, *std::max_element(row_lengths, row_lengths + queries));
    }
  });
}

// The longest column count any query attends, after checking the arguments (the kernels read raw pointers).
int64_t check(const torch::Tensor& q, const torch::Tensor& cache, const torch::Tensor& slots, const torch::Tensor& lengths) {
  TORCH_CHECK(q.is_contiguous() && cache.stride(3) == 1 && q.scalar_type() == torch::kFloat &&
              cache.scalar_type() == torch::kFloat && slots.scalar_type() == torch::kLong && slots.is_contiguous() &&
              lengths.scalar_type() == torch::kLong && lengths.is_contiguous() && lengths.size(0) == slots.size(0) &&
              lengths.size(1) == q.size(2) && slots.numel() > 0 && lengths.numel() > 0);
  const int64_t longest = lengths.max().item<int64_t>();
  TORCH_CHECK(longest <= cache.size(2) && slots.min().item<int64_t>() >= 0 && slots.max().item<int64_t>() < cache.size(0));
  return longest;
}

// q (rows, kv_heads, queries, head_dim) contiguous; keys (slots, kv_heads, width, head_dim) with unit last stride;
// slots (rows) the cache slot of each row; lengths (rows, queries) the columns each query attends. Returns
// scale * q.k for column j < its length, -inf beyond: (rows, kv_heads, queries, longest length).
static torch::Tensor ragged_scores(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& slots,
                                   const torch::Tensor& lengths, double scale, int64_t width) {
  const int64_t rows = q.size(0), heads = q.size(1), queries = q.size(2), dim = q.size(3);
  auto scores = torch::empty({rows, heads, queries, width}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  const int64_t k0 = keys.stride(0), k1 = keys.stride(1), k2 = keys.stride(2);
  const float s = static_cast<float>(scale), minus_inf = -std::numeric_limits<float>::infinity();
  for_each_row_head(slots, heads, lengths, [&](int64_t i, int64_t slot, int64_t head, const int64_t* length,
                                               int64_t longest) {
    const float* qi = qp + i * queries * dim;
    const float* ki = kp + slot * k0 + head * k1;
    float* si = sp + i * queries * width;
    for (int64_t j = 0; j < longest; ++j) {  // each key row is read once for all the row's queries
      const float* kj = ki + j * k2;
      for (int64_t m = 0; m < queries; ++m) {
        if (j >= length[m]) continue;
        const float* qm = qi + m * dim;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < dim; ++d) acc += qm[d] * kj[d];
        si[m * width + j] = acc * s;
      }
    }
    for (int64_t m = 0; m < queries; ++m)
      for (int64_t j = length[m]; j < width; ++j) si[m * width + j] = minus_inf;
  });
  return scores;
}

// probs (rows, kv_heads, queries, longest length) contiguous, zero past each query's length; values, slots and
// lengths as for ragged_scores. Returns probs @ values over each query's own columns: (rows, kv_heads, queries, head_dim).
static torch::Tensor ragged_mix(const torch::Tensor& probs, const torch::Tensor& values, const torch::Tensor& slots,
                                const torch::Tensor& lengths) {
  const int64_t rows = probs.size(0), heads = probs.size(1), queries = probs.size(2), width = probs.size(3);
  const int64_t dim = values.size(3);
  auto out = torch::zeros({rows, heads, queries, dim}, probs.options());
  const float* pp = probs.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t v0 = values.stride(0), v1 = values.stride(1), v2 = values.stride(2);
  for_each_row_head(slots, heads, lengths, [&](int64_t i, int64_t slot, int64_t head, const int64_t* length,
                                               int64_t longest) {
    const float* pi = pp + i * queries * width;
    const float* vi = vp + slot * v0 + head * v1;
    float* oi = op + i * queries * dim;
    for (int64_t j = 0; j < longest; ++j) {  // each value row is read once for all the row's queries
      const float* vj = vi + j * v2;
      for (int64_t m = 0; m < queries; ++m) {
        if (j >= length[m]) continue;
        const float p = pi[m * width + j];
        float* om = oi + m * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) om[d] += p * vj[d];
      }
    }
  });
  return out;
}

// softmax(scale * q.k) @ v, each query over its own first columns of its row's slot, the arguments checked once:
// (rows, kv_heads, queries, head_dim). The softmax is torch's (vectorised exp).
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& slots, const torch::Tensor& lengths, double scale) {
  const int64_t longest = check(q, keys, slots, lengths);
  TORCH_CHECK(values.sizes() == keys.sizes() && values.stride(3) == 1 && values.scalar_type() == torch::kFloat);
  return ragged_mix(ragged_scores(q, keys, slots, lengths, scale, longest).softmax(-1), values, slots, lengths);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "softmax(q.k * scale) @ v over each query's own cache columns");
}
