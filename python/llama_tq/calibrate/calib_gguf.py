"""The GGUF calibration files of tq-calibrate (k-means, k-profiles): a version key, provenance and F32/I8 tensors,
written atomically and read back with their version checked (the C side: src/ggml-tq/tq-calib-file.h)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from ..atomic import atomic_path
from .atomic import check_writable
from .errors import CalibrationError


def write_calib_gguf(path: str | os.PathLike[str], arch: str, kind: str, version: int, source: str, n_tokens: int,
                     tensors: Mapping[str, NDArray[np.generic]]) -> None:
    """``llama_tq.<kind>.version`` / ``.source`` / ``.tokens`` and the tensors (in order), atomically: the file
    appears whole or not at all."""
    import gguf

    with atomic_path(check_writable(path)) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_uint32(f"llama_tq.{kind}.version", version)
        w.add_string(f"llama_tq.{kind}.source", source)
        w.add_uint32(f"llama_tq.{kind}.tokens", n_tokens)
        for name, value in tensors.items():
            w.add_tensor(name, np.ascontiguousarray(value))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def read_calib_gguf(path: str | os.PathLike[str], kind: str, version: int
                    ) -> tuple[str, dict[str, NDArray[np.generic]]]:
    """(architecture, {name: array in numpy order}) of a version-``version`` ``kind`` file."""
    import gguf

    try:
        r = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: not a readable GGUF file ({e})") from e
    field = r.fields.get(f"llama_tq.{kind}.version")
    if field is None or int(field.contents()) != version:
        raise CalibrationError(f"{path}: not a version-{version} {kind.replace('_', '-')} file")
    arch = str(r.fields["general.architecture"].contents())
    return arch, {t.name: np.asarray(t.data).reshape([int(n) for n in reversed(t.shape)]) for t in r.tensors}
