"""One JSON schema per block class, computed once per process.

Prefect builds a block's whole JSON schema again for every field each time the block is
serialised with its secrets (`Block.save`, `dbbackup apply`): 70 ms for a PostgreSQL
server block, 400 ms for an S3 storage block, on every save. A class's schema cannot
change while the process runs, so it is computed once and each caller gets its own copy.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

_SCHEMAS: dict[tuple[object, ...], dict[str, Any]] = {}


class CachedSchema:
    """Mixin for a Block subclass (listed before `Block`): `model_json_schema` is computed
    once per class and arguments, and returned as a deep copy the caller may change."""

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool = True,
        ref_template: str = "#/definitions/{model}",
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: str = "validation",
    ) -> dict[str, Any]:
        key = (cls, by_alias, ref_template, schema_generator, mode)
        schema = _SCHEMAS.get(key)
        if schema is None:
            schema = super().model_json_schema(by_alias, ref_template, schema_generator, mode)  # type: ignore[misc]
            _SCHEMAS[key] = schema
        return copy.deepcopy(schema)
