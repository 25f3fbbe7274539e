from alembic import context

from fractal_api.models import Base
from fractal_grpc.migrate import run_env

run_env(context, Base.metadata)
