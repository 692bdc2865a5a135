import numpy as np
import pytest

from stagewise.lm.classes import CLASSES, classify_tokens


def classes_of(strings, ids=None):
    ids = ids if ids is not None else [hash(s) % 10_000 for s in strings]
    member = classify_tokens(ids, strings)
    return [{CLASSES[c] for c in np.flatnonzero(row)} for row in member]


def test_words_split_into_parts_and_ends():
    # " differ" + "ences" is one word of two tokens; " the" is a whole word
    assert classes_of([" the", " differ", "ences", " are"]) == [set(), {"word part"}, {"word end"}, set()]
    assert classes_of([" un", "believ", "able", "."]) == [{"word part"}, {"word part"}, {"word end"}, set()]


def test_formatting_tokens():
    found = classes_of(["\n", "\n\n", "\t", "    ", "####", "----", "ab", " x", " "])
    assert found == [{"formatting"}] * 6 + [set(), set(), set()]


def test_delimiters():
    assert classes_of(["(", " [", "{", ")", "]", " }", "):", "()", " f(", "x"]) == [
        {"left delimiter"}, {"left delimiter"}, {"left delimiter"},
        {"right delimiter"}, {"right delimiter"}, {"right delimiter"}, {"right delimiter"}, set(), set(), set()]


def test_induction_pattern():
    # A B C A B: the second B follows A as the first did
    ids = [1, 2, 3, 1, 2, 2]
    strings = [" a", " b", " c", " a", " b", " b"]
    assert [("induction" in c) for c in classes_of(strings, ids)] == [False, False, False, False, True, False]


def test_lengths_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        classify_tokens([1, 2], ["a"])
