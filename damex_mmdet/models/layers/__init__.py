from .deformable_attention import (BFloat16SafeMultiScaleDeformableAttention,
                                   deformable_attention_needs_float32,
                                   use_bfloat16_safe_deformable_attention)
from .moe import MoEFFN
from .transformer import (MoEDeformableDetrTransformerDecoderLayer,
                          MoEDeformableDetrTransformerEncoder,
                          MoEDeformableDetrTransformerEncoderLayer,
                          MoEDinoTransformerDecoder)

__all__ = [
    'MoEFFN', 'MoEDeformableDetrTransformerEncoderLayer',
    'MoEDeformableDetrTransformerDecoderLayer',
    'MoEDeformableDetrTransformerEncoder', 'MoEDinoTransformerDecoder',
    'BFloat16SafeMultiScaleDeformableAttention',
    'deformable_attention_needs_float32',
    'use_bfloat16_safe_deformable_attention'
]
