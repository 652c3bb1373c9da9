"""Matching job classes to the words people write: category names in a COCO file, words in a prompt.

One normalisation serves both (README, "Reference datasets"): case is ignored, runs of ``_``,
``-`` and spaces are one space, and a plural (``s``, ``es``, ``y`` -> ``ies``) names its
singular. So the class ``traffic light`` matches the category ``Traffic_Light`` and the class
``car`` the category ``cars``; anything else needs the class's ``synonyms``.
"""

from __future__ import annotations

import re

from ..records import normalise_name as normalise, plural_forms
from ..spec import ClassSpec

__all__ = ["normalise", "ClassMatcher", "closest"]

def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates most like ``name`` (difflib), for 'did you mean' hints."""
    import difflib

    by_normal = {normalise(c): c for c in candidates}
    return [by_normal[m] for m in difflib.get_close_matches(normalise(name), list(by_normal), n=n, cutoff=0.5)]


class ClassMatcher:
    """Maps category names, and words in text, to job class names (a class's name and synonyms)."""

    def __init__(self, classes: list[ClassSpec]):
        self.by_word = {normalise(w): c.name for c in classes for w in c.words}
        # exact forms first: a job with classes 'glass' and 'glasses' keeps them apart
        self.by_plural = {p: name for w, name in self.by_word.items() for p in plural_forms(w) if p not in self.by_word}
        words = sorted(self.by_word, key=len, reverse=True)
        alternatives = (r"[\s_\-]+".join(re.escape(part) for part in w.split(" ")) for w in words)
        self.pattern = re.compile(r"\b(" + "|".join(alternatives) + r")(?:e?s)?\b", re.IGNORECASE)

    def in_text(self, text: str) -> tuple[str, ...]:
        return tuple(self.by_word[normalise(m.group(1))] for m in self.pattern.finditer(text))

    def first_mentions(self, text: str) -> dict[str, int]:
        """Class -> where its first mention in ``text`` ends (a character offset)."""
        ends: dict[str, int] = {}
        for m in self.pattern.finditer(text):
            ends.setdefault(self.by_word[normalise(m.group(1))], m.end())
        return ends

    def category(self, name: str) -> str | None:
        """The class a category name names: the same word, its plural, or its singular."""
        key = normalise(name)
        singular = next((self.by_word[p] for p in sorted(plural_forms(key)) if p in self.by_word), None)
        return self.by_word.get(key) or self.by_plural.get(key) or singular
