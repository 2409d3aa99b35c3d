"""Point-cloud and mesh files to numpy arrays, with no dependency beyond numpy (and h5py for .h5).

`read_point_cloud` reads one sample: a point cloud [N, 3] (xyz) or [N, 6] (xyz + rgb in [0, 1]).
Meshes are turned into clouds by area-uniform sampling. Every data problem raises
`omniclip.errors.SampleError(path, problem)` so that datasets can skip or stop with a precise
message; wrong arguments raise ValueError.

Formats (by suffix, case-insensitive):

- ``.ply``  ascii, binary_little_endian, binary_big_endian; vertex ``x, y, z`` and optional
  ``red, green, blue``; a ``face`` element (``vertex_indices`` or ``vertex_index``) makes it a mesh.
- ``.pcd``  ascii and binary (``binary_compressed`` is refused); fields ``x, y, z`` and colour as a
  packed ``rgb``/``rgba`` field or separate ``r, g, b``.
- ``.xyz``, ``.txt``  one point per line, whitespace or comma separated; 3 columns (xyz) or 6. Six
  columns are read as normals (ModelNet40's resampled ``x,y,z,nx,ny,nz``) and dropped, unless
  ``with_color=True``, in which case they are rgb (0-255 when any value exceeds 1, else 0-1).
- ``.obj``  ``v x y z [r g b]`` and ``f`` lines (``i``, ``i/t``, ``i/t/n``, ``i//n``, negative
  indices); without faces the vertices are the cloud. Polygons are fan-triangulated.
- ``.off``  ``OFF`` meshes, including ModelNet40's header glued to the counts (``OFF490 518 0``).
- ``.stl``  ascii and binary.
- ``.npy``  an array [N, 3] or [N, 6] (xyz + rgb). ``.npz``: points under the first of the keys
  ``xyz``, ``points``, ``pc``, ``arr_0``; a separate colour array [N, 3] under ``rgb`` or
  ``colors``. Pickled objects are refused.

`read_h5_split` reads a whole ScanObjectNN split (``data`` and ``label`` datasets).
"""

from __future__ import annotations

import io as _io
import math
import os
import re
import stat
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

from omniclip.errors import SampleError

NPZ_POINT_KEYS = ("xyz", "points", "pc", "arr_0")
NPZ_COLOUR_KEYS = ("rgb", "colors")


class _FormatError(Exception):
    """A parser's complaint about the file's content; `read_point_cloud` adds the path."""


class _PickledError(_FormatError):
    """The file holds a pickled object, which is never loaded here."""


class _Shape:
    """What a parser found: xyz [V, 3], triangles [F, 3] or None, and the raw colour [V, 3] or None.

    Colour stays raw (as stored) until the caller asks for it: a file whose extra columns are
    not colour (normals) is only wrong when colour is requested.
    """

    def __init__(self, xyz: np.ndarray, faces: np.ndarray | None = None, colour: np.ndarray | None = None):
        self.xyz = xyz
        self.faces = faces
        self.colour = colour


# ---------------------------------------------------------------------------------------------
# shared helpers


def _unit_colour(colour: np.ndarray) -> np.ndarray:
    """Colour in [0, 1]: integers are divided by their type's maximum, floats above 1 by 255."""
    if np.issubdtype(colour.dtype, np.integer):
        colour = colour / float(np.iinfo(colour.dtype).max)
    else:
        colour = colour.astype(np.float64)
        if colour.size and np.nanmax(colour) > 1.0:
            colour = colour / 255.0
    if colour.size and (np.nanmin(colour) < 0.0 or np.nanmax(colour) > 1.0):
        raise _FormatError(
            f"colour values outside [0, 255] (range {np.nanmin(colour):g} to {np.nanmax(colour):g})"
        )
    return colour


