"""Fault suite for `unswift push`: a fault injected into every kind of request a push makes.

Each case: a release v1 is on the Hub (tag v1), then v2 (fewer shards, so the commit also deletes files)
is pushed with one injected fault. Whatever happens:
  * the run succeeds (exit 0) or fails with exit 3 naming the failed step;
  * no tag points at anything but a complete release, and no commit is duplicated;
  * a re-run without the fault completes: tag v2 on a commit holding exactly v2, one commit for v2 in all.
The table of fault → outcome is printed at the end of the module (`-rA` not needed; see "fault table").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.hub_double import HubDouble, fake_release

import packager.publish.hub.client
from packager.cli import cli

REPO = "org/model"
DOWN = 99  # "times" for a route that stays down for the whole run


@dataclass(frozen=True)
class Case:
    name: str
    request: str
    fault: str
    inject: Callable[[HubDouble], object]
    expect: str  # "ok" or "exit 3"
    step: str | None = None  # the step an exit-3 run must name
    fresh: bool = False  # the faulted run is the first push (it creates the repo)
    args: tuple[str, ...] = ()
    read_timeout: float | None = None


CREATE = r"^/api/repos/create$"
INFO = rf"^/api/models/{REPO}$"
REFS = rf"^/api/models/{REPO}/refs$"
TREE = rf"^/api/models/{REPO}/tree/"
YAML = r"^/api/validate-yaml$"
PREUPLOAD = rf"^/api/models/{REPO}/preupload/"
BATCH = r"/info/lfs/objects/batch$"
PUT = r"^/lfs-upload/"
VERIFY = r"/info/lfs/objects/verify$"
COMMIT = rf"^/api/models/{REPO}/commit/"
TAG = rf"^/api/models/{REPO}/tag/"
SETTINGS = rf"^/api/models/{REPO}/settings$"

CASES = [
    Case(
        "create-500",
        "repo create",
        "HTTP 500 ×1",
        lambda h: h.fail(method="POST", path_regex=CREATE),
        "ok",
        fresh=True,
    ),
    Case(
        "create-drop",
        "repo create",
        "dropped ×1",
        lambda h: h.drop(method="POST", path_regex=CREATE),
        "ok",
        fresh=True,
    ),
    Case(
        "create-lost",
        "repo create",
        "lost response ×1",
        lambda h: h.lose(method="POST", path_regex=CREATE),
        "ok",
        fresh=True,
    ),
    Case(
        "create-down",
        "repo create",
        "HTTP 503 always",
        lambda h: h.fail(method="POST", path_regex=CREATE, status=503, times=DOWN),
        "exit 3",
        "create repo",
        fresh=True,
    ),
    Case("info-500", "repo info", "HTTP 500 ×1", lambda h: h.fail(method="GET", path_regex=INFO), "ok"),
    Case(
        "info-down",
        "repo info",
        "dropped always",
        lambda h: h.drop(method="GET", path_regex=INFO, times=DOWN),
        "exit 3",
        "read repo info",
    ),
    Case("refs-503", "refs listing", "HTTP 503 ×1", lambda h: h.fail(path_regex=REFS, status=503), "ok"),
    Case("refs-slow", "refs listing", "slow 0.3 s", lambda h: h.slow(path_regex=REFS, delay=0.3), "ok"),
    Case("tree-drop", "tree listing", "dropped ×2", lambda h: h.drop(path_regex=TREE, times=2), "ok"),
    Case(
        "tree-down",
        "tree listing",
        "HTTP 500 always",
        lambda h: h.fail(path_regex=TREE, times=DOWN),
        "exit 3",
        "list files",
    ),
    Case("yaml-500", "README validation", "HTTP 500 ×1", lambda h: h.fail(path_regex=YAML), "ok"),
    Case(
        "yaml-down",
        "README validation",
        "HTTP 503 always",
        lambda h: h.fail(path_regex=YAML, status=503, times=DOWN),
        "exit 3",
        "README validation",
    ),
    Case("preupload-500", "preupload", "HTTP 500 ×2", lambda h: h.fail(path_regex=PREUPLOAD, times=2), "ok"),
    Case(
        "preupload-down",
        "preupload",
        "dropped always",
        lambda h: h.drop(path_regex=PREUPLOAD, times=DOWN),
        "exit 3",
        "preupload",
    ),
    Case("batch-503", "LFS batch", "HTTP 503 ×1", lambda h: h.fail(path_regex=BATCH, status=503), "ok"),
    Case(
        "batch-down",
        "LFS batch",
        "HTTP 500 always",
        lambda h: h.fail(path_regex=BATCH, times=DOWN),
        "exit 3",
        "LFS batch",
    ),
    Case("put-500", "LFS PUT", "HTTP 500 ×1", lambda h: h.fail(method="PUT", path_regex=PUT), "ok"),
    Case(
        "put-slow", "LFS PUT", "slow 0.3 s", lambda h: h.slow(method="PUT", path_regex=PUT, delay=0.3), "ok"
    ),
    Case("put-lost", "LFS PUT", "lost response ×1", lambda h: h.lose(method="PUT", path_regex=PUT), "ok"),
    Case(
        "put-down",
        "LFS PUT",
        "dropped always",
        lambda h: h.drop(method="PUT", path_regex=PUT, times=DOWN),
        "exit 3",
        "LFS upload",
    ),
    Case("verify-500", "LFS verify", "HTTP 500 ×1", lambda h: h.fail(path_regex=VERIFY), "ok"),
    Case(
        "verify-down",
        "LFS verify",
        "HTTP 503 always",
        lambda h: h.fail(path_regex=VERIFY, status=503, times=DOWN),
        "ok",  # the second commit attempt finds the object already stored: no verify asked
    ),
    Case("commit-500", "commit", "HTTP 500 ×1 (not applied)", lambda h: h.fail(path_regex=COMMIT), "ok"),
    Case("commit-drop", "commit", "dropped ×1 (not applied)", lambda h: h.drop(path_regex=COMMIT), "ok"),
    Case("commit-lost", "commit", "landed, response lost", lambda h: h.lose(path_regex=COMMIT), "ok"),
    Case(
        "commit-lost-blind",
        "commit",
        "landed, response lost, read-back down",
        lambda h: (h.lose(path_regex=COMMIT), h.fail(path_regex=REFS, times=DOWN, after=1)),
        "exit 3",
        "commit",
    ),
    Case(
        "commit-slow",
        "commit",
        "slower than the client timeout (lands late)",
        lambda h: h.slow(path_regex=COMMIT, delay=2.5),
        "ok",
        read_timeout=1.0,
    ),
    Case(
        "commit-503-twice",
        "commit",
        "HTTP 503 ×2 (not applied)",
        lambda h: h.fail(path_regex=COMMIT, status=503, times=2),
        "exit 3",
        "commit",
    ),
    Case(
        "commit-412",
        "commit",
        "HTTP 412 branch moved",
        lambda h: h.fail(path_regex=COMMIT, status=412),
        "exit 3",
        "commit",
    ),
    Case("tag-500", "tag", "HTTP 500 ×1", lambda h: h.fail(path_regex=TAG), "ok"),
    Case("tag-lost", "tag", "created, response lost", lambda h: h.lose(path_regex=TAG), "ok"),
    Case(
        "tag-down",
        "tag",
        "commit landed, tag HTTP 503 always",
        lambda h: h.fail(path_regex=TAG, status=503, times=DOWN),
        "exit 3",
        "tag",
    ),
    Case(
        "tag-drop-down",
        "tag",
        "commit landed, tag dropped always",
        lambda h: h.drop(path_regex=TAG, times=DOWN),
        "exit 3",
        "tag",
    ),
    Case(
        "gated-500",
        "settings (gated)",
        "HTTP 500 ×1",
        lambda h: h.fail(method="PUT", path_regex=SETTINGS),
        "ok",
        args=("--gated", "manual"),
    ),
    Case(
        "gated-down",
        "settings (gated)",
        "HTTP 503 always",
        lambda h: h.fail(method="PUT", path_regex=SETTINGS, status=503, times=DOWN),
        "exit 3",
        "set gated access",
        args=("--gated", "manual"),
    ),
    Case(
        "public-down",
        "settings (make public)",
        "HTTP 500 always, after the tag",
        lambda h: h.fail(method="PUT", path_regex=SETTINGS, times=DOWN),
        "exit 3",
        "make repo public",
        args=("--public",),
    ),
]

ROWS: list[tuple[str, ...]] = []


@pytest.fixture(scope="module", autouse=True)
def fault_table(request):
    """Print the fault → outcome table when the module is done."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not ROWS:
        return
    header = ("request", "fault", "faulted run", "commits made", "re-run", "LFS PUTs in re-run")
    widths = [max(len(str(row[i])) for row in [header, *ROWS]) for i in range(len(header))]
    lines = ["", f"fault table ({len(ROWS)} faults)"]
    lines += [
        " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *ROWS]
    ]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in lines:
            reporter.write_line(line)


