"""Request payloads generated locally: texts of varied sizes, audio files, images.

Everything is synthesised from a seeded generator (no datasets, no network), once per process
into small pools, so that generating payloads never shows up in the measured latencies. A
profile sets the sizes: `tiny` for the tiny CI models, `standard` for real checkpoints.
"""

import functools
import io
import random
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

WORDS = {
    "en": """the a one two small large old new good city house water music language voice model speech
        people world weather morning night today tomorrow friend question answer book story road river
        garden window computer train station street light sound picture color green blue red quiet fast
        slow open close read write speak listen learn think see find give take make come go know want
        always never often here there because when where why how very much many more every each""".split(),
    "de": """der die das ein eine und nicht mit von auf für im wir er sie auch wie heute morgen gut tag
        hallo welt danke bitte haus stadt land wasser essen sprache stimme musik frage antwort groß klein
        alt neu immer wieder zeit jahr leute hier dort warum weil sehr viel""".split(),
    "ru": """и в не на я что он с как а это она так его но да ты мы вы они привет мир спасибо сегодня
        завтра утро день ночь погода дом город страна вода еда язык голос музыка вопрос ответ большой
        маленький новый""".split(),
}


@dataclass(frozen=True)
class Profile:
    """Payload sizes for one kind of deployment."""

    sentences: tuple[int, ...]  # sentences per text, drawn at random: short, medium and long texts
    translation_batch: tuple[int, ...]  # texts per translation request
    audio_seconds: tuple[float, float]  # uniform range of uploaded audio length
    tts_sentences: tuple[int, ...]
    vit_image_sizes: tuple[tuple[int, int], ...]  # source images of varied size (the model resizes)
    imagegen_sizes: tuple[str, ...]
    imagegen_steps: tuple[int, ...]
    # Random-weight models never emit end-of-sequence: cap generated tokens so requests stay short.
    max_new_tokens: int | None = None
    pool_size: int = 8


PROFILES = {
    # The tiny random-weight models of `make models`: small inputs, so a 2-core CI machine keeps up.
    "tiny": Profile(
        sentences=(1, 1, 2, 3),
        translation_batch=(1, 1, 2),
        audio_seconds=(0.5, 2.0),
        tts_sentences=(1, 1, 2),
        vit_image_sizes=((32, 32), (64, 48), (96, 96)),
        imagegen_sizes=("64x64",),
        imagegen_steps=(2, 3),
        max_new_tokens=16,
    ),
    # Real checkpoints on a GPU deployment: realistic request sizes.
    "standard": Profile(
        sentences=(1, 2, 4, 8),
        translation_batch=(1, 1, 4, 8),
        audio_seconds=(2.0, 25.0),
        tts_sentences=(1, 2, 4),
        vit_image_sizes=((224, 224), (640, 480), (1024, 768)),
        imagegen_sizes=("512x512",),
        imagegen_steps=(20, 30),
    ),
}


def sentence(rng: random.Random, lang: str = "en") -> str:
    words = rng.choices(WORDS[lang], k=rng.randint(4, 14))
    return " ".join(words).capitalize() + rng.choice(".?!")


def text(rng: random.Random, sentences: int, lang: str = "en") -> str:
    return " ".join(sentence(rng, lang) for _ in range(sentences))


def speech_like_audio(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced-speech-like signal: a gliding pitch with harmonics, syllable-rate envelope, some noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t)) ** 2
    signal = voiced * syllables + 0.02 * rng.standard_normal(t.size)
    return (0.3 * signal / max(1e-6, np.abs(signal).max())).astype(np.float32)


def audio_file(seconds: float, rng: np.random.Generator) -> tuple[bytes, str]:
    """(file bytes, file name): WAV, FLAC or OGG at 8-48 kHz, mono or stereo, so decoding varies too."""
    sample_rate = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
    container = str(rng.choice(["WAV", "FLAC", "OGG"]))
    samples = speech_like_audio(seconds, sample_rate, rng)
    if rng.random() < 0.3:
        samples = np.stack([samples, samples * 0.8], axis=1)
    buffer = io.BytesIO()
    sf.write(
        buffer, samples, sample_rate, format=container, subtype={"OGG": "VORBIS"}.get(container, "PCM_16")
    )
    return buffer.getvalue(), f"speech.{container.lower()}"


def image_file(width: int, height: int, rng: random.Random, fmt: str = "PNG") -> bytes:
    """A gradient with random shapes: real structure for the decoders and the model, not noise."""
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones(
        (height, 1, 3), np.float32
    )
    tint = np.array([rng.random(), rng.random(), rng.random()], np.float32)
    image = Image.fromarray((gradient * tint).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = min(width, x0 + rng.randint(4, width)), min(height, y0 + rng.randint(4, height))
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


class Payloads:
    """Pools of ready-made payloads for one profile; `pick` methods draw from them at random."""

    def __init__(self, profile: Profile, seed: int = 0):
        self.profile = profile
        self.rng = random.Random(seed)

    @functools.cached_property
    def _audio(self) -> list[tuple[bytes, str]]:
        generator = np.random.default_rng(self.rng.randrange(2**32))
        low, high = self.profile.audio_seconds
        return [
            audio_file(float(generator.uniform(low, high)), generator) for _ in range(self.profile.pool_size)
        ]

    @functools.cached_property
    def _images(self) -> list[tuple[bytes, str]]:
        pool = []
        for i in range(self.profile.pool_size):
            width, height = self.rng.choice(self.profile.vit_image_sizes)
            fmt = ("PNG", "JPEG")[i % 2]
            pool.append((image_file(width, height, self.rng, fmt), fmt.lower()))
        return pool

    def text(self, lang: str = "en") -> str:
        return text(self.rng, self.rng.choice(self.profile.sentences), lang)

    def texts(self, lang: str = "en") -> list[str]:
        return [self.text(lang) for _ in range(self.rng.choice(self.profile.translation_batch))]

    def speech_text(self) -> str:
        return text(self.rng, self.rng.choice(self.profile.tts_sentences))

    def audio(self) -> tuple[bytes, str]:
        return self.rng.choice(self._audio)

    def image(self) -> tuple[bytes, str]:
        """(encoded image, "png" | "jpeg")."""
        return self.rng.choice(self._images)

    def prompt(self) -> str:
        return sentence(self.rng)

    def imagegen_options(self) -> dict:
        return {
            "size": self.rng.choice(self.profile.imagegen_sizes),
            "steps": self.rng.choice(self.profile.imagegen_steps),
            "seed": self.rng.randrange(2**31),
        }
