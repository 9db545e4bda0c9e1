"""Every supported family end to end, plus the adapters' parts and the refusals.

For each family a tiny random checkpoint (hidden 64, 2 layers, real transformers config) is calibrated
(1024 self-sampled tokens), converted at order 8, coverage 1.0 with the default weighted fit
(gate pre-activations |g| ~ 6) and with the paper's Taylor fit (|g| ~ 1.5, inside the series' radius
of convergence), then loaded with `trust_remote_code=True` in a fresh process that never imports
unswift, and compared with the original on the same token ids, in float32 and in bfloat16.

The conversions and the loads run in two worker processes each (this file run as a script), so the
whole module stays within a few minutes on 2 cores. The measured results are written to
`build/architectures/results.json`; `benchmarks/architectures_matrix.py` renders docs/ARCHITECTURES.md
from them, and `test_support_matrix_doc_is_current` checks that the committed page matches this run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
RESULTS = ROOT / "build" / "architectures" / "results.json"

ORDER = 8
COVERAGE = 1.0
CALIBRATION_TOKENS = 1024
CALIBRATION_SEQ_LEN = 64
EVAL_SHAPE = (4, 64)  # random token ids, seeded: the same for source and release
GATE_SCALE = {"weighted": 6.0, "taylor": 1.5}

#: Acceptance per (fit, dtype): mean KL(source || release) in nats/token and max |Δ logit| over the
#: eval tokens. bfloat16 compares the fp32 release loaded with dtype=bfloat16 against the source loaded
#: the same way; its bound is looser because bf16 rounding of the hidden states alone reaches it.
TOLERANCES = {
    ("weighted", "float32"): {"kl": 5e-5, "max_logit": 0.5},
    ("taylor", "float32"): {"kl": 5e-6, "max_logit": 0.1},
    ("weighted", "bfloat16"): {"kl": 2e-4, "max_logit": 1.0},
    ("taylor", "bfloat16"): {"kl": 2e-4, "max_logit": 1.0},
}

#: tiny.py family -> the architecture it builds.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "phi": "PhiForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM", "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


def _cases() -> list[dict]:
    cases = []
    for family in ARCHITECTURES:
        for fit in ("weighted", "taylor"):
            layout = "per-expert" if family in MOE else "dense"
            cases.append({"id": f"{family}-{fit}", "family": family, "fit": fit, "layout": layout})
    for family in ("mixtral", "qwen2_moe"):  # experts saved packed, as transformers 5.x holds them
        cases.append({"id": f"{family}-packed-weighted", "family": family, "fit": "weighted",
                      "layout": "packed"})
    for case in cases:
        case.update(architecture=ARCHITECTURES[case["family"]], gate_scale=GATE_SCALE[case["fit"]])
    return cases


CASES = _cases()


# ---------------------------------------------------------------------------------------------------
# Worker side (this file run as a script): convert, or load and compare in a process without unswift.
# ---------------------------------------------------------------------------------------------------


def _convert_cases(cases: list[dict], root: Path) -> list[dict]:
    import time

    sys.path.insert(0, str(TESTS))
    from support.tiny import build_tiny

    from packager import api
    from packager.formats.checkpoint import open_checkpoint
    from packager.stages.calibrate import calibrate
    from packager.stages.options import ConvertOptions

    out = []
    for case in cases:
        start = time.perf_counter()
        folder = root / case["id"]
        build_tiny(case["family"], folder / "src", gate_scale=case["gate_scale"],
                   original_format=case["layout"] != "packed")
        source = open_checkpoint(folder / "src")
        stats = calibrate(source, tokens=CALIBRATION_TOKENS, seq_len=CALIBRATION_SEQ_LEN)
        options = ConvertOptions(order=ORDER, coverage=COVERAGE, fit=case["fit"])
        result, _ = api.convert(source, folder / "release", stats=stats, options=options,
                                secret_file=None, overwrite=True)
        out.append({"id": case["id"], "units": len(result.spec["layers"]),
                    "coverage": result.spec["coverage"], "gated": result.spec["gated"],
                    "hidden_act": result.spec["hidden_act"], "experts": result.spec["experts"] is not None,
                    "biases": result.spec["out_bias"],
                    "heldout_outside_fraction": stats.heldout_outside_fraction,
                    "convert_seconds": round(time.perf_counter() - start, 2)})
    return out


def _compare(source, release, ids) -> dict:
    with torch.no_grad():
        a = source(input_ids=ids).logits.float().log_softmax(-1)
        b = release(input_ids=ids).logits.float().log_softmax(-1)
    return {"kl": float((a.exp() * (a - b)).sum(-1).mean().clamp(min=0)),
            "max_logit": float((a - b).abs().max()),
            "top1": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def _runtime_of(model):
    """The release's own copied `modeling_unswift` module (not the package's)."""
    import sys

    return sys.modules[type(model).__module__]


def _check_cases(cases: list[dict], root: Path) -> list[dict]:
    """Load each release with trust_remote_code in this fresh process and compare it with its source."""
    import re

    from safetensors import safe_open
    from transformers import AutoModel, AutoModelForCausalLM

    original_mlp = re.compile(
        r"\.(gate_proj|up_proj|down_proj|gate_up_proj|fc1|fc2|dense_h_to_4h|dense_4h_to_h)\b")
    ids = torch.randint(0, 256, EVAL_SHAPE, generator=torch.Generator().manual_seed(1234))
    out = []
    for case in cases:
        folder = root / case["id"]
        record: dict = {"id": case["id"]}
        source = AutoModelForCausalLM.from_pretrained(folder / "src").eval()
        release, info = AutoModelForCausalLM.from_pretrained(folder / "release", trust_remote_code=True,
                                                             output_loading_info=True)
        release.eval()
        with safe_open(str(folder / "release" / "model.safetensors"), framework="pt") as handle:
            file_keys = set(handle.keys())
        state_keys = set(release.state_dict())
        taylor_modules = [n for n, m in release.named_modules() if type(m).__name__ == "TaylorMLP"]
        record["loading"] = {
            "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            # Θ and the down bias are held by an nn.Linear: the runtime maps the file's names onto it.
            "file_keys_not_in_model": sorted(set(_runtime_of(release).module_state(dict.fromkeys(file_keys)))
                                             - state_keys),
            "original_mlp_tensors": sorted(k for k in state_keys if original_mlp.search(k)),
            "module": type(release).__module__.split(".")[0],
            "taylor_mlps": len(taylor_modules),
            "experts_modules": sorted({type(m).__name__ for n, m in release.named_modules()
                                       if n.endswith(".experts")}),
        }
        record["float32"] = _compare(source, release, ids)
        prompt = ids[:1, :8]
        with torch.no_grad():
            kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
            mine = release.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
            theirs = source.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        record["float32"]["generated"] = int(mine.shape[1] - prompt.shape[1])
        record["float32"]["greedy_match"] = bool(torch.equal(mine, theirs))
        source16 = AutoModelForCausalLM.from_pretrained(folder / "src", dtype=torch.bfloat16).eval()
        release16 = AutoModelForCausalLM.from_pretrained(folder / "release", trust_remote_code=True,
                                                         dtype=torch.bfloat16).eval()
        record["bfloat16"] = _compare(source16, release16, ids)
        record["bfloat16"]["noise_floor_kl"] = _compare(source, source16, ids)["kl"]  # fp32 vs bf16 source
        record["bfloat16"]["dtype"] = str(next(release16.parameters()).dtype)
        base, info = AutoModel.from_pretrained(folder / "release", trust_remote_code=True, output_loading_info=True)
        record["base_model"] = {"class": type(base).__name__, "missing": sorted(info["missing_keys"]),
                                "unexpected": sorted(info["unexpected_keys"])}
        out.append(record)
    return out


def _worker(mode: str, cases_file: str, root: str, out_file: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    run = _convert_cases if mode == "convert" else _check_cases
    Path(out_file).write_text(json.dumps(run(cases, Path(root))))


# ---------------------------------------------------------------------------------------------------
# Test side.
# ---------------------------------------------------------------------------------------------------


def _run_workers(mode: str, root: Path, env: dict) -> list[dict]:
    """Run `mode` over all cases in two processes (one core each) and merge their results."""
    halves = [CASES[0::2], CASES[1::2]]
    procs = []
    for i, half in enumerate(halves):
        cases_file, out_file = root / f"{mode}-{i}.cases.json", root / f"{mode}-{i}.out.json"
        cases_file.write_text(json.dumps(half))
        log = open(root / f"{mode}-{i}.log", "w")  # noqa: SIM115 - closed below
        command = [sys.executable, __file__, mode, str(cases_file), str(root), str(out_file)]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log, out_file, i))
    results = []
    for proc, log, out_file, i in procs:
        code = proc.wait(timeout=600)
        log.close()
        if code != 0:
            tail = (root / f"{mode}-{i}.log").read_text()[-4000:]
            raise AssertionError(f"{mode} worker {i} failed:\n{tail}")
        results.extend(json.loads(out_file.read_text()))
    return results


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("architectures")
    env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TOKENIZERS_PARALLELISM": "false", "UNSWIFT_SECRET": "architectures-test-secret"}
    converted = {r["id"]: r for r in _run_workers("convert", root, env)}
    checked = {r["id"]: r for r in _run_workers("check", root, env)}
    records = []
    for case in CASES:
        record = {**case, "order": ORDER, **converted[case["id"]], **checked[case["id"]]}
        for dtype in ("float32", "bfloat16"):
            tol = TOLERANCES[(case["fit"], dtype)]
            measured = record[dtype]
            measured["tolerance"] = tol
            measured["ok"] = measured["kl"] <= tol["kl"] and measured["max_logit"] <= tol["max_logit"]
        records.append(record)
    import transformers

    from packager.maths.architectures import supported_architectures
    from packager.maths.series.activations import ACTIVATIONS

    settings = {"order": ORDER, "coverage": COVERAGE, "calibration_tokens": CALIBRATION_TOKENS,
                "calibration_seq_len": CALIBRATION_SEQ_LEN, "eval_tokens": list(EVAL_SHAPE),
                "gate_scale": GATE_SCALE, "tolerances": {f"{f}/{d}": t for (f, d), t in TOLERANCES.items()},
                "transformers": transformers.__version__, "torch": torch.__version__,
                "supported_architectures": supported_architectures(),
                "supported_activations": sorted(ACTIVATIONS)}
    payload = {"settings": settings, "results": records}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    return {"root": root, "by_id": {r["id"]: r for r in records}, "payload": payload}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_release_loads_with_remote_code_and_matches_its_source(matrix, case):
    record = matrix["by_id"][case["id"]]
    loading = record["loading"]
    assert loading["module"] == "transformers_modules", "the release must run its own copied loader"
    assert loading["missing"] == [] and loading["unexpected"] == [], loading
    assert loading["file_keys_not_in_model"] == [], "every release tensor must be a parameter (runtime names)"
    assert loading["original_mlp_tensors"] == [], "the original MLP weights must be gone from the model"
    assert loading["taylor_mlps"] == record["units"]
    if case["family"] in MOE:
        assert loading["experts_modules"] == ["TaylorExperts"]
    assert record["coverage"] == COVERAGE
    for dtype in ("float32", "bfloat16"):
        measured, tol = record[dtype], TOLERANCES[(case["fit"], dtype)]
        assert measured["kl"] <= tol["kl"], (dtype, measured)
        assert measured["max_logit"] <= tol["max_logit"], (dtype, measured)
    assert record["float32"]["generated"] == 8
    assert record["bfloat16"]["dtype"] == "torch.bfloat16"
    base = record["base_model"]  # AutoModel: the decoder without its head
    assert base["class"].startswith("Unswift") and base["class"].endswith("Model"), base
    assert base["missing"] == [] and base["unexpected"] == [], base


def test_support_matrix_doc_is_current(matrix):
    """docs/ARCHITECTURES.md is `benchmarks/architectures_matrix.py`'s rendering of what this module ran."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from architectures_matrix import render, status_section

    committed = (ROOT / "docs" / "ARCHITECTURES.md").read_text()
    fresh = render(matrix["payload"])
    assert status_section(committed) == status_section(fresh), (
        "docs/ARCHITECTURES.md is stale: run `pytest tests/test_architectures.py` then "
        "`python benchmarks/architectures_matrix.py`")


