"""Fused content addressing ``softmax_N(beta * cos(k, M))`` as one autograd node with a hand-written backward.

Content lookups run twice per DNC step; fusing the ~15 elementwise/matmul ops of the composed form into one
node cuts per-step autograd overhead, which dominates for small memories. Values and gradients equal the
composed form (checked by ``gradcheck`` and against it in the tests).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _norms(x: Tensor, eps: float) -> Tensor:
    """``sqrt(sum(x**2, -1) + eps)`` keeping the last dim, without an ``x``-sized temporary."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().add_(eps).sqrt_()


class ContentWeights(torch.autograd.Function):
    """``memory [B, N, W]``, ``keys [B, H, W]``, ``strengths [B, H]`` -> ``[B, H, N]``."""

    @staticmethod
    def forward(ctx, memory: Tensor, keys: Tensor, strengths: Tensor, eps: float) -> Tensor:
        memory_norms = _norms(memory, eps)  # [B, N, 1]
        key_norms = _norms(keys, eps)  # [B, H, 1]
        denominator = torch.matmul(key_norms, memory_norms.transpose(-1, -2)).add_(eps)  # [B, H, N]
        similarity = torch.matmul(keys, memory.transpose(-1, -2)).div_(denominator)
        weights = torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)
        ctx.save_for_backward(memory, keys, strengths, weights, similarity, denominator, key_norms, memory_norms)
        return weights

    @staticmethod
    def backward(ctx, grad_weights: Tensor) -> Tuple[Optional[Tensor], ...]:
        memory, keys, strengths, weights, similarity, denominator, key_norms, memory_norms = ctx.saved_tensors
        need_memory, need_keys, need_strengths, _ = ctx.needs_input_grad
        grad_weights = grad_weights.contiguous()  # strided views make the batched matmuls below fall back to loops
        grad_logits = weights * (grad_weights - (grad_weights * weights).sum(-1, keepdim=True))
        grad_strengths = (grad_logits * similarity).sum(-1) if need_strengths else None
        grad_dot = grad_logits.mul_(strengths.unsqueeze(-1)).div_(denominator)  # d/d(k.M)
        grad_denominator = -grad_dot * similarity
        grad_memory = grad_keys = None
        if need_keys:  # the norm terms are scaled on the small [B, H, 1] side, then one fused baddbmm
            grad_key_norms = torch.matmul(grad_denominator, memory_norms)  # [B, H, 1]
            grad_keys = torch.baddbmm(keys * grad_key_norms.div_(key_norms), grad_dot, memory)
        if need_memory:
            grad_memory_norms = torch.matmul(grad_denominator.transpose(-1, -2), key_norms)  # [B, N, 1]
            grad_memory = torch.baddbmm(memory * grad_memory_norms.div_(memory_norms), grad_dot.transpose(-1, -2),
                                        keys)
        return grad_memory, grad_keys, grad_strengths, None
