"""Shared pytest fixtures: an isolated environment for every test, the loopback Hub, tiny checkpoints.

Helpers that are not fixtures live in `tests/support/` (imported as `support.*`; this file puts `tests/` on
the path). Tests never import this module by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """Tests never read the user's HF token, Hub cache or unswift secret; Hub access is refused."""
    home = tmp_path_factory.getbasetemp() / "core_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNSWIFT_CACHE", str(home / "unswift"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("UNSWIFT_SECRET", raising=False)
    monkeypatch.delenv("UNSWIFT_SIGNING_KEY", raising=False)


# -- the loopback Hub -----------------------------------------------------------------------------------


@pytest.fixture
def hub_double(tmp_path_factory, monkeypatch):
    """A fresh in-memory Hub, served on 127.0.0.1; yields the `HubDouble` (see tests/support/hub_double.py).

    Exports HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1 and a temporary HF_HOME for subprocesses.
    huggingface_hub read those at import, so in-process calls must pass `endpoint=` (and `no_xet=True`)
    explicitly; the token file and cache paths of the already-imported client are redirected here too.
    """
    import huggingface_hub.constants as hf_constants
    from support.hub_double import DEFAULT_TOKEN, HubDouble

    home = tmp_path_factory.mktemp("hf_home")
    double = HubDouble().start()
    monkeypatch.setenv("HF_ENDPOINT", double.url)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def hub_fast_retries(monkeypatch):
    """Shorten the waits between retries (huggingface_hub's backoff and ours), never their number."""
    import time as real_time
    import types

    import huggingface_hub.utils._http as hf_http

    import packager.publish.hub.retry as hub_retry

    def short_sleep(seconds: float) -> None:
        real_time.sleep(min(seconds, 0.01))

    # huggingface_hub.utils._http only uses `time.sleep`; give it a module whose sleep is short.
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=short_sleep, time=real_time.time))
    monkeypatch.setattr(hub_retry, "RETRY_WAITS", tuple(0.01 for _ in hub_retry.RETRY_WAITS))


# -- tiny checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama checkpoint (gate pre-activations |g| ~ 6)."""
    from support.tiny import build_tiny

    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_llama_stats(tiny_llama, tmp_path_factory):
    from packager import api

    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    api.calibrate(tiny_llama, tokens=2048, out=path)
    return path


@pytest.fixture(scope="session")
def tiny_release(tiny_llama, tiny_llama_stats, tmp_path_factory):
    """A default (weighted fit, hardened) order-8 release of `tiny_llama` at full coverage."""
    from packager import api
    from packager.stages.options import ConvertOptions

    out = tmp_path_factory.mktemp("release") / "tiny-llama"
    api.convert(tiny_llama, out, stats=tiny_llama_stats, options=ConvertOptions(order=8, coverage=1.0),
                secret_file=None)
    return out


# -- publisher keys and a signed fake release (signing, card and verify tests) ----------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A publisher key pair (one per test module)."""
    from packager.publish import signing

    return signing.generate_key(tmp_path_factory.mktemp("keys") / "publisher.pem")


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    """One signed fake release per module (sealed, as `unswift sign` does); tests copy it before changing it."""
    from support.releases import make_release

    from packager.publish.seal import seal

    release = make_release(tmp_path_factory.mktemp("signed") / "release")
    seal(release, keys.private_key)
    return release


@pytest.fixture
def release_copy(signed, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(signed, tmp_path / "release"))
