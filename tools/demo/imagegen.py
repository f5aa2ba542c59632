"""Demo: text-to-image, image-to-image and inpainting over REST (JSON and server-sent events) and gRPC."""

import base64
import io
import json
from pathlib import Path

import grpc
import httpx
from PIL import Image

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc

PROMPT = "a lighthouse on a cliff at sunset, oil painting"


def _save(out_dir: Path, name: str, b64_or_bytes: str | bytes) -> Image.Image:
    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    (out_dir / name).write_bytes(data)
    return Image.open(io.BytesIO(data))


def _events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line.startswith("data: ")]


def run(rest_url: str, grpc_target: str, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = next(
        m for m in httpx.get(f"{rest_url}/v1/models", timeout=30).json()["data"] if m["service"] == "imagegen"
    )
    lines = [
        f"model {model['id']}: {', '.join(model['tasks'])}; native size {model['default_size']}; "
        f"safety checker {'on' if model['safety_checker'] else 'off'}"
    ]
    summary = {"model": model}

    body = {
        "prompt": PROMPT,
        "n": 2,
        "seed": 42,
        "steps": 20,
        "scheduler": "dpm++_2m",
        "negative_prompt": "blurry",
    }
    generated = httpx.post(f"{rest_url}/v1/images/generations", json=body, timeout=600)
    generated.raise_for_status()
    result = generated.json()
    for i, item in enumerate(result["data"]):
        _save(out_dir, f"generation-{i}.png", item["b64_json"])
    summary["generation"] = {**body, "seeds": [d["seed"] for d in result["data"]], "size": result["size"]}
    lines.append(
        f"REST text-to-image: 2 images {result['size']} (seeds 42, 43, dpm++_2m, 20 steps) -> generation-*.png"
    )

    source = base64.b64decode(result["data"][0]["b64_json"])
    width, height = Image.open(io.BytesIO(source)).size
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, height // 2, width, height))  # transparent lower half: redraw it
    mask_png = io.BytesIO()
    mask.save(mask_png, "PNG")
    for name, files, fields in (
        ("img2img", {"image": ("source.png", source, "image/png")}, {"strength": "0.6"}),
        (
            "inpaint",
            {
                "image": ("source.png", source, "image/png"),
                "mask": ("mask.png", mask_png.getvalue(), "image/png"),
            },
            {},
        ),
    ):
        edit = httpx.post(
            f"{rest_url}/v1/images/edits",
            files=files,
            timeout=600,
            data={"prompt": "the same scene in winter, snow", "seed": "7", "steps": "20", **fields},
        )
        edit.raise_for_status()
        _save(out_dir, f"edit-{name}.png", edit.json()["data"][0]["b64_json"])
        lines.append(f"REST edit ({name}): -> edit-{name}.png")

    stream_body = {
        "prompt": PROMPT,
        "stream": True,
        "stream_progress": True,
        "steps": 12,
        "partial_images": 3,
        "seed": 5,
        "scheduler": "euler",
    }
    with httpx.stream("POST", f"{rest_url}/v1/images/generations", json=stream_body, timeout=600) as response:
        response.raise_for_status()
        events = _events(response)
    progress = [e for e in events if e["type"] == "image_generation.progress"]
    for event in events:
        if event["type"] == "image_generation.partial_image":
            _save(out_dir, f"stream-preview-{event['partial_image_index']}.png", event["b64_json"])
        elif event["type"] == "image_generation.completed":
            _save(out_dir, "stream-final.png", event["b64_json"])
    summary["stream"] = [{k: v for k, v in e.items() if k != "b64_json"} for e in events]
    lines.append(
        f"REST stream: {len(progress)} progress events (step i of {progress[-1]['total_steps']}), "
        f"{sum(e['type'].endswith('partial_image') for e in events)} previews, then the image"
    )

    with grpc.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.ImageGenerationStub(channel)
        reply = stub.Generate(
            pb.GenerateRequest(
                prompt=PROMPT,
                seed=42,
                steps=20,
                scheduler="dpm++_2m",
                negative_prompt="blurry",
                output_format="jpeg",
            ),
            timeout=600,
        )
        _save(out_dir, "grpc.jpg", reply.images[0].data)
        streamed = list(stub.GenerateStream(pb.GenerateRequest(prompt=PROMPT, steps=8, seed=1), timeout=600))
    lines.append(f"gRPC Generate: {reply.width}x{reply.height} {reply.task} (seed 42, as REST) -> grpc.jpg")
    lines.append(
        f"gRPC GenerateStream: {sum(e.HasField('progress') for e in streamed)} progress events, then the result"
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lines.append("(tiny random-weight model: the pictures are noise; a real checkpoint loads the same way)")
    return lines
