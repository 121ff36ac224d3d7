"""Instance-level augmentation of Omniglot episodes (Santoro et al. 2016): hand-computed jitter of small frames."""
import math

import torch

from clmem.tasks.omniglot import JITTER_DEGREES, JITTER_SHIFT, jitter_frames, jitter_plan, render_frames


def _frame():
    x = torch.zeros(1, 4, 4)
    x[0, 1, 2] = 1.0
    x[0, 0, 0] = 0.5
    return x


def test_zero_jitter_is_the_identity():
    assert torch.equal(jitter_frames(_frame(), torch.zeros(1, 3)), _frame())


def test_quarter_side_shifts_move_one_pixel_right_or_down():
    right = torch.zeros(1, 4, 4)
    right[0, 1, 3], right[0, 0, 1] = 1.0, 0.5
    assert torch.allclose(jitter_frames(_frame(), torch.tensor([[0.0, 0.25, 0.0]])), right, atol=1e-6)
    down = torch.zeros(1, 4, 4)
    down[0, 2, 2], down[0, 1, 0] = 1.0, 0.5
    assert torch.allclose(jitter_frames(_frame(), torch.tensor([[0.0, 0.0, 0.25]])), down, atol=1e-6)
    # half a pixel right: bilinear, each stroke pixel split evenly over two columns
    half = torch.zeros(1, 4, 4)
    half[0, 1, 2:4], half[0, 0, 0:2] = 0.5, 0.25
    assert torch.allclose(jitter_frames(_frame(), torch.tensor([[0.0, 0.125, 0.0]])), half, atol=1e-6)


def test_a_right_angle_equals_a_clockwise_quarter_turn():
    out = jitter_frames(_frame(), torch.tensor([[math.pi / 2, 0.0, 0.0]]))
    assert torch.allclose(out, torch.rot90(_frame(), -1, (-2, -1)), atol=1e-6)


def test_plan_is_seeded_and_within_the_bounds():
    a = jitter_plan((2, 50), torch.Generator().manual_seed(0))
    b = jitter_plan((2, 50), torch.Generator().manual_seed(0))
    assert a.shape == (2, 50, 3) and torch.equal(a, b)
    assert a[..., 0].abs().max() <= math.radians(JITTER_DEGREES) and a[..., 1:].abs().max() <= JITTER_SHIFT
    assert a[..., 0].abs().max() > 0.5 * math.radians(JITTER_DEGREES)  # spread over the range, not all near 0


def test_render_applies_the_quarter_turns_before_the_jitter():
    images = _frame().unsqueeze(0)  # [C=1, D=1, 4, 4]
    idx = torch.zeros(1, dtype=torch.long)
    out = render_frames(images, idx, idx, torch.tensor([1]), torch.tensor([[0.0, 0.25, 0.0]]))
    turned = torch.rot90(_frame(), 1, (-2, -1))  # [0, 1, 2] -> [1, 1]; [0, 0, 0] -> [3, 0]
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 2], expected[0, 3, 1] = turned[0, 1, 1], turned[0, 3, 0]  # then one pixel right
    assert torch.allclose(out, expected.flatten(-2), atol=1e-6)
