"""Replaying the Dagger module's lazy pipelines on a Docker engine, step by step, with Dagger's semantics.

The Python SDK builds every object lazily: a ``Container`` holds its query as a list of field selections
(``tests/harness/plan.py`` reads them). ``Replay`` walks the same selections and performs each one on dockerd:

- ``from``: a local image (nothing can be pulled here: the tests pass stand-ins, ``tests/harness/standins.py``);
  its configuration (env, workdir, user, entrypoint, cmd, ports, labels, healthcheck) is inherited.
- ``withExec``: ``docker run`` as the container's user, in its workdir, with its environment and its cache
  volumes mounted (Docker named volumes), then ``docker commit``; a non-zero exit fails with the output.
  As in Dagger, the entrypoint is not used and the stdout is kept for ``stdout()``.
- ``withDirectory``/``withFile``: a tar stream into the container (``docker cp``), keeping the source's
  ownership and modes unless ``owner`` is given; directories from the host are filtered as Dagger uploads
  them (``tests/harness/context.py``) and arrive owned by root.
- configuration steps (``withEnvVariable``, ``withWorkdir``, ``withUser``, ``withExposedPort``,
  ``withEntrypoint``, ``withLabel``, ``withDockerHealthcheck``) are tracked and written into the image when
  one is needed (a legacy ``docker build`` of a generated Dockerfile).
- services (``asService``, ``withServiceBinding``): containers on a user-defined network made for each
  client, with the binding alias as network alias; a service is ready when its healthcheck says healthy,
  else when every ``withExposedPort`` port accepts a connection (checked through a port published on
  127.0.0.1), as Dagger waits before running the client.
- secrets (``setSecret``, ``withSecretVariable``): runtime environment of a service container, from a file
  readable only by root that is deleted once the container starts; never in an image. A secret on an exec
  step is refused (``docker commit`` would keep it in the image's configuration).

Any selection or argument it does not know raises ``ReplayError``: a step is never skipped. What dockerd
20.10 cannot express (a healthcheck's ``start_interval``) is listed in ``Replay.differences``.

Steps are cached across runs as Dagger caches them: each committed image is tagged with a digest of the
steps that made it (host directories by their content), and a later run reuses it; ``close()`` removes the
cached steps this run did not use, with every container and network it started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from dagger.client._core import Context, Field
from dagger.client.base import Type

from tests.harness.context import uploaded
from tests.harness.engine import DOCKER, Engine, engine_dir
from tests.harness.registry import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    RegistryClient,
    RegistryError,
    sha256_digest,
)
from tests.harness.services import LOOPBACK

STEP_REPOSITORY: Final = "flight-price-replay/step"
CACHE_VOLUME_PREFIX: Final = "flight-price-cache-"
SERVICE_TIMEOUT_S: Final = 240.0
LABEL: Final = "dev.flight-price.replay"


class ReplayError(RuntimeError):
    """A selection the replay does not know, or a step that failed on the engine."""


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # ("CMD", *args) or ("CMD-SHELL", command)
    interval: str | None
    timeout: str | None
    start_period: str | None
    start_interval: str | None
    retries: int | None


@dataclass(frozen=True)
class Config:
    """The image configuration a container carries (what ``docker image inspect`` shows of it)."""

    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    exposed: tuple[int, ...] = ()  # TCP ports
    checked_ports: tuple[int, ...] = ()  # withExposedPort: what Dagger dials before a client runs
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None

    def with_env(self, name: str, value: str) -> Config:
        env = dict(self.env)
        env[name] = value
        return replace(self, env=tuple(env.items()))

    def expand(self, value: str) -> str:
        """Go's ``os.Expand`` against the container's env (unset is empty), as Dagger's ``expand``."""
        env = dict(self.env)
        out, i = [], 0
        while i < len(value):
            if value[i] == "$" and i + 1 < len(value):
                if value[i + 1] == "{" and "}" in value[i:]:
                    end = value.index("}", i)
                    out.append(env.get(value[i + 2 : end], ""))
                    i = end + 1
                    continue
                j = i + 1
                while j < len(value) and (value[j].isalnum() or value[j] == "_"):
                    j += 1
                if j > i + 1:
                    out.append(env.get(value[i + 1 : j], ""))
                    i = j
                    continue
            out.append(value[i])
            i += 1
        return "".join(out)


@dataclass(frozen=True)
class Service:
    """A container to run as a service: ``command`` is what it runs (``asService``)."""

    state: State
    command: tuple[str, ...]

    @property
    def key(self) -> str:
        return digest("service", self.state.key, self.command)


@dataclass(frozen=True)
class State:
    """A container: its file system (an image on the engine) and what the steps so far set."""

    image: str
    key: str  # digest of the steps that made ``image``
    config: Config = field(default_factory=Config)
    caches: tuple[tuple[str, str], ...] = ()  # mount path, cache volume key
    services: tuple[tuple[str, Service], ...] = ()  # alias, service
    secrets: tuple[tuple[str, str], ...] = ()  # variable, secret name
    stdout: str = ""
    platform: str = ""  # os/arch of its file system; "" until from() sets it
    registry_auth: tuple[tuple[str, str, str], ...] = ()  # registry host, username, secret name


@dataclass(frozen=True)
class Unstarted:
    """``dag.container(platform=...)`` before its ``from``: the platform its base is resolved for."""

    platform: str
    registry_auth: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class HostTree:
    root: Path
    exclude: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class ImageTree:
    image: str
    path: str  # absolute, in the image
    digest: str


