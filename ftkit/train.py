"""Runs inside the notebook kernel: load the model, attach LoRA, build the trainer, train, save.

Knows nothing of widgets, Huey or the worker. It reports to the job store through one small
``Reporter`` (progress, metrics, logs) and asks it, cheaply, whether the job was cancelled.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .core.statuses import STOPPED_SUPERSEDED

# Why a kernel stops saving and reporting: its worker died, or the job is another run's now.
ORPHANED, SUPERSEDED = "orphaned", STOPPED_SUPERSEDED
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_LOG_LINES = 50  # step lines a run prints (and keeps in its log); metrics keep every step


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
        attempt: Any = None,
        flush_seconds: float = 1.0,
        poll_seconds: float = 0.5,
    ):
        self.job_id, self.store, self.storage, self.worker = job_id, store, storage, worker
        # read from the record, which anyone with Redis access can edit: it names a file, so a number
        ok = isinstance(attempt, int) and not isinstance(attempt, bool) and 1 <= attempt <= 1000
        self.attempt = attempt if ok else 0
        self._attempt_read = attempt  # as the record had it: what a later read must still say
        self.flush_seconds, self.poll_seconds = flush_seconds, poll_seconds
        self._metrics: list[dict[str, Any]] = []
        self._logs: list[str] = []
        self._progress: dict[str, Any] = {}
        self._last_flush = 0.0
        self._last_poll = 0.0
        self._parent = os.getppid()
        self.stop_reason: str | None = None
        self.first_step_at: float | None = None  # monotonic time the first step of a run ended

    @classmethod
    def for_job(cls, job_id: str | None) -> Reporter:
        """Connect to the job store and storage named by the environment the worker gave this kernel.
        With no job id (the template run by hand) nothing is reported, only printed."""
        if not job_id:
            return cls(None)
        from .config import Settings
        from .core.retry import through_outages
        from .jobstore import open_store
        from .storage import Storage

        settings = Settings.from_env()
        store = open_store(settings)
        # which run this is, as the record says: a Redis restarting now must not fail the job
        claimed = through_outages(store.get_fields, job_id, "worker", "attempt")
        return cls(
            job_id,
            store,
            Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
            worker=claimed["worker"],
            attempt=claimed["attempt"],
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
            from .core.statuses import ACTIVE

            self._safely(
                self.store.transition,
                self.job_id,
                status,
                allowed=ACTIVE,
                expect_worker=self.worker,
                **fields,
            )

    def log(self, line: str) -> None:
        # Only printed: the worker sends everything the cells print to the job's logs
        # (output_log.py), this line too. No flush per line: the kernel batches stream output.
        print(line)
        self.flush(force=False)

    def metric(self, row: dict[str, Any], **progress: Any) -> None:
        self._metrics.append(row)
        self.metric_progress(**progress)

    @property
    def kept_metrics(self) -> list[dict[str, Any]]:
        """The metric rows not written yet: with no job store (the template run by hand, or
        bench/bare_train.py), every row of the run."""
        return list(self._metrics)

    def metric_progress(self, **progress: Any) -> None:
        self._progress.update(progress)
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        if self.stop_reason in (ORPHANED, SUPERSEDED):
            # the job is another run's now: rows from here would race its resumed history
            self._metrics, self._logs, self._progress = [], [], {}
            return
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

    def orphaned(self) -> bool:
        """Whether this kernel's worker is gone, looked at now (``should_stop`` looks twice a
        second): what an orphan saves, a checkpoint or a marker, would race the next attempt."""
        if self.job_id is not None and self.stop_reason is None and os.getppid() != self._parent:
            self.stop_reason = ORPHANED
        return self.stop_reason == ORPHANED

    def superseded(self, record: dict[str, Any]) -> bool:
        """Whether the record names another run of the job than this one: another attempt (its
        worker was taken for dead and the job re-queued) or another worker (a broker restored from
        an older state let a second worker claim it). This run then stops and saves nothing."""
        if self.store is None or self.stop_reason is not None or self.worker is None:
            return self.stop_reason == SUPERSEDED
        if record.get("worker") != self.worker or record.get("attempt") != self._attempt_read:
            self.stop_reason = SUPERSEDED
            print(
                f"[ftkit] this run (attempt {self.attempt}, worker {self.worker}) stops: the job "
                f"is attempt {record.get('attempt')} on worker {record.get('worker')} now",
                flush=True,
            )
        return self.stop_reason == SUPERSEDED

    def owns_the_job(self) -> bool:
        """Looked at when this run would write what the job keeps (a checkpoint, a marker): its
        worker is alive and the record still names this run (read now, not at the last poll)."""
        if self.orphaned():
            return False
        while self.store is not None and self.stop_reason is None:
            fields = self._safely(self.store.get_fields, self.job_id, "worker", "attempt")
            if fields is not None:
                self.superseded(fields)
                break
            time.sleep(1.0)  # the broker is away: whose run this is can only be read from it
            if self.orphaned():
                break
        return self.stop_reason not in (ORPHANED, SUPERSEDED)

    def should_stop(self) -> bool:
        """True when the job was cancelled, timed out, is being handed back, or is no longer this
        run's (its worker is gone, or the record names another attempt or worker)."""
        if self.store is None or self.stop_reason:
            return bool(self.stop_reason)
        now = time.monotonic()
        if now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            if not self.orphaned():  # a dead worker: nobody would upload what we make
                fields = self._safely(
                    self.store.get_fields, self.job_id, "stop", "worker", "attempt"
                )
                if fields is not None and not self.superseded(fields):
                    self.stop_reason = fields.get("stop")
        return bool(self.stop_reason)

    def save_checkpoint(
        self,
        folder: str | Path,
        *,
        trained: tuple[int, int] | None = None,
        weights_only: bool = False,
    ) -> None:
        """Copy a trainer checkpoint to storage (``complete`` written last), keeping only the newest.

        ``trained=(first_step, last_step)`` marks the last step's checkpoint: this attempt's marker
        is written just before ``complete``, so a training run counts once it can no longer be run
        again (a later attempt resumes at its end), and a kill between the two shows as a second
        marker, never as none. ``weights_only`` leaves out the optimizer and scheduler states, which
        a run that has ended never reads again (a job without ``save_steps`` keeps only this)."""
        if self.storage is None or not self.owns_the_job():
            return
        from .storage import Storage

        # The metrics up to this step reach the store before the checkpoint counts: a job resumed
        # from it trains on from the next step, so a row still buffered here would be lost.
        self.flush()
        name = Path(folder).name
        parts = Storage.run_parts(str(self.job_id), "checkpoints")
        skip = ("optimizer.pt", "scheduler.pt") if weights_only else ()
        self.storage.put_dir(folder, *parts, name, skip=skip)
        if trained is not None:
            self._mark_trained(*trained)
        self.storage.write_text(str(time.time()), *parts, name, "complete")
        for old in self.storage.listdir(*parts):
            if old != name:
                self.storage.remove(*parts, old)
        self.log(f"checkpoint {name} saved to storage")

    def _mark_trained(self, first_step: int, last_step: int) -> None:
        """Leave this attempt's marker in storage (runs/<job>/attempts/<n>.trained): its training
        ran from ``first_step`` to the end. What the soak counts executions by."""
        import json

        from .storage import Storage

        marker = json.dumps(
            {
                "job_id": self.job_id,
                "attempt": self.attempt,
                "worker": self.worker,
                "first_step": first_step,
                "last_step": last_step,
                "finished_at": time.time(),
            }
        )
        self.storage.write_text(
            marker, *Storage.trained_marker_parts(str(self.job_id), self.attempt)
        )


