"""The baseline: the same LoRA training as an ftkit job, as a plain script (no queue, no notebook):
load the model, build the data set, train, save the adapter. ``warm_seconds`` is that work alone,
after the imports and a first throw-away model load, as in a process that has done them already
(a worker's warm kernel has).

python bench/bare_train.py MODEL_DIR DATA.jsonl OUT_DIR MAX_STEPS
"""

import sys
import time

started = time.perf_counter()
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from ftkit.data.render import build_dataset  # noqa: E402  -- identical tokens and label masks
from ftkit.train import warm_up_model_loading  # noqa: E402

# A worker's warm kernel has loaded a throw-away model (the lazy set-up of a first load): so has
# this process, or the job would be compared against a colder start than its own.
warm_up_model_loading()
imported = time.perf_counter()  # from here on: what a warm process does for the same job
model_dir, data, out, max_steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
set_seed(3407)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = get_peft_model(
    AutoModelForCausalLM.from_pretrained(model_dir),
    LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    ),
)
train = build_dataset(data, format="chat", tokenizer=tokenizer, max_seq_length=256)
args = SFTConfig(
    output_dir=f"{out}/checkpoints",
    max_steps=max_steps,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    lr_scheduler_type="linear",
    logging_steps=1,
    save_strategy="no",
    seed=3407,
    max_length=256,
    use_cpu=True,
    bf16=False,  # as the job on a CPU (ftkit.device.choose_dtype); trl's default is bf16 autocast
    report_to="none",
    disable_tqdm=True,
    dataloader_num_workers=0,
)
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
t0 = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - t0
model.save_pretrained(f"{out}/adapter")
tokenizer.save_pretrained(f"{out}/adapter")
done = time.perf_counter()
print(
    f"train_seconds={train_seconds:.3f} warm_seconds={done - imported:.3f} "
    f"total_seconds={done - started:.3f}"
)
