"""The SDK's requirements in pyproject.toml against what the generated stubs check at import:
an app's install gets grpcio and protobuf only from these bounds, so a bound below the stubs'
versions lets pip pick a release under which `import stepline` raises."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "worker_sdk" / "stepline" / "v1"


def _base_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    return {requirement.name: requirement for requirement in requirements}


def _lower_bound(requirement: Requirement) -> Version:
    bounds = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"{requirement}: expected one '>=' bound"
    return bounds[0]


def _stub_versions(pattern: str, suffix: str) -> set[Version]:
    found = {Version(match) for path in STUBS.glob(f"*{suffix}")
             for match in re.findall(pattern, path.read_text())}
    assert found, f"no version found by {pattern!r} in {STUBS}/*{suffix}"
    return found


def test_the_grpcio_bound_covers_the_generated_services() -> None:
    needed = max(_stub_versions(r"GRPC_GENERATED_VERSION = '([^']+)'", "_pb2_grpc.py"))
    assert _lower_bound(_base_requirements()["grpcio"]) >= needed


def test_the_protobuf_bound_covers_the_generated_messages() -> None:
    needed = max(_stub_versions(r"# Protobuf Python Version: (\S+)", "_pb2.py"))
    assert _lower_bound(_base_requirements()["protobuf"]) >= needed
