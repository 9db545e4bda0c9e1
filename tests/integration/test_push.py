"""`packager.publish.hub.push` / `unswift push` against the loopback Hub double: one commit, a tag, idempotent
re-runs, stale files deleted in the same commit, visibility rules, and every bad input refused before any
upload."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.hub_double import DEFAULT_TOKEN, READ_TOKEN, fake_release

from packager.cli import cli
from packager.errors import UsageError
from packager.publish import hub

REPO_ROOT = Path(__file__).resolve().parents[2]


def release_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def remote_release(double, repo_id: str, rev: str) -> dict[str, bytes]:
    files = double.repo(repo_id).files(rev)
    assert files.pop(".gitattributes", None) is not None, "the Hub-owned .gitattributes must never be deleted"
    return files


def do_push(double, folder: Path, repo_id: str = "org/model", **kwargs) -> hub.PushResult:
    return hub.push(folder, repo_id, endpoint=double.url, token=DEFAULT_TOKEN, no_xet=True, **kwargs)


def run_cli(double, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["push", *args, "--endpoint", double.url, "--no-xet", "--json"])
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, (result.stdout, result.stderr, result.exception)
    return result.exit_code, json.loads(lines[0])


def commit_posts(double) -> int:
    return double.count("POST", r"/commit/")


# ------------------------------------------------------------------------------------------- success paths
def test_push_one_commit_then_tag(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1", shards=2)
    result = do_push(hub_double, release, tag="v1")

    repo = hub_double.repo("org/model")
    assert result.new_commit is True
    assert result.tag == "v1" and repo.tags["v1"] == result.revision == repo.branches["main"]
    assert remote_release(hub_double, "org/model", "v1") == release_files(release)
    assert [c.title for c in repo.history()] == ["Release v1", "initial commit"]  # ONE commit of ours
    assert commit_posts(hub_double) == 1
    assert repo.private is True
    assert result.to_json() == {
        "repo": "org/model",
        "revision": result.revision,
        "tag": "v1",
        "url": f"{hub_double.url}/org/model",
        "release_dir": str(release),
        "new_commit": True,
    }
    # safetensors went through LFS (batch + PUT + verify), the JSON files inline in the commit
    assert hub_double.count("PUT", r"/lfs-upload/") == 2
    assert all(blob.lfs for path, blob in repo.blobs("v1").items() if path.endswith(".safetensors"))


def test_repush_identical_makes_no_commit_and_uploads_nothing(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    first = do_push(hub_double, release, tag="v1")
    before = len(hub_double.requests)

    again = do_push(hub_double, release, tag="v1")
    assert again.new_commit is False and again.revision == first.revision
    assert len(hub_double.repo("org/model").history()) == 2
    later = hub_double.requests[before:]
    assert not [r for r in later if r.method in ("PUT",) or "/commit/" in r.path or "/preupload/" in r.path]


def test_branch_already_holds_release_only_tag_is_added(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    first = do_push(hub_double, release, tag="v1")
    second = do_push(hub_double, release, tag="also-v1")
    assert second.new_commit is False
    assert hub_double.repo("org/model").tags == {"v1": first.revision, "also-v1": first.revision}
    assert commit_posts(hub_double) == 1


def test_default_tag_is_deterministic(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    tag = hub.default_tag(release)
    assert tag.startswith("v0.1.0-") and len(tag) == len("v0.1.0-") + 8
    assert hub.default_tag(release) == tag
    assert hub.default_tag(fake_release(tmp_path / "r2", seed=5)) != tag
    assert do_push(hub_double, release).tag == tag
    assert do_push(hub_double, release).new_commit is False


def test_fewer_shards_deletes_stale_files_in_the_same_single_commit(hub_double, tmp_path):
    old = fake_release(tmp_path / "old", shards=2)
    new = fake_release(tmp_path / "new", shards=1, seed=1)
    first = do_push(hub_double, old, tag="v1")
    second = do_push(hub_double, new, tag="v2")

    repo = hub_double.repo("org/model")
    assert [c.title for c in repo.history()] == ["Release v2", "Release v1", "initial commit"]
    assert remote_release(hub_double, "org/model", "v2") == release_files(new)
    assert "model-00001-of-00002.safetensors" not in repo.files("main")
    assert repo.tags == {"v1": first.revision, "v2": second.revision}
    assert remote_release(hub_double, "org/model", "v1") == release_files(old)


def test_gated_and_private(hub_double, tmp_path):
    do_push(hub_double, fake_release(tmp_path / "r1"), tag="v1", gated="manual")
    repo = hub_double.repo("org/model")
    assert repo.private is True and repo.gated == "manual"


def test_public_flag_makes_private_repo_public_only_after_tagging(hub_double, tmp_path):
    hub_double.add_repo("org/model", private=True)
    result = do_push(hub_double, fake_release(tmp_path / "r1"), tag="v1", private=False, public=True)
    repo = hub_double.repo("org/model")
    assert repo.private is False and repo.tags["v1"] == result.revision
    settings = [i for i, r in enumerate(hub_double.requests) if r.path.endswith("/settings")]
    tags = [i for i, r in enumerate(hub_double.requests) if "/tag/" in r.path]
    assert settings and tags and settings[-1] > tags[-1]


def test_push_to_branch_and_pull_request(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    staged = do_push(hub_double, release, tag="rc1", revision="staging")
    repo = hub_double.repo("org/model")
    assert repo.branches["staging"] == staged.revision != repo.branches["main"]

    other = fake_release(tmp_path / "r2", seed=3)
    pr = do_push(hub_double, other, create_pr=True)
    assert pr.tag is None and pr.pr_url.endswith("/discussions/1") and repo.prs == [pr.revision]
    again = do_push(hub_double, other, create_pr=True, tag="v2")  # re-run: reuses the open PR
    assert again.new_commit is False and again.pr_url == pr.pr_url and len(repo.prs) == 1
    assert again.tag is None and "v2" not in repo.tags  # no tag before the merge


def test_card_with_broken_metadata_is_bad_input(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    (release / "README.md").write_text("---\nlicense: apache-2.0\n# the header is never closed\n")
    code, payload = run_cli(hub_double, str(release), "--repo", "org/model", "--tag", "v1")
    assert code == 2 and payload["step"] == "README validation" and "README.md" in payload["error"]
    assert hub_double.count("PUT", "/lfs-upload/") == 0 and hub_double.repo("org/model").tags == {}


def test_download_release_round_trip(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1", shards=2)
    do_push(hub_double, release, tag="v1")
    do_push(hub_double, fake_release(tmp_path / "r2", seed=2), tag="v2")
    folder = hub.download_release(
        "org/model", revision="v1", endpoint=hub_double.url, token=DEFAULT_TOKEN, cache_dir=tmp_path / "cache"
    )
    got = release_files(folder)
    assert got.pop(".gitattributes")
    assert got == release_files(release)

    with pytest.raises(UsageError, match="revision 'v9' does not exist"):
        hub.download_release(
            "org/model",
            revision="v9",
            endpoint=hub_double.url,
            token=DEFAULT_TOKEN,
            cache_dir=tmp_path / "cache",
        )
    with pytest.raises(UsageError, match="'org/missing' was not found"):
        hub.download_release(
            "org/missing", endpoint=hub_double.url, token=DEFAULT_TOKEN, cache_dir=tmp_path / "cache"
        )


def test_cli_push_in_a_subprocess(hub_double, tmp_path):
    """The real console path: env from the fixture (HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET), no options."""
    release = fake_release(tmp_path / "r1")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from packager.cli import main; main()",
            "push",
            str(release),
            "--repo",
            "org/model",
            "--tag",
            "v1",
            "--json",
            "--quiet",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ok"] is True and payload["command"] == "push" and payload["new_commit"] is True
    assert hub_double.repo("org/model").tags["v1"] == payload["revision"]
    assert proc.stderr == ""  # --quiet


# ------------------------------------------------------------------------------------------- refusals
def test_public_repo_without_public_flag_is_refused_and_nothing_pushed(hub_double, tmp_path):
    hub_double.add_repo("org/model", private=False)
    code, payload = run_cli(
        hub_double, str(fake_release(tmp_path / "r1")), "--repo", "org/model", "--tag", "v1"
    )
    assert code == 2 and payload["ok"] is False
    assert "'org/model' is public" in payload["error"] and "--public" in payload["error"]
    assert len(hub_double.repo("org/model").history()) == 1
    assert hub_double.count(path_regex=r"/preupload/|/commit/|/lfs") == 0


@pytest.mark.parametrize("bad", ["model-only", "org/na me", "org/name/extra", "org/-bad", "org/a--b"])
def test_malformed_repo_id(hub_double, tmp_path, bad):
    code, payload = run_cli(hub_double, str(fake_release(tmp_path / "r1")), "--repo", bad)
    assert code == 2 and f"'{bad}'" in payload["error"]
    assert ("ORG/NAME" in payload["error"]) or ("letters, digits" in payload["error"])
    assert hub_double.requests == []


def test_missing_token_gives_the_fix(hub_double, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, payload = run_cli(hub_double, str(fake_release(tmp_path / "r1")), "--repo", "org/model")
    assert code == 2 and "no Hugging Face token" in payload["error"]
    assert "export HF_TOKEN=" in payload["error"] and "hf auth login" in payload["error"]
    assert hub_double.requests == []


def test_rejected_and_read_only_tokens(hub_double, tmp_path, monkeypatch):
    release = fake_release(tmp_path / "r1")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, payload = run_cli(hub_double, str(release), "--repo", "org/model")
    assert code == 2 and "rejected the token" in payload["error"] and "HF_TOKEN" in payload["error"]

    hub_double.add_repo("org/model")
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    code, payload = run_cli(hub_double, str(release), "--repo", "org/model")
    assert code == 2 and "may not write" in payload["error"] and payload["status"] == 403
    assert len(hub_double.repo("org/model").history()) == 1


def test_unreachable_endpoint_is_exit_3(tmp_path, monkeypatch, hub_fast_retries):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    result = CliRunner().invoke(
        cli,
        [
            "push",
            str(fake_release(tmp_path / "r1")),
            "--repo",
            "org/model",
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--no-xet",
            "--json",
        ],
    )
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 3 and payload["step"] == "read repo info"
    assert "could not connect" in payload["error"] and "re-run" in payload["error"]


def test_tag_at_a_different_commit_is_refused_before_any_upload(hub_double, tmp_path):
    first = do_push(hub_double, fake_release(tmp_path / "r1"), tag="v1")
    before = len(hub_double.requests)
    code, payload = run_cli(
        hub_double, str(fake_release(tmp_path / "r2", seed=9)), "--repo", "org/model", "--tag", "v1"
    )
    assert code == 2 and f"tag 'v1' already points at {first.revision}" in payload["error"]
    assert "choose a new tag" in payload["error"]
    assert hub_double.repo("org/model").tags["v1"] == first.revision
    assert len(hub_double.repo("org/model").history()) == 2
    assert not [
        r
        for r in hub_double.requests[before:]
        if r.method == "PUT" or "/commit/" in r.path or "/preupload/" in r.path
    ]


def test_release_folder_checks(hub_double, tmp_path):
    unsigned = fake_release(tmp_path / "r1", signed=False)
    code, payload = run_cli(hub_double, str(unsigned), "--repo", "org/model")
    assert code == 2 and "not signed" in payload["error"] and "--allow-unsigned" in payload["error"]
    code, payload = run_cli(
        hub_double, str(unsigned), "--repo", "org/model", "--allow-unsigned", "--tag", "v1"
    )
    assert code == 0 and payload["tag"] == "v1"

    (unsigned / "unswift.json").unlink()
    code, payload = run_cli(hub_double, str(unsigned), "--repo", "org/other")
    assert code == 2 and "'unswift.json' is missing" in payload["error"]
    code, payload = run_cli(hub_double, str(tmp_path / "nope"), "--repo", "org/other")
    assert code == 2 and "does not exist" in payload["error"]


@pytest.mark.parametrize(
    "tag", ["bad tag", "-x", "a..b", "v1.lock", "0123456789abcdef0123456789abcdef01234567"]
)
def test_bad_tag_names(hub_double, tmp_path, tag):
    code, payload = run_cli(
        hub_double, str(fake_release(tmp_path / "r1")), "--repo", "org/model", "--tag", tag
    )
    assert code == 2 and f"tag '{tag}'" in payload["error"] and hub_double.requests == []


def test_xet_only_client_against_lfs_hub_says_no_xet(hub_double, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(UsageError, match="does not offer Xet") as info:
        hub.push(fake_release(tmp_path / "r1"), "org/model", endpoint=hub_double.url, token=DEFAULT_TOKEN)
    assert "--no-xet" in str(info.value)
    assert hub_double.repo("org/model").tags == {}  # nothing tagged
    assert hf_constants.HF_HUB_DISABLE_XET is False  # push restores the client setting


def test_git_and_cache_folders_are_not_pushed(hub_double, tmp_path):
    release = fake_release(tmp_path / "r1")
    local_only = {".git/HEAD", ".cache/huggingface/upload.lock", "docs/.git/config"}
    for name in (*local_only, "docs/notes.md"):
        (release / name).parent.mkdir(parents=True, exist_ok=True)
        (release / name).write_text(name)
    do_push(hub_double, release, tag="v1")
    pushed = remote_release(hub_double, "org/model", "v1")
    assert set(pushed) == set(release_files(release)) - local_only
    assert "docs/notes.md" in pushed


# ------------------------------------------------------------------------------------------- helpers
def test_looks_like_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_repo_id("org/model") and hub.looks_like_repo_id("Org_1/model-v2.0")
    for text in ("model", "./org/x", "/abs/x", "~/x", "org/x/y", "org/", "", "org/model\n"):
        assert not hub.looks_like_repo_id(text), text
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not hub.looks_like_repo_id("org/model")  # an existing path is a path


def test_one_retry_helper_keeps_the_waits_and_limits(monkeypatch):
    import types

    from packager.publish.hub import retry

    slept: list[float] = []
    said: list[str] = []
    calls: list[int] = []
    monkeypatch.setattr(retry, "time", types.SimpleNamespace(sleep=slept.append))

    def down() -> None:
        calls.append(1)
        raise OSError("down")

    def run(**kwargs):
        for seen in (calls, slept, said):
            seen.clear()
        return retry.with_retries(
            kwargs.pop("attempt", down), between=lambda err, wait: f"{err}; {wait:g}s", say=said.append, **kwargs
        )

    with pytest.raises(OSError):  # an idempotent step: three tries, after 1 s and 4 s
        run(retryable=lambda err: True)
    assert len(calls) == 3 and slept == [1.0, 4.0] and said == ["down; 1s", "down; 4s"]
    with pytest.raises(OSError):  # the commit POST: at most twice, after 1 s
        run(retryable=lambda err: True, attempts=retry.COMMIT_ATTEMPTS)
    assert len(calls) == 2 and slept == [1.0]
    with pytest.raises(OSError):  # not retryable: once, no wait
        run(retryable=lambda err: False)
    assert len(calls) == 1 and slept == [] and said == []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("blip")
        return "done"

    assert run(attempt=flaky, retryable=lambda err: True) == "done" and slept == [1.0] and len(calls) == 2


def test_a_nested_cache_folder_is_refused_before_any_upload(tmp_path, hub_double):
    release_dir = fake_release(tmp_path / "r1")
    nested = release_dir / "docs" / ".cache"
    nested.mkdir(parents=True)
    (nested / "x.txt").write_text("x")
    with pytest.raises(UsageError, match=r"\.cache"):
        hub.push(release_dir, "org/model", tag="v1", endpoint=hub_double.url, no_xet=True)
    assert "org/model" not in hub_double.repos
