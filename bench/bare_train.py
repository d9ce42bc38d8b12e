"""The baseline: the same job's work in a warm Python process, through ftkit's own functions (what
the template's cells call): load the model with LoRA, build the data set, train (``fit``: the same
trainer, gradient checkpointing and all), save the adapter. No queue, no notebook, no report, no
sample answers. ``warm_seconds`` is that work alone, after the imports and a first throw-away model
load, as in a process that has done them already (as a worker's warm kernel has);
``step_times`` are the seconds from the start of training to each step's log, as a job records
them in its metrics.

python bench/bare_train.py MODEL_DIR DATA.jsonl OUT_DIR MAX_STEPS
"""

import json
import sys
import time

started = time.perf_counter()
from ftkit import training  # noqa: E402
from ftkit.config import TrainConfig  # noqa: E402
from ftkit.data import validate_dataset  # noqa: E402

# A worker's warm kernel has loaded a throw-away model (the lazy set-up of a first load): so has
# this process, or the job would be compared against a colder start than its own.
training.warm_up_model_loading()
imported = time.perf_counter()  # from here on: what a warm process does for the same job
model_dir, data, out, max_steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# bench/overhead.py submits the job with these values; every other field is TrainConfig's default
config = TrainConfig(
    base_model=model_dir, max_steps=max_steps, batch_size=4, learning_rate=1e-3, max_seq_length=256
)
model, tokenizer, _ = training.load_model(config)
fmt = validate_dataset(data).format  # as the upload detects it
train_data, eval_data, _ = training.prepare_data(data, fmt, tokenizer, config)
reporter = training.Reporter(None)
t0 = time.perf_counter()
trainer, result = training.fit(model, tokenizer, train_data, eval_data, config, out, reporter)
train_seconds = time.perf_counter() - t0
training.save_adapter(model, tokenizer, out)
done = time.perf_counter()
steps = [(r["step"], r["time"]) for r in reporter.kept_metrics if "loss" in r]
print(
    f"train_seconds={train_seconds:.3f} warm_seconds={done - imported:.3f} "
    f"total_seconds={done - started:.3f}"
)
print("STEPS " + json.dumps(steps))
