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
        B, N, W = M0.shape
        R = V0.shape[1]
        vector, u0, ww0, V0, M0, p0 = (x.contiguous() for x in (vector, u0, ww0, V0, M0, p0))
        act = torch.empty_like(vector)
        nd._fn("activate", vector)(B, vector.shape[1], len(ranges) // 4, ranges, vector.data_ptr(), act.data_ptr())
        u, w, M, p = u0.new_empty(B, N), u0.new_empty(B, 1, N), torch.empty_like(M0), u0.new_empty(B, 1, N)
        sv_pre, knorm_pre = u0.new_empty(B, 9, N), u0.new_empty(B)
        idx, tmp = torch.empty(B, N, dtype=torch.int64), torch.empty(3 * N, dtype=torch.int64)
        pre_strides = (act.shape[1],) * len(pre)
        nd._call("pre_forward", u0, (B, N, W, R), pre_strides, eps, u0, ww0, V0, M0, p0, *nd._fields(act, pre), u, w,
                 M, p, sv_pre, knorm_pre, idx, tmp)
        ctx.t = len(tape.inputs)
        # one write head: the tape's M = B matrices; it keeps p and w, detached (no cycle through this node)
        fw, bw = tape._forward(p0.detach().view(B, N), w.detach().view(B, N), V0.detach())
        V, rw = M.new_empty(B, R, N), M.new_empty(B, R, W)
        sv_post, mnorm, knorm_post = M.new_empty(B, 3, R, N), M.new_empty(B, N), M.new_empty(B, R)
        post_strides = (act.shape[1],) * len(post)
        rk, rs, md = nd._fields(act, post)
        nd._call("post_forward", M, (B, N, W, R), post_strides, eps, M, rk, rs, fw, bw, md, V, rw, sv_post, mnorm,
                 knorm_post)
        ctx.save_for_backward(vector, act, ww0, V0, M0, p0, w, sv_pre, knorm_pre, idx, M, fw, bw, V, sv_post, mnorm,
                              knorm_post)
        ctx.tape, ctx.meta = tape, ((B, N, W, R), pre_strides, post_strides, layout, eps)
        return rw, M, V, w, u, p, token.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, Grw, GM, GV, Gw, Gu, Gp, _grad_token):
        (vector, act, ww0, V0, M0, p0, w, sv_pre, knorm_pre, idx, M, fw, bw, V, sv_post, mnorm,
         knorm_post) = ctx.saved_tensors
        sizes, pre_strides, post_strides, (ranges, pre, post), eps = ctx.meta
        B, N, W, R = sizes
        dact = torch.zeros_like(act)  # the two halves write disjoint fields of it
        dM, dfw, dbw = M.new_empty(B, N, W), M.new_empty(B, R, N), M.new_empty(B, R, N)
        rk, rs, md = nd._fields(act, post)
        drk, drs, dmd = nd._fields(dact, post)
        nd._call("post_backward", M, sizes, post_strides, eps, M, rk, rs, fw, bw, md, V, sv_post, mnorm, knorm_post,
                 GV.contiguous(), Grw.contiguous(), [dM, drk, drs, dfw, dbw, dmd], M.new_empty((3 * R + 1) * N))
        need_v, need_token = ctx.needs_input_grad[4], ctx.needs_input_grad[7]
        dp_link, dw_link, dv_link, grad_token = ctx.tape.backward_step(ctx.t, dfw, dbw, V0, need_v, need_token)
        GM = dM.add_(GM)  # the memory feeds the reads and the next step
        Gw = dw_link.view(B, 1, N).add_(Gw)  # the write weights feed the link and the next step
        du0, dV0, dM0, dp0 = M0.new_empty(B, N), M0.new_empty(B, R, N), M0.new_empty(B, N, W), M0.new_empty(B, 1, N)
        f = nd._fields(dact, pre)
        nd._call("pre_backward", M0, sizes, pre_strides, eps, ww0, V0, M0, p0, *nd._fields(act, pre), w, sv_pre,
                 knorm_pre, idx, Gu.contiguous(), Gw, GM.contiguous(), Gp.contiguous(),
                 [du0, f[0], dV0, dM0, f[1], f[2], f[3], f[4], f[5], f[6], dp0], M0.new_empty((7 + R) * N))
        if dv_link is not None:
            dV0.add_(dv_link)
        dp0.add_(dp_link.view(B, 1, N))
        dvector = torch.empty_like(vector)
        nd._fn("activate_backward", vector)(B, vector.shape[1], len(ranges) // 4, ranges, vector.data_ptr(),
                                            act.data_ptr(), dact.data_ptr(), dvector.data_ptr())
        return None, dvector, du0, None, dV0, dM0, dp0, grad_token, None, None
