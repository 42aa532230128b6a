"""tq-calibrate: codebooks for the llama-tq KV-cache formats (docs/formats.md).

Modules:

* :mod:`.distributions` -- sources with exact partial moments (Gaussian, rotated-coordinate Beta, Laplace,
  any scipy.stats distribution via quadrature).
* :mod:`.lloyd_max` -- Lloyd-Max quantizers (analytic and empirical), MSE vs the Shannon bound.
* :mod:`.bitstream` -- little-endian bit packing shared by the formats.
* :mod:`.trellis` -- the vtq_2 bitshift trellis: reference decoder, batched tail-biting Viterbi encoder,
  table training.
* :mod:`.samples` -- empirical calibration from per-layer K/V sample arrays.
* :mod:`.codebook_file` -- the versioned ``.tqcb`` file (docs/codebook-format.md); :mod:`.header` -- the
  generated C header; :mod:`.defaults` -- the compiled-in default codebook.
* :mod:`.plot` -- PNG figures; :mod:`.cli` -- the ``tq-calibrate`` command.
"""

from __future__ import annotations

from .codebook_file import Codebook, CodebookEntry, fnv1a64, read_codebook, render_codebook, write_codebook
from .distributions import Gaussian, Laplace, RotatedCoordinate, ScipyDistribution, make_distribution
from .errors import CalibrationError, CodebookFormatError, CodebookHashError
from .lloyd_max import LloydMaxResult, lloyd_max, lloyd_max_empirical, mse_of_levels, quantize, shannon_bound
from .samples import calibrate_from_samples, load_samples_npz, normalize_blocks
from .trellis import (
    TrellisSpec,
    decode_block,
    decode_blocks,
    encode_blocks,
    state_of_sample,
    train_trellis,
    viterbi_tail_biting,
)
from .version import TOOL_NAME, TOOL_VERSION

__all__ = [
    "TOOL_NAME",
    "TOOL_VERSION",
    "CalibrationError",
    "Codebook",
    "CodebookEntry",
    "CodebookFormatError",
    "CodebookHashError",
    "Gaussian",
    "Laplace",
    "LloydMaxResult",
    "RotatedCoordinate",
    "ScipyDistribution",
    "TrellisSpec",
    "calibrate_from_samples",
    "decode_block",
    "decode_blocks",
    "encode_blocks",
    "fnv1a64",
    "lloyd_max",
    "lloyd_max_empirical",
    "load_samples_npz",
    "make_distribution",
    "mse_of_levels",
    "normalize_blocks",
    "quantize",
    "read_codebook",
    "render_codebook",
    "shannon_bound",
    "state_of_sample",
    "train_trellis",
    "viterbi_tail_biting",
    "write_codebook",
]
