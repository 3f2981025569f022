"""Model instances from rows read with plain SQL, as the ORM would build them.

The request paths that run on every task (the queue's services, token authentication) read
with plain SQL: the ORM's query building, and `raw()`'s matching of the cursor's columns to the
model on every query, cost several times what the statements themselves do (bench/request_cpu.py).
Select `columns(Model, alias)` and turn each row into an instance with `model_from_row`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


def columns(model: type[models.Model], alias: str) -> str:
    """The model's columns, in the order of its concrete fields, for `model_from_row`."""
    return ", ".join(f"{alias}.{field.column}" for field in model._meta.concrete_fields)


_CONVERTERS: dict[tuple[type[models.Model], str], list] = {}


def _row_converters(model: type[models.Model]) -> list:
    key = (model, connection.vendor)
    found = _CONVERTERS.get(key)
    if found is None:
        found = []
        for i, field in enumerate(model._meta.concrete_fields):
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if converters:
                found.append((i, col, converters))
        _CONVERTERS[key] = found
    return found


def model_from_row(model: type[M], row: Sequence, start: int = 0) -> M:
    """The instance whose `columns(model, …)` start at row[start], converted as the ORM would.

    The queue's hot reads build their objects with this rather than `raw()`, which matches the
    cursor's columns to the model's afresh on every query, at several times the cost.
    """
    values = list(row[start : start + len(model._meta.concrete_fields)])
    for i, col, converters in _row_converters(model):
        value = values[i]
        for converter in converters:
            value = converter(value, col, connection)
        values[i] = value
    return model.from_db(connection.alias, None, values)


def fetch_rows(sql: str, params, *, prepare: bool = True) -> list[tuple]:
    """The rows of one statement, prepared on PostgreSQL (config.postgresql: parsed and planned
    once per connection), so its SQL text must not vary with the values: they go in `params`.

    A prepared statement's plan is chosen once for all values (PostgreSQL's generic plan, after
    five executions): right for a lookup or write by key, not for a scan whose best plan depends
    on where it starts. The queue's scans pass prepare=False, and are planned with their values
    on every execution.
    """
    prepared = getattr(connection, "prepared_cursor", None) if prepare else None
    with (prepared or connection.cursor)() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def json_param(model: type[models.Model], field: str, value):
    """`value` as a parameter for the model's JSON column (its field's own adaptation)."""
    return model._meta.get_field(field).get_db_prep_save(value, connection)
