"""DINO head that can restrict predictions to the image's dataset."""
from mmdet.models.dense_heads import DINOHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from torch import Tensor

from ...datasets.mixture import DATASET_CLASSES_KEY, check_num_classes

CLASS_PROTOCOLS = ('unified', 'dataset')


@MODELS.register_module()
class DatasetAwareDINOHead(DINOHead):
    """DINOHead with a choice of evaluation protocol over a mixture.

    ``test_cfg.class_protocol``:

    - ``'unified'`` (default): the top ``max_per_img`` detections are taken
      over every class of the mixture; the dataset is unknown at test time.
    - ``'dataset'`` (oracle): only the classes of the image's own dataset
      (``metainfo['dataset_classes']``, set by :class:`DatasetMixture` in
      test mode) compete for the ``max_per_img`` slots.

    The protocol is written into each predicted sample's metainfo
    (``class_protocol``), so the metric reports which one it evaluated.

    ``loss`` and ``predict`` check ``num_classes`` against the samples'
    :class:`DatasetMixture` (a dense DINO has no other check without
    ``MixtureCheckHook``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        protocol = (self.test_cfg or {}).get('class_protocol', 'unified')
        if protocol not in CLASS_PROTOCOLS:
            raise ValueError(
                f'model.test_cfg.class_protocol must be one of '
                f'{CLASS_PROTOCOLS}, got {protocol!r}.')
        self.class_protocol = protocol

    def loss(self, hidden_states: Tensor, references, enc_outputs_class: Tensor,
             enc_outputs_coord: Tensor, batch_data_samples: SampleList,
             dn_meta: dict) -> dict:
        check_num_classes(batch_data_samples, self.num_classes)
        return super().loss(hidden_states, references, enc_outputs_class,
                            enc_outputs_coord, batch_data_samples, dn_meta)

    def predict(self, hidden_states: Tensor, references, batch_data_samples:
                SampleList, rescale: bool = True) -> InstanceList:
        check_num_classes(batch_data_samples, self.num_classes)
        results = super().predict(hidden_states, references,
                                  batch_data_samples, rescale)
        for sample in batch_data_samples:
            sample.set_metainfo(dict(class_protocol=self.class_protocol))
        return results

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor,
                                img_meta: dict, rescale: bool = True):
        if self.class_protocol == 'dataset':
            if DATASET_CLASSES_KEY not in img_meta:
                raise KeyError(
                    f'class_protocol="dataset" needs the classes of the '
                    f'image\'s dataset in its metainfo, which DatasetMixture '
                    f'sets in test mode; {img_meta.get("img_path")} has none.')
            allowed = cls_score.new_zeros(cls_score.shape[-1], dtype=bool)
            allowed[list(img_meta[DATASET_CLASSES_KEY])] = True
            cls_score = cls_score.masked_fill(~allowed, float('-inf'))
        return super()._predict_by_feat_single(cls_score, bbox_pred,
                                               img_meta, rescale)
