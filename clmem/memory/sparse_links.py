"""Sparse temporal links for the sparse access memory (the SDNC of Rae et al. 2016, Supplementary D).

Shapes: B batch, N slots, L link neighbours kept per slot (``link_neighbours``), P precedence entries, J written
entries, R read heads, K neighbours, M candidates.

The DNC link matrix ``L[i, j]`` (slot i written after slot j) is kept sparse in both directions, each truncated to
the L strongest entries: ``prev_*[b, i]`` is row i (the slots written before i), ``next_*[b, j]`` is column j (the
slots written after j); the precedence ``p`` keeps its P strongest entries. On a write with per-slot weights w:

* rows and columns of written slots decay: ``L[i, :] *= 1 - w_i``, ``L[:, i] *= 1 - w_i`` (on the lists of slot i;
  the mirrored entries in other slots' lists are not revisited — an approximation of DNC's ``1 - w_i - w_j``),
* new links ``L[i, j] += w_i p_j`` are merged into ``prev[i]`` and ``next[j]`` (duplicates summed, self-links
  dropped, strongest L kept), then ``p <- (1 - sum w) p + w``.

Link values are bookkeeping without autograd (like usage and the k-NN indices): gradients reach the read-mode
gates, the content weights and the previous read weights through the forward/backward weights, not the links.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor


class SparseLinks(NamedTuple):
    """Mutable link buffers (updated in place): ``prev_idx/prev_val [B, N, L]``, ``next_idx/next_val [B, N, L]``,
    ``prec_idx/prec_val [B, P]``."""

    prev_idx: Tensor
    prev_val: Tensor
    next_idx: Tensor
    next_val: Tensor
    prec_idx: Tensor
    prec_val: Tensor


def empty_links(batch: int, slots: int, neighbours: int, precedence: int, dtype: torch.dtype,
                device: Optional[torch.device]) -> SparseLinks:
    """No links, zero precedence (indices 0 with weight 0)."""
    idx = torch.zeros(batch, slots, neighbours, dtype=torch.long, device=device)
    val = torch.zeros(batch, slots, neighbours, dtype=dtype, device=device)
    prec_idx = torch.zeros(batch, precedence, dtype=torch.long, device=device)
    return SparseLinks(idx, val, idx.clone(), val.clone(), prec_idx, val.new_zeros(batch, precedence))


def clear_links(links: SparseLinks) -> None:
    """In place: back to ``empty_links``."""
    for tensor in links:
        tensor.zero_()


def merge_top(indices: Tensor, values: Tensor, keep: int, exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Sum ``values [..., M]`` of equal ``indices [..., M]``, zero those equal to ``exclude [...]``, keep the ``keep``
    largest distinct slots -> ``(indices [..., keep], values [..., keep])`` (differentiable in ``values``)."""
    if exclude is not None:
        values = values.masked_fill(indices == exclude.unsqueeze(-1), 0.0)
    same = indices.unsqueeze(-1) == indices.unsqueeze(-2)  # [..., M, M]
    totals = torch.einsum("...m,...nm->...n", values, same.to(values.dtype))
    first = torch.argmax(same.long(), dim=-1) == torch.arange(indices.shape[-1], device=indices.device)
    top = torch.topk(totals.masked_fill(~first, -1.0), keep, dim=-1)
    return indices.gather(-1, top.indices), top.values.clamp(min=0.0)


def _rows(buffer: Tensor, slots: Tensor) -> Tensor:
    """``buffer [B, N, L]``, ``slots [B, X]`` -> ``[B, X, L]``."""
    return buffer[torch.arange(slots.shape[0], device=slots.device).unsqueeze(-1), slots]


def _set_rows(buffer: Tensor, slots: Tensor, rows: Tensor) -> None:
    """In place ``buffer[b, slots[b, x]] = rows[b, x]``; duplicate slots must carry identical rows."""
    buffer[torch.arange(slots.shape[0], device=slots.device).unsqueeze(-1), slots] = rows


