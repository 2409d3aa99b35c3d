import re
import struct

import h5py
import numpy as np
import pytest

from omniclip.errors import SampleError
from omniclip.modalities.pointcloud.io import (
    normalize_unit_sphere,
    read_h5_split,
    read_point_cloud,
    sample_mesh,
)

RNG = np.random.default_rng(0)
XYZ = RNG.normal(size=(7, 3)).astype(np.float32)
RGB8 = RNG.integers(0, 256, size=(7, 3)).astype(np.uint8)

# A unit cube [-1, 1]^3 as 8 vertices and 6 quads (and as 12 triangles).
CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float32)
CUBE_QUADS = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
CUBE_TRIS = np.concatenate([CUBE_QUADS[:, [0, 1, 2]], CUBE_QUADS[:, [0, 2, 3]]])


def assert_on_cube(points: np.ndarray) -> None:
    assert np.all(np.abs(points[:, :3]) <= 1 + 1e-6)
    assert np.all(np.isclose(np.abs(points[:, :3]), 1, atol=1e-5).any(axis=1))


def expect_error(path, problem: str, **kwargs) -> None:
    with pytest.raises(SampleError) as err:
        read_point_cloud(path, **kwargs)
    assert err.value.path == str(path)
    assert re.search(problem, err.value.problem), err.value.problem
    assert str(err.value).startswith(str(path))


# ----------------------------------------------------------------------------------- writers


def ply_header(fmt: str, n_vertex: int, colour: bool, n_face: int | None = None) -> bytes:
    lines = ["ply", f"format {fmt} 1.0", "comment made by a test", f"element vertex {n_vertex}",
             "property float x", "property float y", "property float z"]  # fmt: skip
    if colour:
        lines += ["property uchar red", "property uchar green", "property uchar blue"]
    if n_face is not None:
        lines += [f"element face {n_face}", "property list uchar int vertex_indices"]
    return ("\n".join(lines + ["end_header"]) + "\n").encode()


def binary_ply_mesh(polygons: list[list[int]], vertices: np.ndarray, endian: str = "<") -> bytes:
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    body = vertices.astype(endian + "f4").tobytes()
    for poly in polygons:
        body += struct.pack(f"{endian}B{len(poly)}i", len(poly), *poly)
    return ply_header(fmt, len(vertices), False, len(polygons)) + body


def off_text(vertices: np.ndarray, polygons, glued: bool) -> str:
    counts = f"{len(vertices)} {len(polygons)} 0"
    head = f"OFF{counts}\n" if glued else f"OFF\n# comment\n{counts}\n"
    body = "".join(f"{x} {y} {z}\n" for x, y, z in vertices)
    return head + body + "".join(f"{len(p)} {' '.join(map(str, p))}\n" for p in polygons)


def binary_stl(triangles: np.ndarray, count: int | None = None) -> bytes:
    out = b"solid-looking binary header".ljust(80, b" ") + struct.pack("<I", len(triangles) if count is None else count)
    for tri in triangles:
        out += struct.pack("<3f", 0, 0, 0) + tri.astype("<f4").tobytes() + b"\0\0"
    return out


def pcd_header(fields: str, sizes: str, types: str, n: int, data: str) -> bytes:
    return (
        f"# .PCD v0.7\nVERSION 0.7\nFIELDS {fields}\nSIZE {sizes}\nTYPE {types}\n"
        f"COUNT {' '.join('1' * len(fields.split()))}\nWIDTH {n}\nHEIGHT 1\n"
        f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    ).encode()


def packed_rgb(rgb: np.ndarray) -> np.ndarray:
    bits = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    return bits.view(np.float32)


# ----------------------------------------------------------------------------------- clouds


