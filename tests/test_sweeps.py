"""Sweeps: a grid or random draws of TrainConfig values queued as one, checked before anything is
queued, recorded in the job store on SQLite and on a real redis-server, found again from a fresh
client, and (slow) trained by a real worker, compared and shown."""

from __future__ import annotations

import math
import re

import pytest

from conftest import EXAMPLE_DATA, redis_only
from ftkit import sweep_plan, sweeping
from ftkit.client import Client
from ftkit.errors import ConfigError, JobActive, JobExists, JobNotFound

QUICK = dict(base_model="org/model", max_steps=2)  # queued, never run: a hub id is not fetched


def test_a_grid_is_every_combination_in_the_given_order_and_scalars_are_fixed():
    runs, spec, fixed, seed = sweep_plan.plan(
        "grid", {"lora_r": [8, 16], "learning_rate": [1e-4, 2e-4, 3e-4], "max_steps": 2}, None, None
    )
    assert runs == [
        {"lora_r": r, "learning_rate": lr} for r in (8, 16) for lr in (1e-4, 2e-4, 3e-4)
    ]
    assert spec == {"lora_r": {"values": [8, 16]}, "learning_rate": {"values": [1e-4, 2e-4, 3e-4]}}
    assert fixed == {"max_steps": 2} and seed is None


def test_sample_prompts_is_swept_only_by_a_list_of_lists():
    runs, _, fixed, _ = sweep_plan.plan(
        "grid", {"sample_prompts": [["Hi"], ["Hi", "Bye"]], "lora_r": 8}, None, None
    )
    assert runs == [{"sample_prompts": ["Hi"]}, {"sample_prompts": ["Hi", "Bye"]}]
    with pytest.raises(ConfigError, match="at least one field with several values"):
        sweep_plan.plan("grid", {"sample_prompts": ["Hi", "Bye"]}, None, None)  # one value: a list
    _, _, fixed, _ = sweep_plan.plan(
        "grid", {"sample_prompts": ["Hi"], "lora_r": [4, 8]}, None, None
    )
    assert fixed == {"sample_prompts": ["Hi"]}


def test_random_draws_are_reproducible_with_sample_seed_and_stay_in_their_ranges():
    fields = {"learning_rate": (1e-5, 1e-1), "lora_r": (4, 64), "lora_dropout": [0.0, 0.05]}
    runs, spec, _, seed = sweep_plan.plan("random", fields, 200, 7)
    assert seed == 7 and len(runs) == 200
    again, *_ = sweep_plan.plan("random", dict(reversed(fields.items())), 200, 7)
    assert [dict(sorted(r.items())) for r in again] == [dict(sorted(r.items())) for r in runs]
    assert sweep_plan.plan("random", fields, 200, 8)[0] != runs
    assert spec["learning_rate"] == {"range": [1e-5, 1e-1], "scale": "log"}
    assert spec["lora_r"] == {"range": [4, 64], "scale": "int"}
    assert spec["lora_dropout"] == {"values": [0.0, 0.05]}
    rates = [r["learning_rate"] for r in runs]
    assert all(1e-5 <= x <= 1e-1 for x in rates)
    # log-uniform: each decade gets about a quarter of the draws (uniform would put 90% in the top)
    decades = [sum(10**-k <= x < 10 ** (1 - k) for x in rates) for k in (5, 4, 3, 2)]
    assert all(25 <= d <= 75 for d in decades), decades
    ranks = [r["lora_r"] for r in runs]
    assert all(isinstance(x, int) and 4 <= x <= 64 for x in ranks)
    assert {4, 64} <= set(ranks)  # the ends of an integer range are drawn too
    assert {r["lora_dropout"] for r in runs} == {0.0, 0.05}
    uniform, *_ = sweep_plan.plan("random", {"lora_dropout": (0.0, 0.5)}, 200, 1)
    assert 0.15 < sum(r["lora_dropout"] for r in uniform) / 200 < 0.35


