"""DAMEX for MMDetection 3.x.

Importing the package registers every component, so
``custom_imports=dict(imports=['damex_mmdet'])`` in an mmdet config is all a
user needs.
"""
from . import (analysis, datasets, engine, evaluation, models,  # noqa: F401
               visualization)
from .version import __version__  # noqa: F401
