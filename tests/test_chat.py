"""Trying a completed job's model in the notebook's own process: ``job.chat()``'s panel, driven
in-process (its widgets set and clicked as the browser would; tests/test_browser_chat.py drives
the same panel in a real JupyterLab). The model is the demo's, trained once per session
(conftest's pico_job): it answers "Who are you?" with what the demo data taught it."""

from __future__ import annotations

import gc
import weakref

import pytest

from conftest import EXAMPLE_DATA, sqlite_only, wait_for
from conftest import PICO as TAUGHT


@sqlite_only
def test_a_job_that_is_not_completed_is_refused_saying_its_status_and_what_to_do(client):
    from ftkit.errors import JobFailed

    job = client.submit(EXAMPLE_DATA, base_model="org/model", max_steps=2)  # no worker: queued
    with pytest.raises(JobFailed, match=rf"job {job.id} is queued: only a completed job .*wait"):
        job.chat()
    with pytest.raises(JobFailed, match="is queued"):
        job.chat_model()
    job.cancel()
    with pytest.raises(JobFailed, match="is cancelled: .*resume_from"):
        job.chat()


@pytest.mark.slow
def test_the_chat_answers_as_base_and_tuned_escapes_them_and_frees_its_model(pico_job):
    from ftkit.client import Client
    from ftkit.errors import ConfigError

    settings, job_id = pico_job
    job = Client(settings).get_job(job_id)
    with pytest.raises(ConfigError, match="temperature=5"):
        job.chat(temperature=5)
    chat = job.chat(max_new_tokens=40)
    assert "loading model" in chat.state.value and chat.send_button.disabled
    wait_for(chat.ready.is_set, 300, "the model to load")
    assert chat.error is None and "ready" in chat.state.value and not chat.send_button.disabled
    assert "greedy" in chat.sampling.value

    # The template in view: the typed prompt as the model will read it, and the template's source.
    chat.prompt.value = "Who are you?"
    assert "&lt;|im_start|&gt;user\nWho are you?&lt;|im_end|&gt;" in chat.rendered.value
    assert "&lt;|im_start|&gt;assistant" in chat.rendered.value
    assert "add_generation_prompt" in chat.template_source.value

    chat.send().join(timeout=300)
    (answer,) = chat.exchanges
    assert answer["tuned"] == TAUGHT and TAUGHT not in answer["base"], answer
    assert answer["settings"] == {"temperature": 0.0, "max_new_tokens": 40, "sampling": "greedy",
                                  "system": None, "device": chat.model.device}  # fmt: skip
    assert TAUGHT in chat.transcript.value and chat.prompt.value == ""
    assert not chat.send_button.disabled and "ready" in chat.state.value

    # Model output and prompts are text: escaped, never markup; the settings change the answer.
    chat.temperature.value = 0.7
    assert "sampled" in chat.sampling.value
    hostile = chat.ask("<img src=x onerror=alert(1)> Who made you?")
    assert (
        hostile["settings"]["sampling"] == "sampled" and hostile["settings"]["temperature"] == 0.7
    )
    assert "<img" not in chat.transcript.value and "&lt;img src=x" in chat.transcript.value
    assert chat.transcript.value.count("class='ftkit-chat-exchange'") == 2

    # Close: the model is gone from this process, the panel disabled and saying so.
    model = weakref.ref(chat.model.model)
    chat.close()
    gc.collect()
    assert model() is None and chat.model is None
    assert chat.send_button.disabled and chat.prompt.disabled and "closed" in chat.state.value
    with pytest.raises(RuntimeError, match="closed"):
        chat.ask("Who are you?")
