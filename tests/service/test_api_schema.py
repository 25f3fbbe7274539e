"""The api schema: the migrations and the models agree (nothing for autogenerate to add)."""

from __future__ import annotations

from fractal_api.models import Base
from world import schema_diff


async def test_api_migrations_match_models(database_url: str) -> None:
    assert await schema_diff(database_url, Base.metadata, "api") == []
