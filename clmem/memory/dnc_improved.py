"""Later improvements of the DNC as small pure functions and a layer-normalised controller.

Shape symbols: ``B`` batch, ``N`` slots, ``W`` word size, ``R`` read heads, ``H`` write heads.

* :func:`masked_content_weights` — masked content addressing (Csordás & Schmidhuber 2019): a mask ``m`` in
  ``[0, 1]^W`` from the controller is applied to the key **and** to every memory row before the cosine similarity,
  so a lookup can match on part of a word (e.g. an address field) and ignore the rest.
* :func:`erase_freed` — de-allocation that erases (Csordás & Schmidhuber 2019): the memory is multiplied by the
  retention ``psi = prod_r (1 - f_r w^r_{t-1})`` before the write, so freed cells stop matching content lookups.
* :func:`sharpen_directional` — link-distribution sharpness (Csordás & Schmidhuber 2019): the forward/backward
  weights are raised to a learned power ``s >= 1`` and renormalised; here to their **original total mass** (not to
  1), so ``s = 1`` is the plain DNC, an empty link stays empty and the weights keep summing to at most 1.
* :class:`LayerNormController` — layer-normalised LSTM (Ba et al. 2016) as used by the rsDNC (Franke et al.
  2018); bypass dropout, the rsDNC's other change, is applied by the core to the controller output on the path
  that bypasses the memory (``MemoryCore._output``).

All are used by ``DNCMemory`` / ``DNCCore`` when the matching ``DNCMemoryConfig`` / ``DNCCoreConfig`` option is on
(every option off by default); the optional C kernels do not implement them, so an enabled option runs the pure
torch path (tested).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ._content import ContentWeights
from .controller import Controller

EPSILON = 1e-6

__all__ = ["masked_content_weights", "erase_freed", "sharpen_directional", "LayerNormLSTMCell",
           "LayerNormController"]


def masked_content_weights(memory: Tensor, keys: Tensor, strengths: Tensor, masks: Tensor,
                           eps: float = EPSILON) -> Tensor:
    """Masked content addressing ``c_h = softmax_N(beta_h * D(k_h o m_h, M_i o m_h))``.

    Args:
        memory: ``M`` ``[B, N, W]``.
        keys: ``k`` ``[B, H, W]`` (``H`` any number of heads).
        strengths: ``beta`` ``[B, H]`` (after ``oneplus``).
        masks: ``m`` ``[B, H, W]`` in ``[0, 1]`` (a sigmoid of the interface); all ones is plain content addressing.
        eps: as in ``addressing.cosine_similarity``.

    Returns:
        ``[B, H, N]`` weights, each row summing to 1.
    """
    b, n, w = memory.shape
    h = keys.shape[1]
    masked_memory = (memory.unsqueeze(1) * masks.unsqueeze(2)).reshape(b * h, n, w)  # one masked copy per head
    weights = ContentWeights.apply(masked_memory, (keys * masks).reshape(b * h, 1, w), strengths.reshape(b * h, 1),
                                   eps)
    return weights.reshape(b, h, n)


def erase_freed(memory: Tensor, free_gates: Tensor, prev_read_weights: Tensor) -> Tensor:
    """De-allocation erase ``M' = M o (psi 1^T)`` with the retention ``psi = prod_r (1 - f_r w^r_r)``.

    Args:
        memory: ``M_{t-1}`` ``[B, N, W]``.
        free_gates: ``f`` ``[B, R]`` in ``[0, 1]``.
        prev_read_weights: ``w^r_{t-1}`` ``[B, R, N]``.

    Returns:
        ``[B, N, W]``: each row scaled by its retention in ``[0, 1]`` (the same ``psi`` as the usage update).
    """
    retention = torch.prod(1.0 - free_gates.unsqueeze(-1) * prev_read_weights, dim=1)  # [B, N]
    return memory * retention.unsqueeze(-1)


def sharpen_directional(weights: Tensor, sharpness: Tensor, eps: float = EPSILON) -> Tensor:
    """Link-distribution sharpness ``d'_i = (sum_j d_j) r_i^s / (sum_j r_j^s + eps)`` with ``r = d / max_j d_j``
    (``= (sum_j d_j) d_i^s / sum_j d_j^s``; a row of zeros stays zero).

    Args:
        weights: forward or backward weights ``d`` ``[B, R, H, N]``, non-negative, each row summing to ``<= 1``.
        sharpness: ``s`` ``[B, R, H]``, ``>= 1`` (``oneplus`` of the interface).

    Returns:
        ``[B, R, H, N]``, non-negative, each row keeping its total mass ``sum_j d_j`` (up to ``eps``).
    """
    weights = weights.clamp_min(0.0)
    peak = weights.amax(dim=-1, keepdim=True)
    # d^s / sum d^s computed on d / max(d) (the ratio is scale-free): the powered sum is then >= 1, so a weak link
    # raised to a large power does not vanish under eps; torch gives 0^s a zero gradient in s
    powered = (weights / torch.where(peak > 0, peak, torch.ones_like(peak))).pow(sharpness.unsqueeze(-1))
    mass = weights.sum(dim=-1, keepdim=True)
    return powered * (mass / (powered.sum(dim=-1, keepdim=True) + eps))


class LayerNormLSTMCell(nn.Module):
    """Layer-normalised LSTM cell (Ba et al. 2016): ``gates = LN(W_x x) + LN(W_h h) + b``,
    ``c' = sigma(f) c + sigma(i) tanh(g)``, ``h' = sigma(o) tanh(LN(c'))``; ``x [B, D]``, ``h, c [B, S]``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_map = nn.Linear(input_size, 4 * hidden_size, bias=False)
        self.hidden_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.norm_input = nn.LayerNorm(4 * hidden_size)
        self.norm_hidden = nn.LayerNorm(4 * hidden_size)
        self.norm_cell = nn.LayerNorm(hidden_size)
        with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al. 2015), gates ordered i, f, g, o
            self.bias[hidden_size:2 * hidden_size] = 1.0

    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        hidden, cell = state
        gates = self.norm_input(self.input_map(x)) + self.norm_hidden(self.hidden_map(hidden)) + self.bias
        i, f, g, o = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.norm_cell(cell)), cell


class LayerNormController(Controller):
    """``Controller`` with layer normalisation: the LSTM is a :class:`LayerNormLSTMCell`, the feed-forward kind
    ``tanh(LN(Linear(x)))``. Same API as ``Controller`` (explicit ``ControllerState``)."""

    @staticmethod
    def _make_cell(input_size: int, hidden_size: int, kind: str) -> nn.Module:
        if kind == "lstm":
            return LayerNormLSTMCell(input_size, hidden_size)
        return nn.Sequential(nn.Linear(input_size, hidden_size), nn.LayerNorm(hidden_size))
