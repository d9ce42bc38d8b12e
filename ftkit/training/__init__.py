"""Everything that runs inside the notebook kernel: load the model, attach LoRA, build the trainer,
train, save the adapter, and show the run report's tables, figure and sample answers.

The only package that imports torch, and only inside functions: importing it costs nothing. What
it knows of the rest of ftkit: the job store, to report progress, metrics and logs and to ask
whether this run should stop or still owns its job (reporter.py, fencing.py); storage, for
checkpoints and the exactly-once "trained" markers (checkpoints.py); the configuration, the data
layer and the machine's facts. It knows no queue, no worker and no client: the worker starts the
template notebook with parameters and environment variables, and reads back result.json.

    reporter.py     progress, metrics, logs and stop requests, buffered, to the job store
    fencing.py      does this run still own the job (orphaned, superseded), the trained markers
    checkpoints.py  checkpoint uploads to storage, committed by a final ``complete``
    callback.py     the trainer callback that reports, stops and saves
    model.py        backend choice, base model and LoRA, a past job's adapter
    trainer.py      data sets, trainer, training (out-of-memory retry), the saved adapter
    launch.py       a multi-device run, from the kernel: torchrun, its output, its outcome
    launcher.py     torchrun, tied to the kernel's life
    rank_run.py     one training process of a multi-device run (rank 0 reports, tracks, saves)
    ranks.py        this process's rank, and the stop decisions every rank takes together
    preference.py   DPO, ORPO and KTO: their data, trainers, settings and reference model
    margins.py      a preference run's margins (chosen over rejected) before and after
    trackers.py     TensorBoard, MLflow and W&B (report_to): started, guarded, finished
    device.py       what the machine offers (CUDA, bf16, unsloth, 4-bit) and what a job does with it
    display.py      report tables, the loss figure, throughput, result.json
    samples.py      sample prompts and the base and fine-tuned answers
    warmup.py       what a kernel loads before it gets a job (the zygote's and a spare's)
    tinymodel.py    a tiny Llama model saved locally, for the demo and the tests
    inference.py    a finished job's adapter on its base model, in the user's notebook (Job.load)
    chat.py         a finished job's model answering as base and as tuned (job.chat, HTTP)
"""

from .callback import TrainedAlready, progress_callback
from .checkpoints import saves_checkpoints
from .device import environment
from .display import (
    plot_training,
    show_dataset,
    show_table,
    throughput,
    write_result,
)
from .fencing import ORPHANED, SUPERSEDED, Fence
from .launch import DevicesFailed, devices_plan, fit_on_devices, load_trained, saved_adapter
from .margins import report_pairs, show_margins, starting_weights
from .model import check_base_model, load_model, pick_backend
from .preference import final_rewards
from .reporter import Reporter
from .samples import generate, generate_batch, sample_prompts, show_samples
from .trackers import Trackers, start_trackers
from .trainer import (
    checkpointing_args,
    fit,
    make_trainer,
    out_of_memory_message,
    prepare_data,
    save_adapter,
    smaller_batch,
    train,
)
from .warmup import warm_up, warm_up_model_loading

__all__ = [
    "ORPHANED",
    "SUPERSEDED",
    "Fence",
    "DevicesFailed",
    "Reporter",
    "TrainedAlready",
    "Trackers",
    "check_base_model",
    "checkpointing_args",
    "devices_plan",
    "environment",
    "final_rewards",
    "fit",
    "fit_on_devices",
    "generate",
    "generate_batch",
    "load_model",
    "load_trained",
    "make_trainer",
    "out_of_memory_message",
    "pick_backend",
    "plot_training",
    "prepare_data",
    "report_pairs",
    "progress_callback",
    "sample_prompts",
    "save_adapter",
    "saved_adapter",
    "saves_checkpoints",
    "show_dataset",
    "show_margins",
    "show_samples",
    "show_table",
    "smaller_batch",
    "start_trackers",
    "starting_weights",
    "throughput",
    "train",
    "warm_up",
    "warm_up_model_loading",
    "write_result",
]
