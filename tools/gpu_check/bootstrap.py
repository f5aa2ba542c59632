"""`make gpu-check` on a GPU machine that has torch but not the project's other packages, and no internet.

Runs with the machine's own python (standard library only). When the packages pinned in requirements.txt are
installed at those versions it starts the check at once; otherwise it makes a virtual environment that sees
the machine's torch, installs the pinned wheels into it offline from the folder `make gpu-wheels` filled
(`pip install --no-index --no-deps`), and starts the check there. A second run reuses the environment.

    python3 -m tools.gpu_check.bootstrap --wheels .cache/gpu-wheels --venv .cache/gpu-venv -- --device cuda
"""

import argparse
import importlib.util
import os
import re
import site
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{name: version} of the `name==version` lines."""
    found = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"\s*([A-Za-z0-9._-]+)==([^\s#;]+)\s*(#.*)?", line):
            found[match[1]] = match[2]
    return found


def missing(required: dict[str, str]) -> list[str]:
    """`name==version` of each pin this interpreter does not have at that version."""
    wrong = []
    for name, version in required.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f"{name}=={version}")
    return wrong


def site_packages(venv: Path) -> Path:
    # The "venv" scheme names the venv's own layout even where the default scheme is a distribution's own.
    return Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(venv), "platbase": str(venv)}))


def create_venv(venv: Path) -> None:
    """A venv that sees this interpreter's packages (torch): `--system-site-packages` gives the base
    interpreter's; when this one is itself a venv, a .pth file adds its site-packages too (after the new
    venv's own, so that the pinned versions win)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    if sys.prefix != sys.base_prefix:
        parents = [path for path in site.getsitepackages() if Path(path).is_dir()]
        (site_packages(venv) / "gpu-check-parent.pth").write_text("\n".join(parents) + "\n")


def install(venv: Path, wheels: Path) -> None:
    if not any(wheels.glob("*.whl")):
        raise SystemExit(
            f"bootstrap: no wheels in {wheels}: run `make gpu-wheels` on a machine with internet access and "
            "bring that folder along (it is git-ignored)"
        )
    # This interpreter's pip installs into the venv's site-packages: the venv itself needs no pip.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
         "--disable-pip-version-check", "--find-links", str(wheels), "--target", str(site_packages(venv)),
         "-r", str(REQUIREMENTS)],
        check=True,
    )


def run_check(python: Path, check_args: list[str]) -> NoReturn:
    os.chdir(REPO)
    os.execv(python, [str(python), "-m", "tools.gpu_check", *check_args])


def missing_in(python: Path) -> list[str]:
    return subprocess.run([str(python), "-m", "tools.gpu_check.bootstrap", "--missing"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=REPO / ".cache" / "gpu-wheels")
    parser.add_argument("--venv", type=Path, default=REPO / ".cache" / "gpu-venv")
    parser.add_argument("--missing", action="store_true", help="print the pins this interpreter lacks, then exit")
    parser.add_argument("check_args", nargs="*", help="arguments for `python -m tools.gpu_check` (after --)")
    args = parser.parse_args(argv)
    if args.missing:
        print("\n".join(missing(pins())))
        return 0
    if importlib.util.find_spec("torch") is None:
        raise SystemExit(f"bootstrap: {sys.executable} has no torch: point GPU_PYTHON at the python that has it "
                         "(make gpu-check GPU_PYTHON=/path/to/python3)")
    if not (lacking := missing(pins())):
        run_check(Path(sys.executable), args.check_args)
    venv = args.venv.resolve()
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"bootstrap: {len(lacking)} pinned packages missing here (e.g. {lacking[0]}): creating {venv}", flush=True)
        create_venv(venv)
    if still := missing_in(python):
        print(f"bootstrap: installing {len(still)} packages offline from {args.wheels}", flush=True)
        install(venv, args.wheels.resolve())
        if left := missing_in(python):
            raise SystemExit(f"bootstrap: still missing after the install: {', '.join(left)}")
    run_check(python, args.check_args)


if __name__ == "__main__":
    sys.exit(main())
