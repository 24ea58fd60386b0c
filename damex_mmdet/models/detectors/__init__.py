from .damex import DAMEX
from .layerwise_dino import LayerwiseDINO

__all__ = ['DAMEX', 'LayerwiseDINO']
