"""What a kernel does before it gets a job, so the job does not pay for it: the training stack
imported, the client libraries, pyplot, and a first (throw-away) model load with LoRA.

``preload`` is the one warm-up of both ways a worker starts kernels: its zygote runs it before it
forks each job's kernel, and a spare kernel runs it after unsloth (``kernels.WARM_UP``).
"""

from __future__ import annotations

import warnings


def preload() -> None:
    """What a job's cells would load, loaded once; nothing that starts a thread (a fork copies only
    the thread that forks): torch computes on one thread here, and the kernel app, with its ZeroMQ
    threads, is only imported."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the warm-up's model load without an OpenMP pool
    import ipykernel.kernelapp  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from ..data import render  # noqa: F401
    from . import callback, device, display, model, samples, trainer  # noqa: F401

    warm_up()
    torch.set_num_threads(threads)


def warm_up() -> None:
    """What a job's cells would load on first use, done in a kernel before it gets a job: the job
    store's and storage's client libraries (as the worker's settings name them), pyplot and its
    fonts (a first figure drawn), the display helpers, and a first model load with LoRA (Llama)."""
    import contextlib
    import io

    from ..config import Settings
    from ..jobstore import open_store
    from ..storage import Storage

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
