from .label_space import UnifiedLabelSpace
from .mixture import DatasetMixture
from .samplers import MixtureSampler

__all__ = ['UnifiedLabelSpace', 'DatasetMixture', 'MixtureSampler']
