"""What the rest of the repository needs to know about each service, declared once in its own folder.

Each `services/<name>/registry.py` holds `SERVICE = ServiceEntry(...)`; the platform, the image list
(mk/k8s.mk), the tiny models, the GPU check, the demo and the load tests read `entries()` instead of
keeping their own lists, so a new service is its folder plus its proto (clients/ discovers its client
module the same way). Standard library only: make, Locust and the tools import it without torch.
`python -m services.registry [--torch]` prints the names (mk/k8s.mk reads it).
"""

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import services


@dataclass(frozen=True)
class ServiceEntry:
    name: str  # its package under services/; also its image, Kubernetes objects and metric label
    env_prefix: str  # its settings' environment prefix, e.g. "ASR_"
    title: str  # its spelling in class names: ASRRestUser, ViTGrpcUser
    torch: bool = True  # built from docker/torch.Dockerfile; False: an image of its own
    separate_process: bool = False  # serves on its own ports in a child process beside the platform
    load_weight: int = 1  # its share of users in the mixed load test
    tiny_models: tuple[str, ...] = ()  # the model directories under models/ that tools.tiny_models builds
    tiny_builder: str = ""  # module with build(out_dir) for them; default tools.tiny_models.<name>
    demo: str = ""  # module with run(rest_url, grpc_target, out_dir) for `make demo`; default tools.demo.<x>
    load_users: str = "loadtests.users"  # module defining its Locust users <title>RestUser, <title>GrpcUser

    @property
    def tiny_builder_module(self) -> str:
        return self.tiny_builder or f"tools.tiny_models.{self.name}"

    @property
    def demo_module(self) -> str:
        return self.demo or f"tools.demo.{self.name}"


def entries() -> dict[str, ServiceEntry]:
    """Every service package that declares itself, by name (sorted)."""
    found = {}
    for module in pkgutil.iter_modules(services.__path__):
        if module.ispkg and (Path(module.module_finder.path) / module.name / "registry.py").exists():
            entry = importlib.import_module(f"services.{module.name}.registry").SERVICE
            found[entry.name] = entry
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.registry", description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="only the services built on the torch image")
    args = parser.parse_args(argv)
    print(" ".join(e.name for e in entries().values() if e.torch or not args.torch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
