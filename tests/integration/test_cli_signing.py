"""`unswift keygen`, `sign`, `verify` and `card` as users run them: exit codes, one-line JSON, messages.

Most tests use click's CliRunner; a few run the real console script and the real `model_signing` CLI
in subprocesses, since that is what the README and the card tell users to type.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from support.releases import RELEASE_FILES, TAMPERS, hub_cache_snapshot, make_release, write_key

from packager.cli import cli
from packager.publish import signing


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def json_line(result) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def unswift_command() -> list[str]:
    """The installed console script, or the same entry point through Python before `pip install -e .`."""
    script = shutil.which("unswift")
    return [script] if script else [sys.executable, "-c", "from packager.cli import main; main()"]


def model_signing_verify_command(folder: Path, public_key: Path | str, *extra: str) -> list[str]:
    """`model_signing verify key` exactly as the card prints it."""
    return [sys.executable, "-m", "model_signing", "verify", "key", str(folder),
            "--signature", str(folder / "model.sig"), "--public_key", str(public_key), *extra]


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)


# ---------------------------------------------------------------------------------------------- keygen


def test_keygen_writes_the_pair_and_prints_the_fingerprint(tmp_path):
    result = run("keygen", "--out", str(tmp_path / "k.pem"), "--json")
    assert result.exit_code == 0, result.output
    payload = json_line(result)
    assert payload["command"] == "keygen" and payload["ok"] is True
    assert payload["private_key"] == str(tmp_path / "k.pem")
    assert payload["public_key"] == str(tmp_path / "k.pem.pub")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    public = signing.load_public_key(tmp_path / "k.pem.pub")
    assert payload["key_fingerprint"] == signing.key_fingerprint(public)
    assert f"key fingerprint: {payload['key_fingerprint']}" in result.stderr
    assert "PRIVATE KEY" not in result.output


def test_keygen_refuses_to_overwrite_without_the_flag(tmp_path):
    assert run("keygen", "--out", str(tmp_path / "k.pem")).exit_code == 0
    result = run("keygen", "--out", str(tmp_path / "k.pem"), "--json")
    assert result.exit_code == 2
    assert json_line(result)["ok"] is False
    assert "--overwrite" in result.stderr
    assert run("keygen", "--out", str(tmp_path / "k.pem"), "--overwrite", "--curve", "P-384").exit_code == 0


# ------------------------------------------------------------------------------------------------ sign


def test_sign_reports_interface_fields(tmp_path, keys):
    release = make_release(tmp_path / "release")
    result = run("sign", str(release), "--key", str(keys.private_key), "--json")
    assert result.exit_code == 0, result.output
    payload = json_line(result)
    assert payload == {"command": "sign", "ok": True, "release_dir": str(release),
                       "files": list(RELEASE_FILES), "key_fingerprint": keys.key_fingerprint,
                       "signature": str(release / "model.sig")}


def test_sign_with_the_key_text_in_the_environment_never_prints_it(tmp_path, keys):
    release = make_release(tmp_path / "release")
    pem = keys.private_key.read_text()
    result = run("sign", str(release), "--json", env={signing.KEY_ENV: pem})
    assert result.exit_code == 0, result.output
    body = pem.splitlines()[1]
    assert body not in result.output
    assert all(body not in path.read_text(errors="ignore") for path in release.iterdir())


def test_sign_warns_about_a_key_others_can_read(tmp_path, keys):
    loose = Path(shutil.copy(keys.private_key, tmp_path / "loose.pem"))
    loose.chmod(0o644)
    result = run("sign", str(make_release(tmp_path / "release")), "--key", str(loose))
    assert result.exit_code == 0
    assert "readable by other users" in result.stderr


@pytest.mark.parametrize(
    ("make_key", "kind"),
    [(ed25519.Ed25519PrivateKey.generate, "Ed25519"),
     (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA")],
)
def test_sign_refuses_ed25519_and_rsa_keys(tmp_path, make_key, kind):
    key = write_key(tmp_path / "key.pem", make_key())
    result = run("sign", str(make_release(tmp_path / "release")), "--key", str(key), "--json")
    assert result.exit_code == 2
    assert kind in json_line(result)["error"]
    assert "P-256" in result.stderr and "unswift keygen" in result.stderr


def test_sign_without_any_key_explains_both_ways(tmp_path):
    result = run("sign", str(make_release(tmp_path / "release")))
    assert result.exit_code == 2
    assert "--key KEY or set UNSWIFT_SIGNING_KEY" in result.stderr


# ---------------------------------------------------------------------------------------------- verify


def test_verify_a_good_release(signed, keys):
    result = run("verify", str(signed), "--key", str(keys.public_key), "--json")
    assert result.exit_code == 0, result.output
    assert json_line(result) == {"command": "verify", "ok": True, "verified": True,
                                 "files": list(RELEASE_FILES), "bad_files": [],
                                 "key_fingerprint": keys.key_fingerprint}
    human = run("verify", str(signed), "--key", str(keys.public_key))
    assert keys.key_fingerprint in human.stderr


@pytest.mark.parametrize("tamper", list(TAMPERS))
@pytest.mark.parametrize("name", RELEASE_FILES)
def test_verify_names_every_tampered_file(release_copy, keys, name, tamper):
    TAMPERS[tamper](release_copy / name)
    result = run("verify", str(release_copy), "--key", str(keys.public_key), "--json")
    problem = "missing" if tamper == "deleted" else "altered"
    assert result.exit_code == 1
    assert f"{name} ({problem})" in result.stderr
    payload = json_line(result)
    assert payload["ok"] is False and payload["verified"] is False
    assert payload["bad_files"] == [{"path": name, "problem": problem}]


def test_verify_names_an_added_file(release_copy, keys):
    (release_copy / "unsigned.bin").write_bytes(b"\0")
    result = run("verify", str(release_copy), "--key", str(keys.public_key))
    assert result.exit_code == 1
    assert "unsigned.bin (extra)" in result.stderr


def test_verify_with_the_wrong_key_fails_with_both_fingerprints(signed, keys, tmp_path):
    other = signing.generate_key(tmp_path / "other.pem")
    result = run("verify", str(signed), "--key", str(other.public_key), "--json")
    assert result.exit_code == 1
    assert "wrong key" in result.stderr
    assert keys.key_fingerprint in result.stderr and other.key_fingerprint in result.stderr
    assert json_line(result)["ok"] is False


def test_verify_a_corrupted_signature_fails(release_copy, keys):
    (release_copy / "model.sig").write_text('{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"')
    result = run("verify", str(release_copy), "--key", str(keys.public_key))
    assert result.exit_code == 1
    assert "model.sig is corrupted" in result.stderr


def test_verify_with_an_ed25519_public_key_is_a_usage_error(signed, tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "ed.pub"
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    result = run("verify", str(signed), "--key", str(pub))
    assert result.exit_code == 2
    assert "Ed25519" in result.stderr


def test_verify_without_key_says_where_the_key_is_found(signed, keys):
    result = run("verify", str(signed), "--json")
    assert result.exit_code == 2
    assert keys.key_fingerprint in result.stderr  # the fingerprint the card names
    assert "card" in result.stderr and "outside the model repo" in result.stderr
    assert json_line(result)["ok"] is False


def test_verify_usage_errors(release_copy, keys, tmp_path):
    key = str(keys.public_key)
    assert run("verify", str(release_copy), "--key", key, "--revision", "v1").exit_code == 2
    missing = run("verify", str(tmp_path / "no" / "such" / "dir"), "--key", key)
    assert missing.exit_code == 2 and "neither" in missing.stderr
    (release_copy / "model.sig").unlink()
    unsigned = run("verify", str(release_copy), "--key", key)
    assert unsigned.exit_code == 2 and "not signed" in unsigned.stderr


def _fake_hub(monkeypatch, download) -> list:
    calls: list = []

    def download_release(repo_id, *, revision=None, endpoint=None, token=None):
        calls.append((repo_id, revision, endpoint, token))
        return download()

    import packager.publish.hub

    monkeypatch.setattr(packager.publish.hub, "download_release", download_release)
    return calls


def test_verify_a_repo_id_downloads_the_revision_and_follows_symlinks(signed, keys, tmp_path, monkeypatch):
    snapshot = hub_cache_snapshot(signed, tmp_path / "hub" / "models--acme--tiny")
    calls = _fake_hub(monkeypatch, lambda: snapshot)
    result = run("verify", "acme/tiny", "--revision", "v1", "--endpoint", "http://127.0.0.1:9", "--key",
                 str(keys.public_key), "--json")
    assert result.exit_code == 0, result.output
    assert calls == [("acme/tiny", "v1", "http://127.0.0.1:9", None)]
    assert json_line(result)["verified"] is True


def test_verify_a_repo_id_checks_the_key_before_downloading(tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch, lambda: tmp_path)
    result = run("verify", "acme/tiny", "--key", str(tmp_path / "missing.pub"))
    assert result.exit_code == 2 and calls == []


def test_verify_a_release_pushed_to_the_hub_double(hub_double, signed, keys, tmp_path):
    """The real download path: a Hub cache snapshot (symlinks) plus the Hub's own .gitattributes."""
    from support.hub_double import DEFAULT_TOKEN

    from packager.publish import hub

    release = Path(shutil.copytree(signed, tmp_path / "release"))
    hub.push(release, "org/model", tag="v1", endpoint=hub_double.url, token=DEFAULT_TOKEN, no_xet=True)
    (release / "config.json").write_text('{"model_type": "llama"}')  # changed after signing
    hub.push(release, "org/model", tag="v2", endpoint=hub_double.url, token=DEFAULT_TOKEN, no_xet=True)

    common = ("--key", str(keys.public_key), "--endpoint", hub_double.url, "--json")
    good = run("verify", "org/model", "--revision", "v1", *common)
    assert good.exit_code == 0, good.output
    assert json_line(good)["verified"] is True
    bad = run("verify", "org/model", "--revision", "v2", *common)
    assert bad.exit_code == 1
    assert json_line(bad)["bad_files"] == [{"path": "config.json", "problem": "altered"}]


