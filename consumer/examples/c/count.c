/*
 * count.c: a memplex consumer in plain C, using nothing but consumer/include/memplex.h
 * and the C library. It connects to a consumer socket, maps the channels and the regions
 * memplex announces, reads every frame in place (no copy of any payload byte),
 * optionally checks each frame's CRC-32 against its metadata, and gives the buffers back.
 * It asks for the metadata ring (sequence numbers, lengths, checksums).
 *
 *   cc -O2 -I consumer/include -o count consumer/examples/c/count.c
 *   ./count /run/memplex/tcp.sock [--name tcp] [--verify] [--frames N]
 *   ./count --layout            (sizes and offsets, to compare with Rust's)
 *
 * It prints one line at the end:
 *   frames N bytes B verified V mismatched M in_place P inline I ended REASON
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* F_GET_SEALS */
#endif
#include "memplex.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_QUEUES 64
#define MAX_REGIONS 4096
#define BATCH 32

struct channel {
    uint8_t *mem;
    size_t len;
    struct mpx_ring completion, refill, meta;
    int eventfd;
    uint64_t returned[BATCH * 4];
    uint32_t nreturned;
};

struct region {
    uint8_t *base; /* the region's first byte in our mapping */
    uint64_t len;
};

static struct channel channels[MAX_QUEUES];
static uint32_t nchannels;
static struct region regions[MAX_REGIONS];
static int sock = -1;
static int ended = -1;
static char ended_text[MPX_TEXT_LEN + 1];

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void die(const char *what) {
    fprintf(stderr, "count: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void send_msg(uint32_t kind, const void *body, size_t len) {
    uint8_t buf[MPX_MAX_MSG];
    struct mpx_header h = {MPX_MAGIC, kind};
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, body, len);
    if (send(sock, buf, sizeof h + len, MSG_NOSIGNAL) < 0) die("send");
}

/* One message; its descriptors in fds (count in *nfds). Returns its kind, 0 on EOF,
 * -1 when nothing is there (with MSG_DONTWAIT). */
static int recv_msg(uint8_t *buf, int *fds, int *nfds, int flags) {
    char control[CMSG_SPACE(sizeof(int) * MPX_MAX_FDS)];
    struct iovec iov = {buf, MPX_MAX_MSG};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    ssize_t n = recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    if (n < 0) die("recvmsg");
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds + *nfds, CMSG_DATA(c), sizeof(int) * (size_t)k);
            *nfds += k;
        }
    }
    if (n == 0) return 0;
    struct mpx_header h;
    memcpy(&h, buf, sizeof h);
    if (h.magic != MPX_MAGIC) {
        fprintf(stderr, "count: bad magic\n");
        exit(2);
    }
    return (int)h.kind;
}

/* Handles Region and Bye messages; with block, waits for one. */
static void read_socket(int block) {
    uint8_t buf[MPX_MAX_MSG];
    int fds[MPX_MAX_FDS], nfds;
    for (;;) {
        int kind = recv_msg(buf, fds, &nfds, block ? 0 : MSG_DONTWAIT);
        if (kind < 0) return;
        if (kind == 0) {
            ended = MPX_BYE_SHUTDOWN;
            strcpy(ended_text, "closed");
            return;
        }
        if (kind == MPX_REGION && nfds == 1) {
            struct mpx_region r;
            memcpy(&r, buf + sizeof(struct mpx_header), sizeof r);
            long page = sysconf(_SC_PAGESIZE);
            uint64_t start = r.offset - r.offset % (uint64_t)page;
            uint64_t skew = r.offset - start;
            /* A region in a regular file must not be able to shrink under the mapping
             * (memplex shares sealed memfds); one of a fixed size (a dma-buf) need not. */
            struct stat st;
            if (fstat(fds[0], &st) < 0) die("fstat region");
            if (S_ISREG(st.st_mode)) {
                int seals = fcntl(fds[0], F_GET_SEALS);
                if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
                    fprintf(stderr, "count: region %u not sealed against shrinking\n", r.index);
                    exit(2);
                }
            }
            uint8_t *p = mmap(NULL, skew + r.len, PROT_READ, MAP_SHARED, fds[0], (off_t)start);
            if (p == MAP_FAILED) die("mmap region");
            close(fds[0]);
            if (r.index < MAX_REGIONS) {
                regions[r.index].base = p + skew;
                regions[r.index].len = r.len;
            }
        } else if (kind == MPX_BYE) {
            struct mpx_bye b;
            memcpy(&b, buf + sizeof(struct mpx_header), sizeof b);
            ended = (int)b.reason;
            memcpy(ended_text, b.text, MPX_TEXT_LEN);
            return;
        }
        if (block) return;
    }
}

static void give_back(struct channel *ch) {
    uint32_t n = mpx_free(&ch->refill);
    if (n > ch->nreturned) n = ch->nreturned;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t *slot = (uint64_t *)(ch->refill.entries +
                                      (size_t)((ch->refill.local + i) & (ch->refill.size - 1)) * 8);
        *slot = ch->returned[i];
    }
    mpx_publish(&ch->refill, n);
    memmove(ch->returned, ch->returned + n, (ch->nreturned - n) * sizeof(uint64_t));
    ch->nreturned -= n;
}

