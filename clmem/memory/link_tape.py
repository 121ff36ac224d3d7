"""Temporal link over a whole unroll with the ``[B, H, N, N]`` link matrix kept outside autograd (``LinkTape``).

Per step ``t`` (one autograd node, ``LinkTape.step``), for every link matrix ``L`` (one per batch item and write
head, flattened to ``M = B*H`` matrices)::

    L_t[i, j] = (1 - w_i - w_j) L_{t-1}[i, j] + w_i p_j       (diagonal kept at 0)
    f[r, i]   = sum_j L_t[i, j] v[r, j]                         (forward read weights)
    b[r, j]   = sum_i v[r, i] L_t[i, j]                         (backward read weights)

with ``w = w^w_t``, ``p = p_{t-1}``, ``v = w^r_{t-1}``. Only the small vectors go through autograd; the tape
holds the link matrices in a few reused buffers:

* forward: when all ``T`` links fit in ``KEEP_ALL_BYTES`` each step writes a new buffer and keeps it; otherwise
  one working buffer is updated in place and copied every ``segment`` steps (the checkpoints). The elementwise
  update and the two directional reads run over row blocks that stay in cache, so each step reads and writes the
  link about once from main memory.
* backward (reverse time): ``G = dLoss/dL_t`` lives in one buffer, handed from step to step (the steps are chained
  by a 0-dim token so autograd runs them in reverse order). Step ``t`` adds the read gradients
  ``G += gf^T v + v^T gb``, zeroes its diagonal, forms ``dp_j = sum_i G_ij w_i``,
  ``dw_k = sum_j G_kj (p_j - L_{t-1}[k, j]) - sum_i G_ik L_{t-1}[i, k]``,
  ``dv = gf L_t + gb L_t^T`` and then ``G <- (1 - w_i - w_j) G`` in place, which is ``dLoss/dL_{t-1}``.
  ``L_t`` and ``L_{t-1}`` are recomputed per segment from the checkpoint (only the link, not the network).

Memory: ``~ (T / segment + segment + 4)`` link-sized buffers instead of one per step; the segment is chosen by
``LinkTape`` from the sequence length and a byte budget (all steps kept when they fit).

Kernels: with the optional C kernels (``_native_link``, float32/float64 on CPU) each forward step, recompute and
backward step is one sweep over the matrices (the backward rebuilds ``L_t`` from ``L_{t-1}`` on the fly, so it reads
only ``L_{t-1}`` and ``G``); otherwise the torch-op path above runs. A finished tape hands its buffers to a small
pool (``POOL_BYTES``, ``release_buffers``) that the next tape takes them from: fresh large allocations page-fault
on first touch, which cost about as much as a link step.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _native_link as native

_BLOCK_ELEMENTS = 1 << 17  # row blocks of ~512 KiB (float32): the passes over a block stay in the L2 cache
KEEP_ALL_BYTES = 1 << 28  # keep every step's link (no recompute) when they fit in 256 MiB


POOL_BYTES = 1 << 31  # free link buffers kept between unrolls (at most 2 GiB), see ``release_buffers``
_pool: Dict[Tuple[Tuple[int, ...], torch.dtype, torch.device], List[Tensor]] = {}
_pool_bytes = 0


HUGE_PAGE = 1 << 21  # link buffers of at least this size are 2 MiB aligned and advised as transparent huge pages


def _load_madvise():
    """libc's ``madvise`` on Linux (``None`` elsewhere or when it cannot be loaded)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return function


_madvise = _load_madvise()


