"""NATS JetStream adapter: :class:`NatsConnection`, :class:`NatsPublisher`, :class:`NatsSubscriber`.

One connection serves both sides::

    connection = NatsConnection.from_config(config, logger=logger)
    publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
    await connection.connect()        # connects (with retries) and ensures the streams
    ...
    await connection.close()          # stops subscriptions, drains, closes

Streams (ensured by ``connect``): ``EVENTS_STREAM`` captures ``<EVENTS_PREFIX>.>``
(port subjects are relative: ``order.placed`` travels as ``events.order.placed``),
with ``EVENTS_REPLICAS`` replicas, file storage, a duplicate window of
``EVENTS_DUPLICATE_WINDOW_S`` and the limits ``EVENTS_MAX_AGE_S`` /
``EVENTS_MAX_BYTES``; its dead-letter stream ``<EVENTS_STREAM>_DEAD`` captures
``<EVENTS_DEAD_PREFIX>.>`` (``dead.<EVENTS_PREFIX>.>`` by default, so services with
streams of their own never overlap) and keeps dead letters ``EVENTS_DEAD_MAX_AGE_S``
(forever by default). Many services may share a server (ADR 0023): a missing stream
is created with these settings (two services creating it at once both succeed); a
stream that exists is never modified (not its subjects, window, limits or replicas);
one that does not capture our subjects, or whose creation overlaps another stream's
subjects, is a ``ConfigurationError`` at connect naming the stream. A consumer's name
on the server is ``NatsSettings.consumer_name(durable)``: ``<SERVICE_NAME>-<durable>``.

Publishing: the event travels as a CloudEvent (:mod:`adapters.event_codec`) with
``Nats-Msg-Id`` = ``event.id``. ``publish`` returns after the PubAck; timeouts,
"no responders" and other transient failures are retried ``EVENTS_PUBLISH_RETRIES``
times with exponential backoff under the same id (so a retry never duplicates),
then ``ServiceUnavailable`` (code ``BROKER_UNAVAILABLE``). ``publish_many``
pipelines: every message is sent before any ack is awaited, then only the ones
without an ack are retried, still under their ids.

Consuming (ADRs 0015, 0024): a durable pull consumer per ``durable``, fed by a
continuous pull that keeps requested plus queued events within ``2 x concurrency``
(topped up as each is handed to one of ``concurrency`` workers). One policy
(:mod:`adapters._delivery_policy`, shared with the in-memory bus) decides: handler
returns -> ack; raises anything (or runs past ``handler_timeout``) -> the failed run is
recorded, then nak with the backoff delay; the ``max_deliver``-th failed run, a
:class:`~ports.events.Reject` or an undecodable payload -> a dead letter
(:mod:`adapters.nats_events.dead_letters`: the original payload and headers, control
headers left out, ``Dead-Letter-*`` headers added, trimmed to the server's max
payload) published to ``<EVENTS_DEAD_PREFIX>.<durable>.<subject>``, then the original
is terminated. Attempts count handler runs, never deliveries
(:mod:`adapters.nats_events.attempts`). Messages being handled or waiting locally are
kept alive with ``+WPI`` every ``ack_wait / 2``. A consumer the server lost is
re-created; a lost pull is detected by heartbeats and re-issued; a client the server
closed is replaced and subscriptions resume. Messages on the inbox that are not
JetStream deliveries are ignored and logged. The pull inbox is read on a direct lane
of the client (ADR 0022, :mod:`adapters.nats_events._internals`) when the installed
nats-py matches, else through nats-py's public API.

Settings keys (through :class:`ports.config.ConfigSource`; all optional but the URL):

================================  ========  ===============================================
``NATS_URL``                      required  one URL or a comma-separated list (cluster)
``EVENTS_STREAM``                 EVENTS    stream name (dead letters: ``<name>_DEAD``)
``EVENTS_PREFIX``                 events    subject prefix of the stream
``EVENTS_DEAD_PREFIX``            dead.<p>  dead-letter subject prefix (``dead.<EVENTS_PREFIX>``)
``EVENTS_REPLICAS``               1         stream replicas (3 on a 3-node cluster)
``EVENTS_STORAGE``                file      ``file`` or ``memory``
``EVENTS_DUPLICATE_WINDOW_S``     120       dedupe window of ``Nats-Msg-Id`` (<= the max ages)
``EVENTS_MAX_AGE_S``              604800    a new stream's max age (7 days; 0 = no limit)
``EVENTS_MAX_BYTES``              -1        a new stream's max bytes (-1 = no limit)
``EVENTS_DEAD_MAX_AGE_S``         0         a new dead-letter stream's max age (0 = never
                                            dropped)
``EVENTS_PUBLISH_RETRIES``        3         retries after the first attempt
``EVENTS_PUBLISH_TIMEOUT_S``      5         wait for one PubAck
``EVENTS_PUBLISH_BACKOFF_S``      0.1       first retry delay (doubles on each retry)
``EVENTS_PUBLISH_BACKOFF_MAX_S``  2         longest retry delay
``EVENTS_PUBLISH_WINDOW``         2000      publish_many: sends in flight at once
``EVENTS_API_TIMEOUT_S``          5         JetStream API calls (streams, consumers)
``EVENTS_PULL_EXPIRES_S``         5         life of one pull request (heartbeat: 1/5 of it)
``EVENTS_MAX_ACK_PENDING``        10000     consumer's max unacked messages
``NATS_CONNECT_RETRIES``          5         first-connect attempts
``NATS_CONNECT_TIMEOUT_S``        2         one connect attempt
``NATS_CONNECT_BACKOFF_S``        0.2       first connect retry delay (doubles)
``NATS_RECONNECT_WAIT_S``         0.5       between reconnect attempts (forever)
``SERVICE_NAME``                  hexinfra  the client's connection name; consumers are
                                            ``<SERVICE_NAME>-<durable>`` on the server
================================  ========  ===============================================

Every number is checked by :class:`NatsSettings` (ADR 0025): finite and in range
(timeouts > 0 and <= 3600 s, backoffs 0 to 60 s, ``NATS_RECONNECT_WAIT_S`` > 0 and <= 60,
``EVENTS_PULL_EXPIRES_S`` 0.5 to 3600, ``EVENTS_DUPLICATE_WINDOW_S`` > 0 and <= 604800,
ages 0 or 0.1 s to 100 years, ``EVENTS_REPLICAS`` 1 to 5, ``NATS_CONNECT_RETRIES`` 1 to
100, ``EVENTS_PUBLISH_RETRIES`` 0 to 100, ``EVENTS_PUBLISH_WINDOW`` 1 to 1000000,
``EVENTS_MAX_ACK_PENDING`` 1 to 10000000, ``EVENTS_MAX_BYTES`` -1 or 1 to 2**63-1); a
value outside is a ``ConfigurationError`` naming the key and the range, never the value.
"""

from __future__ import annotations

from adapters._extras import require_extra

require_extra("nats", "adapters.nats_events (NatsConnection)")

from adapters.nats_events.connection import NatsConnection
from adapters.nats_events.dead_letters import (
    H_DEAD_ATTEMPTS,
    H_DEAD_DURABLE,
    H_DEAD_ERROR,
    H_DEAD_MSG_ID,
    H_DEAD_REASON,
    H_DEAD_SUBJECT,
)
from adapters.nats_events.publisher import NatsPublisher
from adapters.nats_events.settings import NatsSettings
from adapters.nats_events.subscription import NatsSubscriber, NatsSubscription

__all__ = [
    "NatsSettings",
    "NatsConnection",
    "NatsPublisher",
    "NatsSubscriber",
    "NatsSubscription",
    "H_DEAD_SUBJECT",
    "H_DEAD_DURABLE",
    "H_DEAD_REASON",
    "H_DEAD_ATTEMPTS",
    "H_DEAD_ERROR",
    "H_DEAD_MSG_ID",
]
