"""What the run report shows beside the training: tables of facts, the data set's profile, the
loss figure, throughput, what the run ran on, and result.json for the worker. Plain HTML and PNG
outputs, readable in any notebook viewer without ftkit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TrainConfig


def show_table(mapping: dict[str, Any], title: str = "") -> None:
    """A two-column table as plain HTML output: readable in any notebook viewer, no ftkit needed."""
    from IPython.display import HTML, display

    from ..core.html import key_values

    display(HTML(key_values({str(k): shown(v) for k, v in mapping.items()}, caption=title)))


def shown(value: Any) -> str:
    """A value as a report table shows it: floats to 6 digits, large counts with separators."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


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
    problems = profile.get("warnings") or []
    if problems:
        counts = profile.get("problem_counts") or {}
        total = sum(counts.get(kind, 0) for kind in {w.get("kind") for w in problems})
        shown_lines = {f"line {w.get('line')}": w.get("message") for w in problems[:20]}
        show_table(shown_lines, f"Warnings ({total})")


def plot_training(log_history: list[dict[str, Any]]):
    """Loss (train and eval) and learning rate by step, as one PNG figure output; a preference
    run's rewards (chosen, rejected, margins, accuracies: TRL's names) in a second row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.rules import REWARD_METRICS

    train_rows = [r for r in log_history if "loss" in r]
    eval_rows = [r for r in log_history if "eval_loss" in r]
    rewards = [name for name in REWARD_METRICS if any(name in r for r in log_history)]
    fig, axes = plt.subplots(2 if rewards else 1, 2, figsize=(11, 7.2 if rewards else 3.6))
    ax_loss, ax_lr = axes[0] if rewards else axes
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
    if rewards:
        plot_rewards(axes[1], log_history, rewards)
    show_figure(fig)


def plot_rewards(axes, log_history: list[dict[str, Any]], names: list[str]) -> None:
    """Rewards of the chosen and rejected answers and their margin (left), and the share of pairs
    whose chosen answer the model rewards more (right)."""
    ax_rewards, ax_accuracy = axes
    for name in names:
        rows = [r for r in log_history if name in r]
        ax = ax_accuracy if name.endswith("accuracies") else ax_rewards
        ax.plot([r["step"] for r in rows], [r[name] for r in rows], label=name)
    ax_rewards.set(title="Rewards", xlabel="step")
    ax_rewards.legend()
    ax_accuracy.set(title="Reward accuracy", xlabel="step", ylim=(-0.05, 1.05))
    ax_accuracy.legend()


def show_figure(fig) -> None:
    """The figure as one PNG output."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    fig.tight_layout()
    buffer = io.BytesIO()
    # zlib level 1: a figure some 15 % larger, encoded in half the time
    fig.savefig(buffer, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


def throughput(
    result: dict[str, Any],
    summary: dict[str, Any],
    config: TrainConfig,
    ranks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Tokens/s and steps/s of this run on all its devices, its effective batch, and its peak
    memory (GPU where present, else process RSS); a multi-device run's ``ranks`` (each training
    process's device and its own throughput) a row each."""
    import resource

    import torch

    seconds = max(result["training_duration_seconds"], 1e-9)
    steps = result["global_step"]
    sequences = steps * config.effective_batch
    mean_tokens = summary["tokens"] / max(summary["examples"], 1)
    out = {
        "steps/s": round(steps / seconds, 3),
        "tokens/s (approx.)": round(sequences * mean_tokens / seconds, 1),
        "effective batch": f"{config.effective_batch} (batch_size {config.batch_size} x "
        f"gradient_accumulation_steps {config.gradient_accumulation_steps} x devices "
        f"{config.devices})",
    }
    if ranks:  # trained in other processes: their memory, not this kernel's
        for r in ranks:
            memory = r.get("peak GPU memory (MiB)", r.get("peak process RSS (MiB)"))
            out[f"rank {r['rank']}"] = (
                f"{r['device']}: {shown(r['tokens/s (approx.)'])} tokens/s, "
                f"{shown(r['steps/s'])} steps/s, peak memory {shown(memory)} MiB"
            )
        return out
    if torch.cuda.is_available():
        out["peak GPU memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak process RSS (MiB)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return out
