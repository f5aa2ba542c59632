"""Demo: speak a paragraph over REST (OpenAI SDK, whole and streamed) and gRPC, convert a voice."""

import io
import json
import time
from pathlib import Path

import grpc
import httpx
import openai
import soundfile as sf

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc

PARAGRAPH = (
    "Hello from the text to speech service. Long input is split into sentences. "
    "They are synthesized together and joined with short pauses."
)


def _seconds(audio: bytes) -> float:
    info = sf.info(io.BytesIO(audio))
    return info.frames / info.samplerate


def run(rest_url: str, grpc_target: str, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    voices = httpx.get(f"{rest_url}/v1/voices", timeout=30).json()["data"]
    names = [v["id"] for v in voices]
    lines = [f"voices: {', '.join(names)}"]
    client = openai.OpenAI(base_url=f"{rest_url}/v1", api_key="not-needed")

    speech = client.audio.speech.create(
        model="tts-1", voice=names[0], input=PARAGRAPH, extra_body={"seed": 1}
    )
    (out_dir / "speech.mp3").write_bytes(speech.content)
    lines.append(f"REST (OpenAI SDK) mp3, voice {names[0]}: {_seconds(speech.content):.2f} s -> speech.mp3")

    started, first = time.perf_counter(), None
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=names[-1], input=PARAGRAPH, response_format="wav", extra_body={"stream": True}
    ) as response:
        pieces = []
        for piece in response.iter_bytes():
            first = first or time.perf_counter() - started
            pieces.append(piece)
    streamed = b"".join(pieces)
    (out_dir / "speech-streamed.wav").write_bytes(streamed)
    lines.append(
        f"REST streamed wav, voice {names[-1]}: first audio after {first:.2f} s, all after "
        f"{time.perf_counter() - started:.2f} s ({_seconds(streamed):.2f} s of audio) -> speech-streamed.wav"
    )

    with grpc.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.TextToSpeechStub(channel)
        chunks = list(
            stub.SynthesizeStream(pb.SynthesizeRequest(input=PARAGRAPH, response_format="wav"), timeout=300)
        )
        (out_dir / "speech-grpc.wav").write_bytes(b"".join(c.audio for c in chunks))
        sentences = [
            {"index": c.sentence_index, "text": c.text, "seconds": round(c.duration_seconds, 3)}
            for c in chunks
        ]
        (out_dir / "speech-grpc-sentences.json").write_text(json.dumps(sentences, indent=2))
        lines.append(f"gRPC SynthesizeStream: {len(chunks)} sentence chunks -> speech-grpc.wav")

        source = (out_dir / "speech-grpc.wav").read_bytes()
        converted = stub.Convert(
            pb.ConvertRequest(audio=source, voice=names[1], response_format="wav"), timeout=300
        )
        (out_dir / "converted.wav").write_bytes(converted.audio)
        lines.append(f"gRPC Convert to voice {names[1]}: {converted.duration_seconds:.2f} s -> converted.wav")

    response = httpx.post(
        f"{rest_url}/v1/audio/conversions",
        files={"file": ("speech-streamed.wav", streamed)},
        data={"voice": names[0], "response_format": "flac"},
        timeout=300,
    )
    response.raise_for_status()
    (out_dir / "converted-rest.flac").write_bytes(response.content)
    lines.append(
        f"REST conversion to voice {names[0]}: {_seconds(response.content):.2f} s -> converted-rest.flac"
    )
    lines.append("(tiny random-weight models make noise, not words; real checkpoints load the same way)")
    return lines
