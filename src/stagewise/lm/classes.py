"""Structural token classes (after Baker et al. 2025; paper App. D.1.1, SPEC §4).

Classes are neither exhaustive nor exclusive: a token may have none or several.

* **word part**: a non-final token of a word split into several tokens;
* **word end**: the final token of such a word (single-token words are neither);
* **formatting**: whitespace containing a newline or a tab, or a run of one repeated
  non-alphanumeric character (``----``, ``####``, indentation);
* **induction pattern**: token ``x_k`` such that for some ``j < k``, ``x_{j-1} = x_{k-1}`` and
  ``x_j = x_k`` (the bigram ending here occurred earlier in the sequence);
* **left / right delimiter**: a token with opening brackets ``( [ {`` and no closing ones (or
  the reverse), and otherwise only punctuation: ``(``, ``[``, ``):`` and ``})`` count, ``()``
  and ``f(`` do not.
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


def _is_formatting(token: str) -> bool:
    if token and token.isspace():
        return "\n" in token or "\t" in token or len(token) >= 2
    return len(token) >= 2 and len(set(token)) == 1 and not token[0].isalnum()


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
        punctuation_only = not any(ch.isalnum() for ch in text)
        opens, closes = bool(LEFT_DELIMITERS & set(text)), bool(RIGHT_DELIMITERS & set(text))
        member[k, left] = punctuation_only and opens and not closes
        member[k, right] = punctuation_only and closes and not opens
        if k >= 1:
            bigram = (ids[k - 1], token_id)
            member[k, induction] = bigram in seen_bigrams
            seen_bigrams.add(bigram)
    return member
