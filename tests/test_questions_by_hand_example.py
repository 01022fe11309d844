"""The hand-made pictures and questions of examples/questions_by_hand.py: each answer is true of its picture, and
the report covers every kind."""

import random

import numpy as np

from genvl.world.typed_questions import read_question

from .scripts import load_script

by_hand = load_script("examples/questions_by_hand.py")


def ink_columns(image) -> np.ndarray:
    pixels = np.asarray(image, dtype=int)
    return np.nonzero((np.abs(pixels - pixels[0, 0]).sum(-1) > 30).any(0))[0]


def test_each_question_is_read_as_asked_and_its_answer_is_true_of_the_picture():
    for kind in by_hand.KINDS:
        rng = random.Random(kind)
        answers = set()
        for _ in range(30):
            image, question, answer = by_hand.asked(rng, kind)
            read = read_question(question)
            assert read is not None and read["kind"] == kind, question
            answers.add(answer)
            if kind == "relation":  # the answer lies wholly on the side asked about
                columns, half = ink_columns(image), image.width // 2
                assert (columns < half).any() and (columns >= half).any()
                assert read["name"] != answer
            if kind == "colour":
                assert answer in by_hand.COLOURS
        if kind == "exists":
            assert answers == {"yes", "no"}
        if kind == "count":
            assert answers == {"one", "two", "three", "four"}


def test_report_covers_every_kind(capsys):
    report = by_hand.main(["--questions", "2"])  # the shipped question-answering model
    assert set(report) == set(by_hand.KINDS)
    for row in report.values():
        assert row["questions"] == 2 and 0 <= row["right"] <= 1 and row["read"] == 2
    assert len(capsys.readouterr().out.splitlines()) == len(by_hand.KINDS) + 2
