"""nb.Tensor in one process: dtypes, construction, errors, immutability, views that outlive the
tensor, the inline threshold, repr, numpy and DLPack interop, devices, pickling, the builder."""

from __future__ import annotations

import gc
import pickle
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from numbeam.tensors import DTYPES, Builder, build, from_dlpack

import numbeam as nb

BF16 = np.dtype(ml_dtypes.bfloat16)
# Element counts that land inline (<= 64 bytes for every dtype), in the arena, and (for the
# wider dtypes) in a segment of their own (> 256 KiB).
SIZES = [2, 100, 40_000]
# Bytes of each kind of storage: inline, arena (1 KiB), a segment of its own (512 KiB).
STORAGE = {"inline": 64, "arena": 1024, "large": 512 * 1024}


def addr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def values(name: str, n: int) -> np.ndarray:
    """``n`` distinct-ish values of dtype ``name`` (exact in every dtype)."""
    a = np.arange(n) % 100
    if DTYPES[name].kind == "c":
        return (a + 1j * (a % 7)).astype(DTYPES[name])
    return a.astype(DTYPES[name])


def u8_tensor(nbytes: int, fill: int) -> nb.Tensor:
    return nb.tensor(np.full(nbytes, fill, np.uint8))


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_round_trips(name: str, n: int) -> None:
    src = values(name, n)
    t = nb.tensor(src)
    assert t.dtype == name
    assert t.numpy().dtype == DTYPES[name]
    assert t.shape == (n,)
    assert t.nbytes == src.nbytes
    assert t.size == n
    np.testing.assert_array_equal(t.numpy().astype(np.complex128), src.astype(np.complex128))


@pytest.mark.parametrize("name", list(DTYPES))
def test_explicit_dtype_by_name_and_by_numpy_dtype(name: str) -> None:
    by_name = nb.tensor([1, 2, 3], name)
    by_numpy = nb.tensor([1, 2, 3], DTYPES[name])
    assert by_name.dtype == by_numpy.dtype == name
    assert by_name.numpy().dtype == DTYPES[name]
    assert by_name.tolist() == by_numpy.tolist()
    assert [complex(x) for x in by_name.tolist()] == [1, 2, 3]


def test_bf16_is_ml_dtypes_bfloat16() -> None:
    t = nb.tensor(np.array([1.5, -2.0, 3.25], dtype=BF16))
    assert t.dtype == "bf16"
    assert t.numpy().dtype == BF16
    assert t.numpy().astype(np.float32).tolist() == [1.5, -2.0, 3.25]
    big = nb.tensor((np.arange(1000) % 200).astype(np.float32).astype(BF16))
    assert big.shared
    assert big.numpy().dtype == BF16
    np.testing.assert_array_equal(big.numpy().astype(np.float32), np.arange(1000) % 200)


def test_bf16_converts_to_other_dtypes() -> None:
    src = np.array([1.5, -2.0, 3.25] * 30, dtype=BF16)
    t = nb.tensor(src, "f32")
    assert t.dtype == "f32"
    assert t.numpy().tolist() == [1.5, -2.0, 3.25] * 30
    as_tensor = nb.tensor(nb.tensor(src), "f64")
    assert as_tensor.dtype == "f64"
    assert as_tensor.tolist() == [1.5, -2.0, 3.25] * 30


def test_bf16_numpy_scalars_keep_their_dtype() -> None:
    t = nb.tensor(ml_dtypes.bfloat16(1.5))
    assert t.dtype == "bf16"
    assert t.shape == ()
    assert float(t.item()) == 1.5
    lst = nb.tensor([ml_dtypes.bfloat16(1.5), ml_dtypes.bfloat16(2)])
    assert lst.dtype == "bf16"


def test_to_bf16_from_lists_and_arrays() -> None:
    assert nb.tensor([1.5, 2], "bf16").numpy().astype(np.float32).tolist() == [1.5, 2.0]
    t = nb.tensor(np.array([0.5, 4], np.float16), "bf16")
    assert t.dtype == "bf16"
    assert t.numpy().astype(np.float32).tolist() == [0.5, 4.0]


