"""The official VQA answer normalisation, quirks included.

Published VQA numbers depend on this exact procedure, bugs and all, so it is
reproduced literally rather than "fixed":
- a punctuation mark is deleted (instead of replaced by a space) if it appears
  next to a space anywhere in the text, or if the text contains a digit-comma-digit
  anywhere; both tests look at the original text, not the partly processed one;
- the period regex is written `(?!<=\\d)` (a negative lookahead for "<=" followed
  by a digit, not a lookbehind), and the reference passes `re.UNICODE` (= 32) as
  the `count` argument of `re.sub`, so at most 32 periods are removed;
- contractions are looked up after lower-casing, so capitalised keys never match.

The tables live in `vqa_answer_normalization.json` next to this file.
"""
import json
import os
import re

_TABLES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vqa_answer_normalization.json")
with open(_TABLES_PATH, "r", encoding="utf-8") as f:
    _TABLES = json.load(f)

CONTRACTIONS = dict(_TABLES["contractions"])
NUMBER_WORDS = dict(_TABLES["number_words"])
ARTICLES = frozenset(_TABLES["articles"])
PUNCTUATION = tuple(_TABLES["punctuation"])  # order matters: marks are processed in sequence
COMMA_STRIP = re.compile(_TABLES["comma_strip_regex"])
PERIOD_STRIP = re.compile(_TABLES["period_strip_regex"])
# the reference calls periodStrip.sub("", text, re.UNICODE): re.UNICODE lands in `count`
PERIOD_STRIP_MAX_COUNT = int(re.UNICODE)
# fast exit for the common answer with no punctuation mark at all (same result, just quicker)
_ANY_MARK = re.compile("[" + re.escape("".join(PUNCTUATION)) + "]")


def process_punctuation(text):
    """Apply the official punctuation rule, then strip up to 32 sentence periods."""
    if _ANY_MARK.search(text) is None:
        return PERIOD_STRIP.sub("", text, count=PERIOD_STRIP_MAX_COUNT)
    has_digit_comma_digit = COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # both tests look at the input `text`, not the partly processed `out`, as the reference does
        if has_digit_comma_digit or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_MAX_COUNT)


def process_digit_article(text):
    """Lower-case, map number words to digits, drop articles, restore contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def prep_ans(answer):
    """Normalise an answer for the answer dictionary and the soft training targets."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")
