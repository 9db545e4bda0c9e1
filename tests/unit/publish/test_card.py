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
     (("size", "release_bytes"), "3.46 MB", "4.00 MB"),
     (("transform", "order"), "Order: 8", "Order: 13")],
)
def test_a_changed_figure_in_the_record_changes_the_card(record, path, old, new):
    before = card.render(record)
    target = record
    for key in path[:-1]:
        target = target[key]
    value = {"97.25 %": 0.9725, "0.04411": 0.04411, "13.37": 13.37, "62.50 %": 0.625, "4.12×": 4.12,
             "1.05×": 1.05, "51.23 %": 0.5123, "12.34 %": 0.1234, "9.87 s": 9.87, "4.00 MB": 4_000_000,
             "Order: 13": 13}[new]
    target[path[-1]] = value
    after = card.render(record)
    assert old in before and old not in after
    assert new in after and new not in before


def test_every_decimal_figure_in_the_card_comes_from_the_record(record):
    """Every figure but those of "Runs with", which quote unswift's benchmarks on the demo model (named)."""
    text = card.render(record)
    runs_with = section(text, "Runs with")
    text = text.replace(runs_with, "")
    known = numbers_of(record)
    candidates = known + [n * 100 for n in known] + [n / 1e6 for n in known] + [n / 1e9 for n in known]
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


def test_the_recipe_is_a_short_summary_table_not_per_unit_yaml(record):
    record["transform"]["layers"] = [{"unit": f"model.layers.{i}.mlp", "intermediate": 128, "expanded": 88 + i % 3}
                                     for i in range(40)]
    text = card.render(record)
    recipe = section(text, "How it was made")
    assert "```yaml" not in text and "model.layers." not in text
    table = [line for line in recipe.splitlines() if line.startswith("|")]
    assert 4 <= len(table) <= 14
    assert "| MLP units | 40, 5,120 intermediate channels in all |" in recipe
    assert "88 to 90 per unit" in recipe and "`unswift.json`" in recipe


def test_the_allocation_is_one_sentence_and_lists_no_empty_group(record):
    transform = record["transform"]
    transform["allocation"] = {"kind": "boost", "base_order": 7, "boost_order": 16, "boosted_channels": 20,
                               "expanded_channels": 176}
    transform["layers"] = [{"intermediate": 128, "expanded": 88, "groups": [{"channels": 68, "order": 7},
                                                                           {"channels": 20, "order": 16}]},
                           {"intermediate": 128, "expanded": 88, "groups": [{"channels": 88, "order": 7},
                                                                           {"channels": 0, "order": 16}]}]
    text = card.render(record)
    what = section(text, "What this is")
    sentence = next(line for line in what.splitlines() if line.startswith("- Order: 8"))
    assert "20 of the 176 expanded channels" in sentence and "one in 9" in sentence
    assert "order 16" in sentence and "others order 7" in sentence and "same bytes" in sentence
    assert "channels: 0" not in text and "0 to 20 per unit" in section(text, "How it was made")


def test_coverage_wording_matches_the_release(record):
    record["transform"]["coverage"] = 1.0
    what = section(card.render(record), "What this is")
    assert "every MLP intermediate channel is expanded" in what
    assert "plain MLP" not in what and "the others" not in what
    record["transform"]["coverage"] = 0.6875
    assert "68.75 %" in section(card.render(record), "What this is")


def test_eval_text_is_described_in_words_beside_the_hardware(record):
    fidelity = section(card.render(record), "Fidelity, as measured")
    assert "8,192 tokens of text sampled from the source model (seed 1000)" in fidelity
    assert "self-sampled" not in fidelity
    assert "Measured on Example CPU @ 3.0GHz, 2 cores, cpu, float32" in fidelity
    record["eval"]["text_source"] = "file:corpus.jsonl"
    assert "tokens of text from `corpus.jsonl`" in section(card.render(record), "Fidelity, as measured")


def test_every_measured_section_names_its_hardware_and_the_bytes_model_is_explained(record):
    text = card.render(record)
    slowdown = section(text, "Slowdown, as measured")
    assert "Measured on Example CPU @ 3.0GHz, 2 cores, cpu, float32 (1 torch thread" in slowdown
    assert "bytes model" in slowdown and "prefill above it" in slowdown and "below the prediction" in slowdown
    assert "on Example CPU @ 3.0GHz, 2 cores" in section(text, "Protection, as audited")
    glance = section(text, "At a glance")
    assert glance.count("Example CPU @ 3.0GHz, 2 cores") == 3
    del record["eval"]["hardware"]
    assert "Measured on unrecorded hardware, cpu, float32" in section(card.render(record), "Fidelity, as measured")


