"""Matching Networks (Vinyals et al. 2016): cosine attention and the classifier hand-computed, support masking in
the (x_t, y_{t-1}) episode layout, N-way K-shot episode sampling, and the loss dropping on tiny synthetic
episodes. The learner x strategy matrix runs it too (tests/test_matrix.py -k matching_net)."""
import math

import pytest
import torch
import torch.nn.functional as F

from clmem.learners.matching import (MatchingConfig, MatchingNetwork, cosine_attention, evaluate_n_way_k_shot,
                                     fewshot_train_step, matching_logits, sample_nk_episodes)
from clmem.models import MODELS, build_model
from clmem.tasks.omniglot import instance_index, shifted_inputs


def tiny(image_size=4, n_way=2, channels=4, **options):
    torch.manual_seed(0)
    return MatchingNetwork(MatchingConfig(image_size=image_size, n_way=n_way, channels=channels, **options))


def test_cosine_attention_hand_computed():
    r = 1 / math.sqrt(2)
    support = torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 1.0, 0, 0]],
                            [[0, 0, 3.0, 0], [0, 0, 0, 1.0], [0, 0, -1.0, 0]]])  # [B=2, S=3, E=4]
    query = torch.tensor([[[2.0, 0, 0, 0]], [[0, 0, 1.0, 1.0]]])  # [B=2, Q=1, E=4]
    # cosines: episode 0: (1, 0, 1/sqrt2); episode 1: (1/sqrt2, 1/sqrt2, -1/sqrt2)
    e0 = torch.tensor([math.e, 1.0, math.exp(r)])
    e1 = torch.tensor([math.exp(r), math.exp(r), math.exp(-r)])
    want = torch.stack([e0 / e0.sum(), e1 / e1.sum()]).unsqueeze(1)
    torch.testing.assert_close(cosine_attention(query, support), want)
    mask = torch.tensor([[[True, False, True]], [[False, False, False]]])  # episode 1: nothing visible
    e0m = torch.tensor([math.e, 0.0, math.exp(r)])
    want_masked = torch.stack([e0m / e0m.sum(), torch.zeros(3)]).unsqueeze(1)
    torch.testing.assert_close(cosine_attention(query, support, mask), want_masked)


def test_fully_masked_rows_have_finite_gradients():
    query = torch.randn(1, 2, 4, requires_grad=True)
    support = torch.randn(1, 3, 4, requires_grad=True)
    mask = torch.tensor([[[False] * 3, [True, False, False]]])
    logits = matching_logits(cosine_attention(query, support, mask), F.one_hot(torch.tensor([[0, 1, 1]]), 2).float())
    logits.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(support.grad).all()
    torch.testing.assert_close(logits[0, 0], torch.full((2,), math.log(1e-3 / 2)))  # no support: uniform
    torch.testing.assert_close(logits[0, 1], torch.log(torch.tensor([1 - 1e-3 + 5e-4, 5e-4])))  # one item: its label


def test_classifier_on_orthogonal_embeddings_picks_the_right_label():
    support = torch.eye(3, 4).unsqueeze(0)  # [1, 3, 4]: orthogonal
    labels = F.one_hot(torch.tensor([[2, 0, 1]]), 3).float()
    query = 5.0 * torch.eye(3, 4)[[1, 2, 0]].unsqueeze(0)  # nearest support items 1, 2, 0 -> labels 0, 1, 2
    logits = matching_logits(cosine_attention(query, support), labels, smoothing=1e-3)
    assert logits.argmax(-1).tolist() == [[0, 1, 2]]
    top = math.e / (math.e + 2)  # cos 1 with the match, 0 with the other two
    torch.testing.assert_close(logits.softmax(-1).max(-1).values, torch.full((1, 3), (1 - 1e-3) * top + 1e-3 / 3))


def episodes(batch=2, steps=6, image_size=4, n_way=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_way, (batch, steps), generator=g)
    return shifted_inputs(torch.rand(batch, steps, image_size ** 2, generator=g), y, n_way), y


def test_no_attention_to_unrevealed_steps():
    model = tiny(image_size=8, channels=8).eval()
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 0]])  # both labels revealed before step 4
    x = shifted_inputs(torch.rand(2, 6, 64, generator=g), y, 2)
    base = model(x)
    assert base.shape == (2, 6, 2)
    torch.testing.assert_close(base[:, 0], torch.full((2, 2), math.log(1e-3 / 2)))  # t = 0: uniform logits
    changed = x.clone()
    changed[:, 4, :64] = torch.rand(2, 64, generator=g)  # the image of step 4 ...
    changed[:, 5, 64:] = changed[:, 5, 64:].flip(-1)  # ... and its label, revealed at step 5
    out = model(changed)
    torch.testing.assert_close(out[:, :4], base[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out[:, 4], base[:, 4]) and not torch.allclose(out[:, 5], base[:, 5])


def test_an_earlier_revealed_step_is_attended():
    model = tiny().eval()
    x, _ = episodes()
    x[:, 3, :16] = x[:, 1, :16]  # step 3 repeats the image of step 1, whose label step 2 reveals
    logits = model(x)
    label_1 = x[:, 2, 16:].argmax(-1)
    assert torch.equal(logits[:, 3].argmax(-1), label_1)


def test_loss_drops_on_tiny_synthetic_episodes():
    g = torch.Generator().manual_seed(1)
    prototypes = (torch.rand(12, 1, 8, 8, generator=g) > 0.5).float()
    images = (prototypes + 0.6 * torch.rand(12, 6, 8, 8, generator=g)).clamp(0, 1)  # 12 characters x 6 drawers
    model = tiny(image_size=8, n_way=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [sample_nk_episodes(images, 4, 3, 1, 2, g, rotations=False) for _ in range(4)]
    losses = [fewshot_train_step(model, opt, batches[i % 4]) for i in range(40)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    e = batches[0]  # as a sequence: the support steps reveal their labels before the queries come
    y = torch.cat([e.support_y, e.query_y], 1)
    layout = shifted_inputs(torch.cat([e.support_x, e.query_x], 1).flatten(-2), y, 3)
    seen = instance_index(y, 3) > 1  # steps whose class was shown before (the others are uniform)
    model = tiny(image_size=8, n_way=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # the episode layout trains too
        loss = F.cross_entropy(model(layout)[seen], y[seen])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_sample_nk_episodes_keeps_class_rotation_and_distinct_drawers():
    chars, drawers, p = 5, 6, 4
    images = torch.zeros(chars, drawers, p, p)
    images[:, :, 0, 0] = (torch.arange(chars).view(-1, 1) * 10 + torch.arange(drawers) + 1).float()
    ep = sample_nk_episodes(images, 3, n_way=4, k_shot=2, queries=3, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (3, 8, p, p) and ep.query_x.shape == (3, 12, p, p)
    assert ep.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 3
    assert ep.query_y.tolist() == [[0] * 3 + [1] * 3 + [2] * 3 + [3] * 3] * 3
    for b in range(3):
        classes = set()
        for c in range(4):
            frames = torch.cat([ep.support_x[b, ep.support_y[b] == c], ep.query_x[b, ep.query_y[b] == c]])
            corner = {tuple(f.nonzero()[0].tolist()) for f in frames}  # where pixel (0, 0) went: the rotation
            ids = [int(f.max()) - 1 for f in frames]
            assert len(corner) == 1 and len({i // 10 for i in ids}) == 1 and len(set(ids)) == 5
            classes.add((ids[0] // 10, corner.pop()))
        assert len(classes) == 4  # distinct (character, rotation) classes


def test_sampling_and_evaluation_refuse_impossible_sizes_and_are_seeded():
    images = torch.rand(3, 4, 4, 4)
    with pytest.raises(ValueError, match=r"^sample_nk_episodes: 2-way 3-shot with 2 queries needs .* >= 5 drawers"):
        sample_nk_episodes(images, 1, 2, 3, 2)
    model = tiny()
    a = evaluate_n_way_k_shot(model, images, episodes=6, k_shot=1, queries=2, batch=4, seed=3)
    b = evaluate_n_way_k_shot(model, images, episodes=6, k_shot=1, queries=2, batch=4, seed=3)
    assert a == b and 0.0 <= a["accuracy"] <= 1.0 and a["episodes"] == 6 and model.training


def test_registered_model_builds_from_the_stream_shape_and_refuses_bad_ones():
    assert MODELS.get("matching_net").meta["accepts"] == ("episodes",)
    model = build_model("matching_net", (6, 16 + 2), 2, channels=4)
    assert model(episodes()[0]).shape == (2, 6, 2)
    with pytest.raises(ValueError, match=r"^model\.name: 'matching_net' expects steps of P\^2 pixels \+ 2 label"):
        build_model("matching_net", (6, 17 + 2), 2)
    with pytest.raises(ValueError, match=r"^MatchingNetwork\.x: expected \[B, T, 18\]"):
        model(torch.zeros(1, 3, 20))
    with pytest.raises(ValueError, match=r"^MatchingConfig\.smoothing: expected a finite number in \(0, 1\)"):
        MatchingConfig(smoothing=1.0)


# ------------------------------------------------------------------ inverse temperature, final ReLU, FCE
def test_scaled_cosine_attention_hand_computed():
    support = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # [B=1, S=3, E=2]
    query = torch.tensor([[[3.0, 0.0]]])  # cosines (1, 0, 1/sqrt2)
    r = 1 / math.sqrt(2)
    e = torch.tensor([math.exp(10.0), 1.0, math.exp(10 * r)])
    torch.testing.assert_close(cosine_attention(query, support, scale=10.0), (e / e.sum()).view(1, 1, 3))
    torch.testing.assert_close(cosine_attention(query, support, scale=torch.tensor(10.0)),
                               cosine_attention(query, support, scale=10.0))
    # with scale 10, one exact match among n orthogonal items gives y^ = e^10 / (e^10 + n - 1), past the raw-cosine
    # ceiling e / (e + n - 1) that keeps the loss above 0.905 for n = 5
    top = cosine_attention(torch.eye(5)[:1].unsqueeze(0), torch.eye(5).unsqueeze(0), scale=10.0)[0, 0, 0]
    torch.testing.assert_close(top, torch.tensor(math.exp(10) / (math.exp(10) + 4)))
    assert -math.log(top) < 0.01 < 0.905 < -math.log(math.e / (math.e + 4)) + 1e-3


def test_learned_scale_is_a_parameter_that_trains():
    model = tiny(scale=5.0, learn_scale=True)
    assert isinstance(model.log_scale, torch.nn.Parameter)
    torch.testing.assert_close(model.scale, torch.tensor(5.0))
    ep = sample_nk_episodes(torch.rand(4, 4, 4, 4, generator=torch.Generator().manual_seed(0)), 2, 2, 1, 2,
                            torch.Generator().manual_seed(1))
    F.cross_entropy(model.classify(ep.support_x, ep.support_y, ep.query_x).flatten(0, 1),
                    ep.query_y.flatten()).backward()
    assert model.log_scale.grad is not None and torch.isfinite(model.log_scale.grad)
    fixed = tiny(scale=5.0, learn_scale=False)
    assert fixed.scale == 5.0 and not hasattr(fixed, "log_scale")


def test_final_relu_off_drops_only_the_last_relu():
    with_relu, without = tiny(blocks=3, final_relu=True), tiny(blocks=3, final_relu=False)
    relus = [sum(isinstance(m, torch.nn.ReLU) for m in net.embedding.body) for net in (with_relu, without)]
    assert relus == [3, 2]
    kinds = [type(m) for m in without.embedding.body if not isinstance(m, (torch.nn.MaxPool2d, torch.nn.Flatten))]
    assert kinds[-3:] == [torch.nn.ReLU, torch.nn.Conv2d, torch.nn.BatchNorm2d]  # the last block: conv, BN only
    x = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(0))
    assert (with_relu.embed(x) >= 0).all() and (without.embed(x) < 0).any()


def test_full_context_embeddings_condition_on_the_whole_support():
    model = tiny(image_size=8, n_way=3, fce=True, fce_steps=2).eval()
    g = torch.Generator().manual_seed(0)
    ep = sample_nk_episodes(torch.rand(6, 5, 8, 8, generator=g), 2, 3, 1, 2, g, rotations=False)
    logits = model.classify(ep.support_x, ep.support_y, ep.query_x)
    assert logits.shape == (2, 6, 3) and torch.isfinite(logits).all()
    plain = model.embed(ep.support_x)
    context = model.context.support(plain)
    changed = ep.support_x.clone()
    changed[:, 2] = torch.rand(2, 8, 8, generator=g)  # another last support item changes the first's embedding
    assert not torch.allclose(model.context.support(model.embed(changed))[:, 0], context[:, 0])
    no_steps = model.context.query(model.embed(ep.query_x), context)
    assert no_steps.shape == (2, 6, plain.shape[-1])
    with pytest.raises(ValueError, match=r"^MatchingNetwork\.fce: full context embeddings need a fixed support set"):
        model(episodes(image_size=8, n_way=3)[0])


@pytest.mark.parametrize("field, bad, expected", [
    ("scale", 0.0, r"a finite number in \(0, 100\]"), ("scale", 101.0, r"a finite number in \(0, 100\]"),
    ("scale", float("nan"), r"a finite number in \(0, 100\]"), ("learn_scale", 1, "a bool"),
    ("final_relu", "no", "a bool"), ("fce", None, "a bool"), ("fce_steps", 0, "an int >= 1")])
def test_new_config_fields_refuse_bad_values_in_one_line(field, bad, expected):
    with pytest.raises(ValueError, match=rf"^MatchingConfig\.{field}: expected {expected}, got "):
        MatchingConfig(**{field: bad})
