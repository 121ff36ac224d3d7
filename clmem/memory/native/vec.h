/* Vector helpers of the DNC step kernels (dnc.c): 32-byte vectors through the GCC/Clang vector extensions (AVX on
   x86-64; the compiler splits them into halves on narrower targets), no intrinsics. Built with GCC 12 here; checked
   once by hand with Clang (zig cc): the kernel tests pass on x86-64 and the source compiles for aarch64.
   The lane reductions and the float exp differ by precision; the row operations below are written once. */
#ifndef CLMEM_VEC_H
#define CLMEM_VEC_H

#include "clmem_native.h"

#define SHUF __builtin_shufflevector

#if CLMEM_DOUBLE
typedef double vec __attribute__((vector_size(32)));
typedef int64_t ivec __attribute__((vector_size(32)));

/* lane i of the result: the sum of the lanes of a[i] (4 vectors of 4 doubles) */
static inline vec hsums(const vec* a) {
  const vec s0 = SHUF(a[0], a[1], 0, 4, 2, 6) + SHUF(a[0], a[1], 1, 5, 3, 7);
  const vec s1 = SHUF(a[2], a[3], 0, 4, 2, 6) + SHUF(a[2], a[3], 1, 5, 3, 7);
  return SHUF(s0, s1, 0, 1, 4, 5) + SHUF(s0, s1, 2, 3, 6, 7);
}

/* x[i] = exp(x[i]) for x <= 0 (softmax inputs after subtracting the maximum): libm's exp */
static void exp_nonpositive(int64_t n, double* restrict x) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp(x[i]);
}
#else
typedef float vec __attribute__((vector_size(32)));
typedef int32_t ivec __attribute__((vector_size(32)));

