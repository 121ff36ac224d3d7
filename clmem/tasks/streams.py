"""Continual streams of memory tasks as Avalanche benchmarks, registered in :data:`clmem.benchmarks.BENCHMARKS`.

* ``continual_algorithmic`` — one experience per NTM task (default order copy → repeat copy → associative
  recall → priority sort). Scored by **bits per sequence** (``metric="bits_per_sequence"``, lower is better,
  Avalanche metric :class:`BitsPerSequence`, prefix ``BitsPerSeq_Exp``); :class:`SequenceError` (fraction of
  sequences with at least one wrong bit, ``SeqError_Exp``) is reported beside it.
* ``continual_babi`` — one experience per bAbI task, or per group of tasks (``groups: "1,2;6,7;15"``).
* ``babi_joint`` — every task in one experience (joint training).

  bAbI streams are scored by **error** (``metric="error"`` = 1 − accuracy, lower is better, prefix
  ``Error_Exp``, :class:`AnswerError`); :class:`BabiTaskErrors` adds, per evaluation of the test stream, each
  bAbI task's error (``BabiError_qa<N>/eval_phase/test_stream``), their mean (``BabiMeanError/...``) and the
  number of failed tasks, error > 5% (``BabiFailedTasks/eval_phase/test_stream``). ``validation_fraction``
  holds out the last fraction of each task's training questions (whole stories) as a ``valid_stream`` (scored
  the same way, ``.../valid_stream``) for early stopping; ``layout: en-10k`` with ``train_questions: null`` reads
  all 10,000 training questions of a task.

Layout (every sample of a stream has the same shapes, so experiences and replay buffers concatenate):

* algorithmic: ``x [T, bits + 2]`` float, ``y [T, bits + 1]`` float with **the mask packed into the targets**:
  ``0``/``1`` where an output is scored, :data:`IGNORE` (−1) elsewhere (output phase of other tasks' channels,
  input phase, time padding). ``T`` is the longest sequence any task of the stream can produce.
* bAbI ``encoding: memnet``: ``x [M + 1, S]`` word ids (rows ``0..M-1`` the ``M`` most recent sentences, most
  recent first, row ``M`` the question), ``y`` the answer id; for the ``memn2n`` model.
* bAbI ``encoding: sequence``: ``x [T, V]`` one-hot word stream ``sentence <sep> ... <query> question <answer>``,
  **left**-padded so that the answer step is the last step; ``y`` the answer id; for sequence learners (the
  ``sequence`` strategy scores the last step, see :func:`answer_cross_entropy`).

Each sample is ``(x, y, info)`` (Avalanche appends the task label): ``info = [task, length]`` (``task``: the
algorithmic task's index in :data:`ALGORITHMIC_TASKS` or the bAbI task number; ``length``: the length the
curriculum varies, or the number of story sentences for bAbI). ``targets`` (class labels for Avalanche) are the
answer ids for bAbI and the task index for algorithmic streams. Task labels are all 0 (one shared head).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clmem.benchmarks import BENCHMARKS, Stream
from clmem.datafiles import check_babi, parse_groups  # noqa: F401 (parse_groups: re-exported)
from clmem.datafiles import split_list as _split
from clmem.learners.readout import AnswerStep
from clmem.options import Opt

from .algorithmic import TASKS as _TASK_CLASSES
from .algorithmic import (AssociativeRecallConfig, CopyConfig, PrioritySortConfig, RepeatCopyConfig,
                          make_task)
from .babi import Vocabulary, babi_file, encode_memnet, encode_sequence, load_babi
from .babi_gen import GENERATED_TASKS, write_babi
from .stream_metrics import (FAIL_THRESHOLD, IGNORE, AnswerCrossEntropy, AnswerError, BabiTaskErrors,
                             BitsPerSequence, MaskedBitLoss, SequenceError, answer_cross_entropy,
                             masked_bit_loss, report_metrics, wrong_bits)

__all__ = [
    "IGNORE", "FAIL_THRESHOLD", "ALGORITHMIC_TASKS", "SequenceDataset", "MaskedBitLoss", "masked_bit_loss",
    "answer_cross_entropy", "AnswerCrossEntropy", "wrong_bits", "BitsPerSequence", "SequenceError",
    "AnswerError", "BabiTaskErrors", "report_metrics", "parse_groups", "algorithmic_experiences", "babi_experiences",
    "continual_algorithmic", "continual_babi", "babi_joint", "babi_splits", "split_validation",
]

ALGORITHMIC_TASKS = tuple(_TASK_CLASSES)  # copy, repeat_copy, associative_recall, priority_sort


# ----------------------------------------------------------------------------------------- dataset
class SequenceDataset(Dataset):
    """``(x, y, info)`` samples with a ``targets`` attribute (Avalanche classification datasets need it).

    With ``one_hot=V``, ``x`` is stored as word ids ``[N, T]`` and returned one-hot ``[T, V]`` (id 0, padding,
    is the all-zero vector), which keeps long bAbI streams small in memory.
    """

    def __init__(self, x: Tensor, y: Tensor, info: Tensor, targets: Tensor, one_hot: int | None = None):
        if not (len(x) == len(y) == len(info) == len(targets)):
            raise ValueError("SequenceDataset: x, y, info and targets must have the same length")
        self.x, self.y, self.info, self.one_hot = x, y, info, one_hot
        self.targets = targets

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        x = self.x[index]
        if self.one_hot:
            hot = F.one_hot(x, self.one_hot).float()
            hot[..., 0] = 0.0
            x = hot
        return x, self.y[index], self.info[index]


def _avalanche_benchmark(train: Sequence[SequenceDataset], test: Sequence[SequenceDataset],
                         valid: Sequence[SequenceDataset] | None = None):
    from avalanche.benchmarks import benchmark_from_datasets
    # exported by Avalanche (in the module's __all__); unlike as_taskaware_classification_dataset it attaches
    # the task label that the strategies read as mbatch[-1]
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    def as_cls(dataset, task_labels):
        return _make_taskaware_classification_dataset(dataset, task_labels=task_labels)

    streams = {"train": train, "test": test, **({"valid": valid} if valid else {})}
    return benchmark_from_datasets(**{name: [as_cls(d, task_labels=0) for d in datasets]
                                      for name, datasets in streams.items()})


# ------------------------------------------------------------------------------------------ orders
def _ordered(items: list, order: str, seed: int) -> list:
    if order == "random":
        perm = np.random.default_rng(seed).permutation(len(items))
        return [items[i] for i in perm]
    return list(items)


# ------------------------------------------------------------------------------------- algorithmic
def _task_configs(num_bits, min_length, max_length, max_repeats, item_length, min_items, max_items, sort_outputs):
    return {
        "copy": CopyConfig(num_bits, min_length, max_length),
        "repeat_copy": RepeatCopyConfig(num_bits, min_length, max_length, 1, max_repeats),
        "associative_recall": AssociativeRecallConfig(num_bits, item_length, min_items, max_items),
        "priority_sort": PrioritySortConfig(num_bits, max(min_length, sort_outputs), max(max_length, sort_outputs),
                                            sort_outputs),
    }


def _longest(name: str, c) -> int:
    if name == "copy":
        return 2 * c.max_length + 1
    if name == "repeat_copy":
        return c.max_length * (c.max_repeats + 1) + 2
    if name == "associative_recall":
        return (c.max_items + 2) * (c.item_length + 1)
    return c.max_length + 1 + c.num_outputs


def _sample_task(task, count: int, width_in: int, width_out: int, steps: int, rng) -> tuple:
    low, high = task.length_range
    lengths = rng.integers(low, high + 1, count)
    xs, ys, ls = [], [], []
    for length in sorted(set(lengths.tolist())):
        n = int((lengths == length).sum())
        batch = task.sample(n, length=length)
        b, t, d = batch.inputs.shape
        x = torch.zeros(n, steps, width_in)
        x[:, :t, :d] = batch.inputs
        y = torch.full((n, steps, width_out), IGNORE)
        scored = torch.where(batch.mask.unsqueeze(-1), batch.targets.float(), torch.tensor(IGNORE))
        y[:, :t, :batch.targets.shape[-1]] = scored
        xs.append(x), ys.append(y), ls.append(torch.full((n,), length, dtype=torch.long))
    order = torch.from_numpy(rng.permutation(count))
    return torch.cat(xs)[order], torch.cat(ys)[order], torch.cat(ls)[order]


def algorithmic_experiences(seed: int, tasks: list[str], samples: dict[str, int], **config) -> tuple:
    """``({split: [SequenceDataset per task]}, steps, input width, output width)`` for the task names in
    ``tasks`` (in that order) with ``samples = {"train": n, "test": m}`` sequences per experience."""
    configs = _task_configs(**config)
    unknown = [t for t in tasks if t not in configs]
    if unknown:
        raise ValueError(f"benchmark.tasks: unknown algorithmic task {unknown[0]!r} "
                         f"(expected some of: {', '.join(ALGORITHMIC_TASKS)})")
    bits = config["num_bits"]
    width_in, width_out = bits + 2, bits + 1
    steps = max(_longest(t, configs[t]) for t in tasks)
    out: dict[str, list[SequenceDataset]] = {}
    for s, (split, count) in enumerate(samples.items()):
        out[split] = []
        for name in tasks:
            index = ALGORITHMIC_TASKS.index(name)
            task = make_task(name, seed=int(np.random.SeedSequence([seed, s, index]).generate_state(1)[0]),
                             config=configs[name])
            rng = np.random.default_rng([seed, s, index, 1])
            x, y, lengths = _sample_task(task, count, width_in, width_out, steps, rng)
            info = torch.stack([torch.full_like(lengths, index), lengths], dim=1)
            out[split].append(SequenceDataset(x, y, info, info[:, 0].clone()))
    return out, steps, width_in, width_out


_ALGO_OPTS = {
    "tasks": Opt(str, ",".join(ALGORITHMIC_TASKS), help="comma-separated task order, one experience each"),
    "order": Opt(str, "given", choices=("given", "random"), help="random: permute the tasks with the trial seed"),
    "num_bits": Opt(int, 4, min=1, max=64, help="bit width of the vectors"),
    "min_length": Opt(int, 1, min=1, help="shortest sequence (copy, repeat copy, priority sort)"),
    "max_length": Opt(int, 5, min=1, help="longest sequence (copy, repeat copy, priority sort)"),
    "max_repeats": Opt(int, 3, min=1, help="repeat copy: repeats in [1, max_repeats]"),
    "item_length": Opt(int, 2, min=1, help="associative recall: vectors per item"),
    "min_items": Opt(int, 2, min=2, help="associative recall: fewest items"),
    "max_items": Opt(int, 4, min=2, help="associative recall: most items"),
    "sort_outputs": Opt(int, 2, min=1, help="priority sort: how many top-priority vectors to output"),
    "train_samples": Opt(int, 256, min=1, help="training sequences per experience"),
    "test_samples": Opt(int, 64, min=1, help="test sequences per experience"),
}


@BENCHMARKS.register("continual_algorithmic", _ALGO_OPTS,
                     "NTM tasks one after another (copy, repeat copy, associative recall, priority sort); "
                     "bits per sequence", kind="bits",
                     tiny={"tasks": "copy,associative_recall", "train_samples": 8, "test_samples": 4, "max_length": 2,
                           "item_length": 1, "max_items": 2})
def continual_algorithmic(seed: int, tasks: str = _ALGO_OPTS["tasks"].default, order: str = "given",
                          num_bits: int = 4, min_length: int = 1, max_length: int = 5, max_repeats: int = 3,
                          item_length: int = 2, min_items: int = 2, max_items: int = 4, sort_outputs: int = 2,
                          train_samples: int = 256, test_samples: int = 64) -> Stream:
    if min_length > max_length or min_items > max_items:
        raise ValueError("benchmark: expected min_length <= max_length and min_items <= max_items")
    names = _ordered(_split(tasks, "benchmark.tasks"), order, seed)
    data, steps, width_in, width_out = algorithmic_experiences(
        seed, names, {"train": train_samples, "test": test_samples}, num_bits=num_bits, min_length=min_length,
        max_length=max_length, max_repeats=max_repeats, item_length=item_length, min_items=min_items,
        max_items=max_items, sort_outputs=sort_outputs)
    bench = _avalanche_benchmark(data["train"], data["test"])
    return Stream(bench, (steps, width_in), width_out, metric="bits_per_sequence", higher_is_better=False,
                  metric_prefix="BitsPerSeq_Exp", eval_metrics=lambda: [BitsPerSequence(), SequenceError()],
                  criterion=MaskedBitLoss, report=report_metrics)


# -------------------------------------------------------------------------------------------- bAbI
def _generated_root(cache_dir: str | None, num_train: int, num_test: int) -> Path:
    """A folder holding generated bAbI files for every generated task (written once, atomically)."""
    parent = Path(cache_dir or os.environ.get("CLMEM_BABI_CACHE")
                  or Path(tempfile.gettempdir()) / "clmem-babi-generated").expanduser()
    root = parent / f"n{num_train}-{num_test}"
    if all(list((root / "en").glob(f"qa{t}_*_{split}.txt")) for t in GENERATED_TASKS for split in ("train", "test")):
        return root
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=".staging-"))
    write_babi(staging, tuple(GENERATED_TASKS), num_train=num_train, num_test=num_test, seed=0)
    try:
        os.rename(staging, root)
    except OSError:  # another process got there first: use theirs
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return root


def _story_cut(questions: list, fraction: float) -> int:
    """Index where the last ``fraction`` of ``questions`` starts, moved forward to the next story's first question
    (a question whose line id is not above its predecessor's), so no story is split between the two parts."""
    cut = len(questions) - int(np.ceil(fraction * len(questions)))
    while 0 < cut < len(questions) and questions[cut].line_id > questions[cut - 1].line_id:
        cut += 1
    return cut


def split_validation(questions: dict, fraction: float) -> dict:
    """``{"train": {task: qs}, ...}`` -> the same with ``"valid"`` added: the last ``fraction`` of each task's
    training questions (whole stories, see :func:`_story_cut`), taken out of ``"train"``. ``fraction`` 0: unchanged."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"benchmark.validation_fraction: expected a float in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return questions
    train, valid = {}, {}
    for task, qs in questions["train"].items():
        cut = _story_cut(qs, fraction)
        if cut == 0 or cut == len(qs):
            raise ValueError(f"benchmark.validation_fraction: {fraction} of task {task}'s {len(qs)} training "
                             f"questions leaves an empty split (whole stories); expected more questions")
        train[task], valid[task] = qs[:cut], qs[cut:]
    return {**questions, "train": train, "valid": valid}


def _babi_questions(tasks: list[int], data_root: str | None, layout: str, cache_dir: str | None,
                    train_questions: int | None, test_questions: int | None) -> dict:
    if data_root is None:
        if train_questions is None or test_questions is None:
            raise ValueError("benchmark.train_questions: expected an int for generated bAbI (null, all questions, "
                             "needs data_root)")
        missing = [t for t in tasks if t not in GENERATED_TASKS]
        if missing:
            raise ValueError(f"benchmark.tasks: task {missing[0]} has no offline generator (generated: "
                             f"{', '.join(map(str, GENERATED_TASKS))}); set benchmark.data_root to the bAbI files")
        root = _generated_root(cache_dir, train_questions, test_questions)
        layout = "en"
    else:
        root = Path(data_root)
    return {split: {t: qs[:n] for t, qs in load_babi(tasks, split, root, layout).items()}
            for split, n in (("train", train_questions), ("test", test_questions))}


def _memnet_layout(questions, vocab, max_memory: int, slots: int, width: int):
    data = encode_memnet(questions, vocab, max_memory, max_sentence_len=width, max_query_len=width)
    x = torch.zeros(len(questions), slots + 1, width, dtype=torch.long)
    x[:, :data.stories.shape[1]] = data.stories
    x[:, slots] = data.queries
    return x, data.answers


def _sequence_layout(questions, vocab, max_memory: int, steps: int):
    data = encode_sequence(questions, vocab, one_hot=False, max_memory=max_memory)
    x = torch.zeros(len(questions), steps, dtype=torch.long)
    lengths = data.mask.long().argmax(dim=1) + 1
    for n, length in enumerate(lengths.tolist()):
        x[n, steps - length:] = data.inputs[n, :length]  # left-padded: the answer step is the last one
    return x, data.targets[torch.arange(len(questions)), lengths - 1]


def babi_experiences(experiences: list[list[int]], questions: dict, encoding: str, max_memory: int) -> tuple:
    """``({split: [SequenceDataset per experience]}, input_shape, vocabulary size)``; one vocabulary and one
    layout over every task and split of the stream."""
    everything = [q for split in questions.values() for qs in split.values() for q in qs]
    vocab = Vocabulary.build(everything)
    contexts = [q.context[-max_memory:] if max_memory else q.context for q in everything]
    if encoding == "memnet":
        slots = max(1, max(len(c) for c in contexts))
        width = max([len(s) for c in contexts for s in c] + [len(q.question) for q in everything])
        shape = (slots + 1, width)
    else:
        steps = max(sum(len(s) + 1 for s in c) + len(q.question) + 2 for c, q in zip(contexts, everything))
        shape = (steps, len(vocab))
    out: dict[str, list[SequenceDataset]] = {}
    for split, by_task in questions.items():
        out[split] = []
        for group in experiences:
            qs = [q for t in group for q in by_task[t]]
            if encoding == "memnet":
                x, y = _memnet_layout(qs, vocab, max_memory, shape[0] - 1, shape[1])
            else:
                x, y = _sequence_layout(qs, vocab, max_memory, shape[0])
            info = torch.tensor([[q.task, len(q.context)] for q in qs], dtype=torch.long)
            out[split].append(SequenceDataset(x, y, info, y.clone(), one_hot=len(vocab) if encoding == "sequence"
                                              else None))
    return out, shape, len(vocab)


_BABI_OPTS = {
    "tasks": Opt(str, ",".join(map(str, GENERATED_TASKS)), help="comma-separated bAbI tasks in experience order"),
    "groups": Opt(str, None, nullable=True, help="experiences as groups of tasks, e.g. '1,2;6,7;15' (overrides tasks)"),
    "order": Opt(str, "given", choices=("given", "random"), help="random: permute the experiences with the trial seed"),
    "data_root": Opt(str, None, nullable=True,
                     help="folder with <layout>/qa*_*.txt (real bAbI); null: generate tasks 1,2,6,7,15 offline"),
    "layout": Opt(str, "en", choices=("en", "en-10k")),
    "cache_dir": Opt(str, None, nullable=True, help="where generated data is cached (default: system temp)"),
    "encoding": Opt(str, "memnet", choices=("memnet", "sequence"),
                    help="memnet: for the memn2n model; sequence: one-hot word stream for sequence learners"),
    "max_memory": Opt(int, 20, min=1, help="most recent story sentences kept"),
    "train_questions": Opt(int, 1000, min=1, nullable=True,
                           help="training questions per task, the first ones of the file (null: all, e.g. en-10k)"),
    "test_questions": Opt(int, 1000, min=1, nullable=True, help="test questions per task (null: all)"),
    "validation_fraction": Opt(float, 0.0, min=0.0, max=0.9,
                               help="last fraction of each task's training questions (whole stories) held out "
                                    "as valid_stream, e.g. for early stopping; 0: none"),
}


def babi_splits(experiences: list[list[int]], data_root, layout, cache_dir, encoding, max_memory, train_questions,
                test_questions, validation_fraction: float = 0.0) -> tuple:
    """``({"train"|"test"[|"valid"]: [SequenceDataset per experience]}, input_shape, vocabulary size)`` of a bAbI
    stream (the datasets its Avalanche benchmark wraps; scripts may train on them directly)."""
    tasks = [t for g in experiences for t in g]
    questions = _babi_questions(tasks, data_root, layout, cache_dir, train_questions, test_questions)
    return babi_experiences(experiences, split_validation(questions, validation_fraction), encoding, max_memory)


def _babi_stream(seed: int, experiences: list[list[int]], data_root, layout, cache_dir, encoding, max_memory,
                 train_questions, test_questions, validation_fraction: float = 0.0) -> Stream:
    data, shape, vocab_size = babi_splits(experiences, data_root, layout, cache_dir, encoding, max_memory,
                                          train_questions, test_questions, validation_fraction)
    bench = _avalanche_benchmark(data["train"], data["test"], data.get("valid"))
    return Stream(bench, shape, vocab_size, metric="error", higher_is_better=False, metric_prefix="Error_Exp",
                  eval_metrics=lambda: [AnswerError(), BabiTaskErrors()], criterion=AnswerCrossEntropy,
                  report=report_metrics, model_adapter=AnswerStep if encoding == "sequence" else None)


#: Stream kind of a bAbI benchmark section, by its ``encoding`` (see :func:`clmem.compat.stream_kind`).
BABI_KIND = {"by": "encoding", "default": "memnet", "values": {"memnet": "qa_memnet", "sequence": "qa_sequence"}}


_TINY_BABI = {"tasks": "1,6", "train_questions": 8, "test_questions": 4, "max_memory": 2}


@BENCHMARKS.register("continual_babi", _BABI_OPTS,
                     "bAbI tasks one experience per task (or group of tasks); error = 1 - accuracy",
                     kind=BABI_KIND, tiny=_TINY_BABI, preflight=check_babi)
def continual_babi(seed: int, tasks: str = _BABI_OPTS["tasks"].default, groups: str | None = None,
                   order: str = "given", data_root: str | None = None, layout: str = "en",
                   cache_dir: str | None = None, encoding: str = "memnet", max_memory: int = 20,
                   train_questions: int | None = 1000, test_questions: int | None = 1000,
                   validation_fraction: float = 0.0) -> Stream:
    experiences = _ordered(parse_groups(tasks, groups), order, seed)
    return _babi_stream(seed, experiences, data_root, layout, cache_dir, encoding, max_memory,
                        train_questions, test_questions, validation_fraction)


_JOINT_OPTS = {k: v for k, v in _BABI_OPTS.items() if k not in ("groups", "order")}


@BENCHMARKS.register("babi_joint", _JOINT_OPTS, "every bAbI task in one experience (joint training)",
                     kind=BABI_KIND, preflight=check_babi)
def babi_joint(seed: int, tasks: str = _BABI_OPTS["tasks"].default, data_root: str | None = None,
               layout: str = "en", cache_dir: str | None = None, encoding: str = "memnet", max_memory: int = 20,
               train_questions: int | None = 1000, test_questions: int | None = 1000,
               validation_fraction: float = 0.0) -> Stream:
    experiences = [[t for g in parse_groups(tasks, None) for t in g]]
    return _babi_stream(seed, experiences, data_root, layout, cache_dir, encoding, max_memory,
                        train_questions, test_questions, validation_fraction)


