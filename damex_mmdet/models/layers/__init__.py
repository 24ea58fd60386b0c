from .moe import MoEFFN
from .transformer import (MoEDeformableDetrTransformerDecoderLayer,
                          MoEDeformableDetrTransformerEncoder,
                          MoEDeformableDetrTransformerEncoderLayer,
                          MoEDinoTransformerDecoder)

__all__ = [
    'MoEFFN', 'MoEDeformableDetrTransformerEncoderLayer',
    'MoEDeformableDetrTransformerDecoderLayer',
    'MoEDeformableDetrTransformerEncoder', 'MoEDinoTransformerDecoder'
]
