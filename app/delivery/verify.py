"""Verify a pulled bundle before anything serves it: the pull checked each object it read, and the checked-out
directory as a whole is checked here, its DVC hash recomputed from its files (a checkout reused from the volume
was never read by this start's pull), then the bundle's own content hash (``app.contract.bundle``)."""

from __future__ import annotations

from pathlib import Path

from app.contract.bundle import BundleError, Metadata, read_metadata
from app.contract.store import dir_hash
from app.delivery.failures import DeliveryError
from app.delivery.pull import discard


def verify(bundle_dir: Path, dvc_hash: str, *, work: Path | None = None) -> Metadata:
    """The pulled directory's DVC hash must be ``dvc_hash`` and the bundle must pass ``read_metadata``.

    On failure the checked-out bundle and the cache under ``work`` are discarded, so a retry starts clean.
    """
    try:
        actual = dir_hash(bundle_dir) if bundle_dir.is_dir() else "nothing"
        if actual != dvc_hash:
            raise DeliveryError(
                "mismatch",
                f"the pulled bundle's hash {actual} is not the requested {dvc_hash}: a blob in the remote was "
                "altered or corrupted",
                "MODEL_HASH / the registry's tag, and the bundle's objects in the remote: delete the altered ones and "
                "publish the bundle again (publish uploads only what the store lacks)",
            )
        try:
            return read_metadata(bundle_dir)
        except BundleError as exc:
            raise DeliveryError(
                "mismatch", f"the pulled bundle fails verification: {exc}", "the published bundle (re-publish it)"
            ) from None
    except DeliveryError:
        if work is not None:
            discard(work)
        raise
