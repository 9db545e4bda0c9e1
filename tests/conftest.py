"""Shared pytest fixtures. Each block is owned by one area; keep blocks self-contained."""


# ======================================================================================================
# Hub double (packager/hub.py, `unswift push`, `download_release`): a loopback Hub on 127.0.0.1.
# Self-contained block: uses only its own names (prefixed `_hubd`) plus the `hub_double` fixture.
# ======================================================================================================
import pytest as _hubd_pytest  # noqa: E402


@_hubd_pytest.fixture
def hub_double(tmp_path_factory, monkeypatch):
    """A fresh in-memory Hub, served on 127.0.0.1; yields the `HubDouble` (see tests/hub_double.py).

    Exports HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1 and a temporary HF_HOME for subprocesses.
    huggingface_hub read those at import, so in-process calls must pass `endpoint=` (and `no_xet=True`)
    explicitly; the token file and cache paths of the already-imported client are redirected here too.
    """
    import huggingface_hub.constants as hf_constants
    from hub_double import DEFAULT_TOKEN, HubDouble

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


@_hubd_pytest.fixture
def hub_fast_retries(monkeypatch):
    """Shorten the waits between retries (huggingface_hub backoff, packager.publish.hub), never their number."""
    import time as real_time
    import types

    import huggingface_hub.utils._http as hf_http

    import packager.publish.hub.hub

    def short_sleep(seconds: float) -> None:
        real_time.sleep(min(seconds, 0.01))

    # huggingface_hub.utils._http only uses `time.sleep`; give it a module whose sleep is short.
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=short_sleep, time=real_time.time))
    monkeypatch.setattr(packager.publish.hub.hub, "_RETRY_WAITS", tuple(0.01 for _ in packager.publish.hub.hub._RETRY_WAITS))


# ======================================================================================================
# Core (calibrate / convert / eval): isolation from the user's Hub login and caches, and shared tiny
# checkpoints. Self-contained block: names prefixed `_core`.
# ======================================================================================================
import subprocess as _core_subprocess  # noqa: E402
import sys as _core_sys  # noqa: E402
from pathlib import Path as _CorePath  # noqa: E402

_core_sys.path.insert(0, str(_CorePath(__file__).parent))


@_hubd_pytest.fixture(autouse=True)
def _core_isolated_environment(tmp_path_factory, monkeypatch):
    """Tests never read the user's HF token, Hub cache or unswift secret; Hub access is refused."""
    home = tmp_path_factory.getbasetemp() / "core_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNSWIFT_CACHE", str(home / "unswift"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("UNSWIFT_SECRET", raising=False)
    monkeypatch.delenv("UNSWIFT_SIGNING_KEY", raising=False)


@_hubd_pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama checkpoint (gate pre-activations |g| ~ 6)."""
    from tiny import build_tiny

    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@_hubd_pytest.fixture(scope="session")
def tiny_llama_stats(tiny_llama, tmp_path_factory):
    from packager import api

    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    api.calibrate(tiny_llama, tokens=2048, out=path)
    return path


@_hubd_pytest.fixture(scope="session")
def tiny_release(tiny_llama, tiny_llama_stats, tmp_path_factory):
    """A default (weighted fit, hardened) order-8 release of `tiny_llama` at full coverage."""
    from packager import api
    from packager.stages.convert import ConvertOptions

    out = tmp_path_factory.mktemp("release") / "tiny-llama"
    api.convert(tiny_llama, out, stats=tiny_llama_stats, options=ConvertOptions(order=8, coverage=1.0),
                secret_file=None)
    return out


def run_python(code: str, *args: str, env: dict | None = None) -> _core_subprocess.CompletedProcess:
    """Run `code` in a fresh Python process (a real user's process: nothing imported from the tests)."""
    import os

    return _core_subprocess.run([_core_sys.executable, "-c", code, *args], capture_output=True, text=True,
                                env={**os.environ, **(env or {})}, timeout=600)
