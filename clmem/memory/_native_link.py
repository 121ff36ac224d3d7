"""Optional C kernels for the ``LinkTape`` link steps: one pass over each link matrix per step.

The torch-op path of ``LinkTape`` needs several passes (and several hundred small ops) per step; these kernels do
the link update with both directional reads, and the whole backward step, row by row in one sweep over the
``[M, N, N]`` matrices (``M = B*H``), so the link is read/written about once from main memory per step.

The C source below is compiled on first use with the system C compiler (``cc -O3 -march=native -fopenmp-simd``,
no OpenMP runtime: single-threaded) into a cache directory (``$CLMEM_NATIVE_CACHE``, default
``~/.cache/clmem/native``) keyed by the source, the flags and the CPU, and loaded with ``ctypes``. When no compiler
is found, the build fails, or ``CLMEM_NATIVE=0`` is set, ``kernels()`` returns ``None`` and ``LinkTape`` uses its
torch-op path (same values up to float rounding; the tests check both against the reference functions).

Per row ``i`` of one matrix (``w = w^w_t``, ``p = p_{t-1}``, ``v = w^r_{t-1}`` ``[R, N]``)::

    forward:  L[i, j] = (1 - w_i - w_j) P[i, j] + w_i p_j  (L[i, i] = 0),  f[r, i] = L[i] . v[r],  b[r] += v[r, i] L[i]
    backward: g = G[i] + gf[:, i] v + v[:, i] gb  (g_i = 0);  dv[r] += gf[r, i] L[i];  dv[r, i] += gb[r] . L[i]
              dp += w_i g;  dw_i = g . (p - P[i]);  dw -= g * P[i] (columns);  G[i] = (1 - w_i - w) g

with ``P = L_{t-1}`` and ``L = L_t`` recomputed from ``P`` on the fly (the backward never reads ``L_t``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

# denormals (tiny products of weights) are flushed to zero inside the kernels: x86 handles them in slow microcode
FTZ = r"""
#if defined(__SSE__)
#include <xmmintrin.h>
#define FTZ_BEGIN const unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_END _mm_setcsr(csr_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif
"""

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
""" + FTZ + r"""

/* Read heads go in groups of 4 (missing heads point at a zero row and write to a junk row), so one vectorised
   pass over a row handles 4 heads. */
#define DEFINE_KERNELS(T, S)                                                                              \
static void heads_##S(int64_t R, int64_t N, int64_t g0, const T* base, T* junk, const T* zero,           \
                      const T* hs[4], T* hd[4]) {                                                         \
  for (int k = 0; k < 4; ++k) {                                                                           \
    int64_t r = g0 + k;                                                                                   \
    hs[k] = r < R ? base + r * N : zero; hd[k] = junk + k * N;                                            \
  }                                                                                                       \
}                                                                                                         \
                                                                                                          \
void link_forward_##S(int64_t M, int64_t N, int64_t R, const T* prev, T* out, const T* w, const T* p,     \
                      const T* v, T* f, T* b, T* scratch) {                                               \
  FTZ_BEGIN                                                                                               \
  T* zero = scratch; T* junk = scratch + N; memset(zero, 0, sizeof(T) * N);                               \
  for (int64_t m = 0; m < M; ++m) {                                                                       \
    const T* P = prev + m * N * N; T* O = out + m * N * N;                                                \
    const T* wm = w + m * N; const T* pm = p + m * N;                                                     \
    if (v) memset(b + m * R * N, 0, sizeof(T) * R * N);                                                   \
    for (int64_t i = 0; i < N; ++i) {                                                                     \
      const T wi = wm[i], a = (T)1 - wi; const T* Pi = P + i * N; T* Oi = O + i * N;                      \
      const T lii = (a - wm[i]) * Pi[i] + wi * pm[i];  /* before an in-place update overwrites P[i, i] */     \
      if (!v || R == 0) {                                                                                 \
        _Pragma("omp simd")                                                                               \
        for (int64_t j = 0; j < N; ++j) Oi[j] = (a - wm[j]) * Pi[j] + wi * pm[j];                        \
        Oi[i] = 0;                                                                                        \
      }                                                                                                   \
      for (int64_t g0 = 0; v && g0 < R; g0 += 4) {                                                        \
        const T* vs[4]; T* bs[4]; T c[4];                                                                 \
        heads_##S(R, N, g0, v + m * R * N, junk, zero, vs, bs);                                           \
        for (int k = 0; k < 4; ++k) { if (g0 + k < R) bs[k] = b + (m * R + g0 + k) * N; c[k] = vs[k][i]; }\
        const T *v0 = vs[0], *v1 = vs[1], *v2 = vs[2], *v3 = vs[3];                                       \
        T *b0 = bs[0], *b1 = bs[1], *b2 = bs[2], *b3 = bs[3];                                             \
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                                 \
        if (g0 == 0) {  /* the update and the first 4 heads in one loop; the diagonal's terms taken out after \
                           it (a select in the loop would become slow masked loads) */                    \
          _Pragma("omp simd reduction(+:a0, a1, a2, a3)")                                                 \
          for (int64_t j = 0; j < N; ++j) {                                                               \
            const T x = (a - wm[j]) * Pi[j] + wi * pm[j];                                                 \
            Oi[j] = x;                                                                                    \
            a0 += x * v0[j]; a1 += x * v1[j]; a2 += x * v2[j]; a3 += x * v3[j];                           \
            b0[j] += c[0] * x; b1[j] += c[1] * x; b2[j] += c[2] * x; b3[j] += c[3] * x;                   \
          }                                                                                               \
          Oi[i] = 0; a0 -= lii * v0[i]; a1 -= lii * v1[i]; a2 -= lii * v2[i]; a3 -= lii * v3[i];          \
          for (int k = 0; k < 4; ++k) bs[k][i] -= c[k] * lii;                                             \
        } else {                                                                                          \
          _Pragma("omp simd reduction(+:a0, a1, a2, a3)")                                                 \
          for (int64_t j = 0; j < N; ++j) {                                                               \
            const T x = Oi[j];                                                                            \
            a0 += x * v0[j]; a1 += x * v1[j]; a2 += x * v2[j]; a3 += x * v3[j];                           \
            b0[j] += c[0] * x; b1[j] += c[1] * x; b2[j] += c[2] * x; b3[j] += c[3] * x;                   \
          }                                                                                               \
        }                                                                                                 \
        const T acc[4] = {a0, a1, a2, a3};                                                                \
        for (int k = 0; k < 4 && g0 + k < R; ++k) f[(m * R + g0 + k) * N + i] = acc[k];                   \
      }                                                                                                   \
    }                                                                                                     \
  }                                                                                                       \
  FTZ_END                                                                                                 \
}                                                                                                         \
                                                                                                          \
void link_backward_##S(int64_t M, int64_t N, int64_t R, int64_t K, T* G, const T* prev, const T* w,         \
                       const T* p, const T* v, const T* gf, const T* gb, T* dp, T* dw, T* dv, const T* wk,   \
                       const T* pk, T* scratch) {                                                         \
  FTZ_BEGIN                                                                                               \
  T* g = scratch; T* dwc = scratch + N; T* zero = scratch + 2 * N; T* junk = scratch + 3 * N;            \
  T* row = scratch + 7 * N;                                                                               \
  memset(zero, 0, sizeof(T) * N);                                                                         \
  for (int64_t m = 0; m < M; ++m) {                                                                       \
    T* Gm = G + m * N * N; const T* P = prev + m * N * N;                                                 \
    const T* wm = w + m * N; const T* pm = p + m * N; const T* vm = v + m * R * N;                        \
    T* dpm = dp + m * N; T* dwm = dw + m * N;                                                             \
    memset(dpm, 0, sizeof(T) * N); memset(dwc, 0, sizeof(T) * N);                                        \
    if (dv) memset(dv + m * R * N, 0, sizeof(T) * R * N);                                                 \
    for (int64_t i = 0; i < N; ++i) {                                                                     \
      const T wi = wm[i], a = (T)1 - wi; T* Gi = Gm + i * N; const T* Pi = P + i * N;                     \
      for (int64_t k = 0; k < K; ++k) {  /* rebuild L_{t-1} from an older link: K updates of this row */  \
        const T* wq = wk + (k * M + m) * N; const T* pq = pk + (k * M + m) * N;                           \
        const T wq_i = wq[i], aq = (T)1 - wq_i;                                                           \
        if (k == 0) {                                                                                     \
          _Pragma("omp simd")                                                                             \
          for (int64_t j = 0; j < N; ++j) row[j] = (aq - wq[j]) * Pi[j] + wq_i * pq[j];                  \
        } else {                                                                                          \
          _Pragma("omp simd")                                                                             \
          for (int64_t j = 0; j < N; ++j) row[j] = (aq - wq[j]) * row[j] + wq_i * pq[j];                 \
        }                                                                                                 \
        row[i] = 0;                                                                                       \
      }                                                                                                   \
      if (K) Pi = row;                                                                                    \
      T* gsrc = Gi;  /* g = G[i] + read terms: the first group of heads reads G[i], later ones g */         \
      for (int64_t g0 = 0; (gf || gb) && g0 < R; g0 += 4) {                                               \
        const T* vs[4]; const T* gs[4]; T* ds[4]; T cf[4], cb[4];                                         \
        heads_##S(R, N, g0, vm, junk, zero, vs, ds);                                                      \
        for (int k = 0; k < 4; ++k) {                                                                     \
          const int64_t r = g0 + k; const int in = r < R;                                                 \
          gs[k] = in && gb ? gb + (m * R + r) * N : zero;                                                 \
          if (in && dv) ds[k] = dv + (m * R + r) * N;                                                     \
          cf[k] = in && gf ? gf[(m * R + r) * N + i] : 0; cb[k] = vs[k][i];                               \
        }                                                                                                 \
        const T *v0 = vs[0], *v1 = vs[1], *v2 = vs[2], *v3 = vs[3];                                       \
        const T *q0 = gs[0], *q1 = gs[1], *q2 = gs[2], *q3 = gs[3];                                       \
        T *d0 = ds[0], *d1 = ds[1], *d2 = ds[2], *d3 = ds[3]; const T* src = gsrc;                        \
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                                 \
        /* L_t[i, j] recomputed without the zero diagonal (a select here became slow masked loads); the  \
           diagonal's terms are taken out again after the loop */                                         \
        _Pragma("omp simd reduction(+:a0, a1, a2, a3)")                                                   \
        for (int64_t j = 0; j < N; ++j) {                                                                 \
          const T lt = (a - wm[j]) * Pi[j] + wi * pm[j];                                                  \
          g[j] = src[j] + cf[0] * v0[j] + cf[1] * v1[j] + cf[2] * v2[j] + cf[3] * v3[j]                    \
                + cb[0] * q0[j] + cb[1] * q1[j] + cb[2] * q2[j] + cb[3] * q3[j];                           \
          d0[j] += cf[0] * lt; d1[j] += cf[1] * lt; d2[j] += cf[2] * lt; d3[j] += cf[3] * lt;             \
          a0 += q0[j] * lt; a1 += q1[j] * lt; a2 += q2[j] * lt; a3 += q3[j] * lt;                         \
        }                                                                                                 \
        const T lii = (a - wm[i]) * Pi[i] + wi * pm[i];                                                   \
        const T acc[4] = {a0 - q0[i] * lii, a1 - q1[i] * lii, a2 - q2[i] * lii, a3 - q3[i] * lii};        \
        for (int k = 0; k < 4; ++k) { ds[k][i] += acc[k] - cf[k] * lii; }                                 \
        gsrc = g;                                                                                         \
      }                                                                                                   \
      T* gi = gsrc; gi[i] = 0;                                                                            \
      T row = 0;                                                                                          \
      _Pragma("omp simd reduction(+:row)")                                                                \
      for (int64_t j = 0; j < N; ++j) {                                                                   \
        const T gj = gi[j];                                                                               \
        dpm[j] += wi * gj; row += gj * (pm[j] - Pi[j]); dwc[j] += gj * Pi[j]; Gi[j] = (a - wm[j]) * gj;   \
      }                                                                                                   \
      dwm[i] = row;                                                                                       \
    }                                                                                                     \
    for (int64_t j = 0; j < N; ++j) dwm[j] -= dwc[j];                                                     \
  }                                                                                                       \
  FTZ_END                                                                                                 \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
"""

