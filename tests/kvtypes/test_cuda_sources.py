"""Consistency of the CUDA decode-kernel sources with each other and with the type list (no GPU needed).

The pair list lives in two places on purpose: tq-cuda.cmake (the build's default) and tq-fattn.cuh (the
fallback used when the sources are compiled without CMake, as .ci/run does); they must name the same pairs.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA = ROOT / "src" / "ggml-tq" / "cuda"


def cmake_default_pairs() -> list[tuple[str, str]]:
    text = (CUDA / "tq-cuda.cmake").read_text()
    m = re.search(r'STREQUAL "default"\)\s*set\(_tq_fa_pairs ([^)]*)\)', text)
    assert m, "default pair list not found in tq-cuda.cmake"
    pairs = []
    for name in m.group(1).split():
        k, v = name.split("-")
        pairs.append((k.upper(), (v if "_" in v else v + "_2").upper()))
    return pairs


def header_fallback_pairs() -> list[tuple[str, str]]:
    text = (CUDA / "tq-fattn.cuh").read_text()
    m = re.search(r"#define TQ_FA_PAIRS\(X\)\s*\\\s*\n(.*)\n", text)
    assert m, "fallback TQ_FA_PAIRS not found in tq-fattn.cuh"
    return re.findall(r"X\((\w+), (\w+)\)", m.group(1))


def ggml_types() -> tuple[set[str], set[str]]:
    text = (ROOT / "src" / "ggml-tq" / "tq-ggml.h").read_text()
    k = re.search(r"#define TQ_GGML_FOR_EACH_K\(X\)(.*)", text).group(1)
    v = re.search(r"#define TQ_GGML_FOR_EACH_V\(X\)((?:.*\\\n)*.*)", text).group(1)
    return set(re.findall(r"X\((\w+),", k)), set(re.findall(r"X\((\w+),", v))


def test_default_pairs_agree_between_cmake_and_header() -> None:
    assert cmake_default_pairs() == header_fallback_pairs()


def test_default_pairs_name_existing_k_and_v_types() -> None:
    k_types, v_types = ggml_types()
    assert len(k_types) == 3 and len(v_types) == 9
    for k, v in cmake_default_pairs():
        assert k in k_types, k
        assert v in v_types, v


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_every_dispatched_head_size_has_an_instance_file(head_dim: int) -> None:
    dispatch = (CUDA / "tq-fattn.cu").read_text()
    assert f"case {head_dim}:" in dispatch
    inst = (CUDA / f"tq-fattn-d{head_dim}.cu").read_text()
    assert f"TQ_FA_INSTANCE_NC({head_dim}, K, V, 2)" in inst
    assert f"TQ_FA_INSTANCE_NC({head_dim}, K, V, 8)" in inst
