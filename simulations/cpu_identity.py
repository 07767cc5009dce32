"""Run a process as if on another x86-64 CPU, as far as the CPU's identity (CPUID) goes.

MKL and oneDNN choose their kernels by the CPU's vendor and model as well as its vector
width, so the same seeded pretraining with the same kernel pins can give other weights on an
Intel CPU than on an AMD one. Measured on the crossdevice checkpoint (``8cdd3e82dab27a23``):
an Intel Sapphire Rapids CPU gives ``f6616c924e69a503``, and so does QEMU's emulated Haswell,
but it gives ``8cdd3e82dab27a23`` bit for bit when CPUID answers as an AMD EPYC Rome (and
agrees with QEMU's emulated EPYC Rome in every digest of the first 2 training steps).
:func:`identity_env` gives a child process such an identity: a small library, built here with
the C compiler and preloaded, answers every CPUID instruction from a table
(``simulations/cpuid/<identity>.h``) through Linux's CPUID faulting, which traps the
instruction (``arch_prctl(ARCH_SET_CPUID)``, as the rr debugger uses it). The code still runs
natively; only what it learns of the CPU changes, so it must not use an instruction the real
CPU lacks (an AVX2 identity on an AVX-512 CPU is safe).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

CPUID_DIR = Path(__file__).with_name("cpuid")
SHIM_SOURCE = CPUID_DIR / "shim.c"


def identities() -> list[str]:
    """The CPU identities there is a CPUID table for (``simulations/cpuid/*.h``)."""
    return sorted(path.stem for path in CPUID_DIR.glob("*.h"))


def unavailable_reason(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """Why this machine cannot present another CPU's identity, or None if it can.

    Parameters
    ----------
    cpuinfo : str | None
        The text of ``/proc/cpuinfo`` (default: read it).
    machine : str | None
        ``platform.machine()`` (default: this one's).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return f"CPUID is an x86-64 instruction, this machine is {machine}"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "no /proc/cpuinfo (CPUID faulting needs Linux)"
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if "cpuid_fault" not in flags:
        return "the CPU or its hypervisor offers no CPUID faulting (no cpuid_fault in /proc/cpuinfo's flags)"
    if _compiler() is None:
        return "no C compiler (cc or gcc) to build the CPUID library"
    return None


def build_shim(identity: str, folder: str | Path) -> Path:
    """Compile the CPUID library answering as ``identity`` into ``folder``; returns its path.

    Raises
    ------
    ValueError
        ``identity`` has no table.
    RuntimeError
        The compiler failed (its output is in the message).
    """
    table = CPUID_DIR / f"{identity}.h"
    if not table.is_file():
        raise ValueError(f"no CPUID table for {identity!r}: known are {', '.join(identities())}")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) to build the CPUID library")
    out = Path(folder) / f"cpuid-{identity}.so"
    process = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", f'-DCPUID_TABLE="{table}"', "-o", str(out), str(SHIM_SOURCE)],
        capture_output=True, text=True, check=False)
    if process.returncode != 0:
        raise RuntimeError(f"building the CPUID library for {identity} failed:\n{process.stderr.strip()}")
    return out


def identity_env(identity: str, folder: str | Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child process that sees ``identity``'s CPUID: the library built into
    ``folder`` put first in ``LD_PRELOAD``, and Python's fault handler off (it would take
    SIGSEGV, through which CPUID is answered)."""
    shim = build_shim(identity, folder)
    preload = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD", "")]))
    child = {**env, "LD_PRELOAD": preload}
    child.pop("PYTHONFAULTHANDLER", None)
    return child


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")
