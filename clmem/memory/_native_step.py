"""One autograd node for a whole DNC memory step inside a ``LinkTape`` unroll (one write head, C kernels).

``DNCStep`` runs what ``DNCMemory.step_vector`` otherwise runs as four nodes (``Activate``, ``PreLink``, the tape's
link step, ``PostLink``) in one forward and one backward: the same C kernels in the same order, with the gradients
that autograd would have summed between those nodes (the memory and the write weights feed both the link/read part
and the next step; the activated interface feeds both halves) added here. Per step that saves three autograd
nodes, their saved-tensor bookkeeping and the reshapes between them, which is most of a step's cost for small
memories. Values and gradients equal the four-node path (tested in float64 through ``DNCCore``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _native_dnc as nd


class DNCStep(torch.autograd.Function):
    """``(tape, vector [B,I], usage [B,N], write_weights [B,1,N], read_weights [B,R,N], memory [B,N,W],
    precedence [B,1,N], token, layout, eps)`` -> ``(read_words [B,R,W], memory, read_weights, write_weights, usage,
    precedence, token)``; ``layout`` is ``DNCMemory._layout`` with the ranges as a ``ctypes`` array."""

    @staticmethod
    def forward(ctx, tape, vector, u0, ww0, V0, M0, p0, token, layout, eps):
        ranges, pre, post = layout
        B, N = u0.shape
        vector, u0, ww0, V0, M0, p0 = (x.contiguous() for x in (vector, u0, ww0, V0, M0, p0))
        act = nd.activate(vector, ranges)
        (u, w, M, p), saved_pre = nd.pre_forward(u0, ww0, V0, M0, p0, act, pre, eps)
        ctx.t = len(tape.inputs)
        # one write head: the tape's M = B matrices; it keeps p and w, detached (no cycle through this node)
        fw, bw = tape._forward(p0.detach().view(B, N), w.detach().view(B, N), V0.detach())
        (V, rw), saved_post = nd.post_forward(M, act, fw, bw, post, eps)
        ctx.save_for_backward(vector, act, ww0, V0, M0, p0, w, M, fw, bw, V, *saved_pre, *saved_post)
        ctx.tape, ctx.meta = tape, (layout, eps)
        return rw, M, V, w, u, p, token.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, Grw, GM, GV, Gw, Gu, Gp, _grad_token):
        vector, act, ww0, V0, M0, p0, w, M, fw, bw, V, *saved = ctx.saved_tensors
        saved_pre, saved_post = saved[:3], saved[3:]  # (sv, knorm, idx) and (sv, mnorm, knorm)
        (ranges, pre, post), eps = ctx.meta
        B, N = ww0.shape[0], ww0.shape[-1]
        dact = torch.zeros_like(act)  # the two halves write disjoint fields of it
        dM, dfw, dbw = nd.post_backward(M, act, fw, bw, V, saved_post, GV, Grw, dact, post, eps)
        need_v, need_token = ctx.needs_input_grad[4], ctx.needs_input_grad[7]
        dp_link, dw_link, dv_link, grad_token = ctx.tape.backward_step(ctx.t, dfw, dbw, V0, need_v, need_token)
        GM = dM.add_(GM)  # the memory feeds the reads and the next step
        Gw = dw_link.view(B, 1, N).add_(Gw)  # the write weights feed the link and the next step
        du0, dV0, dM0, dp0 = nd.pre_backward(ww0, V0, M0, p0, act, w, saved_pre, (Gu, Gw, GM, Gp), dact, pre, eps)
        if dv_link is not None:
            dV0.add_(dv_link)
        dp0.add_(dp_link.view(B, 1, N))
        return None, nd.activate_backward(vector, act, dact, ranges), du0, None, dV0, dM0, dp0, grad_token, None, None
