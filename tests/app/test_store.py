"""The store's layout: the DVC work repository publishing pushes from (private to its owner, never holding a
credential, made even under a uid the image does not know: DVC asks for the user's name, which such a uid has none
of), and a directory's DVC 3 hash computed without DVC, as DVC computes it."""

from __future__ import annotations

import os
import pwd
import stat
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


@pytest.mark.parametrize(
    ("url", "endpoint_url"),
    [("s3://key:s3cr3t-value@bucket/dvc", None), ("s3://bucket/dvc", "https://key:s3cr3t-value@minio:9000")],
    ids=["remote-url", "endpoint-url"],
)
def test_credentials_in_a_url_are_never_written_to_the_dvc_config(
    tmp_path: Path, url: str, endpoint_url: str | None
) -> None:
    """The settings refuse them; a caller that bypasses the settings (``model_copy``) is refused here."""
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID") as refused:
        prepare_work_repo(work, url, endpoint_url=endpoint_url)
    assert "s3cr3t" not in str(refused.value)
    assert not any("s3cr3t" in path.read_text() for path in tmp_path.rglob("config*") if path.is_file())


def test_the_dvc_directory_and_its_config_are_private(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for _ in range(2):  # made, then reconfigured on the next start
        prepare_work_repo(work, "s3://bucket/dvc", endpoint_url="http://minio:9000", region="eu-west-1")
        assert stat.S_IMODE((work / ".dvc").stat().st_mode) == 0o700
        assert stat.S_IMODE((work / ".dvc" / "config").stat().st_mode) == 0o600
    assert "endpointurl = http://minio:9000" in (work / ".dvc" / "config").read_text()


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for relpath, content in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(content)
    return root


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"metadata.json": b"{}", "model.skops": b"\x00" * 4096}, id="flat"),
        pytest.param({"a/b/c.txt": b"deep", "a/b.txt": b"b", "a.txt": b"a", "a-b": b"-", "a0": b"0"}, id="nested"),
        pytest.param({"empty": b"", "also-empty": b"", "same": b"x", "again/same": b"x"}, id="empty-and-equal-files"),
        pytest.param({"with space/file name.txt": b"s", " lead": b"l", "tab\tname": b"t"}, id="spaces"),
        pytest.param({"données/été.csv": "é".encode(), "日本/語": b"j", "Z": b"upper", "z": b"lower"}, id="unicode"),
        pytest.param({"text.txt": b"line\r\nline\r\n", "bin": bytes(range(256))}, id="crlf-and-binary"),
    ],
)
def test_dir_hash_is_dvc_3s_tree_hash(tmp_path: Path, files: dict[str, bytes]) -> None:
    """``dir_hash`` needs no DVC; it must give what dvc_data (installed for publishing) builds for a directory."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    from app.contract.store import dir_hash

    root = _tree(tmp_path / "bundle", files)
    fs = LocalFileSystem()  # type: ignore[no-untyped-call]
    _, _, tree = build(HashFileDB(fs, os.fspath(tmp_path / "odb")), os.fspath(root), fs, "md5")
    assert dir_hash(root) == tree.hash_info.value
