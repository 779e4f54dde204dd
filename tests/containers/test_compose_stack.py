"""orchestration/docker-compose.yaml started for real: Debian's ``docker-compose`` on dockerd, the file itself, only
its image references changed; the DAG triggered through the api-server's REST API; the model it trained served
by the serving image on the stack's network.

The images: the module's ``airflow()`` replayed on the Airflow stand-in (the file's ``AIRFLOW_IMAGE``, also the
image of ``mlflow`` and ``mlflow-users``), and the stand-ins of tests/harness/standins.py behind the file's
other references: postgres (an override file this test writes: the file names ``postgres:16`` itself) and
``MINIO_IMAGE``. MinIO has no Debian or PyPI build, so the service named ``minio`` runs moto's S3 server, and
the file's own ``minio-buckets`` script runs unchanged with an ``mc`` for the commands it uses: the buckets are
made and the scoped user and its policy recorded in moto's IAM, which does not enforce them (what the policy
allows is checked by tests/orchestration/test_compose.py). Debian's PostgreSQL is 15 where the file names 16.

What this replaced: tests/orchestration/test_production.py used to rebuild this topology from host processes for
its first LocalExecutor run (registration, promotion, blobs, clean task logs, the run's figures); those checks
run here now, on the file itself. That module keeps what compose cannot show here: an S3 outage during
``publish`` (a proxy the test switches) and CeleryExecutor with two workers on no shared disk.

The stack starts once per module and is removed with its volumes and network whatever happens; the serving
container too. Every published port binds 127.0.0.1 (the file's own rule) on a free port.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import boto3
import httpx
import pytest
from cryptography.fernet import Fernet
from flight_price import main as module

from app.contract.registry import TAG_DVC_HASH, RegistryAccess, RestRegistry
from app.delivery.pull import pull
from app.settings import Settings
from tests.harness.airflow_stack import DAG_ID, TASKS, AirflowClient, Run, parse_time, redact
from tests.harness.compose_file import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT_SERVICES,
    docker_compose,
    read_env_file,
    without_name,
)
from tests.harness.engine import DOCKER, Engine
from tests.harness.replay import Replay
from tests.harness.services import LOOPBACK, RegistryAdmin, blob_key, free_port
from tests.harness.standins import postgres_standin, s3_standin
from tests.harness.warm import module_on_standins
from tests.smoke.checker import run_checks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.containers,
    pytest.mark.airflow,
    pytest.mark.timeout(1500),
    pytest.mark.usefixtures("airflow_images"),
]

CONF: Final = {"rows": 3000}
UP_TIMEOUT_S: Final = 600
RUN_TIMEOUT_S: Final = 900
PORTS: Final = ("AIRFLOW_PORT", "MLFLOW_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT", "FLOWER_PORT")
# The file's images that are not variables: the override file replaces them.
POSTGRES_SERVICES: Final = ("postgres", "mlflow-database")
LONG_RUNNING: Final = ("postgres", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler",
                       "airflow-dag-processor", "airflow-triggerer")  # fmt: skip
ONE_SHOT: Final = ("mlflow-database", "minio-buckets", "mlflow-users", "airflow-init")


@dataclass
class ComposeStack:
    """A started project: its ``docker-compose`` invocation, its .env values and the services' host ports."""

    engine: Engine
    project: str
    work: Path
    values: dict[str, str] = field(repr=False)

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [
            docker_compose(), "--project-name", self.project, "--project-directory", str(COMPOSE.parent),
            "--file", str(self.work / "docker-compose.yaml"), "--file", str(self.work / "override.yaml"),
            "--env-file", str(self.work / ".env"), *args,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work), "DOCKER_HOST": self.engine.host}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def url(self, port_variable: str) -> str:
        return f"http://{LOOPBACK}:{self.values[port_variable]}"

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    def hidden(self) -> list[str]:
        """Every secret of the .env (the values of its empty lines in .env.example)."""
        example = read_env_file(ENV_EXAMPLE)
        return [self.values[name] for name, value in example.items() if not value]

    def logs(self, *services: str) -> str:
        shown = self.compose("logs", "--no-color", "--tail", "40", *services)
        return redact(shown.stdout + shown.stderr, self.hidden())

    def states(self) -> dict[str, str]:
        """Each container of the project: its state, with its health where it has a healthcheck."""
        listed = subprocess.run(
            [DOCKER, "ps", "--all", "--filter", f"label=com.docker.compose.project={self.project}",
             "--format", '{{.Label "com.docker.compose.service"}} {{.Status}}'],
            env=self.engine.env(), capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return dict(line.split(" ", 1) for line in listed.splitlines() if line)


def generated_secret() -> str:
    """A secret as .env.example says to make one (``secrets.token_urlsafe``), drawn again when it starts with '-':
    Airflow's entrypoint passes _AIRFLOW_WWW_USER_PASSWORD to ``airflow users create --password``, whose parser
    takes such a value for an option (one secret in 64 starts so; a stack run failed on it)."""
    while (secret := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return secret


def stack_values(airflow_image: str, s3_image: str) -> dict[str, str]:
    """.env.example with every secret generated as it says, the stand-ins' images and free ports."""
    values = read_env_file(ENV_EXAMPLE)
    for name, value in values.items():
        if not value:
            values[name] = generated_secret()
    values["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    values["AIRFLOW_IMAGE"] = airflow_image
    values["MINIO_IMAGE"] = s3_image
    for name in PORTS:
        values[name] = str(free_port())
    return values


@pytest.fixture(scope="module")
def stack(engine: Engine, replay: Replay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    built = replay.image(module_on_standins(engine, airflow=True).airflow())
    airflow_tag = f"{module.AIRFLOW_IMAGE_NAME}:stack-{built.split(':')[-1][:12]}"
    replay.docker("tag", built, airflow_tag)
    work = tmp_path_factory.mktemp("compose-stack")
    started = ComposeStack(
        engine, f"fp-stack-{uuid.uuid4().hex[:8]}", work, stack_values(airflow_tag, s3_standin(engine))
    )
    (work / "docker-compose.yaml").write_text(without_name(COMPOSE.read_text()))
    postgres = postgres_standin(engine)
    (work / "override.yaml").write_text(
        json.dumps({"version": "3.9", "services": {name: {"image": postgres} for name in POSTGRES_SERVICES}})
    )
    env_file = work / ".env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{name}={value}\n" for name, value in started.values.items()))
    try:
        began = time.monotonic()
        up = started.compose("up", "--detach", "--no-color", timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, f"docker-compose up failed:\n{redact(up.stderr[-4000:], started.hidden())}\n" + (
            started.logs()
        )
        wait_healthy(started)
        print(f"\ncompose stack {started.project} up and healthy in {time.monotonic() - began:.0f} s", flush=True)
        yield started
    finally:
        down = started.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300)
        replay.docker("rmi", airflow_tag, check=False)
        assert down.returncode == 0, down.stderr[-2000:]


def wait_healthy(stack: ComposeStack) -> None:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        states = stack.states()
        if all("(healthy)" in states.get(service, "") for service in LONG_RUNNING):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy within {UP_TIMEOUT_S}s: {states}\n{stack.logs()}")
        time.sleep(2)


@pytest.fixture(scope="module")
def client(stack: ComposeStack) -> Iterator[AirflowClient]:
    admin = RegistryAdmin(stack.values["_AIRFLOW_WWW_USER_USERNAME"], stack.values["_AIRFLOW_WWW_USER_PASSWORD"])
    api = AirflowClient(stack.url("AIRFLOW_PORT"), admin)
    yield api
    api.close()


@pytest.fixture(scope="module")
def dag_run(stack: ComposeStack, client: AirflowClient) -> Run:
    client.wait_for_dag(DAG_ID, timeout=300)
    assert client.set_paused(DAG_ID, False)["is_paused"] is False
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, CONF)
    print(f"triggered {run_id} with {CONF}", flush=True)
    try:
        run = client.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S, interval=2)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{stack.logs('airflow-scheduler', 'airflow-apiserver')}")
    tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
    return Run(run_id, str(run["state"]), time.monotonic() - started, tis)