def test_bool_becomes_u8() -> None:
    assert nb.tensor(np.array([True, False, True])).dtype == "u8"
    assert nb.tensor([True, False]).tolist() == [1, 0]
    assert nb.tensor(np.bool_(True)).dtype == "u8"
    assert nb.tensor([1, 0], "bool").dtype == "u8"


def test_non_native_byte_order_is_converted() -> None:
    src = np.arange(100, dtype=">i4")
    t = nb.tensor(src)
    assert t.dtype == "s32"
    assert t.numpy().dtype.isnative
    assert t.tolist() == list(range(100))


# ----------------------------------------------------------------------------- construction


def test_python_scalar_defaults() -> None:
    cases = [(3, "s64"), (-7, "s64"), (2.5, "f32"), (1 + 2j, "c64"), (True, "u8")]
    for value, name in cases:
        t = nb.tensor(value)
        assert t.dtype == name, value
        assert t.shape == ()
        assert t.ndim == 0
        assert t.item() == value


def test_numpy_scalars_keep_their_dtype() -> None:
    cases = [
        (np.float64(1.5), "f64"),
        (np.float16(1.5), "f16"),
        (np.int8(-3), "s8"),
        (np.uint16(7), "u16"),
        (np.uint64(2**63), "u64"),
        (np.complex128(1 + 1j), "c128"),
    ]
    for value, name in cases:
        t = nb.tensor(value)
        assert t.dtype == name, value
        assert t.shape == ()
        assert t.item() == value


def test_nested_lists_and_tuples() -> None:
    t = nb.tensor([[1, 2, 3], [4, 5, 6]])
    assert (t.dtype, t.shape) == ("s64", (2, 3))
    assert t.tolist() == [[1, 2, 3], [4, 5, 6]]
    u = nb.tensor(((1.0, 2.0),))
    assert (u.dtype, u.shape) == ("f32", (1, 2))
    mixed = nb.tensor([1, 2.5])
    assert mixed.dtype == "f32"
    assert nb.tensor([1, 1j]).dtype == "c64"
    deep = nb.tensor([[[i + j + k for k in range(4)] for j in range(4)] for i in range(4)])
    assert deep.shape == (4, 4, 4)
    assert deep.shared  # 512 bytes
    assert deep.numpy()[3, 2, 1] == 6


def test_zero_dimensional_array() -> None:
    t = nb.tensor(np.array(5, np.int16))
    assert (t.dtype, t.shape, t.ndim, t.size, t.nbytes) == ("s16", (), 0, 1, 2)
    assert t.item() == 5
    assert t.tolist() == 5
    with pytest.raises(TypeError, match="scalar"):
        len(t)


@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3, 4)])
def test_empty_shapes(shape: tuple[int, ...]) -> None:
    t = nb.tensor(np.zeros(shape, np.float32))
    assert t.shape == shape
    assert t.nbytes == 0
    assert t.size == 0
    assert not t.shared
    assert t.numpy().shape == shape
    assert t.tolist() == np.zeros(shape).tolist()
    assert "nb.Tensor<" in repr(t)


def test_empty_list() -> None:
    t = nb.tensor([])
    assert t.shape == (0,)
    assert t.dtype == "f32"


def test_explicit_dtype_converts_values() -> None:
    t = nb.tensor(np.arange(10, dtype=np.int64), "f16")
    assert t.dtype == "f16"
    assert t.tolist() == [float(i) for i in range(10)]
    u = nb.tensor([1.9, -1.9], "s32")
    assert u.dtype == "s32"
    assert u.tolist() == [1, -1]


def test_layouts_are_copied_into_c_order() -> None:
    src = np.arange(400, dtype=np.float64).reshape(20, 20)
    for view in (src[::2, ::3], src.T, np.asfortranarray(src), src[5]):
        t = nb.tensor(view)
        assert t.shape == view.shape
        np.testing.assert_array_equal(t.numpy(), view)
        assert t.numpy().flags.c_contiguous


