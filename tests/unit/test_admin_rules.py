"""The reference's admin rules: job filters, the mark-failed transition, the task query's
result limit, and the masking of settings (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from fractal_grpc.admin import jobs, settings_view, tasks

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
NAIVE = datetime(2026, 1, 1, 12)
PLUS2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("flt", "bad"),
    [
        (jobs.JobFilter(), set()),
        (jobs.JobFilter(status="failed", project_id=3), set()),
        (jobs.JobFilter(status="running"), {"status"}),
        (jobs.JobFilter(start_min=T0, start_max=T0), set()),
        (jobs.JobFilter(start_min=T0 + timedelta(seconds=1), start_max=T0), {"start_time_min"}),
        (jobs.JobFilter(end_min=T0, end_max=T0 - timedelta(days=1)), {"end_time_min"}),
        # 12:00+02:00 is 10:00 UTC: before 11:00 UTC, whatever the wall clocks say
        (
            jobs.JobFilter(
                start_min=datetime(2026, 1, 1, 12, tzinfo=PLUS2), start_max=T0 - timedelta(hours=1)
            ),
            set(),
        ),
        (jobs.JobFilter(start_min=NAIVE), {"start_time_min"}),
        (jobs.JobFilter(end_max=NAIVE), {"end_time_max"}),
    ],
)
def test_job_filter_violations(flt: jobs.JobFilter, bad: set[str]) -> None:
    assert {field for field, _ in jobs.job_filter_violations(flt)} == bad


def test_job_filter_fingerprint_tells_filters_apart() -> None:
    assert jobs.JobFilter(project_id=1).fingerprint() != jobs.JobFilter(dataset_id=1).fingerprint()
    assert jobs.JobFilter(start_min=T0).fingerprint() != jobs.JobFilter(end_min=T0).fingerprint()


@pytest.mark.parametrize(
    ("status", "allowed"), [("submitted", True), ("done", False), ("failed", False)]
)
def test_only_a_submitted_job_can_be_marked_failed(status: str, allowed: bool) -> None:
    refusal = jobs.mark_failed_refusal(7, status)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal.reason == "JOB_ALREADY_ENDED"


def test_mark_failed_log_keeps_what_was_there() -> None:
    assert jobs.mark_failed_log(None, T0).startswith("Job marked as failed")
    kept = jobs.mark_failed_log("step 1\n", T0)
    assert kept.startswith("step 1\nJob marked as failed") and T0.isoformat() in kept


@pytest.mark.parametrize(("requested", "limit"), [(0, 25), (1, 1), (500, 500)])
def test_result_limit(requested: int, limit: int) -> None:
    assert tasks.result_limit(requested) == limit


@pytest.mark.parametrize(
    ("count", "limit", "refused"), [(0, 25, False), (25, 25, False), (26, 25, True)]
)
def test_too_many_results(count: int, limit: int, refused: bool) -> None:
    refusal = tasks.too_many_results(count, limit)
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal.metadata["count"] == str(count)


@pytest.mark.parametrize(("kind", "owned"), [(None, None), ("common", False), ("users", True)])
def test_kind_owner_filter(kind: str | None, owned: bool | None) -> None:
    assert tasks.kind_owner_filter(kind) is owned


M = settings_view.MASK


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("FRACTAL_API_ADDRESS", "127.0.0.1:1", "127.0.0.1:1"),
        ("FRACTAL_DEFAULT_ADMIN_PASSWORD", "1234", M),
        ("FRACTAL_PAGE_TOKEN_SECRET", "s" * 20, M),
        ("FRACTAL_JWT_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----", M),
        ("FRACTAL_SOME_PWD", "x", M),
        ("FRACTAL_SOME_TOKEN", "x", M),
        ("JWT_SECRET_KEY", "x", M),  # not a FRACTAL setting: hidden, as the reference
        ("FRACTAL_JWT_PRIVATE_KEY", None, ""),  # unset: shown as unset
        ("FRACTAL_JWT_EXPIRE_SECONDS", 3600, "3600"),
        ("FRACTAL_SOME_FLAG", True, "true"),
        (
            "FRACTAL_DATABASE_URL",
            "postgresql+asyncpg://fractal:hunter2@db:5432/fractal",
            "postgresql+asyncpg://fractal:***@db:5432/fractal",
        ),
        (
            "FRACTAL_DATABASE_URL",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/fractal",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/fractal",
        ),
    ],
)
def test_masked_settings(name: str, value: object, shown: str) -> None:
    assert settings_view.masked_settings({name: value}) == {name: shown}
