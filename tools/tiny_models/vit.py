"""Tiny ViT image classifier in google/vit-base-patch16-224's layout, with readable labels."""

from pathlib import Path

from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from . import LAYOUT
from .common import seed_everything

MODELS = LAYOUT["vit"]
IMAGE_SIZE = 224  # the real checkpoint's input size, so clients and the TF export resize the same way
LABELS = (
    "tabby cat",
    "golden retriever",
    "goldfish",
    "tree frog",
    "sports car",
    "pizza",
    "banana",
    "acoustic guitar",
    "mountain bike",
    "volcano",
)


def build(out_dir: Path) -> list[Path]:
    model_dir = out_dir / MODELS[0]
    seed_everything(400)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    ViTForImageClassification(config).save_pretrained(model_dir, safe_serialization=True)
    ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(model_dir)
    return [model_dir]
