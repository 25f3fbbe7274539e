"""The ``runner.runs`` rows, seen by one runner instance: records, claims and leases of runs.

Several runner replicas may share the table; a replica executes a run only while it holds the
run's lease (``fractal_runner.leases``). A claim is refused while another live replica holds
the run; an orphaned run (no owner, an expired lease, or an owner process of this host that is
gone) is claimed by the sweep.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, and_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fractal_grpc.db import transaction
from fractal_runner.leases import Instance, LeaseConfig
from fractal_runner.models import Run, RunStatus

__all__ = ["RunStore"]


class RunStore:
    """The ``runner.runs`` rows, seen by one runner instance (the owner of its leases)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        instance: Instance | None = None,
        lease: LeaseConfig | None = None,
    ) -> None:
        self.sessions = sessions
        self.instance = instance or Instance.current()
        self.lease = lease or LeaseConfig()

    @property
    def owner(self) -> str:
        return self.instance.owner

    def _leased(self) -> dict[str, Any]:
        """The columns of a claim (or renewal) by this instance."""
        return {
            "owner": self.owner,
            "owner_process": self.instance.process,
            "lease_expires_at": func.now()
            + literal(timedelta(seconds=self.lease.lease_seconds), Interval()),
        }

    def _claimable(self) -> ColumnElement[bool]:
        """Not finished, and free, already ours, or with an expired lease."""
        return and_(
            Run.status != RunStatus.FINISHED,
            or_(
                Run.owner.is_(None),
                Run.owner == self.owner,
                Run.lease_expires_at.is_(None),
                Run.lease_expires_at < func.now(),
            ),
        )

    async def claim(self, job_id: int, *, create: bool = False) -> bool:
        """Take the run's lease (recording the run first when ``create``).

        False when the run is finished, held by another live instance, or (without
        ``create``) unknown.
        """
        async with transaction(self.sessions) as session:
            stmt: Any
            if create:
                stmt = (
                    insert(Run)
                    .values(job_id=job_id, **self._leased())
                    .on_conflict_do_update(
                        index_elements=[Run.job_id],
                        set_={**self._leased(), "updated_at": func.now()},
                        where=self._claimable(),
                    )
                )
            else:
                stmt = (
                    update(Run)
                    .where(Run.job_id == job_id, self._claimable())
                    .values(**self._leased(), updated_at=func.now())
                )
            result = await session.execute(stmt.returning(Run.job_id))
            return result.scalar_one_or_none() is not None

    async def start_attempt(self, job_id: int) -> int | None:
        """Mark the run running under this instance's lease (recording it if needed);
        returns its number of attempts, or None when the run is finished or another live
        instance holds it."""
        async with transaction(self.sessions) as session:
            stmt = (
                insert(Run)
                .values(job_id=job_id, status=RunStatus.RUNNING, attempts=1, **self._leased())
                .on_conflict_do_update(
                    index_elements=[Run.job_id],
                    set_={
                        "status": RunStatus.RUNNING,
                        "attempts": Run.attempts + 1,
                        "updated_at": func.now(),
                        **self._leased(),
                    },
                    where=self._claimable(),
                )
                .returning(Run.attempts)
            )
            attempts: int | None = (await session.execute(stmt)).scalar_one_or_none()
            return attempts

    async def renew(self, job_ids: Collection[int]) -> tuple[set[int], set[int]]:
        """Extend the leases of these runs; returns (renewed, lost): a run is lost when it is
        not finished and another live instance holds it now."""
        if not job_ids:
            return set(), set()
        async with transaction(self.sessions) as session:
            result = await session.execute(
                update(Run)
                .where(Run.job_id.in_(job_ids), self._claimable())
                .values(**self._leased())
                .returning(Run.job_id)
            )
            renewed = set(result.scalars())
            missing = set(job_ids) - renewed
            lost: set[int] = set()
            if missing:
                result = await session.execute(
                    select(Run.job_id).where(
                        Run.job_id.in_(missing), Run.status != RunStatus.FINISHED
                    )
                )
                lost = set(result.scalars())
            return renewed, lost

    async def release(self) -> list[int]:
        """Give up every lease of this instance on unfinished runs (graceful shutdown), so
        another instance can claim them at once; returns their job ids."""
        async with transaction(self.sessions) as session:
            result = await session.execute(
                update(Run)
                .where(Run.owner == self.owner, Run.status != RunStatus.FINISHED)
                .values(
                    owner=None, owner_process=None, lease_expires_at=None, updated_at=func.now()
                )
                .returning(Run.job_id)
            )
            return sorted(result.scalars())

    async def claim_orphans(self) -> tuple[list[int], float | None]:
        """Claim every unfinished run that has no owner, whose lease expired, or whose owner
        is a process of this host that no longer exists.

        Returns the claimed job ids (oldest run first) and the seconds until the earliest
        lease held by another instance expires (None when there is none).
        """
        async with transaction(self.sessions) as session:
            orphaned = [
                Run.owner.is_(None),
                Run.lease_expires_at.is_(None),
                Run.lease_expires_at < func.now(),
            ]
            dead = await self._gone_local_owners(session)
            if dead:
                orphaned.append(Run.owner.in_(dead))
            result = await session.execute(
                select(Run.job_id)
                .where(Run.status != RunStatus.FINISHED, or_(*orphaned))
                .order_by(Run.created_at, Run.job_id)
                .with_for_update(skip_locked=True)
            )
            job_ids = list(result.scalars())
            if job_ids:
                await session.execute(
                    update(Run)
                    .where(Run.job_id.in_(job_ids))
                    .values(**self._leased(), updated_at=func.now())
                )
            result = await session.execute(
                select(func.extract("epoch", func.min(Run.lease_expires_at) - func.now())).where(
                    Run.status != RunStatus.FINISHED,
                    Run.owner.is_not(None),
                    Run.owner != self.owner,
                )
            )
            next_expiry = result.scalar_one_or_none()
            return job_ids, None if next_expiry is None else float(next_expiry)

    async def _gone_local_owners(self, session: AsyncSession) -> list[str]:
        """Owners of live leases that are processes of this host which no longer exist."""
        host = self.instance.host
        if host is None:
            return []
        result = await session.execute(
            select(Run.owner, Run.owner_process)
            .distinct()
            .where(
                Run.status != RunStatus.FINISHED,
                Run.owner != self.owner,
                Run.lease_expires_at >= func.now(),
                Run.owner_process.startswith(f"{host}/", autoescape=True),
            )
        )
        return [
            owner
            for owner, process in result.all()
            if owner is not None and process is not None and self.instance.process_is_gone(process)
        ]

    async def record_error(self, job_id: int, error: str) -> None:
        await self._update(job_id, last_error=error)

    async def finish(self, job_id: int, error: str | None = None) -> None:
        """Mark the run finished (no-op for an unknown run); it keeps its owner, not its lease."""
        values: dict[str, object] = {"status": RunStatus.FINISHED, "lease_expires_at": None}
        if error is not None:
            values["last_error"] = error
        await self._update(job_id, **values)

    async def _update(self, job_id: int, **values: object) -> None:
        async with transaction(self.sessions) as session:
            await session.execute(
                update(Run).where(Run.job_id == job_id).values(**values, updated_at=func.now())
            )

    async def unfinished(self) -> list[int]:
        async with self.sessions() as session:
            result = await session.execute(
                select(Run.job_id)
                .where(Run.status != RunStatus.FINISHED)
                .order_by(Run.created_at, Run.job_id)
            )
            return list(result.scalars())

    async def get(self, job_id: int) -> Run | None:
        async with self.sessions() as session:
            return await session.get(Run, job_id)
