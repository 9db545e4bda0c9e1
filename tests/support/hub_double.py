"""A loopback Hugging Face Hub for tests: the real `huggingface_hub` 2.4 client talks to it over HTTP.

Why: CI has no network, and mocking `HfApi` would test our guesses about the Hub rather than the wire
protocol the client really speaks (the routes below, as huggingface_hub 2.4 sends them). This server keeps
model repos in memory, git-like
(commits with a parent and a full file map, branches, tags, PR refs), speaks the LFS batch protocol (no
Xet: clients must run with ``HF_HUB_DISABLE_XET=1`` or ``push(no_xet=True)``), checks bearer tokens, and
can inject faults into any request:

    hub = HubDouble().start()
    hub.fail(method="POST", path_regex=r"/commit/", status=500, times=1)   # answer 500, do nothing
    hub.drop(path_regex=r"/preupload/")                                   # close the socket, do nothing
    hub.slow(path_regex=r"/tree/", delay=0.5)                             # answer late
    hub.lose(method="POST", path_regex=r"/commit/")                        # act, then close without answer

``after=N`` lets the first N matching requests through; ``times=N`` fires N times. Every request is logged
in ``hub.requests`` (method, path, status or "dropped"/"lost", fault kind) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: The write token the fixtures export as HF_TOKEN.
DEFAULT_TOKEN = "hf_unswift_test_write_token"
#: A token that may read but not write (for 403 tests).
READ_TOKEN = "hf_unswift_test_read_token"
DEFAULT_USER = "unswift-tester"

#: What a new repo's first commit holds, like the real Hub ("initial commit" with .gitattributes).
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"
)
_LFS_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".gguf", ".ckpt", ".h5", ".onnx", ".msgpack")

_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-]*"
_REPO = rf"(?P<repo>{_NAME}/{_NAME})"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob holding `data` (what the Hub reports as a regular file's `oid`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Blob:
    """One stored file. For LFS files `oid` is the git id of the pointer file, as on the Hub."""

    data: bytes
    sha256: str
    oid: str
    lfs: bool

    @classmethod
    def make(cls, data: bytes, *, lfs: bool) -> Blob:
        sha = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
            return cls(data, sha, git_blob_oid(pointer.encode()), True)
        return cls(data, sha, git_blob_oid(data), False)

    def entry(self, path: str) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return item


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    """One model repo: commits by sha, branches and tags by name, PR heads by number (index + 1)."""

    repo_id: str
    private: bool
    gated: str | bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)
    lfs_store: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        """A branch, tag, `refs/pr/N`, full sha or 7+ character sha prefix → commit sha (None if unknown)."""
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev.startswith("refs/heads/"):
            return self.branches.get(rev[len("refs/heads/") :])
        if rev.startswith("refs/tags/"):
            return self.tags.get(rev[len("refs/tags/") :])
        match = re.fullmatch(r"refs/pr/(\d+)", rev)
        if match:
            number = int(match.group(1))
            return self.prs[number - 1] if 0 < number <= len(self.prs) else None
        if rev in self.commits:
            return rev
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            found = [sha for sha in self.commits if sha.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, rev: str = "main") -> list[Commit]:
        """Commits reachable from `rev`, newest first."""
        sha = self.resolve(rev)
        out = []
        while sha is not None:
            commit = self.commits[sha]
            out.append(commit)
            sha = commit.parent
        return out

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """Path → bytes of every file at `rev`."""
        sha = self.resolve(rev)
        if sha is None:
            raise KeyError(rev)
        return {path: blob.data for path, blob in self.commits[sha].files.items()}

    def blobs(self, rev: str = "main") -> dict[str, Blob]:
        sha = self.resolve(rev)
        if sha is None:
            raise KeyError(rev)
        return dict(self.commits[sha].files)


@dataclass
class Fault:
    """One injected fault. kind: "status" (answer `status`, do nothing), "drop" (close, do nothing),
    "slow" (sleep `delay`, then act and answer), "lost" (act, then close without answering)."""

    kind: str
    path_regex: str
    method: str | None = None
    status: int = 500
    times: int = 1
    after: int = 0
    delay: float = 0.0
    seen: int = 0
    fired: int = 0

    def take(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if not re.search(self.path_regex, path):
            return False
        self.seen += 1
        if self.seen <= self.after or self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    status: int | str
    fault: str | None


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


def _error(status: int, message: str, code: str | None = None, **headers: str) -> _Response:
    extra = dict(headers)
    if code:
        extra["X-Error-Code"] = code
    extra["X-Error-Message"] = message
    return _json(status, {"error": message}, extra)


class HubError(Exception):
    """Raised inside a route to answer with an error response."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


