"""packager.publish.signing: keys, `model.sig` in the OpenSSF format, and verification that names each bad file.

Every signature made here is also checked by the real `model_signing` 1.1.1 verifier, so the format is
tested against the tool users run, not against our own reading of it. `make_release` and friends build
small fake release folders (the real converter is tested elsewhere); test_card.py and
test_cli_signing.py import them from here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import model_signing
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from safetensors.torch import save_file

from packager.errors import CheckFailed, UsageError
from packager.formats.files import sha256_file
from packager.publish import signing

#: Files of the fake release, `model.sig` aside; the tamper suites run over each.
RELEASE_FILES = (
    "README.md",
    "config.json",
    "configuration_unswift.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_unswift.py",
    "tokenizer_config.json",
    "unswift.json",
)


def sample_record() -> dict:
    """A release record as docs/FORMAT.md describes it, with plausible measurements filled in."""
    transform = {
        "format_version": 1, "base_model_type": "llama", "family": "llama", "activation": "silu",
        "gated": True, "order": 8, "basis": "chebyshev", "fit": "weighted", "extrapolation": "linear",
        "coverage": 0.6875,
        "layers": [{"expanded": 88, "intermediate": 128}, {"expanded": 88, "intermediate": 128}],
        "hardening": {"enabled": True, "signs": True, "scales": True, "permutation": True,
                      "secret_id": "3f9a0c1d2e4b5a69"},
        "calibration": {"tokens": 4096, "seed": 0, "source": "self-sampled", "interval": "quantile"},
        "dtype": "float32",
    }
    return {
        "format_version": 1,
        "tool": {"name": "unswift", "version": "0.1.0"},
        "transformers": ">=5.0,<6",
        "source": {"name": "tiny-llama", "base_model": "example-org/tiny-llama", "license": "apache-2.0",
                   "model_type": "llama", "architecture": "LlamaForCausalLM", "dtype": "float32",
                   "num_parameters": 98765, "files": {"model.safetensors": "ab" * 32}},
        "transform": transform,
        "calibration": {"tokens": 4096, "seed": 0, "source": "self-sampled",
                        "outside_interval_fraction": 0.00071},
        "inputs": {"source": "cd" * 32},
        "size": {"release_bytes": 3456789, "source_bytes": 1234567},
        "eval": {"top1_agreement": 0.99612, "kl_mean": 0.0023817, "ppl_reference": 11.4072,
                 "ppl_release": 11.5381, "greedy_match": 0.8125, "eval_tokens": 8192, "coverage": 0.6875,
                 "order": 8,
                 "noise_floor": {"top1_agreement": 0.99987, "kl_mean": 3.1e-09, "ppl_release": 11.4073},
                 "text_source": "self-sampled", "calibration_overlap": False},
        "bench": [
            {"device": "cpu", "dtype": "float32", "batch": 1, "decode_slowdown": 2.37,
             "prefill_slowdown": 1.64, "predicted_decode_slowdown": 2.52},
            {"device": "cpu", "dtype": "float32", "batch": 8, "decode_slowdown": 2.91,
             "prefill_slowdown": 1.77, "predicted_decode_slowdown": 2.52},
        ],
        "audit": {"protected_param_fraction": 0.4419,
                  "attacks": [{"name": "coefficient_ratio", "recovered_fraction": 0.0231,
                               "relative_error": 0.734, "seconds": 1.83, "rebuilt_top1": 0.0458},
                              {"name": "kerckhoffs", "recovered_fraction": 0.9962, "relative_error": 0.00043,
                               "seconds": 47.2, "rebuilt_top1": 0.9917}],
                  "leaks": []},
        "signing": {"key_fingerprint": None},
        "payload": {},
    }  # fmt: skip


def make_release(root: Path, record: dict | None = None) -> Path:
    """Write a small fake release folder (unsigned, no README) at `root` and return it."""
    root.mkdir(parents=True)
    config = {"model_type": "unswift_llama", "architectures": ["UnswiftLlamaForCausalLM"], "hidden_size": 16,
              "auto_map": {"AutoConfig": "configuration_unswift.UnswiftConfig"},
              "unswift": {"format_version": 1}}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "configuration_unswift.py").write_text("from transformers import PretrainedConfig\n")
    (root / "modeling_unswift.py").write_text("import torch\n\n\ndef forward(x):\n    return x * 2\n")
    (root / "generation_config.json").write_text('{"do_sample": false}\n')
    (root / "tokenizer_config.json").write_text('{"model_max_length": 256}\n')
    generator = torch.Generator().manual_seed(0)
    tensors = {"model.layers.0.mlp.theta": torch.randn(16, 40, generator=generator),
               "model.layers.0.mlp.in_proj.weight": torch.randn(64, 16, generator=generator)}
    metadata = {"format": "pt", "unswift_format_version": "1"}
    save_file(tensors, str(root / "model.safetensors"), metadata=metadata)
    (root / "unswift.json").write_text(json.dumps(record or sample_record(), indent=2))
    return root


def write_key(path: Path, private_key) -> Path:
    """Write any private key as a password-less PKCS#8 PEM file (for keys `keygen` would not make)."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def model_signing_verify(folder: Path, public_key: Path, *, allow_symlinks: bool = False,
                         ignore: tuple[str, ...] = ()) -> None:
    """The real model_signing verifier, configured as its `verify key` CLI does (raises ValueError)."""
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[*ignore, folder / "model.sig"], ignore_git_paths=True
    ).set_allow_symlinks(allow_symlinks)
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    verifier.set_hashing_config(hashing).verify(folder, folder / "model.sig")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> signing.KeyPair:
    return signing.generate_key(tmp_path_factory.mktemp("keys") / "publisher.pem")


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    """One signed release per module; tests copy it before changing anything."""
    release = make_release(tmp_path_factory.mktemp("signed") / "release")
    signing.sign(release, keys.private_key)
    return release