@pytest.mark.parametrize(
    "mode, fields, n, message",
    [
        ("grid", {"learning_rate": (1e-5, 1e-3)}, None, r"is a range: .*mode='random'"),
        ("random", {"learning_rate": (1e-3,)}, 4, r"\(low, high\), two numbers"),
        ("random", {"lora_r": (4.0, 8)}, 4, "two whole numbers"),
        ("random", {"learning_rate": (1e-3, 1e-5)}, 4, "low end must be below its high end"),
        ("random", {"learning_rate": (0, 1e-3)}, 4, "its low end: TrainConfig.learning_rate=0"),
        ("random", {"lora_dropout": (0.0, 1.0)}, 4, "its high end: TrainConfig.lora_dropout"),
        ("random", {"learning_rate": (1e-5, math.inf)}, 4, "two numbers"),
        ("random", {"packing": (False, True)}, 4, "a range is for a numeric field"),
        ("random", {"base_model": ("a/b", "c/d")}, 4, "a range is for a numeric field"),
        ("random", {"learning_rate": (1e-5, 1e-3)}, None, "n=None: mode='random' needs"),
        ("random", {"learning_rate": (1e-5, 1e-3)}, 0, "from 1 to 256"),
        ("grid", {"learning_rate": [1e-4, 2e-4]}, 4, "n and sample_seed are for mode='random'"),
        ("grid", {"learning_rate": []}, None, r"learning_rate=\[\]: give at least one value"),
        ("grid", {"lora_r": [8, 8]}, None, "lists a value twice"),
        ("grid", {"lora_r": 8}, None, "at least one field with several values"),
        ("grid", {"learnig_rate": [1e-4]}, None, "did you mean 'learning_rate'"),
        ("grid", {"lora_r": list(range(1, 20)), "seed": list(range(20))}, None, "380 runs"),
        ("sweep", {"lora_r": [8, 16]}, None, "mode='sweep': one of grid, random"),
    ],
)
def test_bad_sweeps_are_refused_with_the_field_named(mode, fields, n, message):
    with pytest.raises(ConfigError, match=message) as info:
        sweep_plan.plan(mode, fields, n, None)
    assert info.value.field in (*fields, "mode", "n", None)


def test_a_methods_settings_sweep_beta_log_uniform_and_the_loss_type_from_a_list():
    fields = {"beta": (0.01, 1.0), "dpo_loss_type": ["sigmoid", "ipo"], "lora_r": 8}
    runs, spec, fixed, _ = sweep_plan.plan("random", fields, 200, 3, method="dpo")
    assert spec["beta"] == {"range": [0.01, 1.0], "scale": "log"}
    assert spec["dpo_loss_type"] == {"values": ["sigmoid", "ipo"]} and fixed == {"lora_r": 8}
    betas = [r["beta"] for r in runs]
    assert all(0.01 <= b <= 1.0 for b in betas)
    # log-uniform: each decade about half the draws (uniform would put 90% in the top one)
    assert 70 <= sum(b < 0.1 for b in betas) <= 130
    assert {r["dpo_loss_type"] for r in runs} == {"sigmoid", "ipo"}
    from ftkit.config import TrainConfig

    configs = [TrainConfig.from_dict({"method": "dpo", **fixed, **r}) for r in runs]
    assert {c.method for c in configs} == {"dpo"}
    # the method itself is a field like any: a grid over methods, each with its settings
    runs, *_ = sweep_plan.plan("grid", {"method": ["dpo", "orpo"], "beta": [0.1, 0.5]}, None, None)
    assert runs[-1] == {"method": "orpo", "beta": 0.5} and len(runs) == 4
    runs, *_ = sweep_plan.plan(
        "grid", {"kto_desirable_weight": [1.0, 1.33], "method": "kto"}, None, None
    )
    assert [r["kto_desirable_weight"] for r in runs] == [1.0, 1.33]


NOT_SFT = "applies to method='dpo' or 'orpo' or 'kto', not method='sft'; leave it unset"


