"""Print pip constraints that pin every runtime dependency of jaxseg to its declared floor.

`make test-min` installs with them, so the floors in pyproject.toml are the versions the
tests run against: ``jax>=0.9.0`` becomes ``jax==0.9.0`` (and ``jaxlib==0.9.0``, which
jax pins to its own version). One source: edit the floor in pyproject.toml only.
"""

import re
import sys
import tomllib
from pathlib import Path


def floors(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for requirement in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
        if match is None:
            sys.exit(f"tools/floors.py: {requirement!r} has no single '>=' floor")
        name, version = match.groups()
        pins.append(f"{name}=={version}")
        if name == "jax":
            pins.append(f"jaxlib=={version}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml")))
