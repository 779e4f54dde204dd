"""The registry view against a real ``mlflow server``: REST (as in the image) and the local client agree."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DVC_HASH,
    LocalRegistry,
    NotFoundError,
    RegistryError,
    RestRegistry,
    registry_for,
)
from tests.harness.services import free_port, trickling_server


@pytest.fixture(scope="module")
def registered(mlflow_uri: str) -> tuple[str, str]:
    """A fresh registered model with two versions; the second holds the ``champion`` alias."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    name = f"reg-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for n in (1, 2):
        tags = {TAG_DVC_HASH: f"{n:032x}.dir", TAG_CONTENT_HASH: f"content-{name}-{n}"}
        client.create_model_version(name, source=f"s3://mlflow/none/{n}", tags=tags)
    client.set_registered_model_alias(name, "champion", "2")
    return mlflow_uri, name


def test_rest_alias_version_and_tag_search(registered: tuple[str, str]) -> None:
    uri, name = registered
    registry = RestRegistry(uri)
    champion = registry.version_by_alias(name, "champion")
    assert champion.version == 2 and champion.aliases == ["champion"] and champion.dvc_hash == f"{2:032x}.dir"
    assert registry.version(name, 1).dvc_hash == f"{1:032x}.dir"
    [found] = registry.versions_tagged(TAG_CONTENT_HASH, f"content-{name}-2")
    assert found.version == 2 and found.aliases == ["champion"]
    assert registry.versions_tagged(TAG_CONTENT_HASH, "no-such-hash") == []


def test_rest_not_found(registered: tuple[str, str]) -> None:
    uri, name = registered
    registry = RestRegistry(uri)
    with pytest.raises(NotFoundError):
        registry.version_by_alias(name, "no-such-alias")
    with pytest.raises(NotFoundError):
        registry.version(name, 99)
    with pytest.raises(NotFoundError):
        registry.version_by_alias("no-such-model", "champion")


def test_rest_unreachable() -> None:
    registry = RestRegistry(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(RegistryError, match="unreachable"):
        registry.version_by_alias("m", "champion")


def test_local_store_matches_rest(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("local")
    client.create_model_version("local", source=str(tmp_path), tags={TAG_DVC_HASH: "ab" * 16 + ".dir"})
    client.set_registered_model_alias("local", "champion", "1")
    registry = registry_for(uri)
    assert isinstance(registry, LocalRegistry)
    assert registry.version_by_alias("local", "champion").dvc_hash == "ab" * 16 + ".dir"
    with pytest.raises(NotFoundError):
        registry.version_by_alias("local", "nope")


@pytest.mark.parametrize("in_headers", [True, False], ids=["trickled headers", "trickled body"])
def test_a_trickling_registry_cannot_outlast_the_timeout(in_headers: bool) -> None:
    with trickling_server(in_headers=in_headers) as uri:
        began = time.monotonic()
        with pytest.raises(RegistryError, match=r"did not answer within REGISTRY_TIMEOUT_S=1s"):
            RestRegistry(uri, timeout=1.0).version_by_alias("flight-price", "champion")
        assert time.monotonic() - began < 1.5
