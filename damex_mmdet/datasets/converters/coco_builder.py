"""Build, validate and write the COCO detection json that every converter produces.

Conventions shared by all converters:

- categories get ids ``1..K`` in the order of the class list the caller gives, so the
  json's class order is the dataset's metainfo ``classes`` order in mmdet;
- images get ids ``1..N`` in conversion order; ``file_name`` is relative to the image
  folder the converter was given, or to ``file_name_root``, a folder above it (the
  ``data_prefix.img`` of an mmdet config), when the images of a dataset's splits lie in
  different subfolders;
- boxes are ``[x, y, w, h]`` in 0-based continuous pixel coordinates, clipped to the
  image; boxes with no area (before or after clipping) are dropped and counted;
- boxes the source format marks as "do not count" (VOC ``difficult``, DOTA difficulty,
  WiderFace ``invalid``, dlib ``ignore``) get ``iscrowd: 1``: that is the flag both
  pycocotools (an ignore region during evaluation) and mmdet's ``CocoDataset``
  (``ignore_flag = 1``, kept out of the training targets) honour. COCO's optional
  ``ignore`` key is not written because mmdet would silently delete such boxes.
- an image whose file is missing is skipped and counted (conversion of a partial
  download still works); a split in which every image is missing is an error;
- ``width``/``height`` are the image's size as mmdet loads it (read from the file's
  header, EXIF orientation applied). A size written in the annotation that disagrees is
  an error, or is replaced by the file's size with a counted warning (``fix_sizes``).
"""
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from PIL import Image

PathLike = Union[str, Path]

# Extensions tried, in this order, when an annotation names an image only by its stem.
IMAGE_EXTENSIONS = ('.jpg', '.png', '.jpeg', '.bmp', '.tif', '.tiff')

# Coordinates are stored with 2 decimals: finer than any annotation tool's precision,
# and it keeps float noise such as 221.99999999999997 out of the json.
_DECIMALS = 2
# How far an area may exceed its box's width x height by rounding, as a share of it.
_AREA_ROUNDING_SHARE = 0.01
# Per skip reason, how many offending places the summary names.
_EXAMPLES_PER_REASON = 3
# The EXIF tag of the camera's orientation; values 5 to 8 turn the image by 90 degrees.
_EXIF_ORIENTATION = 0x0112
_EXIF_QUARTER_TURNS = (5, 6, 7, 8)


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file, the line and the fix."""


@dataclass
class ConversionStats:
    """What a conversion kept and what it skipped, with examples of where."""

    images: int = 0
    boxes: int = 0
    ignored: int = 0
    clipped: int = 0
    sizes_corrected: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    corrected_size_examples: List[str] = field(default_factory=list)

    def skip(self, reason: str, where: str = '') -> None:
        self.skipped[reason] += 1
        places = self.examples.setdefault(reason, [])
        if where and len(places) < _EXAMPLES_PER_REASON:
            places.append(where)

    def correct_size(self, where: str) -> None:
        self.sizes_corrected += 1
        if len(self.corrected_size_examples) < _EXAMPLES_PER_REASON:
            self.corrected_size_examples.append(where)

    def summary(self) -> str:
        lines = [f'images: {self.images}',
                 f'boxes: {self.boxes} (ignored: {self.ignored}, '
                 f'clipped to the image: {self.clipped})']
        if self.sizes_corrected:
            lines.append(f'warning: {self.sizes_corrected} image size(s) in the annotations '
                         "disagreed with the image files and were replaced by the files' "
                         f'sizes  e.g. {", ".join(self.corrected_size_examples)}')
        if not self.skipped:
            lines.append('skipped: nothing')
        else:
            lines.append('skipped:')
            for reason, count in self.skipped.most_common():
                places = self.examples.get(reason)
                where = f'  e.g. {", ".join(places)}' if places else ''
                lines.append(f'  {count} x {reason}{where}')
        return '\n'.join(lines)


class Conversion(NamedTuple):
    """A converter's result: the COCO dict and the counts to show the user."""

    coco: dict
    stats: ConversionStats


def find_image(img_dir: Path, file_name: Optional[str], stem: str) -> Optional[str]:
    """Return the path, relative to ``img_dir``, of the image an annotation refers to.

    ``file_name`` (as written in the annotation) wins when it exists; otherwise ``stem``
    with each of :data:`IMAGE_EXTENSIONS`, because several formats only give the stem
    or a file name whose extension does not match the shipped images.
    """
    if file_name and (img_dir / file_name).is_file():
        return file_name
    stems = [stem] + ([Path(file_name).stem] if file_name else [])
    for candidate_stem in stems:
        for ext in IMAGE_EXTENSIONS:
            if (img_dir / (candidate_stem + ext)).is_file():
                return candidate_stem + ext
    return None


