"""The runner's record of every SLURM job it submits (``runner.slurm_jobs``), so that no job is
lost and no task call is submitted twice across restarts and redelivered commands.

A job is recorded (``intend``, state ``submitting``, with its tag) *before* its sbatch, and its
SLURM id is stored (``submitted``) as soon as sbatch answers, before anything depending on it
happens. A restarted runner (``for_task``) finds the jobs of a task's calls again: those with an
id are watched again (or, once ``ended``, read back without asking SLURM); those still
``submitting`` (the runner died around sbatch) are looked up by their tag, the job's
``--comment``, before anything is submitted again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import transaction
from fractal_runner.models import SlurmJob, SlurmJobState

__all__ = ["SlurmJobRecord", "SlurmJobRecords", "job_tag"]


def job_tag(deployment: str, job_id: int, record_id: int, calls: Sequence[str]) -> str:
    """The ``--comment`` of a SLURM job: deployment, run (Fractal job), record and calls."""
    span = calls[0] if len(calls) == 1 else f"{calls[0]}..{calls[-1]}"
    return f"fractal:{deployment}:job{job_id}:rec{record_id}:calls={span}({len(calls)})"


@dataclass(frozen=True)
class SlurmJobRecord:
    id: int
    job_id: int
    subfolder: str
    slurm_prefix: str
    calls: tuple[str, ...]
    tag: str
    generation: int
    slurm_job_id: str | None
    state: str
    slurm_state: str | None
    created_epoch: float


def _record(row: SlurmJob) -> SlurmJobRecord:
    return SlurmJobRecord(
        id=row.id,
        job_id=row.job_id,
        subfolder=row.subfolder,
        slurm_prefix=row.slurm_prefix,
        calls=tuple(row.calls),
        tag=row.tag,
        generation=row.generation,
        slurm_job_id=row.slurm_job_id,
        state=row.state,
        slurm_state=row.slurm_state,
        created_epoch=row.created_at.timestamp(),
    )


class SlurmJobRecords:
    """The ``runner.slurm_jobs`` rows of one deployment (``deployment`` goes into every tag)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, deployment: str, cluster: str
    ) -> None:
        self.sessions = sessions
        self.deployment = deployment
        self.cluster = cluster

    def tag_prefix(self, job_id: int) -> str:
        """The start of the tag of every SLURM job of Fractal job ``job_id``."""
        return f"fractal:{self.deployment}:job{job_id}:"

    async def intend(
        self,
        *,
        job_id: int,
        subfolder: str,
        slurm_prefix: str,
        calls: Sequence[str],
        slurm_user: str,
        generation: int = 0,
    ) -> SlurmJobRecord:
        """Record a SLURM job about to be submitted; its tag names the new record."""
        async with transaction(self.sessions) as session:
            row = SlurmJob(
                job_id=job_id,
                subfolder=subfolder,
                slurm_prefix=slurm_prefix,
                calls=list(calls),
                tag=f"unset-{uuid.uuid4().hex}",  # replaced below, once the id is known
                generation=generation,
                cluster=self.cluster,
                slurm_user=slurm_user,
            )
            session.add(row)
            await session.flush()
            row.tag = job_tag(self.deployment, job_id, row.id, calls)
            await session.flush()
            await session.refresh(row)
            return _record(row)

    async def submitted(self, record_id: int, slurm_job_id: str) -> None:
        await self._set(record_id, slurm_job_id=slurm_job_id, state=SlurmJobState.SUBMITTED)

    async def ended(self, record_id: int, slurm_state: str) -> None:
        await self._set(record_id, state=SlurmJobState.ENDED, slurm_state=slurm_state)

    async def abandoned(self, record_id: int) -> None:
        await self._set(record_id, state=SlurmJobState.ABANDONED)

    async def for_task(self, job_id: int, subfolder: str) -> list[SlurmJobRecord]:
        """The records of a task's jobs that are not abandoned, oldest first."""
        async with self.sessions() as session:
            result = await session.execute(
                select(SlurmJob)
                .where(
                    SlurmJob.job_id == job_id,
                    SlurmJob.subfolder == subfolder,
                    SlurmJob.state != SlurmJobState.ABANDONED,
                )
                .order_by(SlurmJob.id)
            )
            return [_record(row) for row in result.scalars()]

    async def count(self, job_id: int, subfolder: str | None = None) -> int:
        """How many SLURM jobs of ``job_id`` (in ``subfolder``) were recorded, abandoned
        ones included."""
        query = select(func.count()).select_from(SlurmJob).where(SlurmJob.job_id == job_id)
        if subfolder is not None:
            query = query.where(SlurmJob.subfolder == subfolder)
        async with self.sessions() as session:
            result = await session.execute(query)
            return int(result.scalar_one())

    async def _set(self, record_id: int, **values: object) -> None:
        async with transaction(self.sessions) as session:
            await session.execute(
                update(SlurmJob)
                .where(SlurmJob.id == record_id)
                .values(**values, updated_at=func.now())
            )
