"""aioqueue: an asyncio-native task queue with Celery's model and names.

Import everything from here; the submodules are implementation details.
"""

from __future__ import annotations

from . import signals as signals
from ._sync import SyncResult as SyncResult
from .app import AioQueue as AioQueue
from .app import current_app as current_app
from .app import shared_task as shared_task
from .config import Settings as Settings
from .errors import AioQueueError as AioQueueError
from .errors import BrokerConnectionError as BrokerConnectionError
from .errors import BrokerError as BrokerError
from .errors import ConfigurationError as ConfigurationError
from .errors import DeadLettered as DeadLettered
from .errors import MaxRetriesExceeded as MaxRetriesExceeded
from .errors import NotRegistered as NotRegistered
from .errors import RemoteTaskError as RemoteTaskError
from .errors import Retry as Retry
from .errors import SerializationError as SerializationError
from .errors import TaskError as TaskError
from .errors import TaskRevoked as TaskRevoked
from .errors import TimeLimitExceeded as TimeLimitExceeded
from .message import State as State
from .result import AsyncResult as AsyncResult
from .result import ResultInfo as ResultInfo
from .resultset import ResultSet as ResultSet
from .routing import Queue as Queue
from .routing import Route as Route
from .schedules import Interval as Interval
from .schedules import Schedule as Schedule
from .schedules import crontab as crontab
from .schedules import every as every
from .task import Request as Request
from .task import Task as Task
from .worker import Worker as Worker

__version__ = "0.1.0"

__all__ = (
    "AioQueue",
    "AioQueueError",
    "AsyncResult",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DeadLettered",
    "Interval",
    "MaxRetriesExceeded",
    "NotRegistered",
    "Queue",
    "RemoteTaskError",
    "Request",
    "ResultInfo",
    "ResultSet",
    "Retry",
    "Route",
    "Schedule",
    "SerializationError",
    "Settings",
    "State",
    "SyncResult",
    "Task",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "Worker",
    "__version__",
    "crontab",
    "current_app",
    "every",
    "shared_task",
)
