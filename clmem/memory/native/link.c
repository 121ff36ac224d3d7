/* The LinkTape link steps (clmem/memory/_native_link.py): one pass over each link matrix per step.

   Per row i of one matrix (w = w^w_t, p = p_{t-1}, v = w^r_{t-1} [R, N]):

     forward:  L[i, j] = (1 - w_i - w_j) P[i, j] + w_i p_j  (L[i, i] = 0),  f[r, i] = L[i] . v[r],
               b[r] += v[r, i] L[i]
     backward: g = G[i] + gf[:, i] v + v[:, i] gb  (g_i = 0);  dv[r] += gf[r, i] L[i];  dv[r, i] += gb[r] . L[i]
               dp += w_i g;  dw_i = g . (p - P[i]);  dw -= g * P[i] (columns);  G[i] = (1 - w_i - w) g

   with P = L_{t-1} and L = L_t recomputed from P on the fly (the backward never reads L_t). */
#include "clmem_native.h"

/* Read heads go in groups of 4 (missing heads point at a zero row and write to a junk row), so one vectorised
   pass over a row handles 4 heads. */
static void heads(int64_t R, int64_t N, int64_t g0, const real* base, real* junk, const real* zero,
                  const real* hs[4], real* hd[4]) {
  for (int k = 0; k < 4; ++k) {
    int64_t r = g0 + k;
    hs[k] = r < R ? base + r * N : zero; hd[k] = junk + k * N;
  }
}

void EXPORT(link_forward)(int64_t M, int64_t N, int64_t R, const real* prev, real* out, const real* w,
                          const real* p, const real* v, real* f, real* b, real* scratch) {
  FTZ_BEGIN
  real* zero = scratch; real* junk = scratch + N; memset(zero, 0, sizeof(real) * N);
  for (int64_t m = 0; m < M; ++m) {
    const real* P = prev + m * N * N; real* O = out + m * N * N;
    const real* wm = w + m * N; const real* pm = p + m * N;
    if (v) memset(b + m * R * N, 0, sizeof(real) * R * N);
    for (int64_t i = 0; i < N; ++i) {
      const real wi = wm[i], a = (real)1 - wi; const real* Pi = P + i * N; real* Oi = O + i * N;
      const real lii = (a - wm[i]) * Pi[i] + wi * pm[i];  /* before an in-place update overwrites P[i, i] */
      if (!v || R == 0) {
        #pragma omp simd
        for (int64_t j = 0; j < N; ++j) Oi[j] = (a - wm[j]) * Pi[j] + wi * pm[j];
        Oi[i] = 0;
      }
      for (int64_t g0 = 0; v && g0 < R; g0 += 4) {
        const real* vs[4]; real* bs[4]; real c[4];
        heads(R, N, g0, v + m * R * N, junk, zero, vs, bs);
        for (int k = 0; k < 4; ++k) { if (g0 + k < R) bs[k] = b + (m * R + g0 + k) * N; c[k] = vs[k][i]; }
        const real *v0 = vs[0], *v1 = vs[1], *v2 = vs[2], *v3 = vs[3];
        real *b0 = bs[0], *b1 = bs[1], *b2 = bs[2], *b3 = bs[3];
        real a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        if (g0 == 0) {  /* the update and the first 4 heads in one loop; the diagonal's terms taken out after
                           it (a select in the loop would become slow masked loads) */
          #pragma omp simd reduction(+:a0, a1, a2, a3)
          for (int64_t j = 0; j < N; ++j) {
            const real x = (a - wm[j]) * Pi[j] + wi * pm[j];
            Oi[j] = x;
            a0 += x * v0[j]; a1 += x * v1[j]; a2 += x * v2[j]; a3 += x * v3[j];
            b0[j] += c[0] * x; b1[j] += c[1] * x; b2[j] += c[2] * x; b3[j] += c[3] * x;
          }
          Oi[i] = 0; a0 -= lii * v0[i]; a1 -= lii * v1[i]; a2 -= lii * v2[i]; a3 -= lii * v3[i];
          for (int k = 0; k < 4; ++k) bs[k][i] -= c[k] * lii;
        } else {
          #pragma omp simd reduction(+:a0, a1, a2, a3)
          for (int64_t j = 0; j < N; ++j) {
            const real x = Oi[j];
            a0 += x * v0[j]; a1 += x * v1[j]; a2 += x * v2[j]; a3 += x * v3[j];
            b0[j] += c[0] * x; b1[j] += c[1] * x; b2[j] += c[2] * x; b3[j] += c[3] * x;
          }
        }
        const real acc[4] = {a0, a1, a2, a3};
        for (int k = 0; k < 4 && g0 + k < R; ++k) f[(m * R + g0 + k) * N + i] = acc[k];
      }
    }
  }
  FTZ_END
}