def read_image_size(path: Path) -> Tuple[int, int]:
    """Return ``(width, height)`` of the image as mmdet loads it, from the file's header.

    PIL reads only the header until the pixels are asked for. mmcv's decoders turn a
    photo upright by its EXIF orientation, so a quarter turn swaps width and height.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            exif_bytes = image.info.get('exif')
    except OSError as error:
        raise ConversionError(f'{path}: cannot read the image size ({error}). '
                              'Re-download or remove the file.') from error
    if exif_bytes:
        exif = Image.Exif()
        exif.load(exif_bytes)
        if exif.get(_EXIF_ORIENTATION) in _EXIF_QUARTER_TURNS:
            return height, width
    return width, height


def _check_classes(classes: Sequence[str]) -> Tuple[str, ...]:
    classes = tuple(classes)
    if not classes:
        raise ConversionError('the class list is empty: give at least one class')
    if len(set(classes)) != len(classes):
        duplicates = sorted({name for name in classes if classes.count(name) > 1})
        raise ConversionError(f'duplicate class names {duplicates}: each class once')
    return classes


def _folder_below(img_dir: Path, file_name_root: Optional[PathLike]) -> str:
    """The path of ``img_dir`` below ``file_name_root`` as a ``file_name`` prefix
    (``''`` or ``'sub/dir/'``)."""
    if file_name_root is None:
        return ''
    # Compare the paths as given first, so that a symlinked root still works, then the
    # resolved ones.
    for folder, root in ((Path(os.path.abspath(img_dir)), Path(os.path.abspath(file_name_root))),
                         (img_dir.resolve(), Path(file_name_root).resolve())):
        try:
            below = folder.relative_to(root).as_posix()
        except ValueError:
            continue
        return '' if below == '.' else below + '/'
    raise ConversionError(f'the image folder {img_dir} is not inside file_name_root '
                          f'{file_name_root}: pass a folder that contains it')


class CocoBuilder:
    """Accumulates the images and boxes of one dataset split into a COCO dict."""

    def __init__(self, classes: Sequence[str], img_dir: PathLike,
                 file_name_root: Optional[PathLike] = None, fix_sizes: bool = False) -> None:
        self.classes = _check_classes(classes)
        self.img_dir = Path(img_dir)
        self.fix_sizes = fix_sizes
        self._name_prefix = _folder_below(self.img_dir, file_name_root)
        self.stats = ConversionStats()
        self._category_ids = {name: index + 1 for index, name in enumerate(self.classes)}
        self._images: List[dict] = []
        self._sizes: Dict[int, Tuple[int, int]] = {}
        self._annotations: List[dict] = []
        self._file_names = set()

    def add_image(self, file_name: Optional[str], where: str,
                  size: Optional[Tuple[int, int]] = None) -> Optional[int]:
        """Register an image and return its id; ``None`` (skipped) when the file is missing.

        Args:
            file_name: path relative to ``img_dir``, ``None`` when not found.
            where: the annotation that refers to it, for messages.
            size: ``(width, height)`` given by the annotation, ``None`` when it has none;
                the image file's size is used, and a different positive size is an
                error unless ``fix_sizes``.
        """
        if file_name is None or not (self.img_dir / file_name).is_file():
            self.stats.skip('image file missing', where)
            return None
        image_size = read_image_size(self.img_dir / file_name)
        if size is not None and min(size) > 0 and tuple(size) != image_size:
            if not self.fix_sizes:
                raise ConversionError(
                    f'{where}: the annotation gives the image size {size[0]}x{size[1]}, but '
                    f'the image {self.img_dir / file_name} is {image_size[0]}x'
                    f'{image_size[1]}, and its boxes would be clipped to the wrong size. '
                    'Correct the size in the annotation, or pass --fix-sizes '
                    "(fix_sizes=True) to use the image's size.")
            self.stats.correct_size(where)
        width, height = image_size
        file_name = self._name_prefix + file_name
        if file_name in self._file_names:
            raise ConversionError(f'{where}: image {file_name} is annotated twice; '
                                  'merge its annotations or remove the duplicate')
        image_id = len(self._images) + 1
        self._images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        self._sizes[image_id] = (width, height)
        self._file_names.add(file_name)
        self.stats.images += 1
        return image_id

    def add_box(self, image_id: int, class_name: str, x1: float, y1: float, x2: float,
                y2: float, where: str, ignore: bool = False) -> bool:
        """Add a box given by its corners; return whether it was kept."""
        corners = (x1, y1, x2, y2)
        if not all(math.isfinite(value) for value in corners) or x2 <= x1 or y2 <= y1:
            self.stats.skip('box with zero or negative size', where)
            return False
        width, height = self._sizes[image_id]
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                   min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        cx1, cy1, cx2, cy2 = (round(value, _DECIMALS) for value in clipped)
        if cx2 <= cx1 or cy2 <= cy1:
            self.stats.skip('box outside the image', where)
            return False
        if clipped != corners:
            self.stats.clipped += 1
        box_w, box_h = round(cx2 - cx1, _DECIMALS), round(cy2 - cy1, _DECIMALS)
        self._annotations.append(dict(
            id=len(self._annotations) + 1,
            image_id=image_id,
            category_id=self._category_ids[class_name],
            bbox=[cx1, cy1, box_w, box_h],
            area=round(box_w * box_h, _DECIMALS),
            iscrowd=int(ignore)))
        self.stats.boxes += 1
        self.stats.ignored += int(ignore)
        return True

    def build(self) -> Conversion:
        """Return the validated COCO dict and the statistics."""
        if not self._images:
            raise ConversionError(
                f'no image of this split was found under {self.img_dir} '
                f'({self.stats.skipped["image file missing"]} missing). Check the image '
                'folder argument and that the images are downloaded and extracted.')
        coco = dict(
            images=self._images,
            annotations=self._annotations,
            categories=[dict(id=category_id, name=name)
                        for name, category_id in self._category_ids.items()])
        validate_coco(coco)
        return Conversion(coco, self.stats)


def duplicate_ids(entries: Iterable[dict]) -> List:
    """The ``id`` values that more than one of ``entries`` (COCO images or annotations)
    use, in order of first use."""
    counts = Counter(entry.get('id') for entry in entries)
    return [entry_id for entry_id, count in counts.items() if count > 1]


def is_xywh_box(bbox) -> bool:
    """Whether ``bbox`` is a COCO box: a list of 4 finite numbers."""
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) for value in bbox))


def area_exceeds_box(annotation: dict) -> bool:
    """Whether a COCO annotation's ``area`` is larger than its ``bbox``'s width x height.

    An area is the object's mask area, never larger than its box, or the box's area. A
    larger one is wrong (some tools write the image's area for every box), and the COCO
    evaluation would score the box in a larger size range (APs/APm/APl). The area may
    exceed the box by rounding: 1% of it, or 1 square pixel for the smallest boxes.
    """
    _, _, width, height = annotation['bbox']
    box_area = max(width, 0) * max(height, 0)
    return annotation['area'] - box_area > max(_AREA_ROUNDING_SHARE * box_area, 1.0)


def validate_coco(coco: dict) -> None:
    """Raise :class:`ConversionError` unless ``coco`` is a well-formed detection dict."""
    problems = []
    categories = coco.get('categories', [])
    category_ids = [category.get('id') for category in categories]
    if category_ids != list(range(1, len(categories) + 1)):
        problems.append(f'category ids must be 1..K in order, got {category_ids}')
    names = [category.get('name') for category in categories]
    if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        problems.append(f'category names must be unique non-empty strings, got {names}')

    problems += [f'image id {image_id} is used twice'
                 for image_id in duplicate_ids(coco.get('images', []))]
    problems += [f'annotation id {annotation_id} is used twice'
                 for annotation_id in duplicate_ids(coco.get('annotations', []))]
    sizes = {}
    for image in coco.get('images', []):
        image_id, width, height = image.get('id'), image.get('width'), image.get('height')
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            problems.append(f'image {image_id}: width/height must be positive ints')
        if not image.get('file_name'):
            problems.append(f'image {image_id}: empty file_name')
        sizes[image_id] = (width, height)

    for annotation in coco.get('annotations', []):
        annotation_id = annotation.get('id')
        if annotation.get('image_id') not in sizes:
            problems.append(f'annotation {annotation_id}: unknown image_id')
            continue
        if annotation.get('category_id') not in category_ids:
            problems.append(f'annotation {annotation_id}: unknown category_id')
        if annotation.get('iscrowd') not in (0, 1):
            problems.append(f'annotation {annotation_id}: iscrowd must be 0 or 1')
        bbox = annotation.get('bbox')
        width, height = sizes[annotation['image_id']]
        if not is_xywh_box(bbox):
            problems.append(f'annotation {annotation_id}: bbox must be 4 finite numbers')
        elif not (bbox[2] > 0 and bbox[3] > 0 and bbox[0] >= 0 and bbox[1] >= 0
                  and bbox[0] + bbox[2] <= width + 0.01 and bbox[1] + bbox[3] <= height + 0.01):
            problems.append(f'annotation {annotation_id}: bbox {bbox} is empty or outside '
                            f'its {width}x{height} image')
        if not annotation.get('area', 0) > 0:
            problems.append(f'annotation {annotation_id}: area must be positive')
        elif is_xywh_box(bbox) and area_exceeds_box(annotation):
            problems.append(f'annotation {annotation_id}: area {annotation["area"]} is larger '
                            f'than its {bbox[2]:g}x{bbox[3]:g} box')
    if problems:
        shown = '\n  '.join(problems[:10])
        more = f'\n  ... and {len(problems) - 10} more' if len(problems) > 10 else ''
        raise ConversionError(f'invalid COCO dict:\n  {shown}{more}')


def write_coco_json(coco: dict, out_file: PathLike) -> Path:
    """Validate ``coco`` and write it to ``out_file`` atomically; return the path.

    The json goes to a temporary file in the destination folder first and replaces
    ``out_file`` in one step, so an interrupted run never leaves a truncated json
    that a later training run would pick up.
    """
    validate_coco(coco)
    out_file = check_out_file(out_file)
    # Not tempfile.mkstemp: its 0600 mode would survive os.replace and hide the json
    # from the other users of a shared data folder.
    tmp_file = out_file.with_name(f'.{out_file.name}.{os.getpid()}.tmp')
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_file, 'w', encoding='utf-8') as stream:
            json.dump(coco, stream)
        os.replace(tmp_file, out_file)
    except OSError as error:
        tmp_file.unlink(missing_ok=True)
        raise ConversionError(f'{out_file}: cannot write the json ({error.strerror}). Pass a '
                              'writable file path as --out.') from error
    except BaseException:
        tmp_file.unlink(missing_ok=True)
        raise
    return out_file


def check_out_file(out_file: PathLike) -> Path:
    """Return ``out_file`` as a path, or raise :class:`ConversionError` if it is a
    folder, before a long conversion would fail to write it."""
    out_file = Path(out_file)
    if out_file.is_dir():
        raise ConversionError(f'{out_file} is a folder: --out takes the json file to write, '
                              f'e.g. {out_file / "train.json"}')
    return out_file


def require_file(path: PathLike, what: str, pattern: str = '*') -> Path:
    """Return ``path`` if it is a file; otherwise raise :class:`ConversionError` that says
    whether it is missing or a folder (naming a few files in it that match ``pattern``).

    Args:
        path: the file a converter was given.
        what: what the user should pass, for the message (e.g. "the imglab XML").
        pattern: glob of the candidate files to name when ``path`` is a folder.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = sorted(str(candidate) for candidate in path.glob(pattern)
                            if candidate.is_file())[:_EXAMPLES_PER_REASON]
        inside = f', e.g. {", ".join(candidates)}' if candidates else ''
        raise ConversionError(f'{path} is a folder, not a file. Pass {what} inside '
                              f'it{inside}.')
    raise ConversionError(f'{path}: file not found. Pass {what}.')


def read_text(path: PathLike, what: str = 'the annotation file', pattern: str = '*') -> str:
    """The whole text of a UTF-8 file, without the byte-order mark some editors write.

    A byte that is not UTF-8 is an error naming the file, the line and the fix. See
    :func:`require_file` for ``what`` and ``pattern``.
    """
    path = require_file(path, what, pattern)
    raw = path.read_bytes()
    try:
        return raw.decode('utf-8').removeprefix('\ufeff')
    except UnicodeDecodeError as error:
        line = raw.count(b'\n', 0, error.start) + 1
        raise ConversionError(
            f'{path}:{line}: byte 0x{raw[error.start]:02x} is not UTF-8 ({error.reason}). '
            'Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8 if '
            'it is Latin-1.') from None


def read_lines(path: PathLike, what: str = 'the annotation file',
               pattern: str = '*') -> Iterable[Tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` of a UTF-8 text file, line numbers from 1.
    See :func:`require_file` for ``what`` and ``pattern``."""
    text = read_text(path, what, pattern)
    for line_number, line in enumerate(io.StringIO(text, newline=None), start=1):
        yield line_number, line.strip()


def read_id_list(list_file: PathLike) -> List[str]:
    """Read an image-set file (one id per line, extra columns ignored) such as VOC's
    ``ImageSets/Main/<split>.txt``."""
    ids = [line.split()[0] for _, line in read_lines(list_file, 'the image list (one id per '
                                                     'line)', '*.txt') if line]
    if not ids:
        raise ConversionError(f'{list_file}: the image list is empty')
    return ids
