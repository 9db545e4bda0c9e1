"""packager.publish.card: the model card is rendered from unswift.json only, says what was not measured, and
never claims more protection than the audit measured."""

from __future__ import annotations

import copy
import json
import re

import pytest
from huggingface_hub import ModelCard
from support.releases import make_release, sample_record

from packager.errors import UsageError
from packager.publish import card, signing
from packager.publish.seal import seal

FORBIDDEN = re.compile(r"irreversib|unrecoverab|secur", re.IGNORECASE)


def section(text: str, title: str) -> str:
    """The body of one `## title` section of the card."""
    body = text.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def numbers_of(value) -> list[float]:
    """Every number in a record (strings included, e.g. the transformers range), recursively."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in numbers_of(item)]
    if isinstance(value, list):
        return [n for item in value for n in numbers_of(item)]
    if isinstance(value, str):
        return [float(match) for match in re.findall(r"\d+(?:\.\d+)?", value)]
    return []


@pytest.fixture
def record() -> dict:
    return sample_record()


def test_template_ships_inside_the_package():
    from importlib import resources

    package, name = card.TEMPLATE
    assert package.startswith("packager.")
    assert resources.files(package).joinpath(name).is_file()


def test_yaml_header_parses_with_huggingface_hub(record):
    data = ModelCard(card.render(record)).data.to_dict()
    assert data["base_model"] == "example-org/tiny-llama"
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["unswift", "taylormlp", "llama"]
    assert data["pipeline_tag"] == "text-generation"


def test_yaml_header_without_base_model_or_licence(record):
    record["source"]["base_model"] = None
    del record["source"]["license"]
    data = ModelCard(card.render(record)).data.to_dict()
    assert "base_model" not in data
    assert data["license"] == "other"


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [(("eval", "top1_agreement"), "99.61 %", "97.25 %"),
     (("eval", "kl_mean"), "0.002382", "0.04411"),
     (("eval", "ppl_release"), "11.54", "13.37"),
     (("eval", "greedy_match"), "81.25 %", "62.50 %"),
     (("bench", 0, "decode_slowdown"), "2.37×", "4.12×"),
     (("bench", 1, "prefill_slowdown"), "1.77×", "1.05×"),
     (("audit", "protected_param_fraction"), "44.19 %", "51.23 %"),
     (("audit", "attacks", 1, "recovered_fraction"), "99.62 %", "12.34 %"),
     (("audit", "attacks", 0, "seconds"), "1.83 s", "9.87 s"),
     (("size", "release_bytes"), "3.30 MiB", "4.00 MiB"),
     (("transform", "order"), "Order: 8", "Order: 13")],
)
def test_a_changed_figure_in_the_record_changes_the_card(record, path, old, new):
    before = card.render(record)
    target = record
    for key in path[:-1]:
        target = target[key]
    value = {"97.25 %": 0.9725, "0.04411": 0.04411, "13.37": 13.37, "62.50 %": 0.625, "4.12×": 4.12,
             "1.05×": 1.05, "51.23 %": 0.5123, "12.34 %": 0.1234, "9.87 s": 9.87, "4.00 MiB": 4 * 2**20,
             "Order: 13": 13}[new]
    target[path[-1]] = value
    after = card.render(record)
    assert old in before and old not in after
    assert new in after and new not in before


def test_every_decimal_figure_in_the_card_comes_from_the_record(record):
    text = card.render(record)
    known = numbers_of(record)
    candidates = known + [n * 100 for n in known] + [n / 2**20 for n in known] + [n / 2**30 for n in known]
    figures = re.findall(r"(?<![\w.])\d+\.\d+(?:e[-+]\d+)?", text)
    assert len(figures) > 20  # the check below must have something to check
    for figure in figures:
        decimals = len(figure.split("e")[0].split(".")[1])
        tolerance = 0.5 * 10**-decimals * (10 ** int(figure.split("e")[1]) if "e" in figure else 1) * 1.001
        assert any(abs(float(figure) - c) <= tolerance for c in candidates), figure


def test_measured_sections_quote_their_command(record):
    text = card.render(record)
    assert "unswift eval" in section(text, "Fidelity, as measured")
    assert "unswift bench" in section(text, "Slowdown, as measured")
    assert "unswift audit" in section(text, "Protection, as audited")


def test_unmeasured_sections_say_so_and_show_no_figure(record):
    record["eval"], record["bench"], record["audit"] = None, [], None
    text = card.render(record)
    for title, words in [("Fidelity, as measured", "Not measured"), ("Slowdown, as measured", "Not measured"),
                         ("Protection, as audited", "not audited")]:
        body = section(text, title)
        assert words in body
        assert not re.search(r"\d", body), body
    assert "reversible by algebra" in section(text, "Protection, as audited")


def test_greedy_match_null_is_explained(record):
    record["eval"]["greedy_match"] = None
    text = card.render(record)
    assert "not measured (no tokenizer)" in section(text, "Fidelity, as measured")
    assert "no tokenizer" in section(text, "Limitations")


@pytest.mark.parametrize("variant", ["full", "unmeasured", "everything-recovered"])
def test_the_card_never_claims_irreversible_unrecoverable_or_secure(record, variant):
    if variant == "unmeasured":
        record["eval"], record["bench"], record["audit"] = None, None, None
    if variant == "everything-recovered":
        for attack in record["audit"]["attacks"]:
            attack["recovered_fraction"] = 0.0
    text = card.render(record)
    assert not FORBIDDEN.search(text), FORBIDDEN.search(text)
    assert "reversible by algebra" in text


def test_protection_section_reports_attacks_and_leaks_in_plain_words(record):
    leak = {"tensor": "model.layers.0.mlp.theta", "matches": ["model.layers.0.mlp.down_proj"]}
    record["audit"]["leaks"] = [leak]
    text = section(card.render(record), "Protection, as audited")
    assert "`kerckhoffs`" in text and "knows unswift's method" in text
    assert "99.62 %" in text and "99.17 %" in text and "47.2 s" in text
    assert "`model.layers.0.mlp.theta` matches `model.layers.0.mlp.down_proj`" in text


def test_the_recipe_shows_every_transform_key(record):
    recipe = section(card.render(record), "How it was made")
    for key in record["transform"]:
        assert f"{key}:" in recipe


def test_load_and_verify_sections_use_the_recorded_repo_tag_range_and_fingerprint(record):
    record["hub"] = {"repo": "acme/tiny-unswift", "tag": "v1.2"}
    record["signing"]["key_fingerprint"] = "f" * 64
    text = card.render(record)
    load = section(text, "How to load it")
    assert 'repo, revision = "acme/tiny-unswift", "v1.2"' in load and "trust_remote_code=True" in load
    assert 'pip install "transformers>=5.0,<6"' in load and "accelerate" in load
    verify = section(text, "How to verify it")
    assert "f" * 64 in verify
    assert "unswift verify acme/tiny-unswift --revision v1.2 --key publisher.pub" in verify
    assert ("model_signing verify key ./tiny-unswift --signature ./tiny-unswift/model.sig "
            "--public_key publisher.pub --ignore-paths ./tiny-unswift/.cache") in verify
    assert "--allow_symlinks" in verify
    runs = section(text, "What runs it, and what does not")
    assert "vLLM, SGLang | no" in runs and "llama.cpp" in runs and "unswift_llama" in runs


def test_a_release_without_tokenizer_does_not_load_one(record):
    record["payload"] = {"config.json": "00" * 32, "model.safetensors": "11" * 32}
    assert "AutoTokenizer.from_pretrained(repo" not in card.render(record)
    record["payload"]["tokenizer.json"] = "22" * 32
    assert "AutoTokenizer.from_pretrained(repo" in card.render(record)


def test_card_writes_readme_and_reports_no_signature_on_unsigned_release(tmp_path):
    release = make_release(tmp_path / "release")
    result = card.card(release)
    assert result.readme == release / "README.md" and result.readme.is_file()
    assert result.to_json() == {"readme": str(release / "README.md"), "signature_removed": False}


def test_card_on_a_signed_release_removes_the_signature_and_says_to_resign(tmp_path):
    release = make_release(tmp_path / "release")
    pair = signing.generate_key(tmp_path / "k.pem")
    seal(release, pair.private_key)
    readme = (release / "README.md").read_text()
    assert pair.key_fingerprint in readme
    result = card.card(release)
    assert result.signature_removed and not (release / "model.sig").exists()
    assert f"unswift sign {release} --key KEY" in result.message()
    assert (release / "README.md").read_text() == readme  # same record, same card


def test_card_refuses_a_folder_without_record(tmp_path):
    with pytest.raises(UsageError, match="unswift.json"):
        card.card(tmp_path)
    (tmp_path / "unswift.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(UsageError, match="'source'"):
        card.card(tmp_path)


def test_render_does_not_change_the_record(record):
    before = copy.deepcopy(record)
    card.render(record)
    assert record == before


def test_a_fingerprinted_copy_says_it_carries_one_never_whose_and_its_cost(record):
    assert "Leak attribution" not in card.render(record)  # an ordinary release has no such section
    record["fingerprint"] = {
        "scheme": "unswift-fingerprint-v1", "kl_budget": 3e-07, "ceiling": 0.01, "predicted_kl": 2.9e-07,
        "sensitivity_tokens": 16384, "roles": 210,
        "source_fidelity": {"top1": 0.99963, "kl": 3.1e-07, "tokens": 8176},
    }
    text = card.render(record)
    body = section(text, "Leak attribution")
    assert "carries a recipient fingerprint" in body
    assert "Nothing unswift writes into this release names its recipient" in body
    assert "99.96" in body and "8176" in body  # its own cost, from the record
    assert "unswift trace" in body and "distillation" in body
    assert "## How it was made" in text.split("## Leak attribution", 1)[1]  # a section of its own
    assert not FORBIDDEN.search(text)
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?:e[-+]\d+)?", body)
    known = numbers_of(record)
    assert all(any(abs(float(n) - c) <= 0.006 * max(1.0, abs(c)) for c in known + [k * 100 for k in known])
               for n in numbers), numbers
