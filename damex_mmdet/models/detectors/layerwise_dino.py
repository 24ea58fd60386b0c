"""DINO whose transformer layers may each have their own FFN width."""
from typing import Dict, Mapping, Optional

from mmdet.models.detectors import DINO
from mmdet.registry import MODELS

from ..layers import MoEDeformableDetrTransformerEncoder, MoEDinoTransformerDecoder

TRANSFORMER_PARTS = ('encoder', 'decoder')


def checked_layer_map(option: str, value: Optional[Mapping[str, object]]) -> Dict[str, object]:
    """``value`` (``dict(encoder=..., decoder=...)``) with both parts present; raises on other
    keys, the usual slip being a map merged from a ``_base_`` config of another shape."""
    value = dict(value or {})
    unknown = set(value) - set(TRANSFORMER_PARTS)
    if unknown:
        raise ValueError(f'model.{option} has keys {sorted(unknown)}; only '
                         f"'encoder' and 'decoder' hold layers.")
    return value


@MODELS.register_module()
class LayerwiseDINO(DINO):
    """DINO with per-layer FFN widths: the dense model of the same active width as an MoE model.

    ``ffn_channels=dict(decoder={0: 1024, 2: 1024})`` widens the FFN of decoder layers 0 and 2
    only, e.g. to the width of a shared expert plus one routed expert in exactly the layers
    where DAMEX has them (the capacity-matched control of the accuracy study). Every other part
    is DINO's own; without ``ffn_channels`` the model is DINO.

    Args:
        ffn_channels (dict, optional): ``encoder`` and ``decoder`` maps from a layer index to
            its FFN hidden width; layers not named keep ``ffn_cfg.feedforward_channels``.
    """

    def __init__(self, *args, ffn_channels: Optional[Mapping[str, Mapping[int, int]]] = None,
                 **kwargs) -> None:
        self.ffn_channels = {part: dict(widths or {}) for part, widths in
                             checked_layer_map('ffn_channels', ffn_channels).items()}
        super().__init__(*args, **kwargs)

    def transformer_options(self, part: str) -> dict:
        """Keyword arguments that build the ``part`` ('encoder' or 'decoder') beyond its
        config: subclasses add theirs (the MoE layers)."""
        return dict(ffn_channels=self.ffn_channels.get(part, {}))

    def _init_layers(self) -> None:
        # DINO builds its encoder and decoder from these configs; build them again with the
        # per-layer options so every other part stays DINO's own.
        encoder_cfg, decoder_cfg = self.encoder, self.decoder
        super()._init_layers()
        self.encoder = MoEDeformableDetrTransformerEncoder(
            **encoder_cfg, **self.transformer_options('encoder'))
        self.decoder = MoEDinoTransformerDecoder(
            **decoder_cfg, **self.transformer_options('decoder'))
