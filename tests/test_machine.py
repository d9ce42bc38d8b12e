"""ftkit.machine asks nvidia-smi what GPUs a machine shows. This CPU machine has none, so a
stand-in nvidia-smi (a script on PATH that prints what the real one prints on an H200) plays the
GPU side; the real one is read on a GPU machine by scripts/gpu-check.sh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ftkit import machine

SMI = """#!/bin/sh
case "$*" in
  "-L") echo "GPU 0: NVIDIA H200 (UUID: GPU-1)"; echo "GPU 1: NVIDIA H100 (UUID: GPU-2)";;
  *driver_version*) echo "570.86.15"; echo "570.86.15";;
  *name,memory.total*) echo "NVIDIA H200, 143771 MiB"; echo "NVIDIA H100, 81559 MiB";;
  *) exit 2;;
esac
"""


@pytest.fixture
def gpu_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_machine_without_nvidia_smi_has_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi anywhere
    assert machine.nvidia_smi("-L") is None
    assert machine.cuda_visible() is False
    assert machine.gpu_info() == {"gpu": None, "gpu_memory": None}
    assert machine.driver_version() is None


def test_the_gpu_named_is_the_one_this_process_trains_on(gpu_machine, monkeypatch):
    assert machine.cuda_visible() is True
    assert machine.gpu_info() == {"gpu": "NVIDIA H200", "gpu_memory": "143771 MiB"}
    assert machine.driver_version() == "570.86.15"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # ftkit worker --gpus 1
    assert machine.gpu_info() == {"gpu": "NVIDIA H100", "gpu_memory": "81559 MiB"}


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_cuda_visible_devices_can_hide_every_gpu(gpu_machine, monkeypatch, hidden):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert machine.cuda_visible() is False


def test_a_failing_nvidia_smi_reads_as_no_answer(gpu_machine):
    assert machine.nvidia_smi("--no-such-flag") is None


def test_a_worker_offers_its_visible_gpus_and_a_one_device_kernel_sees_the_first(
    gpu_machine, monkeypatch
):
    from ftkit.worker.kernels import kernel_env

    assert machine.offered_devices() == ("cuda", 2)  # every GPU nvidia-smi lists
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")  # ftkit worker --gpus 1,0 --gpus-per-worker 2
    assert machine.offered_devices() == ("cuda", 2)
    assert kernel_env()["CUDA_VISIBLE_DEVICES"] == "1"  # a one-device job: not DataParallel
    assert kernel_env(every_device=True)["CUDA_VISIBLE_DEVICES"] == "1,0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # ftkit worker --cpu-devices 3
    monkeypatch.setenv("FTKIT_CPU_DEVICES", "3")
    assert machine.offered_devices() == ("cpu", 3)
    assert kernel_env()["CUDA_VISIBLE_DEVICES"] == ""
