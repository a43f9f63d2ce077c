"""Celery-style configuration, turned into aioqueue settings.

One job: read what a Celery project configures -- a ``celeryconfig`` module with Celery's
lowercase names or its old uppercase ones, Django settings under ``namespace="CELERY"``,
a single name given to ``app.conf.update`` -- and return aioqueue settings, plus one
human notice for each Celery setting that has no meaning here saying what to do instead.
``AIOQUEUE_<SETTING>`` environment variables are read here too.

Name resolution follows Celery 5 (``celery/app/utils.py``, ``celery/app/defaults.py``):

* without a namespace, every public attribute counts; old names (``CELERYD_CONCURRENCY``)
  are translated with Celery's own old->new table (:data:`_CELERY_TABLE`);
* with ``namespace="CELERY"`` only names starting ``CELERY_`` are read as settings, the prefix
  is stripped and the rest lowercased (``CELERY_BROKER_URL`` -> ``broker_url``), in the
  namespace's case; as Celery 5.7 does (checked against it), un-prefixed new names and old
  names are read too, at a lower priority, and everything else (Django's ``DEBUG``...) is
  left alone;
* ``timezone`` falls back to ``TIME_ZONE`` (Django's), as Celery's ``Settings.timezone``.

Unlike Celery, an unknown name is an error (with a did-you-mean), not silently ignored:
a misspelt setting is the bug a configuration loader exists to catch.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import _CONTENT_TYPES, Settings
from .errors import ConfigurationError
from .routing import Route, Router, TaskRoutes, declared_queues

__all__ = (
    "CELERY_NEW_NAMES",
    "CELERY_OLD_NAMES",
    "ConfigImportError",
    "TaskRoutes",
    "normalise_routes",
    "notices_for_field",
    "settings_from_env",
    "settings_from_object",
    "translate_setting",
)


class ConfigImportError(ConfigurationError, ImportError):
    """The configuration module or object could not be imported (``silent=True`` skips it)."""


def _parse_table(text: str) -> dict[str, str]:
    """``new [^] [OLD ...]`` entries -> {old name: new name}.

    An entry with no old name has the old name ``new.upper()`` (Celery's rule for options
    without an explicit ``old``); ``^`` adds that name next to the listed ones.
    """
    table: dict[str, str] = {}
    entries: list[tuple[str, list[str], bool]] = []
    for token in text.split():
        if token[0].islower():
            entries.append((token, [], False))
        elif token == "^":
            entries[-1] = (entries[-1][0], entries[-1][1], True)
        else:
            entries[-1][1].append(token)
    for new, olds, implicit in entries:
        for old in [*olds, *([new.upper()] if implicit or not olds else [])]:
            table[old] = new
    return table


# Celery's complete old->new table: ``_TO_NEW_KEY`` of celery/app/defaults.py (5.7.0 and the
# main branch, merged), plus the old names the "New lowercase settings" table of its
# configuration docs lists that the code lacks (CELERY_ENABLE_UTC, CELERY_RESULT_EXPIRES,
# CELERYD_TIME_LIMIT...). Regenerate from Celery's source when Celery adds settings.
_CELERY_TABLE: Final = """
accept_content CELERY_ACCEPT_CONTENT arangodb_backend_settings CELERY_ARANGODB_BACKEND_SETTINGS
azureblockblob_base_path azureblockblob_connection_timeout azureblockblob_container_name
azureblockblob_read_timeout azureblockblob_retry_increment_base
azureblockblob_retry_initial_backoff_sec azureblockblob_retry_max_attempts
beat_cron_starting_deadline CELERYBEAT_CRON_STARTING_DEADLINE beat_enable_remote_control
CELERYBEAT_ENABLE_REMOTE_CONTROL beat_max_loop_interval CELERYBEAT_MAX_LOOP_INTERVAL
beat_remote_control_max_tick_age CELERYBEAT_REMOTE_CONTROL_MAX_TICK_AGE beat_schedule
CELERYBEAT_SCHEDULE beat_schedule_filename CELERYBEAT_SCHEDULE_FILENAME beat_scheduler
CELERYBEAT_SCHEDULER beat_sync_every CELERYBEAT_SYNC_EVERY broker_channel_error_retry
broker_connection_max_retries broker_connection_retry broker_connection_retry_on_startup
broker_connection_timeout broker_failover_strategy broker_heartbeat broker_heartbeat_checkrate
broker_host broker_login_method broker_native_delayed_delivery_queue_type broker_password
broker_pool_acquire_timeout broker_pool_limit broker_port broker_read_url broker_transport
broker_transport_options broker_url broker_use_ssl broker_user broker_vhost broker_write_url
cache_backend CELERY_CACHE_BACKEND cache_backend_options CELERY_CACHE_BACKEND_OPTIONS
cassandra_auth_kwargs cassandra_auth_provider cassandra_bundle_path cassandra_entry_ttl
cassandra_keyspace cassandra_options cassandra_port cassandra_read_consistency
cassandra_servers cassandra_table ^ CASSANDRA_COLUMN_FAMILY cassandra_write_consistency
control_exchange control_queue_durable control_queue_exclusive control_queue_expires
control_queue_ttl cosmosdbsql_collection_name cosmosdbsql_consistency_level
cosmosdbsql_database_name cosmosdbsql_max_retry_attempts cosmosdbsql_max_retry_wait_time
couchbase_backend_settings CELERY_COUCHBASE_BACKEND_SETTINGS database_create_tables_at_setup
database_engine_callback database_engine_options CELERY_RESULT_ENGINE_OPTIONS
database_short_lived_sessions CELERY_RESULT_DB_SHORT_LIVED_SESSIONS database_table_names
CELERY_RESULT_DB_TABLENAMES database_table_schemas database_url CELERY_RESULT_DBURI
elasticsearch_max_retries CELERY_ELASTICSEARCH_MAX_RETRIES elasticsearch_retry_on_timeout
CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT elasticsearch_save_meta_as_text
CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT elasticsearch_timeout CELERY_ELASTICSEARCH_TIMEOUT
enable_utc ^ CELERY_ENABLE_UTC event_exchange CELERY_EVENT_EXCHANGE event_queue_durable
CELERY_EVENT_QUEUE_DURABLE event_queue_exclusive CELERY_EVENT_QUEUE_EXCLUSIVE
event_queue_expires CELERY_EVENT_QUEUE_EXPIRES event_queue_prefix CELERY_EVENT_QUEUE_PREFIX
event_queue_ttl CELERY_EVENT_QUEUE_TTL event_serializer CELERY_EVENT_SERIALIZER gcs_base_path
gcs_bucket gcs_project gcs_ttl imports CELERY_IMPORTS include CELERY_INCLUDE
mongodb_backend_settings CELERY_MONGODB_BACKEND_SETTINGS redis_backend_use_ssl
CELERY_REDIS_BACKEND_USE_SSL redis_db CELERY_REDIS_DB redis_host CELERY_REDIS_HOST
redis_max_connections CELERY_REDIS_MAX_CONNECTIONS redis_password CELERY_REDIS_PASSWORD
redis_port CELERY_REDIS_PORT redis_retry_on_timeout CELERY_REDIS_RETRY_ON_TIMEOUT
redis_socket_connect_timeout CELERY_REDIS_SOCKET_CONNECT_TIMEOUT redis_socket_keepalive
CELERY_REDIS_SOCKET_KEEPALIVE redis_socket_timeout CELERY_REDIS_SOCKET_TIMEOUT redis_username
CELERY_REDIS_USERNAME result_accept_content result_backend CELERY_RESULT_BACKEND
result_backend_always_retry CELERY_RESULT_BACKEND_ALWAYS_RETRY
result_backend_base_sleep_between_retries_ms
CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS result_backend_max_retries
CELERY_RESULT_BACKEND_MAX_RETRIES result_backend_max_sleep_between_retries_ms
CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS result_backend_transport_options
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS result_cache_max CELERY_MAX_CACHED_RESULTS
result_chord_expires CELERY_RESULT_CHORD_EXPIRES result_chord_join_timeout
CELERY_RESULT_CHORD_JOIN_TIMEOUT result_chord_retry_interval CELERY_RESULT_CHORD_RETRY_INTERVAL
result_compression CELERY_RESULT_COMPRESSION result_exchange CELERY_RESULT_EXCHANGE
result_exchange_type CELERY_RESULT_EXCHANGE_TYPE result_expires CELERY_RESULT_EXPIRES
CELERY_TASK_RESULT_EXPIRES result_extended CELERY_RESULT_EXTENDED result_failure_expires
CELERY_RESULT_FAILURE_EXPIRES result_persistent CELERY_RESULT_PERSISTENT result_serializer
CELERY_RESULT_SERIALIZER s3_access_key_id s3_base_path s3_bucket s3_endpoint_url s3_region
s3_secret_access_key security_cert_store CELERY_SECURITY_CERT_STORE security_certificate
CELERY_SECURITY_CERTIFICATE security_digest CELERY_SECURITY_DIGEST security_key
CELERY_SECURITY_KEY security_key_password CELERY_SECURITY_KEY_PASSWORD task_acks_late
CELERY_ACKS_LATE task_acks_on_failure CELERY_ACKS_ON_FAILURE task_acks_on_failure_or_timeout
CELERY_ACKS_ON_FAILURE_OR_TIMEOUT task_acks_on_timeout CELERY_ACKS_ON_TIMEOUT
task_allow_error_cb_on_chord_header CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER task_always_eager
CELERY_ALWAYS_EAGER CELERY_TASK_ALWAYS_EAGER task_annotations CELERY_ANNOTATIONS
task_compression CELERY_COMPRESSION CELERY_MESSAGE_COMPRESSION
task_create_missing_queue_exchange_type CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE
task_create_missing_queue_type CELERY_CREATE_MISSING_QUEUE_TYPE task_create_missing_queues
CELERY_CREATE_MISSING_QUEUES task_default_delivery_mode CELERY_DEFAULT_DELIVERY_MODE
task_default_exchange CELERY_DEFAULT_EXCHANGE task_default_exchange_type
CELERY_DEFAULT_EXCHANGE_TYPE task_default_priority CELERY_DEFAULT_PRIORITY task_default_queue
CELERY_DEFAULT_QUEUE task_default_queue_type CELERY_DEFAULT_QUEUE_TYPE task_default_rate_limit
CELERY_DEFAULT_RATE_LIMIT task_default_routing_key CELERY_DEFAULT_ROUTING_KEY
task_eager_propagates CELERY_EAGER_PROPAGATES CELERY_EAGER_PROPAGATES_EXCEPTIONS
task_ignore_result CELERY_IGNORE_RESULT task_inherit_parent_priority
CELERY_INHERIT_PARENT_PRIORITY task_protocol CELERY_TASK_PROTOCOL task_publish_retry
CELERY_PUBLISH_RETRY CELERY_TASK_PUBLISH_RETRY task_publish_retry_policy
CELERY_PUBLISH_RETRY_POLICY CELERY_TASK_PUBLISH_RETRY_POLICY task_queue_max_priority
CELERY_QUEUE_MAX_PRIORITY task_queues CELERY_QUEUES task_reject_on_worker_lost
CELERY_REJECT_ON_WORKER_LOST CELERY_TASK_REJECT_ON_WORKER_LOST task_remote_tracebacks
CELERY_REMOTE_TRACEBACKS task_repr_maxlevels CELERY_REPR_MAXLEVELS task_retry_on_worker_lost
CELERY_RETRY_ON_WORKER_LOST task_routes CELERY_ROUTES task_send_sent_event
CELERY_SEND_SENT_EVENT CELERY_SEND_TASK_SENT_EVENT task_serializer CELERY_TASK_SERIALIZER
task_soft_time_limit CELERYD_SOFT_TIME_LIMIT CELERYD_TASK_SOFT_TIME_LIMIT
task_store_eager_result CELERY_STORE_EAGER_RESULT task_store_errors_even_if_ignored
CELERY_STORE_ERRORS_EVEN_IF_IGNORED task_time_limit CELERYD_TASK_TIME_LIMIT CELERYD_TIME_LIMIT
task_track_started CELERY_TASK_TRACK_STARTED CELERY_TRACK_STARTED timezone CELERY_TIMEZONE
worker_agent CELERYD_AGENT worker_autoscaler CELERYD_AUTOSCALER
worker_cancel_long_running_tasks_on_connection_loss
CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS worker_concurrency CELERYD_CONCURRENCY
worker_consumer CELERYD_CONSUMER worker_deduplicate_successful_tasks
CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS worker_detect_quorum_queues CELERYD_DETECT_QUORUM_QUEUES
worker_direct CELERY_WORKER_DIRECT worker_disable_prefetch CELERYD_DISABLE_PREFETCH
worker_disable_rate_limits CELERY_DISABLE_RATE_LIMITS worker_enable_prefetch_count_reduction
CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION worker_enable_remote_control
CELERY_ENABLE_REMOTE_CONTROL worker_enable_soft_shutdown_on_idle
CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE worker_eta_task_limit CELERYD_ETA_TASK_LIMIT
worker_hijack_root_logger CELERYD_HIJACK_ROOT_LOGGER worker_log_color CELERYD_LOG_COLOR
worker_log_datefmt CELERYD_LOG_DATEFMT worker_log_format CELERYD_LOG_FORMAT
CELERY_WORKER_LOG_FORMAT worker_lost_wait CELERYD_WORKER_LOST_WAIT worker_max_memory_per_child
CELERYD_MAX_MEMORY_PER_CHILD worker_max_tasks_per_child CELERYD_MAX_TASKS_PER_CHILD worker_pool
CELERYD_POOL worker_pool_putlocks CELERYD_POOL_PUTLOCKS worker_pool_restarts
CELERYD_POOL_RESTARTS worker_pool_start_method CELERYD_POOL_START_METHOD
worker_prefetch_multiplier CELERYD_PREFETCH_MULTIPLIER worker_proc_alive_timeout
CELERYD_PROC_ALIVE_TIMEOUT worker_redirect_stdouts CELERYD_REDIRECT_STDOUTS
CELERY_REDIRECT_STDOUTS worker_redirect_stdouts_level CELERYD_REDIRECT_STDOUTS_LEVEL
CELERY_REDIRECT_STDOUTS_LEVEL worker_send_task_events CELERY_SEND_EVENTS
worker_soft_shutdown_timeout CELERYD_SOFT_SHUTDOWN_TIMEOUT worker_state_db CELERYD_STATE_DB
worker_task_log_datefmt CELERYD_TASK_LOG_DATEFMT worker_task_log_format
CELERYD_TASK_LOG_FORMAT CELERY_WORKER_TASK_LOG_FORMAT worker_timer CELERYD_TIMER
worker_timer_precision CELERYD_TIMER_PRECISION
"""

#: Celery's old setting names -> its new ones.
CELERY_OLD_NAMES: Final[Mapping[str, str]] = types.MappingProxyType(_parse_table(_CELERY_TABLE))
#: Every setting name Celery 5 knows.
CELERY_NEW_NAMES: Final = frozenset(CELERY_OLD_NAMES.values())
#: Removed in Celery 4.0 (docs/history/whatsnew-4.0.rst): accepted, with a notice.
_REMOVED_IN_CELERY_4: Final = frozenset({
    "CELERYD_LOG_LEVEL", "CELERYD_LOG_FILE", "CELERYBEAT_LOG_LEVEL", "CELERYBEAT_LOG_FILE",
    "CELERYMON_LOG_LEVEL", "CELERYMON_LOG_FILE", "CELERYMON_LOG_FORMAT",
    "CELERY_CHORD_PROPAGATES",
})  # fmt: skip

_FIELDS: Final = {f.name: f for f in dataclasses.fields(Settings)}
_MISSING: Final = object()


def _default(name: str) -> Any:
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


# -- notices ---------------------------------------------------------------------------------
_PREFETCH = (
    "no effect: a worker fetches at most as many messages as it has free concurrency slots, "
    "so prefetch is effectively 1 per slot and a busy worker leaves messages to idle ones"
)
_NO_EVENTS = (
    "events live in one capped Redis stream (events_max_len) read by `aioqueue events` and "
    "`aioqueue dashboard`; switch them on with worker_send_task_events / `aioqueue worker -E`"
)
_AMQP = (
    "AMQP exchanges, routing keys and queue types do not exist on Redis streams: a task goes "
    "to its queue (task_routes, queue=), at the priority its route gives (0-9, 0 runs first), "
    "and queues are created on first use"
)
_NO_POOL = (
    "no process pool: one event loop per process runs async tasks, sync tasks run in threads; "
    "`aioqueue worker --processes N` runs N loops under a supervisor that restarts crashed ones"
)
_LOGGING = (
    "`aioqueue worker -l LEVEL` sets up logging; an embedded worker logs through the "
    "`aioqueue` loggers, configured like any other"
)
_BEAT_STATE = (
    "beat keeps its state in Redis (a leader lease, one claim per tick): no schedule file, no "
    "scheduler class; run beat on any number of workers (--beat), one leads"
)
_RESULTS_HERE = (
    "results live in Redis next to the broker's queues (one key per task, expiring after "
    "result_expires); no other result backend exists"
)
_CONNECTION = (
    "producers and workers retry an unreachable Redis for broker_connection_timeout seconds "
    "(a running worker keeps retrying with back-off)"
)
_NO_EAGER = (
    "there is no eager mode: in tests use broker='memory://' and run tasks with "
    "`async with app.worker(): ...`"
)
_REDIS_OPTIONS = (
    "connection options go in broker_url's query string (socket_timeout, "
    "socket_connect_timeout, ssl_cert_reqs, ssl_ca_certs, client_name...)"
)

#: Celery's name -> what to say when it is set (for a name with a home in Settings, only
#: when its value is not the harmless one in _KEPT_WITH_NOTICE).
_NOTICES: Final[dict[str, str]] = {
    "task_acks_late": (
        "always on in aioqueue: a task is acknowledged only with its result, so a task whose "
        "worker dies is run again"
    ),
    "task_acks_on_failure_or_timeout": (
        "a task that fails or times out is acknowledged with its FAILURE result; use "
        "autoretry_for or self.retry() to run it again"
    ),
    "task_reject_on_worker_lost": (
        "always so: a message whose worker died is delivered again after visibility_timeout "
        "(at most max_deliveries times, then dead-lettered)"
    ),
    "worker_prefetch_multiplier": _PREFETCH,
    "worker_disable_prefetch": _PREFETCH,
    "worker_enable_prefetch_count_reduction": _PREFETCH,
    "worker_eta_task_limit": (
        "delayed tasks (countdown, eta, retries) wait in Redis, not in worker memory"
    ),
    "accept_content": (
        "checked against task_serializer: messages carry no content type, every worker decodes "
        "with the app's one task_serializer"
    ),
    "enable_utc": (
        "naive datetimes (eta, expires) are read as UTC either way, as Celery 4+ reads them; "
        "crontabs follow `timezone`"
    ),
    "worker_pool": "asyncio; sync tasks run in threads (" + _NO_POOL + ")",
    "result_extended": (
        "a result always records the task name, the worker and the retries; arguments are not "
        "stored"
    ),
    "task_soft_time_limit": (
        "stored in app.conf.task_soft_time_limit but not enforced: task_time_limit cancels the "
        "coroutine, and the task can clean up in `except asyncio.CancelledError` or `finally`"
    ),
    "broker_connection_retry": _CONNECTION,
    "broker_connection_max_retries": _CONNECTION,
    "task_publish_retry": _CONNECTION.replace("producers and workers", "a producer"),
    "task_publish_retry_policy": _CONNECTION.replace("producers and workers", "a producer"),
    "result_compression": "results are stored uncompressed; task_compression compresses tasks",
    "result_accept_content": "results are decoded with task_serializer",
    "task_eager_propagates": _NO_EAGER,
    "task_store_eager_result": _NO_EAGER,
    "task_protocol": (
        "aioqueue has its own message format: Celery workers cannot run aioqueue's messages "
        "nor the reverse, so move a queue's producers and workers together"
    ),
    "task_remote_tracebacks": "a failed task's traceback is always kept in its result",
    "task_store_errors_even_if_ignored": (
        "a task with ignore_result stores no result, errors included (failures are logged)"
    ),
    "task_allow_error_cb_on_chord_header": "no canvas (chords, groups, callbacks) yet",
    "task_repr_maxlevels": "no effect",
    "worker_direct": "no per-worker queues: route to a queue that only one worker consumes",
    "worker_enable_remote_control": (
        "remote control is revoke and shutdown only, always on, through Redis pub/sub"
    ),
    "worker_state_db": "revocations are kept in Redis (for result_expires), not in a file",
    "worker_soft_shutdown_timeout": (
        "on SIGTERM a worker stops fetching, gives running tasks shutdown_timeout seconds, then "
        "hands the rest back to the queue at once: set shutdown_timeout"
    ),
    "worker_cancel_long_running_tasks_on_connection_loss": (
        "tasks keep running through a Redis outage and their results are stored once it is back"
    ),
    "worker_deduplicate_successful_tasks": (
        "delivery is at-least-once: a task may run again after a worker crash, so make tasks "
        "idempotent (a worker never starts a message it is running itself)"
    ),
    "beat_cron_starting_deadline": (
        "missed ticks fire once, stamped with the latest missed tick, however long ago"
    ),
    "broker_read_url": "one URL: aioqueue reads and writes through broker_url",
    "broker_write_url": "one URL: aioqueue reads and writes through broker_url",
    "broker_transport": "the transport is broker_url's scheme: redis://, rediss:// or memory://",
    "broker_use_ssl": "TLS comes from a rediss:// broker_url; " + _REDIS_OPTIONS,
    "security_key": (
        "messages are not signed: anyone who can write to your Redis can enqueue tasks, so "
        "protect Redis itself (ACLs, TLS, a private network)"
    ),
}
_NOTICES["task_acks_on_failure"] = _NOTICES["task_acks_on_timeout"] = _NOTICES[
    "task_acks_on_failure_or_timeout"]
_NOTICES["task_retry_on_worker_lost"] = _NOTICES["task_reject_on_worker_lost"]
_NOTICES["worker_enable_soft_shutdown_on_idle"] = _NOTICES["worker_soft_shutdown_timeout"]

#: Notices for whole families of Celery settings, by name prefix.
_FAMILY_NOTICES: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("event_",), _NO_EVENTS),
    (("control_",), _NOTICES["worker_enable_remote_control"]),
    (("security_",), _NOTICES["security_key"]),
    (("beat_",), _BEAT_STATE),
    (("redis_",), "results live on the broker: " + _REDIS_OPTIONS),
    (("result_",), _RESULTS_HERE),
    (("database_", "cache_", "cassandra_", "s3_", "azureblockblob_", "gcs_", "couchbase_",
      "arangodb_", "mongodb_", "cosmosdbsql_", "elasticsearch_"), _RESULTS_HERE),
    (("broker_",), "aioqueue manages its Redis connections itself (no pool, heartbeat or "
                   "failover settings); " + _REDIS_OPTIONS),
    (("task_create_missing_", "task_default_", "task_queue_", "task_inherit_",
      "worker_detect_quorum"), _AMQP),
    (("worker_log", "worker_task_log", "worker_redirect_", "worker_hijack_"), _LOGGING),
    (("worker_",), _NO_POOL),
)

#: Settings that, ignored, would silently change where or how tasks run: refused.
_REFUSED: Final[dict[str, str]] = {
    "task_always_eager": _NO_EAGER,
    **{f"broker_{part}": "put it in broker_url: redis://[user:password@]host:port/db"
       for part in ("host", "port", "user", "password", "vhost")},
}

#: Per-task options a task_annotations entry can set (the rest get a notice).
_ANNOTATION_KEYS: Final = frozenset({
    "queue", "ignore_result", "track_started", "max_retries", "default_retry_delay",
    "autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "time_limit", "expires",
    "on_success", "on_failure", "on_retry", "after_return", "rate_limit", "priority",
    "max_concurrency", "concurrency_key", "unique_for", "unique_key", "debounce", "cooldown",
    "order_key",
})  # fmt: skip
#: apply_async options of Celery's that beat entries cannot pass on here.
_AMQP_OPTIONS: Final = frozenset({
    "priority", "routing_key", "exchange", "exchange_type", "delivery_mode", "mandatory",
    "immediate", "headers", "retry", "retry_policy", "serializer", "compression", "shadow",
    "link", "link_error",
})  # fmt: skip


def _family_notice(key: str) -> str:
    for prefixes, text in _FAMILY_NOTICES:
        if key.startswith(prefixes):
            return text
    return "no equivalent in aioqueue; ignored"


# -- translation -----------------------------------------------------------------------------
@dataclasses.dataclass
class _Translation:
    """What a configuration turns into: aioqueue settings, notices, and cross-checks."""

    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    notices: list[str] = dataclasses.field(default_factory=list)
    #: Celery values only needed by cross-setting checks (result_serializer...).
    seen: dict[str, Any] = dataclasses.field(default_factory=dict)

    def note(self, label: str, text: str) -> None:
        line = f"{label}: {text}"
        if line not in self.notices:
            self.notices.append(line)


def _label(source: str, key: str) -> str:
    return source if source == key else f"{source} ({key})"


def _result_expires(t: _Translation, value: Any, label: str) -> None:
    if value is None or (not isinstance(value, bool) and value == 0):
        t.note(label, "Celery's 'never expire' does not exist here: results (and revocations) "
                      "expire; kept result_expires at its default of one day")
        return
    t.settings["result_expires"] = value


def _task_routes(t: _Translation, value: Any, label: str) -> None:
    routes, notices = normalise_routes(value)
    t.settings["task_routes"] = routes
    for text in notices:
        t.note(label, text)


def _task_queues(t: _Translation, value: Any, label: str) -> None:
    notices: list[str] = []
    # The names are what a worker consumes without -Q, as a Celery worker does.
    t.settings["task_queues"] = declared_queues(value, notices=notices)
    for text in notices:
        t.note(label, text)


def _task_annotations(t: _Translation, value: Any, label: str) -> None:
    maps = list(value) if isinstance(value, list | tuple) else [value]
    cleaned: list[dict[str, dict[str, Any]]] = []
    for annotation in maps:
        if not isinstance(annotation, Mapping):
            raise ConfigurationError(
                f"{label}: only dicts of task name -> options are supported, not {annotation!r} "
                "(annotation classes and import paths are not)"
            )
        entry: dict[str, dict[str, Any]] = {}
        for name, options in annotation.items():
            if not isinstance(options, Mapping):
                raise ConfigurationError(f"{label}[{name!r}] must be a dict of task options")
            kept = {k: v for k, v in options.items() if k in _ANNOTATION_KEYS}
            dropped = sorted(set(options) - set(kept))
            if dropped:
                t.note(label, f"{', '.join(dropped)} for {name!r}: no such task option in "
                              "aioqueue; ignored")
            entry[str(name)] = kept
        cleaned.append(entry)
    t.settings["task_annotations"] = cleaned[0] if len(cleaned) == 1 else cleaned


def _celery_schedule(value: Any, where: str) -> Any:
    """A Celery schedule object as aioqueue's (duck-typed: Celery need not be installed)."""
    if hasattr(value, "_orig_minute") and hasattr(value, "_orig_month_of_year"):  # crontab
        from .schedules import crontab

        fields = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        try:
            return crontab(**{f: getattr(value, f"_orig_{f}") for f in fields})
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    if isinstance(getattr(value, "run_every", None), timedelta):  # celery.schedules.schedule
        return value.run_every
    if type(value).__name__ == "solar":
        raise ConfigurationError(f"{where}: solar schedules are not supported")
    return value


