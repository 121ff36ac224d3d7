"""C helpers shared by the DNC step kernels (``_native_dnc_src``): 32-byte vectors through the GCC/Clang vector
extensions (AVX on x86-64; the compiler splits them into halves on narrower targets), no intrinsics. Built with
GCC 12 here; checked once by hand with Clang (``zig cc``): the kernel tests pass on x86-64 and the source
compiles for aarch64.
``PRELUDE`` holds the type-specific parts (lane reductions, the float32 ``exp``), ``HELPERS`` the row operations,
written once with ``@T``/``@S`` placeholders like the kernels."""

PRELUDE = r"""
/* 32-byte vectors (GCC/Clang vector extensions; split into halves where the target is narrower) */
typedef float vec_f32 __attribute__((vector_size(32)));
typedef double vec_f64 __attribute__((vector_size(32)));
typedef int32_t ivec_f32 __attribute__((vector_size(32)));
typedef int64_t ivec_f64 __attribute__((vector_size(32)));
#define SHUF __builtin_shufflevector

/* lane i of the result: the sum of the lanes of a[i] (8 vectors of 8 floats) */
static inline vec_f32 hsums_f32(const vec_f32* a) {
  vec_f32 s[4], t[2];
  for (int i = 0; i < 4; ++i)
    s[i] = SHUF(a[2 * i], a[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14) + SHUF(a[2 * i], a[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  for (int i = 0; i < 2; ++i)
    t[i] = SHUF(s[2 * i], s[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14) + SHUF(s[2 * i], s[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  return SHUF(t[0], t[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(t[0], t[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* the same for 4 vectors of 4 doubles */
static inline vec_f64 hsums_f64(const vec_f64* a) {
  const vec_f64 s0 = SHUF(a[0], a[1], 0, 4, 2, 6) + SHUF(a[0], a[1], 1, 5, 3, 7);
  const vec_f64 s1 = SHUF(a[2], a[3], 0, 4, 2, 6) + SHUF(a[2], a[3], 1, 5, 3, 7);
  return SHUF(s0, s1, 0, 1, 4, 5) + SHUF(s0, s1, 2, 3, 6, 7);
}

/* x[i] = exp(x[i]) for x <= 0 (softmax inputs after subtracting the maximum). float: Cephes' expf polynomial on
   8 lanes (range reduction by n ln 2, |error| about 1 ulp; exp(x) < 2^-125 flushed to 0); double: libm's exp */
static void exp_nonpositive_f32(int64_t n, float* restrict x) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    vec_f32 v; memcpy(&v, x + i, sizeof v);
    const ivec_f32 tiny = v < -87.0f;
    v = (vec_f32)((ivec_f32)v & ~tiny);
    const ivec_f32 k = __builtin_convertvector(v * 1.44269504088896341f - 0.5f, ivec_f32);  /* round(v / ln 2) */
    const vec_f32 kf = __builtin_convertvector(k, vec_f32);
    const vec_f32 r = (v - kf * 0.693359375f) + kf * 2.12194440e-4f;  /* v - k ln 2 in two parts */
    vec_f32 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f; p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f; p = p * r * r + r + 1.0f;
    v = (vec_f32)((ivec_f32)(p * (vec_f32)((k + 127) << 23)) & ~tiny);
    memcpy(x + i, &v, sizeof v);
  }
  for (; i < n; ++i) x[i] = expf(x[i]);
}

static void exp_nonpositive_f64(int64_t n, double* restrict x) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp(x[i]);
}
"""

