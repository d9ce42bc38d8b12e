"""ipywidgets panels, thin views over the public API (``ftkit.client``, ``ftkit.config``):

common.py   the refresher, closing hooks and the jobs table every panel shares
train.py    Panel: upload, configure and submit, then watch the job
monitor.py  MonitorPanel (one job, live), Dashboard (workers, queue depth, jobs)
sweeps.py   SweepView (one sweep's runs, live), RunsPanel (compare, retry, delete runs)
chat.py     ChatPanel: try a completed job's model, its answers beside the base model's
"""

from .chat import ChatPanel
from .monitor import Dashboard, MonitorPanel, WorkerNotice
from .sweeps import RunsPanel, SweepView
from .train import ConfigureStep, Panel, UploadStep

__all__ = [
    "ChatPanel",
    "ConfigureStep",
    "Dashboard",
    "MonitorPanel",
    "Panel",
    "RunsPanel",
    "SweepView",
    "UploadStep",
    "WorkerNotice",
]
