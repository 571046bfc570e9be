"""One POSIX shared-memory segment mapped into this process, exposed to the
C core as a pointer.  The master creates (O_CREAT|O_EXCL, mode 0600) and
unlinks; workers only open and map.  The master's mappings are not
inherited by the workers it forks (MADV_DONTFORK): a worker maps only
its own block and the rings of its peers."""
import mmap

import posix_ipc

from .._native import ffi


class Segment:
    def __init__(self, name, size=None, create=False):
        self.name = name
        flags = posix_ipc.O_CREX if create else 0
        shm = posix_ipc.SharedMemory(name, flags, mode=0o600, size=size or 0)
        try:
            self.size = shm.size
            self.map = mmap.mmap(shm.fd, self.size)
        finally:
            shm.close_fd()
        if create:       # the master's view: workers it forks do not inherit it
            self.map.madvise(mmap.MADV_DONTFORK)
        self.buf = ffi.from_buffer(self.map)

    def cast(self, ctype):
        return ffi.cast(ctype, self.buf)

    def close(self):
        if self.map is not None:
            ffi.release(self.buf)
            self.map.close()
            self.map = None

    def unlink(self):
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass
