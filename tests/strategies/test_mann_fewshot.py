"""MANN few-shot on Omniglot episodes: loaders, episode structure, accuracy by instance, LSTM baseline, a short fit."""
import numpy as np
import pytest
import torch

from strategies.mann_fewshot import (LSTMFewShot, MANNFewShot, accuracy_by_instance, evaluate_by_instance,
                                     instance_index, load_omniglot, load_omniglot_split, sample_episodes,
                                     shifted_inputs, train_episodes, train_step)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Omniglot file not found: .*nope.npz"):
        load_omniglot(tmp_path / "nope.npz")


def test_episodes_labels_and_instances(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", images=rng.random((8, 20, 105, 105)) > 0.9)
    images = load_omniglot(tmp_path / "tiny.npz", size=10)
    assert images.shape == (8, 20, 10, 10) and 0.0 <= images.min() and images.max() <= 1.0
    x, y = sample_episodes(images, 3, n_way=5, shots=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 20, 100) and y.shape == (3, 20)
    assert all(torch.bincount(row, minlength=5).tolist() == [4] * 5 for row in y)
    inp = shifted_inputs(x, y, 5)
    assert torch.equal(inp[:, 0, 100:], torch.zeros(3, 5))
    assert torch.equal(inp[:, 1:, 100:].argmax(-1), y[:, :-1])
    assert instance_index(torch.tensor([[0, 1, 0, 0, 1]])).tolist() == [[1, 1, 2, 3, 2]]
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 0, 0, 1, 1]]), 2).float()
    acc = accuracy_by_instance(logits, torch.tensor([[0, 1, 0, 0, 1]]), instances=(1, 2, 3, 4))
    assert acc[1] == 0.5 and acc[2] == 1.0 and acc[3] == 0.0 and np.isnan(acc[4])


def test_short_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "tiny.npz", images=rng.random((10, 20, 105, 105)) > 0.9)
    images = load_omniglot(tmp_path / "tiny.npz", size=8)
    model = MANNFewShot(image_size=8, n_way=3, hidden_size=32, memory_size=16, word_size=8, num_reads=1)
    losses = train_episodes(model, images, steps=30, batch=8, shots=3, lr=3e-3)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def _fake_omniglot(root, n_background=6, n_evaluation=4):
    """A tiny Omniglot folder: both npz files, character_index.tsv and a Vinyals-style split."""
    rng = np.random.default_rng(2)
    lines = ["char_id\tset\talphabet\tcharacter\tnpz_row"]
    for npz, alphabet, n in (("images_background", "Alpha", n_background), ("images_evaluation", "Beta", n_evaluation)):
        np.savez(root / f"{npz}.npz", images=rng.random((n, 20, 105, 105)) > 0.1)  # mostly white: strokes False
        lines += [f"{len(lines):04d}\t{npz}\t{alphabet}\tcharacter{i:02d}\t{i}" for i in range(n)]
    (root / "character_index.tsv").write_text("\n".join(lines) + "\n")
    (root / "splits_vinyals").mkdir()
    test = [f"{a}/character{i:02d}/rot{r:03d}" for a, i in (("Alpha", 5), ("Beta", 0), ("Beta", 3))
            for r in (0, 90, 180, 270)]
    (root / "splits_vinyals" / "test.txt").write_text("\n".join(test) + "\n")
    return root


def test_split_loader_picks_the_listed_characters_from_both_sets(tmp_path):
    root = _fake_omniglot(tmp_path)
    test = load_omniglot_split(root, "test", size=7)
    assert test.shape == (3, 20, 7, 7)
    background = load_omniglot(root / "images_background.npz", size=7)
    evaluation = load_omniglot(root / "images_evaluation.npz", size=7)
    assert torch.equal(test[0], background[5])
    assert torch.equal(test[1:], evaluation[[0, 3]])
    assert background.mean() < 0.5  # strokes (False in the file) became 1 and are the minority
    with pytest.raises(FileNotFoundError, match="val.txt"):
        load_omniglot_split(root, "val")


def test_episode_frames_are_rotated_drawings_of_one_character_per_label():
    images = torch.rand(7, 20, 6, 6)
    x, y = sample_episodes(images, 4, n_way=3, shots=5, generator=torch.Generator().manual_seed(3), jitter=False)
    variants = {(c, d, k): torch.rot90(images[c, d], k, (0, 1)).flatten() for c in range(7) for d in range(20)
                for k in range(4)}
    for b in range(4):
        sources = {}
        for t in range(15):
            match = [key for key, v in variants.items() if torch.equal(v, x[b, t])]
            assert len(match) == 1
            sources.setdefault(int(y[b, t]), []).append(match[0])
        chars = {label: {(c, k) for c, _, k in src} for label, src in sources.items()}
        assert all(len(v) == 1 for v in chars.values())  # one character and one rotation per label
        assert len({next(iter(v))[0] for v in chars.values()}) == 3  # distinct characters
        assert all(len({d for _, d, _ in src}) == 5 for src in sources.values())  # distinct drawers


def test_lstm_baseline_and_evaluation_by_instance():
    torch.manual_seed(0)
    images = torch.rand(6, 20, 5, 5)
    model = LSTMFewShot(image_size=5, n_way=3, hidden_size=8)
    x, y = sample_episodes(images, 2, n_way=3, shots=4, generator=torch.Generator().manual_seed(0))
    assert model(x, y).shape == (2, 12, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert np.isfinite(train_step(model, opt, x, y))
    a = evaluate_by_instance(model, images, episodes=7, batch=3, shots=4, instances=(1, 2, 4, 5))
    b = evaluate_by_instance(model, images, episodes=7, batch=3, shots=4, instances=(1, 2, 4, 5))
    assert [a[k] for k in (1, 2, 4)] == [b[k] for k in (1, 2, 4)] and model.training
    assert all(0.0 <= a[k] <= 1.0 for k in (1, 2, 4)) and np.isnan(a[5])


class _Oracle(torch.nn.Module):
    """Predicts the true label except at the first presentation of a class: accuracy 0 there, 1 elsewhere."""
    n_way = 3

    def forward(self, x, y):
        logits = torch.nn.functional.one_hot(y, 3).float()
        first = instance_index(y, 3) == 1
        logits[first] = torch.nn.functional.one_hot((y[first] + 1) % 3, 3).float()
        return logits


def test_evaluation_counts_the_right_positions():
    acc = evaluate_by_instance(_Oracle(), torch.rand(5, 20, 4, 4), episodes=5, batch=2, shots=3, instances=(1, 2, 3))
    assert acc == {1: 0.0, 2: 1.0, 3: 1.0}


def test_jitter_keeps_the_plan_and_moves_the_strokes():
    images = torch.rand(7, 20, 6, 6)
    plain, y0 = sample_episodes(images, 3, n_way=3, shots=4, generator=torch.Generator().manual_seed(5), jitter=False)
    moved, y1 = sample_episodes(images, 3, n_way=3, shots=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(y0, y1) and moved.shape == plain.shape == (3, 12, 36)
    assert not torch.equal(moved, plain) and 0.0 <= moved.min() and moved.max() <= 1.0


def test_mann_writes_with_every_read_head_by_default():
    model = MANNFewShot(image_size=4, n_way=3, hidden_size=8, memory_size=8, word_size=4, num_reads=3)
    assert (model.core.config.num_reads, model.core.config.num_writes) == (3, 3)
    assert MANNFewShot(image_size=4, n_way=3, hidden_size=8, memory_size=8, word_size=4, num_reads=3,
                       num_writes=1).core.config.num_writes == 1
