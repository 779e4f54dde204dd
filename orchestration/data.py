"""Raw data: the synthetic flight-price generator, reading any CSV/Parquet file, and the data hash."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from orchestration.config import DataConfig
from orchestration.defaults import DEFAULT_ROWS as DEFAULT_ROWS  # re-exported: callers name it from here too
from orchestration.defaults import DEFAULT_SEED as DEFAULT_SEED

FIRST_DAY: Final = np.datetime64("2019-09-26")
LAST_DAY: Final = np.datetime64("2023-07-24")

# The nine cities of the original data set, with (latitude, longitude).
CITIES: Final[dict[str, tuple[float, float]]] = {
    "Aracaju": (-10.91, -37.07),
    "Brasilia": (-15.79, -47.88),
    "Campo_Grande": (-20.47, -54.62),
    "Florianopolis": (-27.59, -48.55),
    "Natal": (-5.79, -35.21),
    "Recife": (-8.05, -34.88),
    "Rio_de_Janeiro": (-22.91, -43.17),
    "Salvador": (-12.97, -38.50),
    "Sao_Paulo": (-23.55, -46.63),
}
FLIGHT_TYPES: Final = {"economic": (0.50, 1.00), "premium": (0.30, 1.55), "firstClass": (0.20, 2.40)}
AGENCIES: Final = {"CloudFy": (0.40, 1.00), "FlyingDrops": (0.35, 1.12), "Rainbow": (0.25, 0.93)}
# Month (1-12) -> demand factor: summer holidays (Dec-Feb), July holidays, quiet autumn.
SEASON: Final = np.array([1.18, 1.06, 0.95, 0.92, 0.90, 0.97, 1.15, 1.00, 0.94, 0.96, 1.02, 1.22])
# Weekday (Monday=0) -> factor: Friday and Sunday departures cost more.
WEEKDAY: Final = np.array([1.00, 0.93, 0.93, 0.98, 1.08, 1.01, 1.10])
COLUMNS: Final = ("from_location", "to_location", "flight_type", "agency", "time", "distance", "date", "price")


class DataError(ValueError):
    """The data file cannot be read."""


def _route_distance_km(a: str, b: str) -> float:
    (lat1, lon1), (lat2, lon2) = (np.radians(CITIES[a]), np.radians(CITIES[b]))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return float(round(2 * 6371.0 * np.arcsin(np.sqrt(h)) * 1.08, 2))  # air routes are not great circles


def generate(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """A deterministic, believable flight-price data set with the original project's schema."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    cities = list(CITIES)
    origin = rng.integers(0, len(cities), rows)
    destination = (origin + rng.integers(1, len(cities), rows)) % len(cities)  # never the origin
    distance_table = np.array([[_route_distance_km(a, b) if a != b else 0.0 for b in cities] for a in cities])
    distance = distance_table[origin, destination]
    time = np.round(distance / 780.0 + 0.45, 2)

    flight_type = rng.choice(len(FLIGHT_TYPES), rows, p=[p for p, _ in FLIGHT_TYPES.values()])
    agency = rng.choice(len(AGENCIES), rows, p=[p for p, _ in AGENCIES.values()])
    span = int((LAST_DAY - FIRST_DAY).astype(np.int64))
    day = FIRST_DAY + rng.integers(0, span + 1, rows).astype("timedelta64[D]")
    month = day.astype("datetime64[M]").astype(np.int64) % 12
    weekday = (day.astype(np.int64) + 3) % 7
    years_since_start = (day - FIRST_DAY).astype(np.int64) / 365.25

    # Booking lead time is not in the schema, so its effect is part of the noise a model cannot remove.
    lead_days = rng.gamma(2.0, 15.0, rows)
    booking = 1.0 + 0.35 * np.exp(-lead_days / 7.0)

    base = 95.0 + 0.42 * distance
    price = (
        base
        * np.array([m for _, m in FLIGHT_TYPES.values()])[flight_type]
        * np.array([m for _, m in AGENCIES.values()])[agency]
        * SEASON[month]
        * WEEKDAY[weekday]
        * 1.06**years_since_start
        * booking
        * rng.lognormal(0.0, 0.06, rows)
    )
    return pd.DataFrame(
        {
            "from_location": np.array(cities)[origin],
            "to_location": np.array(cities)[destination],
            "flight_type": np.array(list(FLIGHT_TYPES))[flight_type],
            "agency": np.array(list(AGENCIES))[agency],
            "time": time,
            "distance": distance,
            "date": np.datetime_as_string(day, unit="D"),
            "price": np.round(price, 2),
        },
        columns=list(COLUMNS),
    )


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a data set as CSV with a fixed float format, so the same data gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.2f", lineterminator="\n")
    return path


def read_data(path: Path, config: DataConfig) -> pd.DataFrame:
    """Read a CSV or Parquet file. Categorical and date columns are read as text; numbers are checked later."""
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    text_columns = {name: "string" for name in (*config.categorical, *config.dates)}
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=text_columns, keep_default_na=True)
        elif suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
            for name in text_columns:
                if name in frame.columns:
                    frame[name] = frame[name].astype("string")
        else:
            raise DataError(f"data file {path}: unsupported format {suffix!r} (use .csv or .parquet)")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data file {path} cannot be read: {exc}") from exc
    return frame
