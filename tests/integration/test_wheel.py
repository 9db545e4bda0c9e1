"""The built wheel works on its own: it ships the loader, the card template and the prompt sets, and an
interpreter that sees only the unpacked wheel renders a card from the template inside it.

Everything else in the suite imports the checkout (an editable install), where files outside the package
are still found; only a wheel shows what users get. The card template once lived outside the package, so
cards rendered in the checkout but not from an installed wheel: these tests fail on that layout.

The wheel is built from a clean copy of the repository root (same files, minus git, the venv and build
leftovers), so a stale `build/` folder can neither hide a missing package-data entry nor litter the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.releases import sample_record

from packager.publish import card

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "packager/publish/templates/model_card.md"
#: Appended to the unpacked template: a card that ends with it was rendered from the wheel's copy.
SENTINEL = "\nRendered from the template inside the wheel (test sentinel).\n"
#: Not part of a build, at the top of the repository: version control, the venv, build output, local
#: releases and caches (as .gitignore lists them) ...
_NOT_SOURCE_AT_ROOT = {".git", ".venv", "build", "dist", ".cache", "releases", "demo"}
#: ... and anywhere.
_NOT_SOURCE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.secret")

#: Run in a fresh interpreter with `-S`: the site-packages folders (given as arguments, for the
#: dependencies) go on the path without their .pth files, so the editable install's finder, which maps
#: `packager` to the checkout, is never installed. `packager` can then only come from the cwd, the
#: unpacked wheel.
_RENDER = """
import json, os, sys
checkout, dependencies = sys.argv[1], sys.argv[2:]
sys.path.extend(dependencies)
from packager.publish import card
text = card.render(json.load(sys.stdin))
print(json.dumps({
    "card": text,
    "modules": {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                if name == "packager" or name.startswith("packager.")},
    "path": [os.path.abspath(entry) for entry in sys.path],
    "finders": [repr(finder) for finder in sys.meta_path],
}))
"""


def _not_source(folder: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCE(folder, names))
    return ignored | (_NOT_SOURCE_AT_ROOT & set(names)) if Path(folder) == ROOT else ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from the repository, without dependencies or build isolation."""
    source = tmp_path_factory.mktemp("source") / "unswift"
    shutil.copytree(ROOT, source, ignore=_not_source)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist)],
        cwd=source, capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = dist.glob("unswift-*.whl")
    return found


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unpacked")
    assert not folder.resolve().is_relative_to(ROOT)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    return folder


def render_in_fresh_process(unpacked: Path, record: dict) -> dict:
    """Render a card in a new interpreter whose only source of `packager` is `unpacked`."""
    dependencies = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    done = subprocess.run(
        [sys.executable, "-S", "-c", _RENDER, str(ROOT), *dependencies],
        cwd=unpacked, env=env, input=json.dumps(record), capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_wheel_ships_the_loader_the_card_template_and_the_prompt_sets(wheel):
    expected = [TEMPLATE]
    expected += [path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "packager/runtime").glob("*.py"))]
    prompts = sorted((ROOT / "packager/stages/data").glob("*_prompts.txt"))
    assert prompts, "no prompt sets in the checkout"
    expected += [path.relative_to(ROOT).as_posix() for path in prompts]
    assert "packager/runtime/modeling_unswift.py" in expected
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        assert [name for name in expected if name not in shipped] == []
        for name in expected:
            assert archive.read(name) == (ROOT / name).read_bytes(), name


def test_a_card_renders_from_the_template_inside_the_unpacked_wheel(unpacked):
    record = sample_record()
    rendered = render_in_fresh_process(unpacked, record)

    environment = Path(sys.prefix).resolve()  # the venv may live in the checkout; its packages are not ours
    from_checkout = [entry for entry in map(Path, rendered["path"])
                     if entry.resolve().is_relative_to(ROOT) and not entry.resolve().is_relative_to(environment)]
    assert from_checkout == []
    assert not any("editable" in finder.lower() for finder in rendered["finders"])
    modules = rendered["modules"]
    assert "packager.publish.card" in modules
    outside = {name: file for name, file in modules.items()
               if file is not None and not Path(file).resolve().is_relative_to(unpacked.resolve())}
    assert outside == {}
    assert rendered["card"] == card.render(record)  # the packaged template is the checkout's

    template = unpacked / TEMPLATE
    original = template.read_text(encoding="utf-8")
    template.write_text(original + SENTINEL, encoding="utf-8")
    try:
        assert render_in_fresh_process(unpacked, record)["card"] == rendered["card"] + SENTINEL
    finally:
        template.write_text(original, encoding="utf-8")
