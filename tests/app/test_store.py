"""The DVC work repository under a uid the image does not know (platforms that run containers under
arbitrary uids): DVC asks for the user's name, which such a uid has none of."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import NoReturn

import pytest

from app.contract.store import prepare_work_repo


def test_a_uid_without_a_name_still_gets_a_work_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def unknown(uid: int) -> NoReturn:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    work = tmp_path / "work"
    prepare_work_repo(work, os.fspath(tmp_path / "remote"))  # failed with that KeyError before
    from dvc.repo import Repo

    with Repo(os.fspath(work)) as repo:  # what `dvc pull` opens
        assert Path(repo.site_cache_dir).is_relative_to(work)
    assert os.environ["USER"] == f"uid-{os.getuid()}"
