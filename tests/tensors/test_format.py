"""The Nx-style repr of tensors: layout, number spelling per dtype, truncation, unreadable bytes."""

from __future__ import annotations

import re

import ml_dtypes
import numpy
import pytest
from numbeam.tensors._format import format_tensor


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def _values_printed(text: str) -> int:
    """Count the numbers in the value lines (the header and closing lines excluded)."""
    body = "\n".join(text.splitlines()[2:-1])
    return len(re.findall(r"-?\d+", body))


def test_scalar_int() -> None:
    assert format_tensor("s64", (), numpy.array(7)) == "nb.Tensor<\n  s64\n  7\n>"


def test_scalar_float() -> None:
    text = format_tensor("f64", (), numpy.array(2.5))
    assert text == "nb.Tensor<\n  f64\n  2.5\n>"


def test_one_dimension_s64() -> None:
    text = format_tensor("s64", (3,), numpy.array([1, -2, 3], dtype=numpy.int64))
    assert text == "nb.Tensor<\n  s64[3]\n  [1, -2, 3]\n>"


def test_two_dimensions_f32_layout() -> None:
    values = numpy.array([[1, 2], [3, 4]], dtype=numpy.float32)
    assert format_tensor("f32", (2, 2), values) == _lines(
        "nb.Tensor<",
        "  f32[2][2]",
        "  [",
        "    [1.0, 2.0],",
        "    [3.0, 4.0]",
        "  ]",
        ">",
    )


def test_three_dimensions_nest_and_indent() -> None:
    values = numpy.arange(8, dtype=numpy.int32).reshape(2, 2, 2)
    assert format_tensor("s32", (2, 2, 2), values) == _lines(
        "nb.Tensor<",
        "  s32[2][2][2]",
        "  [",
        "    [",
        "      [0, 1],",
        "      [2, 3]",
        "    ],",
        "    [",
        "      [4, 5],",
        "      [6, 7]",
        "    ]",
        "  ]",
        ">",
    )


def test_empty_dimension() -> None:
    text = format_tensor("f32", (0,), numpy.zeros((0,), dtype=numpy.float32))
    assert text == "nb.Tensor<\n  f32[0]\n  []\n>"


def test_empty_inner_dimension() -> None:
    text = format_tensor("s8", (2, 0), numpy.zeros((2, 0), dtype=numpy.int8))
    assert text == "nb.Tensor<\n  s8[2][0]\n  [\n    [],\n    []\n  ]\n>"


def test_empty_outer_dimension() -> None:
    text = format_tensor("s8", (0, 3), numpy.zeros((0, 3), dtype=numpy.int8))
    assert text == "nb.Tensor<\n  s8[0][3]\n  []\n>"


def test_f32_prints_shortest_at_its_precision() -> None:
    values = numpy.array([0.1, 1 / 3, 1e-5, 1e20, -0.0], dtype=numpy.float32)
    text = format_tensor("f32", (5,), values)
    assert text == "nb.Tensor<\n  f32[5]\n  [0.1, 0.33333334, 1e-05, 1e+20, -0.0]\n>"


def test_f16_prints_shortest_at_its_precision() -> None:
    values = numpy.array([0.1, 1 / 3, 2.0], dtype=numpy.float16)
    text = format_tensor("f16", (3,), values)
    assert text == "nb.Tensor<\n  f16[3]\n  [0.1, 0.3333, 2.0]\n>"


def test_f64_prints_python_repr() -> None:
    values = numpy.array([0.1, 1 / 3], dtype=numpy.float64)
    text = format_tensor("f64", (2,), values)
    assert text == "nb.Tensor<\n  f64[2]\n  [0.1, 0.3333333333333333]\n>"


def test_bf16_prints_shortest_at_its_precision() -> None:
    # 1/3 is 0.333984375 in bf16: three digits tell it from its neighbours, rounded to nearest.
    values = numpy.array([0.1, 1.0, -3.0, 1 / 3], dtype=ml_dtypes.bfloat16)
    text = format_tensor("bf16", (4,), values)
    assert text == "nb.Tensor<\n  bf16[4]\n  [0.1, 1.0, -3.0, 0.334]\n>"


def test_bf16_non_finite() -> None:
    values = numpy.array([numpy.nan, numpy.inf], dtype=ml_dtypes.bfloat16)
    assert format_tensor("bf16", (2,), values) == "nb.Tensor<\n  bf16[2]\n  [NaN, Inf]\n>"


def test_complex_c64() -> None:
    values = numpy.array([1 + 2j, 0.1 - 0.5j, -1j], dtype=numpy.complex64)
    text = format_tensor("c64", (3,), values)
    assert text == "nb.Tensor<\n  c64[3]\n  [1.0+2.0i, 0.1-0.5i, -0.0-1.0i]\n>"


def test_complex_c128_non_finite() -> None:
    values = numpy.array([complex(numpy.nan, -numpy.inf)], dtype=numpy.complex128)
    assert format_tensor("c128", (1,), values) == "nb.Tensor<\n  c128[1]\n  [NaN-Infi]\n>"