/* lane i of the result: the sum of the lanes of a[i] (8 vectors of 8 floats) */
static inline vec hsums(const vec* a) {
  vec s[4], t[2];
  for (int i = 0; i < 4; ++i)
    s[i] = SHUF(a[2 * i], a[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14)
           + SHUF(a[2 * i], a[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  for (int i = 0; i < 2; ++i)
    t[i] = SHUF(s[2 * i], s[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14)
           + SHUF(s[2 * i], s[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  return SHUF(t[0], t[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(t[0], t[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* x[i] = exp(x[i]) for x <= 0 (softmax inputs after subtracting the maximum): Cephes' expf polynomial on 8 lanes
   (range reduction by n ln 2, |error| about 1 ulp; exp(x) < 2^-125 flushed to 0) */
static void exp_nonpositive(int64_t n, float* restrict x) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    vec v; memcpy(&v, x + i, sizeof v);
    const ivec tiny = v < -87.0f;
    v = (vec)((ivec)v & ~tiny);
    const ivec k = __builtin_convertvector(v * 1.44269504088896341f - 0.5f, ivec);  /* round(v / ln 2) */
    const vec kf = __builtin_convertvector(k, vec);
    const vec r = (v - kf * 0.693359375f) + kf * 2.12194440e-4f;  /* v - k ln 2 in two parts */
    vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f; p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f; p = p * r * r + r + 1.0f;
    v = (vec)((ivec)(p * (vec)((k + 127) << 23)) & ~tiny);
    memcpy(x + i, &v, sizeof v);
  }
  for (; i < n; ++i) x[i] = expf(x[i]);
}
#endif

/* rows are walked in chunks of VL elements with a scalar tail, so any W works */
enum { VL = 32 / sizeof(real) };
static inline vec vload(const real* p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(real* p, vec v) { memcpy(p, &v, sizeof v); }

/* the sum of the lanes of v */
static inline real hsum(vec v) { real s = 0; for (int i = 0; i < VL; ++i) s += v[i]; return s; }

/* max_n x[n] (NaNs skipped, -inf for none) */
static inline real vmax(int64_t N, const real* restrict x) {
  vec m = (vec){0} - INFINITY; real mx = -INFINITY; int64_t n = 0;
  for (; n + VL <= N; n += VL) {
    const vec v = vload(x + n); const ivec gt = v > m;
    m = (vec)(((ivec)v & gt) | ((ivec)m & ~gt));
  }
  for (int i = 0; i < VL; ++i) mx = m[i] > mx ? m[i] : mx;
  for (; n < N; ++n) mx = x[n] > mx ? x[n] : mx;
  return mx;
}

/* a . b over W elements */
static inline real vdot(int64_t W, const real* restrict a, const real* restrict b) {
  vec acc = {0}; int64_t j = 0;
  for (; j + VL <= W; j += VL) acc += vload(a + j) * vload(b + j);
  real s = hsum(acc);
  for (; j < W; ++j) s += a[j] * b[j];
  return s;
}

/* out[n] = k . M[n] (k NULL: M[n] . M[n]) for the N rows of M [N, W]: VL rows at a time into one vector of sums */
static void row_dots(int64_t N, int64_t W, const real* restrict M, const real* restrict k,
                     real* restrict out) {
  int64_t n = 0;
  for (; n + VL <= N; n += VL) {
    vec acc[VL], tail = {0}; int64_t j = 0;
    for (int i = 0; i < VL; ++i) acc[i] = (vec){0};
    for (; j + VL <= W; j += VL)
      for (int i = 0; i < VL; ++i) {
        const vec x = vload(M + (n + i) * W + j);
        acc[i] += x * (k ? vload(k + j) : x);
      }
    for (; j < W; ++j)
      for (int i = 0; i < VL; ++i) tail[i] += M[(n + i) * W + j] * (k ? k[j] : M[(n + i) * W + j]);
    vstore(out + n, hsums(acc) + tail);
  }
  for (; n < N; ++n) out[n] = vdot(W, M + n * W, k ? k : M + n * W);
}

/* out[h] = sum_n v[h * vs + n] M[n] (add: out[h] +=) for out [H, W], M [N, W]: four heads per pass over M */
static void rows_combine(int64_t N, int64_t W, int64_t H, const real* restrict v, int64_t vs,
                         const real* restrict M, real* restrict out, int add) {
  int64_t h = 0;
  for (; h + 4 <= H; h += 4) {
    const real *v0 = v + h * vs, *v1 = v0 + vs, *v2 = v1 + vs, *v3 = v2 + vs;
    for (int64_t j = 0; j + VL <= W; j += VL) {
      real* o = out + h * W + j; vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t n = 0; n < N; ++n) {
        const vec m = vload(M + n * W + j);
        a0 += v0[n] * m; a1 += v1[n] * m; a2 += v2[n] * m; a3 += v3[n] * m;
      }
      if (add) { a0 += vload(o); a1 += vload(o + W); a2 += vload(o + 2 * W); a3 += vload(o + 3 * W); }
      vstore(o, a0); vstore(o + W, a1); vstore(o + 2 * W, a2); vstore(o + 3 * W, a3);
    }
  }
  for (; h < H; ++h) {
    const real* vh = v + h * vs; real* o = out + h * W;
    for (int64_t j = 0; j + VL <= W; j += VL) {
      vec a = {0};
      for (int64_t n = 0; n < N; ++n) a += vh[n] * vload(M + n * W + j);
      vstore(o + j, add ? a + vload(o + j) : a);
    }
  }
  for (int64_t j = W - W % VL; j < W; ++j)  /* the columns past the last whole vector, every head */
    for (int64_t q = 0; q < H; ++q) {
      real a = add ? out[q * W + j] : 0;
      for (int64_t n = 0; n < N; ++n) a += v[q * vs + n] * M[n * W + j];
      out[q * W + j] = a;
    }
}

/* out[n] = sum_q a[q * as + n] Bm[q * bs] (add: out[n] +=) for out [N, W] and Q rows Bm[q * bs] of W: the rows
   of Bm four at a time, held in registers across n */
static void rows_expand(int64_t N, int64_t W, int64_t Q, const real* restrict a, int64_t as,
                        const real* restrict Bm, int64_t bs, real* restrict out, int add) {
  int64_t q = 0;
  for (; q < Q; q += 4, add = 1) {
    const int64_t k = Q - q < 4 ? Q - q : 4; const real* aq = a + q * as; const real* bq = Bm + q * bs; int64_t j = 0;
    for (; j + VL <= W; j += VL) {
      vec b[4] = {{0}, {0}, {0}, {0}}; real* o = out + j;
      for (int64_t i = 0; i < k; ++i) b[i] = vload(bq + i * bs + j);
      if (k == 4)
        for (int64_t n = 0; n < N; ++n) {
          const vec acc = aq[n] * b[0] + aq[as + n] * b[1] + aq[2 * as + n] * b[2] + aq[3 * as + n] * b[3];
          vstore(o + n * W, add ? acc + vload(o + n * W) : acc);
        }
      else
        for (int64_t n = 0; n < N; ++n) {
          vec acc = add ? vload(o + n * W) : (vec){0};
          for (int64_t i = 0; i < k; ++i) acc += aq[i * as + n] * b[i];
          vstore(o + n * W, acc);
        }
    }
    for (; j < W; ++j)
      for (int64_t n = 0; n < N; ++n) {
        real acc = add ? out[n * W + j] : 0;
        for (int64_t i = 0; i < k; ++i) acc += aq[i * as + n] * bq[i * bs + j];
        out[n * W + j] = acc;
      }
  }
}

#endif
