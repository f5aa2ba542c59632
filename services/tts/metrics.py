"""Speech metrics on top of the kit's request metrics: how fast audio is made and how soon it starts."""

from prometheus_client import Counter, Histogram

from services.kit.metrics import LATENCY_BUCKETS

REAL_TIME_FACTOR = Histogram(
    "tts_real_time_factor",
    "Seconds spent synthesizing (or converting) per second of audio produced, per request; below 1 is faster "
    "than real time",
    ["task"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
TIME_TO_FIRST_AUDIO = Histogram(
    "tts_time_to_first_audio_seconds",
    "From request arrival until its first audio bytes are ready to send",
    ["protocol", "mode"],
    buckets=LATENCY_BUCKETS,
)
AUDIO_SECONDS = Counter("tts_audio_seconds_total", "Seconds of audio produced", ["task"])
ROWS_PER_CALL = Histogram(
    "tts_rows_per_generate_call",
    "Sentences (or conversions) synthesized together in one SpeechT5 generate call",
    ["task"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
