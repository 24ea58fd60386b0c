"""DAMEX: a DINO detector whose MoE layers learn dataset-aware routing."""
import zlib
from contextlib import ExitStack, contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import OptConfigType
from torch import Tensor

from ...datasets.mixture import (DATASET_NAME_KEY, MIXTURE_DATASETS_KEY,
                                 check_num_classes)
from ..layers import MoEFFN
from ..losses import DAMEXLoss, LoadBalancingLoss, LoadImportanceLoss
from .layerwise_dino import LayerwiseDINO

ROUTING_LOSS_QUERIES = ('all', 'matched')
ROUTING_TARGETS = ('dataset', 'random_per_image')
# mmengine merges a derived config's dict into its base's: the usual way a
# map gets keys its author never wrote.
_MERGED_MAP_HINT = (
    'If the config inherits another (_base_), mmengine merged its '
    'model.dataset_to_expert into the base\'s: write '
    'dataset_to_expert=dict(_delete_=True, ...) to replace the base\'s map.')
# The metainfo key under which predict gives each image the expert its
# dataset maps to, so RoutingMetric reads the model's own map.
DATASET_EXPERT_KEY = 'dataset_expert'


@MODELS.register_module()
class DAMEX(LayerwiseDINO):
    """DINO with Mixture-of-Experts FFNs and a routing loss.

    With ``routing_loss=dict(type='DAMEXLoss')`` this is DAMEX: the gate of
    every MoE layer is trained to send each token to the expert mapped to
    its image's dataset (``dataset_to_expert``). With
    ``routing_loss=dict(type='LoadBalancingLoss')`` it is the vanilla MoE
    baseline. At test time the learned gate routes by itself; no dataset is
    needed unless ``test_routing='dataset'`` (the oracle).

    Every image's dataset is read from ``data_sample.metainfo['dataset']``,
    which :class:`DatasetMixture` sets.

    Args:
        num_experts (int): Experts per MoE layer, independent of the number
            of processes.
        moe_layers (dict): ``encoder`` and ``decoder`` lists of the layer
            indices whose FFN becomes an MoE. Defaults to the reference
            placement, decoder layers 0, 2 and 4.
        moe_cfg (dict, optional): Further :class:`MoEFFN` arguments
            (``top_k``, ``gate_noise_std``, ``capacity_factor``, ...).
        routing_loss (dict): :class:`DAMEXLoss`, :class:`LoadBalancingLoss`
            or :class:`LoadImportanceLoss` (the reference's vanilla MoE).
        dataset_to_expert (dict, optional): Dataset name to expert index;
            several datasets may share an expert. Required by DAMEXLoss and
            by ``test_routing='dataset'``. Training stops before the first
            step unless its keys are exactly the training mixture's datasets
            and every expert outside ``spare_experts`` gets a dataset.
        spare_experts (Sequence[int]): Experts that no dataset maps to on
            purpose, e.g. a subset of a mixture trained at the full mixture's
            model size (benchmarks/mixture_study.py). Every other expert must
            get a dataset. Growing a model adds experts instead
            (tools/grow_checkpoint.py), so it needs none.
        exclude_denoising_from_routing_loss (bool): Leave DINO's denoising
            queries out of the routing loss. Defaults to False: they belong to
            the image like every other query.
        routing_loss_queries (str): Which decoder queries the routing loss
            counts: ``'all'`` (default) or ``'matched'``, the matching queries
            that the head's Hungarian assigner pairs with a ground-truth box
            on the last decoder layer's predictions (the reference's
            "foreground" queries, one mask for every MoE layer). With
            ``'matched'`` denoising queries never count, as in the reference:
            they exist only in training and reconstruct boxes given to them.
            Encoder MoE layers have no queries and count all their tokens.
        test_routing (str): ``'gate'`` (default, dataset unknown at test
            time) or ``'dataset'`` (oracle: each image uses its dataset's
            expert). The oracle sends each token to that one expert also with
            ``moe_cfg.top_k=2``, weighted as the gate would weight it, so it
            differs from top-2 gate routing even where the gate's first
            choice is the dataset's expert.
        routing_targets (str): What DAMEXLoss trains each image's tokens
            towards: ``'dataset'`` (default, DAMEX: the expert of the image's
            dataset) or ``'random_per_image'``, the control that ignores the
            dataset: an expert drawn uniformly for each image from a hash of
            its file path, the same every time the image is seen.
            (A permuted one-to-one map would be DAMEX again up to expert names.)
        ffn_channels (dict, optional): Per-layer FFN widths, see
            :class:`LayerwiseDINO`.
    """

    def __init__(self,
                 *args,
                 num_experts: int = 8,
                 moe_layers: Mapping[str, Sequence[int]] = dict(
                     encoder=(), decoder=(0, 2, 4)),
                 moe_cfg: OptConfigType = None,
                 routing_loss: OptConfigType = dict(
                     type='DAMEXLoss', loss_weight=0.1),
                 dataset_to_expert: Optional[Mapping[str, int]] = None,
                 spare_experts: Sequence[int] = (),
                 exclude_denoising_from_routing_loss: bool = False,
                 routing_loss_queries: str = 'all',
                 test_routing: str = 'gate',
                 routing_targets: str = 'dataset',
                 **kwargs) -> None:
        if routing_targets not in ROUTING_TARGETS:
            raise ValueError(
                f'model.routing_targets must be one of {ROUTING_TARGETS}, '
                f'got {routing_targets!r}.')
        if routing_loss_queries not in ROUTING_LOSS_QUERIES:
            raise ValueError(
                f'model.routing_loss_queries must be one of '
                f'{ROUTING_LOSS_QUERIES}, got {routing_loss_queries!r}.')
        unknown_parts = set(moe_layers) - {'encoder', 'decoder'}
        if unknown_parts:
            raise ValueError(
                f'model.moe_layers has keys {sorted(unknown_parts)}; only '
                f"'encoder' and 'decoder' hold MoE layers.")
        if test_routing not in ('gate', 'dataset'):
            raise ValueError(
                f"model.test_routing must be 'gate' or 'dataset', got "
                f'{test_routing!r}.')
        self.num_experts = num_experts
        self.moe_layers = {part: tuple(moe_layers.get(part, ()))
                           for part in ('encoder', 'decoder')}
        self.moe_cfg = dict(moe_cfg or {}, num_experts=num_experts)
        self.dataset_to_expert = self.checked_expert_map(
            dataset_to_expert, num_experts)
        self.spare_experts = self.checked_spare_experts(
            spare_experts, self.dataset_to_expert, num_experts)
        self.exclude_denoising_from_routing_loss = (
            exclude_denoising_from_routing_loss)
        self.routing_loss_queries = routing_loss_queries
        self.test_routing = test_routing
        self.routing_targets = routing_targets
        super().__init__(*args, **kwargs)
        self.routing_loss = MODELS.build(routing_loss)
        if (isinstance(self.routing_loss, DAMEXLoss)
                or test_routing == 'dataset') and not self.dataset_to_expert:
            raise ValueError(
                'DAMEXLoss and test_routing="dataset" route by dataset: set '
                'model.dataset_to_expert, e.g. dict(coco=0, voc07=0, '
                'kitti=1).')
        if not any(self.moe_layers.values()):
            raise ValueError(
                'model.moe_layers names no layer: DAMEX needs at least one '
                'MoE layer (use type="DINO" for the dense baseline).')
        self._head_inputs: Optional[Dict] = None

    @staticmethod
    def checked_expert_map(dataset_to_expert: Optional[Mapping[str, int]],
                           num_experts: int) -> Dict[str, int]:
        """Return ``dataset_to_expert`` as a dict after checking every expert
        index is an int in ``0..num_experts - 1``.

        Raises:
            ValueError: An index that is not an int (bools included) or is
                out of range.
        """
        expert_map = dict(dataset_to_expert or {})
        for name, expert in expert_map.items():
            if isinstance(expert, bool) or not isinstance(expert, int):
                raise ValueError(
                    f'model.dataset_to_expert maps dataset {name!r} to '
                    f'{expert!r} ({type(expert).__name__}), not an expert '
                    f'index: write an int in 0..{num_experts - 1}.')
            if not 0 <= expert < num_experts:
                raise ValueError(
                    f'model.dataset_to_expert maps dataset {name!r} to expert '
                    f'{expert!r}, out of range for num_experts={num_experts} '
                    f'(valid experts 0..{num_experts - 1}): raise '
                    f'model.num_experts or fix the map. {_MERGED_MAP_HINT}')
        return expert_map

    @staticmethod
    def checked_spare_experts(spare_experts: Sequence[int],
                              dataset_to_expert: Mapping[str, int],
                              num_experts: int) -> Tuple[int, ...]:
        """Return ``spare_experts`` as a sorted tuple after checking each is
        an expert index that no dataset maps to.

        Raises:
            ValueError: Spare experts without a map (every expert of a
                vanilla MoE is the gate's), an index that is not an int in
                range, or an expert that a dataset maps to.
        """
        spare = list(spare_experts or ())
        if not spare:
            return ()
        if not dataset_to_expert:
            raise ValueError(
                f'model.spare_experts={spare}, but model.dataset_to_expert is '
                f'empty: without a map the gate routes to every expert; drop '
                f'spare_experts.')
        for expert in spare:
            if (isinstance(expert, bool) or not isinstance(expert, int)
                    or not 0 <= expert < num_experts):
                raise ValueError(
                    f'model.spare_experts holds {expert!r}, not an expert '
                    f'index in 0..{num_experts - 1} (num_experts='
                    f'{num_experts}).')
        mapped = {e: n for n, e in dataset_to_expert.items() if e in spare}
        if mapped:
            expert, name = next(iter(sorted(mapped.items())))
            raise ValueError(
                f'model.spare_experts lists expert {expert}, but '
                f'model.dataset_to_expert maps {name!r} to it: a spare expert '
                f'has no dataset. Drop it from spare_experts (a config '
                f'inheriting spare_experts from its base writes the experts '
                f'still spare, or spare_experts=[]).')
        return tuple(sorted(set(spare)))

    def transformer_options(self, part: str) -> dict:
        return dict(super().transformer_options(part),
                    moe_layers=self.moe_layers[part], moe_cfg=self.moe_cfg)

    def init_weights(self) -> None:
        # DINO's init_weights applies xavier to every >1-dim transformer
        # parameter, which would mis-initialise the stacked 3-D expert
        # weights: give the MoE layers their own initialisation back.
        super().init_weights()
        for _, moe in self.named_moe_layers():
            moe.reset_parameters()

    def named_moe_layers(self) -> Iterator[Tuple[str, MoEFFN]]:
        """Yield ``(name, module)`` of every MoE FFN, encoder first."""
        for name, module in self.named_modules():
            if isinstance(module, MoEFFN):
                yield name, module

    def check_mixture(self, batch_data_samples: SampleList) -> None:
        """Raise if the samples' :class:`DatasetMixture` does not fit the
        model: another number of unified classes, or a dataset of the
        mixture without an expert (before it fails mid-epoch)."""
        check_num_classes(batch_data_samples, self.bbox_head.num_classes)
        for sample in batch_data_samples:
            self.check_datasets(sample.metainfo.get(MIXTURE_DATASETS_KEY, ()))

    def check_training_map(self, dataset_names: Sequence[str]) -> None:
        """Raise unless ``dataset_to_expert`` fits the training mixture of
        ``dataset_names`` exactly: every dataset has an expert, every key is
        a dataset, and every expert but the spare ones gets a dataset.

        A map with extra keys or idle experts trains without error but
        wrongly (an idle expert's gate row and weights learn nothing), most
        often because a derived config's map was merged into its base's.
        """
        if not self.dataset_to_expert:
            return
        self.check_datasets(dataset_names)
        foreign = [n for n in self.dataset_to_expert if n not in dataset_names]
        if foreign:
            raise ValueError(
                f'model.dataset_to_expert maps datasets {foreign}, which are '
                f'not in the training mixture (its datasets: '
                f'{list(dataset_names)}). {_MERGED_MAP_HINT} Otherwise drop '
                f'these keys.')
        idle = sorted(set(range(self.num_experts))
                      - set(self.dataset_to_expert.values())
                      - set(self.spare_experts))
        if idle:
            raise ValueError(
                f'experts {idle} of model.num_experts={self.num_experts} get '
                f'no dataset from model.dataset_to_expert '
                f'({self.dataset_to_expert}): they would train on no tokens. '
                f'Map a dataset to each, lower num_experts, or keep them '
                f'unused on purpose with model.spare_experts={idle}.')

    def check_datasets(self, dataset_names: Sequence[str]) -> None:
        """Raise if a dataset of the data has no expert in the map."""
        if not self.dataset_to_expert:
            return
        missing = [n for n in dataset_names if n not in self.dataset_to_expert]
        if missing:
            raise KeyError(
                f'datasets {missing} have no expert in model.dataset_to_expert'
                f' (it maps {sorted(self.dataset_to_expert)}): add them, e.g. '
                f'dataset_to_expert=dict(..., {missing[0]}=0).')

    def experts_of(self, batch_data_samples: SampleList,
                   device: torch.device) -> Tensor:
        """The expert mapped to each image's dataset.

        Returns:
            Tensor: Expert indices, shape (batch_size,), long.
        """
        experts = []
        for sample in batch_data_samples:
            name = sample.metainfo.get(DATASET_NAME_KEY)
            if name is None:
                raise KeyError(
                    f'image {sample.metainfo.get("img_path")} has no '
                    f'"{DATASET_NAME_KEY}" in its metainfo: wrap the '
                    f'datasets in dict(type="DatasetMixture", ...), which '
                    f'tags every image with its dataset.')
            if name not in self.dataset_to_expert:
                self.check_datasets([name])
            experts.append(self.dataset_to_expert[name])
        return torch.tensor(experts, dtype=torch.long, device=device)

    def random_experts_of(self, batch_data_samples: SampleList,
                          device: torch.device) -> Tensor:
        """An expert for each image that ignores its dataset: uniform over
        the experts, fixed per image (drawn from a generator seeded with a
        hash of the image's ``img_path``, so every epoch, process and resumed
        run gives it the same one).

        Returns:
            Tensor: Expert indices, shape (batch_size,), long.
        """
        experts = []
        for sample in batch_data_samples:
            seed = zlib.crc32(sample.metainfo['img_path'].encode())
            experts.append(int(np.random.default_rng(seed).integers(
                self.num_experts)))
        return torch.tensor(experts, dtype=torch.long, device=device)

    def forward_transformer(self, img_feats: Tuple[Tensor],
                            batch_data_samples: SampleList = None) -> Dict:
        # The matched-query mask needs the decoder outputs the head gets.
        head_inputs = super().forward_transformer(img_feats,
                                                  batch_data_samples)
        if self.training and self.routing_loss_queries == 'matched':
            self._head_inputs = head_inputs
        return head_inputs

    def pre_decoder(self, memory: Tensor, memory_mask: Optional[Tensor],
                    spatial_shapes: Tensor,
                    batch_data_samples: SampleList = None) -> Tuple[Dict]:
        # The decoder's MoE layers route no denoising slot that an image with
        # fewer boxes than the batch's most leaves empty.
        decoder_inputs, head_inputs = super().pre_decoder(
            memory, memory_mask, spatial_shapes, batch_data_samples)
        num_boxes = {len(s.gt_instances) for s in batch_data_samples or ()}
        if self.training and len(num_boxes) > 1:
            real = self.real_denoising_queries(
                batch_data_samples,
                head_inputs['dn_meta']['num_denoising_queries'], memory.device)
            decoder_inputs['query_padding_mask'] = F.pad(
                ~real, (0, self.num_queries), value=False)
        return decoder_inputs, head_inputs

    @torch.no_grad()
    def _matched_queries(self, batch_data_samples: SampleList) -> Tensor:
        """Mask of the queries matched to a ground-truth box.

        The head's own assigner (``get_targets``) matches the last decoder
        layer's predictions of the matching queries, as its loss does.

        Returns:
            Tensor: Bool, (batch, num_denoising + num_queries), the decoder
            tokens' layout; denoising queries are False.
        """
        head_inputs, self._head_inputs = self._head_inputs, None
        cls_scores, bbox_preds = self.bbox_head(head_inputs['hidden_states'],
                                                head_inputs['references'])
        dn_meta = head_inputs['dn_meta']
        matching_scores, matching_boxes = self.bbox_head.split_outputs(
            cls_scores, bbox_preds, dn_meta)[:2]
        labels = self.bbox_head.get_targets(
            list(matching_scores[-1]), list(matching_boxes[-1]),
            [sample.gt_instances for sample in batch_data_samples],
            [sample.metainfo for sample in batch_data_samples])[0]
        matched = torch.stack(labels) != self.bbox_head.num_classes
        denoising = matched.new_zeros(
            len(batch_data_samples), dn_meta['num_denoising_queries'])
        return torch.cat([denoising, matched], dim=1)

    def counted_tokens(self, name: str, moe: MoEFFN,
                       batch_data_samples: SampleList) -> Tensor:
        """Mask of the tokens routing losses and statistics count.

        Padding tokens never count: the encoder's padded feature positions,
        and in training the denoising queries DINO pads every image's groups
        with up to the batch's largest number of boxes.

        Returns:
            Tensor: Bool, the MoE input's leading shape (batch, tokens).
        """
        part = name.split('.')[0]
        counted = self.real_tokens(part, moe.last_gate_logits.shape[:2],
                                   batch_data_samples,
                                   moe.last_gate_logits.device)
        num_denoising = counted.size(1) - self.num_queries
        if (part == 'decoder' and num_denoising > 0
                and self.exclude_denoising_from_routing_loss):
            counted[:, :num_denoising] = False
        return counted

    def loss(self, batch_inputs: Tensor,
             batch_data_samples: SampleList) -> Dict[str, Tensor]:
        self.check_mixture(batch_data_samples)
        # Also here, not only in MixtureCheckHook: a user's config may not
        # list the hook, and this runs before the first optimizer step.
        mixtures = {s.metainfo.get(MIXTURE_DATASETS_KEY)
                    for s in batch_data_samples}
        for names in mixtures - {None}:
            self.check_training_map(names)
        experts = (self.experts_of(batch_data_samples, batch_inputs.device)
                   if self.dataset_to_expert else None)
        if self.routing_targets == 'random_per_image':
            experts = self.random_experts_of(batch_data_samples,
                                             batch_inputs.device)
        losses = super().loss(batch_inputs, batch_data_samples)
        moe_layers = list(self.named_moe_layers())
        logits = [moe.last_gate_logits for _, moe in moe_layers]
        masks = [self.counted_tokens(name, moe, batch_data_samples)
                 for name, moe in moe_layers]
        if self.routing_loss_queries == 'matched':
            matched = self._matched_queries(batch_data_samples)
            masks = [mask & matched if name.startswith('decoder.') else mask
                     for (name, _), mask in zip(moe_layers, masks)]
        indices = [moe.last_expert_indices for _, moe in moe_layers]
        if isinstance(self.routing_loss, DAMEXLoss):
            # One target per token, in the tokens' own (batch, token) layout.
            targets = [experts[:, None].expand(mask.shape) for mask in masks]
            losses['loss_route'] = self.routing_loss(logits, targets, masks)
        elif isinstance(self.routing_loss, LoadBalancingLoss):
            losses['loss_balance'] = self.routing_loss(logits, indices, masks)
        elif isinstance(self.routing_loss, LoadImportanceLoss):
            noise_stds = [moe.gate_noise_std for _, moe in moe_layers]
            losses['loss_balance'] = self.routing_loss(logits, indices,
                                                       noise_stds, masks)
        else:
            raise TypeError(
                f'model.routing_loss must be DAMEXLoss, LoadBalancingLoss or '
                f'LoadImportanceLoss, got {type(self.routing_loss).__name__}.')
        return losses

    @contextmanager
    def _test_routing(self, batch_data_samples: SampleList,
                      device: torch.device):
        with ExitStack() as stack:
            if self.test_routing == 'dataset':
                experts = self.experts_of(batch_data_samples, device)
                for _, moe in self.named_moe_layers():
                    stack.enter_context(moe.force_experts(experts))
            yield

    def predict(self,
                batch_inputs: Tensor,
                batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Predict as DINO does, and attach per-image routing counts.

        Each returned sample gets ``routing_counts`` (Tensor, shape
        (num_moe_layers, num_experts)): the counted tokens of that image
        whose first choice was each expert, metainfo ``moe_layers`` naming
        the rows and, when ``dataset_to_expert`` maps the image's dataset,
        metainfo ``dataset_expert``: that expert (RoutingMetric's target).
        """
        self.check_mixture(batch_data_samples)
        with self._test_routing(batch_data_samples, batch_inputs.device):
            batch_data_samples = super().predict(batch_inputs,
                                                 batch_data_samples, rescale)
        counts, names = self.routing_counts(batch_data_samples)
        for sample, image_counts in zip(batch_data_samples, counts):
            sample.routing_counts = image_counts
            sample.set_metainfo(dict(moe_layers=names))
            expert = self.dataset_to_expert.get(
                sample.metainfo.get(DATASET_NAME_KEY))
            if expert is not None:
                sample.set_metainfo({DATASET_EXPERT_KEY: expert})
        return batch_data_samples

    def routing_counts(self, batch_data_samples: SampleList
                       ) -> Tuple[Tensor, List[str]]:
        """First-choice expert counts of the last forward, per image.

        Returns:
            tuple: counts (Tensor, shape (batch, num_moe_layers,
            num_experts), long) and the MoE layer names.
        """
        names, per_layer = [], []
        for name, moe in self.named_moe_layers():
            counted = self.counted_tokens(name, moe, batch_data_samples)
            first_choice = moe.last_expert_indices[..., 0]
            one_hot = torch.nn.functional.one_hot(first_choice,
                                                  self.num_experts)
            per_layer.append((one_hot * counted[..., None]).sum(dim=1))
            names.append(name)
        return torch.stack(per_layer, dim=1).cpu(), names
