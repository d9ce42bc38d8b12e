"""Writes templates/train_template.ipynb (kept in git): run it after changing the template here."""

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
PARAMETERS = """# Job
job_id = ""                                   # ftkit job id; empty when this notebook is run by hand
dataset_path = "examples/example_data.jsonl"  # local path of the staged data set
dataset_format = "chat"                       # alpaca | chat | sharegpt | prompt_completion | text | preference | unpaired_preference
dataset_columns = {}                          # ftkit's field -> the file's column, e.g. {"output": "answer"}
output_dir = "run"                            # the adapter, checkpoints and result.json go here
resume_from_checkpoint = ""                   # a checkpoint folder when this run continues an earlier attempt
resume_from_adapter = ""                      # a past job's adapter folder to start from (fresh optimizer)
dataset_profile = {}                          # the data set's profile from upload (rows, tokens, warnings)
job_tags = []                                 # the job's tags: its MLflow and W&B runs carry them
job_note = ""                                 # the job's note: the description of those runs

# Model
base_model = "unsloth/llama-3-8b-bnb-4bit"    # hub id or local folder
backend = "auto"                              # auto: unsloth on CUDA when installed, else transformers + peft
load_in_4bit = None                           # QLoRA; None: 4-bit where the worker can (CUDA + bitsandbytes)
max_seq_length = 2048                         # longer examples are truncated

# LoRA
lora_r = 16                                   # adapter rank
lora_alpha = 16                               # scaling (alpha / r)
lora_dropout = 0.0

# Training
max_steps = 60                                # None: train num_epochs instead
num_epochs = 1.0
batch_size = 2                                # per device
gradient_accumulation_steps = 1
learning_rate = 2e-4
warmup_steps = 0
seed = 3407
logging_steps = 1
save_steps = 0                                # checkpoint every N steps; 0: only the last step's weights
train_on_inputs = False                       # False: loss only on assistant / completion tokens
packing = False                               # several short examples per sequence
validation_split = 0.0                        # fraction held out for eval loss
eval_steps = 0                                # 0: evaluate at the end only
timeout_minutes = None                        # the worker stops the job after this long
auto_batch_size = False                       # out of memory: retry at half the batch, twice the accumulation
sample_prompts = []                           # answered by the base and the fine-tuned model below
report_to = []                                # experiment trackers: tensorboard | mlflow | wandb (credentials: the worker's environment)

# Method
method = "sft"                                # sft | dpo | orpo (preference pairs) | kto (labelled answers, or pairs)
beta = None                                   # dpo, orpo, kto: how far from the reference; None: TRL's default
dpo_loss_type = None                          # dpo: sigmoid | ipo | hinge | robust; None: sigmoid
kto_desirable_weight = None                   # kto: weight of the good answers; None: 1.0
kto_undesirable_weight = None                 # kto: weight of the bad answers; None: 1.0

# Devices
devices = 1                                   # processes, one per device of the worker (batch_size is per device)
sharding = "none"                             # none: a copy on each device (data-parallel) | fsdp: sharded (GPUs)"""

CONFIG = """from ftkit import training  # everything this notebook runs: model, trainer, report tables
from ftkit.config import TrainConfig
from ftkit.core.statuses import SAVING, STOP_HANDOFF, STOPPED_SUPERSEDED

# Re-validated here: the notebook refuses a bad value even when run by hand.
config = TrainConfig.from_dict({name: globals()[name] for name in TrainConfig.field_names()})
reporter = training.Reporter.for_job(job_id)
training.show_table(config.to_dict(), "Configuration")"""

ENVIRONMENT = """training.show_table(training.environment(), "Environment")
# report_to's trackers, each dropped with a warning when it cannot work on this worker
# (on several devices: started and logged to by rank 0 of the training processes)
trackers = training.start_trackers(config, job_id, output_dir, job_tags, job_note, reporter)"""