def _triangulate(polygons: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Fan-triangulate polygons (a uniform [F, n] array or a ragged list) into [T, 3] triangles."""
    if isinstance(polygons, np.ndarray):
        groups = [polygons]
    else:
        by_size: dict[int, list[np.ndarray]] = {}
        for poly in polygons:
            by_size.setdefault(len(poly), []).append(poly)
        groups = [np.stack(polys) for polys in by_size.values()]
    triangles = [
        np.stack([group[:, 0], group[:, i], group[:, i + 1]], axis=1)
        for group in groups
        if group.ndim == 2 and group.shape[1] >= 3
        for i in range(1, group.shape[1] - 1)
    ]
    if not triangles:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(triangles).astype(np.int64)


def _faces_from_lines(lines: Sequence[str], what: str) -> np.ndarray:
    """Triangles from ``n i1 ... in [extra]`` lines (OFF faces, ascii PLY faces)."""
    try:
        rows = [line.split() for line in lines]
        sizes = np.array([int(row[0]) for row in rows])
        if np.all(sizes == sizes[0]) and all(len(row) >= sizes[0] + 1 for row in rows):
            polys = np.array([row[1 : sizes[0] + 1] for row in rows], dtype=np.int64)
            return _triangulate(polys.reshape(len(rows), sizes[0]))
        return _triangulate([np.array(row[1 : n + 1], dtype=np.int64) for row, n in zip(rows, sizes)])
    except (ValueError, IndexError) as err:
        raise _FormatError(f"unreadable {what} face line ({err})") from None


def _numbers(lines: Sequence[str], columns: int, what: str) -> np.ndarray:
    """Lines of at least ``columns`` numbers as a float64 [len(lines), columns] array."""
    try:
        values = np.array(" ".join(lines).split(), dtype=np.float64)
        if values.size == len(lines) * columns:
            return values.reshape(len(lines), columns)
        return np.array([line.split()[:columns] for line in lines], dtype=np.float64)
    except ValueError as err:
        raise _FormatError(f"unreadable {what} line ({err})") from None


def _text(data: bytes) -> str:
    # Undecodable bytes become U+FFFD, which the number parsers then reject with a message.
    return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_PLY_FACE_LISTS = ("vertex_indices", "vertex_index")


def _ply_type(name: str) -> str:
    if name not in _PLY_TYPES:
        raise _FormatError(f"unknown PLY property type '{name}'")
    return _PLY_TYPES[name]


def _parse_ply_header(data: bytes) -> tuple[str, list[tuple[str, int, list[tuple]]], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise _FormatError("not a PLY file (no 'ply' magic or no 'end_header')")
    body_start = data.find(b"\n", end) + 1
    if body_start == 0:
        body_start = len(data)
    fmt = ""
    elements: list[tuple[str, int, list[tuple]]] = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tokens = line.split()
        if not tokens or tokens[0] in ("comment", "obj_info"):
            continue
        if tokens[0] == "format":
            fmt = tokens[1]
        elif tokens[0] == "element":
            count = int(tokens[2])
            if count < 0:
                # np.frombuffer reads "all that is left" for a count of -1: trailing bytes as points
                raise _FormatError(f"PLY element '{tokens[1]}' declares {count} items (a count must be >= 0)")
            elements.append((tokens[1], count, []))
        elif tokens[0] == "property" and elements:
            if tokens[1] == "list":
                elements[-1][2].append(("list", tokens[4], _ply_type(tokens[2]), _ply_type(tokens[3])))
            else:
                elements[-1][2].append(("scalar", tokens[2], _ply_type(tokens[1])))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise _FormatError(f"unknown PLY format '{fmt}'")
    return fmt, elements, body_start


def _ply_ascii(body: bytes, elements: list) -> dict[str, object]:
    lines = [line for line in _text(body).splitlines() if line.strip()]
    out: dict[str, object] = {}
    pos = 0
    for name, count, props in elements:
        rows = lines[pos : pos + count]
        if len(rows) < count:
            raise _FormatError(
                f"truncated ascii PLY: element '{name}' declares {count} lines, found {len(rows)}"
            )
        pos += count
        if all(p[0] == "scalar" for p in props):
            values = _numbers(rows, len(props), f"PLY {name}")
            out[name] = {p[1]: values[:, i] for i, p in enumerate(props)}
        elif name == "face" and props[0][0] == "list" and props[0][1] in _PLY_FACE_LISTS:
            out[name] = _faces_from_lines(rows, "PLY") if rows else np.zeros((0, 3), np.int64)
    if len(lines) > pos:
        raise _FormatError(
            f"ascii PLY has {len(lines) - pos} lines after its last element '{elements[-1][0] if elements else ''}': "
            "the header's element counts are below the data"
        )
    return out


def _ply_binary_list_element(
    body: bytes, offset: int, count: int, props: list, endian: str, name: str
) -> tuple[np.ndarray | list[np.ndarray] | None, int]:
    """Parse an element holding list properties; returns its face polygons (if any) and the end offset.

    Fast path: the first property is the list and every record has the same length (all
    triangles, all quads), so the element is one structured array. Otherwise records are walked.
    """
    faces_key = next((p[1] for p in props if p[0] == "list" and p[1] in _PLY_FACE_LISTS), None)
    if props[0][0] == "list" and count:
        _, key, count_type, item_type = props[0]
        if offset + np.dtype(count_type).itemsize > len(body):
            raise _FormatError(f"truncated binary PLY: element '{name}' is cut short")
        size = int(np.frombuffer(body, endian + count_type, 1, offset)[0])
        fields = [("n", endian + count_type), ("idx", endian + item_type, (size,))]
        fields += [(f"p{i}", endian + p[2]) for i, p in enumerate(props[1:]) if p[0] == "scalar"]
        if all(p[0] == "scalar" for p in props[1:]):
            record = np.dtype(fields)
            if offset + count * record.itemsize <= len(body):
                arr = np.frombuffer(body, record, count, offset)
                if np.all(arr["n"] == size):
                    polys = arr["idx"].reshape(count, size).astype(np.int64)
                    return (polys if key == faces_key else None), offset + count * record.itemsize
    polygons: list[np.ndarray] = []
    for _ in range(count):
        for prop in props:
            if prop[0] == "scalar":
                offset += np.dtype(prop[2]).itemsize
                continue
            _, key, count_type, item_type = prop
            if offset + np.dtype(count_type).itemsize > len(body):
                raise _FormatError(f"truncated binary PLY: element '{name}' is cut short")
            n = int(np.frombuffer(body, endian + count_type, 1, offset)[0])
            offset += np.dtype(count_type).itemsize
            nbytes = n * np.dtype(item_type).itemsize
            if offset + nbytes > len(body):
                raise _FormatError(f"truncated binary PLY: element '{name}' is cut short")
            if key == faces_key:
                polygons.append(np.frombuffer(body, endian + item_type, n, offset).astype(np.int64))
            offset += nbytes
    return (polygons if faces_key else None), offset


def _ply_binary(body: bytes, elements: list, endian: str) -> dict[str, object]:
    out: dict[str, object] = {}
    offset = 0
    for name, count, props in elements:
        if all(p[0] == "scalar" for p in props):
            record = np.dtype([(p[1], endian + p[2]) for p in props])
            need = count * record.itemsize
            if offset + need > len(body):
                raise _FormatError(
                    f"truncated binary PLY: element '{name}' needs {need} bytes, "
                    f"{max(len(body) - offset, 0)} remain"
                )
            arr = np.frombuffer(body, record, count, offset)
            out[name] = {p[1]: arr[p[1]] for p in props}
            offset += need
        else:
            polys, offset = _ply_binary_list_element(body, offset, count, props, endian, name)
            if name == "face" and polys is not None:
                out[name] = _triangulate(polys)
    if offset < len(body):
        raise _FormatError(
            f"binary PLY has {len(body) - offset} bytes after its last element "
            f"'{elements[-1][0] if elements else ''}': the header's element counts are below the data"
        )
    return out


def _read_ply(data: bytes) -> _Shape:
    fmt, elements, body_start = _parse_ply_header(data)
    body = data[body_start:]
    if fmt == "ascii":
        parsed = _ply_ascii(body, elements)
    else:
        parsed = _ply_binary(body, elements, "<" if fmt == "binary_little_endian" else ">")
    vertex = parsed.get("vertex")
    if not isinstance(vertex, dict) or not {"x", "y", "z"} <= set(vertex):
        raise _FormatError("PLY has no vertex element with x, y, z properties")
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    colour = None
    if {"red", "green", "blue"} <= set(vertex):
        colour = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1)
    faces = parsed.get("face")
    return _Shape(xyz, faces if isinstance(faces, np.ndarray) else None, colour)


# ---------------------------------------------------------------------------------------------
# PCD

_PCD_KINDS = {"F": "f", "I": "i", "U": "u"}


def _read_pcd(data: bytes) -> _Shape:
    header: dict[str, list[str]] = {}
    pos = 0
    while "DATA" not in header:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise _FormatError("not a PCD file (no DATA line in the header)")
        tokens = data[pos:nl].decode("ascii", errors="replace").split()
        pos = nl + 1
        if tokens and not tokens[0].startswith("#"):
            header[tokens[0].upper()] = tokens[1:]
    try:
        fields = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        kinds = header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        num = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(
            header["HEIGHT"][0]
        )
        lengths = {"FIELDS": len(fields), "SIZE": len(sizes), "TYPE": len(kinds), "COUNT": len(counts)}
        if len(set(lengths.values())) > 1:
            # zip() would silently drop the extra fields and misread every record
            raise _FormatError(
                "PCD header lists " + ", ".join(f"{n} {k}" for k, n in lengths.items())
                + " entries; each field needs one SIZE, TYPE and COUNT"
            )
        if num < 0:  # np.frombuffer reads "all that is left" for a count of -1
            raise _FormatError(f"PCD header declares {num} points (a count must be >= 0)")
        if min(sizes + counts, default=1) < 1:
            raise _FormatError(f"PCD header declares SIZE {sizes} and COUNT {counts}; each must be >= 1")
        dtype = np.dtype(
            [
                ((f if f != "_" else f"_pad{i}"), "<" + _PCD_KINDS[k] + str(s), (c,) if c > 1 else ())
                for i, (f, s, k, c) in enumerate(zip(fields, sizes, kinds, counts))
            ]
        )
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise _FormatError(f"malformed PCD header ({err!r})") from None
    mode = header["DATA"][0].lower()
    if mode == "binary":
        if pos + num * dtype.itemsize > len(data):
            raise _FormatError(
                f"truncated binary PCD: header declares {num} points ({num * dtype.itemsize} bytes), "
                f"{len(data) - pos} bytes follow"
            )
        arr = np.frombuffer(data, dtype, num, pos)
    elif mode == "ascii":
        lines = [line for line in _text(data[pos:]).splitlines() if line.strip()]
        if len(lines) < num:
            raise _FormatError(f"truncated ascii PCD: header declares {num} points, found {len(lines)}")
        flat = _numbers(lines[:num], sum(counts), "PCD point")
        arr = np.zeros(num, dtype)
        column = 0
        for name, count in zip(dtype.names, counts):
            values = flat[:, column : column + count]
            arr[name] = values.reshape(arr[name].shape)
            column += count
    else:
        raise _FormatError(f"PCD DATA '{mode}' is not supported (use ascii or binary)")
    names = set(dtype.names)
    if not {"x", "y", "z"} <= names:
        raise _FormatError(f"PCD has no x, y, z fields (fields: {', '.join(fields)})")
    xyz = np.stack([arr["x"], arr["y"], arr["z"]], axis=1)
    colour = None
    packed = next((n for n in ("rgb", "rgba") if n in names), None)
    if packed:
        bits = np.ascontiguousarray(arr[packed]).view(np.uint32)
        colour = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.uint8)
    elif {"r", "g", "b"} <= names:
        colour = np.stack([arr["r"], arr["g"], arr["b"]], axis=1)
    return _Shape(xyz, None, colour)


# ---------------------------------------------------------------------------------------------
# text clouds, OBJ, OFF, STL


def _read_text_cloud(data: bytes) -> _Shape:
    text = _text(data).replace(",", " ")
    try:
        with warnings.catch_warnings():  # an empty cloud is reported by the caller
            warnings.filterwarnings("ignore", "loadtxt: input contained no data")
            values = np.loadtxt(_io.StringIO(text), dtype=np.float64, comments="#", ndmin=2)
    except ValueError as err:
        raise _FormatError(f"unreadable point line ({err})") from None
    if values.shape[0] == 0:
        return _Shape(np.zeros((0, 3)))
    if values.shape[1] == 3:
        return _Shape(values)
    if values.shape[1] == 6:
        # normals (ModelNet40) or rgb: only `with_color` makes them colour (checked by the caller)
        return _Shape(values[:, :3], None, values[:, 3:])
    raise _FormatError(
        f"expected 3 (xyz) or 6 (xyz + normals or rgb) columns, got {values.shape[1]}"
    )


def _read_obj(data: bytes) -> _Shape:
    vertices: list[list[str]] = []
    polygons: list[np.ndarray] = []
    try:
        for line in _text(data).splitlines():
            if line.startswith("v "):
                vertices.append(line.split()[1:])
            elif line.startswith("f "):
                idx = np.array([int(t.split("/")[0]) for t in line.split()[1:]], dtype=np.int64)
                # 1-based; negative counts back from the vertices defined so far.
                polygons.append(np.where(idx < 0, len(vertices) + idx, idx - 1))
    except ValueError as err:
        raise _FormatError(f"unreadable OBJ face line ({err})") from None
    if not vertices:
        return _Shape(np.zeros((0, 3)))
    coloured = all(len(v) >= 6 for v in vertices)
    columns = 6 if coloured else 3
    if any(len(v) < 3 for v in vertices):
        raise _FormatError("OBJ vertex line with fewer than 3 coordinates")
    try:
        values = np.array([v[:columns] for v in vertices], dtype=np.float64)
    except ValueError as err:
        raise _FormatError(f"unreadable OBJ vertex line ({err})") from None
    return _Shape(values[:, :3], _triangulate(polygons) if polygons else None, values[:, 3:] if coloured else None)


def _read_off(data: bytes) -> _Shape:
    lines = [line.split("#")[0].strip() for line in _text(data).splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].startswith("OFF"):
        raise _FormatError("not an OFF file (first line does not start with 'OFF')")
    # ModelNet40 glues the counts to the magic: "OFF490 518 0".
    if lines[0][3:].strip():
        counts_line, rest = lines[0][3:], lines[1:]
    else:
        counts_line, rest = (lines[1] if len(lines) > 1 else ""), lines[2:]
    try:
        num_vertices, num_faces = (int(t) for t in counts_line.split()[:2])
    except ValueError:
        raise _FormatError(f"unreadable OFF counts line '{counts_line}'") from None
    if num_vertices < 0 or num_faces < 0:  # a negative slice bound would read the wrong lines
        raise _FormatError(f"OFF counts line '{counts_line}' declares a negative count")
    if len(rest) < num_vertices + num_faces:
        raise _FormatError(
            f"truncated OFF: header declares {num_vertices} vertices and {num_faces} faces, "
            f"the file has {len(rest)} lines after it"
        )
    vertices = _numbers(rest[:num_vertices], 3, "OFF vertex")
    face_lines = rest[num_vertices : num_vertices + num_faces]
    faces = _faces_from_lines(face_lines, "OFF") if face_lines else None
    return _Shape(vertices, faces)


_STL_VERTEX = re.compile(rb"vertex\s+(\S+)\s+(\S+)\s+(\S+)")


def _read_stl(data: bytes) -> _Shape:
    binary_size = 84 + 50 * int(np.frombuffer(data, "<u4", 1, 80)[0]) if len(data) >= 84 else -1
    if len(data) == binary_size:
        record = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        triangles = np.frombuffer(data, record, (len(data) - 84) // 50, 84)["v"]
    elif data.lstrip().startswith(b"solid") and b"facet" in data:
        try:
            triangles = np.array(_STL_VERTEX.findall(data), dtype=np.float64)
        except ValueError as err:
            raise _FormatError(f"unreadable ascii STL vertex ({err})") from None
        if triangles.shape[0] % 3:
            raise _FormatError(f"ascii STL has {triangles.shape[0]} vertices, not a multiple of 3")
        triangles = triangles.reshape(-1, 3, 3)
    elif binary_size > 0:
        raise _FormatError(
            f"truncated binary STL: header declares {(binary_size - 84) // 50} triangles "
            f"({binary_size} bytes), the file has {len(data)} bytes"
        )
    else:
        raise _FormatError(f"not an STL file ({len(data)} bytes, no 'solid' header)")
    vertices = np.asarray(triangles, dtype=np.float64).reshape(-1, 3)
    return _Shape(vertices, np.arange(len(vertices), dtype=np.int64).reshape(-1, 3))


# ---------------------------------------------------------------------------------------------
# numpy files


def _points_array(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise _FormatError(f"{what} has dtype {arr.dtype}, not a numeric array")
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise _FormatError(
            f"{what} has shape {list(arr.shape)}; expected [N, 3] (xyz) or [N, 6] (xyz + rgb)"
        )
    return arr


_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_START = b"\x80"  # pickle protocols 2 and later begin with the PROTO opcode


def _npy_header(stream: IO[bytes], what: str, limit: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data size of the .npy array at ``stream``, read from its header alone.

    Nothing is allocated from the header's claims before they are checked: the data must fit
    in ``limit`` bytes (a few-kB file can declare a shape of terabytes).
    """
    start = stream.read(len(_NPY_MAGIC))
    if start != _NPY_MAGIC:
        if start.startswith(_PICKLE_START):
            raise _PickledError(f"{what} holds a pickled object, which is never loaded (not a NumPy array)")
        raise _FormatError(f"{what} is not a NumPy .npy array (no \\x93NUMPY magic; starts with {start!r})")
    try:
        version = tuple(stream.read(2))
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, OSError, EOFError) as err:
        raise _FormatError(f"{what} has an unreadable .npy header ({err})") from None
    if dtype.hasobject:
        raise _PickledError(f"{what} holds pickled objects (dtype {dtype}), which are never loaded")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limit:
        raise _FormatError(
            f"{what} declares shape {list(shape)} of {dtype} ({nbytes} bytes), more than the "
            f"{limit}-byte limit (max_bytes)"
        )
    return shape, dtype, nbytes


