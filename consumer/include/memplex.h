/*
 * memplex.h: the memplex delivery protocol, version 2, for C consumers.
 *
 * The same layout as the Rust crate memplex-proto (which is the reference); the test
 * `cli::the_c_example_consumer_reads_frames_in_place` builds consumer/examples/c/count.c
 * against this header, checks its sizes and offsets against Rust's, and runs it.
 * docs/delivery.md explains the protocol; in short:
 *
 *   1. connect a SOCK_SEQPACKET socket to memplex's consumer socket;
 *   2. send MPX_HELLO (MPX_FEATURE_META in `features` for each frame's metadata);
 *      receive MPX_WELCOME, then one MPX_CHANNEL per queue (with two descriptors: the
 *      channel memory, and an eventfd when offered), then MPX_READY;
 *   3. check each channel's descriptor is sealed against shrinking (F_GET_SEALS has
 *      F_SEAL_SHRINK), then mmap it (read-write, shared); read 16-byte descriptors from its
 *      completion ring, a frame being a run of them up to one without MPX_D_MORE; an
 *      MPX_REGION message (with a read-only descriptor) arrives on the socket before the
 *      first descriptor that points into that region: if it is a regular file, check it
 *      is sealed against shrinking too (memplex shares only such memfds, or files of a
 *      fixed size such as a dma-buf), then mmap it read-only;
 *   4. give each part's token back through the channel's refill ring when done;
 *   5. MPX_BYE ends the session, either way.
 *
 * All integers are little-endian (the host's order on every platform memplex runs on).
 */
#ifndef MEMPLEX_H
#define MEMPLEX_H

#include <stddef.h>
#include <stdint.h>

#define MPX_VERSION 2u
#define MPX_FEATURE_META 1u
#define MPX_MAGIC 0x5250584du /* "MXPR" */
#define MPX_CHANNEL_MAGIC 0x4752584du /* "MXRG" */
#define MPX_NAME_LEN 64
#define MPX_TEXT_LEN 128
#define MPX_MAX_FDS 4
#define MPX_MAX_MSG 512

/* Message kinds. */
enum {
    MPX_HELLO = 1,
    MPX_WELCOME = 2,
    MPX_CHANNEL = 3,
    MPX_REGION = 4,
    MPX_READY = 5,
    MPX_BYE = 6,
};

/* How a consumer waits. */
enum { MPX_WAKE_EVENTFD = 0, MPX_WAKE_BUSY_POLL = 1 };

/* Why a session ended. */
enum {
    MPX_BYE_DONE = 0,
    MPX_BYE_SHUTDOWN = 1,
    MPX_BYE_REFUSED = 2,
    MPX_BYE_BAD_TOKEN = 3,
    MPX_BYE_BAD_INDEX = 4,
    MPX_BYE_BAD_MESSAGE = 5,
};

struct mpx_header { uint32_t magic, kind; };

struct mpx_hello {
    uint32_t version, wake;
    uint8_t name[MPX_NAME_LEN];
    uint32_t features, reserved;
};

struct mpx_welcome {
    uint32_t version, queues;
    uint64_t session;
    uint32_t quota, checksums;
    uint32_t features, reserved; /* the features granted */
};

struct mpx_channel {
    uint32_t queue, eventfd;
    uint64_t len;
};

struct mpx_region {
    uint32_t index, kind;
    uint64_t len, offset;
    uint8_t provider[MPX_TEXT_LEN];
};

struct mpx_bye {
    uint32_t reason;
    uint8_t text[MPX_TEXT_LEN];
};

/* Channel memory. */
#define MPX_CHANNEL_HEADER 256
#define MPX_RING_HEADER 192
#define MPX_CONSUMER_OFFSET 64
#define MPX_NEED_WAKEUP 1u
enum { MPX_RING_COMPLETION = 1, MPX_RING_REFILL = 2, MPX_RING_TRANSMIT = 3, MPX_RING_META = 4 };

struct mpx_ring_desc {
    uint32_t kind, entry_size, entries, reserved;
    uint64_t offset;
};

struct mpx_channel_header {
    uint32_t magic, version, queue, nrings;
    struct mpx_ring_desc rings[4];
};

/* Completion descriptors: 16 bytes each (as AF_XDP's). A part names a buffer: its token
 * (give it back through the refill ring) carries the region in its top 16 bits, and
 * `word` holds the offset in the region (bits 0-39), the length (bits 40-61) and the
 * flags. A descriptor with token 0 is inline bytes: `len` of them in the next
 * ceil(len / 16) slots (a head whose memory cannot be shared, or with MPX_D_COPIED the
 * whole frame). The frame's first descriptor is its head. */
#define MPX_DESC 16
#define MPX_META 64
#define MPX_D_OFFSET_BITS 40
#define MPX_D_LEN_BITS 22
#define MPX_D_MORE (1ull << 62)
#define MPX_D_COPIED (1ull << 63)
#define MPX_F_CONTINUED 1u
#define MPX_F_HEAD_INLINE 2u
#define MPX_F_CHECKSUM 4u
#define MPX_F_COPIED 8u

