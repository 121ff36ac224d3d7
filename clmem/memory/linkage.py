"""DNC temporal link matrix, precedence and directional reads (Graves et al. 2016; DeepMind ``TemporalLinkage``).

The link matrix ``[B, H, N, N]`` is the memory and time hot spot, so besides the plain primitives
(``update_link``, ``directional_read_weights``) there is a fused ``temporal_link_step`` used by a standalone
``DNCMemory.step``. A whole unroll (``DNCCore.forward``) uses ``link_tape.LinkTape`` instead, which keeps the
link matrices out of autograd altogether.
Both are custom autograd functions that save only their inputs (``prev_link`` is the previous step's output and
is alive anyway) plus, for the fused one, its output link. The forward pass allocates one ``[B, H, N, N]``
tensor; the backward pass allocates one more and works in place / in small chunks otherwise.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

_CHUNK_ELEMENTS = 1 << 21  # temporaries in the backward pass stay below ~8 MiB (float32)


def _zero_diagonal_(x: Tensor) -> Tensor:
    """Zero the diagonal of the last two dims in place and return ``x``."""
    x.diagonal(dim1=-2, dim2=-1).zero_()
    return x


def _chunks(num_matrices: int, matrix_elements: int) -> Iterator[slice]:
    """Slices over the flattened ``B*H`` matrices so that each chunk has about ``_CHUNK_ELEMENTS`` elements."""
    step = max(1, _CHUNK_ELEMENTS // max(1, matrix_elements))
    for start in range(0, num_matrices, step):
        yield slice(start, min(start + step, num_matrices))


def _one_minus_outer_sum(write_weights: Tensor) -> Tensor:
    """``1 - w_i - w_j`` as ``[M, N, N]`` for flat ``write_weights [M, N]``, in one rank-3 batched matmul:
    ``[-w, -1, 1] @ [1; w; 1]``."""
    ones = torch.ones_like(write_weights)
    left = torch.stack([-write_weights, -ones, ones], dim=-1)  # [M, N, 3]
    right = torch.stack([ones, write_weights, ones], dim=-2)  # [M, 3, N]
    return torch.bmm(left, right)


def _link_forward(prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """``(1 - w_i - w_j) L'_ij + w_i p_j`` with a zero diagonal; one ``[B, H, N, N]`` allocation."""
    n = prev_link.shape[-1]
    flat_w = write_weights.reshape(-1, n)
    link = _one_minus_outer_sum(flat_w)  # [B*H, N, N], becomes the new link in place
    link.mul_(prev_link.reshape(-1, n, n))
    link.baddbmm_(flat_w.unsqueeze(-1), prev_precedence.reshape(-1, 1, n))
    return _zero_diagonal_(link.view(prev_link.shape))


