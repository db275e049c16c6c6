"""The page tests' fixtures live in page_fixtures (a module name of its own, so test modules
import its helpers unambiguously, whichever test folders a run is given)."""

from page_fixtures import *  # noqa: F403
