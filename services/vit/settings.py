from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings


class VitSettings(ServiceSettings):
    """The TF Serving-compatible server: TF Serving's ports, model layout and batching defaults."""

    model_config = SettingsConfigDict(env_prefix="VIT_", extra="ignore", protected_namespaces=())

    rest_port: int = 8501
    grpc_port: int = 8500
    # TF Serving's --model_base_path is <model_base>/<model_name>; numeric subdirectories are versions.
    model_base: Path = Path("/models")
    model_name: str = "hf-vit"
    checkpoint: str | None = Field(
        None,
        description="HF ViT checkpoint exported as version 1 at start-up when the model has no version yet",
    )
    poll_interval_s: float = Field(
        5.0,
        ge=0,
        description="how often the model directory is rescanned for new or removed versions; 0 = never",
    )
    # As the exporter's batching_parameters.txt: up to 16 requests per model call, 5 ms to fill a batch.
    max_batch_size: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    # Base64 images: a 20 MB JPEG is ~27 MB of JSON.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
