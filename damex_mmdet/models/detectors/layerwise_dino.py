"""DINO whose transformer layers may each have their own FFN width, and an optional
dataset probe: the dense controls of DAMEX."""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from mmdet.models.detectors import DINO
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import OptConfigType
from torch import Tensor, nn

from ...datasets.mixture import DATASET_NAME_KEY
from ..layers import MoEDeformableDetrTransformerEncoder, MoEDinoTransformerDecoder
from ..losses import DAMEXLoss

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
    """DINO with per-layer FFN widths and an optional dataset probe: the dense controls of an
    MoE model.

    ``ffn_channels=dict(decoder={0: 1024, 2: 1024})`` widens the FFN of decoder layers 0 and 2
    only, e.g. to the width of a shared expert plus one routed expert in exactly the layers
    where DAMEX has them (the capacity-matched control of the accuracy study). Every other part
    is DINO's own; without options the model is DINO.

    ``dataset_probe=dict(datasets=['photo', ...], layers=dict(decoder=[0, 2]),
    loss_weight=0.1)`` gives a dense model the supervision DAMEX's routing loss gives its
    tokens, without routing: a linear classifier (a gate's shape, no bias) on the FFN input of
    each named layer, trained with DAMEX's cross-entropy towards the index of each token's
    dataset in ``datasets``, on the same tokens (padding excluded), with the same weight
    (``loss_probe``). Nothing at test time reads it.

    Args:
        ffn_channels (dict, optional): ``encoder`` and ``decoder`` maps from a layer index to
            its FFN hidden width; layers not named keep ``ffn_cfg.feedforward_channels``.
        dataset_probe (dict, optional): ``datasets`` (the mixture's dataset names, each the
            probe's class of that index), ``layers`` (``encoder``/``decoder`` index lists) and
            ``loss_weight``.
    """

    def __init__(self, *args, ffn_channels: Optional[Mapping[str, Mapping[int, int]]] = None,
                 dataset_probe: OptConfigType = None, **kwargs) -> None:
        self.ffn_channels = {part: dict(widths or {}) for part, widths in
                             checked_layer_map('ffn_channels', ffn_channels).items()}
        super().__init__(*args, **kwargs)
        self._encoder_padding_mask: Optional[Tensor] = None
        self._probe_inputs: Dict[str, Tensor] = {}
        self.dataset_probes = nn.ModuleDict()
        if dataset_probe is not None:
            self._build_dataset_probes(**dataset_probe)

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

    def _build_dataset_probes(self, datasets: Sequence[str],
                              layers: Mapping[str, Sequence[int]],
                              loss_weight: float = 0.1) -> None:
        if isinstance(datasets, str) or len(set(datasets)) != len(datasets) or not datasets:
            raise ValueError(f'model.dataset_probe.datasets must list the mixture\'s dataset '
                             f'names once each, got {datasets!r}.')
        self.probe_datasets: Tuple[str, ...] = tuple(datasets)
        for part, indices in checked_layer_map('dataset_probe.layers', layers).items():
            coder = getattr(self, part)
            for index in indices:
                if not 0 <= index < coder.num_layers:
                    raise ValueError(
                        f'model.dataset_probe.layers names {part} layer {index}; the {part} '
                        f'has layers 0..{coder.num_layers - 1}.')
                key = f'{part}_{index}'
                self.dataset_probes[key] = nn.Linear(self.embed_dims, len(datasets),
                                                     bias=False)
                ffn = next(module for name, module in coder.layers[index].named_modules()
                           if name.split('.')[-1] == 'ffn')
                ffn.register_forward_pre_hook(self._probe_input_keeper(key))
        self.probe_loss = DAMEXLoss(loss_weight=loss_weight)

    def _probe_input_keeper(self, key: str):
        def keep(_module, args):
            if self.training:
                self._probe_inputs[key] = args[0]
        return keep

    def forward_encoder(self, feat: Tensor, feat_mask: Optional[Tensor], **kwargs) -> Dict:
        # Losses on encoder tokens must skip the padding, whose mask only this step sees.
        self._encoder_padding_mask = feat_mask
        return super().forward_encoder(feat=feat, feat_mask=feat_mask, **kwargs)

    @staticmethod
    def real_denoising_queries(batch_data_samples: SampleList, num_denoising: int,
                               device: torch.device) -> Tensor:
        """Mask of the denoising queries that hold a box, not padding.

        DINO puts the denoising queries first, in groups of ``max_boxes`` slots of which
        image b fills its first n_b.

        Returns:
            Tensor: Bool, (batch, num_denoising).
        """
        boxes = torch.tensor([len(s.gt_instances) for s in batch_data_samples],
                             device=device)
        slot = torch.arange(num_denoising, device=device)
        return slot[None] % boxes.max().clamp(min=1) < boxes[:, None]

    def real_tokens(self, part: str, shape: Tuple[int, int],
                    batch_data_samples: SampleList, device: torch.device) -> Tensor:
        """Mask of the tokens of an ``part`` layer of the last forward that are not padding:
        the encoder's padded feature positions, and in training the denoising slots DINO
        pads every image's groups with up to the batch's largest number of boxes.

        Returns:
            Tensor: Bool, ``shape`` (batch, tokens).
        """
        real = torch.ones(shape, dtype=torch.bool, device=device)
        if part == 'encoder':
            # mmdet passes no mask when every image fills the batch shape.
            if self._encoder_padding_mask is None:
                return real
            return ~self._encoder_padding_mask.bool()
        num_denoising = shape[1] - self.num_queries
        if num_denoising > 0:
            real[:, :num_denoising] = self.real_denoising_queries(
                batch_data_samples, num_denoising, device)
        return real

    def dataset_indices(self, batch_data_samples: SampleList, device: torch.device) -> Tensor:
        """Each image's dataset as its index in ``dataset_probe.datasets``."""
        indices = []
        for sample in batch_data_samples:
            name = sample.metainfo.get(DATASET_NAME_KEY)
            if name not in self.probe_datasets:
                raise KeyError(
                    f'image {sample.metainfo.get("img_path")} is of dataset {name!r}, which '
                    f'model.dataset_probe.datasets {list(self.probe_datasets)} does not '
                    'list: list every dataset of the training mixture (a probe class each).')
            indices.append(self.probe_datasets.index(name))
        return torch.tensor(indices, dtype=torch.long, device=device)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        if not len(self.dataset_probes):
            return super().loss(batch_inputs, batch_data_samples)
        targets = self.dataset_indices(batch_data_samples, batch_inputs.device)
        losses = super().loss(batch_inputs, batch_data_samples)
        logits, masks = [], []
        for key, probe in self.dataset_probes.items():
            tokens = self._probe_inputs.pop(key)
            logits.append(probe(tokens))
            masks.append(self.real_tokens(key.split('_')[0], tokens.shape[:2],
                                          batch_data_samples, tokens.device))
        losses['loss_probe'] = self.probe_loss(
            logits, [targets[:, None].expand(mask.shape) for mask in masks], masks)
        return losses
