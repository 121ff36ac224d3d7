/* The DNC step kernels (clmem/memory/_native_dnc.py), one write head: PreLink (usage, allocation by a stable radix
   sort, write content lookup, write weights, erase-and-write, precedence), PostLink (read content lookup, read-mode
   mixing, read words), the interface activations, and the backward pass of each, per batch item. The pure
   functions of clmem/memory/addressing.py are the specification. */
#include "clmem_native.h"
#include "vec.h"

/* content lookup of H keys (key h at keys + h * kh) on M [N, W]: c, sim, den [H, N], mnorm [N], knorm [H] */
static void content_fwd(int64_t N, int64_t W, int64_t H, const real* restrict M, const real* restrict keys,
                        int64_t kh, const real* restrict str, real eps, real* restrict c, real* restrict sim,
                        real* restrict den, real* restrict mnorm, real* restrict knorm) {
  row_dots(N, W, M, NULL, mnorm);
  for (int64_t n = 0; n < N; ++n) mnorm[n] = SQRT(mnorm[n] + eps);
  for (int64_t h = 0; h < H; ++h) {
    const real* k = keys + h * kh; real* ch = c + h * N; real* sh = sim + h * N; real* dh = den + h * N; real z = 0;
    knorm[h] = SQRT(vdot(W, k, k) + eps);
    row_dots(N, W, M, k, sh);
    for (int64_t n = 0; n < N; ++n) { dh[n] = knorm[h] * mnorm[n] + eps; sh[n] /= dh[n]; ch[n] = sh[n] * str[h]; }
    const real mx = vmax(N, ch);
    for (int64_t n = 0; n < N; ++n) ch[n] -= mx;
    exp_nonpositive(N, ch);
    for (int64_t n = 0; n < N; ++n) z += ch[n];
    for (int64_t n = 0; n < N; ++n) ch[n] /= z;
  }
}

/* backward of content_fwd for incoming dc [H, N]: dkeys [H, W] and dstr [H] written; dM [N, W] += ..., or with
   V [H, N] and G [H, W] dM = V^T G + ...; scratch gm [N], gd [H, N] */
static void content_bwd(int64_t N, int64_t W, int64_t H, const real* restrict M, const real* restrict keys,
                        int64_t kh, const real* restrict str, const real* restrict c, const real* restrict sim,
                        const real* restrict den, const real* restrict mnorm, const real* restrict knorm,
                        const real* restrict dc, const real* restrict V, const real* restrict G, real* restrict dM,
                        real* restrict dkeys, real* restrict dstr, real* restrict gm, real* restrict gd) {
  memset(gm, 0, sizeof(real) * N);
  for (int64_t h = 0; h < H; ++h) {  /* per head over n: the gradients of the dot products (gd) and of the norms */
    const real* ch = c + h * N; const real* dch = dc + h * N; const real* sh = sim + h * N;
    const real* dh = den + h * N; real* gdh = gd + h * N; real dot = 0, db = 0, gkn = 0;
    for (int64_t n = 0; n < N; ++n) dot += dch[n] * ch[n];
    for (int64_t n = 0; n < N; ++n) {
      const real gl = ch[n] * (dch[n] - dot), gdot = gl * str[h] / dh[n], gden = -gdot * sh[n];
      db += gl * sh[n]; gkn += gden * mnorm[n]; gm[n] += gden * knorm[h]; gdh[n] = gdot;
    }
    dstr[h] = db;
    const real* k = keys + h * kh; real* dk = dkeys + h * W; const real f = gkn / knorm[h];
    for (int64_t j = 0; j < W; ++j) dk[j] = k[j] * f;
  }
  rows_combine(N, W, H, gd, N, M, dkeys, 1);
  if (V) rows_expand(N, W, H, V, N, G, W, dM, 0);  /* dM (+)= V^T G + gd^T keys + M gm / mnorm */
  rows_expand(N, W, H, gd, N, keys, kh, dM, 1);
  for (int64_t n = 0; n < N; ++n) {
    const real f = gm[n] / mnorm[n]; const real* m = M + n * W; real* dm = dM + n * W;
    for (int64_t j = 0; j < W; ++j) dm[j] += m[j] * f;
  }
}

