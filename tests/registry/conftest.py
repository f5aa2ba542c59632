"""The sixth service (tests/registry/sixth): its proto compiled, its folders added to the packages' paths.

A shipped service would sit in services/<name>/, clients/<name>.py and protos/<name>.proto; the sixth
lives here instead and joins those packages the way Python finds a package's modules (`__path__`),
so everything that discovers services finds it without being told its name.
"""

import subprocess
import sys
from pathlib import Path

import pytest

import clients
import protos
import services

SIXTH = Path(__file__).resolve().parent / "sixth"
REPO = Path(__file__).resolve().parents[2]


def compile_proto(out: Path) -> Path:
    """`make protos` for the sixth's proto: reverse_pb2.py and reverse_pb2_grpc.py under out/protos."""
    (out / "protos").mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{SIXTH}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(SIXTH / "protos" / "reverse.proto"),
        ],
        check=True,
    )
    return out / "protos"


@pytest.fixture(scope="module")
def sixth_paths(tmp_path_factory) -> dict[str, str]:
    """The sixth's folders by package; joined to services, clients and protos for this module's tests."""
    paths = {
        "services": str(SIXTH / "services"),
        "clients": str(SIXTH / "clients"),
        "protos": str(compile_proto(tmp_path_factory.mktemp("sixth-protos"))),
    }
    packages = {"services": services, "clients": clients, "protos": protos}
    for name, package in packages.items():
        package.__path__.append(paths[name])
    yield paths
    for name, package in packages.items():
        package.__path__.remove(paths[name])
    for module in [
        m for m in sys.modules if m.startswith(("services.reverse", "clients.reverse", "protos.reverse"))
    ]:
        del sys.modules[module]