@pytest.mark.parametrize("dtype, np_dtype", [("f32", numpy.float32), ("f64", numpy.float64)])
def test_nan_and_inf_use_nx_spelling(dtype: str, np_dtype: type[numpy.floating]) -> None:
    values = numpy.array([numpy.nan, numpy.inf, -numpy.inf, 1.5], dtype=np_dtype)
    text = format_tensor(dtype, (4,), values)
    assert text == f"nb.Tensor<\n  {dtype}[4]\n  [NaN, Inf, -Inf, 1.5]\n>"


def test_unsigned_u8() -> None:
    values = numpy.array([0, 128, 255], dtype=numpy.uint8)
    assert format_tensor("u8", (3,), values) == "nb.Tensor<\n  u8[3]\n  [0, 128, 255]\n>"


def test_large_u64_prints_exactly() -> None:
    values = numpy.array([2**64 - 1], dtype=numpy.uint64)
    text = format_tensor("u64", (1,), values)
    assert text == "nb.Tensor<\n  u64[1]\n  [18446744073709551615]\n>"


def test_large_one_dimension_truncates() -> None:
    values = numpy.arange(1000, dtype=numpy.int64)
    expected = "[" + ", ".join(str(i) for i in range(30)) + ", ...]"
    assert format_tensor("s64", (1000,), values) == f"nb.Tensor<\n  s64[1000]\n  {expected}\n>"


def test_exactly_limit_elements_print_in_full() -> None:
    values = numpy.arange(30, dtype=numpy.int64)
    text = format_tensor("s64", (30,), values)
    assert "..." not in text
    assert _values_printed(text) == 30


def test_large_three_dimensions_truncate_every_dimension() -> None:
    values = numpy.arange(1000, dtype=numpy.int64).reshape(10, 10, 10)
    text = format_tensor("s64", (10, 10, 10), values)
    assert text == _lines(
        "nb.Tensor<",
        "  s64[10][10][10]",
        "  [",
        "    [",
        "      [0, 1, 2, ...],",
        "      [10, 11, 12, ...],",
        "      [20, 21, 22, ...],",
        "      ...",
        "    ],",
        "    [",
        "      [100, 101, 102, ...],",
        "      [110, 111, 112, ...],",
        "      [120, 121, 122, ...],",
        "      ...",
        "    ],",
        "    [",
        "      [200, 201, 202, ...],",
        "      [210, 211, 212, ...],",
        "      [220, 221, 222, ...],",
        "      ...",
        "    ],",
        "    ...",
        "  ]",
        ">",
    )
    assert _values_printed(text) == 27


def test_short_dimension_lends_its_share_to_the_others() -> None:
    values = numpy.arange(2000, dtype=numpy.int64).reshape(2, 1000)
    text = format_tensor("s64", (2, 1000), values)
    lines = text.splitlines()
    assert lines[3] == "    [" + ", ".join(str(i) for i in range(15)) + ", ...],"
    assert lines[4] == "    [" + ", ".join(str(i) for i in range(1000, 1015)) + ", ...]"
    assert _values_printed(text) == 30


@pytest.mark.parametrize("limit", [1, 5, 30, 100])
def test_total_printed_stays_within_limit(limit: int) -> None:
    shape = (7, 11, 13, 3)
    values = numpy.ones(shape, dtype=numpy.int16)
    text = format_tensor("s16", shape, values, limit=limit)
    assert "..." in text
    assert 1 <= _values_printed(text) <= limit


def test_unreadable_values_print_ellipsis() -> None:
    assert format_tensor("f32", (2, 2), None) == "nb.Tensor<\n  f32[2][2]\n  ...\n>"


def test_non_cpu_device_gets_its_own_line() -> None:
    text = format_tensor("s64", (2,), numpy.array([1, 2]), device="fake:0")
    assert text == "nb.Tensor<\n  s64[2]\n  device: fake:0\n  [1, 2]\n>"


def test_cpu_device_prints_no_device_line() -> None:
    assert "device" not in format_tensor("s64", (2,), numpy.array([1, 2]), device="cpu")


def test_huge_tensor_reads_only_what_it_prints() -> None:
    values = numpy.zeros(10**8, dtype=numpy.uint8)
    values.flags.writeable = False
    text = format_tensor("u8", (10**8,), values)
    assert "..." in text
    cube = values.reshape(1000, 1000, 100)
    assert "..." in format_tensor("u8", (1000, 1000, 100), cube)


def test_read_only_values_are_accepted() -> None:
    values = numpy.arange(4, dtype=numpy.float32).reshape(2, 2)
    values.flags.writeable = False
    assert "[2.0, 3.0]" in format_tensor("f32", (2, 2), values)


def test_unknown_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'float32'"):
        format_tensor("float32", (1,), numpy.zeros(1, dtype=numpy.float32))


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"values have shape \(3,\), expected \(2,\)"):
        format_tensor("s64", (2,), numpy.arange(3))


def test_bad_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        format_tensor("s64", (2,), numpy.arange(2), limit=0)
    with pytest.raises(TypeError, match="limit must be an int"):
        format_tensor("s64", (2,), numpy.arange(2), limit=2.5)  # type: ignore[arg-type]