@pytest.mark.parametrize(
    "mode, fields, method, field, message",
    [
        ("grid", {"beta": [0.1, 0.2]}, "sft", "beta", "TrainConfig.beta=0.1: " + NOT_SFT),
        ("random", {"beta": (0.01, 1.0)}, "sft", "beta", "TrainConfig.beta=0.01: " + NOT_SFT),
        ("grid", {"lora_r": [8, 16], "beta": 0.1}, "sft", "beta", NOT_SFT),
        (
            "grid",
            {"dpo_loss_type": ["sigmoid", "ipo"]},
            "orpo",
            "dpo_loss_type",
            "TrainConfig.dpo_loss_type='sigmoid': applies to method='dpo', not method='orpo'",
        ),
        (
            "grid",
            {"method": ["dpo", "kto"], "dpo_loss_type": ["ipo", "hinge"]},
            "sft",
            "dpo_loss_type",
            "applies to method='dpo', not method='kto'",
        ),
        (
            "grid",
            {"kto_undesirable_weight": [1.0, 2.0], "method": "dpo"},
            "sft",
            "kto_undesirable_weight",
            "applies to method='kto', not method='dpo'",
        ),
        ("random", {"dpo_loss_type": ("a", "b")}, "dpo", "dpo_loss_type", "a numeric field"),
        ("random", {"beta": (0, 1.0)}, "dpo", "beta", "its low end: TrainConfig.beta=0"),
    ],
)
def test_a_setting_the_sweeps_method_does_not_take_is_refused_up_front(
    mode, fields, method, field, message
):
    n = 4 if mode == "random" else None
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        sweep_plan.plan(mode, fields, n, None, method=method)
    assert info.value.field == field


def test_a_preference_sweep_queues_its_settings_and_one_its_method_does_not_take_nothing(
    client,
):
    from ftkit.config import TrainConfig

    cases = [
        (None, {"beta": [0.1, 0.2]}, NOT_SFT),
        (TrainConfig(method="orpo"), {"dpo_loss_type": ["ipo", "hinge"]}, "not method='orpo'"),
        ({"method": "dpo"}, {"kto_desirable_weight": [1.0, 2.0]}, "not method='dpo'"),
    ]
    for config, fields, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            sweeping.create(client, EXAMPLE_DATA, config, **fields, **QUICK)
        assert not str(info.value).startswith("run ")  # the sweep's fault, not one run's
    assert client.count_jobs() == 0 and client.store.list_sweeps() == []
    pairs = EXAMPLE_DATA.parent / "preference_data.jsonl"
    sweep = sweeping.create(
        client, pairs, {"method": "dpo"}, beta=[0.05, 0.2], dpo_loss_type="ipo", **QUICK
    )
    configs = [job.status()["config"] for job in sweep.jobs]
    assert [(c["method"], c["beta"], c["dpo_loss_type"]) for c in configs] == [
        ("dpo", 0.05, "ipo"),
        ("dpo", 0.2, "ipo"),
    ]


def test_every_run_is_checked_before_any_is_queued(client, tmp_path):
    with pytest.raises(ConfigError) as info:
        sweeping.create(client, EXAMPLE_DATA, learning_rate=[1e-4, -1.0], lora_r=[8, 16], **QUICK)
    assert str(info.value).startswith("run 3 of 4 (learning_rate=-1.0, lora_r=8): ")
    assert "TrainConfig.learning_rate=-1.0" in str(info.value)
    assert info.value.field == "learning_rate"
    with pytest.raises(ConfigError, match=r"run 1 of 2 \(lora_r=8\): base_model .*does not exist"):
        sweeping.create(client, EXAMPLE_DATA, lora_r=[8, 16], base_model=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="TrainConfig.batch_size=0") as info:
        sweeping.create(client, EXAMPLE_DATA, lora_r=[8, 16], batch_size=0, **QUICK)
    assert "run 1" not in str(info.value)  # a fixed value is no one run's fault
    with pytest.raises(ConfigError, match="priority=999"):
        sweeping.create(client, EXAMPLE_DATA, lora_r=[8, 16], priority=999, **QUICK)
    with pytest.raises(ConfigError, match="sweep:<id> tag"):
        sweeping.create(
            client, EXAMPLE_DATA, lora_r=[8, 16], tags=[f"t{i}" for i in range(20)], **QUICK
        )
    assert client.count_jobs() == 0 and client.store.list_sweeps() == []
    assert client.storage.listdir("datasets") == []  # nothing uploaded either


