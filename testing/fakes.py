"""Test doubles a service's own tests use: recording, fake time, fault injection.

These are real implementations of the ports, not mocks: ``RecordingLogger`` passes
the logger contract suite, ``FakeClock`` drives the in-memory adapters
deterministically, and the ``Flaky*`` wrappers inject failures or latency into any
implementation of a port, real adapters included.
"""

from ._clock import FakeClock
from ._flaky_db import DatabaseCall, FlakyDatabase
from ._flaky_events import FlakyPublisher, FlakySubscriber, PublishCall
from ._recording_logger import LogRecord, RecordingLogger

__all__ = [
    "FakeClock",
    "RecordingLogger",
    "LogRecord",
    "FlakyDatabase",
    "DatabaseCall",
    "FlakyPublisher",
    "FlakySubscriber",
    "PublishCall",
]
