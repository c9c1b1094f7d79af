"""Registry logins come from the user's Docker config, read by the engine adapter (Docker SDK)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cudabox.engine import registry_credentials
from cudabox.errors import AuthError


def write_config(folder: Path, config: object, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_logins_are_found_per_registry_with_docker_hubs_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path,
        {
            "auths": {
                "127.0.0.1:5000": {"auth": auth("alice", "pw:with:colons")},
                "https://index.docker.io/v1/": {"auth": auth("hub", "hubpw")},
                "ghcr.io": {"identitytoken": "refresh-abc"},
            }
        },
        monkeypatch,
    )
    assert registry_credentials("127.0.0.1:5000") == ("alice", "pw:with:colons")
    assert registry_credentials("docker.io") == ("hub", "hubpw")
    assert registry_credentials("ghcr.io") == ("<token>", "refresh-abc")
    assert registry_credentials("quay.io") is None


def test_no_config_means_no_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry_credentials("127.0.0.1:5000") is None


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"auths": {"r.io": {"auth": "!!!"}}}, "credentials for r.io"),
        ({"auths": {"r.io": "not an object"}}, "Invalid configuration"),
        ({"credsStore": "cudabox-test-absent-helper"}, "not installed"),
        ([1, 2], "list"),
    ],
)
def test_a_broken_docker_config_is_an_auth_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: object, said: str
) -> None:
    write_config(tmp_path, config, monkeypatch)
    with pytest.raises(AuthError) as caught:
        registry_credentials("r.io")
    assert caught.value.exit_code == 8
    assert said in caught.value.message and str(tmp_path / "config.json") in caught.value.message
    assert "docker login r.io" in (caught.value.fix or "")
