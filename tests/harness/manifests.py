"""The Kubernetes manifests of deploy/kubernetes, rendered as ``kubectl apply -k deploy/kubernetes`` sends them.

The real kustomize renders them where one is installed (``kustomize build``, or the copy inside ``kubectl``).
Where none is, ``emulate`` does the same in Python for the only fields the kustomization uses, ``resources``
and ``images``, and refuses any other field, so it cannot silently drift from what kustomize would do; where
both exist, a test checks that they agree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parents[2]
KUSTOMIZATION_DIR: Final = REPO / "deploy" / "kubernetes"
EMULATED_FIELDS: Final = frozenset({"apiVersion", "kind", "resources", "images"})
APP_NAME: Final = "prediction-server"  # the Deployment, its container, Service, HPA, PDB and ConfigMap
# The image reference kustomize's image transformer parses: name[:tag][@digest].
IMAGE_REFERENCE: Final = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>.+))?$")

Document = dict[str, Any]


def load_documents(path: Path) -> list[Document]:
    """The YAML documents of ``path`` (empty ones dropped)."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def kustomization(directory: Path = KUSTOMIZATION_DIR) -> Document:
    documents = load_documents(directory / "kustomization.yaml")
    assert len(documents) == 1
    return documents[0]


def named(items: list[Document], name: str) -> Document:
    """The one item of ``items`` called ``name`` (a container, an env entry, a volume, a mount)."""
    matching: list[Document] = [item for item in items if item["name"] == name]
    assert len(matching) == 1, f"{len(matching)} items named {name}"
    return matching[0]


def pod_specs(document: Document) -> list[Document]:
    """The pod specs ``document`` holds (a workload's template)."""
    template = document.get("spec", {}).get("template", {})
    return [template["spec"]] if document.get("kind") in {"Deployment", "StatefulSet", "DaemonSet"} else []


def set_image(image: str, rules: list[Document]) -> str:
    """``image`` after kustomize's ``images:`` rules: the first rule naming it sets its name, tag or digest."""
    match = IMAGE_REFERENCE.match(image)
    assert match, image
    name, tag, digest = match["name"], match["tag"], match["digest"]
    for rule in rules:
        if rule["name"] != name:
            continue
        name = rule.get("newName", name)
        if "digest" in rule:
            tag, digest = None, rule["digest"]
        elif "newTag" in rule:
            tag, digest = rule["newTag"], None
        break
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def emulate(directory: Path = KUSTOMIZATION_DIR) -> list[Document]:
    """``kustomize build directory`` for a kustomization of plain resource files and ``images:`` rules only."""
    spec = kustomization(directory)
    if unsupported := set(spec) - EMULATED_FIELDS:
        raise ValueError(f"the emulation does not do {sorted(unsupported)}: render with a real kustomize")
    documents = [document for name in spec["resources"] for document in load_documents(directory / name)]
    for document in documents:
        for pod in pod_specs(document):
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                container["image"] = set_image(container["image"], spec.get("images", []))
    return documents


def kustomize_command() -> list[str] | None:
    """A real kustomize on this machine: the standalone binary, or the one built into kubectl."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize(directory: Path = KUSTOMIZATION_DIR) -> list[Document]:
    command = kustomize_command()
    assert command is not None
    output = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=True, timeout=120)
    return [document for document in yaml.safe_load_all(output.stdout) if document is not None]


def render(directory: Path = KUSTOMIZATION_DIR) -> tuple[list[Document], str]:
    """The rendered objects and how they were rendered (the real kustomize where one exists)."""
    if command := kustomize_command():
        return kustomize(directory), " ".join(command)
    return emulate(directory), "emulated"


@dataclass(frozen=True)
class Manifests:
    """The rendered objects, with the ones the checks read."""

    documents: list[Document]

    def all(self, kind: str) -> list[Document]:
        return [document for document in self.documents if document["kind"] == kind]

    def one(self, kind: str) -> Document:
        (found,) = self.all(kind)
        return found

    @property
    def deployment(self) -> Document:
        return self.one("Deployment")

    @property
    def pod(self) -> Document:
        spec: Document = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Document:
        return named(self.pod["containers"], APP_NAME)

    def config_maps(self) -> list[Document]:
        """The ConfigMaps the container reads its environment from (``envFrom``), in order."""
        names = [source["configMapRef"]["name"] for source in self.container.get("envFrom", [])]
        by_name = {document["metadata"]["name"]: document for document in self.all("ConfigMap")}
        return [by_name[name] for name in names if name in by_name]

    def environment(self) -> dict[str, str | None]:
        """The container's variables as the kubelet sets them: ConfigMap keys, then ``env`` (which wins);
        a value from a Secret or elsewhere is None."""
        variables: dict[str, str | None] = {}
        for config_map in self.config_maps():
            variables |= config_map.get("data", {})
        for variable in self.container.get("env", []):
            variables[variable["name"]] = variable.get("value")
        return variables

    def mounts(self) -> dict[str, Document]:
        """The container's volume mounts by path, each with its volume under ``volume``."""
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        return {
            mount["mountPath"]: {**mount, "volume": volumes.get(mount["name"], {})}
            for mount in self.container.get("volumeMounts", [])
        }
