"""Demo: translate a few sentences over REST and gRPC, list the language pairs."""

import json
from pathlib import Path

import grpc
import httpx

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc

SENTENCES = {"en-de": ["Machine learning is great.", "Where is the train station?"],
             "de-en": ["Maschinelles Lernen ist großartig."]}


def run(rest_url: str, grpc_target: str, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    models = httpx.get(f"{rest_url}/v1/models", timeout=30).json()["data"]
    pairs = [f"{m['source_lang']}-{m['target_lang']}" for m in models if m["service"] == "translation"]
    lines = [f"pairs: {', '.join(pairs)}"]
    results = {}
    for pair, texts in SENTENCES.items():
        if pair not in pairs:
            continue
        source, target = pair.split("-")
        response = httpx.post(
            f"{rest_url}/v1/translate",
            json={"text": texts, "source_lang": source, "target_lang": target, "num_beams": 4,
                  "num_return_sequences": 2, "max_new_tokens": 24},
            timeout=120,
        )
        response.raise_for_status()
        results[pair] = response.json()
        lines.append(f"REST {pair}: {texts[0]!r} -> {results[pair]['translations'][0][:60]!r}")
    with grpc.insecure_channel(grpc_target) as channel:
        reply = pb_grpc.TranslationStub(channel).Translate(
            pb.TranslateRequest(text=["Good morning"], source_lang="en", target_lang="de", max_new_tokens=24),
            timeout=120,
        )
    results["grpc en-de"] = {"translations": list(reply.translations), "model": reply.model}
    lines.append(f"gRPC en-de: 'Good morning' -> {reply.translations[0][:60]!r}")
    (out_dir / "translations.json").write_text(json.dumps(results, ensure_ascii=False, indent=2))
    lines.append("(tiny random-weight models translate into gibberish; real checkpoints load the same way)")
    return lines
