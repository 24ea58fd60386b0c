"""The embedded demo mixture and the ``make demo`` run: synthetic data made on the spot,
kept apart from :mod:`damex_mmdet.datasets`, which holds what a user's data goes through."""
from .generator import DEMO_DATASETS, EXTRA_DEMO_DATASETS, MANIFEST_NAME, generate_demo_mixture

__all__ = ['DEMO_DATASETS', 'EXTRA_DEMO_DATASETS', 'MANIFEST_NAME', 'generate_demo_mixture']
