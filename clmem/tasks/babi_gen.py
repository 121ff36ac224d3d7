"""Seeded synthetic bAbI-style stories for tasks 1, 2, 6, 7 and 15, written in the v1.2 text format.

Simple templates in the spirit of the originals; :func:`write_babi` writes ``<root>/<layout>/qa{N}_{name}_{split}
.txt`` so the files go through the same loader (:func:`clmem.tasks.babi.load_babi_task`) as the real data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import numpy as np

from ._common import check_int

__all__ = ["GENERATED_TASKS", "BabiGenConfig", "generate_babi_lines", "write_babi"]

PEOPLE = ("mary", "john", "daniel", "sandra")
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "milk", "apple")
MOVES = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
COUNTS = ("none", "one", "two", "three")
SPECIES = {"mouse": "mice", "cat": "cats", "sheep": "sheep", "wolf": "wolves"}
NAMES = ("gertrude", "winona", "emily", "jessica")

GENERATED_TASKS: Dict[int, str] = {
    1: "single-supporting-fact", 2: "two-supporting-facts", 6: "yes-no-questions", 7: "counting",
    15: "basic-deduction",
}


@dataclass(frozen=True)
class BabiGenConfig:
    """``questions_per_story`` questions per story, each after ``statements_per_question`` statements."""

    questions_per_story: int = 5
    statements_per_question: int = 2

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "questions_per_story", self.questions_per_story, 1)
        check_int(owner, "statements_per_question", self.statements_per_question, 1)


class _Story:
    """Builds one story's numbered lines while tracking the world state."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.lines: List[str] = []
        self.where: Dict[str, Tuple[str, int]] = {}  # person -> (place, line id)
        self.holds: Dict[str, Tuple[str, int]] = {}  # object -> (person, line id of the grab)
        self.acts: Dict[str, List[int]] = {}  # person -> line ids of their grabs and drops
        self.lying: Dict[str, Tuple[str, Tuple[int, ...]]] = {}  # dropped object -> (place, supporting ids)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def say(self, text: str) -> int:
        self.lines.append(f"{len(self.lines) + 1} {text}")
        return len(self.lines)

    def ask(self, question: str, answer: str, supporting) -> None:
        ids = " ".join(str(i) for i in supporting)
        self.lines.append(f"{len(self.lines) + 1} {question}\t{answer}\t{ids}")

    def move(self) -> None:
        person, place = self.pick(PEOPLE), self.pick(PLACES)
        line = self.say(f"{person.capitalize()} {self.pick(MOVES)} the {place}.")
        self.where[person] = (place, line)

    def handle(self) -> None:
        """Somebody moves, or a located person grabs a free object or drops one they hold."""
        people = [p for p in PEOPLE if p in self.where]
        if not people or self.rng.random() < 0.35:
            return self.move()
        person = self.pick(people)
        held = [o for o, (p, _) in self.holds.items() if p == person]
        free = [o for o in OBJECTS if o not in self.holds]
        if not held and not free:
            return self.move()
        if held and (not free or self.rng.random() < 0.4):
            obj = self.pick(held)
            line = self.say(f"{person.capitalize()} dropped the {obj}.")
            place, moved = self.where[person]
            self.lying[obj] = (place, (moved, line))
            del self.holds[obj]
        else:
            obj = self.pick(free)
            line = self.say(f"{person.capitalize()} {self.pick(('got', 'took', 'picked up'))} the {obj} there.")
            self.holds[obj] = (person, line)
            self.lying.pop(obj, None)
        self.acts.setdefault(person, []).append(line)


def _task1(story: _Story) -> None:
    person = story.pick(sorted(story.where))
    place, line = story.where[person]
    story.ask(f"Where is {person.capitalize()}?", place, [line])


def _task2(story: _Story) -> None:
    """Where is an object: its holder's place (grab + move) or where it was dropped (move + drop)."""
    known = sorted(set(story.holds) | set(story.lying))
    if not known:
        return _task1(story)
    obj = story.pick(known)
    if obj in story.lying:
        place, supporting = story.lying[obj]
    else:
        person, grab = story.holds[obj]
        place, moved = story.where[person]
        supporting = (grab, moved)
    story.ask(f"Where is the {obj}?", place, sorted(set(supporting)))


