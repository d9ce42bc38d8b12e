"""unsloth against transformers + peft on one CUDA device, LoRA in bf16 and QLoRA in 4 bits: the
same randomly initialised Llama of about 1B parameters (TinyLlama-1.1B's shape, built here: no hub),
the same data, sequence length, batch and steps. Tokens/s, peak GPU memory and MFU, one table.

    python bench/gpu.py [--steps 30] [--warmup 5] [--batch 8] [--seq-len 2048] [--json FILE]
    python bench/gpu.py --smoke    # the same code on a CPU with the tiny model, in well under 2 min

Each variant runs in its own process through ftkit's own ``training.load_model``, ``prepare_data`` and
``make_trainer`` (what a worker runs), so each gets a clean import order (unsloth first, or never)
and its own peak memory. A variant the machine cannot run shows the worker's own refusal.

Measures: tokens/s over the steps after ``--warmup`` (every sequence is exactly ``--seq-len``
tokens); peak memory: ``torch.cuda.max_memory_allocated`` during training (weights, adapters,
optimizer, activations), or the process's peak RSS on a CPU; MFU: 4·N FLOPs per token (LoRA:
forward 2N, backward through the frozen weights 2N, no weight gradients for the base), N the
parameters less the input embedding table, over the device's dense bf16 peak (PEAK_BF16 below, by
device name). Attention's own FLOPs are not counted, nor gradient checkpointing's recomputation,
so MFU understates work done. Gradient checkpointing is on in every variant, as a job runs it:
transformers' own (``activation_checkpointing``, or ``gradient_checkpointing`` before 5.23) on the
transformers path, unsloth's (``use_gradient_checkpointing="unsloth"``) on unsloth's.

``--devices N`` (N > 1) measures scaling instead, for a machine with N GPUs: each transformers
variant once on one device and once on N (torchrun, one process per device, NCCL; gloo on a CPU
with ``--smoke``), the same per-device batch, and the scaling efficiency, tokens/s on N devices
over N times one device's. unsloth trains on one device and is left out.

Then two real jobs (bench/gpu_jobs.py): ``ftkit worker`` and a papermill kernel, ``backend="auto"``
and ``backend="hf"``, with each job's phases from submit to seen ended (kernel start, imports,
model load, first step...) and whether its report (notebook and HTML) and adapter landed.
``--no-jobs`` leaves them out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, REPO, workdir

# (device-name pattern, dense bf16 TFLOP/s from the vendor's datasheet, without sparsity)
PEAK_BF16 = [
    (r"H200 NVL", 835.0),
    (r"H200", 989.0),
    (r"H100 PCIe", 756.0),
    (r"H100 NVL", 835.0),
    (r"H100|H800|GH200", 989.0),
    (r"B200", 2250.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
]
VARIANTS = [  # (key, path shown, backend, load_in_4bit, method shown)
    ("hf-lora", "transformers + peft", "hf", False, "LoRA"),
    ("hf-qlora", "transformers + peft", "hf", True, "QLoRA 4-bit"),
    ("unsloth-lora", "unsloth", "unsloth", False, "LoRA"),
    ("unsloth-qlora", "unsloth", "unsloth", True, "QLoRA 4-bit"),
]
ONE_B = dict(  # TinyLlama-1.1B's shape
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
)


CHECKPOINTING = (
    "on in every variant: transformers' activation checkpointing (SFTConfig), unsloth's own "
    "(use_gradient_checkpointing='unsloth')"
)


def peak_bf16_tflops(device: str) -> float | None:
    return next((tflops for pattern, tflops in PEAK_BF16 if re.search(pattern, device)), None)


def model_flops_per_token(n_params: int) -> float:
    return 4.0 * n_params


# -- set-up (parent) -------------------------------------------------------------------------------
def build_model(dest: Path, smoke: bool) -> tuple[Path, int]:
    """The model folder and N (parameters less the input embedding table)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftkit.training.tinymodel import build_tiny_model, build_tokenizer

    if smoke:
        build_tiny_model(dest)
        model = LlamaForCausalLM.from_pretrained(dest)
    else:
        tokenizer = build_tokenizer()
        config = LlamaConfig(
            **ONE_B,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
    total = sum(p.numel() for p in model.parameters())
    n = total - model.get_input_embeddings().weight.numel()
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dest, n


def write_data(path: Path, rows: int, seq_len: int) -> Path:
    """Plain-text rows, each longer than seq_len tokens, so every trained sequence is full length."""
    words = re.findall(r"[A-Za-z]+", DATA.read_text(encoding="utf-8"))
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            out.write(json.dumps({"text": " ".join(rng.choices(words, k=seq_len))}) + "\n")
    return path


# -- one variant (child process) -------------------------------------------------------------------
def run_variant(args: argparse.Namespace) -> dict:
    key, shown, backend, four_bit, method = next(v for v in VARIANTS if v[0] == args.child)
    row: dict = {"variant": key, "path": shown, "method": method}
    from ftkit.training.device import probe

    probe(import_unsloth=backend == "unsloth")  # unsloth before transformers, or not at all
    import torch

    from ftkit import training
    from ftkit.config import TrainConfig
    from ftkit.errors import ConfigError

    config = TrainConfig(
        base_model=args.model,
        backend=backend,
        load_in_4bit=four_bit,
        max_steps=args.steps,
        batch_size=args.batch,
        max_seq_length=args.seq_len,
        learning_rate=1e-4,
        logging_steps=1,
        devices=args.devices,
    )
    try:
        model, tokenizer, info = training.load_model(config)
    except ConfigError as exc:
        return {**row, "skipped": str(exc)}
    from transformers import TrainerCallback

    data, _, summary = training.prepare_data(args.data, "text", tokenizer, config)
    work = Path(args.out).parent / key
    trainer = training.make_trainer(
        model, tokenizer, data, None, config, str(work), training.Reporter(None)
    )
    cuda = torch.cuda.is_available()
    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer.add_callback(StepClock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = len(stamps) - args.warmup
    seconds = stamps[-1] - stamps[args.warmup - 1]
    tokens_per_step = args.batch * summary["mean_tokens"] * args.devices  # every device's share
    row.update(
        dtype=info["dtype"],
        quantization=info["quantization"],
        steps=len(stamps),
        timed_steps=timed,
        mean_tokens=summary["mean_tokens"],
        tokens_per_s=round(timed * tokens_per_step / seconds, 1),
        seconds_per_step=round(seconds / timed, 4),
        final_loss=next(r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r),
        devices=args.devices,
    )
    if cuda:
        row.update(memory_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1), memory="GPU")
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row.update(memory_mib=round(rss, 1), memory="process RSS")
    shutil.rmtree(work, ignore_errors=True)
    return row


# -- the table (parent) ----------------------------------------------------------------------------
def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def finish_rows(rows: list[dict], device: str, n_params: int) -> None:
    """MFU and the ratios to the transformers row of the same method."""
    peak = peak_bf16_tflops(device)
    base = {
        r["method"]: r for r in rows if r["path"] == "transformers + peft" and "tokens_per_s" in r
    }
    for r in rows:
        if "tokens_per_s" not in r:
            continue
        if peak is not None and r.get("memory") == "GPU":
            r["mfu"] = round(r["tokens_per_s"] * model_flops_per_token(n_params) / (peak * 1e12), 4)
        b = base.get(r["method"])
        if b is not None and r is not b:
            r["speed_vs_transformers"] = round(r["tokens_per_s"] / b["tokens_per_s"], 2)
            r["memory_vs_transformers"] = round(r["memory_mib"] / b["memory_mib"], 2)


def table(result: dict) -> str:
    lines = [
        f"{result['device']}: {result['model']}, batch {result['batch']} x {result['seq_len']} "
        f"tokens, {result['steps']} steps ({result['warmup']} untimed), "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v),
        f"gradient checkpointing: {result['gradient_checkpointing']}",
        "",
        "| path | method | dtype | tokens/s | peak memory | MFU | speed vs transformers "
        "| memory vs transformers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        if "tokens_per_s" not in r:
            why = r.get("skipped") or r.get("failed", "")
            short = why if len(why) <= 120 else why[:117] + "..."
            lines.append(f"| {r['path']} | {r['method']} | - | skipped: {short} | | | | |")
            continue
        memory = (
            f"{r['memory_mib'] / 1024:.2f} GiB"
            if r["memory"] == "GPU"
            else (f"{r['memory_mib']:.0f} MiB ({r['memory']})")
        )
        mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else "n/a"
        speed = f"{r['speed_vs_transformers']:.2f}x" if "speed_vs_transformers" in r else "-"
        mem = f"{r['memory_vs_transformers']:.2f}" if "memory_vs_transformers" in r else "-"
        lines.append(
            f"| {r['path']} | {r['method']} | {r['dtype']} | {r['tokens_per_s']:,.0f} | {memory} "
            f"| {mfu} | {speed} | {mem} |"
        )
    return "\n".join(lines)


def run_variants(args: argparse.Namespace, work: Path, model_dir, data, devices: int) -> list:
    """Every variant asked for, each in its own process (processes, on several devices)."""
    rows = []
    for key in args.variants.split(","):
        out = work / f"{key}-{devices}.json"
        t0 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // devices))}
        command = child_command(args, key, model_dir, data, out, devices)
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode == 0 and out.is_file():
            row = json.loads(out.read_text())
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            spec = next(v for v in VARIANTS if v[0] == key)
            row = {"variant": key, "path": spec[1], "method": spec[4], "failed": tail[0]}
            print(proc.stderr[-3000:], file=sys.stderr)
        state = "ran" if "tokens_per_s" in row else "skipped" if "skipped" in row else "failed"
        where = f"{devices} devices" if devices > 1 else "1 device"
        print(f"  {key} on {where}: {state} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(row)
    return rows


def child_command(args: argparse.Namespace, key: str, model_dir, data, out, devices: int) -> list:
    """One variant in a process of its own; on several devices, under torchrun."""
    own = [
        __file__, "--child", key, "--model", str(model_dir), "--data", str(data), "--out", str(out),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
        "--seq-len", str(args.seq_len), "--devices", str(devices),
    ]  # fmt: skip
    if devices == 1:
        return [sys.executable, *own]
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}"]
    return [sys.executable, *launch, *own]


def scaling_rows(one: list[dict], many: list[dict], devices: int) -> list[dict]:
    """Each variant's tokens/s on one device and on ``devices``, and the scaling efficiency."""
    rows = []
    for a, b in zip(one, many):
        row = {"variant": a["variant"], "path": a["path"], "method": a["method"]}
        if "tokens_per_s" not in a or "tokens_per_s" not in b:
            row["skipped"] = (
                a.get("skipped") or a.get("failed") or b.get("skipped") or b.get("failed")
            )
        else:
            efficiency = b["tokens_per_s"] / (devices * a["tokens_per_s"])
            row.update(one_device=a["tokens_per_s"], devices=devices, many=b["tokens_per_s"])
            row.update(scaling_efficiency=round(efficiency, 3))
        rows.append(row)
    return rows


def scaling_table(rows: list[dict], devices: int) -> str:
    lines = [
        f"| path | method | tokens/s, 1 device | tokens/s, {devices} devices | scaling efficiency |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "scaling_efficiency" not in r:
            lines.append(f"| {r['path']} | {r['method']} | skipped: {r['skipped']} | | |")
            continue
        lines.append(
            f"| {r['path']} | {r['method']} | {r['one_device']:,.0f} | {r['many']:,.0f} "
            f"| {100 * r['scaling_efficiency']:.0f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of timing")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    parser.add_argument("--no-jobs", action="store_true", help="leave out the two real jobs")
    parser.add_argument("--devices", type=int, default=1, help="N > 1: scaling on N devices")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = (6, 2, 4, 128) if args.smoke else (30, 5, 8, 2048)
    for name, value in zip(("steps", "warmup", "batch", "seq_len"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and less than --steps")
    if args.child:
        row = run_variant(args)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for every rank
            Path(args.out).write_text(json.dumps(row))
        return
    if args.devices > 1:
        args.variants = ",".join(k for k in args.variants.split(",") if not k.startswith("unsloth"))

    started = time.perf_counter()
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run, even on a GPU machine
    work = workdir()
    try:
        import torch

        if not args.smoke and not torch.cuda.is_available():
            sys.exit("bench/gpu.py needs a CUDA device; --smoke runs the same code on a CPU")
        device = (
            torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else (f"CPU ({platform.machine()}, {os.cpu_count()} cores)")
        )
        model_dir, n_params = build_model(work / "model", args.smoke)
        data = write_data(work / "data.jsonl", args.batch * args.steps * args.devices, args.seq_len)
        print(
            f"model: {n_params / 1e6:,.1f}M parameters (less embeddings) in {model_dir}", flush=True
        )
        rows = run_variants(args, work, model_dir, data, 1)
        scaling: list[dict] = []
        if args.devices > 1:
            scaling = scaling_rows(
                rows, run_variants(args, work, model_dir, data, args.devices), args.devices
            )
        finish_rows(rows, device, n_params)
        jobs: list[dict] = []
        if not args.no_jobs:
            from gpu_jobs import run_jobs

            t0 = time.perf_counter()
            jobs = run_jobs(model_dir, data, work / "jobs", args.steps, args.batch, args.seq_len)
            print(f"  jobs: {len(jobs)} in {time.perf_counter() - t0:.0f} s", flush=True)
        result = {
            "device": device,
            "model": (
                f"random Llama, {n_params / 1e6:,.1f}M parameters less embeddings"
                + (" (tiny)" if args.smoke else " (TinyLlama-1.1B shape)")
            ),
            "n_params": n_params,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "warmup": args.warmup,
            "smoke": args.smoke,
            "versions": versions(),
            "peak_bf16_tflops": peak_bf16_tflops(device),
            "gradient_checkpointing": CHECKPOINTING,
            "rows": rows,
            "scaling": scaling,
            "jobs": jobs,
        }
        result["seconds"] = round(time.perf_counter() - started, 1)
        print()
        print(table(result))
        if scaling:
            print(f"\nscaling to {args.devices} devices (the same batch on each):\n")
            print(scaling_table(scaling, args.devices))
        if jobs:
            from gpu_jobs import table as jobs_table

            print(f"\nreal jobs through `ftkit worker` ({args.steps} steps each):\n")
            print(jobs_table(jobs))
        print(f"\n({result['seconds']:.0f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