def _points_array(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise _FormatError(f"{what} has dtype {arr.dtype}, not a numeric array")
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise _FormatError(
            f"{what} has shape {list(arr.shape)}; expected [N, 3] (xyz) or [N, 6] (xyz + rgb)"
        )
    return arr


def _read_npy(data: bytes, limit: int) -> _Shape:
    stream = _io.BytesIO(data)
    shape, _, nbytes = _npy_header(stream, "the file", limit)
    if nbytes > len(data) - stream.tell():
        raise _FormatError(
            f"truncated .npy: header declares shape {list(shape)} ({nbytes} bytes), "
            f"{len(data) - stream.tell()} bytes follow"
        )
    stream.seek(0)
    try:
        arr = np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _FormatError(f"unreadable .npy ({err})") from None
    arr = _points_array(arr, "array")
    return _Shape(arr[:, :3], None, arr[:, 3:] if arr.shape[1] == 6 else None)


def _npz_member(archive: zipfile.ZipFile, name: str, key: str, limit: int) -> np.ndarray:
    """One array of an .npz, its size checked from the zip directory and the .npy header first."""
    what = f"array '{key}'"
    info = archive.getinfo(name)
    if info.file_size > limit + 65536:  # the declared size; zipfile never inflates past it
        raise _FormatError(
            f"{what} inflates to {info.file_size} bytes ({info.compress_size} compressed), more than "
            f"the {limit}-byte limit (max_bytes)"
        )
    try:
        with archive.open(name) as stream:
            shape, _, nbytes = _npy_header(stream, what, limit)
        if nbytes > info.file_size:
            raise _FormatError(f"{what} is truncated: header declares shape {list(shape)}, "
                               f"the member holds {info.file_size} bytes")
        with archive.open(name) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, NotImplementedError) as err:
        raise _FormatError(f"unreadable .npz member '{name}' ({type(err).__name__}: {err})") from None