# reassociation lets the compiler vectorise reductions (sums in a different order); no finite-math assumptions
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fassociative-math", "-fno-signed-zeros",
          "-fno-trapping-math", "-mprefer-vector-width=512", "-fopenmp-simd", "-fPIC", "-shared", "-std=c99"]
_lib: Optional[ctypes.CDLL] = None
_tried = False


def _cpu_key() -> str:
    """CPU model and flags (the library is built with ``-march=native``)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(line for line in lines if line.startswith(("model name", "flags")))[:4000]
    except OSError:
        return platform.processor() + platform.machine()


def _build(compiler: str, source: str, name: str) -> Path:
    """Compile ``source`` once into the cache directory (atomic rename, safe with concurrent builds)."""
    key = hashlib.sha256("\0".join([source, compiler, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("CLMEM_NATIVE_CACHE", Path.home() / ".cache" / "clmem" / "native"))
    target = cache / f"{name}_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src, lib = Path(tmp, f"{name}.c"), Path(tmp, f"{name}.so")
        src.write_text(source)
        subprocess.run([compiler, *_FLAGS, str(src), "-o", str(lib), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(lib, target)
    return target


def load_library(source: str, name: str, signatures: Dict[str, List]) -> Optional[ctypes.CDLL]:
    """Build (once) and load ``source``; ``signatures`` maps each function (without its ``_f32``/``_f64``
    suffix) to its ``ctypes`` argument types. ``None`` without a compiler, on a build failure or
    with ``CLMEM_NATIVE=0``."""
    if os.environ.get("CLMEM_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler, source, name)))
    except (OSError, subprocess.SubprocessError):
        return None
    for function, args in signatures.items():
        for suffix in ("f32", "f64"):
            getattr(lib, f"{function}_{suffix}").argtypes = list(args)
    return lib


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


def _load() -> Optional[ctypes.CDLL]:
    return load_library(_SOURCE, "link", {"link_forward": [_I64] * 3 + [_PTR] * 8,
                                          "link_backward": [_I64] * 4 + [_PTR] * 13})


def kernels() -> Optional[ctypes.CDLL]:
    """The loaded library, or ``None`` (no compiler, build failure, or ``CLMEM_NATIVE=0``). Built once."""
    global _lib, _tried
    if not _tried:
        _tried, _lib = True, _load()
    return _lib


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels can run on these tensors: loaded, CPU, float32/float64, one dtype, contiguous."""
    if kernels() is None:
        return False
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors)


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _suffix(t: Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def link_forward(prev: Tensor, out: Tensor, w: Tensor, p: Tensor, v: Optional[Tensor] = None,
                 f: Optional[Tensor] = None, b: Optional[Tensor] = None) -> None:
    """``out = (1 - w_i - w_j) prev + w_i p_j`` (zero diagonal) for ``prev, out [M, N, N]`` (``out`` may be
    ``prev``), ``w, p [M, N]``; with ``v [M, R, N]`` also ``f[m, r, i] = sum_j out[m, i, j] v[m, r, j]`` and
    ``b[m, r, j] = sum_i v[m, r, i] out[m, i, j]`` into ``f, b [M, R, N]``. All contiguous, one dtype."""
    m, n, _ = prev.shape
    r = 0 if v is None else v.shape[1]
    scratch = w.new_empty(5 * n)
    getattr(kernels(), f"link_forward_{_suffix(prev)}")(m, n, r, _ptr(prev), _ptr(out), _ptr(w), _ptr(p), _ptr(v),
                                                       _ptr(f), _ptr(b), _ptr(scratch))


def link_backward(grad: Tensor, prev: Tensor, w: Tensor, p: Tensor, v: Tensor, gf: Optional[Tensor],
                  gb: Optional[Tensor], need_v: bool, wk: Optional[Tensor] = None, pk: Optional[Tensor] = None):
    """One backward step (module docstring): ``grad [M, N, N]`` holds ``dLoss/dL_t`` (read gradients not yet
    added) and is overwritten with ``dLoss/dL_{t-1}``. ``prev`` is ``L_{t-1}``, or an older link ``L_{t-1-K}`` with
    the ``K`` updates in between given as ``wk, pk [K, M, N]`` (``w_u``, ``p_{u-1}``, oldest first): each row of
    ``L_{t-1}`` is then rebuilt in cache (no recomputed link buffers). Returns ``dp, dw [M, N]`` and ``dv
    [M, R, N]`` (``None`` unless ``need_v`` and a read gradient is given)."""
    m, n, _ = grad.shape
    r, k = v.shape[1], 0 if wk is None else wk.shape[0]
    dp, dw = torch.empty_like(w), torch.empty_like(w)
    dv = torch.empty_like(v) if need_v and (gf is not None or gb is not None) else None
    scratch = w.new_empty(8 * n)
    getattr(kernels(), f"link_backward_{_suffix(grad)}")(m, n, r, k, _ptr(grad), _ptr(prev), _ptr(w), _ptr(p),
                                                        _ptr(v), _ptr(gf), _ptr(gb), _ptr(dp), _ptr(dw), _ptr(dv),
                                                        _ptr(wk), _ptr(pk), _ptr(scratch))
    return dp, dw, dv