# -- the adapters' parts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh",
                                  "gelu_python_tanh", "gelu_fast", "quick_gelu"])
def test_jets_match_autograd_of_the_function_transformers_runs(name):
    """Our exact coefficients, against autograd through transformers' own ACT2FN[name], order 10, float64."""
    from support.autograd import autograd_taylor
    from transformers.activations import ACT2FN

    from packager.maths.series.activations import ACTIVATIONS

    x0 = torch.tensor([-7.0, -3.2, -1.0, -0.1, 0.0, 0.4, 1.7, 4.0, 9.0], dtype=torch.float64)
    module = ACT2FN[name]
    reference = autograd_taylor(lambda x: module(x), x0, 10)
    jet = ACTIVATIONS[name].taylor(x0, 10)
    assert torch.allclose(jet, reference, rtol=1e-8, atol=1e-11), (jet - reference).abs().max()


def test_every_registered_family_defaults_to_an_expandable_activation():
    from transformers import AutoConfig

    from packager.maths.architectures import REGISTRY
    from packager.maths.series.activations import ACTIVATIONS

    for architecture, adapter in REGISTRY.items():
        config = AutoConfig.for_model(adapter.base_model_type)
        assert adapter.activation_name(config) in ACTIVATIONS, architecture


def test_units_of_a_mixed_dense_and_sparse_moe_model():
    from transformers import Qwen2MoeConfig

    from packager.maths.architectures import REGISTRY

    config = Qwen2MoeConfig(num_hidden_layers=3, num_experts=3, mlp_only_layers=[1])
    adapter = REGISTRY["Qwen2MoeForCausalLM"]
    names = [u.name for u in adapter.units(config)]

    def sparse(i: int) -> list[str]:
        experts = [f"model.layers.{i}.mlp.experts.{e}" for e in range(3)]
        return experts + [f"model.layers.{i}.mlp.shared_expert"]

    assert names == sparse(0) + ["model.layers.1.mlp"] + sparse(2)
    assert [u.index for u in adapter.units(config)] == list(range(9))
    prefixes = adapter.source_prefixes(config)
    assert "model.layers.1.mlp." in prefixes and "model.layers.0.mlp." not in prefixes
    assert not "model.layers.0.mlp.gate.weight".startswith(prefixes)  # the router is copied as it is
    assert not "model.layers.0.mlp.shared_expert_gate.weight".startswith(prefixes)


