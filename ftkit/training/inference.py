"""A finished job's adapter on its base model, in the user's own notebook: ``Job.load``,
``Job.generate`` and ``Job.merge`` call here, so the client itself never imports the stack."""

from __future__ import annotations

import warnings
from pathlib import Path


def load_tuned(base_model: str, adapter: Path, *, device: str | None = None):
    """(model, tokenizer): the base model with the adapter applied (PEFT), in eval mode."""
    from ..errors import require

    require("peft", "worker")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():  # peft's own use of a name transformers 5.23 renamed
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter)
    if device:
        model = model.to(device)
    return model.eval(), AutoTokenizer.from_pretrained(adapter)


def merge_into(model, tokenizer, dest: Path) -> Path:
    """The adapter merged into its base model, saved as a full model (``save_pretrained``)."""
    model.merge_and_unload().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
