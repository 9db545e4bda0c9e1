"""The loopback Hub double speaks the protocol the real huggingface_hub 2.4 client and transformers use.

If these pass, push tests exercise the real client code paths (create repo, preupload, LFS batch/PUT/verify,
NDJSON commit, tags, tree, resolve) rather than our own guesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from support.hub_double import DEFAULT_TOKEN, git_blob_oid


@pytest.fixture
def api(hub_double, monkeypatch):
    """A client for the double, Xet off in-process (HF_HUB_DISABLE_XET is read at client import)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    return HfApi(endpoint=hub_double.url, token=DEFAULT_TOKEN)


def test_create_repo_twice_and_visibility(hub_double, api):
    first = api.create_repo("org/tiny", private=True, exist_ok=True)
    second = api.create_repo("org/tiny", private=True, exist_ok=True)  # 409 carries the url
    assert str(first) == str(second) == f"{hub_double.url}/org/tiny"
    assert hub_double.count("POST", "/api/repos/create") == 2
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("org/tiny", private=True)
    assert info.value.response.status_code == 409
    info_ = api.model_info("org/tiny")
    assert (
        info_.private is True
        and info_.gated is False
        and [s.rfilename for s in info_.siblings] == [".gitattributes"]
    )
    api.update_repo_settings("org/tiny", gated="auto")
    api.update_repo_settings("org/tiny", private=False)
    assert api.model_info("org/tiny").gated == "auto" and api.model_info("org/tiny").private is False


def test_commit_lfs_and_regular_files_tags_and_snapshot(hub_double, api, tmp_path):
    api.create_repo("org/tiny", exist_ok=True)
    weights = os.urandom(3000)
    head = api.model_info("org/tiny").sha
    info = api.create_commit(
        "org/tiny",
        [
            CommitOperationAdd("model.safetensors", weights),
            CommitOperationAdd("config.json", b'{"a": 1}'),
            CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# tiny\n"),
            CommitOperationAdd("sub/notes.txt", b"hello"),
        ],
        commit_message="add",
        parent_commit=head,
    )
    assert info.oid == hub_double.repo("org/tiny").branches["main"]
    assert (
        hub_double.count("PUT", "/lfs-upload/") == 1 and hub_double.count("POST", "/lfs/objects/verify") == 1
    )
    assert hub_double.count("POST", "/api/validate-yaml") == 1

    tree = {e.path: e for e in api.list_repo_tree("org/tiny", recursive=True) if hasattr(e, "blob_id")}
    assert tree["config.json"].blob_id == git_blob_oid(b'{"a": 1}') and tree["config.json"].lfs is None
    assert tree["model.safetensors"].lfs.size == 3000
    assert set(tree) == {".gitattributes", "model.safetensors", "config.json", "README.md", "sub/notes.txt"}

    api.create_tag("org/tiny", tag="v1", revision=info.oid)
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag("org/tiny", tag="v1", revision=info.oid)
    assert exists.value.response.status_code == 409
    api.create_branch("org/tiny", branch="dev")
    refs = api.list_repo_refs("org/tiny")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": info.oid}
    assert {b.name for b in refs.branches} == {"main", "dev"}

    # Same LFS content again: the batch answers "already stored", no second PUT; a stale parent is refused.
    again = api.create_commit(
        "org/tiny",
        [CommitOperationAdd("copy.safetensors", weights), CommitOperationDelete("sub/notes.txt")],
        commit_message="copy",
        parent_commit=info.oid,
    )
    assert hub_double.count("PUT", "/lfs-upload/") == 1
    with pytest.raises(HfHubHTTPError) as moved:
        api.create_commit(
            "org/tiny", [CommitOperationAdd("x.txt", b"x")], commit_message="late", parent_commit=info.oid
        )
    assert moved.value.response.status_code == 412
    assert [c.commit_id for c in api.list_repo_commits("org/tiny")][:2] == [again.oid, info.oid]

    folder = snapshot_download(
        "org/tiny", revision="v1", endpoint=hub_double.url, token=DEFAULT_TOKEN, cache_dir=tmp_path / "cache"
    )
    assert (tmp_path / "cache").exists() and str(folder).endswith(info.oid)
    with open(os.path.join(folder, "model.safetensors"), "rb") as handle:
        assert handle.read() == weights
    assert open(os.path.join(folder, "sub", "notes.txt")).read() == "hello"


def test_private_repo_needs_a_token_and_errors_carry_codes(hub_double, api, tmp_path):
    api.create_repo("org/secret", private=True)
    anonymous = HfApi(endpoint=hub_double.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("org/secret")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/secret", revision="nope")
    with pytest.raises(HfHubHTTPError) as unauthorised:
        anonymous.create_repo("org/other")
    assert unauthorised.value.response.status_code == 401


def test_fault_injection_kinds(hub_double, api):
    api.create_repo("org/f", exist_ok=True)
    hub_double.fail(method="GET", path_regex=r"/api/models/org/f$", status=503)
    with pytest.raises(HfHubHTTPError) as failed:
        api.model_info("org/f")
    assert failed.value.response.status_code == 503
    assert api.model_info("org/f").id == "org/f"  # times=1: the next one passes

    hub_double.drop(path_regex=r"/refs$")
    with pytest.raises(httpx2.RemoteProtocolError):
        api.list_repo_refs("org/f")

    head = api.model_info("org/f").sha
    hub_double.lose(method="POST", path_regex=r"/tag/")
    with pytest.raises(httpx2.RemoteProtocolError):
        api.create_tag("org/f", tag="lost", revision=head)
    assert hub_double.repo("org/f").tags == {"lost": head}  # acted, then hung up

    hub_double.fail(path_regex=r"/refs$", status=500, after=1)  # the first passes, the second fails
    api.list_repo_refs("org/f")
    with pytest.raises(HfHubHTTPError):
        api.list_repo_refs("org/f")
    statuses = [(r.status, r.fault) for r in hub_double.requests]
    assert (503, "status") in statuses and ("dropped", "drop") in statuses and ("lost", "lost") in statuses


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    local = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    remote = AutoModelForCausalLM.from_pretrained("org/tiny-llama", revision="v1")
    same = all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), remote.state_dict().values()))
    ids = torch.arange(8).unsqueeze(0)
    print(json.dumps({"same": same, "logits_equal": torch.equal(local(ids).logits, remote(ids).logits),
                      "class": type(remote).__name__}))
    """
)


def test_transformers_loads_a_tagged_checkpoint_from_the_double(hub_double, api, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(checkpoint)

    api.create_repo("org/tiny-llama", private=True)
    operations = [CommitOperationAdd(p.name, str(p)) for p in sorted(checkpoint.iterdir())]
    commit = api.create_commit("org/tiny-llama", operations, commit_message="tiny llama")
    api.create_tag("org/tiny-llama", tag="v1", revision=commit.oid)
    # a later commit on main must not change what revision="v1" loads
    api.create_commit("org/tiny-llama", [CommitOperationDelete("config.json")], commit_message="break main")

    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(checkpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "logits_equal": True, "class": "LlamaForCausalLM"}
    assert hub_double.count("GET", r"/org/tiny-llama/resolve/") >= 2