def test_large_non_contiguous_source() -> None:
    src = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    t = nb.tensor(src[:, ::2])
    assert t.nbytes > 256 * 1024
    np.testing.assert_array_equal(t.numpy(), src[:, ::2])


def test_ndarray_subclass_keeps_only_the_data() -> None:
    class Sub(np.ndarray):
        pass

    src = np.arange(50, dtype=np.int32).view(Sub)
    t = nb.tensor(src)
    assert type(t.numpy()) is np.ndarray
    assert t.tolist() == list(range(50))


def test_source_changes_do_not_reach_the_tensor() -> None:
    for nbytes in STORAGE.values():
        src = np.zeros(nbytes, np.uint8)
        t = nb.tensor(src)
        src[:] = 9
        assert not t.numpy().any()


def test_tensor_given_to_tensor() -> None:
    t = nb.tensor(np.arange(100, dtype=np.float32))
    assert nb.tensor(t) is t
    assert nb.tensor(t, "f32") is t
    assert nb.tensor(t, np.float32) is t
    d = nb.tensor(t, "f64")
    assert d is not t
    assert d.dtype == "f64"
    assert d.tolist() == t.tolist()
    assert t.dtype == "f32"


def test_list_of_tensors() -> None:
    t = nb.tensor([nb.tensor([1, 2]), nb.tensor([3, 4])])
    assert t.shape == (2, 2)
    assert t.tolist() == [[1, 2], [3, 4]]