def _source_model(matrix, case_id):
    from transformers import AutoModelForCausalLM

    from packager.formats.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(matrix["root"] / case_id / "src")
    return checkpoint, AutoModelForCausalLM.from_pretrained(checkpoint.path).eval()


@pytest.mark.parametrize("case_id", ["phi3-weighted", "mixtral-weighted", "mixtral-packed-weighted",
                                     "qwen2_moe-weighted", "phi-weighted", "gpt_neox-weighted"])
def test_read_mlp_matches_the_modules_transformers_builds(matrix, case_id):
    """Fused, packed and per-expert files all read as the gate/up/down rows the live modules use."""
    checkpoint, model = _source_model(matrix, case_id)
    adapter = checkpoint.adapter
    for unit in adapter.units(checkpoint.config):
        parts = adapter.read_mlp(checkpoint, unit)
        if unit.expert is not None:
            packed = model.get_submodule(unit.name.rsplit(".", 1)[0])
            gate, up = packed.gate_up_proj[unit.expert].chunk(2, dim=0)
            expected = {"gate": gate, "up": up, "down": packed.down_proj[unit.expert]}
        else:
            mlp = model.get_submodule(unit.name)
            x = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
            g, u = adapter.preactivations(mlp, x)
            assert torch.allclose(g, x @ parts["gate"].T + parts.get("gate_bias", 0.0), atol=1e-5)
            if u is not None:
                assert torch.allclose(u, x @ parts["up"].T, atol=1e-5)
            expected = {"down": getattr(mlp, adapter.down).weight}
        for name, tensor in expected.items():
            assert torch.equal(parts[name], tensor.detach()), (unit.name, name)


