"""C source of the optional DNC step kernels (see ``_native_dnc``): written once with ``@T``/``@S`` placeholders and
instantiated for float32 and float64."""

from . import _native_link as build

_BODY = r"""
/* content lookup of H keys (key h at keys + h * kh) on M [N, W]: c, sim, den [H, N], mnorm [N], knorm [H] */
static void content_fwd_@S(int64_t N, int64_t W, int64_t H, const @T* restrict M, const @T* restrict keys, int64_t kh,
                           const @T* restrict str, @T eps, @T* restrict c, @T* restrict sim, @T* restrict den,
                               @T* restrict mnorm, @T* restrict knorm) {
  for (int64_t n = 0; n < N; ++n) {
    @T s = 0; for (int64_t j = 0; j < W; ++j) s += M[n * W + j] * M[n * W + j];
    mnorm[n] = @SQRT(s + eps);
  }
  for (int64_t h = 0; h < H; ++h) {
    const @T* k = keys + h * kh; @T s = 0, mx = -INFINITY, z = 0;
    for (int64_t j = 0; j < W; ++j) s += k[j] * k[j];
    knorm[h] = @SQRT(s + eps);
    @T* ch = c + h * N; @T* sh = sim + h * N; @T* dh = den + h * N;
    for (int64_t n = 0; n < N; ++n) {
      @T dot = 0;
      _Pragma("omp simd reduction(+:dot)")
      for (int64_t j = 0; j < W; ++j) dot += k[j] * M[n * W + j];
      sh[n] = dot;
    }
    for (int64_t n = 0; n < N; ++n) {
      dh[n] = knorm[h] * mnorm[n] + eps; sh[n] /= dh[n]; ch[n] = sh[n] * str[h];
      mx = ch[n] > mx ? ch[n] : mx;
    }
    for (int64_t n = 0; n < N; ++n) { ch[n] = @EXP(ch[n] - mx); z += ch[n]; }
    for (int64_t n = 0; n < N; ++n) ch[n] /= z;
  }
}

/* backward of content_fwd for incoming dc [H, N]: dM [N, W] += ..., dkeys [H, W] and dstr [H] written */
static void content_bwd_@S(int64_t N, int64_t W, int64_t H, const @T* restrict M, const @T* restrict keys, int64_t kh,
                           const @T* restrict str, const @T* restrict c, const @T* restrict sim,
                               const @T* restrict den, const @T* restrict mnorm,
                           const @T* restrict knorm, const @T* restrict dc, @T* restrict dM, @T* restrict dkeys,
                               @T* restrict dstr, @T* restrict gm) {
  memset(gm, 0, sizeof(@T) * N);
  for (int64_t h = 0; h < H; ++h) {
    const @T* k = keys + h * kh; const @T* ch = c + h * N; const @T* dch = dc + h * N;
    @T* dk = dkeys + h * W; @T dot = 0, db = 0, gkn = 0;
    for (int64_t n = 0; n < N; ++n) dot += dch[n] * ch[n];
    for (int64_t j = 0; j < W; ++j) dk[j] = 0;
    for (int64_t n = 0; n < N; ++n) {
      const @T gl = ch[n] * (dch[n] - dot), s = sim[h * N + n];
      const @T gdot = gl * str[h] / den[h * N + n], gden = -gdot * s;
      db += gl * s; gkn += gden * mnorm[n]; gm[n] += gden * knorm[h];
      for (int64_t j = 0; j < W; ++j) { dk[j] += gdot * M[n * W + j]; dM[n * W + j] += gdot * k[j]; }
    }
    dstr[h] = db;
    for (int64_t j = 0; j < W; ++j) dk[j] += k[j] * gkn / knorm[h];
  }
  for (int64_t n = 0; n < N; ++n) {
    const @T f = gm[n] / mnorm[n];
    for (int64_t j = 0; j < W; ++j) dM[n * W + j] += M[n * W + j] * f;
  }
}

/* stable ascending argsort (merge sort) */
static void argsort_@S(int64_t N, const @T* restrict x, int64_t* restrict idx, int64_t* restrict tmp) {
  for (int64_t i = 0; i < N; ++i) idx[i] = i;
  for (int64_t width = 1; width < N; width *= 2) {
    for (int64_t lo = 0; lo < N; lo += 2 * width) {
      int64_t mid = lo + width < N ? lo + width : N, hi = lo + 2 * width < N ? lo + 2 * width : N;
      int64_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) {  /* branch-free merge step (ties take the left run: stable) */
        const int64_t a = idx[i], c = idx[j]; const int take = x[c] < x[a];
        tmp[k++] = take ? c : a; j += take; i += 1 - take;
      }
      while (i < mid) tmp[k++] = idx[i++];
      while (j < hi) tmp[k++] = idx[j++];
    }
    memcpy(idx, tmp, sizeof(int64_t) * N);
  }
}

/* saved per batch item: sv [9, N] = kept, ret, c, sim, den, mnorm, a (slot order), s (sorted), excl (sorted) */
void pre_forward_@S(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                    const @T* restrict u0, const @T* restrict ww0, const @T* restrict V, const @T* restrict M0,
                        const @T* restrict p0, const @T* restrict fg,
                    const @T* restrict wk, const @T* restrict ws, const @T* restrict ga, const @T* restrict gw,
                        const @T* restrict er, const @T* restrict wv,
                    @T* restrict u, @T* restrict w, @T* restrict M, @T* restrict p, @T* restrict sv,
                        @T* restrict knorm, int64_t* restrict idx, int64_t* restrict tmp) {
  FTZ_BEGIN
  const @T eps = (@T)eps_;
  for (int64_t b = 0; b < B; ++b) {
    const @T* Vb = V + b * R * N; const @T* f = fg + b * st[0]; const @T* M0b = M0 + b * N * W;
    @T* s9 = sv + b * 9 * N; @T *kept = s9, *ret = s9 + N, *c = s9 + 2 * N, *sim = s9 + 3 * N;
    @T *den = s9 + 4 * N, *mn = s9 + 5 * N, *a = s9 + 6 * N, *ss = s9 + 7 * N, *ex = s9 + 8 * N;
    @T* ub = u + b * N; @T* wb = w + b * N; int64_t* ib = idx + b * N;
    for (int64_t n = 0; n < N; ++n) {
      const @T wr = ww0[b * N + n]; @T r = 1;
      kept[n] = wr + u0[b * N + n] * (1 - wr);
      for (int64_t h = 0; h < R; ++h) r *= 1 - f[h] * Vb[h * N + n];
      ret[n] = r; ub[n] = kept[n] * r; ss[n] = eps + (1 - eps) * ub[n];
    }
    for (int64_t n = 0; n < N; ++n) a[n] = ss[n];
    argsort_@S(N, a, ib, tmp);
    @T e = 1;
    for (int64_t k = 0; k < N; ++k) {
      ss[k] = a[ib[k]];
    }
    for (int64_t k = 0; k < N; ++k) { ex[k] = e; a[ib[k]] = (1 - ss[k]) * e; e *= ss[k]; }
    content_fwd_@S(N, W, 1, M0b, wk + b * st[1], 0, ws + b * st[2], eps, c, sim, den, mn, knorm + b);
    const @T gA = ga[b * st[3]], gW = gw[b * st[4]]; @T sw = 0;
    for (int64_t n = 0; n < N; ++n) { wb[n] = gW * (c[n] + gA * (a[n] - c[n])); sw += wb[n]; }
    for (int64_t n = 0; n < N; ++n) p[b * N + n] = (1 - sw) * p0[b * N + n] + wb[n];
    const @T* e_ = er + b * st[5]; const @T* v_ = wv + b * st[6];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < W; ++j)
        M[(b * N + n) * W + j] = M0b[n * W + j] * (1 - wb[n] * e_[j]) + wb[n] * v_[j];
  }
  FTZ_END
}

/* gradients: out[0] du0 [B,N], out[1] dfree [B,R], out[2] dV [B,R,N], out[3] dM0 [B,N,W], out[4] dwkey [B,W],
   out[5] dwstr [B], out[6] dga [B], out[7] dgw [B], out[8] derase [B,W], out[9] dwvec [B,W], out[10] dp0 [B,N] */
void pre_backward_@S(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                     const @T* restrict ww0, const @T* restrict V, const @T* restrict M0, const @T* restrict p0,
                         const @T* restrict fg, const @T* restrict wk,
                     const @T* restrict ws, const @T* restrict ga, const @T* restrict gw, const @T* restrict er,
                         const @T* restrict wv, const @T* restrict w,
                     const @T* restrict sv, const @T* restrict knorm, const int64_t* restrict idx,
                         const @T* restrict Gu, const @T* restrict Gw,
                     const @T* restrict GM, const @T* restrict Gp, @T** out, @T* restrict scratch) {
  FTZ_BEGIN
  const @T eps = (@T)eps_;
  @T *dw = scratch, *dc = scratch + N, *da = scratch + 2 * N, *gm = scratch + 3 * N, *phi = scratch + 4 * N;
  @T *pre = phi + R;
  for (int64_t b = 0; b < B; ++b) {
    const @T* s9 = sv + b * 9 * N; const @T *kept = s9, *ret = s9 + N, *c = s9 + 2 * N, *sim = s9 + 3 * N;
    const @T *den = s9 + 4 * N, *mn = s9 + 5 * N, *a = s9 + 6 * N, *ss = s9 + 7 * N, *ex = s9 + 8 * N;
    const @T* wb = w + b * N; const @T* M0b = M0 + b * N * W; const int64_t* ib = idx + b * N;
    const @T* e_ = er + b * st[5]; const @T* v_ = wv + b * st[6]; const @T* f = fg + b * st[0];
    const @T gA = ga[b * st[3]], gW = gw[b * st[4]];
    @T* restrict dM0 = out[3] + b * N * W; @T* restrict de = out[8] + b * st[5];
    @T* restrict dv = out[9] + b * st[6];
    @T sw = 0, gp = 0, dgw = 0, dga = 0;
    for (int64_t n = 0; n < N; ++n) { sw += wb[n]; gp += Gp[b * N + n] * p0[b * N + n]; }
    for (int64_t n = 0; n < N; ++n) {
      out[10][b * N + n] = Gp[b * N + n] * (1 - sw);
      dw[n] = Gw[b * N + n] + Gp[b * N + n] - gp;
    }
    for (int64_t j = 0; j < W; ++j) { de[j] = 0; dv[j] = 0; }
    for (int64_t n = 0; n < N; ++n) {
      @T acc = 0; const @T* g = GM + (b * N + n) * W;
      for (int64_t j = 0; j < W; ++j) {
        const @T gm0 = g[j] * M0b[n * W + j];
        dM0[n * W + j] = g[j] * (1 - wb[n] * e_[j]);
        acc += g[j] * v_[j] - gm0 * e_[j]; de[j] -= wb[n] * gm0; dv[j] += wb[n] * g[j];
      }
      dw[n] += acc;
    }
    for (int64_t n = 0; n < N; ++n) {
      const @T sc = dw[n] * gW;
      dgw += dw[n] * (c[n] + gA * (a[n] - c[n])); dga += sc * (a[n] - c[n]);
      dc[n] = sc * (1 - gA); da[n] = sc * gA;
    }
    out[6][b * st[3]] = dga; out[7][b * st[4]] = dgw;
    content_bwd_@S(N, W, 1, M0b, wk + b * st[1], 0, ws + b * st[2], c, sim, den, mn, knorm + b, dc, dM0,
                   out[4] + b * st[1], out[5] + b * st[2], gm);
    @T later = 0; @T* restrict du = scratch + 4 * N + 2 * R;
    for (int64_t k = N - 1; k >= 0; --k) {
      const int64_t n = ib[k]; const @T g = da[n];
      du[n] = Gu[b * N + n] + (later / ss[k] - g * ex[k]) * (1 - eps);
      later += g * a[n];
    }
    @T* restrict dfree = out[1] + b * st[0]; @T* restrict dV = out[2] + b * R * N; const @T* Vb = V + b * R * N;
    for (int64_t h = 0; h < R; ++h) dfree[h] = 0;
    for (int64_t n = 0; n < N; ++n) {
      const @T g = du[n], gk = g * kept[n]; @T run = 1, suf = 1;
      out[0][b * N + n] = g * ret[n] * (1 - ww0[b * N + n]);
      for (int64_t h = 0; h < R; ++h) { phi[h] = 1 - f[h] * Vb[h * N + n]; pre[h] = run; run *= phi[h]; }
      for (int64_t h = R - 1; h >= 0; --h) {
        const @T q = -gk * pre[h] * suf;
        dfree[h] += q * Vb[h * N + n]; dV[h * N + n] = q * f[h]; suf *= phi[h];
      }
    }
  }
  FTZ_END
}

/* read: sv [3, R, N] = c, sim, den; mnorm [B, N]; knorm [B, R]; modes [B, R, 3] = backward, forward, content */
void post_forward_@S(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                     const @T* restrict M, const @T* restrict rk, const @T* restrict rs, const @T* restrict fw,
                         const @T* restrict bw, const @T* restrict md,
                     @T* restrict V, @T* restrict rw, @T* restrict sv, @T* restrict mnorm, @T* restrict knorm) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b) {
    const @T* Mb = M + b * N * W; @T* s3 = sv + b * 3 * R * N; @T* c = s3;
    content_fwd_@S(N, W, R, Mb, rk + b * st[0], W, rs + b * st[1], (@T)eps_, c, s3 + R * N, s3 + 2 * R * N,
                   mnorm + b * N, knorm + b * R);
    for (int64_t h = 0; h < R; ++h) {
      const @T* m = md + b * st[2] + h * 3; @T* Vh = V + (b * R + h) * N; @T* r = rw + (b * R + h) * W;
      const @T* f = fw + (b * R + h) * N; const @T* k = bw + (b * R + h) * N;
      for (int64_t j = 0; j < W; ++j) r[j] = 0;
      for (int64_t n = 0; n < N; ++n) {
        Vh[n] = m[0] * k[n] + m[1] * f[n] + m[2] * c[h * N + n];
        for (int64_t j = 0; j < W; ++j) r[j] += Vh[n] * Mb[n * W + j];
      }
    }
  }
  FTZ_END
}

/* gradients: out[0] dM [B,N,W], out[1] drkeys [B,R,W], out[2] drstr [B,R], out[3] dforward [B,R,N],
   out[4] dbackward [B,R,N], out[5] dmodes [B,R,3] */
void post_backward_@S(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                      const @T* restrict M, const @T* restrict rk, const @T* restrict rs, const @T* restrict fw,
                          const @T* restrict bw, const @T* restrict md,
                      const @T* restrict V, const @T* restrict sv, const @T* restrict mnorm,
                          const @T* restrict knorm, const @T* restrict GV,
                      const @T* restrict Grw, @T** out, @T* restrict scratch) {
  FTZ_BEGIN
  (void)eps_;
  @T* dcr = scratch; @T* gm = scratch + R * N;
  for (int64_t b = 0; b < B; ++b) {
    const @T* Mb = M + b * N * W; const @T* s3 = sv + b * 3 * R * N; @T* restrict dM = out[0] + b * N * W;
    memset(dM, 0, sizeof(@T) * N * W);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < R; ++h) {
        const @T c = V[(b * R + h) * N + n]; const @T* g = Grw + (b * R + h) * W;
        for (int64_t j = 0; j < W; ++j) dM[n * W + j] += c * g[j];
      }
    for (int64_t h = 0; h < R; ++h) {
      const int64_t o = (b * R + h) * N; const @T* m = md + b * st[2] + h * 3; const @T* g = Grw + (b * R + h) * W;
      @T* dm = out[5] + b * st[2] + h * 3; dm[0] = dm[1] = dm[2] = 0;
      for (int64_t n = 0; n < N; ++n) {
        @T dV = GV[o + n];
        for (int64_t j = 0; j < W; ++j) dV += g[j] * Mb[n * W + j];
        dm[0] += dV * bw[o + n]; dm[1] += dV * fw[o + n]; dm[2] += dV * s3[h * N + n];
        out[4][o + n] = m[0] * dV; out[3][o + n] = m[1] * dV; dcr[h * N + n] = m[2] * dV;
      }
    }
    content_bwd_@S(N, W, R, Mb, rk + b * st[0], W, rs + b * st[1], s3, s3 + R * N, s3 + 2 * R * N,
                   mnorm + b * N, knorm + b * R, dcr, dM, out[1] + b * st[0], out[2] + b * st[1], gm);
  }
  FTZ_END
}

/* interface activations over [B, I] rows; ranges: K quadruples (start, length, kind, group): kind 0 raw, 1 oneplus
   (1 + softplus, threshold 20 as torch), 2 sigmoid, 3 softmax over consecutive groups of `group` */
void activate_@S(int64_t B, int64_t I, int64_t K, const int64_t* rg, const @T* restrict x, @T* restrict y) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < K; ++q) {
      const int64_t s0 = b * I + rg[4 * q], len = rg[4 * q + 1], kind = rg[4 * q + 2], grp = rg[4 * q + 3];
      const @T* xs = x + s0; @T* ys = y + s0;
      for (int64_t i = 0; i < len; ++i) {
        if (kind == 0) ys[i] = xs[i];
        else if (kind == 1) ys[i] = 1 + (xs[i] > 20 ? xs[i] : @LOG1P(@EXP(xs[i])));
        else if (kind == 2) ys[i] = 1 / (1 + @EXP(-xs[i]));
      }
      for (int64_t g0 = 0; kind == 3 && g0 < len; g0 += grp) {
        @T mx = xs[g0], z = 0;
        for (int64_t i = 1; i < grp; ++i) mx = xs[g0 + i] > mx ? xs[g0 + i] : mx;
        for (int64_t i = 0; i < grp; ++i) { ys[g0 + i] = @EXP(xs[g0 + i] - mx); z += ys[g0 + i]; }
        for (int64_t i = 0; i < grp; ++i) ys[g0 + i] /= z;
      }
    }
  FTZ_END
}

void activate_backward_@S(int64_t B, int64_t I, int64_t K, const int64_t* rg, const @T* restrict x,
                          const @T* restrict y, const @T* restrict gy, @T* restrict gx) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < K; ++q) {
      const int64_t s0 = b * I + rg[4 * q], len = rg[4 * q + 1], kind = rg[4 * q + 2], grp = rg[4 * q + 3];
      const @T *xs = x + s0, *ys = y + s0, *g = gy + s0; @T* d = gx + s0;
      for (int64_t i = 0; i < len; ++i) {
        if (kind == 0) d[i] = g[i];
        else if (kind == 1) d[i] = xs[i] > 20 ? g[i] : g[i] / (1 + @EXP(-xs[i]));
        else if (kind == 2) d[i] = g[i] * ys[i] * (1 - ys[i]);
      }
      for (int64_t g0 = 0; kind == 3 && g0 < len; g0 += grp) {
        @T dot = 0;
        for (int64_t i = 0; i < grp; ++i) dot += g[g0 + i] * ys[g0 + i];
        for (int64_t i = 0; i < grp; ++i) d[g0 + i] = ys[g0 + i] * (g[g0 + i] - dot);
      }
    }
  FTZ_END
}
"""

_SOURCE = "#include <stdint.h>\n#include <string.h>\n#include <math.h>\n" + build.FTZ + "".join(
    _BODY.replace("@SQRT", q).replace("@EXP", e).replace("@LOG1P", l).replace("@T", t).replace("@S", s)
    for t, s, q, e, l in (("float", "f32", "sqrtf", "expf", "log1pf"), ("double", "f64", "sqrt", "exp", "log1p")))
