import io

import numpy as np
import pytest
import soundfile as sf

from services.kit import audio as audio_module
from services.kit.audio import (
    decode_audio,
    decode_pcm16,
    encode_audio,
    readable_formats,
    supported_output_formats,
)
from services.kit.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from tests.audio_files import flac_claiming, wav_header


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def file_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "fmt,subtype",
    [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("OGG", "OPUS")],
)
def test_decodes_common_formats_to_16k_mono(fmt, subtype):
    rate = 48000 if subtype == "OPUS" else 44100
    samples = decode_audio(file_bytes(tone(440, 1.0, rate), rate, fmt, subtype))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - 16000) <= 16
    assert abs(dominant_frequency(samples, 16000) - 440) < 5
    assert np.abs(samples).max() <= 1.0


def test_decodes_mp3_where_libsndfile_reads_it():
    if "MP3" not in readable_formats():
        pytest.skip("this libsndfile has no MP3")
    samples = decode_audio(file_bytes(tone(440, 1.0, 22050), 22050, "MP3"))
    assert abs(samples.size - 16000) <= 400
    assert abs(dominant_frequency(samples, 16000) - 440) < 5


def test_stereo_is_folded_to_mono_by_averaging():
    left = tone(300, 0.5, 16000, 0.4)
    stereo = np.stack([left, -left], axis=1)  # averaging cancels the two channels exactly
    assert np.abs(decode_audio(file_bytes(stereo, 16000, "WAV", "FLOAT"))).max() < 1e-6
    same = np.stack([left, left], axis=1)
    np.testing.assert_allclose(decode_audio(file_bytes(same, 16000, "WAV", "FLOAT")), left, atol=1e-6)


def test_downsampling_filters_out_frequencies_above_the_new_nyquist():
    # A 7 kHz tone sampled at 48 kHz cannot exist at 8 kHz: naive decimation would alias it to 1 kHz.
    samples = decode_audio(file_bytes(tone(7000, 1.0, 48000), 48000, "WAV", "FLOAT"), sample_rate=8000)
    assert samples.size == 8000
    assert np.sqrt(np.mean(samples[500:-500] ** 2)) < 0.01