def _empty(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty``; a large CPU buffer on Linux starts at a 2 MiB boundary and is advised as transparent huge
    pages (with the default ``madvise`` policy the kernel backs it with 2 MiB pages), so the link sweeps miss the
    TLB far less. The advice may be refused; the buffer works either way."""
    numel = math.prod(shape)
    size = torch.empty((), dtype=dtype).element_size()
    if _madvise is None or device.type != "cpu" or numel * size < HUGE_PAGE:
        return torch.empty(shape, dtype=dtype, device=device)
    raw = torch.empty(numel + HUGE_PAGE // size, dtype=dtype, device=device)
    start = (-raw.data_ptr() % HUGE_PAGE) // size
    buffer = raw[start : start + numel].view(shape)
    _madvise(buffer.data_ptr(), numel * size, mmap.MADV_HUGEPAGE)
    return buffer


def _take(like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor shaped like ``like``: a pooled buffer of an earlier tape if there is one
    (fresh large allocations page-fault on first touch, which costs about as much as a link update)."""
    global _pool_bytes
    try:
        buffer = _pool[(tuple(like.shape), like.dtype, like.device)].pop()
    except (KeyError, IndexError):  # none pooled (or another thread took the last one)
        return _empty(tuple(like.shape), like.dtype, like.device)
    _pool_bytes -= buffer.numel() * buffer.element_size()
    return buffer


def _give(buffers: List[Tensor]) -> None:
    """Return a finished tape's own buffers to the pool (while it stays under ``POOL_BYTES``)."""
    global _pool_bytes
    for buffer in buffers:
        size = buffer.numel() * buffer.element_size()
        if _pool_bytes + size <= POOL_BYTES:
            _pool.setdefault((tuple(buffer.shape), buffer.dtype, buffer.device), []).append(buffer)
            _pool_bytes += size


def release_buffers() -> None:
    """Free the pooled link buffers of finished tapes."""
    global _pool_bytes
    _pool.clear()
    _pool_bytes = 0


def _blocks(m: int, n: int) -> List[Tuple[slice, slice]]:
    """``(matrix slice, row slice)`` blocks of ``[m, n, n]`` with about ``_BLOCK_ELEMENTS`` elements each."""
    if n * n >= _BLOCK_ELEMENTS:
        rows = max(1, _BLOCK_ELEMENTS // n)
        return [(slice(k, k + 1), slice(i, min(i + rows, n))) for k in range(m) for i in range(0, n, rows)]
    per = max(1, _BLOCK_ELEMENTS // (n * n))
    return [(slice(k, min(k + per, m)), slice(0, n)) for k in range(0, m, per)]


def _update_block(out: Tensor, prev: Tensor, w: Tensor, p: Tensor, one_minus_w_rows: Tensor, rows: slice,
                  scratch: Tensor) -> None:
    """``out = (1 - w_i - w_j) prev + w_i p_j`` with zero diagonal on a block ``[m, r, N]`` (rows ``rows``);
    ``out`` may be ``prev`` (in place). ``w``, ``p`` are the block's ``[m, N]`` vectors (all columns),
    ``one_minus_w_rows`` is ``1 - w`` on the block's rows ``[m, r]``; ``scratch`` holds at least one block."""
    factor = scratch[: prev.numel()].view(prev.shape)
    torch.sub(one_minus_w_rows.unsqueeze(-1), w.unsqueeze(-2), out=factor)  # 1 - w_i - w_j
    torch.mul(prev, factor, out=out)
    out.baddbmm_(w[:, rows].unsqueeze(-1), p.unsqueeze(-2))
    out.diagonal(offset=rows.start, dim1=-2, dim2=-1).zero_()


class LinkTape:
    """Link state of one unroll of ``steps`` time steps (see the module docstring).

    Args:
        link: initial link ``[B, H, N, N]`` (may require grad: it gets ``dLoss/dL_{-1}``).
        steps: number of time steps ``T`` the unroll will run (sets the checkpoint segment; more steps are an
            error).
        segment: steps per checkpoint segment; default: all steps kept if they fit in ``KEEP_ALL_BYTES``,
            else ``ceil(sqrt(T))``.
    """

    def __init__(self, link: Tensor, steps: int, segment: Optional[int] = None) -> None:
        b, h, n, _ = link.shape
        self.shape, self.m, self.n, self.heads, self.steps = link.shape, b * h, n, h, steps
        self.scratch: Optional[Tensor] = None
        if segment is None:
            keep_all = steps * link.numel() * link.element_size() <= KEEP_ALL_BYTES
            # the C backward rebuilds L_{t-1} from the last checkpoint in cache (no segment buffers), so it can
            # afford checkpoints twice as dense as the torch path for about the same memory
            root = math.sqrt(steps) / 2 if native.usable(link.detach()) else math.ceil(math.sqrt(steps))
            segment = 1 if keep_all else max(1, round(root))
        self.segment = segment
        self.work: Optional[Tensor] = None  # the working link buffer (updated in place between checkpoints)
        self.blocks = _blocks(self.m, n)
        self.inputs: List[Tuple[Tensor, Tensor]] = []  # (p_{t-1}, w_t) flat [M, N], detached
        self.checkpoints: Dict[int, Tensor] = {-1: link.detach().reshape(self.m, n, n)}
        self.current = self.checkpoints[-1]
        self.grad: Optional[Tensor] = None
        self.grad_step = -2  # step t whose dLoss/dL_t is in ``grad``
        self.cache: Dict[int, Tensor] = {}  # recomputed links of the segment being differentiated
        self.cache_segment = -1
        self.seg_buffers: List[Tensor] = []

    def __del__(self) -> None:
        """Pool the buffers this tape allocated (not the caller's initial link, nor a gradient handed out)."""
        if not hasattr(self, "seg_buffers"):  # __init__ did not finish
            return
        initial = self.checkpoints.get(-1)
        owned = [*self.checkpoints.values(), *self.seg_buffers, self.current, self.work, self.grad]
        unique = {id(x): x for x in owned if x is not None and x is not initial}
        _give(list(unique.values()))

    # ------------------------------------------------------------------ forward
    def step(self, token: Tensor, prev_precedence: Tensor, write_weights: Tensor,
             prev_read_weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One step: ``(forward [B, R, H, N], backward [B, R, H, N], token)``. ``token`` is the initial link for
        the first step and the previous step's token after that."""
        return _LinkTapeStep.apply(self, token, prev_precedence, write_weights, prev_read_weights)

    def final_link(self, token: Tensor) -> Tensor:
        """The link after the last step as a fresh ``[B, H, N, N]`` tensor (differentiable)."""
        return _LinkTapeFinal.apply(self, token)

    def _forward(self, p: Tensor, w: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Advance the link; ``p, w [M, N]``, ``v [M, R, N]`` -> ``f [M, R, N]``, ``b [M, R, N]``.

        Steps update one working buffer in place; every ``segment``-th step keeps it as a checkpoint and the next
        step writes a new one (when every step is kept, each step writes a new buffer). Products with the link are written as
        ``v @ L^T`` / ``v @ L`` (thin-left operands: several times faster on CPU than ``L @ v^T``)."""
        t = len(self.inputs)
        if t >= self.steps:
            raise ValueError(f"LinkTape.step: the tape was made for {self.steps} steps")
        self.inputs.append((p, w))
        prev = self.current
        checkpoint = (t + 1) % self.segment == 0 and t + 1 < self.steps
        # in place on the working buffer; a checkpoint step keeps that buffer (no copy) and the next step starts a
        # new one; never writes into the caller's initial link
        out = self.work if self.work is not None else _take(prev)
        self.work = None if checkpoint else out
        f = prev.new_empty(self.m, v.shape[1], self.n)
        if native.usable(prev, w, p, v):
            b = torch.empty_like(f)
            native.link_forward(prev, out, w, p, v, f, b)
        else:
            b = prev.new_zeros(self.m, v.shape[1], self.n)
            one_minus_w = 1.0 - w
            scratch = self._scratch(prev)
            for mats, rows in self.blocks:
                block = out[mats, rows]
                _update_block(block, prev[mats, rows], w[mats], p[mats], one_minus_w[mats, rows], rows, scratch)
                f[mats, :, rows] = torch.bmm(v[mats], block.transpose(1, 2))
                b[mats].baddbmm_(v[mats, :, rows], block)
        if checkpoint:
            self.checkpoints[t] = out
        self.current = out
        return f, b

    def _scratch(self, like: Tensor) -> Tensor:
        mats, rows = self.blocks[0]
        size = (mats.stop - mats.start) * (rows.stop - rows.start) * self.n
        if self.scratch is None or self.scratch.numel() < size or self.scratch.dtype != like.dtype:
            self.scratch = torch.empty(size, dtype=like.dtype, device=like.device)
        return self.scratch

    # ------------------------------------------------------------------ backward
    def _link_at(self, t: int) -> Tensor:
        """``L_t`` (``t >= -1``): a checkpoint or recomputed for its segment."""
        if t in self.checkpoints:
            return self.checkpoints[t]
        if t == len(self.inputs) - 1:  # the forward pass has finished: the working buffer holds the last link
            return self.current
        seg = t // self.segment
        if seg != self.cache_segment:
            start = seg * self.segment
            stop = min(start + self.segment, len(self.inputs))
            prev = self._link_at(start - 1)
            self.cache = {}
            for k, u in enumerate(range(start, stop)):
                if u in self.checkpoints:
                    self.cache[u] = self.checkpoints[u]
                    prev = self.cache[u]
                    continue
                while len(self.seg_buffers) <= k:
                    self.seg_buffers.append(_take(prev))
                out = self.seg_buffers[k]
                p, w = self.inputs[u]
                if native.usable(prev, w, p):
                    native.link_forward(prev, out, w, p)
                else:
                    one_minus_w = 1.0 - w
                    scratch = self._scratch(out)
                    for mats, rows in self.blocks:
                        _update_block(out[mats, rows], prev[mats, rows], w[mats], p[mats], one_minus_w[mats, rows],
                                      rows, scratch)
                self.cache[u] = prev = out
            self.cache_segment = seg
        return self.cache[t]

    def _backward(self, t: int, gf: Optional[Tensor], gb: Optional[Tensor], v: Tensor,
                  need_v: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Step ``t`` backward with ``gf, gb [M, R, N]`` (or ``None``): returns ``dp, dw [M, N]``, ``dv [M, R, N]``
        and leaves ``dLoss/dL_{t-1}`` in ``self.grad``."""
        m, n = self.m, self.n
        p, w = self.inputs[t]
        if self.grad is None or self.grad_step != t:
            self.grad = _take(self.checkpoints[-1]).zero_()
        grad = self.grad
        self.grad_step = t - 1
        start = max(k for k in self.checkpoints if k <= t - 1)  # the kernel rebuilds L_{t-1} from L_start
        older = self.checkpoints[start]
        if native.usable(grad, older, w, p, v, *(x for x in (gf, gb) if x is not None)):
            steps = range(start + 1, t)
            wk = torch.stack([self.inputs[u][1] for u in steps]) if steps else None
            pk = torch.stack([self.inputs[u][0] for u in steps]) if steps else None
            return native.link_backward(grad, older, w, p, v, gf, gb, need_v, wk, pk)
        prev, link = self._link_at(t - 1), self._link_at(t)
        lefts, rights = [], []
        if gf is not None:
            lefts.append(gf)
            rights.append(v)
        if gb is not None:
            lefts.append(v)
            rights.append(gb)
        left = torch.cat(lefts, 1) if len(lefts) > 1 else (lefts[0] if lefts else None)  # [M, k, N]
        right = torch.cat(rights, 1) if len(rights) > 1 else (rights[0] if rights else None)
        dv = v.new_zeros(v.shape) if need_v and left is not None else None
        dp = p.new_zeros(m, 1, n)
        dw = torch.empty_like(w)
        dw_cols = w.new_zeros(m, n)
        scratch = self._scratch(link)
        one_minus_w = 1.0 - w
        for mats, rows in self.blocks:
            g = grad[mats, rows]  # [m, r, N]
            if left is not None:
                g.baddbmm_(left[mats, :, rows].transpose(1, 2), right[mats])
            g.diagonal(offset=rows.start, dim1=-2, dim2=-1).zero_()
            if dv is not None:
                lt = link[mats, rows]
                if gf is not None:
                    dv[mats].baddbmm_(gf[mats, :, rows], lt)
                if gb is not None:
                    dv[mats, :, rows] += torch.bmm(gb[mats], lt.transpose(1, 2))
            dp[mats].baddbmm_(w[mats, rows].unsqueeze(1), g)
            tmp = scratch[: g.numel()].view(g.shape)
            torch.mul(g, prev[mats, rows], out=tmp)
            dw[mats, rows] = torch.bmm(p[mats].unsqueeze(1), g.transpose(1, 2)).squeeze(1) - tmp.sum(-1)
            dw_cols[mats] += tmp.sum(-2)
            torch.sub(one_minus_w[mats, rows].unsqueeze(-1), w[mats].unsqueeze(-2), out=tmp)  # G *= 1 - w_i - w_j
            g.mul_(tmp)
        dw -= dw_cols
        return dp.squeeze(1), dw, dv

    def backward_step(self, t: int, gf: Optional[Tensor], gb: Optional[Tensor], v: Tensor, need_v: bool,
                      need_token: bool) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """Backward of step ``t`` for the autograd node that ran it: ``(dp, dw [M, N], dv [M, R, N] or None,
        gradient of the step's input token or None)``; the first step hands out ``dLoss/dL_{-1}`` and resets."""
        dp, dw, dv = self._backward(t, gf, gb, v, need_v)
        grad_token = None
        if need_token:
            grad_token = self.grad.view(self.shape) if t == 0 else self.grad.new_zeros(())
        if t == 0:
            self.grad, self.grad_step = None, -2
        return dp, dw, dv, grad_token


class _LinkTapeStep(torch.autograd.Function):
    """One ``LinkTape`` step; saves nothing of size ``N x N`` (the tape does)."""

    @staticmethod
    def forward(ctx, tape: LinkTape, token, prev_precedence, write_weights, prev_read_weights):
        b, h, n = write_weights.shape
        r = prev_read_weights.shape[1]
        v = prev_read_weights.detach().unsqueeze(1).expand(b, h, r, n).reshape(b * h, r, n).contiguous()
        p = prev_precedence.detach().reshape(b * h, n).contiguous()
        w = write_weights.detach().reshape(b * h, n).contiguous()
        ctx.tape, ctx.t = tape, len(tape.inputs)
        ctx.dims = (b, h, r, n)
        ctx.save_for_backward(v)
        ctx.set_materialize_grads(False)
        f, bw = tape._forward(p, w, v)
        forward = f.view(b, h, r, n).transpose(1, 2)
        backward = bw.view(b, h, r, n).transpose(1, 2)
        return forward, backward, token.new_zeros(())

    @staticmethod
    def backward(ctx, grad_forward, grad_backward, _grad_token):
        (v,) = ctx.saved_tensors
        b, h, r, n = ctx.dims
        tape, t = ctx.tape, ctx.t
        gf = None if grad_forward is None else grad_forward.permute(0, 2, 1, 3).reshape(b * h, r, n).contiguous()
        gb = None if grad_backward is None else grad_backward.permute(0, 2, 1, 3).reshape(b * h, r, n).contiguous()
        dp, dw, dv, grad_token = tape.backward_step(t, gf, gb, v, ctx.needs_input_grad[4], ctx.needs_input_grad[1])
        if dv is not None:
            dv = dv.view(b, h, r, n).sum(1)
        return (None, grad_token, dp.view(b, h, n) if ctx.needs_input_grad[2] else None,
                dw.view(b, h, n) if ctx.needs_input_grad[3] else None, dv)


class _LinkTapeFinal(torch.autograd.Function):
    """Copy of the tape's last link; its gradient seeds the tape's ``dLoss/dL_{T-1}``."""

    @staticmethod
    def forward(ctx, tape: LinkTape, token):
        ctx.tape, ctx.t = tape, len(tape.inputs) - 1
        return tape.current.clone().view(tape.shape)

    @staticmethod
    def backward(ctx, grad):
        tape = ctx.tape
        tape.grad = _take(tape.current).copy_(grad.reshape(tape.m, tape.n, tape.n))
        tape.grad_step = ctx.t
        return None, grad.new_zeros(())
