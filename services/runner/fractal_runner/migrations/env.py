from alembic import context

from fractal_grpc.migrate import run_env
from fractal_runner.models import Base

run_env(context, Base.metadata)