def test_expert_statistics_come_only_from_routed_tokens(matrix):
    """Pre-activations reaching an expert's unit are exactly those of the tokens its router chose."""
    import torch.nn.functional as F

    from packager.stages.calibrate import _mlp_hooks

    checkpoint, model = _source_model(matrix, "qwen2_moe-weighted")
    units = checkpoint.adapter.units(checkpoint.config)
    seen: dict[int, list[torch.Tensor]] = {}
    expected: dict[int, list[torch.Tensor]] = {}
    sparse_layer = model.model.layers[1]
    top_k = checkpoint.config.num_experts_per_tok

    def reference(module, args):  # recompute the routing from the router's own weights, independently
        x = args[0].reshape(-1, args[0].shape[-1])
        chosen = F.linear(x, module.gate.weight).softmax(-1).topk(top_k, dim=-1).indices
        for unit in units:
            if unit.layer == 1 and unit.expert is not None:
                rows = (chosen == unit.expert).any(-1)
                gate = checkpoint.adapter.read_mlp(checkpoint, unit, parts=("gate",))["gate"]
                expected.setdefault(unit.index, []).append(x[rows] @ gate.T)

    handle = sparse_layer.mlp.register_forward_pre_hook(reference)
    ids = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(5))
    try:
        with _mlp_hooks(checkpoint, model, lambda i, g, u: seen.setdefault(i, []).append(g)), torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    expert_units = [u.index for u in units if u.expert is not None]
    assert sorted(expected) == expert_units
    total = 0
    for index in expert_units:
        got, want = torch.cat(seen[index]), torch.cat(expected[index])
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), index
        total += got.shape[0]
    assert total == ids.numel() * top_k  # each token reaches exactly top_k experts
    shared = next(u.index for u in units if u.name.endswith("shared_expert"))
    assert torch.cat(seen[shared]).shape[0] == ids.numel()  # the shared expert sees every token