def _beat_schedule(t: _Translation, value: Any, label: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{label} must be a dict of name -> entry, not {value!r}")
    converted: dict[str, Any] = {}
    for name, spec in value.items():
        if not isinstance(spec, Mapping):
            converted[name] = spec  # beat reports it, naming the entry
            continue
        entry = dict(spec)
        if entry.pop("relative", False):
            t.note(label, f"{name!r}: 'relative' has no effect: intervals are anchored on the "
                          "Unix epoch, so every beat agrees on the ticks")
        if "schedule" in entry:
            entry["schedule"] = _celery_schedule(entry["schedule"], f"{label}[{name!r}]")
        options = entry.get("options")
        if isinstance(options, Mapping):
            dropped = sorted(set(options) & _AMQP_OPTIONS)
            if dropped:
                t.note(label, f"{name!r}: options {', '.join(dropped)} have no effect here")
                entry["options"] = {k: v for k, v in options.items() if k not in _AMQP_OPTIONS}
        converted[name] = entry
    t.settings["beat_schedule"] = converted


def _transport_options(t: _Translation, value: Any, label: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{label} must be a dict, not {value!r}")
    for key, option in value.items():
        if key == "visibility_timeout":
            t.settings["visibility_timeout"] = option
            if isinstance(option, int | float) and option > 300:
                t.note(label, f"visibility_timeout={option}: a dead worker's tasks wait this "
                              "long before another worker runs them; aioqueue keeps long and "
                              "delayed tasks claimed by heartbeat, so it need not exceed them")
        elif key == "global_keyprefix":
            t.settings["key_prefix"] = str(option).rstrip(":") or str(option)
        elif key in ("socket_timeout", "socket_connect_timeout", "socket_keepalive"):
            t.note(label, f"{key}: put it in broker_url's query string")
        elif key in ("master_name", "sentinel_kwargs"):
            t.note(label, f"{key}: Sentinel is one URL here, "
                          "broker_url = 'sentinel://:PASSWORD@h1:26379,h2:26379/MASTER_NAME/0"
                          "?sentinel_password=...'")
        else:
            t.note(label, f"{key}: no effect ({_family_notice('broker_')})")


def _imports(t: _Translation, value: Any, label: str) -> None:
    modules = [value] if isinstance(value, str) else list(value)
    merged = list(t.settings.get("imports", []))
    merged += [m for m in modules if m not in merged]
    t.settings["imports"] = merged  # a worker imports them at start-up (app.import_tasks)


def _copy(t: _Translation, value: Any, label: str, key: str) -> None:
    """A Celery name with a home of the same name; a notice unless the value is harmless."""
    if value is None and _default(key) is not None:
        return  # Celery's "unset" (its default is None: the CPU count, the local zone...)
    t.settings[key] = value
    if key in _NOTICES and value != _KEPT_WITH_NOTICE.get(key, _MISSING):
        t.note(label, _NOTICES[key])


_Handler = Callable[[_Translation, Any, str], None]
#: Celery names translated by more than a copy.
_HANDLERS: Final[dict[str, _Handler]] = {
    "result_expires": _result_expires,
    "task_routes": _task_routes,
    "task_queues": _task_queues,
    "task_annotations": _task_annotations,
    "beat_schedule": _beat_schedule,
    "broker_transport_options": _transport_options,
    "imports": _imports,
    "include": _imports,
}
#: Celery names with a home of the same name that also deserve a notice (unless harmless).
_KEPT_WITH_NOTICE: Final[dict[str, Any]] = {
    "worker_prefetch_multiplier": _MISSING,
    "accept_content": _MISSING,
    "enable_utc": True,
    "task_soft_time_limit": None,
}


def _translate(t: _Translation, key: str, source: str, value: Any) -> None:
    """Translate one setting, by its Celery new name or aioqueue name, into ``t``."""
    label = _label(source, key)
    if key in _REFUSED:
        if value:
            raise ConfigurationError(f"{label}={value!r} is not supported: {_REFUSED[key]}")
        return
    if key in _HANDLERS:
        if value is not None or key == "result_expires":  # None: Celery's "unset"
            _HANDLERS[key](t, value, label)
    elif key in ("result_serializer", "broker_use_ssl"):
        t.seen[key] = (label, value)  # judged with the others by _cross_checks
    elif key in _FIELDS:
        _copy(t, value, label, key)
    elif key in _NOTICES:
        t.note(label, _NOTICES[key])
    else:
        t.note(label, _family_notice(key))


def notices_for_field(name: str, value: Any) -> list[str]:
    """The notice for an aioqueue setting that is Celery's and has no effect, if any."""
    if name in _KEPT_WITH_NOTICE and name in _NOTICES and value is not None and (
            value != _KEPT_WITH_NOTICE[name]):
        return [f"{name}: {_NOTICES[name]}"]
    return []


def _resolve_name(name: str) -> str | None:
    """The Celery new name / aioqueue name ``name`` stands for, or None if unknown."""
    if name in _FIELDS or name in CELERY_NEW_NAMES:
        return name
    return CELERY_OLD_NAMES.get(name)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    import difflib  # only on a misspelling

    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.75)
    return f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""


def _unknown(name: str, candidates: Iterable[str], hint: str = "") -> str:
    return f"unknown setting {name!r}{_did_you_mean(name, candidates)}{hint}"


def _all_names() -> list[str]:
    return sorted({*_FIELDS, *CELERY_NEW_NAMES, *CELERY_OLD_NAMES})


def translate_setting(name: str, value: Any) -> tuple[dict[str, Any], list[str]]:
    """One setting by any of its names -> (aioqueue settings, notices), for ``conf.update``.

    Raises ``ConfigurationError`` for an unknown name, with a did-you-mean over aioqueue's
    and Celery's names.
    """
    if name in _REMOVED_IN_CELERY_4:
        return {}, [f"{name}: removed in Celery 4.0; no effect"]
    key = _resolve_name(name)
    if key is None:
        raise ConfigurationError(_unknown(name, _all_names()))
    t = _Translation()
    _translate(t, key, name, value)
    for label, seen in t.seen.values():  # alone, they cannot be checked against the rest
        if seen:
            t.note(label, "results use task_serializer: one serializer per app"
                   if key == "result_serializer" else _NOTICES["broker_use_ssl"])
    return t.settings, t.notices


# -- reading a configuration object ----------------------------------------------------------
def _import(path: str) -> Any:
    """``"pkg.module"``, ``"pkg.module:attr"`` or ``"pkg.module.attr"``, as Celery's loader."""
    cwd = os.getcwd()
    added = cwd not in sys.path  # Celery imports configuration modules from the cwd too
    if added:
        sys.path.insert(0, cwd)
    try:
        if ":" in path:
            module_name, _, attribute = path.partition(":")
            found: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
            return found
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            module_name, dot, attribute = path.rpartition(".")
            if not dot or exc.name != path:
                raise
            return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigImportError(f"cannot import configuration {path!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(cwd)


def _attributes(source: Any, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """Public names and values of a mapping, module, class or instance (Celery's view).

    Only names ``wanted`` are read: reading Django's ``SECRET_KEY`` can raise, for one.
    """
    if isinstance(source, Mapping):
        return {k: v for k, v in source.items()
                if isinstance(k, str) and not k.startswith("_") and wanted(k)}
    found: dict[str, Any] = {}
    for name in dir(source):
        if not name.startswith("_") and wanted(name):
            try:
                found[name] = getattr(source, name)
            except AttributeError:
                continue
    return found


def _wanted(namespace: str | None) -> Callable[[str], bool]:
    if not namespace:
        return lambda name: True  # every public name is a setting, or an error
    prefix = namespace.rstrip("_") + "_"
    return lambda name: (name.startswith(prefix) or name in _FIELDS or name in CELERY_NEW_NAMES
                         or name in CELERY_OLD_NAMES or name == "TIME_ZONE")


_CODE: Final = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
                types.MethodType)


def _match_case(text: str, prefix: str) -> str:
    # Celery's match_case (celery/utils/collections.py): the namespace's case wins.
    return text.upper() if prefix.isupper() else text.lower()


def _collect(
    raw: Mapping[str, Any], namespace: str | None
) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Pick each setting's value by Celery's priorities -> ({key: (source name, value)}, errors).

    Priority 0 beats 1 beats 2 beats 3; two different values at one priority are an error.
    """
    chosen: dict[str, tuple[int, str, Any]] = {}
    errors: list[str] = []

    def offer(key: str, source: str, value: Any, rank: int) -> None:
        if key == "timezone" and value is None:
            return  # Celery: first('timezone', 'TIME_ZONE') skips None
        current = chosen.get(key)
        if current is None or rank < current[0]:
            chosen[key] = (rank, source, value)
        elif rank == current[0] and current[2] != value:
            errors.append(f"{current[1]} and {source} both set {key}, differently: keep one")

    if namespace:
        prefix = namespace.rstrip("_") + "_"
        candidates = [_match_case(prefix + n, prefix) for n in sorted({*_FIELDS,
                                                                       *CELERY_NEW_NAMES})]
        for name, value in raw.items():
            if name.startswith(prefix):
                key = name[len(prefix):].lower()
                if (key in _FIELDS or key in CELERY_NEW_NAMES) and name == _match_case(
                        prefix + key, prefix):
                    offer(key, name, value, 0)
                elif name in CELERY_OLD_NAMES:  # CELERY_ACKS_LATE: Celery 5.7 reads it too
                    offer(CELERY_OLD_NAMES[name], name, value, 2)
                else:
                    errors.append(_unknown(name, candidates))
                continue
            elif name in _FIELDS or name in CELERY_NEW_NAMES:
                offer(name, name, value, 1)
            elif name in CELERY_OLD_NAMES:
                offer(CELERY_OLD_NAMES[name], name, value, 2)
            elif name == "TIME_ZONE":
                offer("timezone", name, value, 3)
            # Anything else belongs to the host (Django's DEBUG, INSTALLED_APPS...).
        return {k: (source, value) for k, (_, source, value) in chosen.items()}, errors

    every = _all_names()
    for name, value in raw.items():
        resolved = _resolve_name(name)
        if resolved is not None:
            offer(resolved, name, value, 0)
        elif name == "TIME_ZONE":
            offer("timezone", name, value, 3)
        elif name in _REMOVED_IN_CELERY_4:
            offer(name, name, value, 0)
        elif isinstance(value, _CODE):
            continue  # `import os`, `from celery.schedules import crontab`, helper functions
        else:
            rest = name[len("CELERY_"):].lower() if name.startswith("CELERY_") else ""
            if rest in _FIELDS or rest in CELERY_NEW_NAMES:
                hint = " (or read the configuration with namespace='CELERY')"
            elif not _did_you_mean(name, every):
                hint = " (a helper that is not a setting needs a leading underscore)"
            else:
                hint = ""
            errors.append(_unknown(name, every, hint))
    return {k: (source, value) for k, (_, source, value) in chosen.items()}, errors


def _local_zone() -> str | None:
    """The IANA name of this host's zone (what Celery uses with enable_utc=False), if known."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            candidates.append(target.split("/zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
            return name
    return None


def _cross_checks(t: _Translation, explicit: set[str]) -> None:
    """Rules that look at several settings at once. ``explicit``: keys the source set."""
    s = t.settings
    if "accept_content" in s and "task_serializer" not in explicit and s["accept_content"]:
        accepted = [_CONTENT_TYPES.get(c, c) for c in s["accept_content"]]
        if "msgpack" not in accepted:
            s["task_serializer"] = "json" if "json" in accepted else accepted[0]
            t.note("task_serializer", f"not set: using {s['task_serializer']!r} (Celery's "
                                      "default is 'json'), which accept_content allows")
    if "result_serializer" in t.seen:
        label, value = t.seen["result_serializer"]
        serializer = s.get("task_serializer", _default("task_serializer"))
        if value is not None and _CONTENT_TYPES.get(value, value) != serializer:
            t.note(label, f"results use task_serializer ({serializer!r}): one serializer per app")
    if "broker_use_ssl" in t.seen:
        label, value = t.seen["broker_use_ssl"]
        if value and not str(s.get("broker_url", "")).startswith("rediss://"):
            raise ConfigurationError(
                f"{label} is set but broker_url is not rediss://: TLS comes from a rediss:// "
                f"URL here ({_REDIS_OPTIONS})"
            )
        if value:
            t.note(label, _NOTICES["broker_use_ssl"])
    if "enable_utc" in explicit and s.get("enable_utc") is False and "timezone" not in s:
        zone = _local_zone()
        if zone is None:
            more = ("; with no timezone Celery would use this host's zone, which cannot be "
                    "determined: crontabs stay in UTC, set timezone")
        else:
            s["timezone"] = zone
            more = f"; with no timezone, crontabs follow this host's zone, {zone}, as in Celery"
        # One notice per setting: extend the one enable_utc already has.
        t.notices = [n + more if n.endswith(_NOTICES["enable_utc"]) else n for n in t.notices]


def settings_from_object(
    obj: Any, namespace: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Read a Celery-style configuration -> (aioqueue settings, human notices).

    ``obj`` is a dotted module path (``"proj.celeryconfig"``), ``"module:attr"``
    (``"django.conf:settings"``), a module, a class, any object, or a mapping. Raises
    ``ConfigImportError`` (a ``ConfigurationError`` and an ``ImportError``) when it cannot be
    imported, and ``ConfigurationError`` listing every unknown name (with did-you-means) or a
    setting that cannot be honoured.
    """
    source = _import(obj) if isinstance(obj, str) else obj
    chosen, errors = _collect(_attributes(source, _wanted(namespace)), namespace)
    if errors:
        raise ConfigurationError("; ".join(errors))
    t = _Translation()
    # imports before include, as Celery imports them.
    for key in sorted(chosen, key=lambda k: (k != "imports", k)):
        source_name, value = chosen[key]
        if key in _REMOVED_IN_CELERY_4:
            t.note(key, "removed in Celery 4.0; no effect")
            continue
        _translate(t, key, source_name, value)
    _cross_checks(t, explicit=set(chosen))
    return t.settings, t.notices


# -- task_routes -----------------------------------------------------------------------------
def normalise_routes(value: Any) -> tuple[Any, list[str]]:
    """Celery's ``task_routes`` forms -> (what ``conf.task_routes`` holds, notices).

    Every form is checked by building a :class:`~aioqueue.routing.Router` (a bad dict route
    raises ``ConfigurationError`` naming the task pattern and the value). What is kept:

    * None -> ``{}``; a dict of exact names -> queue names, with no priority -> a plain dict;
    * other dict forms (globs, regexes, a list of dicts or of ``(name, route)`` pairs, routes
      with a priority) -> a :class:`~aioqueue.routing.TaskRoutes`, a dict of the exact names
      whose ``get(name)`` answers with the patterns too;
    * a form with a function, an import path or a ``route_for_task`` object -> the value as
      given (its answers depend on each call's arguments: ``conf.router()`` asks it).
    """
    if value is None:
        return {}, []
    router = Router(value)
    if not router.static:
        return value, router.notices
    routes = TaskRoutes(router)
    # A plain dict says it all when it has no patterns and no priorities.
    plain = (isinstance(value, Mapping) and not isinstance(value, TaskRoutes)
             and len(routes) == len(value)
             and all(router.route(name) == Route(queue) for name, queue in routes.items()))
    return (dict(routes) if plain else routes), router.notices


# -- environment -----------------------------------------------------------------------------
_ENV_PREFIX: Final = "AIOQUEUE_"
#: AIOQUEUE_ variables that are not settings: aioqueue's own (``--processes`` children) and
#: the examples' and test suite's.
_ENV_RESERVED: Final = frozenset({
    "AIOQUEUE_SUPERVISED", "AIOQUEUE_BROKER",
    # The dashboard's own (`aioqueue dashboard --help`), read by the CLI, not settings.
    "AIOQUEUE_DASHBOARD_TOKEN", "AIOQUEUE_DASHBOARD_PASSWORD", "AIOQUEUE_DASHBOARD_BASIC_AUTH",
})
_ENV_RESERVED_PREFIXES: Final = ("AIOQUEUE_TEST_",)
#: Settings that take any Python value in code, as an environment variable spells them.
_ENV_TYPES: Final[dict[str, Any]] = {"task_routes": dict[str, Any]}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _kinds(hint: Any) -> set[Any]:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return {typing.get_origin(a) or a for a in args}


def _from_text(var: str, raw: str, hint: Any) -> Any:
    kinds = _kinds(hint)
    text = raw.strip()
    if type(None) in kinds and text.lower() in ("", "none", "null"):
        return None
    try:
        if bool in kinds:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError("expected true/false, 1/0, yes/no or on/off")
        if int in kinds:
            try:
                return int(text)
            except ValueError:
                raise ValueError("expected an integer") from None
        if float in kinds:
            try:
                return float(text)
            except ValueError:
                raise ValueError("expected a number") from None
        if dict in kinds or list in kinds:
            if list in kinds and not text.startswith(("[", "{")):
                return [part.strip() for part in text.split(",") if part.strip()]
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"expected JSON ({exc})") from None
            wanted = tuple(k for k in (dict, list) if k in kinds)
            if not isinstance(value, wanted):
                raise ValueError(f"expected JSON {' or '.join(k.__name__ for k in wanted)}")
            return value
    except ValueError as exc:
        raise ConfigurationError(f"environment variable {var}={raw!r}: {exc}") from None
    return raw


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``AIOQUEUE_<SETTING>`` variables -> settings, converted to each setting's type.

    ``AIOQUEUE_BROKER_URL=redis://...``, ``AIOQUEUE_WORKER_CONCURRENCY=8``: aioqueue's setting
    names only. Booleans take true/false, 1/0, yes/no, on/off; lists a JSON list or
    comma-separated words; dicts JSON; ``none`` clears an optional setting. A bad value or an
    unknown name raises ``ConfigurationError`` naming the variable. Not settings, and skipped:
    ``AIOQUEUE_SUPERVISED`` (set by ``--processes`` for its children), ``AIOQUEUE_BROKER``
    (the examples' own) and ``AIOQUEUE_TEST_*`` (the test suite's).
    """
    hints = {**typing.get_type_hints(Settings), **_ENV_TYPES}
    found: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for var, raw in environ.items():
        if (not var.startswith(_ENV_PREFIX) or var in _ENV_RESERVED
                or var.startswith(_ENV_RESERVED_PREFIXES)):
            continue
        name = var[len(_ENV_PREFIX):].lower()
        if name not in _FIELDS:
            hint = _did_you_mean(var, [_ENV_PREFIX + n.upper() for n in _FIELDS])
            raise ConfigurationError(
                f"unknown environment variable {var}{hint}: no aioqueue setting is called "
                f"{name!r}")
        found[name] = _from_text(var, raw, hints[name])
        origin[name] = var
    if found:
        try:
            Settings().update(**found)
        except ConfigurationError as exc:
            culprits = [origin[n] for n in found if _fails_alone(n, found[n])]
            names = ", ".join(culprits or origin.values())
            raise ConfigurationError(f"environment variable {names}: {exc}") from None
    return found


def _fails_alone(name: str, value: Any) -> bool:
    try:
        Settings().update(**{name: value})
    except ConfigurationError:
        return True
    return False