void EXPORT(link_backward)(int64_t M, int64_t N, int64_t R, int64_t K, real* G, const real* prev, const real* w,
                           const real* p, const real* v, const real* gf, const real* gb, real* dp, real* dw, real* dv,
                           const real* wk, const real* pk, real* scratch) {
  FTZ_BEGIN
  real* g = scratch; real* dwc = scratch + N; real* zero = scratch + 2 * N; real* junk = scratch + 3 * N;
  real* row = scratch + 7 * N;
  memset(zero, 0, sizeof(real) * N);
  for (int64_t m = 0; m < M; ++m) {
    real* Gm = G + m * N * N; const real* P = prev + m * N * N;
    const real* wm = w + m * N; const real* pm = p + m * N; const real* vm = v + m * R * N;
    real* dpm = dp + m * N; real* dwm = dw + m * N;
    memset(dpm, 0, sizeof(real) * N); memset(dwc, 0, sizeof(real) * N);
    if (dv) memset(dv + m * R * N, 0, sizeof(real) * R * N);
    for (int64_t i = 0; i < N; ++i) {
      const real wi = wm[i], a = (real)1 - wi; real* Gi = Gm + i * N; const real* Pi = P + i * N;
      for (int64_t k = 0; k < K; ++k) {  /* rebuild L_{t-1} from an older link: K updates of this row */
        const real* wq = wk + (k * M + m) * N; const real* pq = pk + (k * M + m) * N;
        const real wq_i = wq[i], aq = (real)1 - wq_i;
        if (k == 0) {
          #pragma omp simd
          for (int64_t j = 0; j < N; ++j) row[j] = (aq - wq[j]) * Pi[j] + wq_i * pq[j];
        } else {
          #pragma omp simd
          for (int64_t j = 0; j < N; ++j) row[j] = (aq - wq[j]) * row[j] + wq_i * pq[j];
        }
        row[i] = 0;
      }
      if (K) Pi = row;
      real* gsrc = Gi;  /* g = G[i] + read terms: the first group of heads reads G[i], later ones g */
      for (int64_t g0 = 0; (gf || gb) && g0 < R; g0 += 4) {
        const real* vs[4]; const real* gs[4]; real* ds[4]; real cf[4], cb[4];
        heads(R, N, g0, vm, junk, zero, vs, ds);
        for (int k = 0; k < 4; ++k) {
          const int64_t r = g0 + k; const int in = r < R;
          gs[k] = in && gb ? gb + (m * R + r) * N : zero;
          if (in && dv) ds[k] = dv + (m * R + r) * N;
          cf[k] = in && gf ? gf[(m * R + r) * N + i] : 0; cb[k] = vs[k][i];
        }
        const real *v0 = vs[0], *v1 = vs[1], *v2 = vs[2], *v3 = vs[3];
        const real *q0 = gs[0], *q1 = gs[1], *q2 = gs[2], *q3 = gs[3];
        real *d0 = ds[0], *d1 = ds[1], *d2 = ds[2], *d3 = ds[3]; const real* src = gsrc;
        real a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        /* L_t[i, j] recomputed without the zero diagonal (a select here became slow masked loads); the
           diagonal's terms are taken out again after the loop */
        #pragma omp simd reduction(+:a0, a1, a2, a3)
        for (int64_t j = 0; j < N; ++j) {
          const real lt = (a - wm[j]) * Pi[j] + wi * pm[j];
          g[j] = src[j] + cf[0] * v0[j] + cf[1] * v1[j] + cf[2] * v2[j] + cf[3] * v3[j]
                + cb[0] * q0[j] + cb[1] * q1[j] + cb[2] * q2[j] + cb[3] * q3[j];
          d0[j] += cf[0] * lt; d1[j] += cf[1] * lt; d2[j] += cf[2] * lt; d3[j] += cf[3] * lt;
          a0 += q0[j] * lt; a1 += q1[j] * lt; a2 += q2[j] * lt; a3 += q3[j] * lt;
        }
        const real lii = (a - wm[i]) * Pi[i] + wi * pm[i];
        const real acc[4] = {a0 - q0[i] * lii, a1 - q1[i] * lii, a2 - q2[i] * lii, a3 - q3[i] * lii};
        for (int k = 0; k < 4; ++k) { ds[k][i] += acc[k] - cf[k] * lii; }
        gsrc = g;
      }
      real* gi = gsrc; gi[i] = 0;
      real dwi = 0;
      #pragma omp simd reduction(+:dwi)
      for (int64_t j = 0; j < N; ++j) {
        const real gj = gi[j];
        dpm[j] += wi * gj; dwi += gj * (pm[j] - Pi[j]); dwc[j] += gj * Pi[j]; Gi[j] = (a - wm[j]) * gj;
      }
      dwm[i] = dwi;
    }
    for (int64_t j = 0; j < N; ++j) dwm[j] -= dwc[j];
  }
  FTZ_END
}
