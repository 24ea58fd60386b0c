"""dlib imglab XML -> COCO.

``<images><image file='...'><box top='' left='' width='' height='' [ignore='1']>`` with an
optional ``<label>`` child per box. dlib stores whole-pixel rectangles whose
``width``/``height`` count pixels, so ``left + width`` is the continuous right edge.
"""
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence, Tuple

from tqdm import tqdm

from .coco_builder import CocoBuilder, Conversion, ConversionError, PathLike, require_file

DLIB_FACE_CLASSES = ('face', )


def dlib_to_coco(xml_file: PathLike,
                 img_dir: Optional[PathLike] = None,
                 file_name_root: Optional[PathLike] = None,
                 classes: Sequence[str] = DLIB_FACE_CLASSES,
                 skip_unknown: bool = False,
                 fix_sizes: bool = False,
                 progress: bool = False) -> Conversion:
    """Convert a dlib imglab dataset XML to a COCO dict.

    Args:
        xml_file: the imglab XML (e.g. dlib's ``examples/faces/training.xml``).
        img_dir: folder the ``file`` attributes are relative to; the XML's folder by
            default, as imglab writes them.
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        classes: class names in category-id order. A box without ``<label>`` belongs to
            the only class when there is one.
        skip_unknown: drop (and count) boxes whose label is not in ``classes``.
        fix_sizes: when an image's ``width``/``height`` in the XML differ from the image
            file's, use the file's and count it, instead of stopping with an error.
        progress: show a progress bar over the images.

    Returns:
        The COCO dict and statistics; boxes with ``ignore='1'`` get ``iscrowd=1``.
    """
    xml_file = require_file(xml_file, 'the imglab dataset XML', '*.xml')
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as error:
        raise ConversionError(f'{xml_file}:{error.position[0]}: not well-formed XML ({error})')
    images = root.findall('images/image')
    if not images:
        raise ConversionError(f'{xml_file}: no <images><image> element. Is this an imglab XML?')

    builder = CocoBuilder(classes, xml_file.parent if img_dir is None else img_dir,
                          file_name_root, fix_sizes)
    for image_index, image in enumerate(tqdm(images, desc='dlib XML', unit='img',
                                             disable=not progress), start=1):
        file_name = image.get('file')
        where = f'{xml_file} (image {image_index}: {file_name})'
        if not file_name:
            raise ConversionError(f'{where}: <image> without a file attribute')
        image_id = builder.add_image(file_name, where, size=_size(image))
        if image_id is None:
            continue
        for box_index, box in enumerate(image.findall('box'), start=1):
            box_where = f'{where} box {box_index}'
            class_name = _class_of(box, builder.classes, box_where)
            if class_name not in builder.classes:
                if skip_unknown:
                    builder.stats.skip(f"label '{class_name}' not in the class list", box_where)
                    continue
                raise ConversionError(f"{box_where}: label '{class_name}' is not one of "
                                      f'{list(builder.classes)}. Pass --classes or '
                                      '--skip-unknown.')
            try:
                left, top, width, height = (float(box.get(name))
                                            for name in ('left', 'top', 'width', 'height'))
            except (TypeError, ValueError):
                raise ConversionError(f'{box_where}: needs numeric top, left, width and '
                                      'height attributes') from None
            builder.add_box(image_id, class_name, left, top, left + width, top + height,
                            box_where, ignore=box.get('ignore') == '1')
    return builder.build()


def _size(image: ET.Element) -> Optional[Tuple[int, int]]:
    """``(width, height)`` when the XML has them (newer imglab writes them), else ``None``."""
    try:
        return int(image.get('width')), int(image.get('height'))
    except (TypeError, ValueError):
        return None


def _class_of(box: ET.Element, classes: Tuple[str, ...], where: str) -> str:
    label = (box.findtext('label') or '').strip()
    if label:
        return label
    if len(classes) == 1:
        return classes[0]
    raise ConversionError(f'{where}: a box without <label> is ambiguous with several classes '
                          f'{list(classes)}. Label it, or convert with one class.')
