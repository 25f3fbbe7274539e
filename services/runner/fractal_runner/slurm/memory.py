"""Memory sizes of the SLURM config file and task meta, in MB (reference §7.3).

An int is already MB. A string is digits with an optional unit: none or ``M`` (MB), ``G`` (×1000),
``T`` (×1,000,000); powers of 1000, as in the reference: ``"93"`` → 93, ``"71M"`` → 71,
``"93G"`` → 93000, ``"1T"`` → 1000000. Anything else (``"1.5G"``, ``"10GB"``, ``"M100"``, ``""``)
is refused. Departure: the reference returns any int unchanged and crashes on ``""``; we also
refuse booleans, zero and negative sizes, with the same clear error.
"""

from fractal_runner.slurm.errors import SlurmConfigError

__all__ = ["parse_mem_mb"]

_UNIT_MB = {"M": 1, "G": 10**3, "T": 10**6}


def parse_mem_mb(raw: object) -> int:
    """The size ``raw`` (int MB, or a string like ``"4G"``) in MB; SlurmConfigError if invalid."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        digits, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNIT_MB else (raw, "M")
        if not (digits.isascii() and digits.isdigit()):
            raise SlurmConfigError(_invalid(raw))
        value = int(digits) * _UNIT_MB[unit]
    else:
        raise SlurmConfigError(_invalid(raw))
    if value <= 0:
        raise SlurmConfigError(_invalid(raw))
    return value


def _invalid(raw: object) -> str:
    return (
        f"invalid memory size {raw!r} (valid examples: 93, 71M, 93G, 1T; units are powers of 1000)"
    )