def failed_logs(stack: ComposeStack, client: AirflowClient, run: Run) -> str:
    parts = [json.dumps({t: [ti["state"], ti["try_number"]] for t, ti in run.task_instances.items()})]
    for task_id, ti in run.task_instances.items():
        if ti["state"] != "success" and ti["try_number"]:
            log = client.task_log(DAG_ID, run.run_id, task_id, ti["try_number"])
            parts.append(f"--- {task_id} ---\n" + "\n".join(log.splitlines()[-40:]))
    return redact("\n".join(parts), stack.hidden()) + "\n" + stack.logs("airflow-scheduler")


def registry(stack: ComposeStack) -> RestRegistry:
    access = RegistryAccess(stack.values["MLFLOW_ADMIN_USERNAME"], stack.values["MLFLOW_ADMIN_PASSWORD"])
    return RestRegistry(stack.url("MLFLOW_PORT"), timeout=30, access=access)


def s3(stack: ComposeStack, service: str) -> Any:
    """A client of the stack's S3 store through its published port, with the scoped key the file hands out."""
    return boto3.client(
        service,
        endpoint_url=stack.url("MINIO_PORT"),
        aws_access_key_id=stack.values["MINIO_SCOPED_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.values["MINIO_SCOPED_SECRET_ACCESS_KEY"],
        region_name=stack.values["DVC_REMOTE_REGION"],
    )


def test_every_service_is_up_and_every_one_shot_job_succeeded(stack: ComposeStack) -> None:
    states = stack.states()
    for service in LONG_RUNNING:
        assert "(healthy)" in states[service], states
    for job in ONE_SHOT:
        assert states[job].startswith("Exited (0)"), f"{job}: {states[job]}\n{stack.logs(job)}"
    # the celery and flower profiles stay off by default
    assert not {"redis", "airflow-worker", "flower"} & set(states), states


def test_every_container_runs_confined(stack: ComposeStack) -> None:
    """The file's hardening as dockerd applied it, through docker-compose 1.29: CPU and memory limits, every
    capability dropped, no new privileges, a read-only root filesystem, and a user other than root but for
    ``ROOT_SERVICES``; in each running container, its first process as the kernel sees it."""
    listed = subprocess.run(
        [DOCKER, "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={stack.project}"],
        env=stack.engine.env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    inspected = json.loads(
        subprocess.run([DOCKER, "inspect", *listed], env=stack.engine.env(), capture_output=True, check=True).stdout
    )
    seen = set()
    for container in inspected:
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        seen.add(service)
        host = container["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], (service, host["CapDrop"], host["CapAdd"])
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), (service, host["SecurityOpt"])
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, (service, host["Memory"], host["NanoCpus"])
        assert not host["Privileged"], service
        root = service in ROOT_SERVICES
        assert (container["Config"]["User"].split(":")[0] in {"", "0", "root"}) == root, (service, container["Config"])
        if not container["State"]["Running"]:
            continue
        status = subprocess.run(
            [DOCKER, "exec", container["Id"], "cat", "/proc/1/status"],
            env=stack.engine.env(), capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        fields = {key: value.split() for key, _, value in (line.partition(":") for line in status.splitlines())}
        assert int(fields["CapEff"][0], 16) == 0 and int(fields["CapPrm"][0], 16) == 0, (service, fields["CapEff"])
        assert fields["NoNewPrivs"] == ["1"], service
        assert (fields["Uid"][0] == "0") == root, (service, fields["Uid"])
    assert seen == {*LONG_RUNNING, *ONE_SHOT}, seen


def test_the_bucket_job_made_the_buckets_and_the_scoped_user(stack: ComposeStack) -> None:
    buckets = {b["Name"] for b in s3(stack, "s3").list_buckets()["Buckets"]}
    wanted = {url.removeprefix("s3://").split("/")[0] for url in
              (stack.values["DVC_REMOTE_URL"], stack.values["MLFLOW_ARTIFACTS_DESTINATION"])}  # fmt: skip
    assert wanted <= buckets, buckets
    iam = s3(stack, "iam")
    user = stack.values["MINIO_SCOPED_ACCESS_KEY_ID"]
    attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
    assert [policy["PolicyName"] for policy in attached] == ["flight-price-buckets"]
    version = iam.get_policy(PolicyArn=attached[0]["PolicyArn"])["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=attached[0]["PolicyArn"], VersionId=version)["PolicyVersion"]
    statements = document["Document"]["Statement"]
    resources = {resource for statement in statements for resource in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{b}" for b in wanted} | {f"arn:aws:s3:::{b}/*" for b in wanted}


def test_the_dag_run_triggered_through_the_api_succeeds(
    stack: ComposeStack, client: AirflowClient, dag_run: Run
) -> None:
    assert dag_run.state == "success", failed_logs(stack, client, dag_run)
    assert {t: ti["state"] for t, ti in dag_run.task_instances.items()} == dict.fromkeys(TASKS, "success")
    print(f"\nfull DAG in compose (LocalExecutor), trigger to success: {dag_run.seconds:.1f} s")
    for task_id in TASKS:
        ti = dag_run.task_instances[task_id]
        queued = (parse_time(ti["start_date"]) - parse_time(ti["queued_when"])).total_seconds()
        ran = (parse_time(ti["end_date"]) - parse_time(ti["start_date"])).total_seconds()
        print(f"  {task_id:16} queued->started {queued:5.2f} s, ran {ran:6.2f} s")


@pytest.fixture(scope="module")
def published(stack: ComposeStack, client: AirflowClient, dag_run: Run) -> dict[str, Any]:
    assert dag_run.state == "success", failed_logs(stack, client, dag_run)
    value: dict[str, Any] = client.xcom(DAG_ID, dag_run.run_id, "publish")
    return value


def test_the_run_registers_promotes_and_pushes_its_bundle(stack: ComposeStack, published: dict[str, Any]) -> None:
    name = stack.values["MODEL_NAME"]
    champion = registry(stack).version_by_alias(name, stack.values["MODEL_ALIAS"])
    assert champion.version == published["version"] == 1
    assert champion.tags[TAG_DVC_HASH] == published["dvc_hash"]
    bucket, _, prefix = stack.values["DVC_REMOTE_URL"].removeprefix("s3://").partition("/")
    store = s3(stack, "s3")
    listing = json.loads(store.get_object(Bucket=bucket, Key=blob_key(prefix, published["dvc_hash"]))["Body"].read())
    files = {entry["relpath"] for entry in listing}
    assert files == {"metadata.json", "model.skops", "transformer.skops", "serving.npz"}
    for entry in listing:
        store.head_object(Bucket=bucket, Key=blob_key(prefix, entry["md5"]))


def test_no_task_log_holds_a_secret(stack: ComposeStack, client: AirflowClient, dag_run: Run) -> None:
    hidden = stack.hidden()
    assert len(hidden) >= 9
    for task_id, ti in dag_run.task_instances.items():
        log = client.task_log(DAG_ID, dag_run.run_id, task_id, ti["try_number"])
        assert log.strip(), f"{task_id}: empty log"
        leaked = [i for i, secret in enumerate(hidden) if secret in log]
        assert not leaked, f"{task_id}: the log holds .env secret(s) number {leaked}"
        if task_id == "publish":
            assert f"publish: {stack.values['MODEL_NAME']} version 1 (new)" in log, redact(log[-3000:], hidden)


def test_the_serving_image_serves_the_model_the_dag_trained(
    stack: ComposeStack,
    engine: Engine,
    replay: Replay,
    published: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replay's ``build()`` on the stack's network, configured as a deployment would be (the registry's alias,
    the DVC remote, the scoped S3 key and MLflow's Airflow account as runtime environment), checked by the smoke
    checker against the bundle the DAG pushed (pulled here through the store's published port)."""
    image = replay.image(module_on_standins(engine).build())
    v = stack.values
    env = {
        "DVC_REMOTE_URL": v["DVC_REMOTE_URL"],
        "DVC_REMOTE_ENDPOINT_URL": v["DVC_REMOTE_ENDPOINT_URL"],
        "DVC_REMOTE_REGION": v["DVC_REMOTE_REGION"],
        "MLFLOW_TRACKING_URI": v["MLFLOW_TRACKING_URI"],
        "MODEL_NAME": v["MODEL_NAME"],
        "MODEL_ALIAS": v["MODEL_ALIAS"],
    }
    keys = {
        "AWS_ACCESS_KEY_ID": v["MINIO_SCOPED_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": v["MINIO_SCOPED_SECRET_ACCESS_KEY"],
        "MLFLOW_TRACKING_USERNAME": v["MLFLOW_AIRFLOW_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": v["MLFLOW_AIRFLOW_PASSWORD"],
    }
    secrets_file = tmp_path / "serving.env"
    secrets_file.touch(mode=0o600)
    secrets_file.write_text("".join(f"{name}={value}\n" for name, value in keys.items()))
    name = f"{stack.project}-serving"
    replay.docker(
        "run", "--detach", "--name", name, "--network", stack.network, f"--publish={LOOPBACK}::{module.PORT}",
        f"--env-file={secrets_file}", *(f"--env={k}={val}" for k, val in env.items()), image,
    )  # fmt: skip
    try:
        port = replay.docker("port", name, f"{module.PORT}/tcp").splitlines()[0].rsplit(":", 1)[1]
        # the bundle the DAG pushed, pulled on the host through the store's published port
        for variable, value in keys.items():
            monkeypatch.setenv(variable, value)
        settings = Settings(
            dvc_remote_url=v["DVC_REMOTE_URL"],
            dvc_remote_endpoint_url=stack.url("MINIO_PORT"),
            dvc_remote_region=v["DVC_REMOTE_REGION"],
            model_dir=tmp_path / "pulled",
        )
        bundle_dir = pull(settings, published["dvc_hash"]).bundle_dir
        report = run_checks(f"http://{LOOPBACK}:{port}", bundle_dir, published["dvc_hash"], v["MODEL_NAME"], 180)
        print("\n" + "\n".join(report.lines))
        assert report.failures == 0, "\n".join(report.lines) + "\n" + redact(replay.logs(name), stack.hidden())
        model = httpx.get(f"http://{LOOPBACK}:{port}/model", timeout=10, trust_env=False).json()
        print(json.dumps(model)[:400])
        assert str(published["version"]) in json.dumps(model)
    finally:
        replay.docker("rm", "--force", name, check=False)
