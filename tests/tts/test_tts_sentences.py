"""Sentence splitting: the unit of batching, streaming and pauses."""

from services.tts.sentences import split_sentences


def test_splits_at_sentence_ends_and_line_breaks():
    text = 'Hello world. How are you?  I am fine!\nA new line "quoted." Done'
    assert split_sentences(text, 300) == [
        "Hello world.",
        "How are you?",
        "I am fine!",
        'A new line "quoted."',
        "Done",
    ]


def test_abbreviations_and_initials_do_not_end_sentences():
    assert split_sentences("Dr. Smith met J. R. Tolkien. Then e.g. tea.", 300) == [
        "Dr. Smith met J. R. Tolkien.",
        "Then e.g. tea.",
    ]


def test_long_sentences_are_cut_at_clause_breaks_then_spaces_within_the_limit():
    text = "a" * 25 + ", " + "b" * 30 + " " + "c" * 10
    parts = split_sentences(text, 30)
    assert parts == ["a" * 25 + ",", "b" * 30, "c" * 10]
    assert split_sentences("x" * 70, 30) == ["x" * 30, "x" * 30, "x" * 10]


def test_whitespace_only_gives_nothing():
    assert split_sentences(" \n\t ", 300) == []
