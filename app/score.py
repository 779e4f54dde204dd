"""Offline scoring: ``python -m app.score INPUT OUTPUT --bundle DIR`` (or ``--model models:/NAME@ALIAS``).

Scores a CSV or Parquet file of records through what the server runs for a request: the bundle's request schema
(``app.model.schema.RecordSchema.parse_columns``, the rules of the records API and of the V2 columnar tensors)
and the server's predictions (the bundle's serving form, bit-identical to ``Bundle.predict``), so a row
scored here gets the very float ``/predict`` answers for it. The file is read and written in chunks of
``--chunk-rows`` rows (pyarrow's streaming CSV reader, ``ParquetFile.iter_batches``), so memory stays bounded by
the chunk, whatever the file's size; the chunk size does not change any answer.

- Input: every feature column of the bundle (other columns are allowed and kept; the records API refuses them,
  a file carries ids and the like). A CSV is read as text and each feature decoded as the JSON API decodes it: a
  number column must hold numbers (an integral feature takes ``3`` or ``3.0``), a category one of the training
  categories, a date a real ``YYYY-MM-DD`` day within the feature's limits; a Parquet file's typed columns are
  taken as they are (a ``date32`` column as its ISO days).
- Output: a Parquet file with the input's columns (``--keep`` names the ones to keep instead, e.g. an id column;
  a CSV's other columns stay text) and ``prediction`` (float64), row for row in the input's order.
- A bad row (a missing or non-numeric value, a value the request schema refuses) fails the whole file: the
  message names the first bad row (data rows counted from 1, the CSV header not counted), its column, the value
  and the rule, and no output is left behind (it is written to a temporary file beside OUTPUT and renamed at the
  end). Exit codes: 0 done, 1 bad input, 2 usage; a ``models:/`` URI that cannot be delivered exits with the
  entrypoint's code for that failure (``app.delivery.failures.EXIT_CODES``).
- Progress: a tqdm bar on stderr (rows, rows/s), then one summary line; ``--no-progress`` keeps the summary only.

``--model models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) resolves and pulls the bundle as the serving
container does (``app.delivery``: the registry's ``bundle_dvc_hash`` tag, the pull, both hashes verified), from
the same environment: ``MLFLOW_TRACKING_URI``, ``DVC_REMOTE_URL`` (and ``DVC_REMOTE_ENDPOINT_URL``) and the S3
credentials; into ``--model-dir`` (default ``MODEL_DIR`` if set, else ``~/.cache/flight-price/score``), where a
verified copy is reused.

Needs pyarrow and tqdm: the development environment has them; the serving image (the ``serve`` group) has no
pyarrow, so this command runs where training runs, not in the serving container.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from app.contract.bundle import BundleError, Feature, ServingBundle, load_serving_bundle
from app.model.schema import RecordSchema, RequestError

PREDICTION: Final = "prediction"  # the output column, as the records API names its answer
DEFAULT_CHUNK_ROWS: Final = 50_000
CSV_BLOCK_BYTES: Final = 4 << 20  # pyarrow's CSV reader reads this many bytes at a time
MODEL_URI: Final = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
PREFIX: Final = "score:"


class ScoreError(Exception):
    """The input cannot be scored: the message says where and why."""


@dataclass(frozen=True)
class Scored:
    rows: int
    seconds: float
    chunks: int
    outside_training: dict[str, int]  # per feature, values outside the range seen in training (never refused)


def _pyarrow() -> Any:
    try:
        import pyarrow  # type: ignore[import-untyped]
        import pyarrow.compute  # type: ignore[import-untyped]
        import pyarrow.csv  # type: ignore[import-untyped]
        import pyarrow.parquet  # type: ignore[import-untyped]
    except ImportError as exc:  # the serving image: no pyarrow
        raise ScoreError(f"offline scoring needs pyarrow, which this environment lacks ({exc})") from None
    return pyarrow


def input_kind(path: Path) -> str:
    """``csv`` or ``parquet``, from the file's suffix."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ScoreError(f"{path}: not a .csv or .parquet file")


def csv_header(path: Path) -> list[str]:
    """The CSV's column names (its first line)."""
    with path.open(newline="", encoding="utf-8") as file:
        try:
            return next(csv.reader(file))
        except StopIteration:
            raise ScoreError(f"{path}: empty file, no header") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ScoreError(f"{path}: unreadable CSV header: {exc}") from None


