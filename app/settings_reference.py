"""The configuration reference, generated from ``Settings``: the settings table of ``docs/configuration.md`` and
``app/prediction.env.example``.

Each setting's name, default, allowed values, description and example value come from its field in
``app/settings.py`` (or ``app/contract/connection.py``, which it extends); this module only orders them into
sections and renders them. ``--write`` regenerates both files, ``--check`` exits 1 naming each stale one
(``tests/test_configuration.py`` runs the same check)::

    uv run python -m app.settings_reference --write
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from app.settings import Settings

ROOT: Final = Path(__file__).resolve().parents[1]
COMMAND: Final = "uv run python -m app.settings_reference --write"
REFERENCE: Final = Path("docs/configuration.md")
ENV_EXAMPLE: Final = Path("app/prediction.env.example")
# The generated table sits between these two lines of docs/configuration.md; the rest of the file is hand-written.
TABLE_START: Final = f"<!-- generated from app/settings.py by `{COMMAND}`: edit the settings, not this table -->"
TABLE_END: Final = "<!-- end of the generated table -->"
WIDTH: Final = 118  # of the env example's comment lines


@dataclass(frozen=True)
class Section:
    """A group of settings in the env example (the docs table lists them in the same order)."""

    title: str
    names: tuple[str, ...]
    note: str = ""  # a comment on the whole group, above its first setting


SECTIONS: Final = (
    Section(
        "Which bundle to serve",
        (
            "MLFLOW_TRACKING_URI",
            "MODEL_NAME",
            "MODEL_ALIAS",
            "MODEL_VERSION",
            "MODEL_REFRESH_S",
            "ALLOW_SCHEMA_CHANGE",
            "MODEL_HASH",
            "REGISTRY_TIMEOUT_S",
        ),
    ),
    Section(
        "An authenticated registry",
        (
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_INSECURE_TLS",
            "MLFLOW_TRACKING_SERVER_CERT_PATH",
            "MLFLOW_TRACKING_CLIENT_CERT_PATH",
        ),
        "MLflow's own client variables, with its meaning. Give the server a user with read permission only (it never "
        "writes the registry). Basic auth (mlflow server --app-name basic-auth) or a bearer token, not both; a CA "
        "bundle or skipping the certificate check, not both.",
    ),
    Section("Where the bundle comes from", ("DVC_REMOTE_URL", "DVC_REMOTE_ENDPOINT_URL", "DVC_REMOTE_REGION")),
    Section(
        "S3 credentials",
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
        "The standard AWS variables. Narrower still: mount them as a file (a Kubernetes Secret volume) and set only "
        "AWS_SHARED_CREDENTIALS_FILE to its path; then no process's environment ever holds the keys, and any later "
        "pull (the alias refresh's, in the server) reads the same file again. Prefer an instance/pod role (which "
        "works the same way) or your orchestrator's secret store over this file.",
    ),
    Section("Pulling it", ("PULL_DEADLINE_S", "PULL_RETRIES", "PULL_BACKOFF_S")),
    Section("Where the bundle goes", ("MODEL_DIR", "BUNDLE_DIR")),
    Section(
        "Server",
        (
            "HOST",
            "PORT",
            "WORKERS",
            "LOG_LEVEL",
            "LOG_FORMAT",
            "MAX_BATCH_RECORDS",
            "MAX_BODY_BYTES",
            "MICROBATCH_MAX_SIZE",
            "MICROBATCH_MAX_WAIT_MS",
            "MAX_QUEUED_ROWS",
            "PREDICT_TIMEOUT_S",
            "DRAIN_TIMEOUT_S",
        ),
    ),
    Section(
        "What a connection may cost before the app sees it",
        (
            "MAX_HEADER_BYTES",
            "MAX_HEADERS",
            "HEADER_TIMEOUT_S",
            "BODY_TIMEOUT_S",
            "MAX_BODY_BYTES_IN_FLIGHT",
            "MAX_LISTED_ERRORS",
        ),
        'The arithmetic behind the defaults: docs/configuration.md, "Bounds on hostile clients".',
    ),
)
# Set (not commented out) in the env example: what serving the alias needs, the registry and the DVC remote.
SET_IN_THE_EXAMPLE: Final = frozenset({"MLFLOW_TRACKING_URI", "DVC_REMOTE_URL"})
ENV_EXAMPLE_HEADER: Final = f"""\
# Environment of the prediction container: `docker run --env-file app/prediction.env ...`.
# Generated from app/settings.py (`{COMMAND}`): edit the settings, not this file.
# Copy to app/prediction.env (gitignored) and edit. Every variable app/settings.py reads is listed here; a commented
# line shows the default, or an example value where the variable is unset by default. An empty value counts as
# unset (the default applies).
#
# Start-up: resolve the bundle (MODEL_HASH, else MLflow MODEL_NAME@MODEL_ALIAS or MODEL_VERSION)
# -> pull from DVC_REMOTE_URL into MODEL_DIR (every object checked) -> verify its hashes -> exec uvicorn on HOST:PORT.
"""


class SettingsReferenceError(ValueError):
    """The reference cannot be generated: a setting in no section (or in two), one without a description, or
    docs/configuration.md without the generated table's marker lines."""


