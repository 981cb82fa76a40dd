"""JSON Schemas of the wire types, generated from the models (bundle_spec/schemas/).

The models are the source of truth; the schemas are for readers in other languages. A test
checks that the checked-in files equal what `json_schemas` produces.
"""

from __future__ import annotations

import json

import msgspec
from gapferry.common.bundle.model import LogLine, ResultManifest, TransferManifest

__all__ = ["json_schemas"]

_TYPES: dict[str, type] = {
    "transfer-manifest.v1.schema.json": TransferManifest,
    "result-manifest.v1.schema.json": ResultManifest,
    "log-line.v1.schema.json": LogLine,
}


def json_schemas() -> dict[str, bytes]:
    """File name -> schema bytes (JSON, sorted keys, 2-space indent, final newline)."""
    out = {}
    for name, type_ in _TYPES.items():
        schema = msgspec.json.schema(type_)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://gapferry.invalid/bundle_spec/schemas/{name}",
            **schema,
        }
        out[name] = (json.dumps(schema, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return out