def test_tensor_class_cannot_be_called() -> None:
    with pytest.raises(TypeError, match=r"numbeam\.tensor"):
        nb.Tensor()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([object(), object()]), "object"),
        (np.array(["a", "b"]), "U1"),
        (np.array([b"a"]), "S1"),
        (np.array(["2020-01-01"], "M8[D]"), "datetime64"),
        (np.zeros(3, [("a", "f4")]), "tensors cannot hold"),
        ("abc", "str"),
        (b"abc", "bytes"),
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        ({1, 2}, "set"),
        ([1, None], "numbers only"),
        (["a", "b"], "numbers only"),
        ((x for x in range(3)), "generator"),
        (object(), "object"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_bad_data_is_a_type_error(data: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        nb.tensor(data)


def test_ragged_list_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ragged"):
        nb.tensor([[1, 2], [3]])
    with pytest.raises(ValueError, match="ragged"):
        nb.tensor([[1.0], [2.0, 3.0]], "f64")


@pytest.mark.parametrize("name", ["f8", "float", "i4", "u128", "", "F32"])
def test_unknown_dtype_name_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown tensor dtype") as info:
        nb.tensor([1, 2], name)
    assert repr(name) in str(info.value)
    assert "bf16" in str(info.value)  # the message lists what is valid


@pytest.mark.parametrize("dtype", [object, 5, np.dtype("U3"), np.dtype("M8[s]")])
def test_unsupported_dtype_object_is_a_type_error(dtype: Any) -> None:
    with pytest.raises(TypeError):
        nb.tensor([1, 2], dtype)
    with pytest.raises(TypeError):
        nb.tensor(np.arange(3), dtype)


def test_complex_to_real_is_refused() -> None:
    with pytest.raises(TypeError, match="complex"):
        nb.tensor([1j, 2], "f32")
    with pytest.raises(TypeError, match="complex"):
        nb.tensor(np.array([1j] * 40), "f64")


def test_python_int_outside_s64_is_refused() -> None:
    # Python ints become s64: one that does not fit must not wrap around silently.
    with pytest.raises((OverflowError, ValueError, TypeError)):
        nb.tensor(2**63)
    with pytest.raises((OverflowError, ValueError, TypeError)):
        nb.tensor([2**63, 2**64 - 1])
    with pytest.raises((OverflowError, ValueError, TypeError)):
        nb.tensor(2**70)


def test_bad_input_allocates_nothing() -> None:
    gc.collect()
    before = nb.tensors.stats()["buffers"]
    for bad in (np.array([object()] * 100), [[1] * 100, [2]], "x" * 1000):
        with pytest.raises((TypeError, ValueError)):
            nb.tensor(bad)
    assert nb.tensors.stats()["buffers"] == before


# ----------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("kind", list(STORAGE))
def test_numpy_view_is_read_only(kind: str) -> None:
    t = u8_tensor(STORAGE[kind], 3)
    a = t.numpy()
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1
    with pytest.raises(ValueError):
        a.flags.writeable = True
    with pytest.raises(ValueError):
        a.reshape(-1)[:2] = 0
    with pytest.raises(ValueError):
        np.add(a, 1, out=a)
    assert (t.numpy() == 3).all()


@pytest.mark.parametrize("kind", list(STORAGE))
def test_views_of_views_are_read_only(kind: str) -> None:
    t = u8_tensor(STORAGE[kind], 3)
    v = t.numpy()[1:].view(np.int8)
    with pytest.raises(ValueError):
        v.flags.writeable = True
    with pytest.raises(ValueError):
        v[0] = 0


def test_attributes_cannot_be_set_or_added() -> None:
    t = nb.tensor(np.arange(100, dtype=np.float32))
    for name, value in [
        ("shape", (10, 10)),
        ("dtype", "f64"),
        ("nbytes", 4),
        ("device", "cuda"),
        ("shared", False),
        ("ndim", 2),
        ("size", 1),
    ]:
        with pytest.raises(AttributeError):
            setattr(t, name, value)
    with pytest.raises(AttributeError):
        t.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del t.shape  # type: ignore[misc]
    assert (t.shape, t.dtype) == ((100,), "f32")


# ----------------------------------------------------------------------------- lifetimes


@pytest.mark.parametrize("kind", list(STORAGE))
def test_numpy_view_keeps_the_bytes_alive(kind: str) -> None:
    nbytes = STORAGE[kind]
    view = u8_tensor(nbytes, 7).numpy()  # the tensor itself is dropped at once
    gc.collect()
    # Make and drop enough tensors of the size that a freed block or segment would be reused
    # (arena blocks go round their chunk), then keep a few.
    probe = u8_tensor(nbytes, 0)
    rounds = 2 * probe._chunk.n + 100 if probe._chunk is not None else 20
    del probe
    for i in range(rounds):
        u8_tensor(nbytes, 100 + i % 100)
    others = [u8_tensor(nbytes, 100 + i) for i in range(10)]
    assert (view == 7).all()
    assert all((o.numpy() == 100 + i).all() for i, o in enumerate(others))
    if kind != "inline":
        assert addr(view) not in {addr(o.numpy()) for o in others}


def test_derived_views_keep_the_bytes_alive() -> None:
    t = nb.tensor(np.arange(256, dtype=np.int32))
    tail = t.numpy()[128:].reshape(8, 16).T
    del t
    gc.collect()
    others = [nb.tensor(np.full(256, -1, np.int32)) for _ in range(300)]
    assert others[-1].tolist()[0] == -1
    assert tail.T.reshape(-1).tolist() == list(range(128, 256))


def test_dropped_tensor_keeps_no_view_alive() -> None:
    # The reverse: a tensor alive only through a view is freed with the view.
    gc.collect()
    before = nb.tensors.stats()["buffers"]
    view = u8_tensor(1024, 1).numpy()
    assert nb.tensors.stats()["buffers"] == before + 1
    del view
    assert nb.tensors.stats()["buffers"] == before


# ----------------------------------------------------------------------------- the threshold


@pytest.mark.parametrize(
    ("nbytes", "shared"), [(0, False), (1, False), (64, False), (65, True), (4096, True)]
)
def test_threshold(nbytes: int, shared: bool) -> None:
    t = u8_tensor(nbytes, 5)
    assert t.shared is shared
    assert t.nbytes == nbytes
    assert (t.numpy() == 5).all()


def test_threshold_counts_bytes_not_elements() -> None:
    assert not nb.tensor(np.zeros(16, np.float32)).shared  # 64 bytes
    assert nb.tensor(np.zeros(17, np.float32)).shared  # 68 bytes
    assert not nb.tensor(np.zeros(4, np.complex128)).shared
    assert nb.tensor(np.zeros(5, np.complex128)).shared


def test_inline_tensors_behave_the_same() -> None:
    small = nb.tensor([[1.5, 2.5], [3.5, 4.5]])
    big = nb.tensor(np.array([[1.5, 2.5], [3.5, 4.5]] * 10, np.float32))
    assert not small.shared and big.shared
    for t in (small, big):
        assert t.dtype == "f32"
        assert t.device == "cpu"
        assert t.numpy()[1, 1] == 4.5
        assert t.tolist()[0] == [1.5, 2.5]
        assert not np.asarray(t).flags.writeable
        assert np.from_dlpack(t)[0, 1] == 2.5
        assert nb.tensor(t) is t
        assert t.to("cpu") is t
        assert "f32[" in repr(t)


# ----------------------------------------------------------------------------- repr


def test_repr_small() -> None:
    text = repr(nb.tensor([[1, 2], [3, 4]], "f32"))
    assert text.startswith("nb.Tensor<\n")
    assert "  f32[2][2]\n" in text
    assert "1.0" in text and "4.0" in text
    assert text.endswith(">")


def test_repr_scalar_and_dtypes() -> None:
    assert repr(nb.tensor(7)) == "nb.Tensor<\n  s64\n  7\n>"
    assert "  bf16[3]\n" in repr(nb.tensor([1, 2, 3], "bf16"))
    assert "  u8[65]\n" in repr(u8_tensor(65, 1))


def test_repr_of_a_huge_tensor_is_short() -> None:
    t = nb.tensor(np.zeros(10**7, np.float32))
    text = repr(t)
    assert "  f32[10000000]\n" in text
    assert len(text) < 2000
    assert str(t) == text


def test_repr_of_large_2d_tensor() -> None:
    text = repr(nb.tensor(np.ones((1000, 1000), np.int32)))
    assert "s32[1000][1000]" in text
    assert len(text) < 4000


# ----------------------------------------------------------------------------- numpy interop


@pytest.mark.parametrize("kind", list(STORAGE))
def test_asarray_is_a_read_only_view(kind: str) -> None:
    t = u8_tensor(STORAGE[kind], 4)
    a = np.asarray(t)
    assert not a.flags.writeable
    assert np.shares_memory(a, t.numpy())
    assert np.asarray(t, copy=False).__array_interface__["data"] == a.__array_interface__["data"]


def test_asarray_with_dtype_converts() -> None:
    t = nb.tensor(np.arange(100, dtype=np.int32))
    a = np.asarray(t, dtype=np.float64)
    assert a.dtype == np.float64
    assert a.tolist() == [float(i) for i in range(100)]
    assert not np.shares_memory(a, t.numpy())
    with pytest.raises(ValueError):
        np.asarray(t, dtype=np.float64, copy=False)


def test_array_copy_is_writable_and_separate() -> None:
    t = nb.tensor(np.arange(100, dtype=np.int32))
    c = np.array(t, copy=True)
    assert c.flags.writeable
    assert not np.shares_memory(c, t.numpy())
    c[:] = 0
    assert t.tolist() == list(range(100))
    c2 = np.asarray(t, copy=True)
    assert c2.flags.writeable


def test_numpy_functions_accept_tensors() -> None:
    t = nb.tensor(np.arange(12, dtype=np.float64).reshape(3, 4))
    assert np.sum(t) == 66
    assert (np.add(t, 1) == np.arange(1, 13).reshape(3, 4)).all()


def test_tolist_item_len() -> None:
    t = nb.tensor(np.arange(6, dtype=np.int16).reshape(3, 2))
    assert t.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert len(t) == 3
    assert nb.tensor([[9]]).item() == 9
    assert isinstance(nb.tensor(2.5).item(), float)
    with pytest.raises(ValueError):
        t.item()
    assert len(nb.tensor(np.zeros((0, 4)))) == 0


def test_attributes() -> None:
    t = nb.tensor(np.zeros((3, 4, 5), np.complex64))
    assert (t.shape, t.ndim, t.size, t.nbytes, t.device) == ((3, 4, 5), 3, 60, 480, "cpu")
    assert isinstance(t.shape, tuple)


# ----------------------------------------------------------------------------- DLPack


@pytest.mark.parametrize("kind", list(STORAGE))
def test_numpy_from_dlpack_is_zero_copy_and_read_only(kind: str) -> None:
    t = nb.tensor(np.arange(STORAGE[kind] // 4, dtype=np.float32))
    a = np.from_dlpack(t)
    assert addr(a) == addr(t.numpy())
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    np.testing.assert_array_equal(a, t.numpy())


def test_from_dlpack_view_keeps_the_bytes_alive() -> None:
    a = np.from_dlpack(nb.tensor(np.full(256, 3, np.int32)))
    gc.collect()
    others = [nb.tensor(np.full(256, 8, np.int32)) for _ in range(300)]
    assert (a == 3).all()
    assert (others[0].numpy() == 8).all()


def test_dlpack_device() -> None:
    t = nb.tensor(np.zeros(100))
    assert t.__dlpack_device__() == (1, 0)


def test_dlpack_without_max_version_is_a_buffer_error() -> None:
    t = nb.tensor(np.zeros(100))
    with pytest.raises(BufferError, match="max_version"):
        t.__dlpack__()
    assert t.__dlpack__(max_version=(1, 0)) is not None


def test_from_dlpack_copies_into_shared_memory() -> None:
    src = np.arange(1000, dtype=np.float64)
    t = from_dlpack(src)
    assert isinstance(t, nb.Tensor)
    assert t.shared
    assert t.dtype == "f64"
    assert addr(t.numpy()) != addr(src)
    src[:] = -1
    assert t.tolist() == list(range(1000))


def test_from_dlpack_of_a_tensor_is_the_tensor() -> None:
    t = nb.tensor(np.zeros(100))
    assert from_dlpack(t) is t
    small = nb.tensor([1])
    assert from_dlpack(small) is small


@pytest.mark.parametrize("obj", [object(), [1, 2], 3, "abc"])
def test_from_dlpack_without_dlpack_is_a_type_error(obj: Any) -> None:
    with pytest.raises(TypeError, match="DLPack"):
        from_dlpack(obj)


def test_torch_round_trip() -> None:
    torch = pytest.importorskip("torch")
    src = torch.arange(1000, dtype=torch.float32)
    t = from_dlpack(src)
    assert (t.dtype, t.shape, t.shared) == ("f32", (1000,), True)
    assert t.tolist() == src.tolist()
    src.fill_(0)  # a copy: the tensor keeps its values
    assert t.numpy()[999] == 999
    with warnings.catch_warnings():
        # torch warns that it cannot mark the memory read-only
        warnings.simplefilter("ignore", UserWarning)
        try:
            back = torch.from_dlpack(t)
        except BufferError as e:  # a torch that only speaks DLPack < 1.0
            assert "max_version" in str(e)
            return
    assert back.dtype == torch.float32
    assert back.data_ptr() == addr(t.numpy())
    assert back.tolist() == t.tolist()


# ----------------------------------------------------------------------------- devices, pickling


def test_to_device() -> None:
    t = nb.tensor(np.zeros(100))
    assert t.to("cpu") is t
    with pytest.raises(ValueError, match="cuda:0"):
        t.to("cuda:0")
    with pytest.raises(TypeError):
        t.to(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t.to(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(STORAGE))
def test_pickling_is_refused(kind: str) -> None:
    t = u8_tensor(STORAGE[kind], 1)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(t, protocol)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [t]})


# ----------------------------------------------------------------------------- the builder


@pytest.mark.parametrize("kind", list(STORAGE))
def test_builder_writes_in_place(kind: str) -> None:
    n = STORAGE[kind] // 4
    b = Builder((n,), "s32")
    a = b.array
    assert a.flags.writeable
    assert (a.shape, a.dtype) == ((n,), np.dtype(np.int32))
    a[:] = np.arange(n)
    t = b.freeze()
    assert isinstance(t, nb.Tensor)
    assert (t.dtype, t.shape) == ("s32", (n,))
    assert t.shared is (kind != "inline")
    assert t.tolist() == list(range(n))
    if kind != "inline":  # no copy: the array is the tensor's memory
        assert addr(a) == addr(t.numpy())


@pytest.mark.parametrize("kind", list(STORAGE))
def test_builder_array_is_read_only_after_freeze(kind: str) -> None:
    b = Builder((STORAGE[kind],), "u8")
    a = b.array
    a[:] = 1
    t = b.freeze()
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 2
    if kind != "inline":
        with pytest.raises(ValueError):
            a.flags.writeable = True
    assert (t.numpy() == 1).all()


def test_builder_array_is_handed_out_once() -> None:
    b = Builder((100,), "f32")
    first = b.array
    with pytest.raises(RuntimeError, match="handed out"):
        _ = b.array
    assert b.freeze().nbytes == first.nbytes
    with pytest.raises(RuntimeError, match="frozen"):
        _ = b.array


def test_builder_freezes_once() -> None:
    for shape in ((4,), (1000,)):
        b = Builder(shape, "f32")
        b.array[:] = 1
        b.freeze()
        with pytest.raises(RuntimeError, match="frozen"):
            b.freeze()


def test_builder_bf16() -> None:
    b = Builder((8, 8), "bf16")
    a = b.array
    assert a.dtype == BF16
    a[...] = np.arange(64, dtype=np.float32).reshape(8, 8)
    t = b.freeze()
    assert (t.dtype, t.shape, t.shared) == ("bf16", (8, 8), True)
    assert t.numpy().astype(np.float32).reshape(-1).tolist() == [float(i) for i in range(64)]


def test_builder_shapes() -> None:
    assert Builder(5, "u8").array.shape == (5,)
    assert Builder([2, 3], "u8").array.shape == (2, 3)
    assert Builder(np.int64(3), "u8").array.shape == (3,)
    assert Builder((), "f64").array.shape == ()
    t = Builder((2, 0), "f32").freeze()
    assert (t.shape, t.nbytes, t.shared) == ((2, 0), 0, False)


def test_builder_default_dtype_is_f32() -> None:
    b = Builder((3,))
    b.array[:] = [1, 2, 3]
    assert b.freeze().dtype == "f32"


def test_builder_bad_shapes() -> None:
    with pytest.raises(ValueError, match="negative"):
        Builder((-1,), "f32")
    with pytest.raises(ValueError, match="negative"):
        Builder((2, -3), "f32")
    with pytest.raises(TypeError, match="shape"):
        Builder(None, "f32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shape"):
        Builder(2.5, "f32")  # type: ignore[arg-type]


def test_builder_str_shape_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="shape"):
        Builder("abc", "f32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shape"):
        Builder("12", "f32")  # type: ignore[arg-type]


def test_builder_fractional_size_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="shape"):
        Builder((2.5,), "f32")  # type: ignore[arg-type]


def test_builder_bad_dtype() -> None:
    with pytest.raises(ValueError, match="unknown tensor dtype"):
        Builder((3,), "f8")
    with pytest.raises(TypeError):
        Builder((3,), object)


def test_build_fills_in_place() -> None:
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    t = build((4, 4), "f32", lambda out: np.matmul(x, np.eye(4, dtype=np.float32), out=out))
    assert (t.dtype, t.shape) == ("f32", (4, 4))
    np.testing.assert_array_equal(t.numpy(), x)
    assert not t.numpy().flags.writeable

    seen: list[int] = []

    def fill(out: np.ndarray) -> None:
        seen.append(addr(out))
        out[...] = 7

    big = build(200_000, "u8", fill)
    assert (big.numpy() == 7).all()
    assert seen == [addr(big.numpy())]
    small = build((2,), "s8", lambda out: out.__setitem__(slice(None), [-1, 1]))
    assert small.tolist() == [-1, 1]
    assert not small.shared


def test_build_error_in_fill_propagates() -> None:
    def fail(out: np.ndarray) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build((1000,), "f32", fail)