def test_a_grid_is_queued_recorded_and_found_again_from_a_fresh_client(client, settings):
    sweep = sweeping.create(
        client,
        EXAMPLE_DATA,
        learning_rate=[1e-4, 2e-4],
        lora_r=[8, 16],
        tags=["lr-grid"],
        note="first grid",
        **QUICK,
    )
    assert sweep.swept == ["learning_rate", "lora_r"] and len(sweep.jobs) == 4
    for job, (_, values) in zip(sweep.jobs, sweep.runs):
        status = job.status()
        assert {k: status["config"][k] for k in values} == values
        assert status["config"]["max_steps"] == 2 and status["status"] == "queued"
        assert status["tags"] == ["lr-grid", f"sweep:{sweep.id}"] and status["note"] == "first grid"
    ids = {j.id for j in sweep.jobs}
    assert {j["job_id"] for j in client.jobs(tag=f"sweep:{sweep.id}")} == ids
    assert {j["job_id"] for j in client.jobs(tag="lr-grid")} == ids

    fresh = Client(settings)  # the notebook restarted
    again = sweeping.get(fresh, sweep.id)
    assert again.record == sweep.record and [j.id for j in again.jobs] == [j.id for j in sweep.jobs]
    assert again.record["config"]["max_steps"] == 2 and "lora_r" not in again.record["config"]
    assert again.record["dataset"]["name"] == "example_data.jsonl"
    rows = again.status()
    assert [(r["learning_rate"], r["lora_r"]) for r in rows] == [
        (1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)
    ]  # fmt: skip
    assert {r["status"] for r in rows} == {"queued"} and {r["step"] for r in rows} == {0}
    assert rows.columns == [
        "job_id", "learning_rate", "lora_r", "status", "step", "total_steps", "final_loss",
        "eval_loss",
    ]  # fmt: skip
    assert again._repr_html_().count("data-status='queued'") == 4
    [listed] = sweeping.recent(fresh)
    assert listed["sweep_id"] == sweep.id and listed["runs"] == 4
    assert listed["swept"] == ["learning_rate", "lora_r"] and listed["tags"] == ["lr-grid"]
    assert (
        sweeping.recent(fresh, tag="lr-grid") == [listed] and sweeping.recent(fresh, tag="x") == []
    )
    with pytest.raises(JobNotFound, match="12 hex digits"):
        sweeping.get(fresh, "../etc")
    with pytest.raises(JobNotFound, match="no sweep"):
        sweeping.get(fresh, "0123456789ab")

    with pytest.raises(JobActive, match="4 runs are queued or running"):
        again.delete()
    with pytest.raises(TimeoutError, match="4 of 4 runs still going after 0.2 s"):
        again.wait(timeout=0.2, poll=0.05, progress=False)
    assert set(again.cancel().values()) == {"cancelled"}
    assert {r["status"] for r in again.wait(timeout=30)} == {"cancelled"}  # with its bar
    freed = again.delete()
    assert sorted(r["job_id"] for r in freed) == sorted(ids)
    assert client.jobs() == [] and sweeping.recent(client) == []


def test_a_random_sweep_records_its_seed_and_the_draw_can_be_made_again(client):
    sweep = sweeping.create(
        client,
        EXAMPLE_DATA,
        mode="random",
        n=3,
        learning_rate=(1e-5, 1e-3),
        lora_r=[4, 8, 16],
        **QUICK,
    )
    seed = sweep.record["sample_seed"]
    assert isinstance(seed, int) and sweep.record["mode"] == "random"
    runs, *_ = sweep_plan.plan(
        "random", {"learning_rate": (1e-5, 1e-3), "lora_r": [4, 8, 16]}, 3, seed
    )
    assert [values for _, values in sweep.runs] == runs
    assert [j.status()["config"]["learning_rate"] for j in sweep.jobs] == [
        r["learning_rate"] for r in runs
    ]
    assert f"random (sample_seed {seed})" in sweep.title


def test_a_sweep_that_cannot_queue_every_run_takes_back_what_it_queued(client, monkeypatch):
    """The third run's id is taken (JobExists from the store): the two runs queued before it and
    the sweep's record go again."""
    taken = client.submit(EXAMPLE_DATA, **QUICK)
    ids = iter(["aaaaaaaaaaa0", "aaaaaaaaaaa1", "aaaaaaaaaaa2", taken.id])
    monkeypatch.setattr(sweeping, "new_id", lambda: next(ids))
    with pytest.raises(JobExists) as info:
        sweeping.create(client, EXAMPLE_DATA, lora_r=[4, 8, 16], **QUICK)
    assert "run 3 of 3 was not queued; the 2 runs queued before it were cancelled and deleted" in (
        " ".join(getattr(info.value, "__notes__", []))
    )
    assert [j["job_id"] for j in client.jobs()] == [taken.id]
    assert client.store.list_sweeps() == []


