"""C source of the optional DNC step kernels (see ``_native_dnc``): written once with ``@T``/``@S`` placeholders and
instantiated for float32 and float64."""

from . import _native_link as build
from ._native_vec_src import HELPERS, PRELUDE

_BODY = r"""
/* content lookup of H keys (key h at keys + h * kh) on M [N, W]: c, sim, den [H, N], mnorm [N], knorm [H] */
static void content_fwd_@S(int64_t N, int64_t W, int64_t H, const @T* restrict M, const @T* restrict keys, int64_t kh,
                           const @T* restrict str, @T eps, @T* restrict c, @T* restrict sim, @T* restrict den,
                               @T* restrict mnorm, @T* restrict knorm) {
  row_dots_@S(N, W, M, NULL, mnorm);
  for (int64_t n = 0; n < N; ++n) mnorm[n] = @SQRT(mnorm[n] + eps);
  for (int64_t h = 0; h < H; ++h) {
    const @T* k = keys + h * kh; @T* ch = c + h * N; @T* sh = sim + h * N; @T* dh = den + h * N; @T z = 0;
    knorm[h] = @SQRT(dot_@S(W, k, k) + eps);
    row_dots_@S(N, W, M, k, sh);
    for (int64_t n = 0; n < N; ++n) { dh[n] = knorm[h] * mnorm[n] + eps; sh[n] /= dh[n]; ch[n] = sh[n] * str[h]; }
    const @T mx = max_@S(N, ch);
    for (int64_t n = 0; n < N; ++n) ch[n] -= mx;
    exp_nonpositive_@S(N, ch);
    for (int64_t n = 0; n < N; ++n) z += ch[n];
    for (int64_t n = 0; n < N; ++n) ch[n] /= z;
  }
}

/* backward of content_fwd for incoming dc [H, N]: dkeys [H, W] and dstr [H] written; dM [N, W] += ..., or with
   V [H, N] and G [H, W] dM = V^T G + ...; scratch gm [N], gd [H, N] */
static void content_bwd_@S(int64_t N, int64_t W, int64_t H, const @T* restrict M, const @T* restrict keys, int64_t kh,
                           const @T* restrict str, const @T* restrict c, const @T* restrict sim,
                               const @T* restrict den, const @T* restrict mnorm,
                           const @T* restrict knorm, const @T* restrict dc, const @T* restrict V,
                               const @T* restrict G, @T* restrict dM, @T* restrict dkeys,
                           @T* restrict dstr, @T* restrict gm, @T* restrict gd) {
  memset(gm, 0, sizeof(@T) * N);
  for (int64_t h = 0; h < H; ++h) {  /* per head over n: the gradients of the dot products (gd) and of the norms */
    const @T* ch = c + h * N; const @T* dch = dc + h * N; const @T* sh = sim + h * N; const @T* dh = den + h * N;
    @T* gdh = gd + h * N; @T dot = 0, db = 0, gkn = 0;
    for (int64_t n = 0; n < N; ++n) dot += dch[n] * ch[n];
    for (int64_t n = 0; n < N; ++n) {
      const @T gl = ch[n] * (dch[n] - dot), gdot = gl * str[h] / dh[n], gden = -gdot * sh[n];
      db += gl * sh[n]; gkn += gden * mnorm[n]; gm[n] += gden * knorm[h]; gdh[n] = gdot;
    }
    dstr[h] = db;
    const @T* k = keys + h * kh; @T* dk = dkeys + h * W; const @T f = gkn / knorm[h];
    for (int64_t j = 0; j < W; ++j) dk[j] = k[j] * f;
  }
  rows_combine_@S(N, W, H, gd, N, M, dkeys, 1);
  if (V) rows_expand_@S(N, W, H, V, N, G, W, dM, 0);  /* dM (+)= V^T G + gd^T keys + M gm / mnorm */
  rows_expand_@S(N, W, H, gd, N, keys, kh, dM, 1);
  for (int64_t n = 0; n < N; ++n) {
    const @T f = gm[n] / mnorm[n]; const @T* m = M + n * W; @T* dm = dM + n * W;
    for (int64_t j = 0; j < W; ++j) dm[j] += m[j] * f;
  }
}

/* stable ascending argsort: LSD radix sort (8 bits per pass) of the order-preserving bit patterns of x (sign bit
   flipped for x >= 0, all bits flipped for x < 0); passes where all keys share the byte are skipped. tmp [3N] */
static void argsort_@S(int64_t N, const @T* restrict x, int64_t* restrict idx, int64_t* restrict tmp) {
  uint64_t *key = (uint64_t*)(tmp + N), *key2 = (uint64_t*)(tmp + 2 * N); int64_t *from = idx, *to = tmp;
  const @K sign = (@K)1 << (8 * sizeof(@K) - 1);
  for (int64_t n = 0; n < N; ++n) {
    @K bits; memcpy(&bits, x + n, sizeof bits);
    key[n] = bits & sign ? (@K)~bits : bits | sign; idx[n] = n;
  }
  for (int shift = 0; shift < 8 * (int)sizeof(@K); shift += 8) {
    int64_t count[257] = {0};
    for (int64_t n = 0; n < N; ++n) ++count[((key[n] >> shift) & 255) + 1];
    if (N == 0 || count[((key[0] >> shift) & 255) + 1] == N) continue;
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t n = 0; n < N; ++n) {
      const int64_t k = count[(key[n] >> shift) & 255]++;
      key2[k] = key[n]; to[k] = from[n];
    }
    uint64_t* kt = key; key = key2; key2 = kt; int64_t* it = from; from = to; to = it;
  }
  if (from != idx) memcpy(idx, from, sizeof(int64_t) * N);
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
    for (int64_t n = 0; n < N; ++n) ret[n] = 1;
    for (int64_t h = 0; h < R; ++h)
      for (int64_t n = 0; n < N; ++n) ret[n] *= 1 - f[h] * Vb[h * N + n];
    for (int64_t n = 0; n < N; ++n) {
      const @T wr = ww0[b * N + n];
      kept[n] = wr + u0[b * N + n] * (1 - wr); ub[n] = kept[n] * ret[n]; ss[n] = eps + (1 - eps) * ub[n];
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
    for (int64_t n = 0; n < N; ++n) {
      @T* mo = M + (b * N + n) * W; const @T* mi = M0b + n * W; const @T wn = wb[n];
      for (int64_t j = 0; j < W; ++j) mo[j] = mi[j] * (1 - wn * e_[j]) + wn * v_[j];
    }
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
  @T *dw = scratch, *dc = scratch + N, *da = scratch + 2 * N, *gm = scratch + 3 * N, *gd = scratch + 4 * N;
  @T *du = scratch + 5 * N, *run = scratch + 6 * N, *pre = scratch + 7 * N;  /* pre [R, N] */
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
    for (int64_t n = 0; n < N; ++n) {  /* erase-and-write: dw += g . (v - M0 e), de -= w g M0, dv += w g */
      const @T* g = GM + (b * N + n) * W; const @T* m0 = M0b + n * W; @T* dm = dM0 + n * W;
      const @T wn = wb[n]; vec_@S acc = {0}; int64_t j = 0;
      for (; j + VL_@S <= W; j += VL_@S) {
        const vec_@S gj = ld_@S(g + j), ej = ld_@S(e_ + j), gm0 = gj * ld_@S(m0 + j);
        st_@S(dm + j, gj * (1 - wn * ej)); acc += gj * ld_@S(v_ + j) - gm0 * ej;
        st_@S(de + j, ld_@S(de + j) - wn * gm0); st_@S(dv + j, ld_@S(dv + j) + wn * gj);
      }
      @T s = hsum_@S(acc);
      for (; j < W; ++j) {
        const @T gm0 = g[j] * m0[j];
        dm[j] = g[j] * (1 - wn * e_[j]); s += g[j] * v_[j] - gm0 * e_[j]; de[j] -= wn * gm0; dv[j] += wn * g[j];
      }
      dw[n] += s;
    }
    for (int64_t n = 0; n < N; ++n) {
      const @T sc = dw[n] * gW;
      dgw += dw[n] * (c[n] + gA * (a[n] - c[n])); dga += sc * (a[n] - c[n]);
      dc[n] = sc * (1 - gA); da[n] = sc * gA;
    }
    out[6][b * st[3]] = dga; out[7][b * st[4]] = dgw;
    content_bwd_@S(N, W, 1, M0b, wk + b * st[1], 0, ws + b * st[2], c, sim, den, mn, knorm + b, dc, NULL, NULL,
                   dM0, out[4] + b * st[1], out[5] + b * st[2], gm, gd);
    @T later = 0;
    for (int64_t k = N - 1; k >= 0; --k) {
      const int64_t n = ib[k]; const @T g = da[n];
      du[n] = Gu[b * N + n] + (later / ss[k] - g * ex[k]) * (1 - eps);
      later += g * a[n];
    }
    @T* restrict dfree = out[1] + b * st[0]; @T* restrict dV = out[2] + b * R * N; const @T* Vb = V + b * R * N;
    for (int64_t n = 0; n < N; ++n) { out[0][b * N + n] = du[n] * ret[n] * (1 - ww0[b * N + n]); run[n] = 1; }
    for (int64_t h = 0; h < R; ++h)  /* retention = prod_h (1 - f_h V_h): prefix products, then suffix products */
      for (int64_t n = 0; n < N; ++n) { pre[h * N + n] = run[n]; run[n] *= 1 - f[h] * Vb[h * N + n]; }
    for (int64_t n = 0; n < N; ++n) run[n] = -du[n] * kept[n];
    for (int64_t h = R - 1; h >= 0; --h) {
      @T acc = 0;
      for (int64_t n = 0; n < N; ++n) {
        const @T q = run[n] * pre[h * N + n];
        acc += q * Vb[h * N + n]; dV[h * N + n] = q * f[h]; run[n] *= 1 - f[h] * Vb[h * N + n];
      }
      dfree[h] = acc;
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
    @T* Vb = V + b * R * N; @T* r = rw + b * R * W;
    for (int64_t h = 0; h < R; ++h) {
      const @T* m = md + b * st[2] + h * 3; const @T* f = fw + (b * R + h) * N; const @T* k = bw + (b * R + h) * N;
      for (int64_t n = 0; n < N; ++n) Vb[h * N + n] = m[0] * k[n] + m[1] * f[n] + m[2] * c[h * N + n];
    }
    rows_combine_@S(N, W, R, Vb, N, Mb, r, 0);
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
  @T *dcr = scratch, *gm = scratch + R * N, *gd = gm + N, *dv = gd + R * N;  /* [R, N], [N], [R, N], [R, N] */
  for (int64_t b = 0; b < B; ++b) {
    const @T* Mb = M + b * N * W; const @T* s3 = sv + b * 3 * R * N; @T* restrict dM = out[0] + b * N * W;
    const @T* Vb = V + b * R * N; const @T* G = Grw + b * R * W;
    for (int64_t h = 0; h < R; ++h) {  /* read weights V: dV = GV + Grw M; read modes */
      const int64_t o = (b * R + h) * N; const @T* m = md + b * st[2] + h * 3; @T* dvh = dv + h * N;
      @T* dm = out[5] + b * st[2] + h * 3; @T d0 = 0, d1 = 0, d2 = 0;
      row_dots_@S(N, W, Mb, G + h * W, dvh);
      for (int64_t n = 0; n < N; ++n) {
        dvh[n] += GV[o + n];
        d0 += dvh[n] * bw[o + n]; d1 += dvh[n] * fw[o + n]; d2 += dvh[n] * s3[h * N + n];
        out[4][o + n] = m[0] * dvh[n]; out[3][o + n] = m[1] * dvh[n]; dcr[h * N + n] = m[2] * dvh[n];
      }
      dm[0] = d0; dm[1] = d1; dm[2] = d2;
    }
    content_bwd_@S(N, W, R, Mb, rk + b * st[0], W, rs + b * st[1], s3, s3 + R * N, s3 + 2 * R * N,
                   mnorm + b * N, knorm + b * R, dcr, Vb, G, dM, out[1] + b * st[0], out[2] + b * st[1], gm, gd);
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

_SOURCE = "#include <stdint.h>\n#include <string.h>\n#include <math.h>\n" + build.FTZ + PRELUDE + "".join(
    (HELPERS + _BODY).replace("@SQRT", q).replace("@EXP", e).replace("@LOG1P", l).replace("@K", k).replace("@T", t)
    .replace("@S", s)
    for t, s, q, e, l, k in (("float", "f32", "sqrtf", "expf", "log1pf", "uint32_t"),
                             ("double", "f64", "sqrt", "exp", "log1p", "uint64_t")))
