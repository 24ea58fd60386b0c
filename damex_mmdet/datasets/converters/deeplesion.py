"""DeepLesion ``DL_info.csv`` -> COCO.

One csv row per lesion: ``File_name`` (``<patient>_<study>_<series>_<slice>.png``, the key
CT slice), ``Bounding_boxes`` (``"x1, y1, x2, y2"`` in 0-based pixels) and
``Train_Val_Test`` (1 train, 2 val, 3 test); slices with several lesions have several rows.
The images are unpacked as ``Images_png/<patient>_<study>_<series>/<slice>.png``.
"""
import csv
import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES
from .coco_builder import CocoBuilder, Conversion, ConversionError, PathLike, read_text

DEEPLESION_CLASSES = UODB_CLASSES['deeplesion']
# Split name -> values of the Train_Val_Test column.
DEEPLESION_SPLITS = dict(train=('1', ), val=('2', ), test=('3', ), trainval=('1', '2'))
_COLUMNS = ('File_name', 'Bounding_boxes', 'Train_Val_Test')


def deeplesion_image_path(file_name: str) -> str:
    """Map a csv ``File_name`` to its image path below ``Images_png``:
    ``000001_01_01_109.png`` -> ``000001_01_01/109.png``."""
    series, separator, slice_file = file_name.rpartition('_')
    if not separator or not series or not slice_file:
        raise ConversionError(f"File_name '{file_name}' is not "
                              '<patient>_<study>_<series>_<slice>.png')
    return f'{series}/{slice_file}'


def deeplesion_to_coco(info_csv: PathLike,
                       img_dir: PathLike,
                       file_name_root: Optional[PathLike] = None,
                       split: str = 'trainval',
                       progress: bool = False) -> Conversion:
    """Convert one split of DeepLesion's ``DL_info.csv`` to a COCO dict.

    Args:
        info_csv: ``DL_info.csv``.
        img_dir: the ``Images_png`` folder.
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        split: one of :data:`DEEPLESION_SPLITS` (UODB trains on ``trainval``, tests on
            ``test``).
        progress: show a progress bar over the images.
    """
    if split not in DEEPLESION_SPLITS:
        raise ConversionError(f"unknown split '{split}': use one of {list(DEEPLESION_SPLITS)}")
    builder = CocoBuilder(DEEPLESION_CLASSES, img_dir, file_name_root)
    lesions_by_slice = _read_rows(Path(info_csv), DEEPLESION_SPLITS[split])
    if not lesions_by_slice:
        raise ConversionError(f"{info_csv}: no row of split '{split}' (Train_Val_Test in "
                              f'{DEEPLESION_SPLITS[split]})')
    for file_name, lesions in tqdm(lesions_by_slice.items(), desc='DeepLesion', unit='img',
                                   disable=not progress):
        image_id = builder.add_image(file_name, where=lesions[0][0])
        if image_id is None:
            continue
        for where, corners in lesions:
            builder.add_box(image_id, 'lesion', *corners, where)
    return builder.build()


def _read_rows(info_csv: Path,
               split_codes: Tuple[str, ...]) -> Dict[str, List[Tuple[str, Tuple[float, ...]]]]:
    """Group the rows of the split by image path, keeping the csv's order."""
    text = read_text(info_csv, "DeepLesion's DL_info.csv", '*.csv')
    lesions_by_slice: Dict[str, list] = {}
    with io.StringIO(text, newline='') as stream:
        reader = csv.DictReader(stream)
        missing = [name for name in _COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f'{info_csv}:1: columns {missing} missing from the header. '
                                  'Is this DeepLesion\'s DL_info.csv?')
        for row in reader:
            where = f'{info_csv}:{reader.line_num}'
            split_code = (row['Train_Val_Test'] or '').strip()
            if split_code not in ('1', '2', '3'):
                raise ConversionError(f"{where}: Train_Val_Test must be 1, 2 or 3, got "
                                      f"'{split_code}'. Fix or delete the line.")
            if split_code not in split_codes:
                continue
            try:
                corners = tuple(float(value) for value in row['Bounding_boxes'].split(','))
            except (AttributeError, ValueError):
                corners = ()
            if len(corners) != 4:
                raise ConversionError(f"{where}: Bounding_boxes must be 'x1, y1, x2, y2', got "
                                      f"'{row['Bounding_boxes']}'. Fix or delete the line.")
            try:
                image_path = deeplesion_image_path(row['File_name'].strip())
            except ConversionError as error:
                raise ConversionError(f'{where}: {error}') from None
            lesions_by_slice.setdefault(image_path, []).append((where, corners))
    return lesions_by_slice
