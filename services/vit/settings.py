from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings


class ViTSettings(ServiceSettings):
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
        description="how often the model directories are rescanned for new or removed versions; 0 = never "
        "(TF Serving's --file_system_poll_wait_seconds)",
    )
    # TF Serving's --model_config_file: a text-format ModelServerConfig listing the models, their base paths,
    # version policies and labels. When set, model_base/model_name are not used (as --model_name and
    # --model_base_path are not); without it they make a one-model config with the default policy (latest).
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: float = Field(
        0,
        ge=0,
        description="how often the model config file is reread and applied; 0 = never "
        "(TF Serving's --model_config_file_poll_wait_seconds)",
    )
    allow_reload: bool = Field(
        False,
        description="serve ModelService/HandleReloadConfigRequest (with keys configured, to admin keys only: "
        "MODELSERVE_ADMIN_KEYS); off, it answers UNIMPLEMENTED. tensorflow_model_server has no such switch",
    )
    model_root: Path | None = Field(
        None,
        description="the directory every base path of a reloaded config must lie under (symlinks resolved); "
        "default: VIT_MODEL_BASE, or with VIT_MODEL_CONFIG_FILE the directory holding its models' base paths",
    )
    allow_version_labels_for_unavailable_models: bool = Field(
        False,
        description="let a config give a label to a version that is not loaded yet, as TF Serving's flag of "
        "that name: without it a config with labels cannot be the first one (nothing is loaded yet)",
    )
    max_models: int = Field(64, ge=1, description="models one config may list")
    # As the exporter's batching_parameters.txt: up to 16 requests per model call, 5 ms to fill a batch.
    max_batch_size: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    # A request's cost is its rows (images): every row becomes a full-size float image in the graph, however
    # small its encoded form, so rows are what a request and a merged batch are budgeted in.
    max_request_cost: float | None = Field(64, gt=0, description="rows (images) one Predict may carry")
    max_batch_cost: float | None = Field(64, gt=0, description="rows one merged model call may carry")
    # Base64 images: a 20 MB JPEG is ~27 MB of JSON.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_tensor_elements: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="elements across all input tensors of one Predict, read from the declared shapes before "
        "any tensor is built (a 224x224 pixel_values image is 150,528)",
    )
    max_string_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="bytes across all string values of one Predict, counting the copies TensorFlow makes "
        "when a tensor lists fewer values than its shape holds",
    )
    # The kit checks JSON-typed bodies against these two in its middleware; the predict route checks every
    # body again, whatever its content type (TF Serving parses any, and curl -d sends a form type).
    # Python's JSON parser recurses once per level and raises RecursionError past ~900 levels.
    max_json_depth: int = Field(
        64, ge=3, le=512, description="nesting depth of a REST body, checked before parsing"
    )
    max_json_elements: int = Field(
        1024 * 1024,
        ge=1,
        description="values (numbers, strings, lists, objects) a REST body may hold, counted before parsing "
        "(a 224x224 pixel_values image sent as JSON is 150,528 numbers)",
    )
    max_image_side: int = Field(
        8192, ge=1, description="images whose header claims a wider or taller picture are refused undecoded"
    )
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="images whose header claims more pixels are refused undecoded"
    )
    decode_threads: int = Field(
        2, ge=1, description="threads that parse JSON and convert tensors, off the event loop and the model thread"
    )
