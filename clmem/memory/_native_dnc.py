"""Optional C kernels for one DNC memory step with one write head, as two autograd nodes around the link step.

``_PreLink``: usage, allocation (stable sort), write content lookup, write weights, erase-and-write, precedence;
``_PostLink``: read content lookup, read-mode mixing, read words. Values and gradients are those of the pure
functions in ``addressing`` (``update_usage``, ``allocation_weights``, ``content_weights``, ``write_weights``,
``erase_and_write``, ``update_precedence``, ``read_weights``, ``read_memory``): the formulas below are their
backward passes written out per batch item. The pure functions stay the specification; the tests compare both
in float64 and run ``gradcheck``. For small memories the composed path is bound by per-op dispatch (hundreds of
small torch ops per step); these nodes do the same work in two C calls forward and two backward.

Built and loaded like ``_native_link`` (``CLMEM_NATIVE=0`` disables; ``None`` without a C compiler).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _native_link as build

_BODY = r"""
/* content lookup of H keys (key h at keys + h * kh) on M [N, W]: c, sim, den [H, N], mnorm [N], knorm [H] */
static void content_fwd_@S(int64_t N, int64_t W, int64_t H, const @T* restrict M, const @T* restrict keys, int64_t kh,
                           const @T* restrict str, @T eps, @T* restrict c, @T* restrict sim, @T* restrict den, @T* restrict mnorm, @T* restrict knorm) {
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
                           const @T* restrict str, const @T* restrict c, const @T* restrict sim, const @T* restrict den, const @T* restrict mnorm,
                           const @T* restrict knorm, const @T* restrict dc, @T* restrict dM, @T* restrict dkeys, @T* restrict dstr, @T* restrict gm) {
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
                    const @T* restrict u0, const @T* restrict ww0, const @T* restrict V, const @T* restrict M0, const @T* restrict p0, const @T* restrict fg,
                    const @T* restrict wk, const @T* restrict ws, const @T* restrict ga, const @T* restrict gw, const @T* restrict er, const @T* restrict wv,
                    @T* restrict u, @T* restrict w, @T* restrict M, @T* restrict p, @T* restrict sv, @T* restrict knorm, int64_t* restrict idx, int64_t* restrict tmp) {
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
                     const @T* restrict ww0, const @T* restrict V, const @T* restrict M0, const @T* restrict p0, const @T* restrict fg, const @T* restrict wk,
                     const @T* restrict ws, const @T* restrict ga, const @T* restrict gw, const @T* restrict er, const @T* restrict wv, const @T* restrict w,
                     const @T* restrict sv, const @T* restrict knorm, const int64_t* restrict idx, const @T* restrict Gu, const @T* restrict Gw,
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
                     const @T* restrict M, const @T* restrict rk, const @T* restrict rs, const @T* restrict fw, const @T* restrict bw, const @T* restrict md,
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
                      const @T* restrict M, const @T* restrict rk, const @T* restrict rs, const @T* restrict fw, const @T* restrict bw, const @T* restrict md,
                      const @T* restrict V, const @T* restrict sv, const @T* restrict mnorm, const @T* restrict knorm, const @T* restrict GV,
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

_I64, _PTR, _F64 = build.ctypes.c_int64, build.ctypes.c_void_p, build.ctypes.c_double
_HEAD = [_I64] * 4 + [_PTR, _F64]
_ACT = [_I64] * 3 + [_PTR]
_lib = None
_tried = False

# interface fields (offsets in the activated interface row) each node reads, in the kernels' order
PRE_FIELDS = ("free_gates", "write_keys", "write_strengths", "allocation_gates", "write_gates", "erase_vectors",
              "write_vectors")
POST_FIELDS = ("read_keys", "read_strengths", "read_modes")


def kernels():
    """The loaded library or ``None`` (see ``_native_link.load_library``)."""
    global _lib, _tried
    if not _tried:
        _tried, _lib = True, build.load_library(_SOURCE, "dnc_step", {
            "pre_forward": _HEAD + [_PTR] * 20, "pre_backward": _HEAD + [_PTR] * 21,
            "post_forward": _HEAD + [_PTR] * 11, "post_backward": _HEAD + [_PTR] * 14,
            "activate": _ACT + [_PTR] * 2, "activate_backward": _ACT + [_PTR] * 4})
    return _lib


@functools.lru_cache(maxsize=64)
def ranges_array(ranges: Tuple[int, ...]):
    """``ctypes`` int64 array of an interface's activation ranges (cached; modules keep the plain tuple)."""
    return (_I64 * len(ranges))(*ranges)


def usable(*tensors: Tensor) -> bool:
    """Loaded, CPU, one float32/float64 dtype."""
    if kernels() is None:
        return False
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(t.device.type == "cpu" and t.dtype == dtype
                                                           for t in tensors)


def _fn(name: str, like: Tensor):
    return getattr(kernels(), f"{name}_{'f32' if like.dtype == torch.float32 else 'f64'}")


def _ptr(x) -> Optional[int]:
    """Pointer argument: a tensor's data, an int address, or a ``ctypes`` array of pointers for a list."""
    if isinstance(x, (list, tuple)):
        return (_PTR * len(x))(*(_ptr(t) for t in x))
    return x if isinstance(x, int) else x.data_ptr()


def _call(name: str, like: Tensor, sizes, strides, eps: float, *args) -> None:
    _fn(name, like)(*sizes, (_I64 * len(strides))(*strides), eps, *(_ptr(a) for a in args))


class Activate(torch.autograd.Function):
    """Interface activations on ``[B, I]`` rows as one node; ``ranges`` is a ``ctypes`` array of ``K`` quadruples
    ``(start, length, kind, group)`` (kind 0 raw, 1 oneplus, 2 sigmoid, 3 softmax over groups)."""

    @staticmethod
    def forward(ctx, vector, ranges):
        vector = vector.contiguous()
        out = torch.empty_like(vector)
        _fn("activate", vector)(vector.shape[0], vector.shape[1], len(ranges) // 4, ranges, vector.data_ptr(),
                                out.data_ptr())
        ctx.save_for_backward(vector, out)
        ctx.ranges = ranges
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        vector, out = ctx.saved_tensors
        grad, result = grad.contiguous(), torch.empty_like(vector)
        _fn("activate_backward", vector)(vector.shape[0], vector.shape[1], len(ctx.ranges) // 4, ctx.ranges,
                                         vector.data_ptr(), out.data_ptr(), grad.data_ptr(), result.data_ptr())
        return result, None


def _fields(act: Tensor, offsets) -> list:
    """Addresses of the fields at ``offsets`` in the first row of ``act`` (rows are ``act.shape[1]`` apart)."""
    base, size = act.data_ptr(), act.element_size()
    return [base + off * size for off in offsets]


class PreLink(torch.autograd.Function):
    """``(u0 [B,N], ww0 [B,1,N], V [B,R,N], M0 [B,N,W], p0 [B,1,N], act [B,I], offsets, eps)`` -> ``(u [B,N],
    w [B,1,N], M [B,N,W], p [B,1,N])``; ``act`` is the activated interface, ``offsets`` those of ``PRE_FIELDS``."""

    @staticmethod
    def forward(ctx, u0, ww0, V, M0, p0, act, offsets, eps):
        B, N, W = M0.shape
        R = V.shape[1]
        u0, ww0, V, M0, p0, act = (x.contiguous() for x in (u0, ww0, V, M0, p0, act))
        u, w, M, p = u0.new_empty(B, N), u0.new_empty(B, 1, N), torch.empty_like(M0), u0.new_empty(B, 1, N)
        sv, knorm = u0.new_empty(B, 9, N), u0.new_empty(B)
        idx, tmp = torch.empty(B, N, dtype=torch.int64), torch.empty(N, dtype=torch.int64)
        strides = [act.shape[1]] * len(offsets)
        _call("pre_forward", u0, (B, N, W, R), strides, eps, u0, ww0, V, M0, p0, *_fields(act, offsets), u, w, M,
              p, sv, knorm, idx, tmp)
        ctx.save_for_backward(ww0, V, M0, p0, act, w, sv, knorm, idx)
        ctx.meta = ((B, N, W, R), strides, offsets, eps)
        return u, w, M, p

    @staticmethod
    @once_differentiable
    def backward(ctx, Gu, Gw, GM, Gp):
        sizes, strides, offsets, eps = ctx.meta
        B, N, W, R = sizes
        ww0, V, M0, p0, act, w, sv, knorm, idx = ctx.saved_tensors
        dact = torch.zeros_like(act)
        du0, dV, dM0, dp0 = M0.new_empty(B, N), M0.new_empty(B, R, N), M0.new_empty(B, N, W), M0.new_empty(B, 1, N)
        f = _fields(dact, offsets)  # free, wkey, wstr, ga, gw, erase, wvec gradients go straight into dact
        outs = [du0, f[0], dV, dM0, f[1], f[2], f[3], f[4], f[5], f[6], dp0]
        grads = [g.contiguous() for g in (Gu, Gw, GM, Gp)]
        _call("pre_backward", M0, sizes, strides, eps, ww0, V, M0, p0, *_fields(act, offsets), w, sv, knorm, idx,
              *grads, outs, M0.new_empty(5 * N + 2 * R))
        return du0, None, dV, dM0, dp0, dact, None, None


class PostLink(torch.autograd.Function):
    """``(M [B,N,W], act [B,I], forward [B,R,N], backward [B,R,N], offsets, eps)`` -> ``(read_weights [B,R,N],
    read_words [B,R,W])``; ``offsets`` are those of ``POST_FIELDS`` in the activated interface ``act``."""

    @staticmethod
    def forward(ctx, M, act, fw, bw, offsets, eps):
        B, N, W = M.shape
        R = fw.shape[1]
        M, act, fw, bw = (x.contiguous() for x in (M, act, fw, bw))
        V, rw = M.new_empty(B, R, N), M.new_empty(B, R, W)
        sv, mnorm, knorm = M.new_empty(B, 3, R, N), M.new_empty(B, N), M.new_empty(B, R)
        strides = [act.shape[1]] * len(offsets)
        rk, rs, md = _fields(act, offsets)
        _call("post_forward", M, (B, N, W, R), strides, eps, M, rk, rs, fw, bw, md, V, rw, sv, mnorm, knorm)
        ctx.save_for_backward(M, act, fw, bw, V, sv, mnorm, knorm)
        ctx.meta = ((B, N, W, R), strides, offsets, eps)
        return V, rw

    @staticmethod
    @once_differentiable
    def backward(ctx, GV, Grw):
        sizes, strides, offsets, eps = ctx.meta
        B, N, W, R = sizes
        M, act, fw, bw, V, sv, mnorm, knorm = ctx.saved_tensors
        dact, dM, dfw, dbw = torch.zeros_like(act), M.new_empty(B, N, W), M.new_empty(B, R, N), M.new_empty(B, R, N)
        drk, drs, dmd = _fields(dact, offsets)
        rk, rs, md = _fields(act, offsets)
        _call("post_backward", M, sizes, strides, eps, M, rk, rs, fw, bw, md, V, sv, mnorm, knorm,
              GV.contiguous(), Grw.contiguous(), [dM, drk, drs, dfw, dbw, dmd], M.new_empty(R * N + N))
        return dM, dact, dfw, dbw, None, None
