"""Words written from numbers: counts with their noun, lists joined as a sentence, verbs that agree.

Every sentence the workbook writes from its results (warnings, verdicts, the advice) builds its counts and lists
here, so that "1 cells" or "unit 2, unit 8 is missing" cannot be written.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["plural", "count", "and_list", "verb"]

_IRREGULAR = {"is": "are", "was": "were", "has": "have", "does": "do"}


def plural(word: str, n: int) -> str:
    """``word`` for one, its plural otherwise (``class`` -> ``classes``, ``is`` -> ``are``).

    >>> plural("cell", 1), plural("cell", 2), plural("class", 3), plural("is", 2), plural("ability", 0)
    ('cell', 'cells', 'classes', 'are', 'abilities')
    """
    if n == 1:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def count(n: int, word: str) -> str:
    """``n`` and its noun: ``1 cell``, ``3 cells``, ``1,200 pixels``.

    >>> count(1, "fold"), count(1200, "pixel")
    ('1 fold', '1,200 pixels')
    """
    return f"{n:,} {plural(word, n)}"


def and_list(items: Iterable, conjunction: str = "and") -> str:
    """Items joined as a sentence: ``a``, ``a and b``, ``a, b and c``.

    >>> and_list(["unit 2"]), and_list(["unit 2", "unit 8"]), and_list("abc", "or")
    ('unit 2', 'unit 2 and unit 8', 'a, b or c')
    """
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def verb(singular: str, n: int) -> str:
    """The verb agreeing with ``n`` things: ``verb("is", 2)`` -> ``are``; ``verb("holds", 2)`` -> ``hold``.

    >>> verb("is", 1), verb("is", 2), verb("holds", 2), verb("misses", 3)
    ('is', 'are', 'hold', 'miss')
    """
    if n == 1:
        return singular
    if singular in _IRREGULAR:
        return _IRREGULAR[singular]
    if singular.endswith(("sses", "shes", "ches", "xes")):
        return singular[:-2]
    return singular[:-1] if singular.endswith("s") else singular