def _link_backward(
    grad: Tensor, prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor, needs: Tuple[bool, ...]
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of ``_link_forward``; ``grad`` (contiguous) is owned by the caller and overwritten with ``dL'``."""
    _zero_diagonal_(grad)  # the output diagonal is a constant 0
    n = grad.shape[-1]
    flat_grad, flat_link = grad.view(-1, n, n), prev_link.reshape(-1, n, n)
    flat_w = write_weights.reshape(-1, n)
    grad_precedence = grad_write = None
    if needs[1]:  # dp_j = sum_i G_ij w_i
        grad_precedence = torch.matmul(write_weights.unsqueeze(-2), grad).squeeze(-2)
    if needs[2]:  # dw_k = sum_j G_kj (p_j - L'_kj) - sum_i G_ik L'_ik
        sums = torch.empty_like(flat_w)
        for part in _chunks(flat_grad.shape[0], n * n):
            product = flat_grad[part] * flat_link[part]
            torch.add(product.sum(-1), product.sum(-2), out=sums[part])
        grad_write = torch.matmul(grad, prev_precedence.unsqueeze(-1)).squeeze(-1) - sums.view_as(write_weights)
    if not needs[0]:
        return None, grad_precedence, grad_write
    for part in _chunks(flat_grad.shape[0], n * n):  # dL'_ij = (1 - w_i - w_j) G_ij, in place
        flat_grad[part].mul_(_one_minus_outer_sum(flat_w[part]))
    return grad, grad_precedence, grad_write


class _LinkUpdate(torch.autograd.Function):
    """``update_link`` as an autograd function that saves only its three inputs."""

    @staticmethod
    def forward(ctx, prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
        ctx.save_for_backward(prev_link, prev_precedence, write_weights)
        return _link_forward(prev_link, prev_precedence, write_weights)

    @staticmethod
    def backward(ctx, grad_link: Tensor) -> Tuple[Optional[Tensor], ...]:
        prev_link, prev_precedence, write_weights = ctx.saved_tensors
        grad = grad_link.clone(memory_format=torch.contiguous_format)
        return _link_backward(grad, prev_link, prev_precedence, write_weights, ctx.needs_input_grad)


def _directional(link: Tensor, read_weights: Tensor) -> Tuple[Tensor, Tensor]:
    """Forward ``L w`` and backward ``L^T w`` weights, both ``[B, R, H, N]``."""
    forward = torch.matmul(link, read_weights.transpose(1, 2).unsqueeze(1)).permute(0, 3, 1, 2)
    backward = torch.matmul(read_weights.unsqueeze(1), link).transpose(1, 2)
    return forward, backward


def _accumulate_read_gradients(
    grad: Tensor, link: Tensor, read_weights: Tensor, grad_forward: Optional[Tensor], grad_backward: Optional[Tensor]
) -> Optional[Tensor]:
    """Add the directional reads' link gradients into ``grad`` in place; return the read-weight gradient.

    ``f_i = sum_j L_ij w_j`` gives ``dL_ij += sum_r gf_ri w_rj``; ``b_j = sum_i w_i L_ij`` gives
    ``dL_ij += sum_r w_ri gb_rj``: both go into one rank-``2R`` batched ``baddbmm_``.
    """
    b, h, n, _ = link.shape
    reads = read_weights.unsqueeze(1).expand(b, h, -1, n)  # [B, H, R, N]
    lefts, rights, grad_read = [], [], None
    # incoming gradients are often strided views (cat/sum backward): make them dense, or bmm falls back to a
    # slow per-matrix loop
    if grad_forward is not None:
        g = grad_forward.permute(0, 2, 1, 3).contiguous()  # [B, H, R, N]
        lefts.append(g.transpose(-1, -2))
        rights.append(reads)
        grad_read = torch.matmul(g, link).sum(1)
    if grad_backward is not None:
        g = grad_backward.permute(0, 2, 1, 3).contiguous()
        lefts.append(reads.transpose(-1, -2))
        rights.append(g)
        term = torch.matmul(g, link.transpose(-1, -2)).sum(1)
        grad_read = term if grad_read is None else grad_read + term
    if lefts:
        left = torch.cat(lefts, dim=-1).reshape(b * h, n, -1)
        right = torch.cat(rights, dim=-2).reshape(b * h, -1, n)
        grad.view(b * h, n, n).baddbmm_(left, right)
    return grad_read


class _TemporalLinkStep(torch.autograd.Function):
    """Link update fused with forward/backward reads; link gradients are accumulated in place."""

    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights, prev_read_weights):
        link = _link_forward(prev_link, prev_precedence, write_weights)
        ctx.save_for_backward(prev_link, prev_precedence, write_weights, prev_read_weights, link)
        ctx.set_materialize_grads(False)
        return (link, *_directional(link, prev_read_weights))

    @staticmethod
    def backward(ctx, grad_link, grad_forward, grad_backward):
        prev_link, prev_precedence, write_weights, read_weights, link = ctx.saved_tensors
        b, h, n, _ = link.shape
        if grad_link is None:
            grad = torch.zeros(link.shape, dtype=link.dtype, device=link.device)
        else:
            grad = grad_link.clone(memory_format=torch.contiguous_format)
        grad_read = _accumulate_read_gradients(grad, link, read_weights, grad_forward, grad_backward)
        if grad_read is not None and not ctx.needs_input_grad[3]:
            grad_read = None
        grads = _link_backward(grad, prev_link, prev_precedence, write_weights, ctx.needs_input_grad[:3])
        return (*grads, grad_read)


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
    return _Precedence.apply(prev_precedence, write_weights)


class _Precedence(torch.autograd.Function):
    """``p = (1 - sum_n w) p0 + w`` as one node: ``dp0 = G (1 - sum_n w)``, ``dw = G - sum_n G p0``."""

    @staticmethod
    def forward(ctx, prev_precedence, write_weights):
        ctx.save_for_backward(prev_precedence, write_weights)
        keep = 1.0 - write_weights.sum(dim=-1, keepdim=True)
        return torch.addcmul(write_weights, keep, prev_precedence)

    @staticmethod
    def backward(ctx, grad):
        prev_precedence, write_weights = ctx.saved_tensors
        grad_prev = grad_write = None
        if ctx.needs_input_grad[0]:
            grad_prev = grad * (1.0 - write_weights.sum(dim=-1, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_write = grad - (grad * prev_precedence).sum(dim=-1, keepdim=True)
        return grad_prev, grad_write


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


def temporal_link_step(
    prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor, prev_read_weights: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused ``update_link`` + forward and backward ``directional_read_weights`` on the new link.

    Same values and gradients as the three separate calls, with fewer ``[B, H, N, N]`` temporaries.

    Args:
        prev_link: ``L_{t-1}`` ``[B, H, N, N]``.
        prev_precedence: ``p_{t-1}`` ``[B, H, N]``.
        write_weights: ``w^w_t`` ``[B, H, N]``.
        prev_read_weights: ``w^r_{t-1}`` ``[B, R, N]``.

    Returns:
        ``(L_t [B, H, N, N], forward_weights [B, R, H, N], backward_weights [B, R, H, N])``.
    """
    return _TemporalLinkStep.apply(prev_link, prev_precedence, write_weights, prev_read_weights)