# -- refusals ---------------------------------------------------------------------------------------


def _config_dir(path: Path, config) -> Path:
    config.save_pretrained(path)
    return path


def _refusal_configs(tmp_path: Path) -> dict[str, Path]:
    import transformers

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=256)
    bert = transformers.BertConfig(**small, architectures=["BertForMaskedLM"])
    llava = transformers.LlavaConfig(architectures=["LlavaForConditionalGeneration"])
    gemma3 = transformers.Gemma3Config(architectures=["Gemma3ForConditionalGeneration"])
    relu2 = transformers.LlamaConfig(**small, hidden_act="relu2", architectures=["LlamaForCausalLM"])
    relu = transformers.Qwen2Config(**small, hidden_act="relu", architectures=["Qwen2ForCausalLM"])
    return {name: _config_dir(tmp_path / name, config) for name, config in
            {"bert": bert, "llava": llava, "gemma3-multimodal": gemma3, "relu2": relu2, "relu": relu}.items()}


@pytest.mark.parametrize("name, expected", [
    ("bert", "architecture 'BertForMaskedLM' is not supported; supported: "),
    ("llava", "architecture 'LlavaForConditionalGeneration' is multimodal"),
    ("gemma3-multimodal", "architecture 'Gemma3ForConditionalGeneration' is multimodal"),
    ("relu2", "activation 'relu2' of 'LlamaForCausalLM' cannot be expanded exactly"),
    ("relu", "activation 'relu' of 'Qwen2ForCausalLM' cannot be expanded exactly"),
])
def test_unsupported_checkpoints_are_refused_by_the_cli_with_exit_2(tmp_path, name, expected):
    from click.testing import CliRunner

    from packager.cli import cli
    from packager.maths.architectures import REGISTRY

    source = _refusal_configs(tmp_path)[name]
    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["convert", str(source), "--out", str(out), "--coverage", "1.0"],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    if name.startswith("relu"):
        assert "supported activations: gelu, gelu_fast, gelu_new" in result.output
    else:
        assert all(architecture in result.output for architecture in REGISTRY)
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.glob("release*")) == []


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