def test_bench_entries_from_two_machines_get_a_table_each(record):
    record["bench"].append({**record["bench"][0], "hardware": "Example GPU", "device": "cuda", "dtype": "bfloat16",
                            "threads": 0, "clock": "wall", "decode_slowdown": 1.93})
    slowdown = section(card.render(record), "Slowdown, as measured")
    assert "Measured on Example GPU, cuda, bfloat16 (timed by the wall clock" in slowdown
    assert slowdown.count("| batch |") == 2 and "1.93×" in slowdown


def test_the_attack_headline_says_what_an_attacker_gets(record):
    kerckhoffs = record["audit"]["attacks"][1]
    kerckhoffs.update(recovered_fraction=0.3333, recovered_fraction_up_to_scale=0.9996, rebuilt_top1=0.9961)
    record["audit"]["release_top1"] = 0.997
    text = card.render(record)
    protection = section(text, "Protection, as audited")
    first = next(line for line in protection.splitlines() if line.startswith("- "))
    assert "`kerckhoffs`" in first
    assert first.index("99.61 %") < first.index("99.96 %") < first.index("33.33 %")
    assert "up to the secret scales (33.33 % exactly)" in first
    assert "the release itself picks the same next token as the source 99.70 %" in protection
    assert not re.search(r"recovered \d", protection)
    glance = section(text, "At a glance")
    assert "`kerckhoffs`) rebuilds plain MLPs" in glance
    assert "the model rebuilt with them picks the same next token as the source on 99.61 %" in glance


def test_sizes_use_decimal_units(record):
    record["size"] = {"release_bytes": 984_282_504, "source_bytes": 2_538_090_408}
    text = card.render(record)
    assert "984.28 MB of release files (the source checkpoint: 2.54 GB)" in text
    assert "GiB" not in text and "MiB" not in text


def test_snippets_say_so_when_the_repo_or_tag_is_unknown(record):
    text = card.render(record)
    assert 'repo, revision = "ORG/NAME", "TAG"' in text
    assert "replace `ORG/NAME` and `TAG`" in section(text, "How to load it")
    record["hub"] = {"repo": "acme/tiny", "tag": None}
    text = card.render(record)
    assert 'repo, revision = "acme/tiny", "TAG"' in text and "ORG/NAME" not in text
    assert "before the release was tagged" in section(text, "How to load it")
    record["hub"]["tag"] = "v1"
    text = card.render(record)
    assert "ORG/NAME" not in text and '"TAG"' not in text and "--revision TAG" not in text
    assert "replace" not in section(text, "How to load it")


def test_load_and_verify_sections_use_the_recorded_repo_tag_range_and_fingerprint(record):
    record["hub"] = {"repo": "acme/tiny-unswift", "tag": "v1.2"}
    record["signing"]["key_fingerprint"] = "f" * 64
    text = card.render(record)
    load = section(text, "How to load it")
    assert 'repo, revision = "acme/tiny-unswift", "v1.2"' in load and "trust_remote_code=True" in load
    assert 'pip install "transformers>=5.0,<6"' in load and "accelerate" in load
    verify = section(text, "How to verify it")
    assert "f" * 64 in verify
    assert "unswift verify acme/tiny-unswift --revision v1.2 --key publisher.pem.pub" in verify
    assert ("model_signing verify key ./tiny-unswift --signature ./tiny-unswift/model.sig "
            "--public_key publisher.pem.pub --ignore-paths ./tiny-unswift/.cache") in verify
    assert "--allow_symlinks" in verify and "sha256sum publisher.pem.pub" in verify
    assert "publisher.pub" not in text
    runs = section(text, "Runs with")
    assert "| vLLM, Transformers backend (offline `LLM` and the OpenAI-compatible server) | yes" in runs
    assert 'LLM(model="acme/tiny-unswift", revision="v1.2"' in runs and "--revision v1.2" in runs
    assert "llama.cpp" in runs and "unswift_llama" in runs


def test_a_release_without_tokenizer_does_not_load_one(record):
    record["payload"] = {"config.json": "00" * 32, "model.safetensors": "11" * 32}
    assert "AutoTokenizer.from_pretrained(repo" not in card.render(record)
    record["payload"]["tokenizer.json"] = "22" * 32
    assert "AutoTokenizer.from_pretrained(repo" in card.render(record)


def test_card_writes_readme_and_reports_no_signature_on_unsigned_release(tmp_path):
    release = make_release(tmp_path / "release")
    result = card.card(release)
    assert result.readme == release / "README.md" and result.readme.is_file()
    assert result.to_json() == {"readme": str(release / "README.md"), "changed": True, "signature_removed": False}


