"""Leak attribution on the demo model: fidelity cost, robustness of the trace, false accusations, trace time.

    OMP_NUM_THREADS=1 python benchmarks/fingerprint_robustness.py STEP [--work DIR] [--ckpt DEMO]

Steps, in order (each caches what it makes under --work, default /tmp/unswift-fingerprint-bench, and
appends one JSON object per measurement to benchmarks/results/fingerprint_demo.jsonl):

    releases   calibrate once; an unfingerprinted release and 8 recipients' releases (partner-00..07),
               `--order 8 --coverage 1.0`, one ledger; records each release's `fingerprint` field
               (the fingerprinted source against the source on 8,192 held-out tokens, float32)
    eval       `unswift eval` of the unfingerprinted release and of partner-00..02 (8,192 tokens, float32);
               `--teacher-forced-only`: its top-1 and KL alone (same function, text and tokens)
    rebuild    `unswift audit --attack kerckhoffs --export-rebuilt` for partner-00..02: plain models
    finetune   lora | full: from partner-00's rebuilt model, 200 steps, batch 1 x 128 tokens of text that
               is neither prompt set (the README/METADATA files of the installed packages); LoRA rank 16,
               alpha 32, AdamW lr 2e-4, merged; full: every parameter, AdamW lr 1e-5, no weight decay
    trace      every suspect below through `api.trace` on files (folders, a GGUF file), 8-recipient ledger
    null       1,000 random never-issued keys against the 4-bit suspect (largest |z|), and trace time with
               10 and 100 recipients (process time, one thread)

Suspects (the realistic chain: a recipient rebuilds plain weights from its release, then launders them):
the release as shipped; the release with its config's `unswift` section stripped of every identifying
field and its record/card removed; the rebuilt plain model; rebuilt + every exact reparametrisation with
random parameters; rebuilt cast to bf16; rebuilt int8 (per-row absmax, dequantised); rebuilt as a GGUF
Q4_0 file (every matrix, embeddings included; the gguf package cannot write Q4_K_M); LoRA and full
fine-tuning; 20 % magnitude pruning; the average of two and of three recipients' rebuilt copies; the
source itself; an unrelated model of the same architecture (fresh initialisation).
Pass: the right recipient(s) at corrected p <= 1e-9, every other at corrected p > 1e-3; nobody for the
source and the unrelated model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from packager import api  # noqa: E402
from packager.stages.options import ConvertOptions  # noqa: E402

RESULTS = HERE / "results" / "fingerprint_demo.jsonl"
RECIPIENTS = [f"partner-{i:02d}" for i in range(8)]
SECRET = "demo-publisher-secret-for-benchmarks-only"
OPTIONS = ConvertOptions(order=8, coverage=1.0)
STEPS, SEQ = 200, 128


def log(row: dict) -> None:
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")


class Work:
    def __init__(self, root: Path, ckpt: Path) -> None:
        self.root, self.ckpt = root, ckpt
        root.mkdir(parents=True, exist_ok=True)
        self.secret = root / "publisher.secret"
        if not self.secret.is_file():
            self.secret.write_text(SECRET + "\n")
        self.ledger = root / "ledger.jsonl"
        self.stats = root / "stats.safetensors"

    def release(self, name: str) -> Path:
        return self.root / "releases" / name

    def rebuilt(self, name: str) -> Path:
        return self.root / "rebuilt" / name

    def suspect(self, name: str) -> Path:
        return self.root / "suspects" / name


def step_releases(w: Work) -> None:
    if not w.stats.is_file():
        start = time.process_time()
        api.calibrate(w.ckpt, out=w.stats)
        log({"step": "calibrate", "process_seconds": round(time.process_time() - start, 1)})
    if not w.release("plain").is_dir():
        start = time.process_time()
        api.convert(w.ckpt, w.release("plain"), stats=w.stats, options=OPTIONS,
                    secret_file=w.root / "plain.secret" if (w.root / "plain.secret").is_file() else None)
        log({"step": "convert", "release": "plain", "process_seconds": round(time.process_time() - start, 1)})
    for name in RECIPIENTS:
        if w.release(name).is_dir():
            continue
        start = time.process_time()
        api.convert(w.ckpt, w.release(name), stats=w.stats, options=OPTIONS, recipient=name, ledger=w.ledger,
                    secret_file=w.secret, progress=lambda m: print(m, flush=True))
        record = json.loads((w.release(name) / "unswift.json").read_text())
        log({"step": "convert", "release": name, "process_seconds": round(time.process_time() - start, 1),
             "fingerprint": record["fingerprint"]})


def step_eval(w: Work, names: list[str], teacher_forced_only: bool = False) -> None:
    if teacher_forced_only:
        step_eval_teacher_forced(w, names)
        return
    for name in names:
        report = api.evaluate(w.release(name), w.ckpt, tokens=8192, dtype="float32", device="cpu")
        log({"step": "eval", "release": name, "top1": report.top1_agreement, "kl": report.kl_mean,
             "tokens": report.to_json().get("tokens")})


def step_eval_teacher_forced(w: Work, names: list[str]) -> None:
    """Top-1 and KL exactly as `unswift eval` computes them (`compare_logits`, same text, same cache entry),
    without its noise floor and greedy continuations, which cost more than the comparison on a loaded CPU."""
    from transformers import AutoModelForCausalLM

    from packager.formats.checkpoint import open_checkpoint
    from packager.stages.evaluate import DEFAULT_SEQ_LEN, EVAL_SEED_OFFSET, compare_logits, load_release
    from packager.stages.text import sample_text

    reference = open_checkpoint(w.ckpt)
    ref = AutoModelForCausalLM.from_pretrained(w.ckpt, dtype=torch.float32).eval()
    text = sample_text(ref, reference.load_tokenizer(), kind="eval", tokens=8192, seq_len=DEFAULT_SEQ_LEN,
                       seed=EVAL_SEED_OFFSET,
                       cache_key=f"{json.dumps(reference.file_digests(), sort_keys=True)}/float32")
    for name in names:
        start = time.process_time()
        rel = load_release(w.release(name), dtype=torch.float32, device="cpu")
        agreement = compare_logits(ref, rel, text.ids)
        log({"step": "eval", "mode": "teacher-forced only", "release": name, "top1": agreement.top1_agreement,
             "kl": agreement.kl_mean, "tokens": agreement.tokens,
             "process_seconds": round(time.process_time() - start)})


def step_rebuild(w: Work, names: list[str]) -> None:
    for name in names:
        if w.rebuilt(name).is_dir():
            continue
        start = time.process_time()
        report = api.audit(w.release(name), reference=w.ckpt, attacks=("kerckhoffs",), export_rebuilt=w.rebuilt(name))
        attack = report.attacks[0]
        log({"step": "rebuild", "release": name, "rebuilt_top1": attack.rebuilt_top1,
             "recovered_fraction": attack.recovered_fraction, "process_seconds": round(time.process_time() - start, 1)})


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def save_folder(state: dict[str, torch.Tensor], like: Path, out: Path, *, untied: bool = False) -> Path:
    from safetensors.torch import save_file

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((like / "config.json").read_text())
    if untied:
        config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def other_text(tokens: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(WORK.ckpt)
    site = Path(torch.__file__).resolve().parents[1]
    files = sorted(site.glob("*/README*")) + sorted(site.glob("*.dist-info/METADATA"))
    stream: list[int] = []
    for file in files:
        stream.extend(tokenizer(file.read_text(errors="replace"))["input_ids"] + [tokenizer.eos_token_id])
        if len(stream) >= tokens:
            break
    n = len(stream) // SEQ
    return torch.tensor(stream[: n * SEQ]).view(n, SEQ)


def step_finetune(w: Work, mode: str) -> None:
    from transformers import AutoModelForCausalLM

    from packager.maths.fingerprint.keys import generator_for
    from packager.maths.fingerprint.roles import Dims, parts

    out = w.suspect("lora16_200" if mode == "lora" else "finetune_200")
    if out.is_dir():
        return
    model = AutoModelForCausalLM.from_pretrained(w.rebuilt("partner-00"), dtype=torch.float32)
    model.train()
    data = other_text(STEPS * SEQ * 2)
    order = torch.randperm(len(data), generator=generator_for(SECRET.encode(), f"{mode}-order"))[:STEPS]
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    wrapped = []
    if mode == "lora":
        g = generator_for(SECRET.encode(), "lora-init")
        dims = Dims.from_config(model.config)
        for path, module in list(model.named_modules()):
            if isinstance(module, torch.nn.Linear) and parts(path + ".weight", tuple(module.weight.shape), dims):
                a = torch.nn.Parameter(torch.randn(16, module.in_features, generator=g) / module.in_features ** 0.5)
                b = torch.nn.Parameter(torch.zeros(module.out_features, 16))
                module.lora = (a, b)
                module.forward = (lambda x, m=module, a=a, b=b: torch.nn.functional.linear(x, m.weight)
                                  + 2.0 * (x @ a.T) @ b.T)
                wrapped.append(module)
        optimiser = torch.optim.AdamW([t for m in wrapped for t in m.lora], lr=2e-4, weight_decay=0.0)
    else:
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    losses, start = [], time.process_time()
    for step, index in enumerate(order.tolist()):
        batch = data[index: index + 1]
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            print(f"{mode} step {step} loss {losses[-1]:.3f}", flush=True)
    with torch.no_grad():
        for module in wrapped:
            a, b = module.lora
            module.weight += 2.0 * b @ a
            del module.forward
    before = load_folder(w.rebuilt("partner-00"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in before}
    moved = [float((state[k] - before[k]).norm() / before[k].norm()) for k in before if before[k].ndim == 2]
    save_folder(state, w.rebuilt("partner-00"), out)
    log({"step": "finetune", "mode": mode, "steps": STEPS, "seq": SEQ, "loss_first10": sum(losses[:10]) / 10,
         "loss_last10": sum(losses[-10:]) / 10, "median_relative_weight_change": sorted(moved)[len(moved) // 2],
         "process_seconds": round(time.process_time() - start)})


def build_suspects(w: Work) -> dict[str, tuple[Path, list[str]]]:
    """name -> (path, guilty recipients)."""
    from support import launder
    from support.gguf_files import write_gguf
    from transformers import AutoConfig

    from packager.maths.fingerprint.alignment import Geometry
    from packager.maths.fingerprint.keys import generator_for

    config = AutoConfig.from_pretrained(w.ckpt)
    geom = Geometry.from_config(config)
    rebuilt = w.rebuilt("partner-00")
    out: dict[str, tuple[Path, list[str]]] = {"as_shipped": (w.release("partner-00"), ["partner-00"])}
    edited = w.suspect("unswift_edited")
    if not edited.is_dir():
        shutil.copytree(w.release("partner-00"), edited)
        cfg = json.loads((edited / "config.json").read_text())
        spec = cfg["unswift"]
        spec["hardening"].pop("secret_id", None)
        for key in ("tool_version", "calibration", "requested_coverage", "min_top1", "fit_parameters", "transformers"):
            spec.pop(key, None)
        (edited / "config.json").write_text(json.dumps(cfg, indent=2))
        for name in ("unswift.json", "README.md", "model.sig"):
            (edited / name).unlink(missing_ok=True)
    out["unswift_edited"] = (edited, ["partner-00"])
    out["rebuilt"] = (rebuilt, ["partner-00"])
    state = None

    def base():
        nonlocal state
        if state is None:
            state = load_folder(rebuilt)
            if "lm_head.weight" not in state:
                state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        return state

    made = {
        "rebuilt_all_gauges": lambda: save_folder(launder.random_laundering(
            base(), geom, generator_for(SECRET.encode(), "launder")), rebuilt, w.suspect("rebuilt_all_gauges"),
            untied=True),
        "rebuilt_bf16": lambda: save_folder({k: v.to(torch.bfloat16) for k, v in base().items()}, rebuilt,
                                            w.suspect("rebuilt_bf16"), untied=True),
        "rebuilt_int8": lambda: save_folder(launder.map_matrices(base(), launder.quantize_int8_rows), rebuilt,
                                            w.suspect("rebuilt_int8"), untied=True),
        "rebuilt_prune20": lambda: save_folder(launder.map_matrices(
            base(), lambda t: launder.prune_magnitude(t, 0.2), include_embeddings=False), rebuilt,
            w.suspect("rebuilt_prune20"), untied=True),
        "avg2": lambda: save_folder(launder.average([load_folder(w.rebuilt(n)) for n in RECIPIENTS[:2]]), rebuilt,
                                    w.suspect("avg2")),
        "avg3": lambda: save_folder(launder.average([load_folder(w.rebuilt(n)) for n in RECIPIENTS[:3]]), rebuilt,
                                    w.suspect("avg3")),
        "unrelated": lambda: save_folder(unrelated(w, config), rebuilt, w.suspect("unrelated")),
    }
    for name, build in made.items():
        if not w.suspect(name).exists():
            build()
    gguf = w.suspect("rebuilt_q4_0.gguf")
    if not gguf.exists():
        w.suspect("").mkdir(parents=True, exist_ok=True)
        write_gguf(base(), gguf, heads=geom.heads, kv_heads=geom.kv_heads, quant="Q4_0")
    guilty = {"avg2": RECIPIENTS[:2], "avg3": RECIPIENTS[:3], "unrelated": []}
    for name in made:
        out[name] = (w.suspect(name), guilty.get(name, ["partner-00"]))
    out["rebuilt_q4_0_gguf"] = (gguf, ["partner-00"])
    for name in ("lora16_200", "finetune_200"):
        if w.suspect(name).is_dir():
            out[name] = (w.suspect(name), ["partner-00"])
    out["source"] = (w.ckpt, [])
    return out


def unrelated(w: Work, config) -> dict[str, torch.Tensor]:
    from packager.maths.fingerprint.keys import generator_for

    g = generator_for(SECRET.encode(), "unrelated")
    std = float(config.initializer_range)
    return {k: (torch.randn(v.shape, generator=g) * std if v.ndim == 2 else torch.ones_like(v))
            for k, v in load_folder(w.ckpt).items()}


def step_trace(w: Work, only: list[str]) -> None:
    for name, (path, guilty) in build_suspects(w).items():
        if only and name not in only:
            continue
        start = time.process_time()
        report = api.trace(path, reference=w.ckpt, ledger=w.ledger, secret_file=w.secret).to_json()
        right = [r for r in report["recipients"] if r["name"] in guilty]
        others = [r for r in report["recipients"] if r["name"] not in guilty]
        passed = (sorted(report["identified_all"]) == sorted(guilty) and all(r["log10_p_value"] <= -9 for r in right)
                  and all(r["log10_p_value"] > -3 for r in others))
        log({"step": "trace", "suspect": name, "format": report["suspect_format"], "guilty": guilty,
             "right_z": [r["z"] for r in right], "right_log10_p": [r["log10_p_value"] for r in right],
             "max_other_abs_z": max(abs(r["z"]) for r in others) if others else None,
             "min_other_log10_p": min(r["log10_p_value"] for r in others) if others else None,
             "identified": report["identified_all"], "derived": report["derived_from_reference"],
             "derived_score": report["derived_score"], "aligned": report["aligned"],
             "secret_id_match": report["release_secret_id_matches"],
             "process_seconds": round(time.process_time() - start, 1), "pass": passed})


def step_null(w: Work, keys: int, ledger_sizes: tuple[int, ...]) -> None:
    from transformers import AutoConfig

    from packager.formats.checkpoint import open_checkpoint
    from packager.formats.ledger import load_profile, read_ledger
    from packager.formats.suspect import GGUFTensors
    from packager.maths.fingerprint.alignment import Geometry
    from packager.maths.fingerprint.keys import recipient_key
    from packager.maths.fingerprint.profile import from_tensors
    from packager.maths.fingerprint.trace import trace_keys
    from packager.stages.trace import CheckpointTensors

    secret = SECRET.encode()
    config = AutoConfig.from_pretrained(w.ckpt)
    geom = Geometry.from_config(config)
    entry = read_ledger(w.ledger)[0]
    profile = from_tensors(load_profile(w.ledger, entry["profile"]))
    source = CheckpointTensors(open_checkpoint(w.ckpt))
    suspect = GGUFTensors(w.suspect("rebuilt_q4_0.gguf"), heads=geom.heads, kv_heads=geom.kv_heads)
    if keys:
        names = {f"never-issued-{i:04d}": recipient_key(secret, f"never-issued-{i:04d}") for i in range(keys)}
        result = trace_keys(source, suspect, geom, profile, names)
        z = [s.z for s in result.scores]
        mean = sum(z) / len(z)
        std = (sum((x - mean) ** 2 for x in z) / len(z)) ** 0.5
        log({"step": "null", "suspect": "rebuilt_q4_0.gguf of partner-00", "keys": len(z),
             "max_abs_z": max(map(abs, z)), "mean_z": mean, "std_z": std, "beyond_3": sum(abs(x) > 3 for x in z),
             "min_log10_p_corrected": min(s.log10_p_corrected for s in result.scores),
             "identified": result.identified, "seconds": result.seconds})
    for m in ledger_sizes:
        names = {n: recipient_key(secret, n) for n in (RECIPIENTS + [f"ledger-{i:03d}" for i in range(m)])[:m]}
        start = time.process_time()
        result = trace_keys(source, suspect, geom, profile, names)
        log({"step": "trace_time", "recipients": m, "process_seconds": round(time.process_time() - start, 1),
             "align_seconds": round(result.seconds["align"], 1), "score_seconds": round(result.seconds["score"], 1),
             "entries": result.entries, "threads": torch.get_num_threads(), "identified": result.identified})


WORK: Work


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["releases", "eval", "rebuild", "finetune", "trace", "null"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--work", type=Path, default=Path("/tmp/unswift-fingerprint-bench"))
    parser.add_argument("--ckpt", type=Path, default=Path.home() / ".cache/unswift/demo/SmolLM2-135M-Instruct")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--teacher-forced-only", action="store_true",
                        help="eval: top-1 and KL only (no noise floor, no greedy continuations)")
    ns = parser.parse_args()
    WORK = Work(ns.work, ns.ckpt)
    if ns.step == "releases":
        step_releases(WORK)
    elif ns.step == "eval":
        step_eval(WORK, ns.args or ["plain", *RECIPIENTS[:3]], teacher_forced_only=ns.teacher_forced_only)
    elif ns.step == "rebuild":
        step_rebuild(WORK, ns.args or RECIPIENTS[:3])
    elif ns.step == "finetune":
        step_finetune(WORK, ns.args[0])
    elif ns.step == "trace":
        step_trace(WORK, ns.args)
    else:
        step_null(WORK, ns.keys, (10, 100))


if __name__ == "__main__":
    main()
