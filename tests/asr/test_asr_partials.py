"""Streamed deltas (services/asr/generation.py `PartialTexts`): what each window sends adds up to the transcript's
text, whatever the tokens decode to at a window's end."""

import numpy as np

from services.asr.domain import ASRJob
from services.asr.generation import PartialTexts, Window, WindowSegment

TEXTS = {  # token ids -> what they decode to; the transcript's text is the whole decode, stripped
    (1,): " Hello",
    (1, 2): " Hello \x1d",  # a control character Python counts as whitespace, at a window's end
    (1, 2, 3): " Hello \x1d world\ufffd",  # half a character, waiting for its last byte
    (1, 2, 3, 4): " Hello \x1d world\u00e9 ",
}


def window(tokens: list[int]) -> Window:
    return Window(0, 0.0, None, 1.0, None, [WindowSegment(0.0, 30.0, tokens, None)])


def test_deltas_hold_back_trailing_whitespace_and_split_characters():
    deltas = []
    partials = PartialTexts(
        [ASRJob(np.zeros(16000, dtype=np.float32), stream=True)],
        lambda _row, partial: deltas.append(partial.delta),
        text_of=lambda tokens: TEXTS[tuple(tokens)],
        token_logprob=None,
        eot=100,
    )
    for tokens in ([1], [2], [3], [4]):
        partials(0, window(tokens))
        assert not "".join(deltas).endswith((" ", "\x1d", "\ufffd"))
    partials.finish()
    assert "".join(deltas) == TEXTS[(1, 2, 3, 4)].strip()
