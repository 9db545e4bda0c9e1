"""packager.publish.signing: keys, `model.sig` in the OpenSSF format, and verification that names each bad file.

Every signature made here is also checked by the real `model_signing` 1.1.1 verifier, so the format is
tested against the tool users run, not against our own reading of it. `make_release` and friends build
small fake release folders (the real converter is tested elsewhere); they live in tests/support/releases.py.
"""

from __future__ import annotations

import base64
import importlib
import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from support.releases import (
    RELEASE_FILES,
    TAMPERS,
    flip_byte,
    hub_cache_snapshot,
    make_release,
    model_signing_verify,
    write_key,
)

from packager.errors import CheckFailed, UsageError
from packager.formats.files import sha256_file
from packager.publish import signing

# ------------------------------------------------------------------------------------------------ keys


def test_generate_key_writes_private_0600_and_public_with_fingerprint(tmp_path):
    pair = signing.generate_key(tmp_path / "k.pem")
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.public_key == tmp_path / "k.pem.pub"
    public = serialization.load_pem_public_key(pair.public_key.read_bytes())
    assert isinstance(public.curve, ec.SECP256R1)
    assert pair.key_fingerprint == signing.key_fingerprint(public)
    assert len(pair.key_fingerprint) == 64 and int(pair.key_fingerprint, 16) >= 0
    assert pair.to_json() == {"private_key": str(tmp_path / "k.pem"),
                              "public_key": str(tmp_path / "k.pem.pub"),
                              "key_fingerprint": pair.key_fingerprint}


def test_generate_key_refuses_existing_files_unless_overwrite(tmp_path):
    first = signing.generate_key(tmp_path / "k.pem")
    with pytest.raises(UsageError, match="--overwrite"):
        signing.generate_key(tmp_path / "k.pem")
    second = signing.generate_key(tmp_path / "k.pem", overwrite=True)
    assert second.key_fingerprint != first.key_fingerprint


def test_generate_key_refuses_a_release_folder_and_unknown_curves(tmp_path):
    release = make_release(tmp_path / "release")
    with pytest.raises(UsageError, match="release folder"):
        signing.generate_key(release / "k.pem")
    with pytest.raises(UsageError, match="P-256"):
        signing.generate_key(tmp_path / "k.pem", curve="secp256k1")


