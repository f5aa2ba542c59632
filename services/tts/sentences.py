"""Input text -> sentences: the unit SpeechT5 synthesizes, that is batched, streamed and separated by pauses.

SpeechT5 was trained on single utterances and its text positions are bounded (450), so long input is cut
into sentences and over-long sentences at commas or spaces.
"""

import re

# A sentence ends after . ! ? … (maybe followed by a closing quote or bracket) and whitespace, or at a line
# break. Two fixed-width look-behinds because Python's look-behind cannot vary in width.
_BOUNDARY = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’»)\]]))\s+|\s*\n\s*")
# A period after these does not end a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr", "mt"}


def split_sentences(text: str, max_chars: int) -> list[str]:
    pieces = [p.strip() for p in _BOUNDARY.split(text) if p and p.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [part for sentence in sentences for part in _cut(" ".join(sentence.split()), max_chars)]


def _ends_with_abbreviation(sentence: str) -> bool:
    if not sentence.endswith("."):
        return False
    last_word = sentence.rsplit(maxsplit=1)[-1][:-1].lower()
    # A single letter is an initial ("J. Smith").
    return last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())


def _cut(sentence: str, max_chars: int) -> list[str]:
    """Cut an over-long sentence at the last clause break (else space) that keeps a part within max_chars."""
    parts = []
    while len(sentence) > max_chars:
        window = sentence[: max_chars + 1]
        cut = max(window.rfind(mark) for mark in (", ", "; ", ": ", " - ", " – "))
        if cut < max_chars // 2:
            cut = window.rfind(" ")
        end = cut + 1 if cut > 0 else max_chars  # else one enormous word: a hard cut
        parts.append(sentence[:end].strip())
        sentence = sentence[end:].strip()
    if sentence:
        parts.append(sentence)
    return parts
