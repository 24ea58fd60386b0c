from .label_space import UnifiedLabelSpace
from .mixture import DatasetMixture
from .samplers import MixtureSampler
from .tolerant_voc import TolerantVOCDataset

__all__ = [
    'UnifiedLabelSpace', 'DatasetMixture', 'MixtureSampler',
    'TolerantVOCDataset'
]
