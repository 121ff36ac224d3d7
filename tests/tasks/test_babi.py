from pathlib import Path

import pytest
import torch

from clmem.tasks.babi import (
    ANSWER,
    Vocabulary,
    babi_file,
    babi_root,
    encode_memnet,
    encode_sequence,
    load_babi,
    load_babi_task,
    parse_babi,
    questions_of,
    read_babi_file,
)
from clmem.tasks.babi_gen import GENERATED_TASKS, generate_babi_lines, write_babi

BABI_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "babi"


@pytest.fixture(scope="module")
def real_babi():
    if not (BABI_ROOT / "en").is_dir():
        pytest.skip(f"real bAbI v1.2 not found at {BABI_ROOT} (shared data absent on this machine)")
    return {split: {t: load_babi_task(t, split, BABI_ROOT) for t in range(1, 21)} for split in ("train", "test")}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("babi")
    write_babi(root, num_train=200, num_test=50, seed=3)
    return root


def test_real_files_all_tasks_have_1000_questions(real_babi):
    for split, tasks in real_babi.items():
        for task, stories in tasks.items():
            assert len(questions_of(stories)) == 1000, (split, task)


def test_real_supporting_ids_precede_the_question_in_the_same_story(real_babi):
    for tasks in real_babi.values():
        for stories in tasks.values():
            for story in stories:
                statement_ids = {i for i, _ in story.statements}
                for q in story.questions:
                    assert q.supporting and all(s < q.line_id for s in q.supporting)
                    assert all(s in statement_ids for s in q.supporting)
                    assert all(i < q.line_id for i in q.context_ids)


def test_real_multi_answers_of_tasks_8_and_19(real_babi):
    t19 = questions_of(real_babi["train"][19])
    assert t19[0].question == ("how", "do", "you", "go", "from", "the", "kitchen", "to", "the", "garden")
    assert t19[0].answers == ("s", "e") and t19[0].answer == "s,e"
    assert all(len(q.answers) == 2 for q in t19)
    t8 = questions_of(real_babi["train"][8])
    assert any(len(q.answers) > 1 for q in t8)
    first = t8[0]
    assert first.answers == ("football",) and first.supporting == (3,)


def test_real_first_story_of_task_1(real_babi):
    q = questions_of(real_babi["train"][1])[0]
    assert q.context == (("mary", "moved", "to", "the", "bathroom"), ("john", "went", "to", "the", "hallway"))
    assert q.question == ("where", "is", "mary") and q.answers == ("bathroom",) and q.supporting == (1,)


def test_vocabulary_and_encodings_across_tasks(real_babi):
    questions = [q for t in (1, 19) for q in questions_of(real_babi["train"][t])[:20]]
    vocab = Vocabulary.build(questions)
    assert vocab.words[:5] == ("<pad>", "<unk>", "<sep>", "<query>", "<answer>")
    data = encode_memnet(questions, vocab, max_memory=10)
    assert data.stories.shape[:2] == (40, 10) and data.queries.shape[0] == 40
    q0 = questions[0]
    assert vocab.encode(q0.context[-1]) == data.stories[0, 0, :len(q0.context[-1])].tolist()  # slot 0: newest
    assert data.answers[20] == vocab.id("s,e")
    seq = encode_sequence(questions[:3], vocab, one_hot=True)
    assert seq.inputs.shape[-1] == len(vocab) and seq.mask.sum(1).tolist() == [1, 1, 1]
    step = int(seq.mask[0].nonzero())
    assert seq.inputs[0, step].argmax() == vocab.id(ANSWER) and seq.targets[0, step] == vocab.id(q0.answer)


def test_missing_file_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        babi_file(3, "train", tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "en" / "qa3_*_train.txt") in message


def test_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLMEM_DATA", str(tmp_path))
    assert babi_root() == tmp_path / "babi"
    write_babi(tmp_path / "babi", tasks=(1,), num_train=5, num_test=5, layout="en-10k")
    assert len(questions_of(load_babi_task(1, "test", layout="en-10k"))) == 5


