"""Image filters as a SQL condition on JSONB columns (PostgreSQL).

Same semantics as :mod:`fractal_grpc.images.filters` (read its docstring); here they come from
``jsonb`` containment, which compares JSON values type-strictly (``true`` is not ``1``, ``"1"``
is not ``1``) and numbers by numeric value (``1`` equals ``1.0``).

The condition only uses the ``@>`` operator on the columns themselves, so a GIN index with the
``jsonb_path_ops`` operator class on ``attributes`` and on ``types`` can serve it:

- all non-None attribute filters → one containment ``attributes @> {"k1": v1, "k2": v2}``;
- all ``True`` type filters → one containment ``types @> {"k": true, ...}``;
- each ``False`` type filter → ``NOT (types @> {"k": true})`` (a missing type counts as false);
- no effective filter → ``true``.

Values are always sent as bound JSONB parameters, never formatted into the SQL text.
"""

import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from fractal_grpc.images.filters import Scalar

__all__ = ["image_filter_clause"]


def _contains(column: sa.ColumnElement[Any], value: dict[str, Any]) -> sa.ColumnElement[bool]:
    parameter = sa.bindparam(None, value, type_=JSONB)
    return column.bool_op("@>")(parameter)


def image_filter_clause(
    attributes_col: sa.ColumnElement[Any],
    types_col: sa.ColumnElement[Any],
    attribute_filters: Mapping[str, Scalar | None],
    type_filters: Mapping[str, bool],
) -> sa.ColumnElement[bool]:
    """A boolean SQL condition selecting the images that match the filters."""
    wanted_attributes: dict[str, Scalar] = {}
    for key, value in attribute_filters.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            # JSON has no NaN/Infinity, so no stored image can hold such a value.
            return sa.false()
        wanted_attributes[key] = value

    conditions: list[sa.ColumnElement[bool]] = []
    if wanted_attributes:
        conditions.append(_contains(attributes_col, wanted_attributes))
    true_types = {key: True for key, wanted in type_filters.items() if wanted}
    if true_types:
        conditions.append(_contains(types_col, true_types))
    for key, wanted in type_filters.items():
        if not wanted:
            conditions.append(sa.not_(_contains(types_col, {key: True})))

    if not conditions:
        return sa.true()
    if len(conditions) == 1:
        return conditions[0]
    return sa.and_(*conditions)