def _task6(story: _Story) -> None:
    person = story.pick(sorted(story.where))
    place, line = story.where[person]
    asked = place if story.rng.random() < 0.5 else story.pick(PLACES)
    story.ask(f"Is {person.capitalize()} in the {asked}?", "yes" if asked == place else "no", [line])


def _task7(story: _Story) -> None:
    """Objects a located person holds; supported by their grabs and drops (their last move if none)."""
    person = story.pick(sorted(story.where))
    count = sum(1 for p, _ in story.holds.values() if p == person)
    supporting = story.acts.get(person) or [story.where[person][1]]
    story.ask(f"How many objects is {person.capitalize()} carrying?", COUNTS[count], supporting)


_ACTIONS: Dict[int, Tuple[Callable, Callable]] = {
    1: (_Story.move, _task1), 2: (_Story.handle, _task2), 6: (_Story.move, _task6), 7: (_Story.handle, _task7),
}


def _deduction_story(rng: np.random.Generator, config: BabiGenConfig) -> List[str]:
    story = _Story(rng)
    species = [str(s) for s in rng.permutation(list(SPECIES))]
    shift = int(rng.integers(1, len(species)))  # a rotation: no species fears itself
    fears = {s: species[(i + shift) % len(species)] for i, s in enumerate(species)}
    rule_line, member_line, member = {}, {}, {}
    for kind in species:
        rule_line[kind] = story.say(f"{SPECIES[kind].capitalize()} are afraid of {SPECIES[fears[kind]]}.")
    for name in (str(n) for n in rng.permutation(NAMES)):
        member[name] = species[int(rng.integers(len(species)))]
        member_line[name] = story.say(f"{name.capitalize()} is a {member[name]}.")
    for _ in range(config.questions_per_story):
        name = str(story.pick(NAMES))
        kind = member[name]
        story.ask(f"What is {name} afraid of?", fears[kind], [member_line[name], rule_line[kind]])
    return story.lines


def _story(task: int, rng: np.random.Generator, config: BabiGenConfig) -> List[str]:
    if task == 15:
        return _deduction_story(rng, config)
    act, ask = _ACTIONS[task]
    story = _Story(rng)
    for _ in range(config.questions_per_story):
        for _ in range(config.statements_per_question):
            act(story)
        ask(story)
    return story.lines


def generate_babi_lines(task: int, num_questions: int, seed: int = 0,
                        config: BabiGenConfig = BabiGenConfig()) -> List[str]:
    """Lines of a bAbI-format file with ``num_questions`` questions for ``task`` (one of
    :data:`GENERATED_TASKS`)."""
    if task not in GENERATED_TASKS:
        raise ValueError(f"bAbI generator task: expected one of {tuple(GENERATED_TASKS)}, got {task!r}")
    check_int("generate_babi_lines", "num_questions", num_questions, 1)
    rng = np.random.default_rng([seed, task])
    lines: List[str] = []
    asked = 0
    while asked < num_questions:
        story = _story(task, rng, config)
        keep = []
        for line in story:
            if "\t" in line:
                if asked == num_questions:
                    break
                asked += 1
            keep.append(line)
        lines.extend(keep)
    return lines


def write_babi(root: Union[str, os.PathLike], tasks=tuple(GENERATED_TASKS), num_train: int = 1000,
               num_test: int = 1000, seed: int = 0, layout: str = "en",
               config: BabiGenConfig = BabiGenConfig()) -> Dict[Tuple[int, str], Path]:
    """Write train and test files of ``tasks`` under ``<root>/<layout>/``; returns ``{(task, split): path}``.
    Train and test use different seeds."""
    folder = Path(root) / layout
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task in tasks:
        for offset, (split, count) in enumerate((("train", num_train), ("test", num_test))):
            lines = generate_babi_lines(task, count, seed * 2 + offset, config)
            path = folder / f"qa{task}_{GENERATED_TASKS.get(task, 'task')}_{split}.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            paths[(task, split)] = path
    return paths
