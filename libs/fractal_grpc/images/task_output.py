"""What tasks return: validated models and the helpers the runner applies to them (§5.4).

- :class:`TaskOutput` is what a ``non_parallel``/``parallel``/compound-compute call may write to
  its ``--out-json`` file; :class:`InitTaskOutput` is what a compound task's init call writes.
- :func:`parse_task_output` / :func:`parse_init_task_output` turn the decoded JSON (or None for
  "no file") into models, raising :class:`TaskOutputValidationError` with a user-facing message.
- :func:`merge_outputs` combines the outputs of the parallel calls of one task.

All models forbid unknown keys. URLs are normalized with :func:`normalize_url`; dictionary keys
are stripped and must be non-empty and unique (:func:`validate_keys`).
"""

import math
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fractal_grpc.images.filters import (
    Filters,
    Scalar,
    filters_equal,
    validate_keys,
)
from fractal_grpc.images.urls import normalize_url

__all__ = [
    "MAX_PARALLELIZATION_LIST_SIZE",
    "FiltersModel",
    "InitArgsModel",
    "InitTaskOutput",
    "SingleImageTaskOutput",
    "TaskOutput",
    "TaskOutputValidationError",
    "check_unique_urls",
    "deduplicate",
    "merge_outputs",
    "parse_init_task_output",
    "parse_task_output",
]

MAX_PARALLELIZATION_LIST_SIZE = 20_000
"""Largest number of parallel calls one task may fan out to."""

_MAX_DATA_REPR = 2_000


def _storable(values: dict[str, Any], field: str) -> dict[str, Any]:
    """Attribute values JSON (and so PostgreSQL and google.protobuf.Value) can hold: no NaN or
    Infinity, no integer beyond a double's range."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field}[{key!r}]: {value!r} is not a finite number")
        if isinstance(value, int) and abs(value) > _LARGEST_DOUBLE:
            raise ValueError(f"{field}[{key!r}]: the integer is beyond a double's range")
    return values


_LARGEST_DOUBLE = int(sys.float_info.max)


class TaskOutputValidationError(ValueError):
    """A task wrote an output that does not match the expected schema."""


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersModel(_StrictModel):
    """Filters set by a task output: ``attributes`` (scalar or null) and ``types`` (bool)."""

    attributes: dict[str, Scalar | None] = Field(default_factory=dict)
    types: dict[str, bool] = Field(default_factory=dict)

    @field_validator("attributes", "types")
    @classmethod
    def _check_keys(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        field = f"filters.{info.field_name}"
        return _storable(validate_keys(value, field), field)

    def to_filters(self) -> Filters:
        """The equivalent :class:`Filters` value."""
        return Filters(attributes=dict(self.attributes), types=dict(self.types))


class SingleImageTaskOutput(_StrictModel):
    """One image created or edited by a task. An attribute set to null is removed."""

    zarr_url: str
    origin: str | None = None
    attributes: dict[str, Scalar | None] = Field(default_factory=dict)
    types: dict[str, bool] = Field(default_factory=dict)

    @field_validator("zarr_url")
    @classmethod
    def _normalize_zarr_url(cls, value: str) -> str:
        return normalize_url(value)

    @field_validator("origin")
    @classmethod
    def _normalize_origin(cls, value: str | None) -> str | None:
        return None if value is None else normalize_url(value)

    @field_validator("attributes", "types")
    @classmethod
    def _check_keys(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        field = str(info.field_name)
        return _storable(validate_keys(value, field), field)


class TaskOutput(_StrictModel):
    """The output of one task call (or the merged output of a task's parallel calls)."""

    image_list_updates: list[SingleImageTaskOutput] = Field(default_factory=list)
    image_list_removals: list[str] = Field(default_factory=list)
    filters: FiltersModel = Field(default_factory=FiltersModel)

    @field_validator("image_list_removals")
    @classmethod
    def _normalize_removals(cls, value: list[str]) -> list[str]:
        return [normalize_url(url) for url in value]


class InitArgsModel(_StrictModel):
    """One item of a compound task's parallelization list."""

    zarr_url: str
    init_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("zarr_url")
    @classmethod
    def _normalize_zarr_url(cls, value: str) -> str:
        return normalize_url(value)


class InitTaskOutput(_StrictModel):
    """The output of a compound task's init call."""

    parallelization_list: list[InitArgsModel] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


def _validation_error(exc: ValidationError, data: object) -> TaskOutputValidationError:
    shown = repr(data)
    if len(shown) > _MAX_DATA_REPR:
        shown = shown[:_MAX_DATA_REPR] + "…"
    return TaskOutputValidationError(
        f"Validation of task output failed.\nOriginal error: {exc}\nOriginal data: {shown}"
    )


def _parse(model: type[M], data: Mapping[str, Any] | None) -> M:
    if data is None:
        return model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data) from None


