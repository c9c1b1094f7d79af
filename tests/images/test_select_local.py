"""`cudabox select --local`: images on the engine are judged from their labels, like catalog ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"


def test_a_retagged_image_is_judged_from_its_labels(catalog_image: Any, docker_engine: Any) -> None:
    source = catalog_image("torch-2.13-cpu")
    docker_engine.images.get(source).tag("cudabox-test/pulled-torch", "1")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cudabox",
                "select",
                "--framework",
                "torch",
                "--flavor",
                "cpu",
                "--host",
                str(HOSTS / "h100.json"),
                "--local",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        candidates = {c["name"]: c for c in json.loads(result.stdout)["candidates"]}
        local = candidates["torch-2.13-cpu@cudabox-test/pulled-torch:1"]
        assert local["fits"] and local["framework_version"] == "2.13.0"
        assert "torch-2.13-cpu" in candidates  # the catalog's own entry is still judged
    finally:
        docker_engine.images.remove("cudabox-test/pulled-torch:1")