def test_ascii_ply_cloud_with_colour(tmp_path):
    path = tmp_path / "c.ply"
    rows = "".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(XYZ.tolist(), RGB8.tolist()))
    path.write_bytes(ply_header("ascii", 7, True) + rows.encode())
    got = read_point_cloud(path, with_color=True)
    assert got.dtype == np.float32 and got.shape == (7, 6)
    np.testing.assert_array_equal(got[:, :3], XYZ)
    np.testing.assert_allclose(got[:, 3:], RGB8 / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(read_point_cloud(path), XYZ)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_binary_ply_cloud(tmp_path, endian):
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    record = np.dtype([("xyz", endian + "f4", (3,)), ("rgb", "u1", (3,))])
    body = np.zeros(7, record)
    body["xyz"], body["rgb"] = XYZ, RGB8
    path = tmp_path / "c.ply"
    path.write_bytes(ply_header(fmt, 7, True) + body.tobytes())
    got = read_point_cloud(path, with_color=True)
    np.testing.assert_array_equal(got[:, :3], XYZ)
    np.testing.assert_allclose(got[:, 3:], RGB8 / 255.0, rtol=1e-6)


def test_ascii_pcd_with_packed_rgb(tmp_path):
    path = tmp_path / "c.pcd"
    rows = "".join(f"{x!r} {y!r} {z!r} {c!r}\n" for (x, y, z), c in zip(XYZ.tolist(), packed_rgb(RGB8).tolist()))
    path.write_bytes(pcd_header("x y z rgb", "4 4 4 4", "F F F F", 7, "ascii") + rows.encode())
    got = read_point_cloud(path, with_color=True)
    np.testing.assert_array_equal(got[:, :3], XYZ)
    np.testing.assert_allclose(got[:, 3:], RGB8 / 255.0, rtol=1e-6)


def test_binary_pcd(tmp_path):
    path = tmp_path / "c.pcd"
    record = np.dtype([("xyz", "<f4", (3,)), ("rgb", "<f4"), ("i", "<u2")])
    body = np.zeros(7, record)
    body["xyz"], body["rgb"], body["i"] = XYZ, packed_rgb(RGB8), 9
    path.write_bytes(pcd_header("x y z rgb intensity", "4 4 4 4 2", "F F F F U", 7, "binary") + body.tobytes())
    got = read_point_cloud(path, with_color=True)
    np.testing.assert_array_equal(got[:, :3], XYZ)
    np.testing.assert_allclose(got[:, 3:], RGB8 / 255.0, rtol=1e-6)


def test_xyz_and_modelnet_txt(tmp_path):
    xyz = tmp_path / "c.xyz"
    xyz.write_text("".join(f"{x!r}\t{y!r}  {z!r}\n" for x, y, z in XYZ.tolist()))
    np.testing.assert_array_equal(read_point_cloud(xyz), XYZ)
    txt = tmp_path / "airplane_0001.txt"  # ModelNet40 resampled: x,y,z,nx,ny,nz
    normals = -np.abs(RNG.normal(size=(7, 3)))
    txt.write_text("".join(",".join(f"{v!r}" for v in row) + "\n" for row in np.concatenate([XYZ, normals], 1).tolist()))
    np.testing.assert_array_equal(read_point_cloud(txt), XYZ)
    expect_error(txt, "columns 4-6 hold negative values, so they are normals", with_color=True)
    rgb = tmp_path / "rgb.txt"
    rgb.write_text("".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(XYZ.tolist(), RGB8.tolist())))
    np.testing.assert_allclose(read_point_cloud(rgb, with_color=True)[:, 3:], RGB8 / 255.0, rtol=1e-6)


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "a.npy", XYZ)
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "a.npy"), XYZ)
    np.save(tmp_path / "b.npy", np.concatenate([XYZ, RGB8 / 255.0], 1))
    np.testing.assert_allclose(read_point_cloud(tmp_path / "b.npy", with_color=True)[:, 3:], RGB8 / 255.0, rtol=1e-6)
    np.savez(tmp_path / "c.npz", points=XYZ, colors=RGB8)
    got = read_point_cloud(tmp_path / "c.npz", with_color=True)
    np.testing.assert_array_equal(got[:, :3], XYZ)
    np.testing.assert_allclose(got[:, 3:], RGB8 / 255.0, rtol=1e-6)
    np.savez(tmp_path / "d.npz", XYZ)  # stored as arr_0
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "d.npz"), XYZ)


def test_obj_cloud_without_faces(tmp_path):
    path = tmp_path / "c.obj"
    path.write_text("# cloud\n" + "".join(f"v {x!r} {y!r} {z!r}\n" for x, y, z in XYZ.tolist()))
    np.testing.assert_array_equal(read_point_cloud(path), XYZ)


def test_h5_split(tmp_path):
    path = tmp_path / "test_objectdataset.h5"
    data = RNG.normal(size=(4, 16, 3)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5["data"] = data
        h5["label"] = np.array([[3], [1], [0], [14]], dtype=np.uint8)
    points, labels = read_h5_split(path)
    np.testing.assert_array_equal(points, data)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1, 0, 14]


# ----------------------------------------------------------------------------------- resampling