def parse_task_output(data: Mapping[str, Any] | None) -> TaskOutput:
    """Validate a task's output; None (no output file) or ``{}`` give an empty output."""
    return _parse(TaskOutput, data)


def parse_init_task_output(data: Mapping[str, Any] | None) -> InitTaskOutput:
    """Validate a compound init output; None or ``{}`` give an empty parallelization list."""
    return _parse(InitTaskOutput, data)


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON-like value, equal exactly when the values are equal
    under the module's scalar semantics (bool is distinct from numbers; 1 == 1.0)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", value)
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null",)
    if isinstance(value, Mapping):
        return ("obj", frozenset((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("arr", tuple(_freeze(item) for item in value))
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return ("other", value)


def deduplicate(items: Iterable[M]) -> list[M]:
    """The items without repetitions, keeping the first occurrence of each, in order.

    Two models are repetitions when their ``model_dump()`` are equal, with booleans never
    equal to numbers (``1`` and ``1.0`` are equal, as in the filter semantics).
    """
    seen: set[Hashable] = set()
    result: list[M] = []
    for item in items:
        key = _freeze(item.model_dump())
        if key not in seen:
            seen.add(key)
            result.append(item)
    return result


def merge_outputs(outputs: Sequence[TaskOutput]) -> TaskOutput:
    """Combine the outputs of a task's parallel calls.

    Updates and removals are concatenated in order and the updates deduplicated. Every output
    must carry the same ``filters`` (else TaskOutputValidationError: the task's outputs are
    invalid together, which the runner reports as a JOB ERROR like any invalid output; the
    reference raised a plain ValueError there, an UNKNOWN ERROR); the result carries them too.
    """
    if not outputs:
        return TaskOutput()
    filters = outputs[0].filters
    reference = filters.to_filters()
    updates: list[SingleImageTaskOutput] = []
    removals: list[str] = []
    for index, output in enumerate(outputs):
        if not filters_equal(output.filters.to_filters(), reference):
            raise TaskOutputValidationError(
                "Parallel task outputs set different filters: "
                f"output 0 has {filters.model_dump()}, "
                f"output {index} has {output.filters.model_dump()}"
            )
        updates.extend(output.image_list_updates)
        removals.extend(output.image_list_removals)
    return TaskOutput(
        image_list_updates=deduplicate(updates),
        image_list_removals=removals,
        filters=filters.model_copy(deep=True),
    )


def check_unique_urls(output: TaskOutput) -> None:
    """Raise ValueError unless every zarr_url appears once across updates and removals."""
    seen: set[str] = set()
    duplicates: dict[str, None] = {}  # ordered set
    urls = [image.zarr_url for image in output.image_list_updates]
    urls.extend(output.image_list_removals)
    for url in urls:
        if url in seen:
            duplicates[url] = None
        seen.add(url)
    if duplicates:
        listed = "\n".join(duplicates)
        raise ValueError(
            "The image-list updates and removals of the task output contain repeated "
            f"zarr_urls:\n{listed}"
        )
