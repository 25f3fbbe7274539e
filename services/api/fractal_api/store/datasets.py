"""Datasets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import select
from sqlalchemy import update as sa_update
from sqlalchemy.ext.asyncio import AsyncSession

from fractal_api.models import Dataset, ProjectMember


async def create(
    session: AsyncSession, *, project_id: int, name: str, zarr_dir: str, filters: dict[str, Any]
) -> Dataset:
    dataset = Dataset(
        project_id=project_id, name=name, zarr_dir=zarr_dir, filters=filters, history=[]
    )
    session.add(dataset)
    await session.flush()
    await session.refresh(dataset)
    return dataset


async def list_page(
    session: AsyncSession, project_id: int, *, after_id: int, limit: int
) -> Sequence[Dataset]:
    result = await session.execute(
        select(Dataset)
        .where(Dataset.project_id == project_id, Dataset.id > after_id)
        .order_by(Dataset.id)
        .limit(limit)
    )
    return result.scalars().all()


async def list_page_for_user(
    session: AsyncSession, user_id: int, *, after_id: int, limit: int
) -> Sequence[Dataset]:
    """A page of the datasets of every project ``user_id`` is a member of."""
    result = await session.execute(
        select(Dataset)
        .join(ProjectMember, ProjectMember.project_id == Dataset.project_id)
        .where(ProjectMember.user_id == user_id, Dataset.id > after_id)
        .order_by(Dataset.id)
        .limit(limit)
    )
    return result.scalars().all()


async def update(session: AsyncSession, dataset: Dataset, fields: dict[str, Any]) -> Dataset:
    """Write ``fields`` (checked by the caller, under the dataset's row lock)."""
    if fields:
        await session.execute(sa_update(Dataset).where(Dataset.id == dataset.id).values(**fields))
        await session.refresh(dataset)
    return dataset


async def delete(session: AsyncSession, dataset_id: int) -> None:
    """Delete a dataset (checked and locked by the caller): its images and facets go with it
    (foreign keys), its jobs stay with dataset_id set to NULL."""
    await session.execute(sa_delete(Dataset).where(Dataset.id == dataset_id))
