"""Speech recognition metrics on top of the kit's request metrics: which decoding path served, how much the
main model worked, how well the assistant's drafts fared, and how fast audio is transcribed."""

from prometheus_client import Counter, Gauge

REQUESTS = Counter("asr_requests_total", "Transcriptions served, by decoding path", ["path"])
MAIN_FORWARD_PASSES = Counter(
    "asr_main_forward_passes_total", "Forward passes of the main model's decoder, by decoding path", ["path"]
)
DRAFTED = Counter("asr_draft_tokens_total", "Tokens the assistant drafted")
ACCEPTED = Counter("asr_draft_tokens_accepted_total", "Drafted tokens the main model accepted")
ACCEPTANCE = Gauge("asr_draft_acceptance_rate", "Accepted / drafted tokens since start-up")
DECODED_TOKENS = Counter("asr_decoded_tokens_total", "Transcript tokens produced, by decoding path", ["path"])
COMPUTE_SECONDS = Counter(
    "asr_compute_seconds_total", "Seconds spent in the model, by decoding path", ["path"]
)
AUDIO_SECONDS = Counter("asr_audio_seconds_total", "Seconds of audio transcribed, by decoding path", ["path"])
TOKENS_PER_SECOND = Gauge(
    "asr_decoded_tokens_per_second", "Tokens per compute second in the last batch", ["path"]
)
REALTIME_FACTOR = Gauge(
    "asr_audio_seconds_per_compute_second", "Audio seconds per compute second in the last batch", ["path"]
)


def _total(counter: Counter) -> float:
    return next(s.value for s in counter.collect()[0].samples if s.name.endswith("_total"))


def _acceptance_rate() -> float:
    # Read off the two counters at scrape time, so the served drafts are tallied in one place only.
    drafted = _total(DRAFTED)
    return _total(ACCEPTED) / drafted if drafted else 0.0


ACCEPTANCE.set_function(_acceptance_rate)


def record_transcriptions(
    path: str, *, requests: int, main_passes: int, tokens: int, audio_seconds: float, elapsed: float
) -> None:
    REQUESTS.labels(path).inc(requests)
    MAIN_FORWARD_PASSES.labels(path).inc(main_passes)
    DECODED_TOKENS.labels(path).inc(tokens)
    COMPUTE_SECONDS.labels(path).inc(elapsed)
    AUDIO_SECONDS.labels(path).inc(audio_seconds)
    TOKENS_PER_SECOND.labels(path).set(tokens / elapsed)
    REALTIME_FACTOR.labels(path).set(audio_seconds / elapsed)


def record_drafts(drafted: int, accepted: int) -> None:
    DRAFTED.inc(drafted)
    ACCEPTED.inc(accepted)
