"""Loading and writing processes as JSON, and the JSON Schema of the format."""

from orchestra.serialization._converter import (
    SCHEMA_VERSION,
    converter,
    process_from_dict,
    process_from_json,
    process_to_dict,
    process_to_json,
)
from orchestra.serialization._schema import json_schema

__all__ = [
    "SCHEMA_VERSION",
    "converter",
    "json_schema",
    "process_from_dict",
    "process_from_json",
    "process_to_dict",
    "process_to_json",
]
