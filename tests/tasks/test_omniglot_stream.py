"""The ``omniglot_episodes`` stream: episode layout, determinism, metrics, a strategy round, missing data.

Most tests use a tiny fake Omniglot folder (4 alphabets × 6 characters, random strokes); one reads the
real background set and skips when it is absent.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clmem.benchmarks import BENCHMARKS, preflight
from clmem.tasks.omniglot import (EpisodeAccuracy, EpisodeCrossEntropy, InstanceAccuracy, default_omniglot_root,
                                  load_omniglot, omniglot_episodes, ordinal, read_npz_rows, report_episodes)

SIZE, N_WAY, SHOTS = 5, 3, 4
T, D = N_WAY * SHOTS, SIZE * SIZE


def _fake_root(root, alphabets=4, per_alphabet=6):
    rng = np.random.default_rng(0)
    n = alphabets * per_alphabet
    np.savez_compressed(root / "images_background.npz", images=rng.random((n, 20, 105, 105)) > 0.1)
    lines = ["char_id\tset\talphabet\tcharacter\tnpz_row"]
    lines += [f"{i + 1:04d}\timages_background\tAlpha{i // per_alphabet}\tcharacter{i % per_alphabet + 1:02d}\t{i}"
              for i in range(n)]
    (root / "character_index.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return _fake_root(tmp_path_factory.mktemp("omniglot"))


def _stream(root, seed=0, **options):
    opts = dict(n_experiences=2, alphabets=4, n_way=N_WAY, shots=SHOTS, image_size=SIZE, test_fraction=0.5,
                train_episodes=6, test_episodes=3, data_root=str(root))
    opts.update(options)
    return BENCHMARKS.get("omniglot_episodes").builder(seed, **opts)


def _sources(images):
    """Every (character, drawer, quarter turns) variant of ``images [C, 20, S, S]``, keyed by its bytes."""
    return {torch.rot90(images[c, d], k, (0, 1)).flatten().numpy().tobytes(): (c, d, k)
            for c in range(len(images)) for d in range(images.shape[1]) for k in range(4)}


def test_registered_as_an_episode_stream(fake):
    entry = BENCHMARKS.get("omniglot_episodes")
    assert entry.meta["kind"] == "episodes"
    stream = _stream(fake)
    assert stream.input_shape == (T, D + N_WAY) and stream.num_classes == N_WAY
    assert (stream.metric, stream.higher_is_better, stream.metric_prefix) == ("episode_accuracy", True, "EpisodeAcc_Exp")
    assert len(stream.benchmark.train_stream) == len(stream.benchmark.test_stream) == 2
    assert [len(e.dataset) for e in stream.benchmark.train_stream] == [6, 6]


def test_episode_layout_labels_and_characters(fake):
    stream = _stream(fake, jitter=False)  # exact frames: every one is a drawing turned by a multiple of 90 degrees
    sources = _sources(load_omniglot(fake / "images_background.npz", SIZE))
    seen = {}
    for split in ("train", "test"):
        for j, exp in enumerate(getattr(stream.benchmark, f"{split}_stream")):
            for n in range(len(exp.dataset)):
                x, y, info, task = exp.dataset[n]
                assert x.shape == (T, D + N_WAY) and y.dtype == torch.long and task == 0
                assert info.tolist() == [j, n] and int(exp.dataset.targets[n]) == j
                assert torch.equal(x[0, D:], torch.zeros(N_WAY))  # no label before the first step
                assert torch.equal(x[1:, D:], F.one_hot(y[:-1], N_WAY).float())  # previous step's label
                assert torch.bincount(y, minlength=N_WAY).tolist() == [SHOTS] * N_WAY
                by_label = {}
                for t in range(T):
                    by_label.setdefault(int(y[t]), []).append(sources[x[t, :D].numpy().tobytes()])
                assert all(len({(c, k) for c, _, k in src}) == 1 for src in by_label.values())  # one class per label
                assert all(len({d for _, d, _ in src}) == SHOTS for src in by_label.values())  # distinct drawers
                chars = {src[0][0] for src in by_label.values()}
                assert len(chars) == N_WAY
                seen.setdefault((split, j), set()).update(chars)
    for j, alphabets in enumerate(({0, 1}, {2, 3})):  # experience j: the characters of its two alphabets
        assert {c // 6 for c in seen[("train", j)] | seen[("test", j)]} <= alphabets
        assert not seen[("train", j)] & seen[("test", j)]  # test episodes use held-out characters


def test_episodes_are_deterministic_given_the_seed(fake):
    a, b, c = _stream(fake, seed=3), _stream(fake, seed=3), _stream(fake, seed=4)
    for exp in range(2):
        xa = torch.stack([a.benchmark.test_stream[exp].dataset[n][0] for n in range(3)])
        xb = torch.stack([b.benchmark.test_stream[exp].dataset[n][0] for n in range(3)])
        xc = torch.stack([c.benchmark.test_stream[exp].dataset[n][0] for n in range(3)])
        assert torch.equal(xa, xb) and not torch.equal(xa, xc)


def test_jitter_moves_each_presentation_and_keeps_the_plan(fake):
    plain, jittered, again = _stream(fake, jitter=False), _stream(fake), _stream(fake)
    for exp in range(2):
        for n in range(3):
            x0, y0, _, _ = plain.benchmark.test_stream[exp].dataset[n]
            x1, y1, _, _ = jittered.benchmark.test_stream[exp].dataset[n]
            assert torch.equal(y0, y1) and torch.equal(x0[:, D:], x1[:, D:])  # same labels, same label channels
            assert not torch.equal(x0[:, :D], x1[:, :D])
            assert torch.equal(x1, again.benchmark.test_stream[exp].dataset[n][0])  # deterministic given the seed


def test_instance_accuracy_on_a_hand_made_prediction():
    y = torch.tensor([[0, 1, 0, 0, 1]])  # presentations 1, 1, 2, 3, 2
    logits = F.one_hot(torch.tensor([[0, 0, 0, 1, 1]]), 2).float()  # right at t = 0, 2, 4
    metric = InstanceAccuracy(instances=(1, 2, 3, 4))
    metric.update(logits, y)
    assert metric.result() == {1: 0.5, 2: 1.0, 3: 0.0}  # no 4th presentation: not reported
    metric.update(logits, y)  # pooled counts: unchanged
    assert metric.result() == {1: 0.5, 2: 1.0, 3: 0.0}
    assert EpisodeAccuracy().per_sequence(logits, y).tolist() == [pytest.approx(0.6)]
    assert [ordinal(k) for k in (1, 2, 3, 4, 10, 11, 12, 21, 22)] == \
        ["1st", "2nd", "3rd", "4th", "10th", "11th", "12th", "21st", "22nd"]
    loss = EpisodeCrossEntropy()(torch.zeros(2, 5, 3), torch.zeros(2, 5, dtype=torch.long))
    assert loss.item() == pytest.approx(math.log(3))
    results = {"EpisodeAcc_Exp/eval_phase/test_stream/Task000/Exp001": 0.25,
               "InstanceAcc_10th/eval_phase/test_stream": 0.5, "InstanceAcc_1st/eval_phase/train_stream": 0.1}
    assert report_episodes(results) == {"episode_acc_exp_1": 0.25, "instance_acc_10th": 0.5}


def _round(stream, model):
    from avalanche.training.plugins import EvaluationPlugin

    from clmem.runner import evaluate_row
    from strategies import create_strategy

    torch.manual_seed(0)
    strategy = create_strategy("naive", model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                               criterion=stream.criterion(), train_mb_size=4, eval_mb_size=8, train_epochs=1,
                               evaluator=EvaluationPlugin(*stream.eval_metrics(), loggers=[]))
    before = [p.detach().clone() for p in model.parameters()]
    strategy.train(stream.benchmark.train_stream[0])
    assert math.isfinite(float(strategy.loss))
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    row, results = evaluate_row(strategy, stream.benchmark.test_stream, stream.metric_prefix)
    assert len(row) == 2 and all(0.0 <= v <= 1.0 for v in row)
    return results


def test_mann_trains_and_evaluates_under_a_plain_strategy(fake):
    from clmem.models import build_model

    stream = _stream(fake)
    results = _round(stream, build_model("mann", stream.input_shape, stream.num_classes, hidden_size=16,
                                         memory_size=8, word_size=4))
    reported = stream.report(results)
    assert sorted(reported) == ["episode_acc_exp_0", "episode_acc_exp_1", "instance_acc_1st", "instance_acc_2nd",
                                "instance_acc_3rd", "instance_acc_4th"]  # shots = 4: no 5th or 10th
    assert all(0.0 <= v <= 1.0 for v in reported.values())


def test_mann_fewshot_module_takes_the_stream_layout(fake):
    from strategies.mann_fewshot import MANNFewShot

    stream = _stream(fake)
    model = MANNFewShot(image_size=SIZE, n_way=N_WAY, hidden_size=16, memory_size=8, word_size=4, num_reads=1)
    assert "InstanceAcc_1st/eval_phase/test_stream" in _round(stream, model)
    with pytest.raises(ValueError, match=rf"expected x of shape \[B, T, {D + N_WAY}\]"):
        model(torch.zeros(1, T, D))


def test_missing_data_is_one_line_naming_the_file(tmp_path, fake):
    with pytest.raises(FileNotFoundError, match="character_index.tsv") as info:
        omniglot_episodes(0, data_root=str(tmp_path))
    assert "\n" not in str(info.value)
    (tmp_path / "character_index.tsv").write_text((fake / "character_index.tsv").read_text())
    with pytest.raises(FileNotFoundError, match="images_background.npz"):
        preflight({"name": "omniglot_episodes", "data_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="images_background.npz"):
        _stream(tmp_path)


def test_bad_options_name_the_field(fake):
    with pytest.raises(ValueError, match="benchmark.alphabets"):
        _stream(fake, alphabets=1, n_experiences=2)
    with pytest.raises(ValueError, match="benchmark.n_way: experience 0 has 2 test characters"):
        _stream(fake, test_fraction=0.17)  # one held-out character per alphabet


def test_row_reader_matches_the_full_array(fake):
    full = np.load(fake / "images_background.npz")["images"]
    assert np.array_equal(read_npz_rows(fake / "images_background.npz", [5, 0, 5]), full[[5, 0, 5]])


def test_real_background_set():
    root = default_omniglot_root()
    if not (root / "images_background.npz").is_file() or not (root / "character_index.tsv").is_file():
        pytest.skip(f"Omniglot not found at {root} (set CLMEM_DATA)")
    stream = omniglot_episodes(0, n_experiences=2, alphabets=2, train_episodes=2, test_episodes=2)
    assert stream.input_shape == (50, 405) and stream.num_classes == 5
    x, y, info, _ = stream.benchmark.test_stream[1].dataset[1]
    assert x.shape == (50, 405) and 0.0 <= x.min() and x.max() <= 1.0
    assert x[:, :400].mean() < 0.5  # strokes (black on white in the files) are 1 and the minority
    assert torch.bincount(y, minlength=5).tolist() == [10] * 5 and info.tolist() == [1, 1]