def test_resampling_keeps_frequency_amplitude_and_phase_across_blocks():
    # 30 s of stereo at 44.1 kHz spans several decode blocks: the block-wise resampler must join them seamlessly.
    rate, seconds = 44100, 30.0
    left = tone(440, seconds, rate)
    samples = decode_audio(file_bytes(np.stack([left, left], axis=1), rate, "WAV", "FLOAT"))
    assert samples.size == 16000 * seconds
    ideal = tone(440, seconds, 16000)
    inner = slice(1000, -1000)  # the filter's edges
    assert np.abs(samples[inner] - ideal[inner]).max() < 1e-3
    assert np.sqrt(np.mean(samples[inner] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert abs(dominant_frequency(samples, 16000) - 440) < 0.1


def test_upsampling_keeps_the_tone():
    samples = decode_audio(file_bytes(tone(1000, 1.0, 8000), 8000, "WAV"), sample_rate=24000)
    assert samples.size == 24000
    assert abs(dominant_frequency(samples, 24000) - 1000) < 2


def test_float_audio_beyond_full_scale_is_clipped():
    loud = np.full(1600, 3.0, dtype=np.float32)
    assert decode_audio(file_bytes(loud, 16000, "WAV", "FLOAT")).max() == pytest.approx(1.0)


def test_empty_body_is_invalid():
    with pytest.raises(InvalidArgument, match="empty"):
        decode_audio(b"", filename="clip.wav")


def test_garbage_is_unsupported_and_names_readable_formats():
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_audio(b"this is not audio at all" * 20, filename="notes.txt")
    assert "WAV" in caught.value.message and "FLAC" in caught.value.message
    assert "notes.txt" in caught.value.message and "BytesIO" not in caught.value.message


def test_truncated_file_is_unsupported():
    data = file_bytes(tone(440, 1.0, 16000), 16000, "FLAC")
    with pytest.raises(UnsupportedMediaType):
        decode_audio(data[:20])


def test_zero_length_audio_is_invalid():
    with pytest.raises(InvalidArgument, match="no samples"):
        decode_audio(file_bytes(np.zeros((0, 1), dtype=np.float32), 16000, "WAV"))


def test_nan_samples_are_invalid():
    samples = tone(440, 0.1, 16000)
    samples[10] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        decode_audio(file_bytes(samples, 16000, "WAV", "FLOAT"))


def test_over_long_audio_names_limit_and_duration():
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(file_bytes(tone(440, 3.0, 8000), 8000, "WAV"), max_seconds=2)
    assert "3.0 s" in caught.value.message and "2 s" in caught.value.message


@pytest.mark.parametrize("rate", [1, 7999, 192001, 655347, 5000011])
def test_header_rate_outside_the_range_is_refused_before_reading(rate, monkeypatch):
    monkeypatch.setattr(sf.SoundFile, "read", lambda *args, **kwargs: pytest.fail("samples were read"))
    with pytest.raises(InvalidArgument) as caught:
        decode_audio(wav_header(rate), filename="odd.wav")
    assert f"{rate} Hz" in caught.value.message and "8000-192000 Hz" in caught.value.message


def test_rate_range_and_channel_limit_come_from_the_caller():
    data = wav_header(44100, channels=2)
    assert decode_audio(data, min_rate=44100, max_rate=44100, max_channels=2).size > 0
    with pytest.raises(InvalidArgument, match="44100 Hz; accepted rates are 8000-22050 Hz"):
        decode_audio(data, max_rate=22050)
    with pytest.raises(InvalidArgument, match="2 channels; at most 1"):
        decode_audio(data, max_channels=1)


def test_a_thousand_channels_are_refused_before_reading(monkeypatch):
    monkeypatch.setattr(sf.SoundFile, "read", lambda *args, **kwargs: pytest.fail("samples were read"))
    with pytest.raises(InvalidArgument, match="1000 channels; at most 8"):
        decode_audio(wav_header(16000, channels=1000))


def test_header_claiming_billions_of_frames_is_refused_before_reading(monkeypatch):
    data = flac_claiming(file_bytes(tone(440, 0.5, 16000), 16000, "FLAC"), (1 << 36) - 1)
    monkeypatch.setattr(sf.SoundFile, "read", lambda *args, **kwargs: pytest.fail("samples were read"))
    with pytest.raises(PayloadTooLarge, match="4294967.3 s long; the limit is 60 s"):
        decode_audio(data, max_seconds=60)


def test_flac_of_unknown_length_stops_at_the_duration_budget(monkeypatch):
    # 200 s of silence compresses to a few KB and its header does not say how long it is.
    silence = file_bytes(np.zeros(200 * 8000, dtype=np.int16), 8000, "FLAC")
    data = flac_claiming(silence, 0)
    assert len(data) < 10_000
    blocks = []
    read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: blocks.append(1) or read(*a, **k))
    with pytest.raises(PayloadTooLarge, match="more than 1.*the limit is 1 s"):
        decode_audio(data, max_seconds=1, filename="bomb.flac")
    assert len(blocks) == 1  # stopped at the first block past the budget, not at the end of the file


def test_absolute_sample_cap_applies_without_a_duration_limit(monkeypatch):
    monkeypatch.setattr(audio_module, "MAX_DECODED_SAMPLES", 20000)
    with pytest.raises(PayloadTooLarge, match="32000 samples .*the limit is 20000"):
        decode_audio(file_bytes(np.zeros((16000, 2), dtype=np.float32), 16000, "WAV"))


def test_running_out_of_memory_while_decoding_is_payload_too_large(monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(audio_module, "_read_mono", exhausted)
    with pytest.raises(PayloadTooLarge, match="too large to decode"):
        decode_audio(file_bytes(tone(440, 0.1, 16000), 16000, "WAV"))


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_encode_round_trips_through_decode(fmt):
    if fmt not in supported_output_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    data, media_type = encode_audio(tone(440, 1.0, 22050), 22050, fmt)
    assert media_type.startswith("audio/")
    samples = decode_audio(data, sample_rate=22050)
    assert abs(samples.size - 22050) <= 1200  # lossy codecs pad a frame
    assert abs(dominant_frequency(samples, 22050) - 440) < 5


def test_encode_pcm_is_raw_little_endian_int16():
    data, media_type = encode_audio(np.array([0.0, 0.5, -1.0], dtype=np.float32), 16000, "pcm")
    assert media_type == "audio/pcm"
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 16384, -32768]


def test_encode_unknown_format_names_supported_ones():
    with pytest.raises(InvalidArgument) as caught:
        encode_audio(np.zeros(10, dtype=np.float32), 16000, "wma")
    assert "wav" in caught.value.message and "wma" in caught.value.message


def test_raw_pcm_decodes_and_resamples():
    pcm = (tone(500, 1.0, 8000) * 32767).astype("<i2").tobytes()
    samples = decode_pcm16(pcm, 8000)
    assert samples.size == 16000
    assert abs(dominant_frequency(samples, 16000) - 500) < 2


def test_raw_pcm_refuses_half_samples_bad_rates_and_long_streams():
    with pytest.raises(InvalidArgument, match="16-bit"):
        decode_pcm16(b"\x00\x01\x02", 16000)
    with pytest.raises(InvalidArgument, match="10 Hz; accepted rates are 8000-192000 Hz"):
        decode_pcm16(b"\x00\x00", 10)
    with pytest.raises(InvalidArgument, match="16000 Hz; accepted rates are 22050-48000 Hz"):
        decode_pcm16(b"\x00\x00", 16000, min_rate=22050, max_rate=48000)
    with pytest.raises(InvalidArgument, match="empty"):
        decode_pcm16(b"", 16000)
    with pytest.raises(PayloadTooLarge, match="limit is 1 s"):
        decode_pcm16(bytes(4 * 16000), 16000, max_seconds=1)