@dataclass(frozen=True)
class EmptyTree:
    digest: str = "empty"


Tree = HostTree | ImageTree | EmptyTree


@dataclass(frozen=True)
class SubTree:
    """A directory inside a tree (``Directory.directory``) or one file of it (``Directory.file``)."""

    tree: Tree
    path: str  # relative to the tree's root, "" for the root itself
    digest: str


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


def seconds(duration: str) -> float:
    """A Go duration as Dagger takes it (``"2s"``, ``"1m30s"``, ``"500ms"``), in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ReplayError(f"{duration!r} is not a duration the replay reads (e.g. 2s, 1m30s)")
    return sum(float(n) * units[u] for n, u in parts)


def describe(step: Field) -> str:
    """A selection for messages: its name and arguments, secret values left out."""
    args = {k: ("<secret>" if k == "plaintext" else v) for k, v in step.args.items()}
    return f"{step.type_name}.{step.name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def allowed(step: Field, *names: str) -> None:
    unknown = set(step.args) - set(names)
    if unknown:
        raise ReplayError(f"{describe(step)}: the replay does not know the argument(s) {sorted(unknown)}")


class Replay:
    """Performs a module's lazy pipelines on ``engine``; use as a context manager (``close`` cleans up)."""

    def __init__(
        self,
        engine: Engine,
        *,
        log: Any = sys.stderr,
        prune: bool = True,
        variants: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.prune = prune
        # (address, platform) -> the local image standing for that platform's variant of ``address``: Dagger
        # resolves ``from`` in a registry's index per platform, and dockerd 20.10 keeps one image per tag
        self.variants: dict[tuple[str, str], str] = dict(variants or {})
        self.native = ""
        self.log = log
        self.secrets: dict[str, str] = {}
        self.memo: dict[str, Any] = {}
        self.used_steps: set[str] = set()
        self.containers: list[str] = []
        self.networks: list[str] = []
        self.differences: set[str] = set()
        self.fresh: set[str] = set()  # step keys to perform even when cached
        self.ready: list[tuple[str, str]] = []  # (alias, "healthy" or "ports"): how each service became ready
        # What a test adds to the ``docker create`` of the services bound under an alias, to run one as a pod spec
        # would (a read-only root, no capabilities, mounts): not Dagger's, and so never set by the module's runs.
        self.pod_flags: dict[str, list[str]] = {}
        # alias -> the whole output and the exit code of its last container, kept when it stopped
        self.service_logs: dict[str, str] = {}
        self.service_exits: dict[str, int] = {}
        self.stdout_dir = engine_dir() / "replay-stdout"
        self.stdout_dir.mkdir(parents=True, exist_ok=True)

    # -- the engine ---------------------------------------------------------------------------------------

    def docker(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        result = subprocess.run([DOCKER, *args], env=self.engine.env(), input=stdin, capture_output=True, check=False)
        if check and result.returncode != 0:
            raise ReplayError(
                f"docker {shlex.join(args[:4])} failed:\n{result.stderr.decode(errors='replace')[-3000:]}"
            )
        return result.stdout.decode(errors="replace").strip()

    def inspect(self, image: str) -> dict[str, Any]:
        found = self.engine.image(image)
        if found is None:
            raise ReplayError(f"no image {image} on the engine")
        return found

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove this run's containers and networks, and (with ``prune``) the cached steps it did not use."""
        if self.containers:
            self.docker("rm", "--force", "--volumes", *self.containers, check=False)
        for network in reversed(self.networks):
            self.docker("network", "rm", network, check=False)
        self.containers.clear()
        self.networks.clear()
        stale = [
            line.split()[1]
            for line in self.docker("images", STEP_REPOSITORY, "--format", "{{.Tag}} {{.ID}}").splitlines()
            if line and line.split()[0] not in self.used_steps
        ]
        if stale and self.used_steps and self.prune:
            self.docker("rmi", "--force", *stale, check=False)

    # -- evaluation -----------------------------------------------------------------------------------------

    def evaluate(self, obj: Type, *, fresh: bool = False) -> Any:
        """The value of a lazy object: a ``State``, ``Service``, tree, file, cache key or secret name.

        With ``fresh``, its last step is performed again even if cached (a check that must run now).
        """
        return self.evaluate_selections(list(obj._ctx.selections), fresh=fresh)

    def evaluate_selections(self, selections: list[Field], *, fresh: bool = False) -> Any:
        """The value of the object ``selections`` select (see ``evaluate``)."""
        value: Any = None
        key = ""
        for position, step in enumerate(selections):
            key = digest(key, self.step_key(step))
            if fresh and position == len(selections) - 1:
                self.fresh.add(key)
            elif key in self.memo:
                value = self.memo[key]
                key = getattr(value, "key", None) or getattr(value, "digest", None) or key
                continue
            value = self.apply(value, step, key)
            self.memo[key] = value
            key = getattr(value, "key", None) or getattr(value, "digest", None) or key
        return value

    def step_key(self, step: Field) -> Any:
        def arg(value: Any) -> Any:
            if isinstance(value, Type):
                resolved = self.evaluate(value)
                return getattr(resolved, "key", None) or getattr(resolved, "digest", None) or repr(resolved)
            if isinstance(value, list | tuple):
                return [arg(v) for v in value]
            if step.name == "setSecret":
                return digest(value)  # the plaintext never enters a key or a message
            return str(value)

        args = dict(step.args)
        if (step.type_name, step.name) == ("Query", "container"):  # as the engine: no platform is its own
            args["platform"] = args.get("platform") or self.platform()
        return [step.type_name, step.name, sorted((k, arg(v)) for k, v in args.items())]

    def apply(self, value: Any, step: Field, key: str) -> Any:
        name = f"{step.type_name}.{step.name}"
        a = step.args
        if name == "Query.container":
            allowed(step, "platform")
            return Unstarted(str(a.get("platform") or self.platform()))
        if name == "Query.host":
            allowed(step)
            return "host"
        if name == "Host.directory":
            allowed(step, "path", "exclude")
            root = Path(a["path"])
            exclude = tuple(a.get("exclude", ()))
            return HostTree(root, exclude, self.host_digest(root, exclude))
        if name == "Query.directory":
            allowed(step)
            return EmptyTree()
        if name == "Query.cacheVolume":
            allowed(step, "key")
            return str(a["key"])
        if name == "Query.setSecret":
            allowed(step, "name", "plaintext")
            self.secrets[a["name"]] = a["plaintext"]
            return str(a["name"])
        if name in ("Directory.directory", "Directory.file"):
            allowed(step, "path")
            base: Tree | SubTree = value
            tree, prefix = (base.tree, base.path) if isinstance(base, SubTree) else (base, "")
            path = str(PurePosixPath(prefix, a["path"])) if prefix else a["path"]
            if isinstance(tree, HostTree):  # content-addressed: only what lies under ``path`` counts
                return SubTree(tree, path, self.host_digest(tree.root, tree.exclude, under=path))
            return SubTree(tree, path, digest(base.digest, a["path"]))
        if step.type_name != "Container":
            raise ReplayError(f"{describe(step)}: the replay does not know this selection")
        if name == "Container.from":
            allowed(step, "address")
            if not isinstance(value, Unstarted):
                raise ReplayError(f"{describe(step)} on a container that has a base already")
            return replace(self.from_image(a["address"], value.platform), registry_auth=value.registry_auth)
        if name == "Container.withRegistryAuth":  # also on a container with no base: a publisher of variants
            allowed(step, "address", "username", "secret")
            auth = (*value.registry_auth, (a["address"], a["username"], self.evaluate(a["secret"])))
            return (
                replace(value, registry_auth=auth, key=key)
                if isinstance(value, State)
                else replace(value, registry_auth=auth)
            )
        if not isinstance(value, State):
            raise ReplayError(f"{describe(step)} before from(): the replay builds only from an image")
        state: State = value
        config = state.config
        if name == "Container.withExec":
            allowed(step, "args")
            return self.exec(state, list(a["args"]), key)
        if name == "Container.withFile":
            allowed(step, "path", "source", "permissions", "owner")
            source = self.evaluate(a["source"])
            return self.copy(state, self.absolute(config, a["path"]), source, a.get("owner"), key, a.get("permissions"))
        if name == "Container.withDirectory":
            allowed(step, "path", "source", "owner")
            source = self.evaluate(a["source"])
            return self.copy(state, self.absolute(config, a["path"]), source, a.get("owner"), key)
        if name == "Container.withMountedCache":
            allowed(step, "path", "cache")
            cache = self.evaluate(a["cache"])
            return replace(state, caches=(*state.caches, (self.absolute(config, a["path"]), cache)), key=key)
        if name == "Container.withEnvVariable":
            allowed(step, "name", "value", "expand")
            value_ = config.expand(a["value"]) if a.get("expand") else a["value"]
            return replace(state, config=config.with_env(a["name"], value_), key=key)
        if name == "Container.withWorkdir":
            allowed(step, "path")
            return replace(state, config=replace(config, workdir=self.absolute(config, a["path"])), key=key)
        if name == "Container.withUser":
            allowed(step, "name")
            return replace(state, config=replace(config, user=a["name"]), key=key)
        if name == "Container.withExposedPort":
            allowed(step, "port")
            port = int(a["port"])
            exposed = tuple(sorted({*config.exposed, port}))
            checked = tuple(sorted({*config.checked_ports, port}))
            return replace(state, config=replace(config, exposed=exposed, checked_ports=checked), key=key)
        if name == "Container.withEntrypoint":
            allowed(step, "args")
            return replace(state, config=replace(config, entrypoint=tuple(a["args"]), cmd=()), key=key)
        if name == "Container.withLabel":
            allowed(step, "name", "value")
            labels = dict(config.labels)
            labels[a["name"]] = a["value"]
            return replace(state, config=replace(config, labels=tuple(labels.items())), key=key)
        if name == "Container.withDockerHealthcheck":
            allowed(step, "args", "interval", "timeout", "startPeriod", "startInterval", "retries")
            check = Healthcheck(
                ("CMD", *a["args"]),
                a.get("interval"),
                a.get("timeout"),
                a.get("startPeriod"),
                a.get("startInterval"),
                a.get("retries"),
            )
            return replace(state, config=replace(config, healthcheck=check), key=key)
        if name == "Container.withServiceBinding":
            allowed(step, "alias", "service")
            service = self.evaluate(a["service"])
            return replace(state, services=(*state.services, (a["alias"], service)), key=key)
        if name == "Container.withSecretVariable":
            allowed(step, "name", "secret")
            secret = self.evaluate(a["secret"])
            return replace(state, secrets=(*state.secrets, (a["name"], secret)), key=key)
        if name == "Container.asService":
            allowed(step, "args", "useEntrypoint")
            command = tuple(a.get("args", ())) or config.cmd
            if a.get("useEntrypoint") or not a.get("args"):
                command = (*config.entrypoint, *command)
            return Service(state, command)
        if name == "Container.directory":
            allowed(step, "path")
            path = self.absolute(config, a["path"])
            return ImageTree(state.image, path, digest(state.key, path))
        if name == "Container.file":
            allowed(step, "path")
            path = PurePosixPath(self.absolute(config, a["path"]))
            tree = ImageTree(state.image, str(path.parent), digest(state.key, str(path.parent)))
            return SubTree(tree, path.name, digest(state.key, str(path)))
        raise ReplayError(f"{describe(step)}: the replay does not know this selection")

    # -- steps ------------------------------------------------------------------------------------------------

    def platform(self) -> str:
        """The engine's own platform (what ``dag.container()`` without a platform builds for)."""
        if not self.native:
            info = json.loads(self.docker("version", "--format", "{{json .Server}}"))
            self.native = f"{info['Os']}/{info['Arch']}"
        return self.native

    @staticmethod
    def absolute(config: Config, path: str) -> str:
        return path if path.startswith("/") else str(PurePosixPath(config.workdir or "/", path))

    def host_digest(self, root: Path, exclude: Sequence[str], under: str = "") -> str:
        """A digest of what Dagger uploads from ``root`` (only what lies under ``under``, if given)."""
        hasher = hashlib.sha256(json.dumps(list(exclude) if not under else [under]).encode())
        for relative in uploaded(root, exclude):
            if under and relative != under and not relative.startswith(under + "/"):
                continue
            path = root / relative
            stat = path.lstat()
            hasher.update(f"{relative}\0{stat.st_mode}\0".encode())
            if path.is_symlink():
                hasher.update(os.readlink(path).encode())
            elif path.is_file():
                hasher.update(path.read_bytes())
        return hasher.hexdigest()

    def from_image(self, address: str, platform: str) -> State:
        """``address`` for ``platform``: the image itself on the engine's own platform, else its registered variant,
        else the image itself if it is of that platform (an image pulled by its platform's digest)."""
        local = address if platform == self.platform() else self.variants.get((address, platform), address)
        info = self.engine.image(local)
        if info is None:
            raise ReplayError(f"from({address!r}): no such image on the engine, and nothing can be pulled here")
        found = f"{info.get('Os', 'linux')}/{info.get('Architecture', '')}"
        if platform != self.platform() and found != platform:
            raise ReplayError(
                f"from({address!r}) for {platform}: the engine has it for {found} only (no {platform} variant "
                "registered: tests/harness/standins.py makes them)"
            )
        c = info["Config"] or {}
        check = c.get("Healthcheck")
        healthcheck = None
        if check and check.get("Test") and check["Test"][0] != "NONE":

            def duration(key: str) -> str | None:  # nanoseconds in the image's configuration
                return f"{check[key] / 1e9:g}s" if check.get(key) else None

            healthcheck = Healthcheck(
                tuple(check["Test"]),
                duration("Interval"),
                duration("Timeout"),
                duration("StartPeriod"),
                duration("StartInterval"),
                check.get("Retries"),
            )
        config = Config(
            env=tuple((item.split("=", 1)[0], item.split("=", 1)[1]) for item in c.get("Env") or ()),
            workdir=c.get("WorkingDir") or "",
            user=c.get("User") or "",
            entrypoint=tuple(c.get("Entrypoint") or ()),
            cmd=tuple(c.get("Cmd") or ()),
            exposed=tuple(sorted(int(p.split("/")[0]) for p in c.get("ExposedPorts") or {})),
            labels=tuple((c.get("Labels") or {}).items()),
            healthcheck=healthcheck,
        )
        return State(image=info["Id"], key=digest("from", info["Id"]), config=config, platform=platform)

    def cached(self, key: str) -> tuple[str, str] | None:
        """The image and stdout of a step this engine already performed."""
        if key in self.fresh:
            return None
        tag = f"{STEP_REPOSITORY}:{key[:40]}"
        found = self.engine.image(tag)
        if found is None:
            return None
        self.used_steps.add(key[:40])
        stdout = self.stdout_dir / key[:40]
        return found["Id"], stdout.read_text() if stdout.exists() else ""

    def keep(self, container: str, key: str, stdout: str = "") -> str:
        """Commit ``container`` as the cached image of step ``key``; its image id."""
        tag = f"{STEP_REPOSITORY}:{key[:40]}"
        image = self.docker("commit", container, tag)
        self.docker("rm", "--force", container, check=False)
        (self.stdout_dir / key[:40]).write_text(stdout)
        self.used_steps.add(key[:40])
        return image

    def exec(self, state: State, args: list[str], key: str) -> State:
        if state.secrets:
            raise ReplayError(f"withExec({args}) with secret variables: docker commit would keep them in the image")
        hit = self.cached(key)
        label = shlex.join(args)[:100]
        if hit is not None:
            print(f"replay: withExec {label} (cached)", file=self.log, flush=True)
            return replace(state, image=hit[0], key=key, stdout=hit[1])
        started = time.monotonic()
        name = f"replay-exec-{uuid.uuid4().hex[:12]}"
        with ExitStack() as stack:
            network = stack.enter_context(self.bindings(state.services))
            command = [
                "run", "--name", name, "--init", *self.runtime_flags(state.config),
                *(f"--volume={self.volume_name(cache)}:{path}" for path, cache in state.caches),
                *(["--network", network] if network else []),
                "--entrypoint", args[0], state.image, *args[1:],
            ]  # fmt: skip
            self.containers.append(name)
            result = subprocess.run([DOCKER, *command], env=self.engine.env(), capture_output=True, check=False)
        stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
        if result.returncode != 0:
            self.docker("rm", "--force", name, check=False)
            output = f"--- stdout\n{stdout[-6000:]}\n--- stderr\n{stderr[-4000:]}"
            raise ReplayError(f"withExec {label} exited with {result.returncode}:\n{output}")
        image = self.keep(name, key, stdout)
        self.containers.remove(name)
        print(f"replay: withExec {label} ({time.monotonic() - started:.0f} s)", file=self.log, flush=True)
        return replace(state, image=image, key=key, stdout=stdout)

    @staticmethod
    def volume_name(cache: str) -> str:
        """The docker volume that stands for the engine's cache volume ``cache`` (its key)."""
        return CACHE_VOLUME_PREFIX + "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in cache)

    @staticmethod
    def runtime_flags(config: Config) -> list[str]:
        flags = [f"--env={k}={v}" for k, v in config.env]
        if config.user:
            flags.append(f"--user={config.user}")
        flags.append(f"--workdir={config.workdir or '/'}")
        return flags

    def copy(
        self, state: State, dest: str, source: Any, owner: str | None, key: str, permissions: int | None = None
    ) -> State:
        """``source`` (a tree, or one file of one) written at ``dest`` in a new layer over ``state``."""
        hit = self.cached(key)
        if hit is not None:
            return replace(state, image=hit[0], key=key)
        uid_gid = self.ownership(owner)
        name = f"replay-copy-{uuid.uuid4().hex[:12]}"
        self.docker("create", "--name", name, "--entrypoint", "", state.image, "replay-placeholder")
        self.containers.append(name)
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as out:
                for info, data in self.entries(source, dest.lstrip("/"), uid_gid, permissions):
                    out.addfile(info, data)
            archive.seek(0)
            result = subprocess.run(
                [DOCKER, "cp", "-", f"{name}:/"], env=self.engine.env(), stdin=archive, capture_output=True, check=False
            )
        if result.returncode != 0:
            raise ReplayError(f"copy into {dest} failed: {result.stderr.decode(errors='replace')[-2000:]}")
        image = self.keep(name, key)
        self.containers.remove(name)
        return replace(state, image=image, key=key)

    @staticmethod
    def ownership(owner: str | None) -> tuple[int, int] | None:
        if not owner:
            return None
        user, _, group = owner.partition(":")
        if not user.isdigit() or (group and not group.isdigit()):
            raise ReplayError(f"owner {owner!r}: the replay takes numeric ids only")
        return int(user), int(group or user)

    def entries(
        self, source: Any, dest: str, owner: tuple[int, int] | None, permissions: int | None
    ) -> Iterator[tuple[tarfile.TarInfo, io.BufferedIOBase | None]]:
        """Tar entries for ``source`` placed at ``dest`` (relative to /), with Dagger's ownership rules."""
        tree, sub = (source.tree, source.path) if isinstance(source, SubTree) else (source, "")

        def placed(info: tarfile.TarInfo, relative: str) -> tarfile.TarInfo:
            info.name = str(PurePosixPath(dest, relative)) if relative else dest
            if owner is not None:
                info.uid, info.gid = owner
                info.uname = info.gname = ""
            if permissions is not None and info.isfile():
                info.mode = permissions
            return info

        if isinstance(tree, EmptyTree):
            if sub:
                raise ReplayError(f"{sub!r} of an empty directory")
            info = tarfile.TarInfo()
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            yield placed(info, ""), None
        elif isinstance(tree, HostTree):
            listed = uploaded(tree.root, tree.exclude)
            if sub and sub not in listed:
                raise ReplayError(f"{sub!r} is not in the uploaded directory {tree.root} (its exclude patterns)")
            for relative in listed:
                if sub and relative != sub and not relative.startswith(sub + "/"):
                    continue
                path = tree.root / relative
                info = tarfile.TarInfo()
                stat = path.lstat()
                info.mode, info.mtime, info.uid, info.gid = stat.st_mode & 0o7777, int(stat.st_mtime), 0, 0
                inner = relative[len(sub) :].lstrip("/") if sub else relative
                if path.is_symlink():
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    yield placed(info, inner), None
                elif path.is_dir():
                    info.type = tarfile.DIRTYPE
                    yield placed(info, inner), None
                else:
                    info.size = stat.st_size
                    with path.open("rb") as data:
                        yield placed(info, inner), data
        else:
            yield from self.image_entries(tree, sub, placed)

    def image_entries(self, tree: ImageTree, sub: str, placed: Any) -> Iterator[tuple[tarfile.TarInfo, Any]]:
        path = str(PurePosixPath(tree.path, sub)) if sub else tree.path
        name = f"replay-read-{uuid.uuid4().hex[:12]}"
        self.docker("create", "--name", name, "--entrypoint", "", tree.image, "replay-placeholder")
        self.containers.append(name)
        process = subprocess.Popen([DOCKER, "cp", f"{name}:{path}", "-"], env=self.engine.env(), stdout=subprocess.PIPE)
        assert process.stdout is not None
        top = PurePosixPath(path).name
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for info in archive:
                relative = info.name[len(top) :].lstrip("/") if info.name != top else ""
                if info.islnk():
                    link = placed(tarfile.TarInfo(), info.linkname[len(top) :].lstrip("/")).name
                    info = placed(info, relative)
                    info.linkname = link
                    yield info, None
                    continue
                data = archive.extractfile(info) if info.isfile() else None
                yield placed(info, relative), data
        if process.wait() != 0:
            raise ReplayError(f"reading {path} from a container of {tree.image[:19]} failed")
        self.docker("rm", "--force", name, check=False)
        self.containers.remove(name)

    # -- images and services ------------------------------------------------------------------------------

    def image(self, container: Type) -> str:
        """The image of ``container`` with its configuration written in; its id."""
        state = self.evaluate(container)
        if not isinstance(state, State):
            raise ReplayError(f"{container!r} is not a container")
        return self.finish(state)

    def finish(self, state: State) -> str:
        c = state.config
        if c.healthcheck is not None and c.healthcheck.start_interval:
            # said on every run, the cached ones too
            interval = c.healthcheck.start_interval
            self.differences.add(
                f"HEALTHCHECK start_interval={interval} left out: dockerd 20.10 has no --start-interval"
            )
        key = digest("image", state.key, state.config)
        hit = self.cached(key)
        if hit is not None:
            return hit[0]

        def quoted(value: str) -> str:
            return json.dumps(value).replace("$", "\\$")

        lines = [f"FROM {state.image}"]
        if c.env:
            lines.append("ENV " + " ".join(f"{k}={quoted(v)}" for k, v in c.env))
        lines.append(f"WORKDIR {quoted(c.workdir or '/')}")
        if c.user:
            lines.append(f"USER {c.user}")
        lines.extend(f"EXPOSE {port}/tcp" for port in c.exposed)
        if c.labels:
            lines.append("LABEL " + " ".join(f"{quoted(k)}={quoted(v)}" for k, v in c.labels))
        lines.append(f"ENTRYPOINT {json.dumps(list(c.entrypoint))}")
        lines.append(f"CMD {json.dumps(list(c.cmd))}")
        if c.healthcheck is None:
            lines.append("HEALTHCHECK NONE")
        else:
            h = c.healthcheck
            flags = [
                f"--{flag}={v}"
                for flag, v in (("interval", h.interval), ("timeout", h.timeout), ("start-period", h.start_period))
                if v
            ]
            if h.retries is not None:
                flags.append(f"--retries={h.retries}")
            kind, *test = h.test
            body = json.dumps(test) if kind == "CMD" else test[0]
            lines.append(f"HEALTHCHECK {' '.join(flags)} CMD {body}")
        tag = f"{STEP_REPOSITORY}:{key[:40]}"
        self.docker("build", "--quiet", "--tag", tag, "-", stdin="\n".join(lines).encode())
        self.used_steps.add(key[:40])
        return str(self.inspect(tag)["Id"])

    # -- the engine's leaves: what an awaited SDK call returns --------------------------------------------------

    @contextmanager
    def as_engine(self) -> Iterator[None]:
        """The SDK's queries answered by this replay while the block runs, so the module's own async functions
        (``publish``, ``run_tests``) run as on an engine: ``stdout`` and ``publish`` are performed, any other
        leaf raises ``ReplayError``."""

        async def execute(ctx: Context, return_type: Any = None) -> Any:
            *selections, last = list(ctx.selections)
            if f"{last.type_name}.{last.name}" == "Container.stdout":
                allowed(last)
                return self.stdout_of(self.evaluate_selections(selections))
            if f"{last.type_name}.{last.name}" == "Container.publish":
                allowed(last, "address", "platformVariants", "mediaTypes")
                if last.args.get("mediaTypes", "OCIMediaTypes") != "OCIMediaTypes":
                    raise ReplayError(f"{describe(last)}: the replay pushes OCI media types only")
                publisher = self.evaluate_selections(selections)
                return self.publish(publisher, str(last.args["address"]), list(last.args.get("platformVariants", ())))
            raise ReplayError(f"{describe(last)}: the replay does not perform this call")

        original = Context.execute
        Context.execute = execute  # type: ignore[method-assign, assignment]
        try:
            yield
        finally:
            Context.execute = original  # type: ignore[method-assign]

    def publish(self, publisher: State | Unstarted, address: str, variants: list[Type]) -> str:
        """Dagger's ``publish``: each variant's image (else the publisher's own) pushed to the registry ``address``
        names with the publisher's ``withRegistryAuth`` credentials, as one OCI index when there are variants;
        returns ``address@digest``. The credentials are tried before anything is pushed."""
        host, repository, tag = split_reference(address)
        matching = [(user, secret) for registry, user, secret in publisher.registry_auth if registry == host]
        if not matching:
            raise ReplayError(f"publish({address!r}): no withRegistryAuth for {host} (the replay pushes with one)")
        username, secret = matching[-1]
        client = RegistryClient(host, username, self.secrets[secret])
        try:
            client.ping()
        except RegistryError as error:
            raise ReplayError(f"publish({address!r}): {error}; nothing was pushed") from None
        states: list[State] = []
        for variant in [self.evaluate(variant) for variant in variants] if variants else [publisher]:
            if not isinstance(variant, State):
                raise ReplayError(f"publish({address!r}): a platform variant is not a container with a base image")
            states.append(variant)
        platforms = [state.platform for state in states]
        if len(set(platforms)) != len(platforms):
            raise ReplayError(f"publish({address!r}): two variants for one platform ({platforms})")
        started = time.monotonic()
        images = [(self.finish(state), state.platform) for state in states]
        with ThreadPoolExecutor(max_workers=len(images)) as pool:  # the platforms' pushes compress side by side
            pushed = list(pool.map(lambda image: self.push_image(client, repository, *image), images))
        if variants:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": pushed}
            published, _ = client.put_manifest(repository, index, tag)
        else:
            published, _ = client.put_manifest(repository, client.manifest(repository, pushed[0]["digest"])[1], tag)
        print(f"replay: published {address} for {', '.join(platforms)} ({time.monotonic() - started:.0f} s)",
              file=self.log, flush=True)  # fmt: skip
        return f"{address}@{published}"

    def push_image(self, client: RegistryClient, repository: str, image: str, platform: str) -> dict[str, Any]:
        """``image`` pushed as an OCI manifest of ``platform`` (its layers gzip-compressed, as Dagger's default);
        the index entry for it. The configuration names ``platform``: the architecture the steps ran as."""
        os_name, _, arch = platform.partition("/")
        with tempfile.TemporaryDirectory(prefix="replay-publish-") as work:
            # docker save's layers compressed as the stream passes (manifest.json, which orders them, comes last)
            compressed: dict[str, tuple[Path, str, int]] = {}
            files: dict[str, bytes] = {}
            saved = subprocess.Popen([DOCKER, "save", image], env=self.engine.env(), stdout=subprocess.PIPE)
            assert saved.stdout is not None
            with tarfile.open(fileobj=saved.stdout, mode="r|") as archive:
                for member in archive:
                    data = archive.extractfile(member) if member.isfile() else None
                    if data is None:
                        continue
                    if member.name.endswith("/layer.tar"):
                        target = Path(work) / f"{len(compressed)}.tar.gz"
                        compressed[member.name] = (target, *gzip_stream(data, target))
                    elif member.name.endswith(".json"):
                        files[member.name] = data.read()
            if saved.wait() != 0:
                raise ReplayError(f"docker save {image[:19]} failed")
            [saved_manifest] = json.loads(files["manifest.json"])
            config = json.loads(files[saved_manifest["Config"]])
            config.update(os=os_name, architecture=arch)
            layers = []
            for layer in saved_manifest["Layers"]:
                path, blob, size = compressed[layer]
                with path.open("rb") as stream:
                    client.push_blob(repository, blob, stream, size)
                layers.append({"mediaType": OCI_LAYER_GZIP, "digest": blob, "size": size})
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        client.push_blob(repository, sha256_digest(config_bytes), config_bytes, len(config_bytes))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_digest, size = client.put_manifest(repository, manifest)
        return {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": size,
            "platform": {"architecture": arch, "os": os_name},
        }

    def stdout(self, container: Type, *, fresh: bool = False) -> str:
        """The last exec's stdout of ``container`` (running every step it needs; the last one again if ``fresh``)."""
        return self.stdout_of(self.evaluate(container, fresh=fresh))

    @staticmethod
    def stdout_of(state: Any) -> str:
        if not isinstance(state, State):
            raise ReplayError(f"{state!r} is not a container")
        return state.stdout

    @contextmanager
    def bindings(self, services: tuple[tuple[str, Service], ...]) -> Iterator[str | None]:
        """A network on which every service of ``services`` runs under its alias; None when there are none.

        The services (and theirs) stop when the block ends, as Dagger stops a client's services with it.
        """
        if not services:
            yield None
            return
        network = f"replay-net-{uuid.uuid4().hex[:12]}"
        self.docker("network", "create", network)
        self.networks.append(network)
        try:
            with ExitStack() as started:
                for alias, service in services:
                    started.enter_context(self.service(service, network, alias))
                yield network
        finally:
            self.docker("network", "rm", network, check=False)
            self.networks.remove(network)

    @contextmanager
    def running(self, service_obj: Type, publish: int | None = None) -> Iterator[tuple[str, int | None]]:
        """Run a service (``asService``) with its bindings until the block ends, once ready; yields its container and
        the host port (on 127.0.0.1) of its exposed port ``publish``, if given."""
        service = self.evaluate(service_obj)
        if not isinstance(service, Service):
            raise ReplayError(f"{service_obj!r} is not a service")
        network = f"replay-net-{uuid.uuid4().hex[:12]}"
        self.docker("network", "create", network)
        self.networks.append(network)
        try:
            with self.service(service, network, "service") as container:
                if publish is None:
                    yield container, None
                    return
                port = self.docker("port", container, f"{publish}/tcp").splitlines()[0].rsplit(":", 1)[1]
                yield container, int(port)
        finally:
            self.docker("network", "rm", network, check=False)
            self.networks.remove(network)

    @contextmanager
    def service(self, service: Service, network: str, alias: str) -> Iterator[str]:
        """``service`` running on ``network`` as ``alias`` (its own bindings on a network of its own), once ready.

        Every port it exposes is also published on 127.0.0.1, for tests on the host.
        """
        state = service.state
        with self.bindings(state.services) as own_network:
            image = self.finish(state)
            name = f"replay-svc-{alias}-{uuid.uuid4().hex[:8]}"
            with tempfile.TemporaryDirectory() as private:
                env_file = Path(private) / "secrets.env"
                env_file.touch(mode=0o600)
                env_file.write_text("".join(f"{var}={self.secrets[secret]}\n" for var, secret in state.secrets))
                command = [
                    "create", "--name", name, "--init", "--network", own_network or network,
                    *([] if own_network else ["--network-alias", alias]),
                    *self.runtime_flags(state.config), f"--env-file={env_file}", *self.pod_flags.get(alias, ()),
                    *(f"--volume={self.volume_name(c)}:{path}" for path, c in state.caches),
                    *(f"--publish={LOOPBACK}::{port}" for port in state.config.exposed),
                    "--entrypoint", service.command[0], image, *service.command[1:],
                ]  # fmt: skip
                self.containers.append(name)
                self.docker(*command)
            try:
                if own_network:
                    self.docker("network", "connect", "--alias", alias, network, name)
                self.docker("start", name)
                self.wait_ready(name, alias, state.config)
                print(f"replay: service {alias} ready ({shlex.join(service.command)[:80]})", file=self.log, flush=True)
                yield name
            finally:
                self.docker("stop", "--time", "30", name, check=False)  # SIGTERM, as Dagger stops a service
                self.service_logs[alias] = self.logs(name, tail="all")
                exit_code = self.docker("inspect", "--format", "{{.State.ExitCode}}", name, check=False).strip()
                self.service_exits[alias] = int(exit_code) if exit_code.lstrip("-").isdigit() else -1
                self.docker("rm", "--force", name, check=False)
                self.containers.remove(name)

    def wait_ready(self, name: str, alias: str, config: Config) -> None:
        """Dagger 0.21's readiness (core/service.go, core/healthcheck.go): with a healthcheck, its command run in the
        container at once and then every ``start_interval`` (else ``interval``, else 5 s), failures counting only
        after ``start_period``, given up after ``retries`` (default 3) counted failures; else every exposed port
        accepting. A service with neither is refused: Dagger would run its clients at once, before it listens."""
        if config.healthcheck is not None:
            self.wait_healthy(name, alias, config.healthcheck)
            return
        if not config.checked_ports:
            raise ReplayError(
                f"service {alias} has neither an exposed port nor a healthcheck: Dagger would start its clients at "
                "once, before it listens (add withExposedPort or a healthcheck)"
            )
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_running(name)
            if all(self.accepts(name, port) for port in config.checked_ports):
                self.ready.append((alias, "ports"))
                return
            time.sleep(0.5)
        raise ReplayError(f"service {name} not ready within {SERVICE_TIMEOUT_S:.0f}s:\n{self.logs(name)}")

    def wait_healthy(self, name: str, alias: str, check: Healthcheck) -> None:
        kind, *test = check.test
        args = test if kind == "CMD" else ["/bin/sh", "-c", *test]
        pause = seconds(check.start_interval or check.interval or "5s")
        allow_failures_until = time.monotonic() + seconds(check.start_period or "0s")
        retries = check.retries or 3
        failures = 0
        while True:
            self.check_running(name)
            probe = subprocess.run(
                [DOCKER, "exec", name, *args], env=self.engine.env(), capture_output=True, text=True, check=False
            )
            if probe.returncode == 0:
                self.ready.append((alias, "healthy"))
                return
            if time.monotonic() > allow_failures_until:
                failures += 1
            if failures == retries:
                raise ReplayError(
                    f"service {alias}: its healthcheck failed {retries} times after its start period "
                    f"({probe.stderr.strip()[-500:]}):\n{self.logs(name)}"
                )
            time.sleep(pause)

    def check_running(self, name: str) -> None:
        state = json.loads(self.docker("inspect", "--format", "{{json .State}}", name))
        if not state["Running"]:
            raise ReplayError(f"service {name} exited with {state['ExitCode']}:\n{self.logs(name)}")

    def accepts(self, name: str, port: int) -> bool:
        """Whether ``port`` accepts a connection inside the service's container (Dagger dials it there)."""
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
        result = subprocess.run(
            [DOCKER, "exec", name, "python3", "-c", probe], env=self.engine.env(), capture_output=True, check=False
        )
        if result.returncode == 126 or b"executable file not found" in result.stderr:
            raise ReplayError(f"service {name}: no python3 in the image to check port {port} with")
        return result.returncode == 0

    def run_in(
        self, image: str, script: str, *, user: str | None = None, flags: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` in a throwaway container of ``image``, with no network (as the image's user unless
        ``user``; ``flags`` go to ``docker run``)."""
        command = [DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sh", *flags]
        if user is not None:
            command += ["--user", user]
        return subprocess.run(
            [*command, image, "-c", script], env=self.engine.env(), capture_output=True, text=True, check=False
        )

    def logs(self, name: str, tail: str = "60") -> str:
        result = subprocess.run(
            [DOCKER, "logs", "--tail", tail, name], env=self.engine.env(), capture_output=True, check=False
        )
        return (result.stdout + result.stderr).decode(errors="replace")


def split_reference(address: str) -> tuple[str, str, str]:
    """An image reference's registry host, repository and tag (``latest`` when none), as Docker reads them."""
    name, _, digest_part = address.partition("@")
    if digest_part:
        raise ReplayError(f"{address!r}: publish takes a tag, not a digest")
    last = name.rsplit("/", 1)[-1]
    repository, tag = name.rsplit(":", 1) if ":" in last else (name, "latest")
    host, _, path = repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise ReplayError(f"{address!r}: the replay pushes only to a registry named by host (127.0.0.1:PORT/...)")
    return host, path, tag


def gzip_stream(source: IO[bytes], target: Path, level: int = 1) -> tuple[str, int]:
    """``source`` gzip-compressed into ``target``; the compressed blob's digest and size."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    hasher = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(1 << 22):
            piece = compressor.compress(chunk)
            hasher.update(piece)
            size += out.write(piece)
        piece = compressor.flush()
        hasher.update(piece)
        size += out.write(piece)
    return f"sha256:{hasher.hexdigest()}", size


def env_of(inspected: Mapping[str, Any]) -> dict[str, str]:
    """An inspected image's environment as a mapping."""
    return dict(item.split("=", 1) for item in inspected["Config"].get("Env") or ())
