"""What the card's "How to load it" and "Runs with" sections promise, run as a user runs it: the card's own
snippet from the Hub (the loopback double) with no terminal to answer a prompt, and the transformers
features the table lists, each compared with the release loaded plainly."""

from __future__ import annotations

import json
import re

import pytest
from support.hub_double import DEFAULT_TOKEN
from support.processes import run_python
from support.tiny import add_tokenizer, build_tiny

from packager import api
from packager.release import PublishOptions, release
from packager.stages.options import ConvertOptions

#: What transformers prints when it would ask about remote code, or loads a config as the wrong type.
NOISE = re.compile(r"trust_remote_code|custom code|\[y/N\]|model of type|empty|not recommended", re.IGNORECASE)


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    return add_tokenizer(build_tiny("llama", tmp_path_factory.mktemp("tok") / "llama"))


def test_the_cards_loading_snippet_runs_as_shown_without_a_prompt_or_warning(hub_double, tiny_with_tokenizer,
                                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    key = api.keygen(tmp_path / "publisher.pem")
    out = tmp_path / "rel"
    release(tiny_with_tokenizer, out=out, options=ConvertOptions(order=4, coverage=1.0), key=key.private_key,
            publish=PublishOptions(repo="org/tiny-chat", tag="v1", endpoint=hub_double.url, no_xet=True),
            eval_tokens=256, secret_file=None, bench=False, audit=False)
    readme = hub_double.repo("org/tiny-chat").files("v1")["README.md"].decode()
    load = readme.split("## How to load it\n", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", load, re.DOTALL).group(1)
    assert 'repo, revision = "org/tiny-chat", "v1"' in snippet and "apply_chat_template" in snippet

    env = {"HF_ENDPOINT": hub_double.url, "HF_TOKEN": DEFAULT_TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    done = run_python(snippet, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not NOISE.search(done.stderr), done.stderr[-3000:]
    assert done.stdout.strip(), "the snippet printed no answer"


RUNS_WITH = r"""
import json, sys, tempfile, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
release = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(release, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True, dtype=torch.float32).eval()
ids = torch.tensor([[5, 17, 42, 99, 6, 71, 8, 9]])
with torch.no_grad():
    plain = model(ids).logits
report = {}

# pipeline: the same greedy tokens as generate.
text = "w1 w13 w38 w95 w2"
expected = model.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=6, do_sample=False)
piped = pipeline("text-generation", model=model, tokenizer=tokenizer)(text, max_new_tokens=6, do_sample=False,
                                                                       return_tensors=True)
report["pipeline"] = piped[0]["generated_token_ids"] == expected[0].tolist()

# device_map="auto" with most layers offloaded to disk (accelerate).
with tempfile.TemporaryDirectory() as offload:
    spread = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True, dtype=torch.float32,
                                                  device_map="auto", max_memory={"cpu": 40_000},
                                                  offload_folder=offload).eval()
    report["offloaded_modules"] = sum(where == "disk" for where in spread.hf_device_map.values())
    with torch.no_grad():
        report["device_map"] = (spread(ids).logits - plain).abs().max().item()

# Left-padded batch: each row equals the row alone.
tokenizer.padding_side = "left"
batch = tokenizer(["w1 w2 w3 w4 w5 w6", "w7 w8"], return_tensors="pt", padding=True)
with torch.no_grad():
    together = model(**batch).logits[:, -1]
    alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits[:, -1]
                       for t in ("w1 w2 w3 w4 w5 w6", "w7 w8")])
report["left_padded"] = (together - alone).abs().max().item()

# save_pretrained round trip.
with tempfile.TemporaryDirectory() as again:
    model.save_pretrained(again)
    reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        report["save_pretrained"] = (reloaded(ids).logits - plain).abs().max().item()

# PEFT LoRA on attention and on the series' linears: trains, then merges into the same function.
try:
    from peft import LoraConfig, get_peft_model
except ImportError:
    report["peft"] = None
else:
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "in_proj", "theta"]))
    names = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in tuned.named_parameters() if "lora_A" in name}
    optimiser = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        loss = tuned(ids, labels=ids).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    tuned.eval()
    with torch.no_grad():
        adapted = tuned(ids).logits
        merged = tuned.merge_and_unload()(ids).logits
    report["peft"] = {"targets": sorted(names), "changed": (adapted - plain).abs().max().item(),
                      "merged": (merged - adapted).abs().max().item()}
print(json.dumps(report))
"""


def test_the_transformers_features_the_card_lists_match_the_plain_load(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "rel"
    api.convert(tiny_with_tokenizer, out, options=ConvertOptions(order=4, coverage=1.0), secret_file=None,
                calibration_tokens=512)
    done = run_python(RUNS_WITH, str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pipeline"] is True
    assert report["offloaded_modules"] >= 1 and report["device_map"] < 1e-4
    assert report["left_padded"] < 1e-4
    assert report["save_pretrained"] == 0.0
    if report["peft"] is None:
        pytest.skip("peft is not installed")
    assert report["peft"]["targets"] == ["in_proj", "q_proj", "theta", "v_proj"]
    assert report["peft"]["changed"] > 1e-3 and report["peft"]["merged"] < 1e-4
