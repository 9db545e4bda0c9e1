"""packager.publish.seal: a release is signed in one order (record, then card, then `model.sig`), checks come
before any change, and the card and the signature stay independent of each other."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.releases import RELEASE_FILES, make_release, model_signing_verify, write_key

from packager.errors import UsageError
from packager.formats.files import sha256_file
from packager.publish import signing
from packager.publish.seal import seal


@pytest.fixture
def sealed(tmp_path, keys) -> Path:
    release = make_release(tmp_path / "release")
    seal(release, keys.private_key)
    return release


def test_seal_records_payload_and_fingerprint_then_card_then_signature(tmp_path, keys):
    release = make_release(tmp_path / "release")
    result = seal(release, keys.private_key)
    record = json.loads((release / "unswift.json").read_text())
    assert set(record["payload"]) == set(RELEASE_FILES) - {"README.md", "unswift.json"}
    assert record["payload"]["model.safetensors"] == sha256_file(release / "model.safetensors")
    assert record["signing"]["key_fingerprint"] == keys.key_fingerprint
    assert keys.key_fingerprint in (release / "README.md").read_text()
    assert result.files == RELEASE_FILES
    assert result.signature == release / "model.sig"
    assert result.to_json() == {"release_dir": str(release), "files": list(RELEASE_FILES),
                                "key_fingerprint": keys.key_fingerprint,
                                "signature": str(release / "model.sig")}
    assert signing.verify(release, keys.public_key).verified
    model_signing_verify(release, keys.public_key)


def test_seal_accepts_the_key_from_the_environment(sealed, keys, monkeypatch):
    monkeypatch.setenv(signing.KEY_ENV, keys.private_key.read_text())
    assert seal(sealed).key_fingerprint == keys.key_fingerprint
    model_signing_verify(sealed, keys.public_key)


def test_seal_checks_the_key_before_touching_the_release(sealed, tmp_path):
    before = {p.name: p.read_bytes() for p in sealed.iterdir()}
    with pytest.raises(UsageError):
        seal(sealed, write_key(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate()))
    assert {p.name: p.read_bytes() for p in sealed.iterdir()} == before


def test_seal_refuses_an_unpublishable_folder_before_touching_the_record(sealed, keys):
    shutil.copy(keys.private_key, sealed / "publisher.pem")
    before = {p.name: p.read_bytes() for p in sealed.iterdir()}
    with pytest.raises(UsageError, match="holds a private key"):
        seal(sealed, keys.private_key)
    assert {p.name: p.read_bytes() for p in sealed.iterdir()} == before


def test_seal_needs_a_release_record(tmp_path, keys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="unswift.json"):
        seal(tmp_path / "plain", keys.private_key)
    with pytest.raises(UsageError, match="not found"):
        seal(tmp_path / "absent", keys.private_key)


@pytest.mark.parametrize(
    ("imported", "absent"),
    [("packager.publish.card", "packager.publish.signing"),
     ("packager.publish.signing", "packager.publish.card")],
)
def test_card_and_signing_do_not_import_each_other(imported, absent):
    """Only `seal` knows both; a fresh interpreter shows what importing one pulls in."""
    code = (f"import sys, {imported}; "
            f"print(sorted(m for m in sys.modules if m.startswith(('{absent}', 'packager.publish.seal'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