def test_card_keeps_a_valid_signature_when_the_card_does_not_change(tmp_path):
    release = make_release(tmp_path / "release")
    pair = signing.generate_key(tmp_path / "k.pem")
    seal(release, pair.private_key)
    readme = (release / "README.md").read_bytes()
    signature = (release / "model.sig").read_bytes()
    assert pair.key_fingerprint in readme.decode()
    for _ in range(2):
        result = card.card(release)
        assert not result.changed and not result.signature_removed
        assert result.to_json()["changed"] is False and "up to date" in result.message()
    assert (release / "README.md").read_bytes() == readme and (release / "model.sig").read_bytes() == signature
    assert signing.verify(release, signing.load_public_key(pair.public_key)).verified


def test_card_removes_the_signature_when_the_card_changes_and_says_to_resign(tmp_path):
    release = make_release(tmp_path / "release")
    pair = signing.generate_key(tmp_path / "k.pem")
    seal(release, pair.private_key)
    record = json.loads((release / "unswift.json").read_text())
    record["eval"]["top1_agreement"] = 0.9725
    (release / "unswift.json").write_text(json.dumps(record))
    result = card.card(release)
    assert result.changed and result.signature_removed and not (release / "model.sig").exists()
    assert f"unswift sign {release} --key KEY" in result.message()
    assert "97.25 %" in (release / "README.md").read_text()


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


def test_runs_with_quotes_only_unswifts_demo_benchmarks_and_says_so(record):
    from packager.publish import runtimes

    text = section(card.render(record), "Runs with")
    quoted = [*runtimes.VLLM_DEMO_SLOWDOWN.values(), runtimes.INT8_DEMO["memory_ratio"],
              *(100 * runtimes.INT8_DEMO[k] for k in ("top1_vs_int8_source", "theta_int8_top1"))]
    figures = re.findall(r"(?<![\w.])(\d+\.\d+)(?:x| ?%)", text)  # ratios and shares, not versions
    assert len(figures) == len(quoted)
    for figure in figures:
        assert any(abs(float(figure) - q) < 0.051 for q in quoted), figure
    for row in text.splitlines():
        if re.search(r"\d+\.\d+(?:x| ?%)", row):
            assert runtimes.DEMO in row and "not measured on this release" in row or "int8" in row, row
    assert "vLLM" in text and 'if __name__ == "__main__":' in text and "org/tiny-llama" not in text


def test_runs_with_says_whether_the_series_splits_across_ranks(record):
    record["transform"]["allocation"] = {"kind": "uniform", "order": 8}
    record["transform"]["coverage"] = 1.0
    assert "split by channel" not in section(card.render(record), "Runs with")
    assert "the series by channel" in section(card.render(record), "Runs with")
    record["transform"]["coverage"] = 0.5
    assert "the series whole on every rank" in section(card.render(record), "Runs with")


def _with_truncation(record: dict) -> dict:
    record["audit"]["attacks"].append(
        {"name": "truncation", "recovered_fraction": None, "relative_error": None, "seconds": 102.85,
         "rebuilt_top1": 0.9961, "kept_fraction": 0.9054, "shipped_slowdown": 1.8993, "effective_slowdown": 1.8896,
         "rebuild_slowdown": 1.0456, "top1_drop": 0.001, "kl_bound": 0.001, "release_heldout_top1": 0.9961,
         "timing": {"context": 512, "threads": 1}})
    return record


def test_the_three_slowdowns_come_from_the_truncation_attack(record):
    """As shipped, after truncation and after a knowledgeable rebuild, side by side (issue 14)."""
    text = card.render(_with_truncation(record))
    body = section(text, "Slowdown, as measured")
    assert "| 1.90× | 1.89× | 1.05× |" in body
    assert "`truncation`" in section(text, "Protection, as audited") and "90.54 %" in text
    figures = re.findall(r"(?<![\w.])\d+\.\d+", body)
    known = numbers_of(record)
    assert all(any(abs(float(f) - c) <= 0.006 or abs(float(f) - 100 * c) <= 0.006 for c in known) for f in figures)
    record["audit"]["attacks"][-1]["effective_slowdown"] = 1.4321
    assert "| 1.90× | 1.43× | 1.05× |" in section(card.render(record), "Slowdown, as measured")


def test_without_the_audit_the_slowdown_choice_shows_and_the_rebuild_is_not_measured(record):
    record["audit"] = None
    record["slowdown"] = {"requested": 2.0, "measured": 1.97, "largest": 2.6}
    body = section(card.render(record), "Slowdown, as measured")
    assert "| 1.97× | 1.97× | not measured |" in body and "convert --slowdown" in body
    del record["slowdown"]
    assert "Against whom the slowdown holds: not measured" in section(card.render(record), "Slowdown, as measured")


def test_the_truncation_attack_is_never_the_headlines_strongest_rebuild(record):
    """Truncation keeps the series: its agreement is not a rebuilt plain model's, whatever its figure."""
    _with_truncation(record)["audit"]["attacks"][-1]["rebuilt_top1"] = 0.99999
    glance = section(card.render(record), "At a glance")
    assert "truncation" not in glance.split("Protection", 1)[1].split("\n")[0]
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