def test_num_points_subsamples_or_repeats(tmp_path):
    cloud = RNG.normal(size=(100, 3)).astype(np.float32)
    np.save(tmp_path / "big.npy", cloud)
    got = read_point_cloud(tmp_path / "big.npy", num_points=10, generator=np.random.default_rng(1))
    rows = {tuple(r) for r in cloud.tolist()}
    assert got.shape == (10, 3) and len({tuple(r) for r in got.tolist()}) == 10
    assert all(tuple(r) in rows for r in got.tolist())
    np.save(tmp_path / "small.npy", XYZ)
    got = read_point_cloud(tmp_path / "small.npy", num_points=12, generator=np.random.default_rng(1))
    assert got.shape == (12, 3)
    np.testing.assert_array_equal(got[:7], XYZ)  # every point kept, then repeats
    assert all(tuple(r) in {tuple(x) for x in XYZ.tolist()} for r in got[7:].tolist())
    expect_error(tmp_path / "small.npy", r"7 points, fewer than the 12 asked \(repeating points is switched off\)",
                 num_points=12, allow_repeats=False)  # fmt: skip


def test_default_color_fills_missing_colour(tmp_path):
    np.save(tmp_path / "a.npy", XYZ)
    got = read_point_cloud(tmp_path / "a.npy", with_color=True, default_color=0.4)
    np.testing.assert_allclose(got[:, 3:], 0.4)
    expect_error(tmp_path / "a.npy", r"no colour \(rgb\) in the file, and with_color=True", with_color=True)


# ----------------------------------------------------------------------------------- meshes


def test_sample_mesh_is_area_uniform():
    # Triangle A (area 1) in the plane z=0, triangle B (area 3) in z=5.
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 2, 5]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    pts = sample_mesh(vertices, faces, 40000, np.random.default_rng(0))
    on_a = pts[:, 2] == 0
    assert np.all(on_a | (pts[:, 2] == 5))
    assert abs(on_a.mean() - 0.25) < 0.01  # binomial std is 0.002
    a = pts[on_a]
    assert np.all(a[:, 0] >= 0) and np.all(a[:, 1] >= 0) and np.all(a[:, 0] / 2 + a[:, 1] <= 1 + 1e-12)
    # Uniform inside the triangle: the part with x < 1 has 3/4 of its area.
    assert abs((a[:, 0] < 1).mean() - 0.75) < 0.015


def test_sample_mesh_interpolates_extra_columns_and_skips_zero_area_faces():
    vertices = np.array([[0, 0, 0, 0.0], [1, 0, 0, 1.0], [0, 1, 0, 0.0], [5, 5, 5, 0.3]])
    faces = np.array([[3, 3, 3], [0, 1, 2], [1, 1, 0]])
    pts = sample_mesh(vertices, faces, 500, np.random.default_rng(2))
    np.testing.assert_allclose(pts[:, 3], pts[:, 0])  # colour column is linear in x here
    assert np.all(pts[:, 2] == 0)
    with pytest.raises(ValueError, match="all 2 faces have zero area"):
        sample_mesh(vertices, faces[[0, 2]], 5)


def test_binary_ply_mesh_triangles_and_quads(tmp_path):
    path = tmp_path / "cube.ply"
    # Mixed polygon sizes exercise the record walk; all quads the vectorised path.
    polys = [list(q) for q in CUBE_QUADS[:3]] + [list(t) for t in CUBE_TRIS[[3, 9, 4, 10, 5, 11]]]
    for polygons in (polys, [list(q) for q in CUBE_QUADS]):
        path.write_bytes(binary_ply_mesh(polygons, CUBE_V))
        pts = read_point_cloud(path, num_points=3000, generator=np.random.default_rng(0))
        assert pts.shape == (3000, 3)
        assert_on_cube(pts)
        # Each of the 6 faces gets about a sixth of the points.
        axis = np.argmax(np.isclose(np.abs(pts), 1, atol=1e-5), axis=1)
        face_of = axis * 2 + (pts[np.arange(len(pts)), axis] > 0)
        assert np.all(np.abs(np.bincount(face_of, minlength=6) / 3000 - 1 / 6) < 0.03)


def test_ascii_ply_mesh(tmp_path):
    path = tmp_path / "cube.ply"
    rows = "".join(f"{x} {y} {z}\n" for x, y, z in CUBE_V.tolist())
    faces = "".join(f"4 {' '.join(map(str, q))}\n" for q in CUBE_QUADS)
    path.write_bytes(ply_header("ascii", 8, False, 6) + (rows + faces).encode())
    assert_on_cube(read_point_cloud(path, num_points=500, generator=np.random.default_rng(0)))


