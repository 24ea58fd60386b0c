"""Check that every image of a mixture's datasets exists before training.

mmdet finds a missing image only when its pipeline loads it, mid-epoch, as
one image's error; a wrong ``img_prefix`` or ``data_root`` shows up that way
too. Here every image path is looked up once (one ``stat`` per file) when the
mixture is built, and all missing images are reported at once, counted per
dataset, with the likely cause when most of a dataset's images are missing.
"""
import os.path as osp
from typing import List, Mapping, NamedTuple, Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.logging import print_log
from torch.utils.data import Dataset
from tqdm import tqdm

# Datasets with at least this many images show a progress bar.
PROGRESS_FROM = 10000
# Above this share of missing images, the paths are wrong, not the files.
MOSTLY_MISSING = 0.5
# How many missing paths an error names per dataset.
_SHOWN_PATHS = 5


class MissingImages(NamedTuple):
    """The images of one dataset that are not on disk."""
    dataset: str
    num_images: int
    paths: List[str]


def missing_images(name: str, dataset: Dataset) -> Optional[MissingImages]:
    """The images (data infos' ``img_path``) of a built dataset that do not
    exist.

    Returns:
        MissingImages or None: None when the images are not on the local
        disk (``backend_args`` naming another storage), which is not checked.
    """
    paths = [dataset.get_data_info(i).get('img_path')
             for i in range(len(dataset))]
    paths = [path for path in paths if path is not None]
    if not paths:
        return MissingImages(name, 0, [])
    backend = get_file_backend(
        paths[0], backend_args=getattr(dataset, 'backend_args', None))
    if not isinstance(backend, LocalBackend):
        print_log(f'dataset {name!r}: images on {type(backend).__name__} are '
                  f'not checked before training.', logger='current')
        return None
    show_progress = len(paths) >= PROGRESS_FROM and is_main_process()
    missing = [path for path in tqdm(paths, desc=f'{name}: images',
                                     unit='img', disable=not show_progress)
               if not osp.isfile(path)]
    return MissingImages(name, len(paths), missing)


def _describe(found: MissingImages, dataset: Dataset) -> str:
    verb = 'is' if len(found.paths) == 1 else 'are'
    count = (f'{len(found.paths)} of {found.num_images} images {verb} '
             f'missing')
    if len(found.paths) > MOSTLY_MISSING * found.num_images:
        folder = osp.dirname(found.paths[0])
        folder_state = ('exists' if osp.isdir(folder)
                        else 'does not exist')
        return (f'dataset {found.dataset!r}: {count}, e.g. {found.paths[0]} '
                f'(its folder {folder} {folder_state}). When all or most '
                f'images are missing, img_prefix (data_prefix in a full '
                f'dataset config) or data_root is the likely cause: an image '
                f'is read from data_root + img_prefix + its file_name; this '
                f'entry has data_root={getattr(dataset, "data_root", None)!r}, '
                f'data_prefix={getattr(dataset, "data_prefix", None)!r}.')
    shown = ', '.join(found.paths[:_SHOWN_PATHS])
    more = len(found.paths) - _SHOWN_PATHS
    ann_file = getattr(dataset, 'ann_file', None) or 'the annotations'
    return (f'dataset {found.dataset!r}: {count}: {shown}'
            f'{f" and {more} more" if more > 0 else ""}. Restore them, or '
            f'remove these images and their boxes from {ann_file}.')


def check_image_files(datasets: Mapping[str, Dataset]) -> None:
    """Raise unless every image of every dataset exists.

    Args:
        datasets: Dataset name -> the built dataset, in mixture order.

    Raises:
        FileNotFoundError: Some images are missing: every dataset with
            missing images is named with the count and the first paths.
    """
    problems = []
    for name, dataset in datasets.items():
        found = missing_images(name, dataset)
        if found is not None and found.paths:
            problems.append(_describe(found, dataset))
    if problems:
        raise FileNotFoundError(
            'images of the DatasetMixture are missing (mmdet would stop at '
            'the first one mid-training):\n' + '\n'.join(
                f'- {problem}' for problem in problems))
