"""Consistency of the CUDA decode-kernel sources with each other and with the type list (no GPU needed).

The pair list lives in two places on purpose: tq-cuda.cmake (the build's default) and tq-fattn.cuh (the
fallback used when the sources are compiled without CMake, as .ci/run does); they must name the same pairs.
"""

import re
import shutil
import subprocess
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


@pytest.mark.parametrize(("head_dim", "max_cols"), [(64, 8), (128, 8), (256, 4)])
def test_every_dispatched_head_size_has_an_instance_file(head_dim: int, max_cols: int) -> None:
    """Each head size has instances for 2 query columns up to its largest (4 at 256: registers), and the
    host caps the columns of a block at that largest for 256 (tq_fattn_max_cols)."""
    dispatch = (CUDA / "tq-fattn.cu").read_text()
    assert f"case {head_dim}:" in dispatch
    inst = (CUDA / f"tq-fattn-d{head_dim}.cu").read_text()
    for nc in (2, 4, 8):
        assert (f"TQ_FA_INSTANCE_NC({head_dim}, K, V, {nc})" in inst) == (nc <= max_cols), nc
    assert "return D == 256 ? 4 : TQ_FA_MAX_COLS;" in dispatch


def configure_pairs(tmp_path: Path, pairs: str) -> tuple[int, str, str]:
    """Runs tq-cuda.cmake in a throwaway CMake project (no CUDA needed); returns rc, the generated header
    (or "") and the configure output."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not on PATH")
    proj = tmp_path / "proj"
    proj.mkdir(parents=True)
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(t LANGUAGES NONE)\n"
        f'set(LLAMA_TQ_SRC_DIR "{ROOT / "src"}")\n'
        'include("${LLAMA_TQ_SRC_DIR}/ggml-tq/cuda/tq-cuda.cmake")\n'
    )
    build = tmp_path / "build"
    r = subprocess.run([cmake, "-S", str(proj), "-B", str(build), f"-DLLAMA_TQ_CUDA_FA_PAIRS={pairs}"],
                       capture_output=True, text=True, timeout=120)
    header = build / "llama-tq" / "tq-fattn-pairs.h"
    return r.returncode, header.read_text() if header.exists() else "", r.stdout + r.stderr


def test_cmake_pair_list_is_normalized_and_deduplicated(tmp_path: Path) -> None:
    rc, header, out = configure_pairs(tmp_path, "ktq2-vtq2;ktq2-vtq2_2;ktq4-vtq3_3")
    assert rc == 0, out
    assert re.findall(r"X\((\w+), (\w+)\)", header) == [("KTQ2", "VTQ2_2"), ("KTQ4", "VTQ3_3")]


def test_cmake_default_and_all(tmp_path: Path) -> None:
    rc, header, out = configure_pairs(tmp_path / "d", "default")
    assert rc == 0, out
    assert re.findall(r"X\((\w+), (\w+)\)", header) == cmake_default_pairs()
    rc, header, out = configure_pairs(tmp_path / "a", "all")
    assert rc == 0, out
    assert len(re.findall(r"X\((\w+), (\w+)\)", header)) == 27


def test_cmake_rejects_a_bad_pair_and_lists_the_valid_names(tmp_path: Path) -> None:
    rc, _, out = configure_pairs(tmp_path, "ktq2-q4_0")
    assert rc != 0
    assert "ktq2-q4_0" in out and "vtq2_1" in out
