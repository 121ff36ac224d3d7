"""Optional C kernels for the ``LinkTape`` link steps: one pass over each link matrix per step.

The torch-op path of ``LinkTape`` needs several passes (and several hundred small ops) per step; these kernels do
the link update with both directional reads, and the whole backward step, row by row in one sweep over the
``[M, N, N]`` matrices (``M = B*H``), so the link is read/written about once from main memory per step.

The source is ``native/link.c`` (the formulas are at its top), built on first use and loaded with ``ctypes`` by
``_native_build`` (cache, flags, and what happens without a compiler or when the build fails are described
there). With ``kernels()`` ``None`` (no compiler, ``CLMEM_NATIVE=0``, or a failed build, which warns)
``LinkTape`` uses its torch-op path (same values up to float rounding; the tests check both against the reference
functions).
"""

from __future__ import annotations

import ctypes
from typing import Dict, List, Optional

import torch
from torch import Tensor

from . import _native_build as build

_lib: Optional[ctypes.CDLL] = None
_tried = False


def signatures(real: type) -> Dict[str, List[type]]:
    """``argtypes`` of ``native/link.c``'s functions for the element type ``real`` (``c_float``/``c_double``)."""
    i64, p = ctypes.c_int64, build.pointer(real)
    return {"link_forward": [i64] * 3 + [p] * 8,  # M, N, R; prev, out, w, p, v, f, b, scratch
            "link_backward": [i64] * 4 + [p] * 13}  # M, N, R, K; G, prev, w, p, v, gf, gb, dp, dw, dv, wk, pk, scratch


def kernels() -> Optional[ctypes.CDLL]:
    """The loaded library, or ``None`` (no compiler, build failure, or ``CLMEM_NATIVE=0``; see ``_native_build``).
    Built once per process."""
    global _lib, _tried
    if not _tried:
        _tried, _lib = True, build.load_library("link", signatures)
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
