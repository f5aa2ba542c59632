"""TF Serving's model config (`--model_config_file`): a text-format ``ModelServerConfig`` read with the real
proto classes, checked the way ServerCore checks it, and turned into the models this server keeps loaded.

The same file serves here and in the tensorflow/serving image::

    model_config_list {
      config {
        name: "hf-vit"
        base_path: "/models/hf-vit"
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 2 } }
        version_labels { key: "stable" value: 1 }
      }
    }

Without a config file the single-model settings (``VIT_MODEL_BASE``/``VIT_MODEL_NAME``) make a one-entry config,
as ``--model_name``/``--model_base_path`` do. Error messages are TF Serving's (server_core.cc).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from services.kit.errors import InvalidArgument

TENSORFLOW_PLATFORM = "tensorflow"
# The only config kind ServerCore (and HandleReloadConfigRequest) can reload.
MODEL_CONFIG_LIST = "model_config_list"


@dataclass(frozen=True)
class VersionPolicy:
    """``model_version_policy``: which of the numeric version directories are loaded ("aspired")."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, config: model_server_config_pb2.ModelConfig) -> VersionPolicy:
        policy = config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return cls("all")
        if choice == "specific":
            return cls("specific", versions=frozenset(policy.specific.versions))
        # Unset is TF Serving's default, latest { num_versions: 1 }; 0 also means 1 there.
        return cls("latest", num_versions=max(policy.latest.num_versions, 1) if choice else 1)

    def aspired(self, on_disk: Iterable[int]) -> set[int]:
        versions = set(on_disk)
        if self.kind == "all":
            return versions
        if self.kind == "specific":
            return versions & self.versions
        return set(sorted(versions, reverse=True)[: self.num_versions])


@dataclass(frozen=True)
class ModelEntry:
    """One ``config { ... }`` of the list."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict, hash=False, compare=True)


def read_config_file(path: Path, max_bytes: int) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ModelServerConfig as tensorflow_model_server's ParseProtoTextFile does."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidArgument(
                f"Invalid protobuf file: '{path}': {size} bytes; at most {max_bytes} are read"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Invalid protobuf file: '{path}': {exc}") from None
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid protobuf file: '{path}': {exc}") from None


def single_model_config(name: str, base_path: Path) -> model_server_config_pb2.ModelServerConfig:
    """What ``--model_name``/``--model_base_path`` build: one model, default version policy."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(
        name=name, base_path=str(Path(base_path).absolute()), model_platform=TENSORFLOW_PLATFORM
    )
    return config


def _platform(config: model_server_config_pb2.ModelConfig) -> str:
    if config.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if config.model_platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform."
            )
        if config.model_type != model_server_config_pb2.TENSORFLOW:
            raise InvalidArgument(f"ModelServerConfig::model_type choice {config.model_type} not supported.")
        return TENSORFLOW_PLATFORM
    if not config.model_platform:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform."
        )
    return config.model_platform


def model_entries(config: model_server_config_pb2.ModelServerConfig, max_models: int) -> list[ModelEntry]:
    """The models a config lists, refused (InvalidArgument) where ServerCore refuses it.

    An empty config is valid and serves nothing, as in TF Serving ("Taking no action for empty config").
    """
    kind = config.WhichOneof("config")
    if kind is None:
        return []
    if kind != MODEL_CONFIG_LIST:
        # tensorflow_model_server has no custom_model_config loader either.
        raise InvalidArgument("Missing custom_model_config_loader in ServerCore Options")
    configs = config.model_config_list.config
    if len(configs) > max_models:
        raise InvalidArgument(
            f"the config lists {len(configs)} models; this server loads at most {max_models} (VIT_MAX_MODELS)"
        )
    entries, names = [], set()
    for model in configs:
        if model.name in names:
            raise InvalidArgument(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
        # Every base path must be absolute: relative ones would depend on the server's working directory.
        if "://" in model.base_path:
            raise InvalidArgument(
                f"Model {model.name}: base_path {model.base_path} is a URI; this server reads local directories only"
            )
        if not PurePosixPath(model.base_path).is_absolute():
            raise InvalidArgument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )
    for model in configs:
        platform = _platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise InvalidArgument(f"Model {model.name} requests unsupported platform {platform}")
        entries.append(
            ModelEntry(
                name=model.name,
                base_path=Path(model.base_path),
                policy=VersionPolicy.from_proto(model),
                labels=dict(model.version_labels),
            )
        )
    return entries


def version_dirs(base_path: Path) -> dict[int, Path]:
    """The version directories TF Serving would load from a base path: numeric names holding a saved_model.pb."""
    if not base_path.is_dir():
        return {}
    return {
        int(path.name): path
        for path in base_path.iterdir()
        if path.name.isdigit() and (path / "saved_model.pb").is_file()
    }


def directory_of(entries: list[ModelEntry]) -> Path:
    """The deepest directory holding every model's base path (the default root of reloaded configs)."""
    return Path(os.path.commonpath([str(entry.base_path.parent) for entry in entries]))


def check_reload(entries: list[ModelEntry], root: Path | None) -> None:
    """What a new config (HandleReloadConfigRequest, or a polled config file) must hold before anything is
    swapped, so that a reload never unloads what is served for nothing: at least one model, every base path
    under `root` (symlinks resolved; None for the operator's own config file) with a version its policy would
    load. (TF Serving takes an empty config, and any path.)"""
    if not entries:
        raise InvalidArgument(
            "the config lists no model; a reload must keep at least one (it would unload every model)"
        )
    root = root.resolve() if root is not None else None
    for entry in entries:
        base_path = entry.base_path.resolve()
        if root is not None and not base_path.is_relative_to(root):
            raise InvalidArgument(
                f"Model {entry.name}: base_path {entry.base_path} is outside {root}, the directory reloaded "
                "models must lie under (VIT_MODEL_ROOT)"
            )
        if not entry.policy.aspired(version_dirs(base_path)):
            raise InvalidArgument(
                f"Model {entry.name}: no version under {entry.base_path} that its version policy would load "
                "(numeric directories with a saved_model.pb)"
            )