@pytest.mark.parametrize("bad, line", [
    ("1 Mary moved to the hallway.\n2 Where is Mary?\thallway\n", 2),
    ("1 Mary moved to the hallway.\nMary went home.\n", 2),
    ("1 Mary moved.\n2 John moved.\n4 Where is Mary?\thallway\t1\n", 3),
    ("1 Mary moved.\n2 Where is Mary?\thallway\t1 x\n", 2),
    ("1 Mary moved.\n2 Where is Mary?\thallway\t5\n", 2),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, line):
    path = tmp_path / "qa1_bad_train.txt"
    path.write_text(bad)
    with pytest.raises(ValueError, match=rf"qa1_bad_train\.txt:{line}: malformed bAbI line, expected"):
        read_babi_file(path)


def test_parse_restarts_story_at_id_1():
    stories = parse_babi(["1 A went to the b.", "2 Where is a?\tb\t1", "1 C went to the d.", "2 Where is c?\td\t1"])
    assert len(stories) == 2 and stories[1].questions[0].context == (("c", "went", "to", "the", "d"),)


def test_generated_files_load_with_requested_counts(generated):
    data = load_babi(GENERATED_TASKS, "train", generated)
    assert {t: len(q) for t, q in data.items()} == {t: 200 for t in GENERATED_TASKS}
    assert all(len(q) == 50 for q in load_babi(GENERATED_TASKS, "test", generated).values())
    assert generate_babi_lines(1, 30, seed=7) == generate_babi_lines(1, 30, seed=7)
    assert generate_babi_lines(1, 30, seed=7) != generate_babi_lines(1, 30, seed=8)


def _statements(q):
    return dict(zip(q.context_ids, q.context))


def test_generated_task1_answer_is_last_location_of_person(generated):
    for q in questions_of(load_babi_task(1, "train", generated)):
        person = q.question[-1]
        moves = [s for s in q.context if s[0] == person]
        assert moves and q.answers == (moves[-1][-1],)
        assert _statements(q)[q.supporting[0]] == moves[-1]


def test_generated_task6_yes_no_matches_location(generated):
    for q in questions_of(load_babi_task(6, "train", generated)):
        person, place = q.question[1], q.question[-1]
        last = [s for s in q.context if s[0] == person][-1][-1]
        assert q.answers == ("yes" if last == place else "no",)


def test_generated_task7_count_matches_grabs_minus_drops(generated):
    words = ("none", "one", "two", "three")
    for q in questions_of(load_babi_task(7, "train", generated)):
        person = q.question[-2]
        held = set()
        for s in q.context:
            if s[0] == person and s[1] == "dropped":
                held.discard(s[-1])
            elif s[0] == person and s[1] in ("got", "took", "picked"):
                held.add(s[-2])
            elif s[1] in ("got", "took", "picked"):
                held.discard(s[-2])
        assert q.answers == (words[len(held)],)


def test_generated_task15_deduction_follows_support(generated):
    for q in questions_of(load_babi_task(15, "train", generated)):
        member, rule = (_statements(q)[i] for i in q.supporting)
        assert member[0] == q.question[2] and member[:2] == (q.question[2], "is")
        assert rule[1:4] == ("are", "afraid", "of")
        assert q.answers[0] != member[-1]


def test_generated_task2_answer_in_supporting_facts(generated):
    for q in questions_of(load_babi_task(2, "train", generated)):
        facts = [_statements(q)[i] for i in q.supporting]
        assert any(f[-1] == q.answers[0] for f in facts)
        if q.question[-1] in ("football", "milk", "apple"):
            assert any(q.question[-1] in f for f in facts)


def test_encode_memnet_truncates_to_most_recent(generated):
    questions = questions_of(load_babi_task(1, "train", generated))[:8]
    vocab = Vocabulary.build(questions)
    data = encode_memnet(questions, vocab, max_memory=3)
    assert data.stories.shape[1] == 3 and data.stories.dtype == torch.long
    q = questions[-1]
    assert vocab.encode(q.context[-3]) == data.stories[-1, 2, :len(q.context[-3])].tolist()


def test_encode_memnet_pads_left_aligned_and_handles_an_empty_context():
    from clmem.tasks.babi import BabiQuestion
    first = BabiQuestion(1, 1, (), (), ("where", "is", "mary"), ("hall",), ())
    second = BabiQuestion(1, 3, (("mary", "went", "to", "the", "hall"), ("john", "left")), (1, 2),
                          ("where", "is", "john"), ("hall",), (2,))
    vocab = Vocabulary.build([first, second])
    data = encode_memnet([first, second], vocab, max_memory=5)
    assert data.stories.shape == (2, 2, 5) and data.queries.shape == (2, 3)
    assert (data.stories[0] == 0).all()
    assert data.stories[1, 0].tolist() == vocab.encode(("john", "left")) + [0, 0, 0]  # slot 0: most recent
    assert data.stories[1, 1].tolist() == vocab.encode(("mary", "went", "to", "the", "hall"))
    assert data.answers.tolist() == [vocab.id("hall")] * 2
