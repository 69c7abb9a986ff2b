"""ORM models, one file per table. Import them all here so Alembic sees every table."""

from app.models.alias import Alias
from app.models.api_token import ApiToken
from app.models.composition import Composition
from app.models.dataset import Dataset
from app.models.job import Job
from app.models.module import Module
from app.models.module_version import ModuleVersion

__all__ = ["Alias", "ApiToken", "Composition", "Dataset", "Job", "Module", "ModuleVersion"]