def ordered(model: type[BaseModel] = Settings) -> list[tuple[str, FieldInfo]]:
    """Every setting of ``model`` as (variable name, field), in the sections' order."""
    fields = {name.upper(): field for name, field in model.model_fields.items()}
    listed = [name for section in SECTIONS for name in section.names]
    problems = [f"{name} is in no section of app/settings_reference.py" for name in sorted(set(fields) - set(listed))]
    problems += [f"{name} is in a section but is no setting" for name in sorted(set(listed) - set(fields))]
    problems += [f"{name} is listed twice" for name in sorted({name for name in listed if listed.count(name) > 1})]
    problems += [f"{name} has no description" for name, field in fields.items() if not field.description]
    with_example = {name for name, field in fields.items() if field.examples}
    problems += [
        f"{name} (SET_IN_THE_EXAMPLE) has no example value" for name in sorted(SET_IN_THE_EXAMPLE - with_example)
    ]
    if problems:
        raise SettingsReferenceError("; ".join(problems))
    return [(name, fields[name]) for name in listed]


def default_text(field: FieldInfo) -> str | None:
    """The default as an environment value (what setting the variable to it means), or None: unset."""
    return None if field.default is None else env_text(field.default)


def env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def choices(field: FieldInfo) -> tuple[str, ...]:
    """The values a ``Literal`` setting allows (empty for any other)."""
    annotation = field.annotation
    return tuple(env_text(v) for v in typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else ()


def description(field: FieldInfo) -> str:
    """The field's description, with the values it allows if it is a choice."""
    text = field.description or ""
    if values := choices(field):
        text += " One of: " + ", ".join(f"`{v}`" for v in values) + "."
    return text


def example_text(field: FieldInfo) -> str | None:
    return env_text(field.examples[0]) if field.examples else None


def table(model: type[BaseModel] = Settings) -> str:
    """The settings table of docs/configuration.md (Markdown), markers included."""
    lines = [TABLE_START, "| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in ordered(model):
        default = default_text(field)
        shown = "unset" if default is None else f"`{default}`"
        meaning = description(field).replace("|", r"\|")
        lines.append(f"| `{name}` | {shown} | {meaning} |")
    lines.append(TABLE_END)
    return "\n".join(lines) + "\n"


def configuration_reference(current: str, model: type[BaseModel] = Settings) -> str:
    """``current`` (docs/configuration.md) with its generated table replaced by ``table(model)``."""
    before, start, rest = current.partition(TABLE_START + "\n")
    _, end, after = rest.partition(TABLE_END + "\n")
    if not start or not end:
        raise SettingsReferenceError(
            f"{REFERENCE} lacks the generated table's marker lines ({TABLE_START!r} ... {TABLE_END!r})"
        )
    return before + table(model) + after


def env_example(model: type[BaseModel] = Settings) -> str:
    """app/prediction.env.example: each setting's description as a comment, then its line."""
    fields = dict(ordered(model))
    parts = [ENV_EXAMPLE_HEADER]
    for section in SECTIONS:
        lines = ["", f"# --- {section.title} ".ljust(WIDTH, "-")]
        if section.note:
            lines += [*comment(section.note), "#"]
        for name in section.names:
            field = fields[name]
            lines += comment(description(field).replace("`", ""))
            default, example = default_text(field), example_text(field)
            if name in SET_IN_THE_EXAMPLE:
                lines.append(f"{name}={example}")
            else:
                lines.append(f"# {name}={default if default is not None else example or ''}")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def comment(text: str) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent="# ", subsequent_indent="# ", break_long_words=False, break_on_hyphens=False
    )


def generated(root: Path = ROOT, model: type[BaseModel] = Settings) -> dict[Path, str]:
    """What each generated file should hold, by path relative to ``root``."""
    return {
        REFERENCE: configuration_reference((root / REFERENCE).read_text(), model),
        ENV_EXAMPLE: env_example(model),
    }


def stale(root: Path = ROOT, model: type[BaseModel] = Settings) -> list[Path]:
    """The generated files that differ from what ``model`` generates."""
    return [path for path, text in generated(root, model).items() if (root / path).read_text() != text]


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.settings_reference", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not what the settings generate")
    args = parser.parse_args(argv)
    if args.check:
        if outdated := stale(root):
            for path in outdated:
                print(f"{path} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    for path, text in generated(root).items():
        if (root / path).read_text() != text:
            (root / path).write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