/* stable ascending argsort: LSD radix sort (8 bits per pass) of the order-preserving bit patterns of x (sign bit
   flipped for x >= 0, all bits flipped for x < 0); passes where all keys share the byte are skipped. tmp [3N] */
static void argsort(int64_t N, const real* restrict x, int64_t* restrict idx, int64_t* restrict tmp) {
  uint64_t *key = (uint64_t*)(tmp + N), *key2 = (uint64_t*)(tmp + 2 * N); int64_t *from = idx, *to = tmp;
  const real_bits sign = (real_bits)1 << (8 * sizeof(real_bits) - 1);
  for (int64_t n = 0; n < N; ++n) {
    real_bits bits; memcpy(&bits, x + n, sizeof bits);
    key[n] = bits & sign ? (real_bits)~bits : bits | sign; idx[n] = n;
  }
  for (int shift = 0; shift < 8 * (int)sizeof(real_bits); shift += 8) {
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
void EXPORT(pre_forward)(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                         /* state */ const real* restrict u0, const real* restrict ww0, const real* restrict V,
                         const real* restrict M0, const real* restrict p0,
                         /* interface fields (row b at + b * st[f]) */ const real* restrict fg,
                         const real* restrict wk, const real* restrict ws, const real* restrict ga,
                         const real* restrict gw, const real* restrict er, const real* restrict wv,
                         /* outputs */ real* restrict u, real* restrict w, real* restrict M, real* restrict p,
                         /* saved */ real* restrict sv, real* restrict knorm, int64_t* restrict idx,
                         /* scratch */ int64_t* restrict tmp) {
  FTZ_BEGIN
  const real eps = (real)eps_;
  for (int64_t b = 0; b < B; ++b) {
    const real* Vb = V + b * R * N; const real* f = fg + b * st[0]; const real* M0b = M0 + b * N * W;
    real* s9 = sv + b * 9 * N; real *kept = s9, *ret = s9 + N, *c = s9 + 2 * N, *sim = s9 + 3 * N;
    real *den = s9 + 4 * N, *mn = s9 + 5 * N, *a = s9 + 6 * N, *ss = s9 + 7 * N, *ex = s9 + 8 * N;
    real* ub = u + b * N; real* wb = w + b * N; int64_t* ib = idx + b * N;
    for (int64_t n = 0; n < N; ++n) ret[n] = 1;
    for (int64_t h = 0; h < R; ++h)
      for (int64_t n = 0; n < N; ++n) ret[n] *= 1 - f[h] * Vb[h * N + n];
    for (int64_t n = 0; n < N; ++n) {
      const real wr = ww0[b * N + n];
      kept[n] = wr + u0[b * N + n] * (1 - wr); ub[n] = kept[n] * ret[n]; ss[n] = eps + (1 - eps) * ub[n];
    }
    for (int64_t n = 0; n < N; ++n) a[n] = ss[n];
    argsort(N, a, ib, tmp);
    real e = 1;
    for (int64_t k = 0; k < N; ++k) {
      ss[k] = a[ib[k]];
    }
    for (int64_t k = 0; k < N; ++k) { ex[k] = e; a[ib[k]] = (1 - ss[k]) * e; e *= ss[k]; }
    content_fwd(N, W, 1, M0b, wk + b * st[1], 0, ws + b * st[2], eps, c, sim, den, mn, knorm + b);
    const real gA = ga[b * st[3]], gW = gw[b * st[4]]; real sw = 0;
    for (int64_t n = 0; n < N; ++n) { wb[n] = gW * (c[n] + gA * (a[n] - c[n])); sw += wb[n]; }
    for (int64_t n = 0; n < N; ++n) p[b * N + n] = (1 - sw) * p0[b * N + n] + wb[n];
    const real* e_ = er + b * st[5]; const real* v_ = wv + b * st[6];
    for (int64_t n = 0; n < N; ++n) {
      real* mo = M + (b * N + n) * W; const real* mi = M0b + n * W; const real wn = wb[n];
      for (int64_t j = 0; j < W; ++j) mo[j] = mi[j] * (1 - wn * e_[j]) + wn * v_[j];
    }
  }
  FTZ_END
}

/* gradients: out[0] du0 [B,N], out[1] dfree [B,R], out[2] dV [B,R,N], out[3] dM0 [B,N,W], out[4] dwkey [B,W],
   out[5] dwstr [B], out[6] dga [B], out[7] dgw [B], out[8] derase [B,W], out[9] dwvec [B,W], out[10] dp0 [B,N] */
void EXPORT(pre_backward)(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                          /* inputs */ const real* restrict ww0, const real* restrict V, const real* restrict M0,
                          const real* restrict p0, const real* restrict fg, const real* restrict wk,
                          const real* restrict ws, const real* restrict ga, const real* restrict gw,
                          const real* restrict er, const real* restrict wv,
                          /* saved */ const real* restrict w, const real* restrict sv, const real* restrict knorm,
                          const int64_t* restrict idx,
                          /* incoming */ const real* restrict Gu, const real* restrict Gw, const real* restrict GM,
                          const real* restrict Gp, real** out, real* restrict scratch) {
  FTZ_BEGIN
  const real eps = (real)eps_;
  real *dw = scratch, *dc = scratch + N, *da = scratch + 2 * N, *gm = scratch + 3 * N, *gd = scratch + 4 * N;
  real *du = scratch + 5 * N, *run = scratch + 6 * N, *pre = scratch + 7 * N;  /* pre [R, N] */
  for (int64_t b = 0; b < B; ++b) {
    const real* s9 = sv + b * 9 * N; const real *kept = s9, *ret = s9 + N, *c = s9 + 2 * N, *sim = s9 + 3 * N;
    const real *den = s9 + 4 * N, *mn = s9 + 5 * N, *a = s9 + 6 * N, *ss = s9 + 7 * N, *ex = s9 + 8 * N;
    const real* wb = w + b * N; const real* M0b = M0 + b * N * W; const int64_t* ib = idx + b * N;
    const real* e_ = er + b * st[5]; const real* v_ = wv + b * st[6]; const real* f = fg + b * st[0];
    const real gA = ga[b * st[3]], gW = gw[b * st[4]];
    real* restrict dM0 = out[3] + b * N * W; real* restrict de = out[8] + b * st[5];
    real* restrict dv = out[9] + b * st[6];
    real sw = 0, gp = 0, dgw = 0, dga = 0;
    for (int64_t n = 0; n < N; ++n) { sw += wb[n]; gp += Gp[b * N + n] * p0[b * N + n]; }
    for (int64_t n = 0; n < N; ++n) {
      out[10][b * N + n] = Gp[b * N + n] * (1 - sw);
      dw[n] = Gw[b * N + n] + Gp[b * N + n] - gp;
    }
    for (int64_t j = 0; j < W; ++j) { de[j] = 0; dv[j] = 0; }
    for (int64_t n = 0; n < N; ++n) {  /* erase-and-write: dw += g . (v - M0 e), de -= w g M0, dv += w g */
      const real* g = GM + (b * N + n) * W; const real* m0 = M0b + n * W; real* dm = dM0 + n * W;
      const real wn = wb[n]; vec acc = {0}; int64_t j = 0;
      for (; j + VL <= W; j += VL) {
        const vec gj = vload(g + j), ej = vload(e_ + j), gm0 = gj * vload(m0 + j);
        vstore(dm + j, gj * (1 - wn * ej)); acc += gj * vload(v_ + j) - gm0 * ej;
        vstore(de + j, vload(de + j) - wn * gm0); vstore(dv + j, vload(dv + j) + wn * gj);
      }
      real s = hsum(acc);
      for (; j < W; ++j) {
        const real gm0 = g[j] * m0[j];
        dm[j] = g[j] * (1 - wn * e_[j]); s += g[j] * v_[j] - gm0 * e_[j]; de[j] -= wn * gm0; dv[j] += wn * g[j];
      }
      dw[n] += s;
    }
    for (int64_t n = 0; n < N; ++n) {
      const real sc = dw[n] * gW;
      dgw += dw[n] * (c[n] + gA * (a[n] - c[n])); dga += sc * (a[n] - c[n]);
      dc[n] = sc * (1 - gA); da[n] = sc * gA;
    }
    out[6][b * st[3]] = dga; out[7][b * st[4]] = dgw;
    content_bwd(N, W, 1, M0b, wk + b * st[1], 0, ws + b * st[2], c, sim, den, mn, knorm + b, dc, NULL, NULL,
                   dM0, out[4] + b * st[1], out[5] + b * st[2], gm, gd);
    real later = 0;
    for (int64_t k = N - 1; k >= 0; --k) {
      const int64_t n = ib[k]; const real g = da[n];
      du[n] = Gu[b * N + n] + (later / ss[k] - g * ex[k]) * (1 - eps);
      later += g * a[n];
    }
    real* restrict dfree = out[1] + b * st[0]; real* restrict dV = out[2] + b * R * N; const real* Vb = V + b * R * N;
    for (int64_t n = 0; n < N; ++n) { out[0][b * N + n] = du[n] * ret[n] * (1 - ww0[b * N + n]); run[n] = 1; }
    for (int64_t h = 0; h < R; ++h)  /* retention = prod_h (1 - f_h V_h): prefix products, then suffix products */
      for (int64_t n = 0; n < N; ++n) { pre[h * N + n] = run[n]; run[n] *= 1 - f[h] * Vb[h * N + n]; }
    for (int64_t n = 0; n < N; ++n) run[n] = -du[n] * kept[n];
    for (int64_t h = R - 1; h >= 0; --h) {
      real acc = 0;
      for (int64_t n = 0; n < N; ++n) {
        const real q = run[n] * pre[h * N + n];
        acc += q * Vb[h * N + n]; dV[h * N + n] = q * f[h]; run[n] *= 1 - f[h] * Vb[h * N + n];
      }
      dfree[h] = acc;
    }
  }
  FTZ_END
}

/* read: sv [3, R, N] = c, sim, den; mnorm [B, N]; knorm [B, R]; modes [B, R, 3] = backward, forward, content */
void EXPORT(post_forward)(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                          /* inputs */ const real* restrict M, const real* restrict rk, const real* restrict rs,
                          const real* restrict fw, const real* restrict bw, const real* restrict md,
                          /* outputs */ real* restrict V, real* restrict rw,
                          /* saved */ real* restrict sv, real* restrict mnorm, real* restrict knorm) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b) {
    const real* Mb = M + b * N * W; real* s3 = sv + b * 3 * R * N; real* c = s3;
    content_fwd(N, W, R, Mb, rk + b * st[0], W, rs + b * st[1], (real)eps_, c, s3 + R * N, s3 + 2 * R * N,
                   mnorm + b * N, knorm + b * R);
    real* Vb = V + b * R * N; real* r = rw + b * R * W;
    for (int64_t h = 0; h < R; ++h) {
      const real* m = md + b * st[2] + h * 3;
      const real* f = fw + (b * R + h) * N; const real* k = bw + (b * R + h) * N;
      for (int64_t n = 0; n < N; ++n) Vb[h * N + n] = m[0] * k[n] + m[1] * f[n] + m[2] * c[h * N + n];
    }
    rows_combine(N, W, R, Vb, N, Mb, r, 0);
  }
  FTZ_END
}

