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