def _read_npz(data: bytes, limit: int) -> _Shape:
    try:
        archive = zipfile.ZipFile(_io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise _FormatError(f"not a valid .npz (zip) archive ({err})") from None
    with archive:
        members = {n.removesuffix(".npy"): n for n in archive.namelist()}
        key = next((k for k in NPZ_POINT_KEYS if k in members), None)
        if key is None:
            raise _FormatError(
                f"no point array under {', '.join(NPZ_POINT_KEYS)} (keys: {', '.join(members)})"
            )
        arr = _points_array(_npz_member(archive, members[key], key, limit), f"array '{key}'")
        colour = arr[:, 3:] if arr.shape[1] == 6 else None
        colour_key = next((k for k in NPZ_COLOUR_KEYS if k in members), None)
        if colour is None and colour_key is not None:
            colour = _npz_member(archive, members[colour_key], colour_key, limit)
            if colour.shape != (arr.shape[0], 3):
                raise _FormatError(
                    f"colour array '{colour_key}' has shape {list(colour.shape)}, "
                    f"expected [{arr.shape[0]}, 3]"
                )
    return _Shape(arr[:, :3], None, colour)


_READERS: dict[str, Callable[..., _Shape]] = {
    ".ply": _read_ply,
    ".pcd": _read_pcd,
    ".xyz": _read_text_cloud,
    ".txt": _read_text_cloud,
    ".obj": _read_obj,
    ".off": _read_off,
    ".stl": _read_stl,
    ".npy": _read_npy,
    ".npz": _read_npz,
}
SUFFIXES = tuple(_READERS)


# ---------------------------------------------------------------------------------------------
# public API


def sample_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    n: int,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """``n`` points [n, D] drawn uniformly by area from the triangles ``faces`` [F, 3].

    ``vertices`` [V, D] holds xyz first; any further columns (colour) are interpolated with the
    same barycentric weights. Raises ValueError when no triangle has a positive area.
    """
    rng = generator if generator is not None else np.random.default_rng()
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {list(faces.shape)}")
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b[:, :3] - a[:, :3], c[:, :3] - a[:, :3]), axis=1)
    cdf = np.cumsum(area)
    if not len(cdf) or not cdf[-1] > 0:
        raise ValueError(f"all {len(faces)} faces have zero area")
    # side="right" never lands on a zero-area face (its cdf step is empty).
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(max=len(faces) - 1)
    u, v = rng.random((2, n, 1))
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    a, b, c = a[face], b[face], c[face]
    return a + u * (b - a) + v * (c - a)


