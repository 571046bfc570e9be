/* sys.c - the OS calls Python's standard library lacks. */
#include <sys/mman.h>
#include <sys/prctl.h>
#include "sv3_impl.h"

/* Map [0, len) of fd shared and writable; NULL on failure (errno set). */
void *sv3_map_fd(int fd, uint64_t len)
{
    void *a = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return a == MAP_FAILED ? NULL : a;
}

int sv3_unmap(void *addr, uint64_t len)
{
    return munmap(addr, (size_t)len);
}

/* The worker asks to be signalled when the master dies. */
int sv3_set_pdeathsig(int sig)
{
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0);
}

/* One 32-bit device register access (a BAR mapping; never split). */
uint32_t sv3_mmio_read32(void *bar, uint32_t off)
{
    return *(volatile uint32_t *)((uint8_t *)bar + off);
}

void sv3_mmio_write32(void *bar, uint32_t off, uint32_t v)
{
    *(volatile uint32_t *)((uint8_t *)bar + off) = v;
}
