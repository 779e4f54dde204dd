"""The feature transformer's two ways of computing the same numbers: per value for a few rows (the serving path's
single records), vectorised with numpy for more. Both must give the same floats."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from app.contract.features import DATE_PARTS, FEW_ROWS, FeatureTransformer, date_parts


def test_date_parts_of_a_few_days_equal_the_vectorised_ones_on_every_day() -> None:
    first = date(1899, 12, 25)
    days = [(first + timedelta(days=n)).isoformat() for n in range(365 * 140)]  # 1900 and 2000 included
    vectorised = date_parts(days)
    assert vectorised.shape == (len(days), len(DATE_PARTS))
    few = np.concatenate([date_parts(days[start : start + FEW_ROWS]) for start in range(0, len(days), FEW_ROWS)])
    assert np.array_equal(few, vectorised)
    assert date_parts(["2024-02-29"]).tolist() == [[2024.0, 2.0, 29.0, 3.0, 60.0]]  # a Thursday, day 60
    assert date_parts(["1970-01-01"]).tolist() == [[1970.0, 1.0, 1.0, 3.0, 1.0]]


def test_codes_of_a_few_rows_equal_the_vectorised_ones() -> None:
    vocabulary = ["Brasilia", "Campo Grande", "Recife", "Sao Paulo"]
    transformer = FeatureTransformer(categorical=["city"]).fit({"city": vocabulary})
    values = [*vocabulary, "Atlantis", "", "sao paulo", "Recife "] * 10
    few = np.concatenate([transformer.transform({"city": values[i : i + 7]}) for i in range(0, len(values), 7)])
    many = transformer.transform({"city": values})
    assert len(values) > FEW_ROWS
    assert np.array_equal(few, many, equal_nan=True)
    assert many[:8, 0].tolist()[:4] == [0.0, 1.0, 2.0, 3.0] and np.isnan(many[4:8, 0]).all()


def test_the_transform_is_always_the_float_matrix() -> None:
    import sklearn

    transformer = FeatureTransformer(numeric=["x"]).fit({"x": [1.0, 2.0]})
    with sklearn.config_context(transform_output="pandas"):  # a global setting must not hand the model a DataFrame
        out = transformer.transform({"x": [3.0]})
    assert type(out) is np.ndarray and out.dtype == np.float64 and out.tolist() == [[3.0]]


def test_a_few_rows_transform_to_the_same_matrix_as_many() -> None:
    """Up to FEW_ROWS rows every column is read as Python values and converted in one numpy call: the same
    matrix (values, column order, C layout) as the column-by-column numpy path, from lists or a DataFrame."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n_rows = 3 * FEW_ROWS
    days = [(date(2019, 1, 1) + timedelta(days=int(d))).isoformat() for d in rng.integers(0, 1500, n_rows)]
    columns = {
        "time": rng.uniform(0, 10, n_rows).tolist(),
        "stops": rng.integers(0, 3, n_rows).tolist(),  # ints
        "city": rng.choice(["Recife", "Natal", "Salvador", "Unknown"], n_rows).tolist(),
        "agency": rng.choice(["A", "B"], n_rows).tolist(),
        "date": days,
    }
    transformer = FeatureTransformer(numeric=["time", "stops"], categorical=["city", "agency"], dates=["date"])
    transformer.fit({name: values[:-5] for name, values in columns.items()} | {"city": ["Recife", "Natal"] * 10})
    many = transformer.transform(columns)
    assert len(many) > FEW_ROWS
    for size in (1, 2, FEW_ROWS):
        for frame in (False, True):
            parts = []
            for start in range(0, n_rows, size):
                part = {name: values[start : start + size] for name, values in columns.items()}
                parts.append(transformer.transform(pd.DataFrame(part) if frame else part))
            assert all(part.flags.c_contiguous and part.dtype == np.float64 for part in parts)
            assert np.array_equal(np.concatenate(parts), many, equal_nan=True), (size, frame)