/* gradients: out[0] dM [B,N,W], out[1] drkeys [B,R,W], out[2] drstr [B,R], out[3] dforward [B,R,N],
   out[4] dbackward [B,R,N], out[5] dmodes [B,R,3] */
void EXPORT(post_backward)(int64_t B, int64_t N, int64_t W, int64_t R, const int64_t* st, double eps_,
                           /* inputs */ const real* restrict M, const real* restrict rk, const real* restrict rs,
                           const real* restrict fw, const real* restrict bw, const real* restrict md,
                           /* saved */ const real* restrict V, const real* restrict sv, const real* restrict mnorm,
                           const real* restrict knorm,
                           /* incoming */ const real* restrict GV, const real* restrict Grw,
                           real** out, real* restrict scratch) {
  FTZ_BEGIN
  (void)eps_;
  real *dcr = scratch, *gm = scratch + R * N, *gd = gm + N, *dv = gd + R * N;  /* [R, N], [N], [R, N], [R, N] */
  for (int64_t b = 0; b < B; ++b) {
    const real* Mb = M + b * N * W; const real* s3 = sv + b * 3 * R * N; real* restrict dM = out[0] + b * N * W;
    const real* Vb = V + b * R * N; const real* G = Grw + b * R * W;
    for (int64_t h = 0; h < R; ++h) {  /* read weights V: dV = GV + Grw M; read modes */
      const int64_t o = (b * R + h) * N; const real* m = md + b * st[2] + h * 3; real* dvh = dv + h * N;
      real* dm = out[5] + b * st[2] + h * 3; real d0 = 0, d1 = 0, d2 = 0;
      row_dots(N, W, Mb, G + h * W, dvh);
      for (int64_t n = 0; n < N; ++n) {
        dvh[n] += GV[o + n];
        d0 += dvh[n] * bw[o + n]; d1 += dvh[n] * fw[o + n]; d2 += dvh[n] * s3[h * N + n];
        out[4][o + n] = m[0] * dvh[n]; out[3][o + n] = m[1] * dvh[n]; dcr[h * N + n] = m[2] * dvh[n];
      }
      dm[0] = d0; dm[1] = d1; dm[2] = d2;
    }
    content_bwd(N, W, R, Mb, rk + b * st[0], W, rs + b * st[1], s3, s3 + R * N, s3 + 2 * R * N,
                   mnorm + b * N, knorm + b * R, dcr, Vb, G, dM, out[1] + b * st[0], out[2] + b * st[1], gm, gd);
  }
  FTZ_END
}