def test_fingerprint_is_the_key_hint_model_signing_writes(signed, keys):
    bundle = json.loads((signed / "model.sig").read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == keys.key_fingerprint


@pytest.mark.parametrize(
    ("make_key", "kind"),
    [(ed25519.Ed25519PrivateKey.generate, "Ed25519"),
     (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
     (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1")],
)
def test_unsupported_keys_are_usage_errors(tmp_path, make_key, kind):
    private = make_key()
    key_file = write_key(tmp_path / "key.pem", private)
    with pytest.raises(UsageError, match=kind) as err:
        signing.load_signing_key(key_file)
    assert "P-256" in str(err.value) and "unswift keygen" in str(err.value)
    pub = tmp_path / "key.pub"
    pub.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UsageError, match=kind):
        signing.load_public_key(pub)


def test_key_from_environment_path_or_pem_text(tmp_path, keys, monkeypatch):
    monkeypatch.setenv(signing.KEY_ENV, str(keys.private_key))
    assert signing.key_fingerprint(signing.load_signing_key().public_key()) == keys.key_fingerprint
    monkeypatch.setenv(signing.KEY_ENV, keys.private_key.read_text())
    assert signing.key_fingerprint(signing.load_signing_key().public_key()) == keys.key_fingerprint


def test_key_errors_never_echo_key_material(tmp_path, keys, monkeypatch):
    secret_text = "MHcCAQEEIBtotallynotakeybutsecretlooking"
    monkeypatch.setenv(signing.KEY_ENV, secret_text)
    with pytest.raises(UsageError) as err:
        signing.load_signing_key()
    assert secret_text not in str(err.value)
    monkeypatch.delenv(signing.KEY_ENV)
    with pytest.raises(UsageError, match="--key KEY or set UNSWIFT_SIGNING_KEY"):
        signing.load_signing_key()
    garbled = "-----BEGIN PRIVATE KEY-----\nAAAAsecretsecret\n-----END PRIVATE KEY-----\n"
    monkeypatch.setenv(signing.KEY_ENV, garbled)
    with pytest.raises(UsageError) as err:
        signing.load_signing_key()
    assert "secretsecret" not in str(err.value)


def test_password_protected_public_and_missing_keys_are_usage_errors(tmp_path, keys):
    private = serialization.load_pem_private_key(keys.private_key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(UsageError, match="password-protected"):
        signing.load_signing_key(locked)
    with pytest.raises(UsageError, match="public key; signing needs the private key"):
        signing.load_signing_key(keys.public_key)
    with pytest.raises(UsageError, match="is a private key"):
        signing.load_public_key(keys.private_key)
    with pytest.raises(UsageError, match="not found"):
        signing.load_signing_key(tmp_path / "nope.pem")


# ------------------------------------------------------------------------------------------- signing


def test_signature_layout_matches_model_signing_v1(signed):
    bundle = json.loads((signed / "model.sig").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    serialization_ = statement["predicate"]["serialization"]
    assert serialization_ == {
        "method": "files", "hash_type": "sha256", "allow_symlinks": False,
        "ignore_paths": ["model.sig", ".git", ".github", ".gitattributes", ".gitignore"],
    }
    resources = statement["predicate"]["resources"]
    assert [r["name"] for r in resources] == list(RELEASE_FILES)
    assert all(r["digest"] == sha256_file(signed / r["name"]) for r in resources)


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_every_curve_verifies_with_model_signing_and_unswift(tmp_path, curve):
    pair = signing.generate_key(tmp_path / "k.pem", curve=curve)
    release = make_release(tmp_path / "release")
    signing.sign(release, pair.private_key)
    model_signing_verify(release, pair.public_key)
    report = signing.verify(release, pair.public_key)
    assert report.verified and report.bad_files == () and report.key_fingerprint == pair.key_fingerprint


def test_resign_replaces_the_signature_and_nested_files_sort_like_model_signing(release_copy, keys):
    (release_copy / "extra").mkdir()
    (release_copy / "extra" / "notes.txt").write_text("n\n")
    (release_copy / "extra.txt").write_text("e\n")
    result = signing.sign(release_copy, keys.private_key)
    assert result.files.index("extra/notes.txt") < result.files.index("extra.txt")
    model_signing_verify(release_copy, keys.public_key)
    assert signing.verify(release_copy, keys.public_key).verified


def test_sign_accepts_a_loaded_key_and_the_environment(release_copy, keys, monkeypatch):
    loaded = signing.load_signing_key(keys.private_key)
    assert signing.sign(release_copy, loaded).key_fingerprint == keys.key_fingerprint
    monkeypatch.setenv(signing.KEY_ENV, keys.private_key.read_text())
    assert signing.sign(release_copy).key_fingerprint == keys.key_fingerprint
    model_signing_verify(release_copy, keys.public_key)


@pytest.mark.parametrize(
    ("plant", "message"),
    [(lambda root, key: shutil.copy(key, root / "publisher.pem"), "holds a private key"),
     (lambda root, key: (root / "tiny.secret").write_text("s"), "hardening secret"),
     (lambda root, key: (root / "link.json").symlink_to(root / "config.json"), "symlink"),
     (lambda root, key: (root / ".cache" / "huggingface").mkdir(parents=True)
      or (root / ".cache" / "huggingface" / "x.metadata").write_text("m"), ".cache/")],
)
def test_sign_refuses_what_must_not_be_published(release_copy, keys, plant, message):
    plant(release_copy, keys.private_key)
    with pytest.raises(UsageError, match=message):
        signing.sign(release_copy, keys.private_key)
    assert (release_copy / "model.sig").exists()  # refused before anything changed


def test_sign_checks_the_key_before_touching_the_release(release_copy, tmp_path):
    before = {p.name: p.read_bytes() for p in release_copy.iterdir()}
    with pytest.raises(UsageError):
        signing.sign(release_copy, write_key(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate()))
    assert {p.name: p.read_bytes() for p in release_copy.iterdir()} == before


def test_sign_signs_a_folder_as_it_stands_without_a_record_or_card(tmp_path, keys):
    folder = tmp_path / "plain"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\1\2\3")
    (folder / "sub" / "notes.txt").write_text("n\n")
    result = signing.sign(folder, keys.private_key)
    assert result.files == ("sub/notes.txt", "weights.bin")
    assert sorted(path.name for path in folder.iterdir()) == ["model.sig", "sub", "weights.bin"]
    assert signing.verify(folder, keys.public_key).verified
    model_signing_verify(folder, keys.public_key)
    with pytest.raises(UsageError, match="not found"):
        signing.sign(tmp_path / "absent", keys.private_key)


def test_sign_reads_again_only_the_files_whose_digest_is_not_known(release_copy, keys, monkeypatch):
    module = importlib.import_module("packager.publish.signing.sign")
    read: list[str] = []

    def counting(path: Path) -> str:
        read.append(path.name)
        return sha256_file(path)

    monkeypatch.setattr(module, "sha256_file", counting)
    known = {"model.safetensors": sha256_file(release_copy / "model.safetensors")}
    signing.sign(release_copy, keys.private_key, known=known)
    assert sorted(read) == sorted(set(RELEASE_FILES) - {"model.safetensors"})
    assert signing.verify(release_copy, keys.public_key).verified


# -------------------------------------------------------------------------------------- verification


def test_verify_passes_on_an_untouched_release(signed, keys):
    report = signing.verify(signed, keys.public_key)
    assert report.to_json() == {"verified": True, "files": list(RELEASE_FILES), "bad_files": [],
                                "key_fingerprint": keys.key_fingerprint}
    model_signing_verify(signed, keys.public_key)


@pytest.mark.parametrize("tamper", list(TAMPERS))
@pytest.mark.parametrize("name", RELEASE_FILES)
def test_tampering_with_any_file_is_named_and_caught_by_model_signing(release_copy, keys, name, tamper):
    TAMPERS[tamper](release_copy / name)
    report = signing.verify(release_copy, keys.public_key)
    problem = "missing" if tamper == "deleted" else "altered"
    assert not report.verified
    assert report.bad_files == (signing.BadFile(name, problem),)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        model_signing_verify(release_copy, keys.public_key)


@pytest.mark.parametrize("added", ["unsigned.txt", "sub/dir/new.bin", ".hidden"])
def test_an_added_unsigned_file_is_extra(release_copy, keys, added):
    (release_copy / added).parent.mkdir(parents=True, exist_ok=True)
    (release_copy / added).write_bytes(b"not signed")
    report = signing.verify(release_copy, keys.public_key)
    assert report.bad_files == (signing.BadFile(added, "extra"),)
    with pytest.raises(ValueError, match="Extra files"):
        model_signing_verify(release_copy, keys.public_key)


def test_several_problems_are_all_listed(release_copy, keys):
    (release_copy / "config.json").unlink()
    flip_byte(release_copy / "model.safetensors", "middle")
    (release_copy / "notes.md").write_text("x")
    report = signing.verify(release_copy, keys.public_key)
    assert {(bad.path, bad.problem) for bad in report.bad_files} == {
        ("config.json", "missing"), ("model.safetensors", "altered"), ("notes.md", "extra")}
    assert "model.safetensors (altered)" in report.describe_mismatch()


def test_wrong_key_is_check_failed(signed, tmp_path, keys):
    other = signing.generate_key(tmp_path / "other.pem")
    with pytest.raises(CheckFailed, match="wrong key") as err:
        signing.verify(signed, other.public_key)
    assert keys.key_fingerprint in str(err.value) and other.key_fingerprint in str(err.value)
    with pytest.raises(ValueError, match="Key mismatch"):
        model_signing_verify(signed, other.public_key)


def test_wrong_key_without_hint_fails_on_the_signature(release_copy, tmp_path):
    other = signing.generate_key(tmp_path / "other.pem")
    bundle = json.loads((release_copy / "model.sig").read_text())
    del bundle["verificationMaterial"]["publicKey"]
    (release_copy / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(CheckFailed, match="does not check"):
        signing.verify(release_copy, other.public_key)


def _rewrite_statement(folder: Path, change) -> None:
    bundle = json.loads((folder / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    change(statement)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (folder / "model.sig").write_text(json.dumps(bundle))


@pytest.mark.parametrize(
    "corrupt",
    [lambda sig: sig.write_text("not json"),
     lambda sig: sig.write_text("{}"),
     lambda sig: sig.write_bytes(sig.read_bytes()[: sig.stat().st_size // 2]),
     lambda sig: flip_byte(sig, "start"),
     lambda sig: flip_byte(sig, "end"),
     lambda sig: _rewrite_statement(sig.parent, lambda s: s["predicate"]["resources"].pop()),
     lambda sig: sig.write_text(sig.read_text().replace('"sig": "', '"sig": "AAAA'))],
    ids=["text", "empty-object", "truncated", "start-byte", "end-byte", "payload-edited", "sig-edited"],
)
def test_corrupted_signature_is_check_failed(release_copy, keys, corrupt):
    corrupt(release_copy / "model.sig")
    with pytest.raises(CheckFailed, match="model.sig"):
        signing.verify(release_copy, keys.public_key)
    with pytest.raises(Exception):  # noqa: B017 - model_signing raises several types here
        model_signing_verify(release_copy, keys.public_key)


def test_missing_signature_and_folder_are_usage_errors(release_copy, keys, tmp_path):
    (release_copy / "model.sig").unlink()
    with pytest.raises(UsageError, match="not signed") as err:
        signing.verify(release_copy, keys.public_key)
    assert "unswift sign" in (err.value.hint or "")
    with pytest.raises(UsageError, match="not found"):
        signing.verify(tmp_path / "absent", keys.public_key)


def test_keyless_sigstore_bundle_points_to_model_signing(release_copy, keys):
    bundle = json.loads((release_copy / "model.sig").read_text())
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []}
    (release_copy / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(UsageError, match="Sigstore") as err:
        signing.verify(release_copy, keys.public_key)
    assert "model_signing verify sigstore" in err.value.hint


# --------------------------------------------------------------------------- downloads from the Hub


def test_hub_cache_snapshot_of_symlinks_verifies(signed, keys, tmp_path):
    (tmp_path / "with-attrs").mkdir()
    source = Path(shutil.copytree(signed, tmp_path / "with-attrs" / "release"))
    (source / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    snapshot = hub_cache_snapshot(source, tmp_path / "models--org--name")
    assert (snapshot / "model.safetensors").is_symlink()
    assert signing.verify(snapshot, keys.public_key).verified
    model_signing_verify(snapshot, keys.public_key, allow_symlinks=True)
    with pytest.raises(ValueError, match="symlink"):
        model_signing_verify(snapshot, keys.public_key)


def test_hub_cache_snapshot_still_catches_a_changed_blob_and_an_extra_file(signed, keys, tmp_path):
    snapshot = hub_cache_snapshot(signed, tmp_path / "models--org--name")
    flip_byte((snapshot / "config.json").resolve(), "middle")
    (snapshot / "dropped.txt").write_text("x")
    (snapshot / "modeling_unswift.py").resolve().unlink()  # a dangling link: the blob is gone
    report = signing.verify(snapshot, keys.public_key)
    assert {(bad.path, bad.problem) for bad in report.bad_files} == {
        ("config.json", "altered"), ("dropped.txt", "extra"), ("modeling_unswift.py", "missing")}


def test_local_dir_download_metadata_is_ignored_but_real_files_are_not(release_copy, keys):
    metadata = release_copy / ".cache" / "huggingface" / "download"
    metadata.mkdir(parents=True)
    for name in RELEASE_FILES:
        (metadata / f"{name}.metadata").write_text("0123\nabcd\n1712656091.1\n")
    (release_copy / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    (release_copy / ".gitattributes").write_text("*.bin filter=lfs\n")
    assert signing.verify(release_copy, keys.public_key).verified
    model_signing_verify(release_copy, keys.public_key, ignore=(str(release_copy / ".cache"),))

    (release_copy / ".cache" / "stray.bin").write_bytes(b"\0")
    (release_copy / "added.py").write_text("print('x')\n")
    report = signing.verify(release_copy, keys.public_key)
    assert [(bad.path, bad.problem) for bad in report.bad_files] == [
        (".cache/stray.bin", "extra"), ("added.py", "extra")]