@pytest.fixture
def release_copy(signed, tmp_path) -> Path:
    return Path(shutil.copytree(signed, tmp_path / "release"))


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


def test_sign_records_payload_and_fingerprint_then_card_then_signature(tmp_path, keys):
    release = make_release(tmp_path / "release")
    result = signing.sign(release, keys.private_key)
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


def test_sign_needs_a_release_record(tmp_path, keys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="unswift.json"):
        signing.sign(tmp_path / "plain", keys.private_key)
    with pytest.raises(UsageError, match="not found"):
        signing.sign(tmp_path / "absent", keys.private_key)


# -------------------------------------------------------------------------------------- verification


def test_verify_passes_on_an_untouched_release(signed, keys):
    report = signing.verify(signed, keys.public_key)
    assert report.to_json() == {"verified": True, "files": list(RELEASE_FILES), "bad_files": [],
                                "key_fingerprint": keys.key_fingerprint}
    model_signing_verify(signed, keys.public_key)


def _flip(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    index = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


TAMPERS = {
    "start": lambda path: _flip(path, "start"),
    "middle": lambda path: _flip(path, "middle"),
    "end": lambda path: _flip(path, "end"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "deleted": lambda path: path.unlink(),
}


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
    _flip(release_copy / "model.safetensors", "middle")
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
     lambda sig: _flip(sig, "start"),
     lambda sig: _flip(sig, "end"),
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


def hub_cache_snapshot(release: Path, cache: Path) -> Path:
    """Lay `release` out as the HF cache does: blobs named by hash, snapshot files as relative symlinks."""
    blobs = cache / "blobs"
    snapshot = cache / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    for path in sorted(release.rglob("*")):
        if path.is_file():
            relative = path.relative_to(release)
            blob = blobs / sha256_file(path)
            shutil.copyfile(path, blob)
            link = snapshot / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


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
    _flip((snapshot / "config.json").resolve(), "middle")
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