HELPERS = r"""
/* rows are walked in chunks of VL elements with a scalar tail, so any W works */
enum { VL_@S = 32 / sizeof(@T) };
static inline vec_@S ld_@S(const @T* p) { vec_@S v; memcpy(&v, p, sizeof v); return v; }
static inline void st_@S(@T* p, vec_@S v) { memcpy(p, &v, sizeof v); }

/* the sum of the lanes of v */
static inline @T hsum_@S(vec_@S v) { @T s = 0; for (int i = 0; i < VL_@S; ++i) s += v[i]; return s; }

/* max_n x[n] (NaNs skipped, -inf for none) */
static inline @T max_@S(int64_t N, const @T* restrict x) {
  vec_@S m = (vec_@S){0} - INFINITY; @T mx = -INFINITY; int64_t n = 0;
  for (; n + VL_@S <= N; n += VL_@S) {
    const vec_@S v = ld_@S(x + n); const ivec_@S gt = v > m;
    m = (vec_@S)(((ivec_@S)v & gt) | ((ivec_@S)m & ~gt));
  }
  for (int i = 0; i < VL_@S; ++i) mx = m[i] > mx ? m[i] : mx;
  for (; n < N; ++n) mx = x[n] > mx ? x[n] : mx;
  return mx;
}

/* a . b over W elements */
static inline @T dot_@S(int64_t W, const @T* restrict a, const @T* restrict b) {
  vec_@S acc = {0}; int64_t j = 0;
  for (; j + VL_@S <= W; j += VL_@S) acc += ld_@S(a + j) * ld_@S(b + j);
  @T s = hsum_@S(acc);
  for (; j < W; ++j) s += a[j] * b[j];
  return s;
}

/* out[n] = k . M[n] (k NULL: M[n] . M[n]) for the N rows of M [N, W]: VL rows at a time into one vector of sums */
static void row_dots_@S(int64_t N, int64_t W, const @T* restrict M, const @T* restrict k, @T* restrict out) {
  int64_t n = 0;
  for (; n + VL_@S <= N; n += VL_@S) {
    vec_@S acc[VL_@S], tail = {0}; int64_t j = 0;
    for (int i = 0; i < VL_@S; ++i) acc[i] = (vec_@S){0};
    for (; j + VL_@S <= W; j += VL_@S)
      for (int i = 0; i < VL_@S; ++i) {
        const vec_@S x = ld_@S(M + (n + i) * W + j);
        acc[i] += x * (k ? ld_@S(k + j) : x);
      }
    for (; j < W; ++j)
      for (int i = 0; i < VL_@S; ++i) tail[i] += M[(n + i) * W + j] * (k ? k[j] : M[(n + i) * W + j]);
    st_@S(out + n, hsums_@S(acc) + tail);
  }
  for (; n < N; ++n) out[n] = dot_@S(W, M + n * W, k ? k : M + n * W);
}

/* out[h] = sum_n v[h * vs + n] M[n] (add: out[h] +=) for out [H, W], M [N, W]: four heads per pass over M */
static void rows_combine_@S(int64_t N, int64_t W, int64_t H, const @T* restrict v, int64_t vs,
                            const @T* restrict M, @T* restrict out, int add) {
  int64_t h = 0;
  for (; h + 4 <= H; h += 4) {
    const @T *v0 = v + h * vs, *v1 = v0 + vs, *v2 = v1 + vs, *v3 = v2 + vs;
    for (int64_t j = 0; j + VL_@S <= W; j += VL_@S) {
      @T* o = out + h * W + j; vec_@S a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t n = 0; n < N; ++n) {
        const vec_@S m = ld_@S(M + n * W + j);
        a0 += v0[n] * m; a1 += v1[n] * m; a2 += v2[n] * m; a3 += v3[n] * m;
      }
      if (add) { a0 += ld_@S(o); a1 += ld_@S(o + W); a2 += ld_@S(o + 2 * W); a3 += ld_@S(o + 3 * W); }
      st_@S(o, a0); st_@S(o + W, a1); st_@S(o + 2 * W, a2); st_@S(o + 3 * W, a3);
    }
  }
  for (; h < H; ++h) {
    const @T* vh = v + h * vs; @T* o = out + h * W;
    for (int64_t j = 0; j + VL_@S <= W; j += VL_@S) {
      vec_@S a = {0};
      for (int64_t n = 0; n < N; ++n) a += vh[n] * ld_@S(M + n * W + j);
      st_@S(o + j, add ? a + ld_@S(o + j) : a);
    }
  }
  for (int64_t j = W - W % VL_@S; j < W; ++j)  /* the columns past the last whole vector, every head */
    for (int64_t q = 0; q < H; ++q) {
      @T a = add ? out[q * W + j] : 0;
      for (int64_t n = 0; n < N; ++n) a += v[q * vs + n] * M[n * W + j];
      out[q * W + j] = a;
    }
}

/* out[n] = sum_q a[q * as + n] Bm[q * bs] (add: out[n] +=) for out [N, W] and Q rows Bm[q * bs] of W: the rows of Bm
   four at a time, held in registers across n */
static void rows_expand_@S(int64_t N, int64_t W, int64_t Q, const @T* restrict a, int64_t as, const @T* restrict Bm,
                           int64_t bs, @T* restrict out, int add) {
  int64_t q = 0;
  for (; q < Q; q += 4, add = 1) {
    const int64_t k = Q - q < 4 ? Q - q : 4; const @T* aq = a + q * as; const @T* bq = Bm + q * bs; int64_t j = 0;
    for (; j + VL_@S <= W; j += VL_@S) {
      vec_@S b[4] = {{0}, {0}, {0}, {0}}; @T* o = out + j;
      for (int64_t i = 0; i < k; ++i) b[i] = ld_@S(bq + i * bs + j);
      if (k == 4)
        for (int64_t n = 0; n < N; ++n) {
          const vec_@S acc = aq[n] * b[0] + aq[as + n] * b[1] + aq[2 * as + n] * b[2] + aq[3 * as + n] * b[3];
          st_@S(o + n * W, add ? acc + ld_@S(o + n * W) : acc);
        }
      else
        for (int64_t n = 0; n < N; ++n) {
          vec_@S acc = add ? ld_@S(o + n * W) : (vec_@S){0};
          for (int64_t i = 0; i < k; ++i) acc += aq[i * as + n] * b[i];
          st_@S(o + n * W, acc);
        }
    }
    for (; j < W; ++j)
      for (int64_t n = 0; n < N; ++n) {
        @T acc = add ? out[n * W + j] : 0;
        for (int64_t i = 0; i < k; ++i) acc += aq[i * as + n] * bq[i * bs + j];
        out[n * W + j] = acc;
      }
  }
}

"""