def batches(path: Path, chunk_rows: int) -> tuple[list[str], Iterator[Any]]:
    """The file's column names and its record batches (any size; ``chunks`` cuts them)."""
    pa = _pyarrow()
    try:
        if input_kind(path) == "csv":
            names = csv_header(path)
            reader = pa.csv.open_csv(
                path,
                read_options=pa.csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                # every column as text: each feature is decoded below as the JSON API decodes it, with its row named
                convert_options=pa.csv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
                ),
            )
            return names, iter(reader)
        parquet = pa.parquet.ParquetFile(path)
        return parquet.schema_arrow.names, parquet.iter_batches(batch_size=chunk_rows)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ScoreError(f"{path}: cannot be read: {exc}") from None


def chunks(source: Iterator[Any], chunk_rows: int, path: Path) -> Iterator[Any]:
    """``source``'s rows in tables of exactly ``chunk_rows`` rows (the last one shorter), in order."""
    pa = _pyarrow()
    pending: list[Any] = []
    held = 0
    try:
        for batch in source:
            pending.append(batch)
            held += batch.num_rows
            while held >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk_rows)
                rest = table.slice(chunk_rows)
                pending, held = rest.to_batches(), rest.num_rows
    except pa.ArrowInvalid as exc:  # a CSV whose later lines do not parse (a wrong number of fields)
        raise ScoreError(f"{path}: cannot be read: {exc}") from None
    if held:
        yield pa.Table.from_batches(pending)


def decode(column: Any, feature: Feature, first_row: int) -> list[Any]:
    """One feature's values as the JSON API would decode them: numbers for a numeric feature (text parsed, a bad
    one named by its row), ISO days as text for a date; categories as they are. ``parse_columns`` then applies
    the request schema's rules."""
    pa = _pyarrow()
    if feature.kind == "numeric" and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            return list(pa.compute.cast(column, pa.float64()).to_pylist())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for row, text in enumerate(column.to_pylist()):  # the first value the cast refuses, by its row
                try:
                    pa.compute.cast(pa.array([text], pa.string()), pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise ScoreError(
                        f"row {first_row + row}, column {feature.name}: {text!r} is not a number"
                    ) from None
            raise
    if feature.kind == "date" and pa.types.is_date(column.type):
        return list(pa.compute.strftime(column, format="%Y-%m-%d").to_pylist())
    return list(column.to_pylist())


def refusal(exc: RequestError, columns: dict[str, list[Any]], first_row: int) -> ScoreError:
    """The request schema's first refusal in a chunk, with the row counted in the file and the value shown."""
    error = exc.errors[0]
    if "row" in error:
        row, field = int(error["row"]), str(error["field"])
        rule = str(error["msg"]).split(": ", 1)[-1]
        value = columns[field][row]
        return ScoreError(f"row {first_row + row}, column {field}: {rule} (value {value!r})")
    return ScoreError(str(error["msg"]))


def score(
    bundle: ServingBundle,
    source: Path,
    out: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    keep: Sequence[str] | None = None,
    progress: bool = True,
) -> Scored:
    """Score ``source`` (CSV or Parquet) with ``bundle`` into the Parquet file ``out``; see the module's doc."""
    if chunk_rows < 1:
        raise ScoreError(f"--chunk-rows must be at least 1, not {chunk_rows}")
    pa = _pyarrow()
    from tqdm import tqdm  # type: ignore[import-untyped]

    schema = RecordSchema.from_metadata(bundle.metadata, max_records=chunk_rows)
    features = {feature.name: feature for feature in bundle.metadata.features}
    names, source_batches = batches(source, chunk_rows)
    missing = [name for name in features if name not in names]
    if missing:
        raise ScoreError(f"{source}: no column {', '.join(missing)} (every feature of the model is required)")
    kept = list(names if keep is None else keep)
    if unknown := [name for name in kept if name not in names]:
        raise ScoreError(f"--keep {', '.join(unknown)}: no such column in {source}")
    if PREDICTION in kept:
        raise ScoreError(f"{source} already has a column {PREDICTION!r}: leave it out with --keep")
    total = pa.parquet.ParquetFile(source).metadata.num_rows if input_kind(source) == "parquet" else None
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    rows = n_chunks = 0
    outside = dict.fromkeys(schema.training_ranges, 0)
    started = time.monotonic()
    bar = tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr, disable=not progress, desc=PREFIX)
    try:
        for table in chunks(source_batches, chunk_rows, source):
            first_row = rows + 1
            columns = {name: decode(table.column(name), features[name], first_row) for name in features}
            try:
                parsed = schema.parse_columns(columns)
            except RequestError as exc:
                raise refusal(exc, columns, first_row) from None
            values = schema.columns(parsed)
            for name, count in schema.outside_training(values).items():
                outside[name] += count
            predictions = bundle.predict(values)
            result = table.select(kept).append_column(PREDICTION, pa.array(predictions, type=pa.float64()))
            if writer is None:
                writer = pa.parquet.ParquetWriter(partial, result.schema)
            writer.write_table(result)
            rows += table.num_rows
            n_chunks += 1
            bar.update(table.num_rows)
        if writer is None:  # no data rows: an empty file of the same columns
            empty = pa.table({name: pa.array([], type=pa.string()) for name in kept})
            writer = pa.parquet.ParquetWriter(
                partial, empty.append_column(PREDICTION, pa.array([], pa.float64())).schema
            )
        writer.close()
        writer = None
        os.replace(partial, out)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return Scored(rows, time.monotonic() - started, n_chunks, {k: v for k, v in outside.items() if v})


