"""Image-list rules shared by the services: URL normalization, filters (Python and SQL),
task outputs and the image-list changes a task output makes."""

from fractal_grpc.images.changes import (
    ImageChanges,
    ImageRecord,
    ImageRuleError,
    plan_image_changes,
    update_dataset_filters,
)
from fractal_grpc.images.filters import (
    Filters,
    ImageDict,
    Scalar,
    filter_images,
    filters_equal,
    match_filter,
    merge_filters,
    scalar_equal,
    validate_keys,
)
from fractal_grpc.images.sql_filters import image_filter_clause
from fractal_grpc.images.task_output import (
    MAX_PARALLELIZATION_LIST_SIZE,
    FiltersModel,
    InitArgsModel,
    InitTaskOutput,
    SingleImageTaskOutput,
    TaskOutput,
    TaskOutputValidationError,
    check_unique_urls,
    deduplicate,
    merge_outputs,
    parse_init_task_output,
    parse_task_output,
)
from fractal_grpc.images.urls import normalize_url

__all__ = [
    "MAX_PARALLELIZATION_LIST_SIZE",
    "Filters",
    "FiltersModel",
    "ImageChanges",
    "ImageDict",
    "ImageRecord",
    "ImageRuleError",
    "InitArgsModel",
    "InitTaskOutput",
    "Scalar",
    "SingleImageTaskOutput",
    "TaskOutput",
    "TaskOutputValidationError",
    "check_unique_urls",
    "deduplicate",
    "filter_images",
    "filters_equal",
    "image_filter_clause",
    "match_filter",
    "merge_filters",
    "merge_outputs",
    "normalize_url",
    "parse_init_task_output",
    "parse_task_output",
    "plan_image_changes",
    "scalar_equal",
    "update_dataset_filters",
    "validate_keys",
]