# ------------------------------------------------------------------------------------------------ card


def test_card_command_keeps_the_signature_of_an_unchanged_card(release_copy, keys):
    signature = (release_copy / "model.sig").read_bytes()
    for _ in range(2):
        result = run("card", str(release_copy), "--json")
        assert result.exit_code == 0, result.output
        assert json_line(result) == {"command": "card", "ok": True, "readme": str(release_copy / "README.md"),
                                     "changed": False, "signature_removed": False}
        assert "up to date" in result.stderr and "model.sig kept" in result.stderr
    assert (release_copy / "model.sig").read_bytes() == signature
    assert run("verify", str(release_copy), "--key", str(keys.public_key)).exit_code == 0


def test_card_command_removes_the_signature_when_the_card_changes(release_copy):
    record = json.loads((release_copy / "unswift.json").read_text())
    record["eval"]["kl_mean"] = 0.04411
    (release_copy / "unswift.json").write_text(json.dumps(record))
    result = run("card", str(release_copy), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json_line(result) == {"command": "card", "ok": True, "readme": str(release_copy / "README.md"),
                                 "changed": True, "signature_removed": True}
    assert not (release_copy / "model.sig").exists()
    assert "unswift sign" in result.stderr  # said even with --quiet
    again = run("card", str(release_copy), "--json")
    assert json_line(again)["signature_removed"] is False and json_line(again)["changed"] is False


def test_card_command_on_a_folder_without_record(tmp_path):
    result = run("card", str(tmp_path))
    assert result.exit_code == 2 and "unswift.json" in result.stderr


# ------------------------------------------------------------------------- the real programs, end to end


def test_console_script_and_model_signing_cli_end_to_end(tmp_path):
    release = make_release(tmp_path / "release")
    key = tmp_path / "publisher.pem"
    unswift = unswift_command()
    fingerprint = json_line(run("keygen", "--out", str(key), "--json"))["key_fingerprint"]
    sign = subprocess.run([*unswift, "sign", str(release), "--key", str(key)], capture_output=True, text=True)
    assert sign.returncode == 0, sign.stderr
    assert fingerprint in (release / "README.md").read_text()

    verify = [*unswift, "verify", str(release), "--key", f"{key}.pub", "--json"]
    assert json.loads(subprocess.run(verify, capture_output=True, text=True).stdout)["verified"] is True
    official = model_signing_verify_command(release, f"{key}.pub")
    done = subprocess.run(official, capture_output=True, text=True)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr

    with (release / "model.safetensors").open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    failed = subprocess.run(verify, capture_output=True, text=True)
    assert failed.returncode == 1 and "model.safetensors (altered)" in failed.stderr
    assert json.loads(failed.stdout)["bad_files"] == [{"path": "model.safetensors", "problem": "altered"}]
    done = subprocess.run(official, capture_output=True, text=True)
    assert done.returncode == 1 and "model.safetensors" in done.stderr


def test_model_signing_cli_accepts_the_downloads_the_card_describes(signed, keys, tmp_path):
    """The card's two hints: --allow_symlinks for cache snapshots, --ignore-paths DIR/.cache for local_dir."""
    snapshot = hub_cache_snapshot(signed, tmp_path / "models--acme--tiny")
    local = Path(shutil.copytree(signed, tmp_path / "local"))
    (local / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (local / ".cache" / "huggingface" / "download" / "config.json.metadata").write_text("abc\n")
    hints = {snapshot: ["--allow_symlinks"], local: ["--ignore-paths", str(local / ".cache")]}
    for folder, extra in hints.items():
        command = model_signing_verify_command(folder, keys.public_key, *extra)
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert signing.verify(folder, keys.public_key).verified
