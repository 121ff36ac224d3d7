"""bAbI QA tasks (Weston et al. 2015), v1.2 text format: loader, shared vocabulary and encodings.

Format: numbered lines, numbering restarts at 1 for each story; a statement is ``ID sentence.``, a question is
``ID question?<TAB>answer<TAB>supporting ids`` (the answers of tasks 8 and 19 are comma-separated). Files live
at ``<root>/<layout>/qa{N}_{name}_{train,test}.txt`` with layout ``en`` (1k) or ``en-10k``; the root defaults to
``$CLMEM_DATA/babi`` (``./data/babi`` when ``CLMEM_DATA`` is unset). Synthetic stories for tasks 1, 2, 6, 7 and
15 are written in the same format by :mod:`clmem.tasks.babi_gen`, so both go through this loader.

Encodings: :func:`encode_memnet` (memory slots for memory networks; slot 0 is the most recent sentence) and
:func:`encode_sequence` (a word stream ``sentence <sep> ... <query> question <answer>`` for sequence learners,
the mask marking the answer step).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from clmem.datafiles import BABI_LAYOUTS, babi_file, babi_root

__all__ = [
    "LAYOUTS", "SPECIALS", "BabiQuestion", "BabiStory", "Vocabulary", "MemNetData", "SequenceData",
    "babi_root", "babi_file", "parse_babi", "read_babi_file", "load_babi_task", "load_babi", "questions_of",
    "tokenize", "encode_memnet", "encode_sequence",
]

LAYOUTS = BABI_LAYOUTS
PAD, UNK, SEP, QUERY, ANSWER = "<pad>", "<unk>", "<sep>", "<query>", "<answer>"
SPECIALS = (PAD, UNK, SEP, QUERY, ANSWER)
_TOKEN = re.compile(r"[A-Za-z0-9']+")
Words = Tuple[str, ...]


def tokenize(text: str) -> Words:
    """Lower-cased word tokens; punctuation is dropped."""
    return tuple(t.lower() for t in _TOKEN.findall(text))


@dataclass(frozen=True)
class BabiQuestion:
    """One question with its context: the story's statements that precede it (``context_ids`` are their line
    ids), the question words, the answer(s) and the supporting line ids."""

    task: int
    line_id: int
    context: Tuple[Words, ...]
    context_ids: Tuple[int, ...]
    question: Words
    answers: Words
    supporting: Tuple[int, ...]

    @property
    def answer(self) -> str:
        """The answer as one token (multiple answers joined by commas, as in the files)."""
        return ",".join(self.answers)


@dataclass(frozen=True)
class BabiStory:
    """A story: its statements ``(line id, words)`` and its questions in file order."""

    statements: Tuple[Tuple[int, Words], ...]
    questions: Tuple[BabiQuestion, ...]


def _malformed(file: str, number: int, expected: str, line: str) -> ValueError:
    return ValueError(f"{file}:{number}: malformed bAbI line, expected {expected}, got {line[:80]!r}")


def _split_id(file: str, number: int, line: str) -> Tuple[int, str]:
    head, _, rest = line.partition(" ")
    if not head.isdigit() or not rest.strip():
        raise _malformed(file, number, "'<line id> <text>'", line)
    return int(head), rest


def _question(file: str, number: int, line: str, line_id: int, rest: str, earlier: set) -> tuple:
    parts = rest.split("\t")
    expected = "'ID question?<TAB>answer<TAB>supporting ids'"
    if len(parts) != 3 or not parts[1].strip():
        raise _malformed(file, number, expected, line)
    ids = parts[2].split()
    if not all(i.isdigit() for i in ids):
        raise _malformed(file, number, "supporting fact ids as integers", line)
    supporting = tuple(int(i) for i in ids)
    if any(i not in earlier for i in supporting):
        raise _malformed(file, number, f"supporting ids among the story's earlier lines (< {line_id})", line)
    answers = tuple(a.strip().lower() for a in parts[1].split(","))
    return tokenize(parts[0]), answers, supporting


def parse_babi(lines: Iterable[str], task: int = 0, file: str = "<bAbI text>") -> List[BabiStory]:
    """Parse bAbI v1.2 lines into stories; a malformed line raises ``ValueError`` naming ``file`` and the line
    number."""
    stories: List[BabiStory] = []
    statements: list = []
    questions: list = []
    previous = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        line_id, rest = _split_id(file, number, line)
        if line_id == 1 and previous:
            stories.append(BabiStory(tuple(statements), tuple(questions)))
            statements, questions = [], []
        elif line_id != previous + 1:
            raise _malformed(file, number, f"line id 1 or {previous + 1}", line)
        previous = line_id
        if "\t" not in rest:
            statements.append((line_id, tokenize(rest)))
            continue
        earlier = set(range(1, line_id))
        words, answers, supporting = _question(file, number, line, line_id, rest, earlier)
        ids = tuple(i for i, _ in statements)
        questions.append(BabiQuestion(task, line_id, tuple(w for _, w in statements), ids, words, answers,
                                      supporting))
    if previous:
        stories.append(BabiStory(tuple(statements), tuple(questions)))
    return stories


def read_babi_file(path: Union[str, os.PathLike], task: int = 0) -> List[BabiStory]:
    """Parse one bAbI file (see :func:`parse_babi`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bAbI file not found: expected {path}")
    with path.open(encoding="utf-8") as handle:
        return parse_babi(handle, task, str(path))


def load_babi_task(task: int, split: str = "train", root: Union[str, os.PathLike, None] = None,
                   layout: str = "en") -> List[BabiStory]:
    """The stories of one task and split."""
    return read_babi_file(babi_file(task, split, root, layout), task)


def questions_of(stories: Iterable[BabiStory]) -> List[BabiQuestion]:
    return [q for story in stories for q in story.questions]


def load_babi(tasks: Iterable[int] = range(1, 21), split: str = "train", root: Union[str, os.PathLike, None] = None,
              layout: str = "en") -> Dict[int, List[BabiQuestion]]:
    """``{task: questions}`` for each of ``tasks``."""
    return {task: questions_of(load_babi_task(task, split, root, layout)) for task in tasks}


class Vocabulary:
    """Word ↔ id map shared across tasks; ids 0–4 are ``<pad> <unk> <sep> <query> <answer>``."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self._ids: Dict[str, int] = {}
        self._words: List[str] = []
        for word in (*SPECIALS, *words):
            self.add(word)

    @classmethod
    def build(cls, questions: Iterable[BabiQuestion]) -> "Vocabulary":
        """The vocabulary of the questions' stories, questions and answers (in order of first use)."""
        vocab = cls()
        for q in questions:
            for sentence in q.context:
                vocab.extend(sentence)
            vocab.extend(q.question)
            vocab.add(q.answer)
            vocab.extend(q.answers)
        return vocab

    def add(self, word: str) -> int:
        if word not in self._ids:
            self._ids[word] = len(self._words)
            self._words.append(word)
        return self._ids[word]

    def extend(self, words: Iterable[str]) -> None:
        for word in words:
            self.add(word)

    def id(self, word: str) -> int:
        return self._ids.get(word, self._ids[UNK])

    def word(self, index: int) -> str:
        return self._words[index]

    def encode(self, words: Iterable[str]) -> List[int]:
        return [self.id(w) for w in words]

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    @property
    def words(self) -> Tuple[str, ...]:
        return tuple(self._words)


class MemNetData(NamedTuple):
    """Memory-network encoding: ``stories [N, M, S]`` word ids (slot 0 = most recent sentence, zero padded),
    ``queries [N, Q]``, ``answers [N]`` (the answer token's id)."""

    stories: Tensor
    queries: Tensor
    answers: Tensor


class SequenceData(NamedTuple):
    """Sequence encoding: ``inputs [N, T]`` ids (or ``[N, T, V]`` one-hot), ``targets [N, T]`` (the answer id at
    the answer step, 0 elsewhere), ``mask [N, T]`` (True at the answer step only)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor


def _recent(question: BabiQuestion, max_memory: Optional[int]) -> Tuple[Words, ...]:
    context = question.context
    return context[-max_memory:] if max_memory else context


def _padded(ids: List[int], width: int) -> List[int]:
    return ids + [0] * (width - len(ids))


def encode_memnet(questions: Sequence[BabiQuestion], vocab: Vocabulary, max_memory: Optional[int] = 50,
                  max_sentence_len: Optional[int] = None, max_query_len: Optional[int] = None) -> MemNetData:
    """Encode for memory networks, keeping the ``max_memory`` most recent sentences (None: all); lengths default
    to the longest in ``questions`` (longer sentences are cut)."""
    if not questions:
        raise ValueError("encode_memnet: expected at least one question, got none")
    contexts = [_recent(q, max_memory)[::-1] for q in questions]
    slots = max(1, max(len(c) for c in contexts))
    width = max_sentence_len or max(1, max((len(s) for c in contexts for s in c), default=1))
    qlen = max_query_len or max(len(q.question) for q in questions)
    empty = [0] * width
    stories = torch.tensor([[_padded(vocab.encode(s[:width]), width) for s in context]
                            + [empty] * (slots - len(context)) for context in contexts], dtype=torch.long)
    queries = torch.tensor([_padded(vocab.encode(q.question[:qlen]), qlen) for q in questions], dtype=torch.long)
    answers = torch.tensor([vocab.id(q.answer) for q in questions], dtype=torch.long)
    return MemNetData(stories, queries, answers)


def _stream(question: BabiQuestion, max_memory: Optional[int]) -> List[str]:
    words: List[str] = []
    for sentence in _recent(question, max_memory):
        words.extend(sentence)
        words.append(SEP)
    return words + [QUERY, *question.question, ANSWER]


def encode_sequence(questions: Sequence[BabiQuestion], vocab: Vocabulary, one_hot: bool = False,
                    max_memory: Optional[int] = None) -> SequenceData:
    """Encode as word streams ``sentence <sep> ... <query> question <answer>``, right-padded; the target is the
    answer id at the ``<answer>`` step, which the mask marks."""
    if not questions:
        raise ValueError("encode_sequence: expected at least one question, got none")
    streams = [vocab.encode(_stream(q, max_memory)) for q in questions]
    length = max(len(s) for s in streams)
    inputs = torch.zeros(len(questions), length, dtype=torch.long)
    targets = torch.zeros(len(questions), length, dtype=torch.long)
    mask = torch.zeros(len(questions), length, dtype=torch.bool)
    for n, (q, ids) in enumerate(zip(questions, streams)):
        inputs[n, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        targets[n, len(ids) - 1] = vocab.id(q.answer)
        mask[n, len(ids) - 1] = True
    if one_hot:
        hot = torch.nn.functional.one_hot(inputs, len(vocab)).float()
        hot[..., 0] = 0.0  # padding is the all-zero vector
        return SequenceData(hot, targets, mask)
    return SequenceData(inputs, targets, mask)