/* interface activations over [B, I] rows; ranges: K quadruples (start, length, kind, group): kind 0 raw, 1 oneplus
   (1 + softplus, threshold 20 as torch), 2 sigmoid, 3 softmax over consecutive groups of `group` */
void EXPORT(activate)(int64_t B, int64_t I, int64_t K, const int64_t* rg, const real* restrict x, real* restrict y) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < K; ++q) {
      const int64_t s0 = b * I + rg[4 * q], len = rg[4 * q + 1], kind = rg[4 * q + 2], grp = rg[4 * q + 3];
      const real* xs = x + s0; real* ys = y + s0;
      for (int64_t i = 0; i < len; ++i) {
        if (kind == 0) ys[i] = xs[i];
        else if (kind == 1) ys[i] = 1 + (xs[i] > 20 ? xs[i] : LOG1P(EXP(xs[i])));
        else if (kind == 2) ys[i] = 1 / (1 + EXP(-xs[i]));
      }
      for (int64_t g0 = 0; kind == 3 && g0 < len; g0 += grp) {
        real mx = xs[g0], z = 0;
        for (int64_t i = 1; i < grp; ++i) mx = xs[g0 + i] > mx ? xs[g0 + i] : mx;
        for (int64_t i = 0; i < grp; ++i) { ys[g0 + i] = EXP(xs[g0 + i] - mx); z += ys[g0 + i]; }
        for (int64_t i = 0; i < grp; ++i) ys[g0 + i] /= z;
      }
    }
  FTZ_END
}

void EXPORT(activate_backward)(int64_t B, int64_t I, int64_t K, const int64_t* rg, const real* restrict x,
                               const real* restrict y, const real* restrict gy, real* restrict gx) {
  FTZ_BEGIN
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < K; ++q) {
      const int64_t s0 = b * I + rg[4 * q], len = rg[4 * q + 1], kind = rg[4 * q + 2], grp = rg[4 * q + 3];
      const real *xs = x + s0, *ys = y + s0, *g = gy + s0; real* d = gx + s0;
      for (int64_t i = 0; i < len; ++i) {
        if (kind == 0) d[i] = g[i];
        else if (kind == 1) d[i] = xs[i] > 20 ? g[i] : g[i] / (1 + EXP(-xs[i]));
        else if (kind == 2) d[i] = g[i] * ys[i] * (1 - ys[i]);
      }
      for (int64_t g0 = 0; kind == 3 && g0 < len; g0 += grp) {
        real dot = 0;
        for (int64_t i = 0; i < grp; ++i) dot += g[g0 + i] * ys[g0 + i];
        for (int64_t i = 0; i < grp; ++i) d[g0 + i] = ys[g0 + i] * (g[g0 + i] - dot);
      }
    }
  FTZ_END
}
