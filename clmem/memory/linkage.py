"""DNC temporal link matrix, precedence and directional reads (Graves et al. 2016; DeepMind ``TemporalLinkage``).

The link update is the memory hot spot (``[B, H, N, N]``), so it is a custom autograd function that saves only
its inputs (``prev_link`` is the previous step's output and is alive anyway) and allocates a single
``[B, H, N, N]`` tensor in the forward pass and two in the backward pass.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _zero_diagonal_(x: Tensor) -> Tensor:
    """Zero the diagonal of the last two dims in place and return ``x``."""
    x.diagonal(dim1=-2, dim2=-1).zero_()
    return x


class _LinkUpdate(torch.autograd.Function):
    """``L_ij = (1 - w_i - w_j) L'_ij + w_i p_j`` with ``L_ii = 0``; saves only the three inputs."""

    @staticmethod
    def forward(ctx, prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
        w_i = write_weights.unsqueeze(-1)
        w_j = write_weights.unsqueeze(-2)
        link = prev_link * (1.0 - w_i)
        link.addcmul_(prev_link, w_j, value=-1.0)
        link.addcmul_(w_i, prev_precedence.unsqueeze(-2))
        ctx.save_for_backward(prev_link, prev_precedence, write_weights)
        return _zero_diagonal_(link)

    @staticmethod
    def backward(ctx, grad_link: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        prev_link, prev_precedence, write_weights = ctx.saved_tensors
        need_link, need_precedence, need_write = ctx.needs_input_grad
        grad = _zero_diagonal_(grad_link.clone())  # the diagonal is a constant 0
        w_i = write_weights.unsqueeze(-1)
        w_j = write_weights.unsqueeze(-2)
        grad_precedence = grad_write = grad_prev_link = None
        if need_precedence:  # dp_j = sum_i G_ij w_i
            grad_precedence = torch.matmul(write_weights.unsqueeze(-2), grad).squeeze(-2)
        if need_write:  # dw_k = sum_j G_kj (p_j - L_kj) - sum_i G_ik L_ik
            grad_times_link = grad * prev_link
            grad_write = torch.matmul(grad, prev_precedence.unsqueeze(-1)).squeeze(-1)
            grad_write = grad_write - grad_times_link.sum(-1) - grad_times_link.sum(-2)
            del grad_times_link
        if need_link:  # dL'_ij = (1 - w_i - w_j) G_ij
            grad_prev_link = grad.mul_(1.0 - w_i)
            grad_prev_link.addcmul_(grad_link, w_j, value=-1.0)
            _zero_diagonal_(grad_prev_link)
        return grad_prev_link, grad_precedence, grad_write


def update_link(prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """Temporal link update ``L_t[i, j] = (1 - w_i - w_j) L_{t-1}[i, j] + w_i p_{t-1}[j]``, diagonal zeroed.

    ``L[i, j]`` is the degree to which slot ``i`` was written right after slot ``j``. One link matrix per write
    head. Implemented as a lean custom autograd function (supports float64 ``gradcheck``).

    Args:
        prev_link: ``L_{t-1}`` ``[B, H, N, N]``.
        prev_precedence: ``p_{t-1}`` ``[B, H, N]``.
        write_weights: ``w^w_t`` ``[B, H, N]``.

    Returns:
        ``L_t`` ``[B, H, N, N]`` with zero diagonal and rows/columns summing to at most 1.
    """
    return _LinkUpdate.apply(prev_link, prev_precedence, write_weights)


def update_precedence(prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """Precedence ``p_t = (1 - sum_i w_t(i)) p_{t-1} + w_t``.

    Args:
        prev_precedence: ``p_{t-1}`` ``[B, H, N]``.
        write_weights: ``w^w_t`` ``[B, H, N]``.

    Returns:
        ``p_t`` ``[B, H, N]`` summing to at most 1.
    """
    return (1.0 - write_weights.sum(dim=-1, keepdim=True)) * prev_precedence + write_weights


def directional_read_weights(link: Tensor, prev_read_weights: Tensor, forward: bool) -> Tensor:
    """Forward ``f = L w^r`` or backward ``b = L^T w^r`` weights for every (read head, write head) pair.

    Args:
        link: ``L`` ``[B, H, N, N]``.
        prev_read_weights: ``w^r_{t-1}`` ``[B, R, N]``.
        forward: ``True`` for ``f[i] = sum_j L[i, j] w[j]`` (follow writes forwards in time),
            ``False`` for ``b[j] = sum_i w[i] L[i, j]``.

    Returns:
        ``[B, R, H, N]``.
    """
    if forward:
        result = torch.matmul(link, prev_read_weights.transpose(1, 2).unsqueeze(1))  # [B, H, N, R]
        return result.permute(0, 3, 1, 2)
    result = torch.matmul(prev_read_weights.unsqueeze(1), link)  # [B, H, R, N]
    return result.transpose(1, 2)