@pytest.mark.parametrize("glued", [True, False])
def test_off_mesh(tmp_path, glued):
    path = tmp_path / "cube.off"
    path.write_text(off_text(CUBE_V, CUBE_QUADS.tolist(), glued))
    pts = read_point_cloud(path, num_points=800, generator=np.random.default_rng(0))
    assert pts.shape == (800, 3)
    assert_on_cube(pts)


def test_obj_mesh_with_slashes_and_negative_indices(tmp_path):
    path = tmp_path / "cube.obj"
    lines = [f"v {x} {y} {z}" for x, y, z in CUBE_V.tolist()] + ["vt 0 0", "vn 0 0 1"]
    lines += [f"f {a + 1}/1/1 {b + 1}//1 {c + 1}/1 {d + 1}" for a, b, c, d in CUBE_QUADS[:4]]
    lines += [" ".join(["f"] + [str(i - 8) for i in q]) for q in CUBE_QUADS[4:]]
    path.write_text("\n".join(lines) + "\n")
    assert_on_cube(read_point_cloud(path, num_points=500, generator=np.random.default_rng(0)))


def test_stl_ascii_and_binary(tmp_path):
    triangles = CUBE_V[CUBE_TRIS]
    binary = tmp_path / "cube_b.stl"
    binary.write_bytes(binary_stl(triangles))
    text = "solid cube\n" + "".join(
        "facet normal 0 0 0\n outer loop\n" + "".join(f"  vertex {x} {y} {z}\n" for x, y, z in tri) + " endloop\nendfacet\n"
        for tri in triangles.tolist()
    ) + "endsolid cube\n"
    ascii_path = tmp_path / "cube_a.stl"
    ascii_path.write_text(text)
    for path in (binary, ascii_path):
        assert_on_cube(read_point_cloud(path, num_points=500, generator=np.random.default_rng(0)))
    a = read_point_cloud(binary, num_points=50, generator=np.random.default_rng(3))
    b = read_point_cloud(ascii_path, num_points=50, generator=np.random.default_rng(3))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mesh_needs_num_points(tmp_path):
    path = tmp_path / "cube.off"
    path.write_text(off_text(CUBE_V, CUBE_QUADS.tolist(), True))
    with pytest.raises(ValueError, match="a mesh must be sampled, pass num_points"):
        read_point_cloud(path)


def test_normalize_unit_sphere():
    cloud = np.concatenate([RNG.normal(size=(50, 3)) * 4 + 10, RNG.random((50, 3))], 1).astype(np.float32)
    out = normalize_unit_sphere(cloud)
    assert out.dtype == np.float32 and out.shape == (50, 6)
    np.testing.assert_allclose(out[:, :3].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:, :3], axis=1).max(), 1, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 3:], cloud[:, 3:])
    centred = cloud[:, :3] - cloud[:, :3].mean(0)
    np.testing.assert_allclose(out[:, :3], centred / np.linalg.norm(centred, axis=1).max(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="all points coincide"):
        normalize_unit_sphere(np.ones((4, 3)))


# ----------------------------------------------------------------------------------- bad input


def test_missing_unknown_and_empty_files(tmp_path):
    expect_error(tmp_path / "nope.ply", "^file not found$")
    (tmp_path / "a.las").write_bytes(b"x")
    expect_error(tmp_path / "a.las", r"unknown suffix '\.las' \(known: \.ply, \.pcd")
    (tmp_path / "e.ply").write_bytes(b"")
    expect_error(tmp_path / "e.ply", r"empty file \(0 bytes\)")
    (tmp_path / "e.txt").write_text("# nothing but a comment\n")
    expect_error(tmp_path / "e.txt", "no points: the file holds an empty cloud")
    (tmp_path / "e.ply").write_bytes(ply_header("binary_little_endian", 0, False))
    expect_error(tmp_path / "e.ply", "no points: the file holds an empty cloud")
    expect_error(tmp_path, "is a directory")


def test_non_finite_coordinates(tmp_path):
    bad = XYZ.copy()
    bad[2, 1], bad[5, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    expect_error(tmp_path / "nan.npy", "2 of 7 points have NaN or inf coordinates")


def test_wrong_channel_count(tmp_path):
    np.save(tmp_path / "four.npy", np.zeros((5, 4), np.float32))
    expect_error(tmp_path / "four.npy", r"shape \[5, 4\]; expected \[N, 3\] \(xyz\) or \[N, 6\]")
    (tmp_path / "four.txt").write_text("1 2 3 4\n5 6 7 8\n")
    expect_error(tmp_path / "four.txt", "expected 3 .* or 6 .* columns, got 4")
    np.savez(tmp_path / "k.npz", cloud=XYZ)
    expect_error(tmp_path / "k.npz", "no point array under xyz, points, pc, arr_0 \\(keys: cloud\\)")
    np.savez(tmp_path / "c.npz", xyz=XYZ, rgb=RGB8[:3])
    expect_error(tmp_path / "c.npz", r"colour array 'rgb' has shape \[3, 3\], expected \[7, 3\]")


def test_degenerate_and_broken_meshes(tmp_path):
    flat = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]], dtype=float)
    (tmp_path / "flat.off").write_text(off_text(flat, [[0, 1, 2], [1, 2, 3]], True))
    expect_error(tmp_path / "flat.off", "degenerate mesh: all 2 faces have zero area", num_points=10)
    (tmp_path / "idx.off").write_text(off_text(CUBE_V, [[0, 1, 8]], False))
    expect_error(tmp_path / "idx.off", "a face refers to vertex 8, the mesh has 8 vertices", num_points=10)
    (tmp_path / "lines.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2\n")
    expect_error(tmp_path / "lines.obj", "mesh without triangles", num_points=10)


