"""Runs inside the notebook kernel: load the model, attach LoRA, build the trainer, train, save.

Knows nothing of widgets, Huey or the worker. It reports to the job store through one small
``Reporter`` (progress, metrics, logs) and asks it, cheaply, whether the job was cancelled.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from .config import TrainConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- reporting ------------------------------------------------------------------------------------
class Reporter:
    """Progress and stop requests for one job. Writes are throttled: a training step pays at most
    one cheap read (the ``stop`` field, cached for ``poll_seconds``) and, every ``flush_seconds``,
    one batched write of progress, metrics and log lines. A broker outage never fails training:
    writes stay buffered and go out when the broker answers again."""

    def __init__(
        self,
        job_id: str | None,
        store: Any = None,
        storage: Any = None,
        *,
        worker: str | None = None,
        flush_seconds: float = 1.0,
        poll_seconds: float = 0.5,
    ):
        self.job_id, self.store, self.storage, self.worker = job_id, store, storage, worker
        self.flush_seconds, self.poll_seconds = flush_seconds, poll_seconds
        self._metrics: list[dict[str, Any]] = []
        self._logs: list[str] = []
        self._progress: dict[str, Any] = {}
        self._last_flush = 0.0
        self._last_poll = 0.0
        self._parent = os.getppid()
        self.stop_reason: str | None = None

    @classmethod
    def for_job(cls, job_id: str | None) -> Reporter:
        """Connect to the job store and storage named by the environment the worker gave this kernel.
        With no job id (the template run by hand) nothing is reported, only printed."""
        if not job_id:
            return cls(None)
        from .config import Settings
        from .jobstore import open_store
        from .storage import Storage

        settings = Settings.from_env()
        store = open_store(settings)
        return cls(
            job_id,
            store,
            Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
            worker=store.get_field(job_id, "worker"),
        )

    def _safely(self, fn, *args: Any, **kwargs: Any) -> Any:
        from .errors import BrokerUnavailable

        try:
            return fn(*args, **kwargs)
        except BrokerUnavailable as exc:
            print(f"[ftkit] job store unreachable, will retry: {exc}", flush=True)
            return None

    def status(self, status: str, **fields: Any) -> None:
        if self.store is not None:
            from .jobstore import ACTIVE

            self._safely(
                self.store.transition,
                self.job_id,
                status,
                allowed=ACTIVE,
                expect_worker=self.worker,
                **fields,
            )

    def log(self, line: str) -> None:
        print(line)  # no flush per line: the kernel batches stream output
        self._logs.append(line)
        self.flush(force=False)

    def metric(self, row: dict[str, Any], **progress: Any) -> None:
        self._metrics.append(row)
        self.metric_progress(**progress)

    def metric_progress(self, **progress: Any) -> None:
        self._progress.update(progress)
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        if self.store is None or not (
            force or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            return
        self._last_flush = time.monotonic()
        metrics, logs, progress = self._metrics, self._logs, self._progress
        if self._safely(self._write, metrics, logs, progress) is not None:
            self._metrics, self._logs, self._progress = [], [], {}

    def _write(self, metrics: list, logs: list, progress: dict) -> bool:
        if progress:
            self.store.update(self.job_id, **progress)
        self.store.add_metrics(self.job_id, metrics)
        self.store.add_logs(self.job_id, logs)
        return True

    def should_stop(self) -> bool:
        """True when the job was cancelled, timed out, is being handed back, or its worker is gone."""
        if self.store is None or self.stop_reason:
            return bool(self.stop_reason)
        now = time.monotonic()
        if now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            if os.getppid() != self._parent:
                self.stop_reason = "orphaned"  # the worker died: nobody would upload what we make
            else:
                self.stop_reason = self._safely(self.store.get_field, self.job_id, "stop")
        return bool(self.stop_reason)

    def save_checkpoint(self, folder: str | Path) -> None:
        """Copy a trainer checkpoint to storage (``complete`` written last), keeping only the newest."""
        if self.storage is None:
            return
        from .storage import Storage

        name = Path(folder).name
        parts = Storage.run_parts(str(self.job_id), "checkpoints")
        self.storage.put_dir(folder, *parts, name)
        self.storage.write_text(str(time.time()), *parts, name, "complete")
        for old in self.storage.listdir(*parts):
            if old != name:
                self.storage.remove(*parts, old)
        self.log(f"checkpoint {name} saved to storage")


def progress_callback(reporter: Reporter):
    """A transformers TrainerCallback that reports each logging step and stops on cancel."""
    from transformers import TrainerCallback

    class FtkitProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step
            reporter.status("training", total_steps=state.max_steps, current_step=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if reporter.should_stop():
                reporter.log(
                    f"stop requested ({reporter.stop_reason}): stopping after step {state.global_step}"
                )
                control.should_training_stop = True
                control.should_save = (
                    reporter.stop_reason == "handoff"
                )  # another worker resumes from here
            return control

        def on_substep_end(self, args, state, control, **kwargs):
            # with gradient accumulation a step can be long: stop between micro-batches too
            if reporter.should_stop() and reporter.stop_reason != "handoff":
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                reporter.save_checkpoint(folder)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            step, total = state.global_step, max(state.max_steps, 1)
            done = step - self.first_step
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (total - step) if done > 0 else None
            row = {"step": step, "epoch": round(state.epoch or 0.0, 4), "time": round(elapsed, 3)}
            for key in ("loss", "learning_rate", "grad_norm", "eval_loss"):
                if key in logs and logs[key] is not None and math.isfinite(float(logs[key])):
                    row[key] = float(logs[key])
            progress = {
                "current_step": step,
                "total_steps": total,
                "progress": round(100.0 * step / total, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
            }
            if "loss" in row:
                progress["loss"] = row["loss"]
            if "eval_loss" in row:
                progress["eval_loss"] = row["eval_loss"]
            if "loss" not in row and "eval_loss" not in row:  # the end-of-training summary
                reporter.metric_progress(**progress)
                return
            reporter.metric(row, **progress)
            shown = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
            reporter.log(f"step {step}/{total} {shown}")

        def on_train_end(self, args, state, control, **kwargs):
            reporter.flush()

    return FtkitProgress()


# -- model ----------------------------------------------------------------------------------------
def pick_backend(requested: str) -> str:
    """unsloth where a CUDA GPU and unsloth are present (or asked for), else transformers + peft."""
    import importlib.util

    import torch

    if requested == "hf":
        return "hf"
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not (torch.cuda.is_available() and has_unsloth):
            raise RuntimeError(
                "backend='unsloth' needs a CUDA GPU and unsloth (pip install 'ftkit[unsloth]')"
            )
        return "unsloth"
    return "unsloth" if torch.cuda.is_available() and has_unsloth else "hf"


def check_base_model(name: str) -> None:
    """Fail early and clearly when the base model can be neither found on disk nor fetched."""
    looks_local = name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))
    if looks_local and not (Path(name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {name!r} not found: no folder with a config.json at that path"
        )
    if not looks_local and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise FileNotFoundError(
                f"base model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                "download it on a machine with access or pass a local folder"
            )


def quiet_progress_bars() -> None:
    """No progress-bar widgets in the report: it must read the same without ftkit or ipywidgets."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_model(config: TrainConfig):
    """The base model with LoRA attached, its tokenizer, and a summary for the report."""
    import torch
    from transformers import set_seed

    check_base_model(config.base_model)
    quiet_progress_bars()
    set_seed(config.seed)
    backend = pick_backend(config.backend)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(config)
    else:
        model, tokenizer = _load_hf(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info = {
        "base_model": config.base_model,
        "backend": backend,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "quantization": "4-bit" if getattr(model, "is_loaded_in_4bit", False) else "none",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total if total else 0.0,
    }
    return model, tokenizer, info


def _load_unsloth(config: TrainConfig):
    """unsloth's documented recipe: FastLanguageModel.from_pretrained, then get_peft_model."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config.base_model,
        max_seq_length=config.max_seq_length,
        dtype=None,
        load_in_4bit=config.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        target_modules=LORA_TARGETS,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=config.seed,
    )
    return model, tokenizer


def _load_hf(config: TrainConfig):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if torch.cuda.is_available():
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if config.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"]
            )
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


# -- data and trainer ---------------------------------------------------------------------------
def prepare_data(dataset_path: str, dataset_format: str, tokenizer, config: TrainConfig):
    """Tokenized train (and eval) sets with label masks, and a summary for the report."""
    from .render import build_dataset

    data = build_dataset(
        dataset_path,
        format=dataset_format,
        tokenizer=tokenizer,
        max_seq_length=config.max_seq_length,
        train_on_inputs=config.train_on_inputs,
    )
    if len(data) == 0:
        raise ValueError(f"no usable training examples in {dataset_path} after tokenization")
    eval_data = None
    if config.validation_split > 0:
        split = data.train_test_split(test_size=config.validation_split, seed=config.seed)
        data, eval_data = split["train"], split["test"]
    lengths = [len(ids) for ids in data["input_ids"]]
    summary = {
        "examples": len(data),
        "eval_examples": len(eval_data) if eval_data is not None else 0,
        "tokens": sum(lengths),
        "max_tokens": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "trained_tokens": sum(sum(1 for t in labels if t != -100) for labels in data["labels"]),
    }
    return data, eval_data, summary


def make_trainer(
    model,
    tokenizer,
    train_data,
    eval_data,
    config: TrainConfig,
    output_dir: str,
    reporter: Reporter,
):
    import torch
    from trl import SFTConfig, SFTTrainer

    use_cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(Path(output_dir) / "checkpoints"),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.num_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        eval_strategy=("steps" if config.eval_steps else "no") if eval_data is not None else "no",
        eval_steps=config.eval_steps or None,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_seq_length,
        packing=config.packing,
        padding_free=config.packing,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not use_cuda,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        callbacks=[progress_callback(reporter)],
    )
    trainer.remove_callback(PrinterCallback)  # ftkit's callback prints one readable line per step
    return trainer


def train(trainer, reporter: Reporter, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
    """Run the trainer (from a checkpoint when resuming); the result says why it stopped early, if it did."""
    started = time.monotonic()
    if resume_from_checkpoint:
        reporter.log(f"resuming from {Path(resume_from_checkpoint).name}")
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    reporter.flush()
    return {
        "training_duration_seconds": round(time.monotonic() - started, 3),
        "global_step": output.global_step,
        "train_loss": output.training_loss,
        "stopped": reporter.stop_reason,
    }


def save_adapter(model, tokenizer, output_dir: str) -> Path:
    """adapter_config.json + adapter_model.safetensors (+ the tokenizer, so the adapter stands alone)."""
    adapter_dir = Path(output_dir) / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    return adapter_dir


# -- report helpers -----------------------------------------------------------------------------
def show_table(mapping: dict[str, Any], title: str = "") -> None:
    """A two-column table as plain HTML output: readable in any notebook viewer, no ftkit needed."""
    from html import escape

    from IPython.display import HTML, display

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
            return f"{v:,}"
        return str(v)

    rows = "".join(
        f"<tr><th style='text-align:left'>{escape(str(k))}</th><td style='text-align:left'>"
        f"{escape(fmt(v))}</td></tr>"
        for k, v in mapping.items()
    )
    caption = f"<caption style='text-align:left'><b>{escape(title)}</b></caption>" if title else ""
    display(HTML(f"<table>{caption}{rows}</table>"))


def write_result(output_dir: str, **parts: Any) -> Path:
    """result.json: what the worker copies into the job record when the notebook ends."""
    import json

    path = Path(output_dir) / "result.json"
    path.write_text(json.dumps(parts, indent=2, default=str))
    return path


def show_dataset(
    dataset_path: str, dataset_format: str, profile: dict[str, Any], summary: dict[str, Any]
) -> None:
    """The data set's profile from upload (rows, tokens, warnings, sha256) beside what was trained."""
    tokens = profile.get("tokens") or {}
    facts = {
        "file": Path(dataset_path).name,
        "format": dataset_format,
        "rows": profile.get("rows"),
        "sha256": profile.get("sha256", ""),
        **{f"tokens {k}": v for k, v in tokens.items() if k != "estimated"},
        "token counts": "estimated at upload" if tokens.get("estimated") else "tokenizer",
        "over max_seq_length (truncated)": profile.get("over_max_seq_length"),
        **summary,
    }
    show_table({k: v for k, v in facts.items() if v not in (None, "")}, "Data set")
    warnings = profile.get("warnings") or []
    if warnings:
        show_table(
            {f"line {w.get('line')}": w.get("message") for w in warnings[:20]},
            f"Warnings ({sum((profile.get('problem_counts') or {}).get(k, 0) for k in {w.get('kind') for w in warnings})})",
        )


def plot_training(log_history: list[dict[str, Any]]):
    """Loss (train and eval) and learning rate by step, as one PNG figure output."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    train_rows = [r for r in log_history if "loss" in r]
    eval_rows = [r for r in log_history if "eval_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax_loss.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    if eval_rows:
        ax_loss.plot(
            [r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="eval"
        )
    ax_loss.set(title="Loss", xlabel="step", ylabel="loss")
    ax_loss.legend()
    ax_lr.plot(
        [r["step"] for r in train_rows],
        [r.get("learning_rate", 0) for r in train_rows],
        color="tab:green",
    )
    ax_lr.set(title="Learning rate", xlabel="step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


def throughput(
    result: dict[str, Any], summary: dict[str, Any], config: TrainConfig
) -> dict[str, Any]:
    """Tokens/s and steps/s of this run, and its peak memory (GPU where present, else process RSS)."""
    import resource

    import torch

    seconds = max(result["training_duration_seconds"], 1e-9)
    steps = result["global_step"]
    sequences = steps * config.batch_size * config.gradient_accumulation_steps
    mean_tokens = summary["tokens"] / max(summary["examples"], 1)
    out = {
        "steps/s": round(steps / seconds, 3),
        "tokens/s (approx.)": round(sequences * mean_tokens / seconds, 1),
    }
    if torch.cuda.is_available():
        out["peak GPU memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak process RSS (MiB)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return out


def sample_prompts(
    dataset_path: str, dataset_format: str, eval_data, tokenizer, prompts: list[str], n: int = 3
) -> list[dict]:
    """Prompts to compare base and fine-tuned answers on: given ones, else held-out (eval) examples,
    else the first examples of the data set (marked as seen in training)."""
    from .data import read_examples

    if prompts:
        return [
            {"messages": [{"role": "user", "content": p}], "source": "given"} for p in prompts[:n]
        ]
    found = []
    for example in read_examples(dataset_path, format=dataset_format):
        if "messages" in example:
            upto = next(
                (i for i, m in enumerate(example["messages"]) if m["role"] == "assistant"), None
            )
            if upto:
                found.append({"messages": example["messages"][:upto]})
        elif "prompt" in example:
            found.append({"prompt": example["prompt"]})
        if len(found) >= 50:
            break
    if eval_data is not None and len(eval_data):
        decoded = {tokenizer.decode(ids) for ids in eval_data["input_ids"][:200]}
        held = [
            f
            for f in found
            if any(
                (f.get("messages") or [{}])[-1].get("content", f.get("prompt", "")) in d
                for d in decoded
            )
        ]
        if held:
            return [{**f, "source": "held out"} for f in held[:n]]
    return [{**f, "source": "seen in training"} for f in found[:n]]


def generate(model, tokenizer, sample: dict[str, Any], max_new_tokens: int = 48) -> str:
    import torch

    if "messages" in sample:
        inputs = tokenizer.apply_chat_template(
            sample["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(sample["prompt"], return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(
        out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip()


def show_samples(model, tokenizer, samples: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The base model's answer (adapter disabled) beside the fine-tuned one, for each prompt."""
    from html import escape

    from IPython.display import HTML, display

    rows = []
    model.eval()
    for sample in samples:
        prompt = sample["messages"][-1]["content"] if "messages" in sample else sample["prompt"]
        with model.disable_adapter():
            before = generate(model, tokenizer, sample)
        after = generate(model, tokenizer, sample)
        rows.append(
            {
                "prompt": prompt,
                "source": sample.get("source", ""),
                "base model": before,
                "fine-tuned": after,
            }
        )
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td style='text-align:left;vertical-align:top'>{escape(r[k])}</td>"
            for k in ("prompt", "source", "base model", "fine-tuned")
        )
        + "</tr>"
        for r in rows
    )
    display(
        HTML(
            "<table class='ftkit-samples'><caption style='text-align:left'><b>Sample generations</b></caption>"
            "<tr><th>prompt</th><th>source</th><th>base model (before)</th><th>fine-tuned (after)</th></tr>"
            f"{cells}</table>"
        )
    )
    return rows


def environment() -> dict[str, Any]:
    """What this run ran on: library versions, GPU (or CPU), host."""
    import importlib.metadata as md
    import platform
    import socket

    import torch

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    env: dict[str, Any] = {
        "python": platform.python_version(),
        **{
            n: version(n)
            for n in ("ftkit", "torch", "transformers", "trl", "peft", "unsloth", "papermill")
        },
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            {
                "gpu": props.name,
                "gpu memory (GiB)": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
                "driver": _nvidia_driver(),
            }
        )
    else:
        env["gpu"] = "CPU"
    env["host"] = socket.gethostname()
    return env


def _nvidia_driver() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except OSError:
        return "unknown"
