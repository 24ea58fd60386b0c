"""PASCAL-VOC XML as labelling tools write it."""
from typing import List

from mmdet.datasets import VOCDataset
from mmdet.registry import DATASETS


@DATASETS.register_module()
class TolerantVOCDataset(VOCDataset):
    """mmdet's ``VOCDataset`` that also reads empty ``<difficult/>`` tags.

    Labelling tools (labelme among them) write ``<difficult/>`` and
    ``<truncated/>`` without a value, on which ``VOCDataset`` fails with a
    TypeError. An empty ``difficult`` means "not difficult", as in VOC.
    """

    def _parse_instance_info(self, raw_ann_info,
                             minus_one: bool = True) -> List[dict]:
        for obj in raw_ann_info.findall('object'):
            difficult = obj.find('difficult')
            if difficult is not None and not (difficult.text or '').strip():
                difficult.text = '0'
        return super()._parse_instance_info(raw_ann_info, minus_one)