def _resample(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``num_points`` rows: a random subset, or every row plus random repeats."""
    n = len(points)
    if n >= num_points:
        return points[rng.permutation(n)[:num_points]] if n > num_points else points
    extra = rng.choice(n, num_points - n, replace=True)
    return np.concatenate([points, points[extra]])


#: Largest file, and largest array a file may declare, that is read (1 GiB): a header or a
#: compressed member can claim any size, and the claim is checked before anything is allocated.
MAX_BYTES = 1 << 30
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_regular_file(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most ``max_bytes``.

    The file is opened non-blocking and checked with fstat on the open descriptor: opening a
    FIFO named ``cloud.txt`` for reading would otherwise wait for a writer forever, and checking
    the name first would leave a window to swap the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SampleError(path, "file not found") from None
    except OSError as err:
        raise SampleError(path, f"cannot open the file ({err.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SampleError(path, "is a directory, not a point-cloud file")
        if not stat.S_ISREG(info.st_mode):
            raise SampleError(path, "not a regular file (a FIFO, socket or device); refusing to read it")
        if info.st_size > max_bytes:
            raise SampleError(path, f"{info.st_size} bytes, more than the {max_bytes}-byte limit (max_bytes)")
        try:
            # read() preallocates its argument: ask for the size fstat gave, then make sure that was all
            data = handle.read(info.st_size)
            if handle.read(1):
                raise SampleError(path, "the file grew while it was read; refusing it")
            return data
        except OSError as err:
            raise SampleError(path, f"cannot read the file ({err.strerror})") from None


def coordinate_problem(xyz: np.ndarray, kind: str = "points") -> str | None:
    """Why coordinates [N, 3] cannot become a float32 cloud (NaN, inf, beyond float32), or None.

    Checked on the values as read (often float64), before the cast: 1e300 is finite in float64
    and becomes inf in float32.
    """
    xyz = np.asarray(xyz)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        return f"{int((~finite).sum())} of {len(xyz)} {kind} have NaN or inf coordinates"
    if xyz.dtype.kind == "f" and xyz.dtype.itemsize > 4:  # float32 (or narrower) cannot overflow the cast
        beyond = (np.abs(xyz) > _FLOAT32_MAX).any(axis=1)
        if beyond.any():
            worst = float(np.abs(xyz).max())
            return (f"{int(beyond.sum())} of {len(xyz)} {kind} have coordinates beyond float32's range "
                    f"(largest magnitude {worst:.3g} > {_FLOAT32_MAX:.3g})")
    return None


def _colour_of(shape: _Shape) -> np.ndarray:
    """The shape's colour in [0, 1]; extra columns that go negative are normals, not rgb."""
    colour = shape.colour
    if colour.size and colour.dtype.kind == "f" and np.nanmin(colour) < 0:
        raise _FormatError("columns 4-6 hold negative values, so they are normals, not the rgb asked for")
    return _unit_colour(colour)


def read_point_cloud(
    path: str | Path,
    num_points: int | None = None,
    with_color: bool = False,
    generator: np.random.Generator | None = None,
    *,
    allow_repeats: bool = True,
    default_color: float | None = None,
    max_bytes: int = MAX_BYTES,
) -> np.ndarray:
    """Read one cloud as float32 [N, 3] (xyz) or, with ``with_color``, [N, 6] (xyz + rgb in [0, 1]).

    ``num_points``: meshes are sampled to that many points by area (required for a mesh);
    larger clouds keep a random subset; smaller clouds keep every point plus random repeats
    (sampling with replacement), unless ``allow_repeats=False``, which makes that a SampleError.
    Without ``num_points`` a cloud is returned whole. ``default_color`` (a grey level in [0, 1])
    fills the colour of files that have none when ``with_color`` is set; otherwise that is an error.
    Extra columns (colour or normals) are only read as colour, and only checked, with
    ``with_color``. Files larger than ``max_bytes``, and arrays declared larger, are refused
    before they are read. Randomness comes from ``generator`` (a numpy Generator).
    """
    path = Path(path)
    if num_points is not None and num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        if path.is_dir():
            raise SampleError(path, "is a directory, not a point-cloud file")
        if not path.exists():
            raise SampleError(path, "file not found")
        raise SampleError(path, f"unknown suffix '{path.suffix}' (known: {', '.join(SUFFIXES)})")
    data = read_regular_file(path, max_bytes)
    if not data:
        raise SampleError(path, "empty file (0 bytes)")
    try:
        if suffix in (".npy", ".npz"):
            shape = _READERS[suffix](data, max_bytes)
        else:
            shape = _READERS[suffix](data)
        colour = _colour_of(shape) if with_color and shape.colour is not None else None
    except _PickledError as err:
        raise PickledFileError(path, str(err)) from None
    except _FormatError as err:
        raise SampleError(path, str(err)) from None
    except (ValueError, IndexError, TypeError) as err:
        raise SampleError(path, f"unreadable {suffix} file ({err})") from None
    faces = shape.faces
    kind = "vertices" if faces is not None else "points"
    if len(shape.xyz) == 0:
        raise SampleError(path, f"no {kind}: the file holds an empty cloud")
    problem = coordinate_problem(shape.xyz, kind)
    if problem:
        raise SampleError(path, problem)
    vertices = np.asarray(shape.xyz, dtype=np.float64)
    if with_color:
        if colour is None:
            if default_color is None:
                raise SampleError(path, "no colour (rgb) in the file, and with_color=True")
            colour = np.full_like(vertices, default_color)
        vertices = np.concatenate([vertices, colour], axis=1)
    rng = generator if generator is not None else np.random.default_rng()

    if faces is not None:
        if num_points is None:
            raise ValueError(f"{path}: a mesh must be sampled, pass num_points")
        if len(faces) == 0:
            raise SampleError(path, "mesh without triangles (every face has fewer than 3 vertices)")
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= len(vertices):
            wrong = lo if lo < 0 else hi
            raise SampleError(
                path, f"a face refers to vertex {wrong}, the mesh has {len(vertices)} vertices"
            )
        try:
            points = sample_mesh(vertices, faces, num_points, rng)
        except ValueError as err:
            raise SampleError(path, f"degenerate mesh: {err}") from None
    elif num_points is None:
        points = vertices
    else:
        if len(vertices) < num_points and not allow_repeats:
            raise SampleError(
                path,
                f"{len(vertices)} points, fewer than the {num_points} asked "
                "(repeating points is switched off)",
            )
        points = _resample(vertices, num_points, rng)
    return points.astype(np.float32)


class PickledFileError(SampleError):
    """The file holds a pickled object (OpenShape's ``{xyz, rgb}`` dicts); it was not loaded."""


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre xyz on its centroid and scale it so the farthest point has norm 1; colour is kept.

    ``points`` is [N, 3] or [N, 3 + C]. The arithmetic is float64 whatever the input: in float32
    a coordinate near 3e38 makes the squared radius inf, which would collapse the cloud to the
    origin. Raises ValueError when all points coincide or the scale is not finite.
    """
    xyz = np.asarray(points[:, :3], dtype=np.float64)
    xyz = xyz - xyz.mean(axis=0)
    radius = float(np.sqrt((xyz**2).sum(axis=1)).max()) if len(xyz) else 0.0
    if not math.isfinite(radius):
        raise ValueError(f"cannot normalise: the radius is {radius} (coordinates out of range)")
    if not radius > 0:
        raise ValueError("cannot normalise: all points coincide")
    out = np.concatenate([xyz / radius, np.asarray(points[:, 3:], dtype=np.float64)], axis=1)
    return out.astype(points.dtype, copy=False)


def read_h5_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A ScanObjectNN split: points float32 [S, N, 3] (``data``, xyz kept) and labels int64 [S]."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise SampleError(path, "file not found")
    if not path.is_file():  # HDF5 would block on a FIFO
        raise SampleError(path, "not a regular file (a directory, FIFO, socket or device)")
    try:
        with h5py.File(path, "r") as h5:
            missing = [name for name in ("data", "label") if name not in h5]
            if missing:
                raise SampleError(
                    path, f"no '{missing[0]}' dataset (datasets: {', '.join(sorted(h5.keys()))})"
                )
            points = np.asarray(h5["data"][()])
            labels = np.asarray(h5["label"][()])
    except OSError as err:
        raise SampleError(path, f"unreadable HDF5 file ({err})") from None
    if points.ndim != 3 or points.shape[2] < 3:
        raise SampleError(path, f"'data' has shape {list(points.shape)}; expected [S, N, 3]")
    labels = labels.reshape(-1)
    if len(labels) != len(points):
        raise SampleError(path, f"{len(points)} clouds but {len(labels)} labels")
    points = points[..., :3].astype(np.float32)
    bad = int((~np.isfinite(points).all(axis=(1, 2))).sum())
    if bad:
        raise SampleError(path, f"{bad} of {len(points)} clouds have NaN or inf coordinates")
    return points, labels.astype(np.int64)
