import io

import numpy as np
import pytest
import soundfile as sf

from services.kit.audio import (
    decode_audio,
    decode_pcm16,
    encode_audio,
    readable_formats,
    supported_output_formats,
)
from services.kit.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType


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
        encode_audio(np.zeros(10, dtype=np.float32), 16000, "aac")
    assert "wav" in caught.value.message and "aac" in caught.value.message


def test_raw_pcm_decodes_and_resamples():
    pcm = (tone(500, 1.0, 8000) * 32767).astype("<i2").tobytes()
    samples = decode_pcm16(pcm, 8000)
    assert samples.size == 16000
    assert abs(dominant_frequency(samples, 16000) - 500) < 2


def test_raw_pcm_refuses_half_samples_bad_rates_and_long_streams():
    with pytest.raises(InvalidArgument, match="16-bit"):
        decode_pcm16(b"\x00\x01\x02", 16000)
    with pytest.raises(InvalidArgument, match="sample rate"):
        decode_pcm16(b"\x00\x00", 10)
    with pytest.raises(InvalidArgument, match="empty"):
        decode_pcm16(b"", 16000)
    with pytest.raises(PayloadTooLarge, match="limit is 1 s"):
        decode_pcm16(bytes(4 * 16000), 16000, max_seconds=1)
