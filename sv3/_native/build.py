"""cffi builder for the C core (API mode); run at install time only.

`pip install .` calls this through setup.py's cffi_modules; importing sv3
never compiles anything.  The cdef is sv3.h itself, minus preprocessor
lines other than integer #defines, so the header stays the one contract.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["ring.c", "fdb.c", "vring.c", "forward.c", "port.c", "afpacket.c", "ixgbe.c", "offload.c", "sys.c"]


def _cdef_text():
    with open(os.path.join(HERE, "sv3.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = [ln for ln in text.splitlines() if not ln.startswith("#") or re.match(r"#define \w+ (0x)?[0-9a-fA-F]+$", ln.strip())]
    return "\n".join(keep)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "sv3._native._sv3",
    '#include <stdint.h>\n#include "sv3_impl.h"\n',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-fstack-protector-strong", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