def _canonical(slots: Tensor, rows: Tensor) -> Tensor:
    """Give every duplicate of a slot the rows of its first occurrence (so in-place scatters are well defined)."""
    first = torch.argmax((slots.unsqueeze(-1) == slots.unsqueeze(-2)).long(), dim=-1)
    return rows.gather(1, first.unsqueeze(-1).expand_as(rows))


def update_links(links: SparseLinks, slots: Tensor, slot_weights: Tensor, first: Tensor) -> None:
    """In place link and precedence update for a write: ``slots [B, J]``, ``slot_weights [B, J]`` (each entry holds
    its slot's total write weight, <= 1), ``first [B, J]`` (bool, first entry of each slot)."""
    w = _canonical(slots, slot_weights.detach().unsqueeze(-1)).squeeze(-1)  # duplicates bitwise identical
    keep_l, keep_p = links.prev_idx.shape[-1], links.prec_idx.shape[-1]
    decay = (1.0 - w).unsqueeze(-1)
    _set_rows(links.prev_val, slots, _rows(links.prev_val, slots) * decay)
    _set_rows(links.next_val, slots, _rows(links.next_val, slots) * decay)
    p_idx, p_val = links.prec_idx, links.prec_val
    batch, entries = slots.shape
    # rows of written slots i: L[i, j] += w_i p_j
    cand_idx = torch.cat([_rows(links.prev_idx, slots), p_idx.unsqueeze(1).expand(-1, entries, -1)], -1)
    cand_val = torch.cat([_rows(links.prev_val, slots), w.unsqueeze(-1) * p_val.unsqueeze(1)], -1)
    idx, val = merge_top(cand_idx, cand_val, keep_l, exclude=slots)
    _set_rows(links.prev_idx, slots, _canonical(slots, idx))
    _set_rows(links.prev_val, slots, _canonical(slots, val))
    # columns of precedence slots j: L[i, j] += w_i p_j for every written slot i (counted once)
    w_once = w * first
    cand_idx = torch.cat([_rows(links.next_idx, p_idx), slots.unsqueeze(1).expand(-1, p_idx.shape[1], -1)], -1)
    cand_val = torch.cat([_rows(links.next_val, p_idx), p_val.unsqueeze(-1) * w_once.unsqueeze(1)], -1)
    idx, val = merge_top(cand_idx, cand_val, keep_l, exclude=p_idx)
    _set_rows(links.next_idx, p_idx, _canonical(p_idx, idx))
    _set_rows(links.next_val, p_idx, _canonical(p_idx, val))
    # precedence p <- (1 - sum_i w_i) p + w
    scale = (1.0 - w_once.sum(-1, keepdim=True)).clamp(min=0.0)
    new_idx, new_val = merge_top(torch.cat([p_idx, slots], -1), torch.cat([scale * p_val, w_once], -1), keep_p)
    links.prec_idx.copy_(new_idx)
    links.prec_val.copy_(new_val)


def directional_candidates(links: SparseLinks, read_indices: Tensor, read_weights: Tensor,
                           forward: bool) -> Tuple[Tensor, Tensor]:
    """Sparse ``L w`` (forward) or ``L^T w`` (backward) of previous read weights ``[B, R, K]`` over
    ``read_indices [B, R, K]`` -> ``(indices [B, R, K*L], weights [B, R, K*L])`` with possible duplicates."""
    idx_buffer, val_buffer = (links.next_idx, links.next_val) if forward else (links.prev_idx, links.prev_val)
    batch, reads, k = read_indices.shape
    flat = read_indices.reshape(batch, reads * k)
    idx = _rows(idx_buffer, flat).reshape(batch, reads, -1)
    val = (_rows(val_buffer, flat).reshape(batch, reads, k, -1) * read_weights.unsqueeze(-1)).reshape(batch, reads, -1)
    return idx, val
