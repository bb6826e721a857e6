"""The common machinery of the dense-label readers (Cityscapes, Virtual KITTI 2, SYNTHIA, Taskonomy, NYUDv2).

Each reader is a ``DenseDataset`` subclass that says where a split's images are (``_index``), which
files each task's label needs (``TASK_FILES``), and how to decode each kind of file (``read_<kind>``
methods, each raising :class:`ReaderError` naming the file). This base class turns that into the raw
sample of ``mtwork.data.bdd100k.BDD100KDataset`` (so ``mtwork.data.transforms``, ``collate``, the losses
and the metrics work unchanged) and ``mtwork.data.dense_check`` into the ``mtwork data check`` of the
format::

    image:    (H,W,3) uint8 RGB                name: str (unique in the split)    orig_size: (H, W)
    semseg:   (H,W) uint8 ids of the reader's label space (``mtwork.data.label_spaces``), 255 ignore
    depth:    (H,W) float32 z-depth in metres, 0 invalid
    normals:  (H,W,3) float32 unit normals, camera frame x right / y down / z forward, facing the
              camera, (0,0,0) invalid: from the dataset's normal files, or derived from depth + camera
              with ``mtwork.tasks.dense_labels.normals_from_depth``
    camera:   (4,) float64 intrinsics (fx, fy, u0, v0) px (with normals, when the dataset has a camera)
    edges:    (H,W) float32 Sobel magnitude in [0, 1] of the image (``sobel_edges``)

A task key is present only when it was requested and the image carries that label.

PNG labels are decoded at their full bit depth by :func:`read_png`: Pillow reduces 16-bit colour PNGs
(SYNTHIA's labels and depth) to 8 bits by keeping the high byte, which would turn class 3 into 0.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from mtwork.data.bdd100k import DatasetError
from mtwork.data.label_spaces import LabelSpace, get_label_space, label_spaces_for

# Problem kinds (the strings ``mtwork.data.check`` uses for BDD100K, plus the dense formats' own).
MISSING = "missing"
CORRUPT_IMAGE = "corrupt_image"
CORRUPT_MASK = "corrupt_mask"  # any unreadable label file (PNG, NPY)
SIZE_MISMATCH = "size_mismatch"
UNKNOWN_ID = "unknown_id"
UNKNOWN_COLOUR = "unknown_colour"
BAD_CAMERA = "bad_camera"  # unreadable camera / intrinsics file, or a value in it that makes no sense
BAD_TABLE = "bad_table"  # a per-sequence table file (VKITTI2 colors.txt) that cannot be parsed
LABEL_WITHOUT_IMAGE = "label_without_image"
NORMALS_FRAME = "normals_frame"  # normal files disagree with the normals of their own depth


class ReaderError(DatasetError):
    """Bad data in one file: ``path`` is the file, ``kind`` one of the problem kinds above."""

    def __init__(self, kind: str, path: Path | str, message: str):
        super().__init__(f"{path}: {message}")
        self.kind = kind
        self.path = str(path)
        self.detail = message


@dataclass(frozen=True)
class IndexProblem:
    """A file the layout says should be there and is not (or one that has no image): found by ``_index``.

    ``tasks``: the tasks whose labels are affected (empty: the image itself, i.e. every task).
    """

    kind: str
    path: str
    message: str
    tasks: Tuple[str, ...] = ()


@dataclass
class Entry:
    """One image of a split: ``files`` maps each file kind the image has to its path."""

    name: str
    image: Path
    files: Dict[str, Path] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# File decoding
# ---------------------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    """RGB image -> (H,W,3) uint8 (fully decoded, so a truncated JPEG fails here)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise ReaderError(MISSING, path, "image file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ReaderError(CORRUPT_IMAGE, path, f"unreadable or corrupt image ({err})") from None


def image_size(path: Path) -> Tuple[int, int]:
    """(H, W) from the image header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise ReaderError(MISSING, path, "image file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ReaderError(CORRUPT_IMAGE, path, f"unreadable or corrupt image ({err})") from None


def _decode_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    with Image.open(path) as img:
        (tile,) = img.tile
        # Pillow >= 11 keeps tiles as a namedtuple, older versions as plain tuples
        img.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
        img.load()
        return np.asarray(img)


def read_png(path: Path, what: str) -> np.ndarray:
    """A PNG at its full bit depth: (H,W) or (H,W,C) uint8 / uint16. ``what`` names it in errors.

    8-bit files and 16-bit grayscale come straight from Pillow. For 16-bit RGB(A) Pillow's own
    decoder keeps only the high byte of each sample; the same zlib stream is decoded twice instead,
    once unpacked as big-endian (high bytes) and once as little-endian (low bytes) samples, and the
    two are put together. PNG filtering works on whole pixels (6 or 8 bytes), which both unpackings
    share, so the result is exact.
    """
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ReaderError(CORRUPT_MASK, path, f"{what}: expected a PNG file, got {img.format}")
            tile = img.tile
            rawmode = tile[0][3] if len(tile) == 1 and isinstance(tile[0][3], str) else None
            if img.mode in ("RGB", "RGBA") and rawmode in ("RGB;16B", "RGBA;16B"):
                mode = rawmode.split(";")[0]
                high = _decode_with_rawmode(path, f"{mode};16B").astype(np.uint16)
                low = _decode_with_rawmode(path, f"{mode};16L").astype(np.uint16)
                return (high << 8) | low
            if img.mode in ("RGB", "RGBA", "L", "P", "I;16", "I;16B", "I"):
                array = np.asarray(img)
                if array.dtype == np.int32:  # mode "I" from a 16-bit grayscale PNG
                    array = array.astype(np.uint16)
                return array
            raise ReaderError(CORRUPT_MASK, path, f"{what}: unsupported PNG mode {img.mode}")
    except FileNotFoundError:
        raise ReaderError(MISSING, path, f"{what} file not found") from None
    except ReaderError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError) as err:
        raise ReaderError(CORRUPT_MASK, path, f"unreadable or corrupt {what} ({err})") from None


def read_npy(path: Path, what: str) -> np.ndarray:
    """A .npy array (no pickles); ``what`` names it in errors."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ReaderError(MISSING, path, f"{what} file not found") from None
    except (OSError, ValueError, EOFError) as err:
        raise ReaderError(CORRUPT_MASK, path, f"unreadable or corrupt {what} ({err})") from None


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ReaderError(MISSING, path, f"{what} file not found") from None
    except (OSError, ValueError) as err:
        raise ReaderError(BAD_CAMERA, path, f"{what} is not valid JSON ({err})") from None


def check_intrinsics(values: Sequence[float], path: Path) -> np.ndarray:
    """(fx, fy, u0, v0) -> (4,) float64; ReaderError unless finite with positive focal lengths."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != (4,) or not np.isfinite(array).all() or array[0] <= 0 or array[1] <= 0:
        raise ReaderError(BAD_CAMERA, path, f"intrinsics (fx, fy, u0, v0) must be finite with fx, fy > 0, got {list(values)}")
    return array


def ids_in_table(ids: np.ndarray, known: np.ndarray, path: Path, what: str) -> None:
    """ReaderError(UNKNOWN_ID) listing the values of ``ids`` that ``known`` (bool per value) rejects."""
    values = np.unique(ids)
    bad = values[(values >= known.size) | ~known[np.minimum(values, known.size - 1)]]
    if bad.size:
        counts = {int(v): int((ids == v).sum()) for v in bad[:10]}
        raise ReaderError(UNKNOWN_ID, path, f"{what} has ids outside the dataset's table: "
                          + ", ".join(f"{v} ({n} px)" for v, n in counts.items()))


def unit_normals(vectors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H,W,3) -> float32 unit vectors where ``valid`` (and the length > 0), (0,0,0) elsewhere."""
    vectors = vectors.astype(np.float64)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    ok = valid & (norm[..., 0] > 1e-6)
    return np.where(ok[..., None], vectors / np.where(norm > 1e-6, norm, 1.0), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The base dataset
# ---------------------------------------------------------------------------------------------


class DenseDataset(torch.utils.data.Dataset):
    """Base of the dense-label readers; see the module docstring for the sample layout.

    Arguments: ``root`` (the dataset root, layout in the subclass docstring), ``split`` (one of
    ``SPLITS``), ``tasks`` (subset of ``TASKS``; default all), ``transform`` (applied to the raw
    sample, e.g. ``mtwork.data.transforms.TrainTransform``), ``label_space`` (a name of
    ``mtwork.data.label_spaces``; default ``DEFAULT_LABEL_SPACE``), ``strict``: when True (default) a
    requested label that the layout says should exist and does not is a ``DatasetError`` naming the
    missing files; when False such images simply do not carry that label. ``normals_axes`` (formats
    with normal files): signs (+-1, +-1, +-1) applied to the decoded normals, for a copy whose files
    use another axis convention than the reader's (``mtwork data check`` says which). ``allow_empty``
    (for the data check): a split without images is no error.
    """

    name: ClassVar[str] = ""
    TASKS: ClassVar[Tuple[str, ...]] = ()
    SPLITS: ClassVar[Tuple[str, ...]] = ()
    #: Splits ``mtwork data check`` looks at by default, and reader options it uses (so that it sees
    #: every file of the release, e.g. both stereo cameras).
    CHECK_SPLITS: ClassVar[Tuple[str, ...]] = ()
    #: Splits the check looks at only when the copy has images of them (e.g. Cityscapes' test).
    OPTIONAL_CHECK_SPLITS: ClassVar[Tuple[str, ...]] = ()
    CHECK_OPTIONS: ClassVar[Mapping[str, Any]] = {}
    DEFAULT_LABEL_SPACE: ClassVar[Optional[str]] = None
    #: task -> the file kinds its label needs (edges need only the image).
    TASK_FILES: ClassVar[Mapping[str, Tuple[str, ...]]] = {}
    #: task -> file kinds read with it when the image has them (e.g. a camera beside file normals).
    OPTIONAL_FILES: ClassVar[Mapping[str, Tuple[str, ...]]] = {}
    #: Decoded file kinds that are pixel maps and must have the image's size.
    MAP_KINDS: ClassVar[Tuple[str, ...]] = ("semseg", "depth", "normals")

    def __init__(self, root: str | os.PathLike, split: str, tasks: Optional[Sequence[str]] = None,
                 transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
                 label_space: Optional[str] = None, strict: bool = True, allow_empty: bool = False,
                 normals_axes: Optional[Sequence[int]] = None):
        self.root = Path(root)
        if normals_axes is not None:
            if "normals" not in self.TASK_FILES.get("normals", ()):
                raise ValueError(f"{self.name}: normals_axes applies to normals read from files; this format derives "
                                 "them from depth")
            if len(normals_axes) != 3 or any(v not in (1, -1) for v in normals_axes):
                raise ValueError(f"{self.name}: normals_axes must be three signs (+-1), got {normals_axes!r}")
        self.normals_axes = None if normals_axes is None else np.asarray(normals_axes, dtype=np.float32)
        if split not in self.SPLITS:
            raise ValueError(f"{self.name}: unknown split '{split}' (known: {', '.join(self.SPLITS)})")
        self.split = split
        tasks = tuple(self.TASKS if tasks is None else tasks)
        unknown = [t for t in tasks if t not in self.TASKS]
        if unknown or not tasks:
            raise ValueError(f"{self.name}: tasks {list(tasks)!r}: each must be one of {', '.join(self.TASKS)}")
        self.tasks = tasks
        self.transform = transform
        self.label_space: Optional[LabelSpace] = None
        if "semseg" in self.TASKS:
            space = label_space or self.DEFAULT_LABEL_SPACE
            self.label_space = get_label_space(space)
            if self.name not in self.label_space.mapping:
                raise ValueError(f"{self.name}: label space '{space}' does not map this dataset "
                                 f"(spaces that do: {', '.join(label_spaces_for(self.name))})")
        elif label_space is not None:
            raise ValueError(f"{self.name} has no semantic labels: label_space must be None")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found")

        entries, problems = self._index()
        self.index_problems: List[IndexProblem] = problems
        blocking = [p for p in problems if p.kind == MISSING and (not p.tasks or set(p.tasks) & set(self.tasks))]
        if strict and blocking:
            shown = "; ".join(f"{p.path}: {p.message}" for p in blocking[:5])
            more = f" (and {len(blocking) - 5} more)" if len(blocking) > 5 else ""
            raise DatasetError(f"{self.name} {split}: {len(blocking)} missing file(s): {shown}{more} "
                               f"(run `mtwork data check --format {self.name} {self.root}` to list all, or "
                               "pass strict=False to read those images without the label)")
        self.entries: List[Entry] = [e for e in entries if any(self.has_label(e, t) for t in self.tasks)]
        if not self.entries and not allow_empty:
            if entries:
                raise DatasetError(f"{self.name} {split}: none of the {len(entries)} images under {self.root} carries a "
                                   f"label for {', '.join(self.tasks)}")
            raise DatasetError(f"{self.name} {split}: no images found under {self.root} ({self.layout_hint()})")
        self.names: List[str] = [e.name for e in self.entries]

    # -- what subclasses provide ------------------------------------------------------------------
    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        """The split's images (sorted by name) with their files, and the problems of the layout."""
        raise NotImplementedError

    def layout_hint(self) -> str:
        """Where the images of a split are expected (for error messages)."""
        return "see the reader's docstring"

    # -- reading ----------------------------------------------------------------------------------
    def read(self, kind: str, entry: Entry) -> Any:
        """Decode file kind ``kind`` of ``entry`` (ReaderError naming the file on bad data)."""
        if kind == "image":
            return read_rgb(entry.image)
        reader = getattr(self, f"read_{kind}", None)
        if reader is None:
            raise KeyError(f"{self.name}: no reader for file kind '{kind}'")
        return reader(entry)

    def has_label(self, entry: Entry, task: str) -> bool:
        return all(kind in entry.files for kind in self.TASK_FILES.get(task, ()))

    def file_kinds(self, entry: Entry, tasks: Sequence[str]) -> List[str]:
        """The file kinds to read for ``tasks`` of ``entry`` (needed ones first, then optional ones)."""
        kinds: List[str] = []
        for task in tasks:
            if not self.has_label(entry, task):
                continue
            for kind in (*self.TASK_FILES.get(task, ()), *self.OPTIONAL_FILES.get(task, ())):
                if kind in entry.files and kind not in kinds:
                    kinds.append(kind)
        return kinds

    def decode(self, entry: Entry, tasks: Sequence[str],
               on_problem: Optional[Callable[[ReaderError], None]] = None) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
        """(image, {file kind: decoded value}) for ``tasks``, map kinds checked against the image size.

        A bad file raises its ReaderError; with ``on_problem`` (the data check) it is handed over
        instead and that file is left out (the image too: then ``(None, {})``).
        """
        try:
            image = read_rgb(entry.image)
        except ReaderError as err:
            if on_problem is None:
                raise
            on_problem(err)
            return None, {}
        size = image.shape[:2]
        values: Dict[str, Any] = {}
        for kind in self.file_kinds(entry, tasks):
            try:
                value = self.read(kind, entry)
                if kind in self.MAP_KINDS and tuple(value.shape[:2]) != tuple(size):
                    raise ReaderError(SIZE_MISMATCH, entry.files[kind], f"{kind} is {value.shape[0]}x{value.shape[1]} "
                                      f"but its image {entry.image} is {size[0]}x{size[1]}")
            except ReaderError as err:
                if on_problem is None:
                    raise
                on_problem(err)
                continue
            if kind == "normals" and self.normals_axes is not None:
                value = value * self.normals_axes  # zero vectors stay zero
            values[kind] = value
        return image, values

    def raw_sample(self, index: int) -> Dict[str, Any]:
        """The sample before any transform (layout in the module docstring)."""
        entry = self.entries[index]
        tasks = [t for t in self.tasks if self.has_label(entry, t)]
        image, values = self.decode(entry, tasks)
        sample: Dict[str, Any] = {"image": image, "name": entry.name, "orig_size": tuple(image.shape[:2])}
        if "semseg" in tasks:
            sample["semseg"] = values["semseg"]
        if "depth" in tasks:
            sample["depth"] = values["depth"]
        if "normals" in tasks:
            if "normals" in values:
                sample["normals"] = values["normals"]
            else:
                # imported here: importing mtwork.tasks registers every task module, which a reader
                # that is not asked for derived labels has no need to pay for
                from mtwork.tasks.dense_labels import normals_from_depth

                sample["normals"] = normals_from_depth(values["depth"], values["camera"])
            if "camera" in values:
                sample["camera"] = values["camera"]
        if "edges" in tasks:
            from mtwork.tasks.dense_labels import sobel_edges

            sample["edges"] = sobel_edges(image)
        return sample

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = self.raw_sample(index)
        return self.transform(sample) if self.transform is not None else sample

    # -- the BDD100KDataset interface the training code uses ---------------------------------------
    def labeled_counts(self) -> Dict[str, int]:
        """{task: number of images carrying that label}, for the requested tasks."""
        return {t: sum(self.has_label(e, t) for e in self.entries) for t in self.tasks}

    def tasks_of(self, index: int) -> Tuple[str, ...]:
        """The requested tasks that image ``index`` carries labels for (no file is read)."""
        return tuple(t for t in self.tasks if self.has_label(self.entries[index], t))

    def image_size(self, index: int) -> Tuple[int, int]:
        """(H, W) of image ``index`` on disk, read from its header."""
        return image_size(self.entries[index].image)

    @classmethod
    def reference_intrinsics(cls, size: Tuple[int, int]) -> Optional[Tuple[float, ...]]:
        """Nominal intrinsics of an image of ``size`` (H, W) where the format has no camera file, for
        the data check's comparison of stored normals with depth-derived ones (None: unknown)."""
        return None

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The semseg classes of this reader's label space (id = index)."""
        return self.label_space.classes if self.label_space is not None else ()


def list_files(directory: Path, suffixes: Sequence[str]) -> List[Path]:
    """Sorted files in ``directory`` with one of ``suffixes`` (empty when it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))
