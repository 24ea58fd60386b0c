"""WIDER FACE ``wider_face_<split>_bbx_gt.txt`` -> COCO.

Per image: a line with the image path (relative to ``WIDER_<split>/images``), a line with
the face count, then one line per face ``x y w h blur expression illumination invalid
occlusion pose``. An image with 0 faces is followed by one placeholder line of zeros.
"""
from typing import List, Optional, Tuple

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES
from .coco_builder import CocoBuilder, Conversion, ConversionError, PathLike, read_lines

WIDERFACE_CLASSES = UODB_CLASSES['widerface']
_FIELDS_PER_FACE = 10
_INVALID_FIELD = 7


def widerface_to_coco(gt_file: PathLike,
                      img_dir: PathLike,
                      file_name_root: Optional[PathLike] = None,
                      progress: bool = False) -> Conversion:
    """Convert a WIDER FACE ground-truth file to a COCO dict.

    Args:
        gt_file: ``wider_face_split/wider_face_<split>_bbx_gt.txt``.
        img_dir: ``WIDER_<split>/images``.
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        progress: show a progress bar over the images.

    Returns:
        The COCO dict and statistics; faces flagged ``invalid`` get ``iscrowd=1``.
    """
    builder = CocoBuilder(WIDERFACE_CLASSES, img_dir, file_name_root)
    for file_name, where, faces in tqdm(_read_gt_file(gt_file), desc='WIDER FACE',
                                        unit='img', disable=not progress):
        image_id = builder.add_image(file_name, where=where)
        if image_id is None:
            continue
        for face_where, values in faces:
            x, y, w, h = values[:4]
            builder.add_box(image_id, 'face', x, y, x + w, y + h, face_where,
                            ignore=values[_INVALID_FIELD] == 1)
    return builder.build()


def _read_gt_file(gt_file: PathLike) -> List[Tuple[str, str, List[Tuple[str, List[float]]]]]:
    """Parse the whole file first, so that a malformed line stops the conversion before
    any work and the progress bar knows the image count."""
    lines = [(number, text) for number, text in
             read_lines(gt_file, 'wider_face_<split>_bbx_gt.txt', '*_bbx_gt.txt') if text]
    images = []
    index = 0
    while index < len(lines):
        name_line, file_name = lines[index]
        if _numbers(file_name) is not None:
            raise ConversionError(
                f'{gt_file}:{name_line}: expected an image path, found numbers. The face '
                'count of the image above is probably wrong.')
        if index + 1 == len(lines):
            raise ConversionError(f'{gt_file}:{name_line}: {file_name} has no face-count line')
        count_line, count_text = lines[index + 1]
        if not count_text.isdigit():
            raise ConversionError(f'{gt_file}:{count_line}: expected the face count of '
                                  f"{file_name}, got '{count_text}'")
        count = int(count_text)
        index += 2
        # The official files put one line of zeros after a count of 0.
        if count == 0 and index < len(lines) and _numbers(lines[index][1]) is not None:
            index += 1
        faces = []
        for face_line, text in lines[index:index + count]:
            values = _numbers(text)
            if values is None or len(values) != _FIELDS_PER_FACE:
                raise ConversionError(
                    f'{gt_file}:{face_line}: expected {_FIELDS_PER_FACE} numbers '
                    '(x y w h blur expression illumination invalid occlusion pose) for face '
                    f'{len(faces) + 1} of {count} of {file_name}, got \'{text}\'')
            faces.append((f'{gt_file}:{face_line}', values))
        if len(faces) < count:
            raise ConversionError(f'{gt_file}: the file ends after {len(faces)} of the '
                                  f'{count} faces of {file_name} (line {name_line})')
        index += count
        images.append((file_name, f'{gt_file}:{name_line}', faces))
    return images


def _numbers(text: str) -> Optional[List[float]]:
    """The line's fields as floats, or ``None`` if any field is not a number."""
    try:
        return [float(field) for field in text.split()]
    except ValueError:
        return None
