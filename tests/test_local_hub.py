"""The local Hub server against the real huggingface_hub client: repos, commits, revisions, downloads, access."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_fingerprint.testing import LocalHub



def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _snapshot(repo_id: str, endpoint: str, cache: Path, **kwargs) -> dict[str, bytes]:
    folder = Path(snapshot_download(repo_id, endpoint=endpoint, cache_dir=cache, **kwargs))
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_create_repo_conflicts_unless_exist_ok(local_hub):
    api = HfApi(endpoint=local_hub, token=False)
    url = api.create_repo("alice/model")
    assert url == f"{local_hub}/alice/model" and url.repo_id == "alice/model"
    assert api.create_repo("alice/model", exist_ok=True).repo_id == "alice/model"
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("alice/model")
    assert info.value.response.status_code == 409
    assert [s.rfilename for s in api.model_info("alice/model").siblings] == [".gitattributes"]


def test_upload_then_download_round_trip(local_hub, hf_cache, tmp_path):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/model")
    files = {"README.md": b"---\nlicense: mit\n---\n# hi\n", "config.json": b"{}", "sub/dir/w.bin": os.urandom(5000)}
    info = api.upload_folder(repo_id="alice/model", folder_path=_folder(tmp_path / "up", files))
    model = api.model_info("alice/model", files_metadata=True)
    assert model.sha == info.oid and len(model.sha) == 40
    sizes = {s.rfilename: s.size for s in model.siblings}
    assert sizes.pop(".gitattributes") > 0 and sizes == {k: len(v) for k, v in files.items()}
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree("alice/model", recursive=True)}
    assert tree == {".gitattributes": "RepoFile", "README.md": "RepoFile", "config.json": "RepoFile",
                    "sub": "RepoFolder", "sub/dir": "RepoFolder", "sub/dir/w.bin": "RepoFile"}
    assert {e.path for e in api.list_repo_tree("alice/model", path_in_repo="sub")} == {"sub/dir"}
    downloaded = _snapshot("alice/model", local_hub, hf_cache)
    assert {k: downloaded[k] for k in files} == files


def test_every_commit_is_a_snapshot_old_revisions_and_tags_resolve(local_hub, hf_cache):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/model")
    first = api.create_commit("alice/model", [CommitOperationAdd("a.txt", b"one"), CommitOperationAdd("d/b.txt", b"b")],
                              commit_message="first").oid
    api.create_tag("alice/model", tag="v1", revision=first)
    changes = [CommitOperationDelete("a.txt"), CommitOperationDelete("d/", is_folder=True),
               CommitOperationAdd("c.txt", b"two")]
    second = api.create_commit("alice/model", changes, commit_message="second").oid
    assert second != first
    assert set(_snapshot("alice/model", local_hub, hf_cache, revision="v1")) == {".gitattributes", "a.txt", "d/b.txt"}
    assert set(_snapshot("alice/model", local_hub, hf_cache)) == {".gitattributes", "c.txt"}
    path = hf_hub_download("alice/model", "a.txt", revision=first[:7], endpoint=local_hub, cache_dir=hf_cache)
    assert Path(path).read_bytes() == b"one"
    refs = api.list_repo_refs("alice/model")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second)]
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag("alice/model", tag="v1")
    assert info.value.response.status_code == 409


def test_missing_things_raise_the_client_specific_errors(local_hub, hf_cache):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/model")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/model", "nope.txt", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/none", "a.txt", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/model", ".gitattributes", revision="nobranch", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/model", revision="v9")
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit("alice/model", [CommitOperationDelete("nope.txt")], commit_message="x")


def test_repo_names_cannot_escape_the_storage_root(local_hub):
    for path in ("/api/models/%2E%2E/repos/revision/main", "/api/models/alice/%2E%2E/tree/main",
                 "/%2E%2E/repos/resolve/main/repo.json"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(local_hub + path)
        assert info.value.code == 404 and info.value.headers["X-Error-Code"] == "RepoNotFound"


def test_a_stale_parent_commit_is_refused(local_hub):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/model")
    parent = api.model_info("alice/model").sha
    api.create_commit("alice/model", [CommitOperationAdd("a.txt", b"1")], commit_message="1", parent_commit=parent)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit("alice/model", [CommitOperationAdd("b.txt", b"2")], commit_message="2", parent_commit=parent)
    assert info.value.response.status_code == 412
    assert {s.rfilename for s in api.model_info("alice/model").siblings} == {".gitattributes", "a.txt"}


def test_private_repos_and_write_access_follow_tokens(tmp_path, hf_cache):
    with LocalHub(tmp_path / "hub", tokens={"tok-alice": "alice", "tok-bob": "bob"}) as endpoint:
        alice, bob = HfApi(endpoint=endpoint, token="tok-alice"), HfApi(endpoint=endpoint, token="tok-bob")
        assert alice.whoami()["name"] == "alice"
        alice.create_repo("alice/secret", private=True)
        alice.create_repo("alice/open", private=False)
        assert alice.model_info("alice/secret").private is True
        with pytest.raises(RepositoryNotFoundError):
            bob.model_info("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", ".gitattributes", endpoint=endpoint, token=False, cache_dir=hf_cache)
        assert bob.model_info("alice/open").private is False
        with pytest.raises(HfHubHTTPError) as denied:
            bob.create_commit("alice/open", [CommitOperationAdd("x", b"x")], commit_message="x")
        assert denied.value.response.status_code == 403
        with pytest.raises(HfHubHTTPError) as denied:
            bob.create_repo("alice/other")
        assert denied.value.response.status_code == 403
        with pytest.raises(HfHubHTTPError) as bad:
            HfApi(endpoint=endpoint, token="forged").model_info("alice/open")
        assert bad.value.response.status_code == 401


def test_range_requests(local_hub):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/model")
    content = bytes(range(256)) * 4
    sha = api.create_commit("alice/model", [CommitOperationAdd("w.bin", content)], commit_message="w").oid
    url = f"{local_hub}/alice/model/resolve/main/w.bin"

    def get(range_header: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, headers={"Range": range_header})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, headers, body = get("bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, content[10:20], f"bytes 10-19/{len(content)}")
    assert headers["X-Repo-Commit"] == sha and headers["ETag"].strip('"')
    assert get("bytes=1000-")[2] == content[1000:]
    assert get("bytes=-5")[2] == content[-5:]
    status, headers, _ = get(f"bytes={len(content)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(content)}"


def test_a_download_cut_mid_file_resumes_with_a_range_request(local_hub_server, hf_cache):
    endpoint = local_hub_server.endpoint
    api = HfApi(endpoint=endpoint, token=False)
    api.create_repo("alice/model")
    chunk = hub_constants.DOWNLOAD_CHUNK_SIZE  # the client keeps what it received in whole chunks
    content = os.urandom(chunk + chunk // 2)
    api.create_commit("alice/model", [CommitOperationAdd("w.bin", content)], commit_message="w")
    local_hub_server.fail_next_download("w.bin", after_bytes=chunk + 1000)
    path = hf_hub_download("alice/model", "w.bin", endpoint=endpoint, cache_dir=hf_cache)
    assert Path(path).read_bytes() == content
    gets = [r for r in local_hub_server.requests if r.method == "GET" and r.path.endswith("/w.bin")]
    assert [(r.status, r.range) for r in gets] == [(200, None), (206, f"bytes={chunk}-")]


def test_an_interrupted_snapshot_download_finishes_without_fetching_done_files_again(local_hub_server, hf_cache):
    endpoint = local_hub_server.endpoint
    api = HfApi(endpoint=endpoint, token=False)
    api.create_repo("alice/model")
    files = {f"f{i}.bin": os.urandom(1000 + i) for i in range(4)}
    api.create_commit("alice/model", [CommitOperationAdd(k, v) for k, v in files.items()], commit_message="files")
    local_hub_server.fail_next_download("f2.bin", status=503)
    with pytest.raises(HfHubHTTPError):
        snapshot_download("alice/model", endpoint=endpoint, cache_dir=hf_cache)
    assert {k: v for k, v in _snapshot("alice/model", endpoint, hf_cache).items() if k in files} == files
    fetched = [r.path.rsplit("/", 1)[-1] for r in local_hub_server.requests if r.method == "GET" and r.status == 200
               and "/resolve/" in r.path]
    assert sorted(fetched) == sorted([".gitattributes", *files])  # each file's content travelled once


def test_repos_survive_a_restart(tmp_path, hf_cache):
    with LocalHub(tmp_path / "hub") as endpoint:
        api = HfApi(endpoint=endpoint, token=False)
        api.create_repo("alice/model")
        sha = api.create_commit("alice/model", [CommitOperationAdd("a.txt", b"a")], commit_message="a").oid
    with LocalHub(tmp_path / "hub") as endpoint:
        assert HfApi(endpoint=endpoint, token=False).model_info("alice/model").sha == sha
        path = hf_hub_download("alice/model", "a.txt", endpoint=endpoint, cache_dir=hf_cache)
        assert Path(path).read_bytes() == b"a"
