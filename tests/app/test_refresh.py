"""The alias refresh's rules, apart from delivery: which candidate schemas its clients can use, and when a refused
candidate is tried again (the whole refresh against real services: tests/integration/test_refresh.py)."""

from __future__ import annotations

import math
import time

import pytest

from app.contract.bundle import Feature, Metadata, Target
from app.delivery.resolve import Resolved
from app.runtime.refresh import schema_changes
from app.runtime.state import Candidate
from tests.harness.serving import metadata_for

FEATURES = [
    Feature(name="time", kind="numeric", dtype="float", minimum=0.1, maximum=24.0),
    Feature(name="stops", kind="numeric", dtype="int"),
    Feature(name="agency", kind="categorical", dtype="str", categories=["A", "B"]),
    Feature(name="date", kind="date", dtype="date", minimum="2019-01-01", maximum="2030-12-31",
            observed_minimum="2019-01-01", observed_maximum="2020-12-31"),
]  # fmt: skip
EXAMPLE = {"time": 1.0, "stops": 0, "agency": "A", "date": "2020-01-01"}


def with_feature(name: str, **changes: object) -> Metadata:
    return metadata_for([f.model_copy(update=changes) if f.name == name else f for f in FEATURES], EXAMPLE)


SERVED = metadata_for(FEATURES, EXAMPLE)


@pytest.mark.parametrize(
    ("candidate", "change"),
    [
        (metadata_for(FEATURES[:-1], EXAMPLE), "features removed: date"),
        (metadata_for([*FEATURES, Feature(name="cabin", kind="categorical", dtype="str", categories=["x"])], EXAMPLE),
         "features added: cabin"),
        (with_feature("stops", dtype="float"), "stops: numeric int became numeric float"),
        (with_feature("agency", categories=["A"]), "agency: categories dropped: B"),
        (with_feature("time", minimum=1.0), "time: minimum raised from 0.1 to 1.0"),
        (with_feature("time", maximum=None, minimum=None), None),  # wider: every served request still fits
        (with_feature("stops", maximum=3), "stops: maximum lowered from None to 3"),
        (with_feature("date", maximum="2025-12-31"), "date: maximum lowered from 2030-12-31 to 2025-12-31"),
        (with_feature("agency", categories=["A", "B", "C"]), None),  # a category added: compatible
        (SERVED.model_copy(update={"target": Target(name="fare", minimum=1.0, maximum=2.0, mean=1.5)}),
         "it predicts 'fare', not 'price'"),
    ],
)  # fmt: skip
def test_schema_changes_name_what_would_refuse_or_misread_a_served_request(
    candidate: Metadata, change: str | None
) -> None:
    assert schema_changes(SERVED, candidate) == ([change] if change else [])


def test_a_refused_candidate_waits_for_the_alias_to_move_or_its_retry_time() -> None:
    resolved = Resolved("0" * 32 + ".dir", "alias", version=3)
    forever = Candidate(3, resolved.dvc_hash, "refused", "schema", retry_at=math.inf)
    assert forever.waiting(resolved)
    assert not forever.waiting(Resolved("1" * 32 + ".dir", "alias", version=4))  # the alias moved
    later = Candidate(3, resolved.dvc_hash, "refused", "unreachable", retry_at=time.monotonic() + 60)
    due = Candidate(3, resolved.dvc_hash, "refused", "unreachable", retry_at=time.monotonic() - 1)
    assert later.waiting(resolved) and not due.waiting(resolved)
    assert not Candidate(3, resolved.dvc_hash, "loading").waiting(resolved)
