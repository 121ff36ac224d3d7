"""Optional C kernels for one DNC memory step with one write head, as two autograd nodes around the link step.

``PreLink``: usage, allocation (stable radix sort), write content lookup, write weights, erase-and-write, precedence;
``PostLink``: read content lookup, read-mode mixing, read words. Values and gradients are those of the pure
functions in ``addressing`` (``update_usage``, ``allocation_weights``, ``content_weights``, ``write_weights``,
``erase_and_write``, ``update_precedence``, ``read_weights``, ``read_memory``): the C kernels are their
backward passes written out per batch item. The pure functions stay the specification; the tests compare both
in float64 and run ``gradcheck``. For small memories the composed path is bound by per-op dispatch (hundreds of
small torch ops per step); these nodes do the same work in two C calls forward and two backward. Inside a
``LinkTape`` unroll ``_native_step.DNCStep`` calls the same kernels (and the link step) from one node.

The source is ``native/dnc.c`` (helpers in ``native/vec.h``), built and loaded by ``_native_build`` like
``_native_link`` (``CLMEM_NATIVE=0`` disables; ``None`` without a C compiler or, with a warning, when the build fails).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _native_build as build

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_lib = None
_tried = False

# interface fields (offsets in the activated interface row) each node reads, in the kernels' order
PRE_FIELDS = ("free_gates", "write_keys", "write_strengths", "allocation_gates", "write_gates", "erase_vectors",
              "write_vectors")
POST_FIELDS = ("read_keys", "read_strengths", "read_modes")


def signatures(real: type) -> Dict[str, List[type]]:
    """``argtypes`` of ``native/dnc.c``'s functions for the element type ``real`` (``c_float``/``c_double``)."""
    i64, p = ctypes.c_int64, build.pointer(real)
    ip, pp = build.pointer(ctypes.c_int64), build.pointer(build.pointer(real))
    head, act = [i64] * 4 + [ip, ctypes.c_double], [i64] * 3 + [ip]  # B, N, W, R, st, eps; B, I, K, ranges
    return {"pre_forward": head + [p] * 5 + [p] * 7 + [p] * 4 + [p, p, ip, ip],  # state, fields, out, saved, tmp
            "pre_backward": head + [p] * 11 + [p, p, p, ip] + [p] * 4 + [pp, p],  # inputs, saved, incoming, out
            "post_forward": head + [p] * 6 + [p] * 2 + [p] * 3,  # inputs, outputs, saved
            "post_backward": head + [p] * 6 + [p] * 4 + [p] * 2 + [pp, p],  # inputs, saved, incoming, out
            "activate": act + [p] * 2, "activate_backward": act + [p] * 4}


def kernels():
    """The loaded library or ``None`` (see ``_native_build.load_library``)."""
    global _lib, _tried
    if not _tried:
        _tried, _lib = True, build.load_library("dnc", signatures)
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


def _ptrs(*xs) -> list:
    """Pointer arguments: a tensor's data address, an int address as is, a list as a ``ctypes`` pointer array."""
    return [x.data_ptr() if isinstance(x, Tensor) else ((_PTR * len(x))(*_ptrs(*x)) if isinstance(x, list) else x)
            for x in xs]


@functools.lru_cache(maxsize=64)
def _strides(strides: Tuple[int, ...]):
    return (_I64 * len(strides))(*strides)


def _call(name: str, like: Tensor, sizes, strides: Tuple[int, ...], eps: float, *args) -> None:
    _fn(name, like)(*sizes, _strides(strides), eps, *_ptrs(*args))


def activate(vector: Tensor, ranges) -> Tensor:
    """Interface activations of the contiguous ``vector [B, I]`` (see ``Activate``)."""
    out = torch.empty_like(vector)
    _fn("activate", vector)(vector.shape[0], vector.shape[1], len(ranges) // 4, ranges, vector.data_ptr(),
                            out.data_ptr())
    return out


def activate_backward(vector: Tensor, out: Tensor, grad: Tensor, ranges) -> Tensor:
    """Gradient of ``activate`` for the incoming ``grad [B, I]``."""
    grad, result = grad.contiguous(), torch.empty_like(vector)
    _fn("activate_backward", vector)(vector.shape[0], vector.shape[1], len(ranges) // 4, ranges, vector.data_ptr(),
                                     out.data_ptr(), grad.data_ptr(), result.data_ptr())
    return result


def _fields(act: Tensor, offsets) -> list:
    """Addresses of the fields at ``offsets`` in the first row of ``act`` (rows are ``act.shape[1]`` apart)."""
    base, size = act.data_ptr(), act.element_size()
    return [base + off * size for off in offsets]


def pre_forward(u0, ww0, V, M0, p0, act, offsets, eps):
    """The pre-link kernel on contiguous inputs (``PreLink``): ``(u, w, M, p)`` and what ``pre_backward`` needs
    besides the inputs and ``w``: ``(sv, knorm, idx)``."""
    B, N, W = M0.shape
    u, w, M, p = u0.new_empty(B, N), u0.new_empty(B, 1, N), torch.empty_like(M0), u0.new_empty(B, 1, N)
    sv, knorm = u0.new_empty(B, 9, N), u0.new_empty(B)
    idx, tmp = torch.empty(B, N, dtype=torch.int64), torch.empty(3 * N, dtype=torch.int64)
    _call("pre_forward", u0, (B, N, W, V.shape[1]), (act.shape[1],) * len(offsets), eps, u0, ww0, V, M0, p0,
          *_fields(act, offsets), u, w, M, p, sv, knorm, idx, tmp)
    return (u, w, M, p), (sv, knorm, idx)