TRAINING = """if config.devices == 1:
    trainer, result = training.fit(
        model, tokenizer, train_data, eval_data, config, output_dir, reporter, resume_from_checkpoint,
        trackers.callbacks,
    )
    history, ranks = trainer.state.log_history, []
else:  # torchrun, one process per device, from here; rank 0 reports, logs to trackers, checkpoints, saves
    history, result, trained_info, ranks = training.fit_on_devices(
        train_data, eval_data, data_summary, config, output_dir, reporter, resume_from_checkpoint,
        resume_from_adapter, trackers,
    )
    model_info = {**model_info, **trained_info}
training.plot_training(history)
speed = training.throughput(result, data_summary, config, ranks)
training.show_table(speed, "Throughput and memory")"""

SAMPLES = """samples, margins = [], []
if result["stopped"] not in (STOP_HANDOFF, STOPPED_SUPERSEDED):  # the job finishes in another run
    if model is None:  # trained in other processes: the adapter rank 0 saved, loaded here
        model, parent = training.load_trained(config, output_dir, resume_from_adapter)
    prompts = training.sample_prompts(
        dataset_path, dataset_format, eval_data, tokenizer, config.sample_prompts, columns=dataset_columns
    )
    samples = training.show_samples(model, tokenizer, prompts, parent=parent)
    if config.preference:  # chosen over rejected, as training started and after
        margins = training.show_margins(model, tokenizer, training.report_pairs(train_data, eval_data), parent)"""

RESULT = """reporter.status(SAVING)
if config.devices == 1:
    adapter_dir = training.save_adapter(model, tokenizer, output_dir)
else:  # rank 0 saved it
    adapter_dir = training.saved_adapter(output_dir)
losses = [row["loss"] for row in history if "loss" in row]
summary = {**result, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
           **training.final_rewards(history), "adapter_dir": str(adapter_dir)}
training.write_result(output_dir, result=summary, data=data_summary, model=model_info, throughput=speed,
                   samples=samples, margins=margins)
training.show_table(summary, "Result")
trackers.finish(summary)  # metrics written, the adapter to MLflow, the W&B run finished (on several devices: rank 0 did)"""

params = code(PARAMETERS)
params.metadata["tags"] = ["parameters"]
header = code('print("The run summary appears here when an ftkit worker has finished the job.")')
header.metadata["tags"] = ["header"]
cells = [
    md(
        "# Fine-tuning run\n\nThis notebook is the run report of one ftkit job: it was executed top to bottom by an "
        "ftkit worker with the parameters below. Each section shows what was trained, on what, and how it went."
    ),
    header,
    params,
    code(CONFIG),
    md("## Environment"),
    code(ENVIRONMENT),
    md("## Model and LoRA"),
    code(
        "if config.devices == 1:\n"
        "    model, tokenizer, model_info = training.load_model(config, resume_from_adapter)\n"
        "    # the parent job's adapter as this run starts from it, to answer as that job did (below)\n"
        "    parent = training.starting_weights(model) if resume_from_adapter else None\n"
        "else:  # each training process loads the model on its device: here the tokenizer, for the data\n"
        "    model, parent = None, None\n"
        "    tokenizer, model_info = training.devices_plan(config)\n"
        'training.show_table(model_info, "Model")'
    ),
    md("## Data"),
    code(
        "train_data, eval_data, data_summary = training.prepare_data(\n"
        "    dataset_path, dataset_format, tokenizer, config, dataset_columns\n"
        ")\n"
        "training.show_dataset(dataset_path, dataset_format, dataset_profile, data_summary)"
    ),
    md(
        "## Training\n\nLoss and learning rate by step (a preference run's rewards below them), then "
        "throughput and peak memory."
    ),
    code(TRAINING),
    md(
        "## Sample generations\n\nThe same prompts answered by the base model (adapter disabled), by the "
        "parent job when this run continued one, and by the fine-tuned model. A preference run then shows "
        "a few pairs with the model's log-probability margin of the chosen over the rejected answer, as "
        "training started and after."
    ),
    code(SAMPLES),
    md("## Result"),
    code(RESULT),
]
for number, cell in enumerate(cells):
    cell.id = f"cell-{number:02d}"  # stable ids: regenerating changes only what changed
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata["language_info"] = {"name": "python"}
nbf.write(nb, "templates/train_template.ipynb")
