"""Throughput with padding removed: trained (non-padding) tokens per second on the Alpaca demo set
with `packing` on (padding-free) and off (padded batches), alternated in one process.

    python bench/packing.py [--steps 30] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from common import TEST_DATA, tiny_model, workdir


def tokens_per_second(model_dir, work, steps: int, packing: bool) -> float:
    from ftkit import training
    from ftkit.config import TrainConfig

    config = TrainConfig(
        base_model=str(model_dir),
        max_steps=steps,
        batch_size=8,
        max_seq_length=512,
        learning_rate=1e-3,
        packing=packing,
    )
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(
        str(TEST_DATA / "alpaca_en_demo.json"), "alpaca", tokenizer, config
    )
    trainer = training.make_trainer(
        model, tokenizer, data, None, config, str(work), training.Reporter(None)
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # trl logs num_tokens: the running count of real (attention-masked) tokens trained on
    return max(float(row.get("num_tokens", 0)) for row in trainer.state.log_history) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = workdir()
    try:
        model = tiny_model(work)
        packed, padded = [], []
        for _ in range(args.repeat):
            padded.append(tokens_per_second(model, work, args.steps, False))
            packed.append(tokens_per_second(model, work, args.steps, True))
        p, q = statistics.median(packed), statistics.median(padded)
        print(f"  packing on (padding-free)  {p:9.0f} tokens/s")
        print(f"  packing off (padded)       {q:9.0f} tokens/s")
        ratios = [a / b for a, b in zip(packed, padded)]
        print(f"  ratio {p / q:.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})")
        print(
            "RESULT "
            + json.dumps(
                {
                    f"tokens/s, packing on / off (Alpaca demo, tiny model on CPU, {args.steps} "
                    f"steps), N={args.repeat} pairs": (
                        f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
                        f"padding-free is slower on CPU, off by default"
                    )
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