static void print_layout(void) {
    printf("{\"desc\":%zu,\"frame_meta\":%zu,\"channel_header\":%zu,"
           "\"hello\":%zu,\"welcome\":%zu,\"channel\":%zu,\"region\":%zu,\"bye\":%zu,"
           "\"off_rx_mono_ns\":%zu,\"off_flags\":%zu,\"off_parts\":%zu,\"off_layer\":%zu,"
           "\"off_desc_word\":%zu,\"off_hello_features\":%zu,\"off_welcome_features\":%zu,"
           "\"off_rings\":%zu,"
           "\"tx_entry\":%zu,\"tx_part\":%zu,\"tx_parts_entry\":%zu,\"off_tx_csum_start\":%zu,"
           "\"off_tx_part\":%zu}\n",
           sizeof(struct mpx_desc), sizeof(struct mpx_frame_meta),
           sizeof(struct mpx_channel_header), sizeof(struct mpx_hello), sizeof(struct mpx_welcome),
           sizeof(struct mpx_channel), sizeof(struct mpx_region), sizeof(struct mpx_bye),
           offsetof(struct mpx_frame_meta, rx_mono_ns), offsetof(struct mpx_frame_meta, flags),
           offsetof(struct mpx_frame_meta, parts), offsetof(struct mpx_frame_meta, layer),
           offsetof(struct mpx_desc, word), offsetof(struct mpx_hello, features),
           offsetof(struct mpx_welcome, features),
           offsetof(struct mpx_channel_header, rings), sizeof(struct mpx_tx_entry),
           sizeof(struct mpx_tx_part), sizeof(struct mpx_tx_parts_entry),
           offsetof(struct mpx_tx_entry, csum_start), offsetof(struct mpx_tx_entry, part));
}