class HubDouble:
    """The server and its state. `start()` binds 127.0.0.1 on a free port; `url` is the endpoint."""

    def __init__(self, *, lfs_threshold: int = 10 * 1024 * 1024) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, tuple[str, str]] = {
            DEFAULT_TOKEN: (DEFAULT_USER, "write"),
            READ_TOKEN: (DEFAULT_USER, "read"),
        }
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.lfs_threshold = lfs_threshold
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Response]]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in [
                ("GET", r"/api/whoami-v2", self._whoami),
                ("GET", r"/api/agent-harnesses", self._harnesses),
                ("POST", r"/api/repos/create", self._create_repo),
                ("DELETE", r"/api/repos/delete", self._delete_repo),
                ("POST", r"/api/validate-yaml", self._validate_yaml),
                ("GET", rf"/api/models/{_REPO}/refs", self._refs),
                ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._tree),
                ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", self._commits),
                ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", self._info),
                ("GET", rf"/api/models/{_REPO}", self._info),
                ("PUT", rf"/api/models/{_REPO}/settings", self._settings),
                ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
                ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self._commit),
                ("POST", rf"/api/models/{_REPO}/tag/(?P<rev>[^/]+)", self._create_tag),
                ("DELETE", rf"/api/models/{_REPO}/tag/(?P<tag>[^/]+)", self._delete_tag),
                ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", self._create_branch),
                ("DELETE", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", self._delete_branch),
                ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
                ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
                ("PUT", rf"/lfs-upload/{_REPO}/(?P<oid>[0-9a-f]{{64}})", self._lfs_put),
                ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
                ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
            ]
        ]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> HubDouble:
        """Serve on 127.0.0.1 (free port) in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults and inspection
    def inject(
        self,
        kind: str,
        *,
        path_regex: str,
        method: str | None = None,
        status: int = 500,
        times: int = 1,
        after: int = 0,
        delay: float = 0.0,
    ) -> Fault:
        """Add a fault rule (see the module docstring); rules are tried in the order they were added."""
        if kind not in ("status", "drop", "slow", "lost"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, path_regex, method, status, times, after, delay)
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail(
        self, *, path_regex: str, method: str | None = None, status: int = 500, times: int = 1, after: int = 0
    ) -> Fault:
        """Answer `status` (JSON error body) without acting."""
        return self.inject(
            "status", path_regex=path_regex, method=method, status=status, times=times, after=after
        )

    def drop(self, *, path_regex: str, method: str | None = None, times: int = 1, after: int = 0) -> Fault:
        """Close the connection without acting or answering."""
        return self.inject("drop", path_regex=path_regex, method=method, times=times, after=after)

    def slow(
        self, *, path_regex: str, delay: float, method: str | None = None, times: int = 1, after: int = 0
    ) -> Fault:
        """Sleep `delay` seconds, then act and answer normally."""
        return self.inject(
            "slow", path_regex=path_regex, method=method, times=times, after=after, delay=delay
        )

    def lose(self, *, path_regex: str, method: str | None = None, times: int = 1, after: int = 0) -> Fault:
        """Act (the commit lands, the tag is created...), then close the connection without answering."""
        return self.inject("lost", path_regex=path_regex, method=method, times=times, after=after)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def count(self, method: str | None = None, path_regex: str = "") -> int:
        """How many logged requests match (answered or not)."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and re.search(path_regex, r.path)
        )

    def add_repo(self, repo_id: str, *, private: bool = True, files: dict[str, bytes] | None = None) -> Repo:
        """Create a repo directly (initial commit with .gitattributes, then `files` in a second commit)."""
        with self._lock:
            repo = self._new_repo(repo_id, private=private)
            if files:
                blobs = dict(repo.commits[repo.branches["main"]].files)
                for path, data in files.items():
                    blobs[path] = self._blob(path, data)
                    if blobs[path].lfs:
                        repo.lfs_store[blobs[path].sha256] = data
                self._add_commit(repo, "main", blobs, "Add files", "")
            return repo

    # ---------------------------------------------------------------- request plumbing
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.take(method, path):
                    return fault
        return None

    def _log(self, method: str, path: str, query: str, status: int | str, fault: Fault | None) -> None:
        with self._lock:
            self.requests.append(Request(method, path, query, status, fault.kind if fault else None))

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> _Response:
        for route_method, pattern, handler in self._routes:
            if route_method != method:
                continue
            match = pattern.fullmatch(path)
            if match:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    with self._lock:
                        return handler(query=query, headers=headers, body=body, **params)
                except HubError as err:
                    return err.response
        return _error(404, f"no route for {method} {path}")

    # ---------------------------------------------------------------- helpers
    def _user(self, headers: Any, *, write: bool) -> str | None:
        auth = headers.get("Authorization") or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        known = self.tokens.get(token) if token else None
        if token and known is None:
            raise HubError(_error(401, "Invalid credentials in Authorization header"))
        if write and known is None:
            raise HubError(_error(401, "Invalid credentials in Authorization header"))
        if write and known[1] != "write":
            raise HubError(_error(403, "You don't have the rights to write to this repo (read-only token)"))
        return known[0] if known else None

    def _get_repo(self, repo_id: str, headers: Any, *, write: bool = False) -> Repo:
        user = self._user(headers, write=write)
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            raise HubError(_error(404, "Repository not found", "RepoNotFound"))
        return repo

    @staticmethod
    def _sha(repo: Repo, rev: str) -> str:
        sha = repo.resolve(rev)
        if sha is None:
            raise HubError(_error(404, f"Invalid rev id: {rev}", "RevisionNotFound"))
        return sha

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return path.endswith(_LFS_SUFFIXES) or size >= self.lfs_threshold or b"\0" in sample

    def _blob(self, path: str, data: bytes) -> Blob:
        return Blob.make(data, lfs=self._is_lfs(path, len(data), data[:512]))

    def _new_repo(self, repo_id: str, *, private: bool) -> Repo:
        repo = Repo(repo_id, private=private)
        self.repos[repo_id] = repo
        self._add_commit(
            repo, "main", {".gitattributes": Blob.make(GITATTRIBUTES, lfs=False)}, "initial commit", ""
        )
        return repo

    def _add_commit(
        self,
        repo: Repo,
        branch: str | None,
        files: dict[str, Blob],
        title: str,
        message: str,
        parent: str | None = None,
    ) -> Commit:
        parent = repo.branches.get(branch) if branch is not None else parent
        seq = next(self._seq)
        digest = hashlib.sha1(
            json.dumps([parent, sorted((p, b.oid) for p, b in files.items()), title, seq]).encode()
        ).hexdigest()
        commit = Commit(digest, parent, files, title, message, _now())
        repo.commits[digest] = commit
        if branch is not None:
            repo.branches[branch] = digest
        return commit

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.url}/{repo_id}"

    # ---------------------------------------------------------------- routes
    def _whoami(self, *, headers: Any, **_: Any) -> _Response:
        user = self._user(headers, write=False)
        if user is None:
            return _error(401, "Invalid credentials in Authorization header")
        return _json(
            200,
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _harnesses(self, **_: Any) -> _Response:
        return _json(200, {"standardEnvVars": [], "harnesses": {}})

    def _create_repo(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        user = self._user(headers, write=True)
        data = json.loads(body or b"{}")
        if data.get("type", "model") != "model":
            return _error(400, "this double only serves model repos")
        repo_id = f"{data.get('organization') or user}/{data['name']}"
        if not re.fullmatch(f"{_NAME}/{_NAME}", repo_id):
            return _error(400, f"invalid repo name {repo_id!r}")
        url = self._repo_url(repo_id)
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": url})
        private = data.get("visibility", "private" if data.get("private", True) else "public") != "public"
        self._new_repo(repo_id, private=private)
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, *, headers: Any, body: bytes, **_: Any) -> _Response:
        user = self._user(headers, write=True)
        data = json.loads(body or b"{}")
        repo_id = f"{data.get('organization') or user}/{data['name']}"
        if self.repos.pop(repo_id, None) is None:
            return _error(404, "Repository not found", "RepoNotFound")
        return _json(200, {})

    def _validate_yaml(self, *, body: bytes, **_: Any) -> _Response:
        content = json.loads(body or b"{}").get("content", "")
        if content.startswith("---") and not re.search(r"^---\s*$", content[3:], re.MULTILINE):
            return _json(
                400,
                {"errors": [{"message": "README.md front matter is not closed by '---'"}], "warnings": []},
            )
        return _json(200, {"errors": [], "warnings": []})

    def _info(self, *, repo: str, headers: Any, rev: str | None = None, **_: Any) -> _Response:
        r = self._get_repo(repo, headers)
        sha = self._sha(r, rev or "main")
        commit = r.commits[sha]
        return _json(
            200,
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "lastModified": commit.date,
                "createdAt": commit.date,
                "private": r.private,
                "gated": r.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            },
        )

    def _settings(self, *, repo: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        data = json.loads(body or b"{}")
        if "gated" in data:
            if data["gated"] not in ("auto", "manual", False):
                return _error(400, f"invalid gated value {data['gated']!r}")
            r.gated = data["gated"]
        if "visibility" in data:
            r.private = data["visibility"] != "public"
        if "private" in data:
            r.private = bool(data["private"])
        return _json(200, {})

    def _refs(self, *, repo: str, headers: Any, query: dict[str, list[str]], **_: Any) -> _Response:
        r = self._get_repo(repo, headers)
        payload: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in r.branches.items()
            ],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in r.tags.items()],
            "converts": [],
        }
        if query.get("include_prs", ["0"])[0] in ("1", "true", "True"):
            payload["pullRequests"] = [
                {"name": f"refs/pr/{i + 1}", "ref": f"refs/pr/{i + 1}", "targetCommit": s}
                for i, s in enumerate(r.prs)
            ]
        return _json(200, payload)

    def _tree(
        self, *, repo: str, rev: str, headers: Any, query: dict[str, list[str]], path: str = "", **_: Any
    ) -> _Response:
        r = self._get_repo(repo, headers)
        files = r.commits[self._sha(r, rev)].files
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            return _error(404, f"{path} does not exist", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, blob in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "oid": git_blob_oid(folder.encode()),
                            "size": 0,
                            "path": folder,
                        },
                    )
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entries[file_path] = blob.entry(file_path)
        return _json(200, list(entries.values()))

    def _commits(self, *, repo: str, rev: str, headers: Any, **_: Any) -> _Response:
        r = self._get_repo(repo, headers)
        self._sha(r, rev)
        return _json(
            200,
            [
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": DEFAULT_USER}],
                }
                for c in r.history(rev)
            ],
        )

    def _preupload(self, *, repo: str, rev: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        files = r.commits[self._sha(r, rev)].files
        out = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            lfs = self._is_lfs(item["path"], int(item["size"]), sample)
            existing = files.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            out.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return _json(200, {"files": out})

    def _lfs_batch(self, *, repo: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        data = json.loads(body)
        if data.get("operation") != "upload":
            return _error(400, "only uploads are supported")
        objects = []
        for obj in data["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            if oid in r.lfs_store:
                objects.append({"oid": oid, "size": size})
                continue
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.url}/lfs-upload/{repo}/{oid}", "expires_in": 3600},
                        "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
                    },
                }
            )
        payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _Response(200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(payload).encode())

    def _lfs_put(self, *, repo: str, oid: str, body: bytes, **_: Any) -> _Response:
        # A presigned URL: no Authorization header is sent or needed.
        r = self.repos.get(repo)
        if r is None:
            return _error(404, "Repository not found", "RepoNotFound")
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, f"content does not match oid {oid}")
        r.lfs_store[oid] = body
        return _Response(200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, *, repo: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        data = json.loads(body)
        stored = r.lfs_store.get(data["oid"])
        if stored is None or len(stored) != int(data["size"]):
            return _error(404, f"object {data['oid']} not found or wrong size")
        return _json(200, {"success": True})

    def _commit(
        self, *, repo: str, rev: str, headers: Any, body: bytes, query: dict[str, list[str]], **_: Any
    ) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        create_pr = query.get("create_pr", ["0"])[0] == "1"
        if rev not in r.branches:
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "first ndjson line must be the header")
        header = lines[0]["value"]
        head = r.branches[rev]
        parent = header.get("parentCommit")
        if parent is not None and r.resolve(parent) != head:
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(r.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = Blob.make(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = r.lfs_store.get(value["oid"])
                if data is None:
                    return _error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = Blob.make(data, lfs=True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    return _error(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            else:
                return _error(400, f"unknown ndjson key {key!r}")
        title = header.get("summary") or "Upload"
        if create_pr:
            commit = self._add_commit(r, None, files, title, header.get("description", ""), parent=head)
            r.prs.append(commit.sha)
            pr_url = f"{self._repo_url(repo)}/discussions/{len(r.prs)}"
        else:
            commit = self._add_commit(r, rev, files, title, header.get("description", ""))
            pr_url = None
        return _json(
            200,
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.sha}",
                "pullRequestUrl": pr_url,
            },
        )

    def _create_tag(self, *, repo: str, rev: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        sha = self._sha(r, rev)
        tag = json.loads(body)["tag"]
        if tag in r.tags:
            return _error(409, f"Tag {tag} already exists")
        r.tags[tag] = sha
        return _json(200, {})

    def _delete_tag(self, *, repo: str, tag: str, headers: Any, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        if r.tags.pop(tag, None) is None:
            return _error(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        return _json(200, {})

    def _create_branch(self, *, repo: str, branch: str, headers: Any, body: bytes, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        start = json.loads(body or b"{}").get("startingPoint")
        if branch in r.branches:
            return _error(409, f"Branch {branch} already exists")
        r.branches[branch] = self._sha(r, start) if start else r.branches["main"]
        return _json(200, {})

    def _delete_branch(self, *, repo: str, branch: str, headers: Any, **_: Any) -> _Response:
        r = self._get_repo(repo, headers, write=True)
        if r.branches.pop(branch, None) is None:
            return _error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return _json(200, {})

    def _resolve(self, *, repo: str, rev: str, path: str, headers: Any, **_: Any) -> _Response:
        r = self._get_repo(repo, headers)
        sha = self._sha(r, rev)
        blob = r.commits[sha].files.get(path)
        if blob is None:
            return _error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": sha})
        out = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob.sha256 if blob.lfs else blob.oid}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if blob.lfs:
            out["X-Linked-Etag"] = f'"{blob.sha256}"'
            out["X-Linked-Size"] = str(len(blob.data))
        data = blob.data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return _Response(206, out, data[start : end + 1])
        return _Response(200, out, data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) while a slow fault slept: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-double/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; the hub keeps its own log
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub: HubDouble = self.server.hub  # type: ignore[attr-defined]
        body = self._read_body()
        split = urlsplit(self.path)
        fault = hub._take_fault(method, split.path)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "drop":
            hub._log(method, split.path, split.query, "dropped", fault)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            response = _error(fault.status, f"injected HTTP {fault.status}")
        else:
            response = hub.handle(method, split.path, parse_qs(split.query), self.headers, body)
        if fault is not None and fault.kind == "lost":
            hub._log(method, split.path, split.query, "lost", fault)
            self.close_connection = True
            return
        hub._log(method, split.path, split.query, response.status, fault)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)


def fake_release(folder: Any, *, shards: int = 1, seed: int = 0, signed: bool = True) -> Any:
    """Write a small release-shaped folder (safetensors shard(s), config.json, unswift.json, README.md,
    model.sig) for push tests. Different `seed`s give different bytes; returns the folder."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    payload: dict[str, str] = {}
    names = (
        ["model.safetensors"]
        if shards == 1
        else [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    )
    weight_map = {}
    for index, name in enumerate(names):
        tensor = torch.randn(16, 32, generator=generator)
        save_file({f"layer{index}.weight": tensor}, str(folder / name), metadata={"format": "pt"})
        weight_map[f"layer{index}.weight"] = name
    if shards > 1:
        index_json = {"metadata": {"total_size": 16 * 32 * 4 * shards}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    config = {"model_type": "unswift_llama", "architectures": ["UnswiftLlamaForCausalLM"], "seed": seed}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for path in sorted(folder.iterdir()):
        if path.is_file():
            payload[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {"format_version": 1, "tool": {"name": "unswift", "version": "0.1.0"}, "payload": payload}
    (folder / "unswift.json").write_text(json.dumps(record, indent=2))
    (folder / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags:\n- unswift\n- taylormlp\nlicense: apache-2.0\n---\n# test\n"
    )
    if signed:
        (folder / "model.sig").write_text(json.dumps({"mediaType": "test", "seed": seed}))
    return folder
