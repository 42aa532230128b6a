"""Version of the calibration tool, recorded in every codebook file and generated header.

It is deliberately independent of the package version: a codebook file must be byte-for-byte
reproducible from the same tool version and parameters, whether the package runs from a source tree
or from an installed wheel. Bump it whenever the algorithms change the numbers they produce.
"""

from __future__ import annotations

TOOL_NAME = "tq-calibrate"
TOOL_VERSION = "1.0.0"
