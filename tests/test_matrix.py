"""The learner × strategy matrix (issue 16): every registered model × every registered strategy on each
stream kind the model accepts either trains (finite loss, parameters/buffers change, the stream's own
score on its scale) or is refused by validation with one line. Enumerated from the registries."""
import pytest

from clmem.catalog import MODELS, STRATEGIES
from clmem.compat import STREAM_KINDS, check_pair, model_accepts
from clmem.config import Experiment
from clmem.matrix import kind_benchmarks, other_benchmarks, run_matrix, run_stream_pairs
from clmem.options import ConfigError


@pytest.mark.parametrize("model", MODELS.names())
def test_every_pair_of_this_model_trains_or_is_refused_before_running(model):
    cells = list(run_matrix(models=[model]))
    kinds = {c.kind for c in cells}
    assert kinds, f"{model}: no stream kind with a tiny benchmark among {model_accepts(model)}"
    assert {c.strategy for c in cells} == set(STRATEGIES.names())
    crashed = [f"{c.strategy} on {c.kind}: {c.detail}" for c in cells if c.status == "crashed"]
    assert not crashed, f"{model}: " + "; ".join(crashed)
    for cell in cells:
        if cell.status == "refused":  # one line naming the key and the reason
            assert "\n" not in cell.detail and cell.detail.startswith(("model.name:", "strategy.name:"))


def _section_id(section: dict) -> str:
    return section["name"] + "".join(f"-{v}" for k, v in section.items() if k == "encoding")


@pytest.mark.parametrize("section", other_benchmarks(), ids=_section_id)
def test_every_further_benchmark_meets_each_model_and_each_strategy_once(section):
    """Benchmarks beyond each kind's primary one: pairwise coverage (every fitting model under the reference
    strategy, every strategy with the reference model), each cell trains or is refused in one line."""
    cells = list(run_stream_pairs(section))
    assert {c.strategy for c in cells} == set(STRATEGIES.names())
    assert {c.model for c in cells} == {m for m in MODELS.names() if cells[0].kind in model_accepts(m)}
    assert any(c.status == "trains" for c in cells)
    crashed = [f"{c.model} × {c.strategy}: {c.detail}" for c in cells if c.status == "crashed"]
    assert not crashed, f"{section['name']}: " + "; ".join(crashed)
    for cell in cells:
        if cell.status == "refused":
            assert "\n" not in cell.detail and cell.detail.startswith(("model.name:", "strategy.name:"))


def test_tiny_benchmarks_cover_every_kind_a_model_accepts_except_data_bound_ones():
    covered = set(kind_benchmarks())
    assert {"image", "bits", "qa_sequence", "qa_memnet"} <= covered
    assert covered <= set(STREAM_KINDS)


def test_validation_refuses_a_model_on_a_stream_kind_it_does_not_take():
    raw = {"name": "x", "benchmark": {"name": "split_digits"}, "model": {"name": "dnc"},
           "strategy": {"name": "naive"}}
    with pytest.raises(ConfigError, match=r"^model\.name: model 'dnc' takes bits / qa_sequence / episodes streams, "
                                          r"not image \(images or flat vectors, one class id per sample\)$"):
        Experiment.from_dict(raw)
    raw = {**raw, "benchmark": {"name": "continual_algorithmic"}, "model": {"name": "mlp"}}
    with pytest.raises(ConfigError, match=r"^model\.name: model 'mlp' takes image streams, not bits"):
        Experiment.from_dict(raw)


def test_validation_refuses_a_strategy_on_a_stream_kind_it_cannot_train():
    trial = {"benchmark": {"name": "continual_algorithmic"}, "model": {"name": "dnc"}, "strategy": {"name": "ncm"}}
    with pytest.raises(ConfigError, match=r"^strategy\.name: strategy 'ncm' cannot train on bits streams: "
                                          r"it stores one feature vector per sample"):
        check_pair(trial)
    check_pair({**trial, "strategy": {"name": "sequence_replay"}})  # allowed: returns without error


def test_contradicting_model_options_are_refused_naming_the_field():
    raw = {"name": "x", "benchmark": {"name": "continual_algorithmic"},
           "model": {"name": "hierarchical", "memory_size": 6, "num_chunks": 4}, "strategy": {"name": "sequence"}}
    with pytest.raises(ConfigError, match=r"^model\.num_chunks: expected a divisor of memory_size \(6\), got 4$"):
        Experiment.from_dict(raw)
    raw = {**raw, "benchmark": {"name": "split_digits"}, "model": {"name": "igor", "memory_size": 4, "k": 8}}
    with pytest.raises(ConfigError, match=r"^model\.k: expected an int <= memory_size \(4\), got 8$"):
        Experiment.from_dict(raw)
