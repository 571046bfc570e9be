/* offload.c - software checksum completion and TCP segmentation. */
#include "sv3_impl.h"

int sv3_csum_complete(uint8_t *frame, uint32_t len, uint32_t csum_start, uint32_t csum_offset)
{
    return SV3_OFFLOAD_BAD;
}

int sv3_gso_segment(const uint8_t *frame, uint32_t len, const struct sv3_frame *meta,
                    uint8_t *out, uint32_t outlen, uint32_t *lens, uint32_t max_segs)
{
    return SV3_OFFLOAD_BAD;
}
