"""Hypothesis strategies for services' own tests: config maps, events, errors, rows.

Import from here (``from testing.strategies import config_maps``); each area keeps
its strategies in a private module re-exported below.
"""

from ._strategies_config import (
    bool_texts,
    config_maps,
    config_texts,
    float_texts,
    int_texts,
    key_spellings,
    non_int_texts,
    secret_texts,
    setting_names,
)
from ._strategies_db import (
    sql_bigints,
    sql_floats,
    sql_identifiers,
    sql_integers,
    sql_rows,
    sql_scalars,
    sql_text,
)
from ._strategies_events import (
    event_data,
    event_texts,
    event_timestamps,
    events,
    json_values,
    subject_filters,
    subjects,
    wire_headers,
)

__all__ = [
    "event_data",
    "event_texts",
    "event_timestamps",
    "events",
    "json_values",
    "subject_filters",
    "subjects",
    "wire_headers",
    "bool_texts",
    "config_maps",
    "config_texts",
    "float_texts",
    "int_texts",
    "key_spellings",
    "non_int_texts",
    "secret_texts",
    "setting_names",
    "sql_bigints",
    "sql_floats",
    "sql_identifiers",
    "sql_integers",
    "sql_rows",
    "sql_scalars",
    "sql_text",
]