def test_truncated_and_unreadable_files(tmp_path):
    ply = binary_ply_mesh([list(q) for q in CUBE_QUADS], CUBE_V)
    (tmp_path / "t.ply").write_bytes(ply[:-30])
    expect_error(tmp_path / "t.ply", "truncated binary PLY: element 'face'", num_points=5)
    (tmp_path / "v.ply").write_bytes(ply_header("binary_little_endian", 10, False) + b"\0" * 50)
    expect_error(tmp_path / "v.ply", "truncated binary PLY: element 'vertex' needs 120 bytes, 50 remain")
    (tmp_path / "t.stl").write_bytes(binary_stl(CUBE_V[CUBE_TRIS], count=20))
    expect_error(tmp_path / "t.stl", r"truncated binary STL: header declares 20 triangles \(1084 bytes\), the file has 684 bytes")
    (tmp_path / "t.off").write_text(off_text(CUBE_V, CUBE_QUADS.tolist(), True)[:-40])
    expect_error(tmp_path / "t.off", "truncated OFF: header declares 8 vertices and 6 faces", num_points=5)
    (tmp_path / "t.pcd").write_bytes(pcd_header("x y z", "4 4 4", "F F F", 7, "binary") + XYZ.tobytes()[:-4])
    expect_error(tmp_path / "t.pcd", r"truncated binary PCD: header declares 7 points \(84 bytes\), 80 bytes follow")
    (tmp_path / "z.pcd").write_bytes(pcd_header("x y z", "4 4 4", "F F F", 7, "binary_compressed") + b"\0" * 20)
    expect_error(tmp_path / "z.pcd", "PCD DATA 'binary_compressed' is not supported")
    (tmp_path / "g.txt").write_text("1 2 3\n4 five 6\n")
    expect_error(tmp_path / "g.txt", "unreadable point line")
    (tmp_path / "g.ply").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    expect_error(tmp_path / "g.ply", r"not a PLY file \(no 'ply' magic or no 'end_header'\)")
    (tmp_path / "g.off").write_text("COFF\n1 0 0\n0 0 0\n")
    expect_error(tmp_path / "g.off", "not an OFF file")
    np.save(tmp_path / "o.npy", np.array([{"xyz": XYZ}], dtype=object), allow_pickle=True)
    expect_error(tmp_path / "o.npy", r"^the file holds pickled objects \(dtype object\), which are never loaded$")


def test_h5_errors(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5["data"] = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(SampleError, match=r"a\.h5: no 'label' dataset \(datasets: data\)"):
        read_h5_split(tmp_path / "a.h5")
    (tmp_path / "b.h5").write_bytes(b"not hdf5")
    with pytest.raises(SampleError, match=r"b\.h5: unreadable HDF5 file"):
        read_h5_split(tmp_path / "b.h5")
    with pytest.raises(SampleError, match=r"c\.h5: file not found"):
        read_h5_split(tmp_path / "c.h5")
