"""Addressing primitives of the NTM, DNC and LRUA memories as small pure functions.

Shape symbols follow the papers: ``B`` batch, ``N`` memory slots (``memory_size``), ``W`` word size,
``R`` read heads (``num_reads``), ``H`` write heads (``num_writes``), ``S`` shift-kernel size (NTM).

References:
    Graves et al. 2014, "Neural Turing Machines" (NTM).
    Graves et al. 2016, "Hybrid computing using a neural network with dynamic external memory" (DNC);
    DNC semantics follow DeepMind's open-source ``dnc/addressing.py`` and ``dnc/access.py``.
    Santoro et al. 2016, "One-shot learning with memory-augmented neural networks" (LRUA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._content import ContentWeights
from .linkage import directional_read_weights, temporal_link_step, update_link, update_precedence

EPSILON = 1e-6

__all__ = [
    "EPSILON",
    "oneplus",
    "cosine_similarity",
    "content_weights",
    "read_memory",
    "interpolate",
    "circular_shift",
    "sharpen",
    "update_usage",
    "allocation_weights",
    "write_allocation_weights",
    "write_weights",
    "erase_and_write",
    "update_link",
    "update_precedence",
    "directional_read_weights",
    "temporal_link_step",
    "read_weights",
    "least_used_weights",
    "lrua_write_weights",
    "lrua_usage",
]


# ----------------------------------------------------------------------------------------------- content
def oneplus(x: Tensor) -> Tensor:
    """``1 + softplus(x)``, the DNC nonlinearity for key strengths (values in ``[1, inf)``)."""
    return 1.0 + F.softplus(x)


def _vector_norms(x: Tensor, eps: float) -> Tensor:
    """``sqrt(sum(x**2, -1) + eps)`` keeping the last dim: ``[..., W] -> [..., 1]`` (DeepMind ``_vector_norms``)."""
    return torch.sqrt(torch.sum(x * x, dim=-1, keepdim=True) + eps)


def cosine_similarity(memory: Tensor, keys: Tensor, eps: float = EPSILON) -> Tensor:
    """Cosine similarity ``D(k_h, M_i)`` of every key with every memory row.

    Args:
        memory: ``M`` ``[B, N, W]``.
        keys: ``k`` ``[B, H, W]`` (``H`` any number of heads).
        eps: added inside the square root of each norm and to the denominator, so an all-zero memory or key
            gives similarity 0 with finite gradients.

    Returns:
        ``[B, H, N]`` similarities in ``[-1, 1]``.
    """
    dot = torch.matmul(keys, memory.transpose(-1, -2))
    norms = torch.matmul(_vector_norms(keys, eps), _vector_norms(memory, eps).transpose(-1, -2))
    return dot / (norms + eps)


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor, eps: float = EPSILON) -> Tensor:
    """Content-based addressing ``c = softmax_N(beta * D(k, M))``.

    Args:
        memory: ``M`` ``[B, N, W]``.
        keys: ``k`` ``[B, H, W]``.
        strengths: ``beta`` ``[B, H]`` (already passed through ``oneplus``); large values are safe.

    Returns:
        ``[B, H, N]`` weights, each row summing to 1.
    """
    return ContentWeights.apply(memory, keys, strengths, eps)  # fused; equals softmax(cosine_similarity * beta)


def read_memory(memory: Tensor, read_weights: Tensor) -> Tensor:
    """Read words ``r_r = sum_i w_r(i) M_i``: ``memory [B, N, W]``, ``read_weights [B, R, N]`` -> ``[B, R, W]``."""
    return torch.matmul(read_weights, memory)


# ----------------------------------------------------------------------------------------------- NTM
def interpolate(content_weights: Tensor, prev_weights: Tensor, gate: Tensor) -> Tensor:
    """NTM interpolation ``w_g = g * w_c + (1 - g) * w_{t-1}``.

    Args:
        content_weights: ``w_c`` ``[B, H, N]``.
        prev_weights: ``w_{t-1}`` ``[B, H, N]``.
        gate: ``g`` ``[B, H]`` in ``[0, 1]``.

    Returns:
        ``[B, H, N]``.
    """
    gate = gate.unsqueeze(-1)
    return gate * content_weights + (1.0 - gate) * prev_weights


def circular_shift(weights: Tensor, shift: Tensor) -> Tensor:
    """NTM rotation: circular convolution ``w~(i) = sum_k s(k) w((i - (k - S//2)) mod N)``.

    Args:
        weights: ``w`` ``[B, H, N]``.
        shift: ``s`` ``[B, H, S]`` with ``S`` odd; index ``k`` means a shift by ``k - S//2`` slots (centred),
            so ``s = [0, 0, 1]`` moves all weight one slot forward (``w~(i) = w(i - 1)``).

    Returns:
        ``[B, H, N]``.
    """
    num_shifts, memory_size = shift.shape[-1], weights.shape[-1]
    if num_shifts % 2 != 1:
        raise ValueError(f"circular_shift.shift: expected an odd last dimension S, got {num_shifts}")
    slots = torch.arange(memory_size, device=weights.device).unsqueeze(1)
    offsets = torch.arange(num_shifts, device=weights.device).unsqueeze(0) - num_shifts // 2
    index = torch.remainder(slots - offsets, memory_size)  # [N, S]
    shifted = weights[..., index]  # [B, H, N, S]
    return torch.matmul(shifted, shift.unsqueeze(-1)).squeeze(-1)


def sharpen(weights: Tensor, gamma: Tensor, eps: float = EPSILON) -> Tensor:
    """NTM sharpening ``w = w~^gamma / sum_i w~(i)^gamma``.

    Computed on ``w~ / max_i w~(i)`` (the ratio is the same): the largest term is then 1, so the sum is >= 1
    and ``eps`` (added to it, for an all-zero ``w~``) never takes mass from a weighting. On ``w~`` itself the
    sum underflows next to ``eps`` for a spread weighting and a large ``gamma`` (``0.5, 0.3, 0.2`` with
    ``gamma = 20``: sum ``1e-6``), and the head silently lost its focus. The max is a constant for autograd
    (the result does not depend on the scale of ``w~``).

    Args:
        weights: ``w~`` ``[B, H, N]``, non-negative.
        gamma: ``[B, H]`` with ``gamma >= 1`` (``1 + softplus``).

    Returns:
        ``[B, H, N]`` summing to 1 (to 0 for an all-zero ``w~``).
    """
    weights = weights.clamp_min(0.0)
    scale = weights.detach().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    powered = (weights / scale).pow(gamma.unsqueeze(-1))
    return powered / (powered.sum(dim=-1, keepdim=True) + eps)


# ----------------------------------------------------------------------------------------------- DNC
def update_usage(
    prev_usage: Tensor, prev_write_weights: Tensor, free_gates: Tensor, prev_read_weights: Tensor
) -> Tensor:
    """DNC usage ``u_t = (u + w - u * w) * psi`` with retention ``psi = prod_r (1 - f_r w^r_r)``.

    Args:
        prev_usage: ``u_{t-1}`` ``[B, N]`` in ``[0, 1]``.
        prev_write_weights: ``w^w_{t-1}`` ``[B, H, N]``; heads combine as ``w = 1 - prod_h (1 - w_h)``.
        free_gates: ``f`` ``[B, R]``.
        prev_read_weights: ``w^r_{t-1}`` ``[B, R, N]``.

    Returns:
        ``u_t`` ``[B, N]`` in ``[0, 1]``.
    """
    # As in DeepMind's Freeness module, usage is not differentiated through the write weights:
    # the write weights are detached (tf.stop_gradient) here; gradients still flow via free gates and reads.
    with torch.no_grad():
        write = 1.0 - _prod_over_heads(1.0 - prev_write_weights)
    return _Usage.apply(prev_usage, write, free_gates, prev_read_weights)


class _Usage(torch.autograd.Function):
    """``u = (u0 + (1 - u0) w) * prod_r (1 - f_r v_r)`` as one node (``w`` a constant).

    Backward with ``G = du``: ``du0 = G psi (1 - w)``; with ``phi_r = 1 - f_r v_r`` and ``P_r = prod_{r' != r}
    phi_r'`` (prefix times suffix products, no division), ``q_r = G a P_r``: ``df_r = -sum_n q_r v_r``,
    ``dv_r = -q_r f_r``.
    """

    @staticmethod
    def forward(ctx, prev_usage, write, free_gates, read_weights):
        kept = torch.addcmul(write, prev_usage, 1.0 - write)  # u0 + (1 - u0) w
        phi = torch.addcmul(torch.ones_like(read_weights), free_gates.unsqueeze(-1), read_weights, value=-1.0)
        retention = _prod_over_heads(phi)
        ctx.save_for_backward(write, free_gates, read_weights, kept, phi, retention)
        return kept * retention

    @staticmethod
    def backward(ctx, grad):
        write, free_gates, read_weights, kept, phi, retention = ctx.saved_tensors
        grad_usage = grad * retention * (1.0 - write) if ctx.needs_input_grad[0] else None
        grad_free = grad_read = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            r = phi.shape[1]
            ones = torch.ones_like(phi[:, :1])
            prefix = torch.cumprod(torch.cat([ones, phi[:, :-1]], 1), 1)  # prod_{r' < r}
            suffix = torch.cumprod(torch.cat([ones, phi.flip(1)[:, :-1]], 1), 1).flip(1)  # prod_{r' > r}
            q = (prefix * suffix).mul_((grad * kept).unsqueeze(1)).neg_() if r > 1 else \
                (grad * kept).unsqueeze(1).neg()  # dL/dphi_r * d phi_r / d(f_r v_r)
            if ctx.needs_input_grad[2]:
                grad_free = (q * read_weights).sum(-1)
            if ctx.needs_input_grad[3]:
                grad_read = q * free_gates.unsqueeze(-1)
        return grad_usage, None, grad_free, grad_read


def _prod_over_heads(x: Tensor) -> Tensor:
    """``prod`` over dim 1 (heads); a single head is just selected (cheaper than ``prod`` and its backward)."""
    return x[:, 0] if x.shape[1] == 1 else torch.prod(x, dim=1)


def _exclusive_cumprod(x: Tensor) -> Tensor:
    """``[a, b, c] -> [1, a, a*b]`` along the last dim (``x`` must be non-zero: callers clamp it to ``>= eps``)."""
    return torch.cumprod(x, dim=-1) / x


def allocation_weights(usage: Tensor, eps: float = EPSILON) -> Tensor:
    """DNC allocation ``a(phi_j) = (1 - u(phi_j)) prod_{i<j} u(phi_i)``, ``phi`` = slots by ascending usage.

    Usage is first mapped to ``eps + (1 - eps) * u`` (as DeepMind) so the cumulative product never hits 0.
    One stable ``torch.sort`` per call (ties go to the lower slot index, like DeepMind's ``top_k``).

    Args:
        usage: ``u`` ``[B, N]`` in ``[0, 1]``.

    Returns:
        ``[B, N]`` weights summing to at most 1.
    """
    return _Allocation.apply(usage, eps)


class _Allocation(torch.autograd.Function):
    """``allocation_weights`` as one node. With ``s`` the sorted ``eps + (1 - eps) u``, ``E_k = prod_{j<k} s_j``
    and ``a_k = (1 - s_k) E_k``: ``ds_k = -g_k E_k + (sum_{j>k} g_j a_j) / s_k`` (``s_k >= eps``), scattered back
    to slot order and times ``1 - eps``."""

    @staticmethod
    def forward(ctx, usage, eps):
        usage = eps + (1.0 - eps) * usage
        sorted_usage, indices = torch.sort(usage, dim=-1, stable=True)
        exclusive = _exclusive_cumprod(sorted_usage)
        sorted_allocation = (1.0 - sorted_usage) * exclusive
        ctx.save_for_backward(sorted_usage, indices, exclusive, sorted_allocation)
        ctx.eps = eps
        return torch.empty_like(sorted_allocation).scatter_(-1, indices, sorted_allocation)

    @staticmethod
    def backward(ctx, grad):
        sorted_usage, indices, exclusive, sorted_allocation = ctx.saved_tensors
        g = grad.gather(-1, indices)
        weighted = g * sorted_allocation
        suffix = torch.cumsum(weighted.flip(-1), -1).flip(-1)  # sum_{j >= k}, no cancellation
        later = torch.zeros_like(suffix)
        later[..., :-1] = suffix[..., 1:]  # sum_{j > k}
        grad_sorted = later.div_(sorted_usage).sub_(g.mul_(exclusive)).mul_(1.0 - ctx.eps)
        return torch.empty_like(grad_sorted).scatter_(-1, indices, grad_sorted), None


def write_allocation_weights(usage: Tensor, write_gates: Tensor, num_writes: int) -> Tensor:
    """Allocation weights for several write heads; each head's allocation raises usage for the next.

    ``a_h = allocation(u)`` then ``u <- u + (1 - u) * g_h * a_h`` (DeepMind ``write_allocation_weights``).
    The loop over heads is inherently sequential (head ``h`` depends on heads ``< h``).

    Args:
        usage: ``u`` ``[B, N]``.
        write_gates: ``g`` ``[B, H]`` (DeepMind passes ``allocation_gate * write_gate``).
        num_writes: ``H``.

    Returns:
        ``[B, H, N]``.
    """
    if write_gates.shape[-1] != num_writes:
        raise ValueError(f"write_allocation_weights.write_gates: expected last dim {num_writes}, "
                         f"got {write_gates.shape[-1]}")
    allocations = [allocation_weights(usage)]
    for head in range(1, num_writes):
        usage = usage + (1.0 - usage) * write_gates[:, head - 1 : head] * allocations[-1]
        allocations.append(allocation_weights(usage))
    return torch.stack(allocations, dim=1)


def write_weights(
    content_weights: Tensor, allocation_weights: Tensor, allocation_gate: Tensor, write_gate: Tensor
) -> Tensor:
    """DNC write weights ``w^w = g^w (g^a a + (1 - g^a) c^w)``.

    Args:
        content_weights: ``c^w`` ``[B, H, N]``.
        allocation_weights: ``a`` ``[B, H, N]``.
        allocation_gate: ``g^a`` ``[B, H]``.
        write_gate: ``g^w`` ``[B, H]``.

    Returns:
        ``[B, H, N]``.
    """
    return _WriteWeights.apply(content_weights, allocation_weights, allocation_gate, write_gate)


class _WriteWeights(torch.autograd.Function):
    """``w = g^w (g^a a + (1 - g^a) c)`` as one node; ``m = g^a a + (1 - g^a) c`` is recomputed in backward:
    ``dc = G g^w (1 - g^a)``, ``da = G g^w g^a``, ``dg^a = sum_n G g^w (a - c)``, ``dg^w = sum_n G m``."""

    @staticmethod
    def forward(ctx, content, allocation, allocation_gate, write_gate):
        ctx.save_for_backward(content, allocation, allocation_gate, write_gate)
        mixed = torch.lerp(content, allocation, allocation_gate.unsqueeze(-1))
        return mixed.mul_(write_gate.unsqueeze(-1))

    @staticmethod
    def backward(ctx, grad):
        content, allocation, allocation_gate, write_gate = ctx.saved_tensors
        ga, gw = allocation_gate.unsqueeze(-1), write_gate.unsqueeze(-1)
        scaled = grad * gw
        need = ctx.needs_input_grad
        grad_content = scaled * (1.0 - ga) if need[0] else None
        grad_allocation = scaled * ga if need[1] else None
        grad_ga = (scaled * (allocation - content)).sum(-1) if need[2] else None
        grad_gw = (grad * torch.lerp(content, allocation, ga)).sum(-1) if need[3] else None
        return grad_content, grad_allocation, grad_ga, grad_gw


def erase_and_write(memory: Tensor, write_weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """Erase then add: ``M = M * prod_h (1 - w_h e_h^T) + sum_h w_h v_h^T``.

    Args:
        memory: ``M_{t-1}`` ``[B, N, W]``.
        write_weights: ``w`` ``[B, H, N]``.
        erase: ``e`` ``[B, H, W]`` in ``[0, 1]``.
        add: ``v`` ``[B, H, W]``.

    Returns:
        ``M_t`` ``[B, N, W]``.
    """
    if write_weights.shape[1] == 1:
        return _EraseAndWrite.apply(memory, write_weights, erase, add)  # one write head: fused node
    weighted_erase = write_weights.unsqueeze(-1) * erase.unsqueeze(-2)  # [B, H, N, W]
    keep = _prod_over_heads(1.0 - weighted_erase)
    return torch.baddbmm(memory * keep, write_weights.transpose(1, 2), add)


class _EraseAndWrite(torch.autograd.Function):
    """``erase_and_write`` for one write head, ``M' = M o (1 - w e^T) + w v^T``, as one node.

    Backward with ``G = dM'``: ``dM = G o (1 - w e^T)``, ``dw = G v - (G o M) e``, ``de = -w^T (G o M)``,
    ``dv = w^T G`` (``w`` ``[B, N, 1]``, ``e, v`` ``[B, 1, W]``); the ``[B, N, W]`` keep factor is recomputed.
    """

    @staticmethod
    def forward(ctx, memory, write_weights, erase, add):
        w = write_weights.transpose(1, 2)  # [B, N, 1]
        ctx.save_for_backward(memory, write_weights, erase, add)
        keep = torch.baddbmm(torch.ones_like(memory), w, erase, alpha=-1.0)  # 1 - w e^T
        return torch.baddbmm(keep.mul_(memory), w, add)

    @staticmethod
    def backward(ctx, grad):
        memory, write_weights, erase, add = ctx.saved_tensors
        need_memory, need_w, need_erase, need_add = ctx.needs_input_grad
        grad = grad.contiguous()
        w = write_weights.transpose(1, 2)
        grad_memory = grad_w = grad_erase = grad_add = None
        if need_memory:
            grad_memory = torch.baddbmm(torch.ones_like(grad), w, erase, alpha=-1.0).mul_(grad)  # G o (1 - w e^T)
        if need_w or need_erase:
            gm = grad * memory
            if need_w:  # [B, 1, N] = v G^T - e (G o M)^T
                grad_w = torch.baddbmm(torch.bmm(add, grad.transpose(1, 2)), erase, gm.transpose(1, 2), alpha=-1.0)
            if need_erase:
                grad_erase = -torch.bmm(write_weights, gm)
        if need_add:
            grad_add = torch.bmm(write_weights, grad)
        return grad_memory, grad_w, grad_erase, grad_add


def read_weights(
    content_weights: Tensor, forward_weights: Tensor, backward_weights: Tensor, read_modes: Tensor
) -> Tensor:
    """DNC read weights ``w^r = pi_c c + sum_h pi_f,h f_h + sum_h pi_b,h b_h``.

    Args:
        content_weights: ``c^r`` ``[B, R, N]``.
        forward_weights: ``f`` ``[B, R, H, N]``.
        backward_weights: ``b`` ``[B, R, H, N]``.
        read_modes: ``pi`` ``[B, R, 1 + 2H]`` laid out as DeepMind: ``[backward_1..H, forward_1..H, content]``.

    Returns:
        ``[B, R, N]``.
    """
    return _ReadWeights.apply(content_weights, forward_weights, backward_weights, read_modes)


class _ReadWeights(torch.autograd.Function):
    """``read_weights`` as one node: with ``D = [b_1..H, f_1..H, c]`` ``[B, R, 1+2H, N]`` and ``w = pi D``,
    ``dpi = D G`` and ``dD_k = pi_k G``."""

    @staticmethod
    def forward(ctx, content, forward, backward, modes):
        ctx.save_for_backward(content, forward, backward, modes)
        directions = torch.cat([backward, forward, content.unsqueeze(2)], dim=2)
        return torch.matmul(modes.unsqueeze(-2), directions).squeeze(-2)  # [B, R, 1, 1+2H] @ [B, R, 1+2H, N]

    @staticmethod
    def backward(ctx, grad):
        content, forward, backward, modes = ctx.saved_tensors
        h = forward.shape[2]
        need = ctx.needs_input_grad
        grad_content = grad_forward = grad_backward = grad_modes = None
        if need[3]:
            directions = torch.cat([backward, forward, content.unsqueeze(2)], dim=2)
            grad_modes = torch.matmul(directions, grad.unsqueeze(-1)).squeeze(-1)
        if need[0]:
            grad_content = grad * modes[..., 2 * h :]
        expanded = grad.unsqueeze(2)
        if need[1]:
            grad_forward = expanded * modes[..., h : 2 * h, None]
        if need[2]:
            grad_backward = expanded * modes[..., :h, None]
        return grad_content, grad_forward, grad_backward, grad_modes


# ----------------------------------------------------------------------------------------------- LRUA
def least_used_weights(usage: Tensor, num_least_used: int) -> Tensor:
    """LRUA least-used weights: one-hot rows for the ``n`` slots of smallest usage, smallest first.

    Summing the rows gives Santoro et al.'s mask ``w^lu(i) = 1 if u(i) <= m(u, n)`` (``m`` = n-th smallest,
    ``n`` = number of reads). The mask comes from sort indices, so it is a constant for autograd
    (differentiable-safe: no gradient flows through the discrete choice). Ties go to the lower slot index.

    Args:
        usage: ``w^u`` ``[B, N]``.
        num_least_used: ``n <= N``.

    Returns:
        ``[B, n, N]`` one-hot rows.
    """
    if not 1 <= num_least_used <= usage.shape[-1]:
        raise ValueError(f"least_used_weights.num_least_used: expected an int in [1, {usage.shape[-1]}], "
                         f"got {num_least_used}")
    indices = torch.sort(usage.detach(), dim=-1, stable=True).indices[..., :num_least_used]
    return F.one_hot(indices, usage.shape[-1]).to(usage.dtype)


def lrua_write_weights(prev_read_weights: Tensor, prev_lu_weights: Tensor, sigmoid_gate: Tensor) -> Tensor:
    """LRUA write weights ``w^w = sigma(alpha) w^r_{t-1} + (1 - sigma(alpha)) w^lu_{t-1}``.

    Args:
        prev_read_weights: ``w^r_{t-1}`` ``[B, H, N]`` (read head ``h`` paired with write head ``h``).
        prev_lu_weights: ``w^lu_{t-1}`` ``[B, H, N]``.
        sigmoid_gate: ``sigma(alpha)`` ``[B, H]`` in ``[0, 1]``.

    Returns:
        ``[B, H, N]``.
    """
    return interpolate(prev_read_weights, prev_lu_weights, sigmoid_gate)


def lrua_usage(prev_usage: Tensor, read_weights: Tensor, write_weights: Tensor, gamma: float | Tensor) -> Tensor:
    """LRUA usage ``w^u_t = gamma w^u_{t-1} + sum_r w^r_t + sum_h w^w_t``.

    Args:
        prev_usage: ``[B, N]``.
        read_weights: ``[B, R, N]``.
        write_weights: ``[B, H, N]``.
        gamma: decay in ``[0, 1]`` (float or ``[B, 1]`` tensor).

    Returns:
        ``[B, N]`` in ``[0, (R + H) / (1 - gamma)]``.
    """
    return gamma * prev_usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