def pre_backward(ww0, V, M0, p0, act, w, saved, grads, dact, offsets, eps):
    """Gradients ``(du0, dV, dM0, dp0)`` of ``pre_forward`` for ``grads = (Gu, Gw, GM, Gp)``; the gradients of the
    interface fields (free, wkey, wstr, ga, gw, erase, wvec) are written into ``dact`` in place."""
    B, N, W = M0.shape
    R = V.shape[1]
    du0, dV, dM0, dp0 = M0.new_empty(B, N), M0.new_empty(B, R, N), M0.new_empty(B, N, W), M0.new_empty(B, 1, N)
    f = _fields(dact, offsets)
    outs = [du0, f[0], dV, dM0, f[1], f[2], f[3], f[4], f[5], f[6], dp0]
    _call("pre_backward", M0, (B, N, W, R), (act.shape[1],) * len(offsets), eps, ww0, V, M0, p0,
          *_fields(act, offsets), w, *saved, *(g.contiguous() for g in grads), outs, M0.new_empty((7 + R) * N))
    return du0, dV, dM0, dp0


def post_forward(M, act, fw, bw, offsets, eps):
    """The post-link kernel on contiguous inputs (``PostLink``): ``(V, rw)`` and what ``post_backward`` needs
    besides the inputs and ``V``: ``(sv, mnorm, knorm)``."""
    B, N, W = M.shape
    R = fw.shape[1]
    V, rw = M.new_empty(B, R, N), M.new_empty(B, R, W)
    sv, mnorm, knorm = M.new_empty(B, 3, R, N), M.new_empty(B, N), M.new_empty(B, R)
    rk, rs, md = _fields(act, offsets)
    _call("post_forward", M, (B, N, W, R), (act.shape[1],) * len(offsets), eps, M, rk, rs, fw, bw, md, V, rw, sv,
          mnorm, knorm)
    return (V, rw), (sv, mnorm, knorm)


def post_backward(M, act, fw, bw, V, saved, GV, Grw, dact, offsets, eps):
    """Gradients ``(dM, dforward, dbackward)`` of ``post_forward``; those of the read keys, strengths and modes
    are written into ``dact`` in place."""
    B, N, W = M.shape
    R = fw.shape[1]
    dM, dfw, dbw = M.new_empty(B, N, W), M.new_empty(B, R, N), M.new_empty(B, R, N)
    rk, rs, md = _fields(act, offsets)
    drk, drs, dmd = _fields(dact, offsets)
    _call("post_backward", M, (B, N, W, R), (act.shape[1],) * len(offsets), eps, M, rk, rs, fw, bw, md, V, *saved,
          GV.contiguous(), Grw.contiguous(), [dM, drk, drs, dfw, dbw, dmd], M.new_empty((3 * R + 1) * N))
    return dM, dfw, dbw


class Activate(torch.autograd.Function):
    """Interface activations on ``[B, I]`` rows as one node; ``ranges`` is a ``ctypes`` array of ``K`` quadruples
    ``(start, length, kind, group)`` (kind 0 raw, 1 oneplus, 2 sigmoid, 3 softmax over groups)."""

    @staticmethod
    def forward(ctx, vector, ranges):
        vector = vector.contiguous()
        out = activate(vector, ranges)
        ctx.save_for_backward(vector, out)
        ctx.ranges = ranges
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        vector, out = ctx.saved_tensors
        return activate_backward(vector, out, grad, ctx.ranges), None


class PreLink(torch.autograd.Function):
    """``(u0 [B,N], ww0 [B,1,N], V [B,R,N], M0 [B,N,W], p0 [B,1,N], act [B,I], offsets, eps)`` -> ``(u [B,N],
    w [B,1,N], M [B,N,W], p [B,1,N])``; ``act`` is the activated interface, ``offsets`` those of ``PRE_FIELDS``."""

    @staticmethod
    def forward(ctx, u0, ww0, V, M0, p0, act, offsets, eps):
        u0, ww0, V, M0, p0, act = (x.contiguous() for x in (u0, ww0, V, M0, p0, act))
        (u, w, M, p), saved = pre_forward(u0, ww0, V, M0, p0, act, offsets, eps)
        ctx.save_for_backward(ww0, V, M0, p0, act, w, *saved)
        ctx.meta = (offsets, eps)
        return u, w, M, p

    @staticmethod
    @once_differentiable
    def backward(ctx, Gu, Gw, GM, Gp):
        offsets, eps = ctx.meta
        ww0, V, M0, p0, act, w, *saved = ctx.saved_tensors
        dact = torch.zeros_like(act)
        du0, dV, dM0, dp0 = pre_backward(ww0, V, M0, p0, act, w, saved, (Gu, Gw, GM, Gp), dact, offsets, eps)
        return du0, None, dV, dM0, dp0, dact, None, None


class PostLink(torch.autograd.Function):
    """``(M [B,N,W], act [B,I], forward [B,R,N], backward [B,R,N], offsets, eps)`` -> ``(read_weights [B,R,N],
    read_words [B,R,W])``; ``offsets`` are those of ``POST_FIELDS`` in the activated interface ``act``."""

    @staticmethod
    def forward(ctx, M, act, fw, bw, offsets, eps):
        M, act, fw, bw = (x.contiguous() for x in (M, act, fw, bw))
        (V, rw), saved = post_forward(M, act, fw, bw, offsets, eps)
        ctx.save_for_backward(M, act, fw, bw, V, *saved)
        ctx.meta = (offsets, eps)
        return V, rw

    @staticmethod
    @once_differentiable
    def backward(ctx, GV, Grw):
        offsets, eps = ctx.meta
        M, act, fw, bw, V, *saved = ctx.saved_tensors
        dact = torch.zeros_like(act)
        dM, dfw, dbw = post_backward(M, act, fw, bw, V, saved, GV, Grw, dact, offsets, eps)
        return dM, dact, dfw, dbw, None, None