def test_a_garbled_run_in_a_sweep_record_is_left_out(client):
    """A record is data: only job ids are read as ids, only TrainConfig names as values."""
    client.store.create_sweep(
        {
            "sweep_id": "0123456789ab",
            "created_at": 1.0,
            "mode": "grid",
            "swept": {"lora_r": {}, "__class__": {}},
            "runs": [
                {"job_id": "../../etc", "values": {"lora_r": 8}},
                {"job_id": "aaaaaaaaaaaa", "values": {"lora_r": 8, "<script>": 1}},
                "not a run",
            ],
            "tags": "not a list",
        }
    )
    sweep = sweeping.get(client, "0123456789ab")
    assert sweep.runs == [("aaaaaaaaaaaa", {"lora_r": 8})] and sweep.swept == ["lora_r"]
    assert [r["status"] for r in sweep.status()] == [sweeping.MISSING]
    assert sweeping.recent(client)[0]["tags"] == []


def test_the_sweep_commands_list_sweeps_and_show_one(client, capsys, monkeypatch):
    import ftkit
    from ftkit import cli

    monkeypatch.setattr(ftkit, "client", lambda: client)  # the connection of the CLI and ftkit.*

    sweep = ftkit.sweep(EXAMPLE_DATA, learning_rate=[1e-4, 2e-4], tags=["cli"], **QUICK)
    assert ftkit.get_sweep(sweep.id).record == sweep.record
    assert cli.main(["sweeps"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SWEEP_ID", "CREATED_AT", "MODE", "SWEPT", "RUNS", "DATASET", "TAGS"]
    assert out[1].split()[0] == sweep.id and out[1].split()[-3:] == [
        "2",
        "example_data.jsonl",
        "cli",
    ]
    assert cli.main(["sweeps", "--tag", "other"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # the header
    assert cli.main(["sweep", sweep.id]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == sweep.title and out[1].split()[:3] == ["JOB_ID", "LEARNING_RATE", "STATUS"]
    assert [line.split()[:3] for line in out[2:]] == [
        [job.id, lr, "queued"] for job, lr in zip(sweep.jobs, ("0.0001", "0.0002"))
    ]
    assert cli.main(["sweep", "0123456789ab"]) == 2
    assert "no sweep" in capsys.readouterr().err


@pytest.mark.slow
@redis_only  # a sweep on SQLite: test_server's HTTP flow
def test_a_sweep_trains_through_a_worker_and_is_compared_and_shown(
    client, settings, start_worker, tiny_model
):
    from ftkit.panels.sweeps import SweepView

    start_worker()
    sweep = sweeping.create(
        client,
        EXAMPLE_DATA,
        learning_rate=[1e-3, 3e-3],
        base_model=str(tiny_model),
        max_steps=2,
        batch_size=2,
        max_seq_length=128,
        validation_split=0.1,
        eval_steps=2,  # evaluate at the last step (with eval_steps=0 train.fit evaluates nowhere)
    )
    rows = sweep.wait(timeout=600, progress=False)
    assert [r["status"] for r in rows] == ["completed", "completed"], [
        j.status()["error"] for j in sweep.jobs
    ]
    for row, job in zip(rows, sweep.jobs):
        status = job.status()
        assert status["config"]["learning_rate"] == row["learning_rate"]
        assert row["step"] == row["total_steps"] == 2
        assert row["final_loss"] == status["result"]["final_loss"] is not None
        assert row["eval_loss"] == status["eval_loss"] is not None

    again = sweeping.get(Client(settings), sweep.id)  # after a restart
    assert again.status() == rows
    comparison = again.compare()
    html = comparison._repr_html_()
    overlay = html.split("<details>")[0]
    curves = re.findall(r"<polyline class='ftkit-compare-loss'[^>]*points='([^']*)'", overlay)
    assert len(curves) == 2 and [len(c.split()) for c in curves] == [2, 2]  # a point per step
    assert all(job.id in overlay for job in sweep.jobs)  # the legend names each run
    best = min(rows, key=lambda r: r["eval_loss"])
    assert (comparison.best["job_id"], comparison.best_by) == (best["job_id"], "eval_loss")
    assert f"best: <b>{best['job_id']}</b> (eval_loss {best['eval_loss']:.4f}" in html

    view = SweepView(again)  # what a cell shows: all runs ended, so it does not refresh on
    assert view.done and not view.refreshing
    assert view.table.value.count("data-status='completed'") == 2
    assert view.curves.value.count("ftkit-compare-loss") == 2
    assert best["job_id"] in view.best.value
