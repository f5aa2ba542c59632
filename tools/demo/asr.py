"""Demo: transcribe and translate a clip with the official OpenAI SDK, compare the decoding paths, then gRPC
unary and streaming."""

import io
import json
from pathlib import Path

import grpc
import numpy as np
import openai
import soundfile as sf

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced-sounding clip (harmonics under a syllable-rate envelope): the demo has no recordings to ship."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / rate
    voice = sum(0.4 / k * np.sin(k * phase) for k in range(1, 6))
    return (0.6 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def run(rest_url: str, grpc_target: str, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = speech_like(6.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV")
    clip = buffer.getvalue()
    (out_dir / "input.wav").write_bytes(clip)

    client = openai.OpenAI(base_url=rest_url + "/v1", api_key="not-needed", timeout=300)
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("input.wav", clip), response_format="verbose_json"
    )
    (out_dir / "transcript.json").write_text(json.dumps(verbose.model_dump(), ensure_ascii=False, indent=2))
    srt = client.audio.transcriptions.create(
        model="whisper-1", file=("input.wav", clip), response_format="srt"
    )
    (out_dir / "transcript.srt").write_text(srt)
    translated = client.audio.translations.create(model="whisper-1", file=("input.wav", clip))
    paths = {
        decoding: client.audio.transcriptions.create(
            model="whisper-1", file=("input.wav", clip), extra_body={"decoding": decoding}
        )
        for decoding in ("assisted", "plain")
    }
    same = paths["assisted"].text == paths["plain"].text

    with grpc.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.SpeechRecognitionStub(channel)
        unary = stub.Transcribe(pb.TranscribeRequest(audio=clip, filename="input.wav"), timeout=300)
        pcm = (samples * 32767).astype("<i2").tobytes()
        messages = [pb.TranscribeStreamRequest(config=pb.StreamConfig(pcm_sample_rate=16000))]
        messages += [pb.TranscribeStreamRequest(audio=pcm[i : i + 3200]) for i in range(0, len(pcm), 3200)]
        streamed = stub.TranscribeStream(iter(messages), timeout=300)
    (out_dir / "grpc.json").write_text(
        json.dumps(
            {"unary": unary.text, "stream": streamed.text, "language": unary.language}, ensure_ascii=False
        )
    )
    return [
        f"REST verbose_json: {verbose.language}, {verbose.duration:.1f} s, {len(verbose.segments)} segments: "
        f"{verbose.text[:50]!r}",
        f"REST translation: {translated.text[:50]!r}",
        f"assisted vs plain decoding: {'identical text' if same else 'DIFFERENT text'}",
        f"gRPC Transcribe ({unary.decoding}) and TranscribeStream (100 ms PCM chunks): "
        f"{'same' if unary.text == streamed.text else 'different'} transcript",
        "(tiny random-weight Whisper transcribes into gibberish; real checkpoints load the same way)",
    ]
