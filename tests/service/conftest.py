"""The service tests' fixtures and hooks live in service_fixtures (a module name of its own, so
test modules import its helpers unambiguously, whichever test folders a run is given)."""

from service_fixtures import *  # noqa: F403
from service_fixtures import pytest_collection_modifyitems  # noqa: F401
