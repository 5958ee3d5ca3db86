"""The one tokenizer every lexical engine shares: lowercase words, no stop words, stems."""

from __future__ import annotations

import re
from functools import lru_cache

import Stemmer

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# A short English list: function words only, so that content words in questions survive.
STOP_WORDS = frozenset(
    """
    a an and are as at be but by for from has have he her his i if in into is it its me my no
    not of on or our she so such that the their them then there these they this to was we were
    what when where which who whom why will with you your do does did can could would should
    how
    """.split()
)


@lru_cache(maxsize=4)
def _stemmer(language: str) -> Stemmer.Stemmer:
    return Stemmer.Stemmer(language)


def tokenize(text: str, language: str = "english") -> list[str]:
    """Lowercased word tokens minus stop words, Snowball-stemmed. Numbers are kept."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
    return list(_stemmer(language).stemWords(words))