struct mpx_desc {
    uint64_t token, word;
};

static inline uint64_t mpx_desc_offset(const struct mpx_desc *d) {
    return d->word & ((1ull << MPX_D_OFFSET_BITS) - 1);
}
static inline uint32_t mpx_desc_len(const struct mpx_desc *d) {
    return (uint32_t)((d->word >> MPX_D_OFFSET_BITS) & ((1ull << MPX_D_LEN_BITS) - 1));
}
static inline uint32_t mpx_token_region(uint64_t token) { return (uint32_t)(token >> 48); }

/* Slots of inline bytes after an inline descriptor of `len` bytes. */
static inline uint32_t mpx_inline_slots(uint32_t len) { return (len + MPX_DESC - 1) / MPX_DESC; }

/* A frame's metadata, in the metadata ring (when MPX_FEATURE_META was granted): the n-th
 * frame of a channel has its metadata in slot n, read before releasing its descriptors. */
struct mpx_frame_meta {
    uint64_t seq, timestamp_ns, rx_mono_ns;
    uint32_t orig_len, cap_len, flow_hash, checksum;
    uint16_t queue, route, flags, head_len;
    uint16_t parts, inline_len, gso_size, csum_start;
    uint16_t csum_offset;
    uint8_t layer, gso_type, csum;
    uint8_t reserved[3];
};

/* Transmit entries (consumer to host, when the consumer's config names a `transmit`
 * device): 64 bytes each. A frame is its parts' bytes in order; naming a token here gives
 * its buffer back once memplex has sent it (do not also refill it). */
#define MPX_TX_ENTRY 64
#define MPX_TX_PARTS 3
#define MPX_TX_MORE_PARTS 4
#define MPX_TX_MAX_PARTS 160

struct mpx_tx_part {
    uint64_t token;
    uint32_t offset, len; /* bytes of the token's buffer, from its start */
};

struct mpx_tx_entry {
    uint16_t parts, flags; /* MPX_F_CONTINUED when tx parts entries follow */
    uint8_t gso_type, csum; /* as in the frame entry; csum 1: partial */
    uint16_t gso_size, csum_start, csum_offset, hdr_len, reserved;
    struct mpx_tx_part part[MPX_TX_PARTS];
};

struct mpx_tx_parts_entry { struct mpx_tx_part part[MPX_TX_MORE_PARTS]; };

static inline uint32_t mpx_tx_entries_for(uint32_t parts) {
    uint32_t more = parts > MPX_TX_PARTS ? parts - MPX_TX_PARTS : 0;
    return 1 + (more + MPX_TX_MORE_PARTS - 1) / MPX_TX_MORE_PARTS;
}

/* One end of a ring in a mapped channel. */
struct mpx_ring {
    uint32_t *producer, *flags, *consumer;
    uint8_t *entries;
    uint32_t size, entry_size;
    uint32_t local; /* our own index, never read back from shared memory */
};

static inline void mpx_ring_init(struct mpx_ring *r, uint8_t *channel, const struct mpx_ring_desc *d, int producer_side) {
    uint8_t *base = channel + d->offset;
    r->producer = (uint32_t *)base;
    r->flags = (uint32_t *)(base + 4);
    r->consumer = (uint32_t *)(base + MPX_CONSUMER_OFFSET);
    r->entries = base + MPX_RING_HEADER;
    r->size = d->entries;
    r->entry_size = d->entry_size;
    r->local = __atomic_load_n(producer_side ? r->producer : r->consumer, __ATOMIC_RELAXED);
}

/* Reading end: entries ready (acquire). */
static inline uint32_t mpx_available(const struct mpx_ring *r) {
    return __atomic_load_n(r->producer, __ATOMIC_ACQUIRE) - r->local;
}

static inline void *mpx_entry(const struct mpx_ring *r, uint32_t i) {
    return r->entries + (size_t)((r->local + i) & (r->size - 1)) * r->entry_size;
}

static inline void mpx_release(struct mpx_ring *r, uint32_t n) {
    r->local += n;
    __atomic_store_n(r->consumer, r->local, __ATOMIC_RELEASE);
}

/* Writing end: room left (acquire). */
static inline uint32_t mpx_free(const struct mpx_ring *r) {
    return r->size - (r->local - __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE));
}

static inline void mpx_publish(struct mpx_ring *r, uint32_t n) {
    r->local += n;
    __atomic_store_n(r->producer, r->local, __ATOMIC_RELEASE);
}

/* Before sleeping on the eventfd: ask for a wake-up, then check once more. */
static inline void mpx_want_wakeup(struct mpx_ring *r) {
    __atomic_fetch_or(r->flags, MPX_NEED_WAKEUP, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void mpx_no_wakeup(struct mpx_ring *r) {
    __atomic_fetch_and(r->flags, ~MPX_NEED_WAKEUP, __ATOMIC_RELAXED);
}

#endif
