"""The client: upload data sets, submit jobs, follow and collect them, and watch or start workers.
Everything here speaks to the queue, the job store and storage through ``Client``; nothing here
runs a job.

    client.py    Client: data sets, submitting, listing, health, deleting
    job.py       Job: one job's status, metrics, logs, waiting, retrying, what it made
    datasets.py  Dataset, and how an upload is named and digested
    workers.py   WorkerWatch (no worker listening?), LocalWorker (one started from here)
    status.py    public_status: what ``Job.status()`` shows of a record
"""

from ..errors import BrokerUnavailable
from .client import Client, resolve_config
from .datasets import Dataset
from .job import Job
from .status import public_status
from .workers import LocalWorker, WorkerWatch

__all__ = [
    "BrokerUnavailable",
    "Client",
    "Dataset",
    "Job",
    "LocalWorker",
    "WorkerWatch",
    "public_status",
    "resolve_config",
]