def bundle_from_registry(uri: str, model_dir: Path) -> Path:
    """The bundle ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names, delivered as the serving container's
    start-up delivers it (``app.delivery``), from the connection settings in the environment."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise ScoreError(f"--model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    from app.delivery.fetch import fetch
    from app.delivery.resolve import resolve
    from app.delivery.retry import deadline_for
    from app.settings import load_settings

    settings = load_settings().model_copy(
        update={
            "model_name": match["name"],
            "model_alias": match["alias"] or "champion",
            "model_version": int(match["version"]) if match["version"] else None,
            "model_hash": None,
            "bundle_dir": None,
            "model_dir": model_dir,
        }
    )
    deadline = deadline_for(settings)
    resolved = resolve(settings, say, deadline=deadline)
    say(f"resolve: {resolved.source}: bundle {resolved.dvc_hash}")
    from app.delivery.pull import configure_remote

    configure_remote(settings)
    return fetch(settings, resolved.dvc_hash, deadline=deadline, report=say).bundle_dir


def say(message: str) -> None:
    from app.contract.connection import redact

    print(f"{PREFIX} {redact(message)}", file=sys.stderr, flush=True)


def default_model_dir() -> Path:
    if given := os.environ.get("MODEL_DIR"):
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or os.fspath(Path.home() / ".cache")
    return Path(cache) / "flight-price" / "score"


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="python -m app.score",
        description="Score a CSV or Parquet file of flight records with the server's predictions, in chunks, into a "
        f"Parquet file: the input's columns (or --keep's) and {PREDICTION!r}. A bad row fails the whole file, "
        "named by its row (data rows counted from 1), and no output is written.",
    )
    parse.add_argument("input", type=Path, help="a .csv (with a header) or .parquet file holding every feature column")
    parse.add_argument("output", type=Path, help="the Parquet file to write (replaced if it exists)")
    which = parse.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", type=Path, help="a bundle directory (metadata.json, serving.npz, ...)")
    which.add_argument(
        "--model",
        help="models:/NAME@ALIAS or models:/NAME/VERSION, resolved through MLFLOW_TRACKING_URI and pulled from "
        "DVC_REMOTE_URL as the serving container does",
    )
    parse.add_argument(
        "--model-dir", type=Path, default=None, help="where --model's bundle is pulled (default: MODEL_DIR if set, "
        "else ~/.cache/flight-price/score); a verified copy there is reused",
    )  # fmt: skip
    parse.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per chunk (memory bound)")
    parse.add_argument(
        "--keep", action="append", default=None, metavar="COLUMN",
        help="an input column to copy into the output (repeatable; default: every input column)",
    )  # fmt: skip
    parse.add_argument("--no-progress", action="store_true", help="no progress bar, only the summary line")
    return parse


def fail(message: str, code: int) -> NoReturn:
    print(f"{PREFIX} error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.bundle is not None:
            bundle_dir = args.bundle
        else:
            from app.delivery.failures import DeliveryError
            from app.settings import SettingsError

            try:
                bundle_dir = bundle_from_registry(args.model, args.model_dir or default_model_dir())
            except DeliveryError as exc:
                fail(str(exc), exc.exit_code)
            except SettingsError as exc:
                fail(str(exc), 2)
        bundle = load_serving_bundle(bundle_dir)
        done = score(
            bundle,
            args.input,
            args.output,
            chunk_rows=args.chunk_rows,
            keep=args.keep,
            progress=not args.no_progress,
        )
    except (ScoreError, BundleError) as exc:
        fail(f"{args.input}: {exc}" if not str(exc).startswith(str(args.input)) else str(exc), 1)
    rate = done.rows / done.seconds if done.seconds > 0 else math.inf
    drift = ", ".join(f"{name} {count}" for name, count in done.outside_training.items()) or "none"
    say(
        f"{done.rows} rows in {done.chunks} chunks of up to {args.chunk_rows} in {done.seconds:.2f}s "
        f"({rate:,.0f} rows/s) -> {args.output} (bundle {bundle.content_hash[:12]}; values outside the training "
        f"range: {drift})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
