import numpy as np
import pytest

from stagewise.lm.classes import CLASSES, classify_tokens


def _byte_of_character() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: printable bytes stand for themselves, the others
    (space, newline, control bytes…) for ``chr(256 + k)`` in byte order (so ``Ġ`` is a space)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(others)}


BYTE_OF_CHARACTER = _byte_of_character()


def decode_byte_level(token: str) -> str:
    """The text of a GPT-2/Pythia byte-level vocabulary entry (``"Ġ----"`` → ``" ----"``,
    ``"ĊĊ"`` → ``"\n\n"``); an incomplete UTF-8 sequence decodes to ``\ufffd``."""
    if any(char not in BYTE_OF_CHARACTER for char in token):
        raise ValueError(f"{token!r} is not a byte-level vocabulary entry")
    return bytes(BYTE_OF_CHARACTER[char] for char in token).decode("utf-8", errors="replace")


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


def test_rules_after_leading_whitespace_are_formatting_and_operators_are_not():
    # Pythia's tokenizer glues the space before a rule onto it: ' ----', ' ####', '\n===='
    assert classes_of([" ----", " ####", "\n====", "\t****"]) == [{"formatting"}] * 4
    # operators and short runs: comparison, power, floor division, dunder, ellipsis, 3-dash
    assert classes_of(["==", " **", "//", "__", "...", " ...", "---", " !="]) == [set()] * 8


def test_split_utf8_pieces_and_bracket_runs_are_not_formatting():
    # the pieces of a split multi-byte character each decode to U+FFFD on their own
    assert classes_of(["\ufffd\ufffd", "\ufffd\ufffd\ufffd\ufffd", " \ufffd"]) == [set()] * 3
    assert classes_of(["((((", " [[", "))))", "}}"]) == [{"left delimiter"}, {"left delimiter"},
                                                      {"right delimiter"}, {"right delimiter"}]


def test_byte_level_vocabulary_entries_decode_to_their_text():
    # GPT-2/Pythia vocabulary entries: Ġ is a space, Ċ a newline, ĉ a tab
    assert decode_byte_level("Ġ----") == " ----"
    assert decode_byte_level("ĊĊ") == "\n\n"
    assert decode_byte_level("ĉĉ") == "\t\t"
    assert decode_byte_level("ĠĠĠĠ") == "    "
    pieces = [decode_byte_level(p) for p in ("â", "Ĥ", "¬")]  # the three bytes of "€" as separate tokens
    assert all(p == "\ufffd" for p in pieces)
    entries = ["Ġ----", "ĊĊ", "Ġ==", "Ġ((", "Ġdiffer", "ences", "âĤ"]
    assert classes_of([decode_byte_level(e) for e in entries]) == [
        {"formatting"}, {"formatting"}, set(), {"left delimiter"}, {"word part"}, {"word end"}, set()]
    with pytest.raises(ValueError, match="not a byte-level"):
        decode_byte_level("€")


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


def test_byte_level_decoding_agrees_with_a_trained_tokenizer(tmp_path):
    from stagewise.lm.tokenizer import token_strings, train_bpe_tokenizer

    texts = ["def f(x):\n    return x ** 2  # ----\n", "a = [1, 2]\n\tb == c ... €€ ####"] * 20
    tokenizer = train_bpe_tokenizer(texts, 300, tmp_path)
    ids = tokenizer(texts[0] + texts[1])["input_ids"]
    assert [decode_byte_level(t) for t in tokenizer.convert_ids_to_tokens(ids)] == token_strings(tokenizer, ids)


def test_word_continuations_are_the_later_pieces_of_split_words():
    from stagewise.lm.classes import word_continuations

    strings = [" un", "believ", "able", ".", " the", " differ", "ences", "\n", "x", "2", "ab"]
    expected = [False, True, True, False, False, False, True, False, False, False, False]
    assert word_continuations(strings).tolist() == expected
    # a repeated split word is an induction-pattern token at its later pieces, and those are continuations
    ids = [5, 6, 7, 8, 5, 6, 7]
    strings = [" foo", "bar", " =", " x", " foo", "bar", " ="]
    induction = classify_tokens(ids, strings)[:, CLASSES.index("induction")]
    assert (induction & word_continuations(strings)).tolist() == [False] * 5 + [True, False]
