"""Shared helpers: seeding, a small multilingual word list, hand-written BPE vocab/merges, filler pieces that pad
a vocabulary to a real checkpoint's size, and saving in a dtype."""

import itertools
import json
import random
import string
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

# Enough common words that ordinary English/German/Russian text becomes word pieces, not single characters.
WORDS = {
    "en": """the be to of and a in that have I it for not on with he as you do at this but his by from they we
        say her she or an will my one all would there their what so up out if about who get which go me when
        make can like time no just him know take people into year your good some could them see other than then
        now look only come its over think also back after use two how our work first well way even new want
        because any these give day most us is are was were has had been said did made hello world thank thanks
        please yes today tomorrow morning night weather house city country water food speech model text voice
        music language translate sentence question answer great small large long little old right left very
        much many more where why here again never always every each number part place name""".split(),
    "de": """der die das und ist ich nicht sie es zu ein eine den mit von dem sich des auf für im dass wir er
        auch wie an werden aus hat wird sind noch bei einer um am nach so nur oder aber vor zur bis mehr durch
        kann man über haben war schon wenn wo was wer heute morgen gut guten tag hallo welt danke bitte ja nein
        haus stadt land wasser essen sprache stimme musik frage antwort groß klein alt neu immer wieder jeder
        zeit jahr leute ganz hier dort warum weil sehr viel viele geht wetter""".split(),
    "ru": """и в не на я что он с как а то это все она так его но да ты к у же вы за бы по только ее мне было
        вот от меня еще нет о из ему теперь когда даже ну вдруг ли если уже или ни быть был него до вас нибудь
        опять уж вам ведь там потом себя ничего ей может они тут где есть надо ней для мы тебя их чем была сам
        чтоб без будто чего раз тоже себе под будет привет мир спасибо пожалуйста сегодня завтра утро день
        ночь погода дом город страна вода еда язык голос музыка вопрос ответ большой маленький новый""".split(),
}

LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZäöüÄÖÜßàâçéèêëîïôûùÿñáíóú"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
DIGITS = "0123456789"
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»„“”‘’–—…"
CHARACTERS = LATIN + CYRILLIC + DIGITS + PUNCTUATION


def seed_everything(seed: int) -> None:
    """Same seed -> same weights, so rebuilding gives byte-identical checkpoints."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def words(*langs: str, capitalized: bool = False) -> list[str]:
    """The common words of the given languages, plus their sentence-initial forms if `capitalized`."""
    base = [w for lang in langs for w in WORDS[lang]]
    return list(dict.fromkeys(base + [w.capitalize() for w in base])) if capitalized else base


def chain_merges(symbol_seqs: list[list[str]]) -> list[tuple[str, str]]:
    """Left-to-right merges rebuilding each symbol sequence into one token; shorter pieces rank first."""
    by_depth: dict[int, dict[tuple[str, str], None]] = {}
    for symbols in symbol_seqs:
        piece = symbols[0]
        for depth, symbol in enumerate(symbols[1:]):
            by_depth.setdefault(depth, {})[(piece, symbol)] = None
            piece += symbol
    return list(dict.fromkeys(pair for depth in sorted(by_depth) for pair in by_depth[depth]))


def end_of_word_symbols(word: str) -> list[str]:
    """fairseq/XLM/CLIP style: the last character carries the `</w>` end-of-word marker."""
    return [*word[:-1], word[-1] + "</w>"]


def end_of_word_vocab(alphabet: str, merges: list[tuple[str, str]]) -> list[str]:
    """Every character alone and word-final, then every merge result, without duplicates."""
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges)]
    return list(dict.fromkeys(tokens))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE (Whisper, CLIP)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def byte_symbols(text: str) -> list[str]:
    table = bytes_to_unicode()
    return [table[b] for b in text.encode("utf-8")]


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_merges(path: Path, merges: list[tuple[str, str]], header: str | None = None) -> None:
    lines = ([header] if header else []) + [f"{a} {b}" for a, b in merges]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def filler_pieces(count: int, taken: set[str], prefix: str = "", suffix: str = "") -> list[str]:
    """`count` distinct pieces (prefix + lowercase letters + suffix) not in `taken`: vocabulary rows that no
    merge produces, which pad a hand-written vocabulary to a real checkpoint's size and decode as text."""

    def candidates() -> Iterator[str]:
        for length in itertools.count(3):
            for letters in itertools.product(string.ascii_lowercase, repeat=length):
                yield prefix + "".join(letters) + suffix

    return list(itertools.islice((p for p in candidates() if p not in taken), max(count, 0)))


def save_model(model, model_dir: Path, dtype: torch.dtype) -> None:
    """A transformers model's safetensors checkpoint in `dtype` (float32 leaves a tiny model as built)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(model_dir, safe_serialization=True)
