"""Structural token classes (after Baker et al. 2025; paper App. D.1.1, SPEC §4).

Classes are neither exhaustive nor exclusive: a token may have none or several.

* **word part**: a non-final token of a word split into several tokens;
* **word end**: the final token of such a word (single-token words are neither);
* **formatting**: whitespace containing a newline or a tab, or at least two spaces
  (indentation), or a rule: a run of at least :data:`RULE_LENGTH` copies of one punctuation
  character after optional whitespace (``----``, ``' ####'``, ``'\n===='``).  Operators and
  short runs (``==``, ``**``, ``//``, ``__``, ``...``), bracket runs (``((``, which are
  delimiters) and the pieces of a split UTF-8 character (decoded as ``\ufffd``) are not;
* **induction pattern**: token ``x_k`` such that for some ``j < k``, ``x_{j-1} = x_{k-1}`` and
  ``x_j = x_k`` (the bigram ending here occurred earlier in the sequence);
* **left / right delimiter**: a token with opening brackets ``( [ {`` and no closing ones (or
  the reverse), and otherwise only punctuation: ``(``, ``[``, ``((``, ``):`` and ``})`` count,
  ``()`` and ``f(`` do not.

The induction pattern also holds for the later pieces of a word split into several tokens
whenever the word occurred before in the sequence: :func:`word_continuations` marks those
pieces, so that the class can be read without them.

Strings are the decoded text of each token (:func:`stagewise.lm.tokenizer.token_strings`), not
the GPT-2/Pythia byte-level vocabulary entries (``Ġ`` for a space, ``Ċ`` for a newline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSES: tuple[str, ...] = ("word part", "word end", "formatting", "induction", "left delimiter", "right delimiter")
LEFT_DELIMITERS = set("([{")
RIGHT_DELIMITERS = set(")]}")


def _continues_word(previous: str, current: str) -> bool:
    """``current`` glues onto ``previous`` inside one word: no space between, letters on both sides."""
    return bool(previous) and bool(current) and previous[-1].isalpha() and current[0].isalpha()


RULE_LENGTH = 4
"""Shortest run of one punctuation character that counts as formatting (``---`` and ``...``
are too often operators or an ellipsis)."""
REPLACEMENT = "\ufffd"
"""What a piece of a split UTF-8 character decodes to on its own."""


def _is_formatting(token: str) -> bool:
    if not token or REPLACEMENT in token:
        return False
    if token.isspace():
        return "\n" in token or "\t" in token or len(token) >= 2
    run = token.lstrip()
    return (len(run) >= RULE_LENGTH and len(set(run)) == 1 and not run[0].isalnum() and not run[0].isspace()
            and run[0] not in LEFT_DELIMITERS | RIGHT_DELIMITERS)


def classify_tokens(ids: Sequence[int], strings: Sequence[str]) -> np.ndarray:
    """Class membership of every token of one sequence, ``(len(ids), len(CLASSES))`` booleans.

    ``ids`` are the token ids and ``strings`` their decoded text (with leading spaces, as a
    byte-level BPE decodes a single token).
    """
    if len(ids) != len(strings):
        raise ValueError(f"ids and strings differ in length: {len(ids)} and {len(strings)}")
    n = len(ids)
    member = np.zeros((n, len(CLASSES)), dtype=bool)
    part, end, formatting, induction, left, right = range(len(CLASSES))

    # words: maximal runs of tokens that glue onto the previous one
    start = 0
    for k in range(1, n + 1):
        if k < n and _continues_word(strings[k - 1], strings[k]):
            continue
        if k - start >= 2:
            member[start : k - 1, part] = True
            member[k - 1, end] = True
        start = k

    seen_bigrams: set[tuple[int, int]] = set()
    for k, (token_id, text) in enumerate(zip(ids, strings)):
        member[k, formatting] = _is_formatting(text)
        punctuation_only = REPLACEMENT not in text and not any(ch.isalnum() for ch in text)
        opens, closes = bool(LEFT_DELIMITERS & set(text)), bool(RIGHT_DELIMITERS & set(text))
        member[k, left] = punctuation_only and opens and not closes
        member[k, right] = punctuation_only and closes and not opens
        if k >= 1:
            bigram = (ids[k - 1], token_id)
            member[k, induction] = bigram in seen_bigrams
            seen_bigrams.add(bigram)
    return member


def word_continuations(strings: Sequence[str]) -> np.ndarray:
    """``(n,)`` booleans: the tokens that continue a word begun by the token before them (no
    space between, letters on both sides, as the word classes glue tokens into words): every
    piece of a split word but its first.  An induction-pattern token that is one of them may be
    predicted by completing a word the tokenizer split, not only by copying from context."""
    return np.array([k >= 1 and _continues_word(strings[k - 1], strings[k]) for k in range(len(strings))],
                    dtype=bool)