def push(double: HubDouble, folder: Path, tag: str, *args: str) -> tuple[int, dict]:
    argv = ["push", str(folder), "--repo", REPO, "--tag", tag, "--endpoint", double.url, "--no-xet", "--json"]
    result = CliRunner().invoke(cli, [*argv, "--quiet", *args])
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, (result.stdout, result.stderr, result.exception)
    return result.exit_code, json.loads(lines[0])


def release_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def tagged_releases(double: HubDouble) -> dict[str, dict[str, bytes]]:
    repo = double.repos.get(REPO)
    if repo is None:
        return {}
    out = {}
    for tag in repo.tags:
        files = repo.files(tag)
        files.pop(".gitattributes", None)
        out[tag] = files
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, hub_double: HubDouble, hub_fast_retries, tmp_path, monkeypatch):
    v1 = fake_release(tmp_path / "v1", shards=2, seed=0)
    v2 = fake_release(tmp_path / "v2", shards=1, seed=1)
    complete = [release_files(v1), release_files(v2)]
    if not case.fresh:
        code, _ = push(hub_double, v1, "v1")  # private, not gated: v2's options change the settings
        assert code == 0
    before = 1 if case.fresh else len(hub_double.repo(REPO).commits)  # commits before pushing v2
    if case.read_timeout is not None:
        monkeypatch.setattr(packager.publish.hub.client, "_READ_TIMEOUT_S", case.read_timeout)

    case.inject(hub_double)
    code, payload = push(hub_double, v2, "v2", *case.args)

    # --- whatever happened: exit 0 or 3, complete releases only under tags, no duplicate commit
    assert code in (0, 3), payload
    outcome = "ok" if code == 0 else f"exit 3 at '{payload.get('step')}'"
    if code == 3:
        assert payload["ok"] is False and "re-run" in payload["error"]
    for tag, files in tagged_releases(hub_double).items():
        assert files in complete, f"tag {tag} points at an incomplete release"
    commits_after_fault = len(hub_double.repo(REPO).commits) if REPO in hub_double.repos else 0
    assert commits_after_fault <= before + 1
    landed = commits_after_fault == before + 1
    assert (case.expect, case.step) == (("ok", None) if code == 0 else ("exit 3", payload.get("step"))), (
        payload
    )

    # --- a re-run without the fault completes the job, without a second commit or a second upload
    shard = hashlib.sha256((v2 / "model.safetensors").read_bytes()).hexdigest()
    uploaded = REPO in hub_double.repos and shard in hub_double.repo(REPO).lfs_store
    hub_double.clear_faults()
    monkeypatch.setattr(packager.publish.hub.client, "_READ_TIMEOUT_S", 300.0)
    seen = len(hub_double.requests)
    code2, payload2 = push(hub_double, v2, "v2", *case.args)
    reuploads = sum(1 for r in hub_double.requests[seen:] if r.path.startswith("/lfs-upload/"))
    assert reuploads == (0 if uploaded else 1)
    assert code2 == 0, payload2
    repo = hub_double.repo(REPO)
    assert len(repo.commits) == before + 1, "duplicate or missing commit"
    assert tagged_releases(hub_double)["v2"] == release_files(v2)
    assert repo.tags["v2"] == repo.branches["main"] == payload2["revision"]
    if not case.fresh:
        assert tagged_releases(hub_double)["v1"] == release_files(v1)
    assert payload2["new_commit"] is (not landed)
    if "--public" in case.args:
        assert repo.private is False
    if "--gated" in case.args:
        assert repo.gated == "manual"

    ROWS.append(
        (
            case.request,
            case.fault,
            outcome,
            str(commits_after_fault - before if commits_after_fault else 0),
            "ok, tag v2 → complete v2" + (", no new commit" if not payload2["new_commit"] else ", 1 commit"),
            str(reuploads),
        )
    )
