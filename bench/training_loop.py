"""Training loop cost: steps/s of ftkit's trainer (progress callback reporting to a real job store,
cancel checks) divided by the same trainer with no ftkit callback, alternated in one process.

    python bench/training_loop.py [--steps 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from common import DATA, redis_server, settings_in, tiny_model, workdir


def run(model_dir, work, steps: int, reporter) -> float:
    from ftkit import training
    from ftkit.config import TrainConfig

    config = TrainConfig(
        base_model=str(model_dir),
        max_steps=steps,
        batch_size=4,
        max_seq_length=128,
        learning_rate=1e-3,
    )
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(str(DATA), "chat", tokenizer, config)
    trainer = training.make_trainer(
        model, tokenizer, data, None, config, str(work), reporter or training.Reporter(None)
    )
    if reporter is None:
        trainer.callback_handler.callbacks = [
            c for c in trainer.callback_handler.callbacks if type(c).__name__ != "FtkitProgress"
        ]
    started = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = workdir()
    try:
        model = tiny_model(work)
        from ftkit import training
        from ftkit.jobstore import open_store

        with redis_server() as url:
            store = open_store(settings_in(work, url))
            store.create(
                {"job_id": "bench", "status": "training", "created_at": time.time(), "worker": None}
            )
            with_cb, without = [], []
            for _ in range(args.repeat):
                without.append(run(model, work, args.steps, None))
                with_cb.append(run(model, work, args.steps, training.Reporter("bench", store)))
            assert len(store.metrics("bench")) == args.steps * args.repeat, (
                "every step was reported"
            )
        w, wo = statistics.median(with_cb), statistics.median(without)
        paired = statistics.median(
            a / b for a, b in zip(with_cb, without)
        )  # each pair ran back to back
        print(
            f"  with ftkit callback (Redis store)  {w:7.1f} steps/s  (runs: {', '.join(f'{x:.1f}' for x in with_cb)})"
        )
        print(
            f"  without                            {wo:7.1f} steps/s  (runs: {', '.join(f'{x:.1f}' for x in without)})"
        )
        ratios = [a / b for a, b in zip(with_cb, without)]
        print(
            f"  ratio of medians {w / wo:.3f}, median of paired ratios {paired:.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})"
        )
        figure = (
            f"{paired:.3f} (median of back-to-back pairs, range {min(ratios):.3f}-"
            f"{max(ratios):.3f}); {wo:.1f} steps/s without"
        )
        print(
            "RESULT "
            + json.dumps(
                {
                    f"training loop steps/s, ftkit callback reporting to Redis / none; tiny model, "
                    f"{args.steps} steps, N={args.repeat} pairs": figure
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