int main(int argc, char **argv) {
    const char *path = NULL, *name = "";
    int verify = 0;
    unsigned long long limit = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layout")) {
            print_layout();
            return 0;
        } else if (!strcmp(argv[i], "--verify")) {
            verify = 1;
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(argv[i], "--frames") && i + 1 < argc) {
            limit = strtoull(argv[++i], NULL, 10);
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "usage: count SOCKET [--name NAME] [--verify] [--frames N] | --layout\n");
        return 2;
    }
    crc_init();
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");

    struct mpx_hello hello = {MPX_VERSION, MPX_WAKE_EVENTFD, {0}, MPX_FEATURE_META, 0};
    strncpy((char *)hello.name, name, MPX_NAME_LEN);
    send_msg(MPX_HELLO, &hello, sizeof hello);

    uint8_t buf[MPX_MAX_MSG];
    int fds[MPX_MAX_FDS], nfds;
    struct mpx_welcome welcome = {0};
    for (;;) {
        int kind = recv_msg(buf, fds, &nfds, 0);
        if (kind == MPX_WELCOME) {
            memcpy(&welcome, buf + sizeof(struct mpx_header), sizeof welcome);
        } else if (kind == MPX_CHANNEL && nfds >= 1 && nchannels < MAX_QUEUES) {
            struct mpx_channel c;
            memcpy(&c, buf + sizeof(struct mpx_header), sizeof c);
            struct channel *ch = &channels[nchannels++];
            ch->len = c.len;
            /* Memory that could shrink under the mapping would fault us on a ring read. */
            int seals = fcntl(fds[0], F_GET_SEALS);
            if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
                fprintf(stderr, "count: channel memory not sealed against shrinking\n");
                return 2;
            }
            ch->mem = mmap(NULL, c.len, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
            if (ch->mem == MAP_FAILED) die("mmap channel");
            close(fds[0]);
            ch->eventfd = nfds > 1 ? fds[1] : -1;
            struct mpx_channel_header h;
            memcpy(&h, ch->mem, sizeof h);
            if (h.magic != MPX_CHANNEL_MAGIC || h.version != MPX_VERSION) {
                fprintf(stderr, "count: not a version %u channel\n", MPX_VERSION);
                return 2;
            }
            mpx_ring_init(&ch->completion, ch->mem, &h.rings[0], 0);
            mpx_ring_init(&ch->refill, ch->mem, &h.rings[1], 1);
            mpx_ring_init(&ch->meta, ch->mem, &h.rings[3], 0);
            if (ch->meta.size == 0) {
                fprintf(stderr, "count: memplex gave no metadata ring\n");
                return 2;
            }
        } else if (kind == MPX_READY) {
            break;
        } else if (kind == MPX_BYE) {
            struct mpx_bye b;
            memcpy(&b, buf + sizeof(struct mpx_header), sizeof b);
            fprintf(stderr, "count: refused: %.*s\n", MPX_TEXT_LEN, (char *)b.text);
            return 2;
        } else {
            fprintf(stderr, "count: unexpected message %d in set-up\n", kind);
            return 2;
        }
    }

    unsigned long long frames = 0, bytes = 0, verified = 0, mismatched = 0, in_place = 0, inline_heads = 0;
    uint8_t inline_bytes[65536];
    struct mpx_desc parts[1024];
    while (ended < 0 && (!limit || frames < limit)) {
        int any = 0;
        for (uint32_t q = 0; q < nchannels; q++) {
            struct channel *ch = &channels[q];
            while (mpx_available(&ch->completion) > 0 && (!limit || frames < limit)) {
                /* A frame: descriptors up to the first without MPX_D_MORE; memplex
                 * publishes whole frames. Inline bytes follow their descriptor. */
                uint32_t avail = mpx_available(&ch->completion), at = 0, np = 0, inline_len = 0;
                for (;;) {
                    if (at >= avail || np == 1024) {
                        fprintf(stderr, "count: a frame runs past what is published\n");
                        return 2;
                    }
                    struct mpx_desc d;
                    memcpy(&d, mpx_entry(&ch->completion, at++), sizeof d);
                    if (d.token == 0) {
                        uint32_t len = mpx_desc_len(&d), slots = mpx_inline_slots(len);
                        if (inline_len || len > sizeof inline_bytes || slots > avail - at) {
                            fprintf(stderr, "count: a bad inline run\n");
                            return 2;
                        }
                        for (uint32_t k = 0; k < slots; k++) {
                            uint32_t n = len - k * MPX_DESC < MPX_DESC ? len - k * MPX_DESC : MPX_DESC;
                            memcpy(inline_bytes + k * MPX_DESC, mpx_entry(&ch->completion, at++), n);
                        }
                        inline_len = len;
                    } else {
                        parts[np++] = d;
                    }
                    if (!(d.word & MPX_D_MORE)) break;
                }
                /* The frame's metadata: slot n of the metadata ring for frame n. */
                struct mpx_frame_meta m;
                memcpy(&m, mpx_entry(&ch->meta, 0), sizeof m);
                ch->meta.local++;
                mpx_release(&ch->completion, at);
                /* The head (inline or in place), then the frags: read where they lie. */
                uint32_t crc = 0;
                if (inline_len) {
                    crc = crc_update(crc, inline_bytes, inline_len);
                    inline_heads += (m.flags & MPX_F_HEAD_INLINE) != 0;
                }
                for (uint32_t i = 0; i < np; i++) {
                    struct mpx_desc *p = &parts[i];
                    uint32_t ri = mpx_token_region(p->token);
                    while ((ri >= MAX_REGIONS || !regions[ri].base) && ended < 0) read_socket(1);
                    if (ended >= 0) break;
                    struct region *r = &regions[ri];
                    uint64_t off = mpx_desc_offset(p);
                    uint32_t len = mpx_desc_len(p);
                    if (off + len > r->len) {
                        fprintf(stderr, "count: a part past its region\n");
                        return 2;
                    }
                    const uint8_t *bytes_in_place = r->base + off;
                    if (verify) crc = crc_update(crc, bytes_in_place, len);
                    in_place++;
                    if (ch->nreturned == sizeof ch->returned / sizeof ch->returned[0]) give_back(ch);
                    ch->returned[ch->nreturned++] = p->token;
                }
                if (ch->nreturned >= BATCH) give_back(ch);
                frames++;
                bytes += m.cap_len;
                if (verify && (m.flags & MPX_F_CHECKSUM)) {
                    if (crc == m.checksum) verified++;
                    else mismatched++;
                }
                any = 1;
            }
        }
        if (any) continue;
        for (uint32_t q = 0; q < nchannels; q++) {
            give_back(&channels[q]);
            mpx_want_wakeup(&channels[q].completion);
        }
        int ready = 0;
        for (uint32_t q = 0; q < nchannels; q++) ready |= mpx_available(&channels[q].completion) > 0;
        if (!ready) {
            struct pollfd p[MAX_QUEUES + 1];
            nfds_t n = 0;
            for (uint32_t q = 0; q < nchannels; q++)
                if (channels[q].eventfd >= 0) p[n++] = (struct pollfd){channels[q].eventfd, POLLIN, 0};
            p[n++] = (struct pollfd){sock, POLLIN, 0};
            poll(p, n, 100);
            for (uint32_t q = 0; q < nchannels; q++) {
                uint64_t v;
                if (channels[q].eventfd >= 0 && read(channels[q].eventfd, &v, 8) < 0 && errno != EAGAIN) die("eventfd");
            }
            read_socket(0);
        }
        for (uint32_t q = 0; q < nchannels; q++) mpx_no_wakeup(&channels[q].completion);
    }
    for (uint32_t q = 0; q < nchannels; q++) give_back(&channels[q]);
    if (ended < 0) {
        struct mpx_bye b = {MPX_BYE_DONE, "done"};
        send_msg(MPX_BYE, &b, sizeof b);
        strcpy(ended_text, "frame limit");
    }
    printf("frames %llu bytes %llu verified %llu mismatched %llu in_place %llu inline %llu ended %s\n", frames,
           bytes, verified, mismatched, in_place, inline_heads, ended_text);
    return mismatched ? 1 : 0;
}
