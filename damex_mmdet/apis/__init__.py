"""What a user calls from Python to run a trained mixture model, as
:mod:`mmdet.apis` (not imported by ``damex_mmdet`` itself: nothing here is
registered)."""
from .mixture_inferencer import MixtureDetInferencer, infer

__all__ = ['MixtureDetInferencer', 'infer']
