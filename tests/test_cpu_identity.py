"""Presenting another CPU's CPUID to a child process: when it can be done, that every CPUID
answers from the table (and nothing else changes), and that a real fault still kills."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from simulations import cpu_identity

REASON = cpu_identity.unavailable_reason()
needs_cpuid_faulting = pytest.mark.skipif(REASON is not None, reason=f"cannot present a CPU identity: {REASON}")

# Prints the four registers CPUID gives for each "leaf,subleaf" argument (hex), one line each.
CPUID_PROGRAM = r"""
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        unsigned leaf = strtoul(argv[i], NULL, 16), subleaf = strtoul(strchr(argv[i], ',') + 1, NULL, 16);
        unsigned a, b, c, d;
        __cpuid_count(leaf, subleaf, a, b, c, d);
        printf("%x %x %x %x\n", a, b, c, d);
    }
    return 0;
}
"""
FAULT_PROGRAM = "int main(void) { *(volatile int *)0 = 1; return 0; }\n"


def _table(identity: str) -> list[tuple[int, ...]]:
    text = (cpu_identity.CPUID_DIR / f"{identity}.h").read_text()
    return [tuple(int(v, 16) for v in row.split(",")) for row in re.findall(r"\{(0x[^}]*)\}", text)]


def _compile(source: str, tmp_path: Path, name: str) -> Path:
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run([cpu_identity._compiler(), "-O1", "-o", str(tmp_path / name), str(tmp_path / f"{name}.c")], check=True)
    return tmp_path / name


@pytest.mark.parametrize(("machine", "cpuinfo", "missing"), [
    ("aarch64", "flags : fp asimd cpuid_fault", "x86-64 instruction"),
    ("x86_64", "vendor_id : GenuineIntel\nflags : fpu sse2 avx2 hypervisor", "no CPUID faulting"),
    ("x86_64", "flags : fpu sse2 avx2 cpuid_fault_x", "no CPUID faulting"),
    ("x86_64", "flags : fpu sse2 avx2 cpuid_fault", None),
])
def test_unavailable_reason_names_what_is_missing(machine: str, cpuinfo: str, missing: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_identity, "_compiler", lambda: "/usr/bin/cc")
    reason = cpu_identity.unavailable_reason(cpuinfo, machine)
    assert reason is None if missing is None else missing in reason


def test_without_a_compiler_the_identity_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_identity, "_compiler", lambda: None)
    assert "no C compiler" in cpu_identity.unavailable_reason("flags : avx2 cpuid_fault", "x86_64")


def test_an_identity_without_a_table_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CPUID table for 'pentium-pro'.*amd-epyc-rome"):
        cpu_identity.build_shim("pentium-pro", tmp_path)


@needs_cpuid_faulting
def test_identity_env_preloads_the_library_first_and_turns_the_fault_handler_off(tmp_path: Path) -> None:
    env = cpu_identity.identity_env("amd-epyc-rome", tmp_path, {"LD_PRELOAD": "/x/other.so", "PYTHONFAULTHANDLER": "1"})
    first, rest = env["LD_PRELOAD"].split(" ")
    assert Path(first).is_file() and Path(first).parent == tmp_path and rest == "/x/other.so"
    assert "PYTHONFAULTHANDLER" not in env


@needs_cpuid_faulting
def test_every_cpuid_answers_from_the_table_and_a_missing_subleaf_reads_zeros(tmp_path: Path) -> None:
    program = _compile(CPUID_PROGRAM, tmp_path, "cpuid")
    rows = _table("amd-epyc-rome")
    queries = [f"{leaf:x},{subleaf:x}" for leaf, subleaf, *_ in rows] + ["4,3f", "8000001d,f"]
    env = cpu_identity.identity_env("amd-epyc-rome", tmp_path, {})
    lines = subprocess.run([str(program), *queries], env=env, capture_output=True, text=True, check=True).stdout
    answers = [tuple(int(v, 16) for v in line.split()) for line in lines.splitlines()]
    assert answers == [tuple(row[2:]) for row in rows] + [(0, 0, 0, 0)] * 2
    vendor = b"".join(register.to_bytes(4, "little") for register in (rows[0][3], rows[0][5], rows[0][4]))
    assert vendor == b"AuthenticAMD"


@needs_cpuid_faulting
def test_a_real_segmentation_fault_still_kills_the_process(tmp_path: Path) -> None:
    program = _compile(FAULT_PROGRAM, tmp_path, "fault")
    env = cpu_identity.identity_env("amd-epyc-rome", tmp_path, {})
    process = subprocess.run([str(program)], env=env, capture_output=True, timeout=30, check=False)
    assert process.returncode == -signal.SIGSEGV
