"""MANN few-shot on Omniglot episodes: loader errors, episode structure, accuracy by instance, a short fit."""
import numpy as np
import pytest
import torch

from strategies.mann_fewshot import (MANNFewShot, accuracy_by_instance, instance_index, load_omniglot,
                                     sample_episodes, shifted_inputs, train_episodes)


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