def saves_checkpoints(args) -> bool:
    """Whether the trainer keeps checkpoints (the job has ``save_steps``)."""
    return getattr(args.save_strategy, "value", args.save_strategy) == "steps"


def progress_callback(reporter: Reporter):
    """A transformers TrainerCallback that reports each logging step and stops on cancel."""
    from transformers import TrainerCallback

    class FtkitProgress(TrainerCallback):
        first_step = 0  # where this run's training began: 0, or the checkpoint it resumed from

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step
            reporter.status("training", total_steps=state.max_steps, current_step=state.global_step)
            if 0 < state.max_steps <= state.global_step:
                # Resumed at its end: the trainer would still take one more step (it looks at
                # max_steps only after a step), past the end and at a restarted learning rate.
                raise TrainedAlready(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if reporter.first_step_at is None:
                reporter.first_step_at = time.monotonic()
            if reporter.should_stop():
                reporter.log(
                    f"stop requested ({reporter.stop_reason}): stopping after step {state.global_step}"
                )
                control.should_training_stop = True
                control.should_save = (
                    reporter.stop_reason == "handoff"
                )  # another worker resumes from here
            elif 0 < state.max_steps <= state.global_step:
                # The last step is kept, by every job: a worker that dies after training ends
                # (while the report and adapter are saved) leaves a later attempt nothing to train.
                control.should_save = True
            return control

        def on_substep_end(self, args, state, control, **kwargs):
            # with gradient accumulation a step can be long: stop between micro-batches too
            if reporter.should_stop() and reporter.stop_reason != "handoff":
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            # Only what this run trained: a checkpoint it resumed from is in storage already (and
            # a run resumed at its end stops before any step: TrainedAlready).
            if folder.is_dir() and state.global_step > self.first_step:
                from .core.retry import through_outages
                from .errors import StorageError, StorageUnavailable

                try:
                    if 0 < state.max_steps <= state.global_step:
                        # Training has run to its end: this checkpoint carries the attempt's
                        # marker and waits out an outage, as the adapter upload after it does (the
                        # job cannot end without storage).
                        through_outages(
                            reporter.save_checkpoint,
                            folder,
                            trained=(self.first_step, state.global_step),
                            weights_only=not saves_checkpoints(args),
                            outage=StorageUnavailable,
                        )
                    else:
                        reporter.save_checkpoint(folder)
                except StorageError as exc:  # a checkpoint only shortens a resume: train on
                    reporter.log(
                        f"could not save {folder.name} to storage, training goes on: {exc}"
                    )

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
            every = max(args.logging_steps, math.ceil(total / MAX_LOG_LINES))
            if not (step % every == 0 or step >= total or done <= args.logging_steps):
                return
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
    from .device import choose_backend, probe

    return choose_backend(requested, probe(import_unsloth=requested != "hf"))


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


def load_model(config: TrainConfig, adapter: str = ""):
    """The base model with LoRA attached, its tokenizer, and a summary for the report. With
    ``adapter`` (a past job's adapter folder, staged by the worker) the LoRA starts from its
    weights instead of from zero."""
    import torch

    from .device import choose_4bit, choose_backend, choose_dtype, probe

    started = time.perf_counter()
    # every refusal (unsloth or 4-bit where the worker cannot) comes before any model loads
    machine = probe(import_unsloth=config.backend != "hf")
    backend = choose_backend(config.backend, machine)
    four_bit = choose_4bit(config.load_in_4bit, machine)
    dtype = getattr(torch, choose_dtype(machine))
    from transformers import set_seed  # after unsloth, which patches transformers on import

    imported = time.perf_counter()  # a warm kernel imported all this before the job
    check_base_model(config.base_model)
    if adapter:
        check_adapter_config(adapter, config)  # before the base model loads: a quick refusal
    quiet_progress_bars()
    set_seed(config.seed)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(config, dtype, four_bit)
    else:
        model, tokenizer = _load_hf(config, dtype, four_bit)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        load_adapter_weights(model, adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info = {
        "base_model": config.base_model,
        "backend": backend,
        "device": machine.name if machine.cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "quantization": "4-bit" if getattr(model, "is_loaded_in_4bit", False) else "none",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total if total else 0.0,
        "import_seconds": round(imported - started, 3),
        "load_seconds": round(time.perf_counter() - imported, 3),
    }
    if adapter:
        info["starts from"] = (
            f"job {Path(adapter).name}'s adapter (no checkpoint kept: fresh optimizer)"
        )
    return model, tokenizer, info


def check_adapter_config(adapter: str, config: TrainConfig) -> None:
    """The adapter's own settings (a JSON file from storage: read as data, size-bounded) must
    give this run's LoRA shape; the client checked the parent's record at submit, this checks
    what was actually saved."""
    import json

    path = Path(adapter) / "adapter_config.json"
    if path.stat().st_size > 1_000_000:
        raise ValueError(f"{path.name} of job {Path(adapter).name}'s adapter is over 1 MB")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        raise ValueError(f"{path.name} of job {Path(adapter).name}'s adapter is not an object")
    for theirs, ours in (("r", "lora_r"), ("lora_alpha", "lora_alpha")):
        if saved.get(theirs) != getattr(config, ours):
            raise ValueError(
                f"job {Path(adapter).name}'s adapter has {theirs}={saved.get(theirs)!r}, this "
                f"run {ours}={getattr(config, ours)!r}: it loads only into the same LoRA shape"
            )


def load_adapter_weights(model, adapter: str) -> None:
    """Copy a saved adapter's weights (safetensors only: no pickle) into the model's fresh LoRA,
    which stays trainable. Every LoRA weight must be there with its shape, and nothing else: an
    adapter over other modules is refused, not half-loaded."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    job = Path(adapter).name
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"), device="cpu")
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    missing = sorted(expected.keys() - weights.keys())
    extra = sorted(weights.keys() - expected.keys())
    wrong = sorted(
        k for k in expected.keys() & weights.keys() if tuple(weights[k].shape) != expected[k]
    )
    if missing or extra or wrong:
        said = [
            f"{len(missing)} of this run's LoRA weights missing (e.g. {missing[0]})"
            if missing
            else "",
            f"{len(extra)} weights for modules this run has no LoRA on (e.g. {extra[0]})"
            if extra
            else "",
            f"{wrong[0]} has shape {tuple(weights[wrong[0]].shape)}, this run {expected[wrong[0]]}"
            if wrong
            else "",
        ]
        raise ValueError(
            f"job {job}'s adapter does not fit this run's LoRA: {'; '.join(s for s in said if s)}. "
            "It continues only with the same base model, lora_r and target modules"
        )
    unexpected = getattr(set_peft_model_state_dict(model, weights), "unexpected_keys", [])
    if unexpected:  # checked above; here only should peft's naming ever change
        raise ValueError(f"job {job}'s adapter did not load: {unexpected[:3]}")


def _load_unsloth(config: TrainConfig, dtype, load_in_4bit: bool):
    """unsloth's documented recipe: FastLanguageModel.from_pretrained, then get_peft_model."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config.base_model,
        max_seq_length=config.max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
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


def _load_hf(config: TrainConfig, dtype, load_in_4bit: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A model folder is untrusted input: weights only from safetensors (no pickle), no remote code.
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated is_gradient_checkpointing itself: nothing ftkit
        # passes causes it, so only that message, only here, stays out of the report
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, lora), tokenizer


# -- data and trainer ---------------------------------------------------------------------------
def prepare_data(
    dataset_path: str,
    dataset_format: str,
    tokenizer,
    config: TrainConfig,
    columns: dict[str, str] | None = None,
):
    """Tokenized train (and eval) sets with label masks, and a summary for the report. columns is
    the upload's mapping {ftkit's name: the file's column}, applied as validation applied it."""
    from .data.render import build_dataset

    data = build_dataset(
        dataset_path,
        format=dataset_format,
        tokenizer=tokenizer,
        max_seq_length=config.max_seq_length,
        train_on_inputs=config.train_on_inputs,
        columns=columns or None,
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

    from .device import Machine, choose_dtype

    use_cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability(0) if use_cuda else None
    dtype = choose_dtype(Machine(cuda=use_cuda, capability=capability))
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
        **checkpointing_args(SFTConfig),
        max_length=config.max_seq_length,
        packing=config.packing,
        padding_free=config.packing,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
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


def checkpointing_args(args_class: type) -> dict[str, Any]:
    """Gradient checkpointing on (TRL's default), under the name this transformers knows:
    ``activation_checkpointing`` from 5.23 (where ``gradient_checkpointing`` is deprecated), the old
    name before. Chosen from the dataclass's own fields, so neither side warns."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(args_class)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: True}


class TrainedAlready(Exception):
    """Raised from the trainer's start when the checkpoint it resumed from is training's end."""


def train(trainer, reporter: Reporter, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
    """Run the trainer (from a checkpoint when resuming); the result says why it stopped early, if it did."""
    started = time.monotonic()
    if resume_from_checkpoint:
        reporter.log(f"resuming from {Path(resume_from_checkpoint).name}")
    try:
        output = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        global_step, train_loss = output.global_step, output.training_loss
    except TrainedAlready:  # the checkpoint's weights and history are loaded: nothing to train
        reporter.log(f"{Path(str(resume_from_checkpoint)).name} is training's end: no step left")
        global_step = trainer.state.global_step
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        train_loss = sum(losses) / len(losses) if losses else None
    reporter.flush()
    strategy = getattr(trainer.args.eval_strategy, "value", trainer.args.eval_strategy)
    if reporter.stop_reason is None and trainer.eval_dataset is not None and strategy == "no":
        trainer.evaluate()  # eval_steps=0: once, at the end (logged as the last step's eval_loss)
    first = reporter.first_step_at
    return {
        "training_duration_seconds": round(time.monotonic() - started, 3),
        # the trainer's set-up and its first step (compiling kernels, say), timed apart
        "first_step_seconds": round(first - started, 3) if first and first > started else None,
        "global_step": global_step,
        "train_loss": train_loss,
        "stopped": reporter.stop_reason,
    }


def fit(
    model,
    tokenizer,
    train_data,
    eval_data,
    config: TrainConfig,
    output_dir: str,
    reporter: Reporter,
    resume_from_checkpoint: str | None = None,
):
    """make_trainer + train, ending an out-of-memory with a message that says what to change.

    With ``config.auto_batch_size`` it retries from the start (the adapter's weights restored) at a
    smaller batch with the accumulation raised by the same factor, so the effective batch, and with
    it the run's learning dynamics, stays the same. Returns ``(trainer, result)``."""
    import torch

    from .errors import OutOfMemory

    start = None
    if config.auto_batch_size:  # adapters are small: a copy costs little next to the base model
        start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    while True:
        trainer = make_trainer(
            model, tokenizer, train_data, eval_data, config, output_dir, reporter
        )
        try:
            result = train(trainer, reporter, resume_from_checkpoint)
            result["batch_size"] = config.batch_size
            result["gradient_accumulation_steps"] = config.gradient_accumulation_steps
            return trainer, result
        except torch.OutOfMemoryError as exc:
            step, said = trainer.state.global_step, str(exc).split("\n")[0][:500]
        del trainer  # the exception is gone too: its frames held the activations
        _release_memory()
        smaller = smaller_batch(config.batch_size)
        if start is None or smaller is None:
            raise OutOfMemory(out_of_memory_message(config, step, said))
        factor = config.batch_size // smaller
        reporter.log(
            f"out of memory at batch_size={config.batch_size} (max_seq_length="
            f"{config.max_seq_length}): retrying with batch_size={smaller} and "
            f"gradient_accumulation_steps={config.gradient_accumulation_steps * factor} "
            f"(effective batch {config.batch_size * config.gradient_accumulation_steps} kept)"
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in start:
                    param.copy_(start[name])
        config = config.replace(
            batch_size=smaller,
            gradient_accumulation_steps=config.gradient_accumulation_steps * factor,
        )


def smaller_batch(batch_size: int) -> int | None:
    """The largest batch that divides ``batch_size`` and is at most half of it (None at 1), so the
    accumulation can make up the difference exactly."""
    return next((b for b in range(batch_size // 2, 0, -1) if batch_size % b == 0), None)


def out_of_memory_message(config: TrainConfig, step: int, said: str) -> str:
    where = f"in training step {step + 1}" if step else "in the first training step"
    retried = " even after retrying at smaller batches" if config.auto_batch_size else ""
    fixes = [
        "lower max_seq_length",
        "load the base model in 4 bits (load_in_4bit=True)" if not config.load_in_4bit else "",
        "lower batch_size and raise gradient_accumulation_steps by the same factor"
        if config.batch_size > 1
        else "",
        "or set auto_batch_size=True to do that automatically"
        if not config.auto_batch_size and config.batch_size > 1
        else "",
    ]
    return (
        f"out of memory {where}{retried} at batch_size={config.batch_size} and "
        f"max_seq_length={config.max_seq_length} (gradient_accumulation_steps="
        f"{config.gradient_accumulation_steps}): {', '.join(f for f in fixes if f)}. "
        f"torch said: {said}"
    )


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    # zlib level 1: a figure some 15 % larger, encoded in half the time
    fig.savefig(buffer, format="png", dpi=100, pil_kwargs={"compress_level": 1})
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
    dataset_path: str,
    dataset_format: str,
    eval_data,
    tokenizer,
    prompts: list[str],
    n: int = 3,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Prompts to compare base and fine-tuned answers on: given ones, else held-out (eval) examples,
    else the first examples of the data set (marked as seen in training)."""
    from .data import read_examples

    if prompts:
        return [
            {"messages": [{"role": "user", "content": p}], "source": "given"} for p in prompts[:n]
        ]
    found = []
    for example in read_examples(dataset_path, format=dataset_format, columns=columns or None):
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
    return generate_batch(model, tokenizer, [sample], max_new_tokens)[0]


def generate_batch(
    model, tokenizer, samples: list[dict[str, Any]], max_new_tokens: int = 48
) -> list[str]:
    """Greedy answers to several prompts in one ``generate`` call, left-padded: a report's
    samples cost two calls (base and fine-tuned), not two per prompt."""
    import torch

    if not samples:
        return []
    encoded = []
    for sample in samples:
        if "messages" in sample:
            ids = tokenizer.apply_chat_template(
                sample["messages"], add_generation_prompt=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(sample["prompt"])["input_ids"]
        encoded.append(list(ids))
    width, pad = max(len(ids) for ids in encoded), tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            # training with gradient checkpointing turned the model's cache off: without it each
            # new token recomputes the whole sequence (measured 3 s against 0.3 s on the demo)
            use_cache=True,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def show_samples(model, tokenizer, samples: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The base model's answer (adapter disabled) beside the fine-tuned one, for each prompt."""
    from html import escape

    from IPython.display import HTML, display

    model.eval()
    with model.disable_adapter():
        before = generate_batch(model, tokenizer, samples)
    after = generate_batch(model, tokenizer, samples)
    rows = [
        {
            "prompt": sample["messages"][-1]["content"]
            if "messages" in sample
            else sample["prompt"],
            "source": sample.get("source", ""),
            "base model": base,
            "fine-tuned": tuned,
        }
        for sample, base, tuned in zip(samples, before, after)
    ]
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


def warm_up() -> None:
    """What a job's cells would load on first use, done in a kernel before it gets a job: the job
    store's and storage's client libraries (as the worker's settings name them), pyplot and its
    fonts (a first figure drawn), the display helpers, and a first model load with LoRA (Llama)."""
    import contextlib
    import io

    from .config import Settings
    from .jobstore import open_store
    from .storage import Storage

    # Only a head start: a problem here shows, with its own message, when the job runs.
    with contextlib.suppress(Exception):
        settings = Settings.from_env()
        open_store(settings)  # imports redis, or opens the SQLite file: nothing is written
        Storage(settings.storage, endpoint_url=settings.s3_endpoint_url)  # s3fs, say

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import transformers.models.llama.modeling_llama  # noqa: F401
    from IPython.display import HTML, Image, display  # noqa: F401

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0], label="warm-up")
    ax.set(title="warm-up", xlabel="step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    with contextlib.suppress(Exception):  # a head start too: the job loads its model regardless
        warm_up_model_loading()


def warm_up_model_loading() -> None:
    """A kernel's first ``from_pretrained`` and ``get_peft_model`` pay for lazy set-up (measured
    0.1-0.35 s on the tiny job, the later ones 0.02 s): paid here, on a throw-away model of a few
    hundred parameters saved the way a base model is."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with tempfile.TemporaryDirectory(prefix="ftkit-warm-") as folder:
        LlamaForCausalLM(config).save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
    lora = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(model, lora)


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
