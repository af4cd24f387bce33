/*
 * emu TCG plugin: a thin tap on QEMU user-mode (plugin API v1, QEMU 7.2).
 *
 * It decides nothing.  Per vCPU it streams, in program order:
 *   - runs of data accesses (4 KiB page, read or write, exact access count):
 *     consecutive accesses of one vCPU to the same page and kind become one
 *     record, optionally after a small per-vCPU micro-TLB (utlb=N);
 *   - instruction-fetch page changes and the retired-instruction count
 *     (one TB-exec callback per block, its page and length in the userdata);
 *   - syscalls with six arguments and the return value (at return; exit and
 *     exit_group at entry), emu_mark() markers, vCPU start/exit, process
 *     start (with the parent pid after fork) and exit (with the status).
 *
 * The guest's hot path is small: the TB callback adds to the vCPU's icount
 * (and logs a fetch-page change), a memory callback appends the access and
 * the icount to a per-vCPU log (the micro-TLB, when on, runs there too), and
 * drain() turns the log into records when it is full and at every sync point
 * (syscall, thread exit, fork, exit).  Why: on memory-bound guests the cost
 * of a callback is mostly the host work it puts between the guest's cache
 * misses, which then overlap less; the same work done later in a batch is
 * cheap.  docs/plugin.md has the measurements.
 *
 * Output: chunks of at most PIPE_BUF bytes (layout: docs/trace-format.md,
 * version 1), by one of two transports:
 *   - ringfd=N: a shared-memory ring that emu created and passed as file
 *     descriptor N.  Every writer (thread or forked process) reserves its
 *     chunk's bytes with one atomic add, copies the chunk in and publishes it
 *     by storing its first word last; emu reads chunks in reservation order.
 *     No system call per chunk (docs/pipeline-speed.md).  out=PATH is then
 *     only held open: its end-of-file tells emu that every process is gone.
 *   - otherwise write() to the FIFO or file named by out=PATH.  Once a
 *     process has (or had) a second thread or process, each chunk is one
 *     write(), so threads and forked processes never interleave inside a
 *     chunk; before that, chunks go out 64 KiB per write().
 *
 * Arguments: out=PATH (required); ringfd=N (the ring, see above); utlb=N (direct-mapped micro-TLB entries, a
 * power of two up to 256; 0 = off, the default); icount=tb (default: exact
 * per-vCPU counts and fetch pages from a TB callback) or icount=inline (a
 * process-wide inline counter, fetch pages seen only at data accesses);
 * pc=1 (off by default): each access record is preceded by a PC record, the
 * address of the instruction that started the run (docs/trace-format.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- format (docs/trace-format.md) ---- */
#define CHUNK_MAGIC 0x43554D45u /* "EMUC" little-endian */
#define FORMAT_VERSION 1
#define CHUNK_MAX PIPE_BUF /* one atomic write on a pipe */
#define HDR_SIZE 32
#define REC_SIZE 16
#define SYS_SIZE 64

enum kind { K_READ, K_WRITE, K_FETCH, K_SYSCALL, K_VCPU_START, K_VCPU_EXIT,
            K_MARK, K_PROC_START, K_PROC_EXIT, K_PC };

struct chunk_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t vcpu;
    uint32_t pid;
    uint32_t seq;
    uint64_t icount0;
    uint16_t nrec;
    uint16_t nsys;
    uint32_t crc;
};

struct rec {
    uint64_t word;   /* page VA | kind, or value << 12 | kind */
    uint32_t count;
    uint32_t dicount;
};

struct sysrec {
    int64_t nr;
    uint64_t args[6];
    int64_t ret;
};

_Static_assert(sizeof(struct chunk_hdr) == HDR_SIZE, "header layout");
_Static_assert(sizeof(struct rec) == REC_SIZE, "record layout");
_Static_assert(sizeof(struct sysrec) == SYS_SIZE, "syscall layout");

#define MAX_REC ((CHUNK_MAX - HDR_SIZE) / REC_SIZE)
#define MAX_SYS ((CHUNK_MAX - HDR_SIZE) / (REC_SIZE + SYS_SIZE))

#define PAGE_MASK (~(uint64_t)0xfff)
#define NO_KEY UINT64_MAX
#define EMU_MARK_NR 0x656D75
/* Pseudo-syscall records (docs/trace-format.md, "Names"): the path an open
 * named, 56 bytes a record, just before its SYSCALL record; and where QEMU
 * loaded the program (start_code, end_code, entry_code), once per exec. */
#define EMU_PATH_NR 0x656D76
#define EMU_EXEC_NR 0x656D77
#define PATH_RECS 8
#define PATH_CAP (PATH_RECS * 56)
#define UTLB_MAX 256
/* Absorbed hits of evicted micro-TLB entries wait in a per-vCPU table of
 * (page, kind) -> count until the next sync point (or until the table is 3/4
 * full): a page evicted and refilled many times between two syscalls is one
 * F_ABSORBED record, not one per eviction (busybox gzip: 35% of the records). */
#define ACC_N 1024
/* Record flag (word bit 4): accesses the micro-TLB absorbed; count only. */
#define F_ABSORBED 0x10u
#define MAX_VCPUS 65536

/* ---- per-architecture syscall numbers the plugin must act on ---- */
struct arch_nrs { int64_t exit, exit_group, clone, fork, vfork, clone3, execve, execveat,
                  open, openat, openat2; };
static const struct arch_nrs NRS_X86_64 = { 60, 231, 56, 57, 58, 435, 59, 322, 2, 257, 437 };
static const struct arch_nrs NRS_AARCH64 = { 93, 94, 220, -1, -1, 435, 221, 281, -1, 56, 437 };
static struct arch_nrs nrs;
#define CLONE_VM 0x00000100

/* ---- per-vCPU state: touched only by the vCPU's own host thread, except at
 * atexit and in a fork child, where the other threads are stopped or gone. */
struct utlb_ent { uint64_t key; uint64_t count; };

/* The log: pairs of 64-bit words (host order, never leave the process).
 *   word bit 0 clear   data access: page | is_store << 1; then its icount.
 *                      With utlb=N only micro-TLB misses are logged; a miss
 *                      that evicts an entry with absorbed hits is preceded
 *                      by the victim: page | is_store << 1 | L_VICTIM, then
 *                      the hit count (its icount is the next pair's).
 *   word bit 0 set     fetch-page change: page | 1; then the icount.
 * The icount itself is kept by the callbacks (v->icount is always current). */
#define L_FETCH 1u
#define L_STORE 2u
#define L_VICTIM 4u
#define LOG_SLACK 8 /* words one callback may write (<= 6) past the check */
/* TB-exec userdata: page | TB_CROSS (ends in the next page) | ninsn */
#define TB_NINSN_MASK 0x7ffu
#define TB_CROSS 0x800u
#ifndef LOG_N /* -D for experiments; sizes within noise: docs/plugin.md */
#define LOG_N 2048 /* words */
#endif
#ifndef OUT_BYTES
#define OUT_BYTES (64 * 1024) /* output batch while the process is solo */
#endif

struct vcpu {
    uint64_t *lp;        /* next free log word; hot, first */
    uint64_t *lend;      /* drain at or past this */
    uint64_t key;        /* current run: page | is_write, or NO_KEY */
    uint64_t count;      /* accesses in the current run */
    uint64_t run_icount; /* icount when the run started */
    uint64_t icount;     /* retired instructions of this thread */
    uint64_t fetch_page;
    uint64_t last_icount;
    uint64_t icount0;    /* icount of the chunk's first record */
    uint32_t seq;
    uint16_t nrec, nsys;
    unsigned index;
    bool active;
    int64_t sc_nr;
    uint64_t sc_args[6];
    uint64_t run_pc;     /* pc=1: the instruction that started the current run */
    uint64_t sc_path[PATH_CAP / 8]; /* an open's path, read at entry */
    size_t sc_path_len;
    struct utlb_ent utlb[UTLB_MAX];
    unsigned acc_used;   /* keys in acc[] */
    struct utlb_ent acc[ACC_N]; /* absorbed counts waiting: key page|is_store, NO_KEY */
    struct rec recs[MAX_REC];
    struct sysrec sys[MAX_SYS];
    size_t olen;         /* bytes of finished chunks in out[] */
    unsigned char out[OUT_BYTES];
    uint64_t log[LOG_N];
};

static struct vcpu *vcpus[MAX_VCPUS];
static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;
static int out_fd = -1;
static uint32_t g_pid;
static uint32_t g_parent;        /* 0 for the first process */
static bool g_exec_sent;         /* EMU_EXEC_NR written (a fork child inherits it) */
static bool g_started;           /* PROC_START emitted in this process */
static int64_t g_exit_status = 0xffffffff; /* unknown unless exit/exit_group */
static unsigned g_exit_vcpu;
/* utlb=N: N entries in sets of UTLB_WAYS (fewer ways when N is smaller). */
#define UTLB_WAYS 4
static unsigned utlb_n, utlb_setmask, utlb_ways, utlb_wshift;
static bool out_failed;
static bool g_batch = true; /* solo process: batch chunks into OUT_BYTES writes */
/* icount=inline: one process-wide counter bumped by an inline op per TB
 * instead of a per-vCPU TB callback (see docs/trace-format.md). */
static bool icount_inline;
static bool pc_mode; /* pc=1: PC records (the memory callback logs the insn address) */
static uint64_t g_icount;

/* ---- the shared-memory ring (ringfd=N); emu/guest/ring.py is the reader ----
 * A control page, then cap data bytes (a power of two).  head and tail are
 * absolute byte positions that only grow; byte pos lives at data[pos % cap].
 * A writer reserves [pos, pos + len) with one atomic add on head, waits until
 * pos + len - tail <= cap, copies the chunk in and stores its first 8 bytes
 * last (release): a non-zero magic at pos publishes the chunk.  emu copies
 * published chunks out in position order, zeroes their bytes, then advances
 * tail.  A writer killed between its add and its store leaves a hole that
 * emu reports when the stream ends. */
#define RING_MAGIC 0x31474E4952554D45ull /* "EMURING1" in byte order */
#define RING_CTL 4096                    /* data starts one page in */

struct ring_ctl {
    uint64_t magic;
    uint64_t cap;        /* data bytes */
    uint32_t consumer;   /* emu's pid: a writer waiting for room checks it */
    uint32_t closed;     /* emu stopped reading: writers drop their chunks */
    uint32_t attached;   /* processes that mapped the ring at start-up */
    uint32_t pad0;
    uint64_t pad1[4];
    uint64_t head;       /* offset 64, its own cache line: writers */
    uint64_t pad2[7];
    uint64_t tail;       /* offset 128: emu */
};
_Static_assert(offsetof(struct ring_ctl, head) == 64, "ring layout");
_Static_assert(offsetof(struct ring_ctl, tail) == 128, "ring layout");

static struct ring_ctl *ring; /* NULL: write() to out_fd */
static unsigned char *ring_data;
static uint64_t ring_cap;

/* ---- CRC-32C (Castagnoli, reflected): the SSE4.2 crc32 instruction when the
 * host has it (measured: the table version cost ~5% of plugin time), else a
 * table.  emu/trace/_decode.py computes the same function. ---- */
static uint32_t crc_tab[256];
static bool crc_hw;

static void crc_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & -(c & 1));
        crc_tab[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw_update(uint32_t c, const unsigned char *p, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (crc_hw)
        return ~crc_hw_update(c, p, n);
#endif
    while (n--)
        c = (c >> 8) ^ crc_tab[(c ^ *p++) & 0xff];
    return ~c;
}

/* The vCPU's instruction count now.  With icount=inline it follows the
 * process-wide counter, which other threads bump without atomics: clamp so
 * a vCPU's counts never go backwards. */
static inline uint64_t now(struct vcpu *v)
{
    if (icount_inline) {
        uint64_t g = __atomic_load_n(&g_icount, __ATOMIC_RELAXED);
        if (g > v->icount)
            v->icount = g;
    }
    return v->icount;
}

/* ---- chunk output ---- */
static void write_all(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len && !out_failed) {
        ssize_t w = write(out_fd, p, len);
        if (w > 0) {
            /* Only a batch (> PIPE_BUF) can be cut short, by a signal. */
            p += w;
            len -= (size_t)w;
        } else if (!(w < 0 && errno == EINTR)) {
            /* The reader is gone or the disk is full: stop emitting, let the
             * guest finish; emu reports the truncated stream. */
            out_failed = true;
        }
    }
}

/* Wait until emu has consumed enough for [.., end) to fit; false if emu has
 * stopped reading or is gone (then the guest runs on without output). */
static bool ring_room(uint64_t end)
{
    struct timespec ts = { 0, 10000 };
    for (unsigned waits = 1;
         end - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) > ring_cap; waits++) {
        if (__atomic_load_n(&ring->closed, __ATOMIC_RELAXED))
            return false;
        if (waits % 64 == 0 && kill((pid_t)ring->consumer, 0) < 0 && errno == ESRCH)
            return false;
        nanosleep(&ts, NULL);
        if (ts.tv_nsec < 1000000)
            ts.tv_nsec *= 2;
    }
    return true;
}

/* Publish one chunk: reserve, copy (in two parts at the wrap), then store
 * the first word, which emu polls for. */
static void ring_write(const unsigned char *buf, size_t len)
{
    uint64_t pos = __atomic_fetch_add(&ring->head, len, __ATOMIC_RELAXED);
    if (!ring_room(pos + len)) {
        out_failed = true;
        return;
    }
    uint64_t off = pos & (ring_cap - 1);
    size_t first = ring_cap - off < len ? (size_t)(ring_cap - off) : len;
    memcpy(ring_data + off + 8, buf + 8, first - 8); /* off is 16-aligned */
    memcpy(ring_data, buf + first, len - first);
    uint64_t w0;
    memcpy(&w0, buf, 8);
    __atomic_store_n((uint64_t *)(void *)(ring_data + off), w0, __ATOMIC_RELEASE);
}

static bool ring_attach(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= RING_CTL) {
        close(fd);
        return false;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the ring; the guest never sees the fd */
    if (m == MAP_FAILED)
        return false;
    struct ring_ctl *c = m;
    uint64_t cap = c->cap;
    if (c->magic != RING_MAGIC || cap < CHUNK_MAX || (cap & (cap - 1)) ||
        (uint64_t)st.st_size != RING_CTL + cap) {
        munmap(m, (size_t)st.st_size);
        return false;
    }
    ring = c;
    ring_data = (unsigned char *)m + RING_CTL;
    ring_cap = cap;
    __atomic_fetch_add(&c->attached, 1, __ATOMIC_RELEASE);
    return true;
}

/* Write the vCPU's finished chunks. */
static void out_flush(struct vcpu *v)
{
    if (v->olen)
        write_all(v->out, v->olen);
    v->olen = 0;
}

/* Seal the current chunk into the vCPU's output buffer.  While the process
 * is solo (one vCPU, no fork yet: g_batch) chunks are written OUT_BYTES at a
 * time, one write() per ~16 chunks; otherwise each chunk is its own write()
 * of at most PIPE_BUF bytes, atomic on a FIFO shared with other threads and
 * processes.  A lone writer needs no atomicity. */
static void flush_chunk(struct vcpu *v)
{
    if (v->nrec == 0)
        return;
    unsigned char *buf = v->out + v->olen;
    struct chunk_hdr h = {
        .magic = CHUNK_MAGIC, .version = FORMAT_VERSION, .vcpu = (uint16_t)v->index,
        .pid = g_pid, .seq = v->seq++, .icount0 = v->icount0, .nrec = v->nrec,
        .nsys = v->nsys, .crc = 0,
    };
    /* icount0 is the first record's icount; its dicount is 0. */
    size_t rl = (size_t)v->nrec * REC_SIZE, sl = (size_t)v->nsys * SYS_SIZE;
    memcpy(buf + HDR_SIZE, v->recs, rl);
    memcpy(buf + HDR_SIZE + rl, v->sys, sl);
    memcpy(buf, &h, HDR_SIZE);
    uint32_t crc = crc_update(0, buf, HDR_SIZE - 4);
    h.crc = crc_update(crc, buf + HDR_SIZE, rl + sl);
    memcpy(buf + offsetof(struct chunk_hdr, crc), &h.crc, sizeof(h.crc));
    v->nrec = 0;
    v->nsys = 0;
    if (ring) { /* straight into the ring: olen stays 0 */
        if (!out_failed)
            ring_write(buf, HDR_SIZE + rl + sl);
        return;
    }
    v->olen += HDR_SIZE + rl + sl;
    if (!g_batch || v->olen > OUT_BYTES - CHUNK_MAX)
        out_flush(v);
}

/* Leave batch mode for good (a second vCPU or process is about to exist):
 * everything buffered goes out first, so nothing of this process that
 * happened before can arrive after the newcomer's first chunk. */
static void batch_end(struct vcpu *v)
{
    if (v->nrec)
        flush_chunk(v);
    out_flush(v);
    g_batch = false;
}

static inline size_t chunk_bytes(unsigned nrec, unsigned nsys)
{
    return HDR_SIZE + (size_t)nrec * REC_SIZE + (size_t)nsys * SYS_SIZE;
}

/* Append one record with the icount it happened at; flush first if full or
 * if the icount delta would not fit in 32 bits. */
static void put(struct vcpu *v, uint64_t word, uint32_t count, uint64_t icount)
{
    if (chunk_bytes(v->nrec + 1, v->nsys) > CHUNK_MAX ||
        (v->nrec && icount - v->last_icount > UINT32_MAX))
        flush_chunk(v);
    struct rec *r = &v->recs[v->nrec];
    if (v->nrec++ == 0)
        v->icount0 = v->last_icount = icount;
    r->word = word;
    r->count = count;
    r->dicount = (uint32_t)(icount - v->last_icount);
    v->last_icount = icount;
}

static void put_access_slow(struct vcpu *v, uint64_t key, uint64_t count, uint64_t icount)
{
    while (count > UINT32_MAX) {
        put(v, key, UINT32_MAX, icount);
        count -= UINT32_MAX;
    }
    put(v, key, (uint32_t)count, icount);
}

/* The per-record hot path (one record per page change on `random`): the
 * common case appends in place; anything unusual takes put(). */
static inline __attribute__((always_inline)) void
put_access(struct vcpu *v, uint64_t key, uint64_t count, uint64_t icount)
{
    uint64_t d = icount - v->last_icount;
    if (unlikely(count > UINT32_MAX || d > UINT32_MAX || v->nrec == 0 ||
                 chunk_bytes(v->nrec + 1, v->nsys) > CHUNK_MAX)) {
        put_access_slow(v, key, count, icount);
        return;
    }
    struct rec *r = &v->recs[v->nrec++];
    r->word = key;
    r->count = (uint32_t)count;
    r->dicount = (uint32_t)d;
    v->last_icount = icount;
}

static inline void put_value(struct vcpu *v, enum kind k, uint64_t value)
{
    put(v, (value << 12) | k, 1, now(v));
}

/* Forward every access the micro-TLB absorbed, so counts stay exact before
 * anything that can change the address space is seen. */
/* Forward every absorbed count waiting in acc[] (at icount), empty it. */
static void acc_flush(struct vcpu *v, uint64_t icount)
{
    if (!v->acc_used)
        return;
    for (unsigned i = 0; i < ACC_N; i++) {
        struct utlb_ent *a = &v->acc[i];
        if (a->key != NO_KEY) {
            put_access(v, a->key | F_ABSORBED, a->count, icount);
            a->key = NO_KEY;
        }
    }
    v->acc_used = 0;
}

/* An evicted entry's hits: add them to acc[] (open addressing). */
static void acc_add(struct vcpu *v, uint64_t key, uint64_t count, uint64_t icount)
{
    unsigned h = (unsigned)((key * 0x9E3779B97F4A7C15ull) >> 54) & (ACC_N - 1);
    while (v->acc[h].key != NO_KEY && v->acc[h].key != key)
        h = (h + 1) & (ACC_N - 1);
    if (v->acc[h].key == key) {
        v->acc[h].count += count;
        return;
    }
    v->acc[h].key = key;
    v->acc[h].count = count;
    if (++v->acc_used >= ACC_N * 3 / 4)
        acc_flush(v, icount);
}

static void acc_reset(struct vcpu *v)
{
    for (unsigned i = 0; i < ACC_N; i++)
        v->acc[i].key = NO_KEY;
    v->acc_used = 0;
}

static void utlb_drain(struct vcpu *v)
{
    acc_flush(v, now(v));
    for (unsigned i = 0; i < utlb_n; i++) {
        struct utlb_ent *e = &v->utlb[i];
        if (e->key != NO_KEY && e->count)
            put_access(v, e->key | F_ABSORBED, e->count, now(v));
        e->key = NO_KEY;
        e->count = 0;
    }
}

/* End the current same-page run: everything else is ordered after it. */
static void put_pc(struct vcpu *v, uint64_t pc, uint64_t icount)
{
    /* The PC and its access record share a chunk: room for both first. */
    if (chunk_bytes(v->nrec + 2, v->nsys) > CHUNK_MAX)
        flush_chunk(v);
    put(v, (pc << 12) | K_PC, 1, icount);
}

static void close_run(struct vcpu *v)
{
    if (v->key == NO_KEY)
        return;
    if (pc_mode)
        put_pc(v, v->run_pc, v->run_icount);
    put_access(v, v->key, v->count, v->run_icount);
    v->key = NO_KEY;
}

/* ---- turning the log into records (outside the guest's hot path) ---- */

/* Replay the log into records.  Called when the log is full (from a
 * callback) and at every sync point, so records keep program order with
 * syscalls, markers and vCPU events.  The run is kept in registers; GCC
 * otherwise packs such locals into SSE registers through the stack, a
 * store-forwarding chain per word that perf put at a third of the drain. */
/* pc=1: the log holds (pc, L_PC_MARK) before each (access, icount) pair. */
#define L_PC_MARK UINT64_MAX
static __attribute__((noinline)) void drain_pc(struct vcpu *v)
{
    const uint64_t *p = v->log, *end = v->lp;
    uint64_t key = v->key, count = v->count, run_ic = v->run_icount, pc = 0;
    uint64_t run_pc = v->run_pc;
    v->lp = v->log;
    for (; p < end; p += 2) {
        uint64_t w = p[0], x = p[1];
        if (x == L_PC_MARK) {
            pc = w;
            continue;
        }
        uint64_t k = (w & PAGE_MASK) | ((w & L_STORE) >> 1);
        if (w & L_FETCH) {
            if (key != NO_KEY) {
                put_pc(v, run_pc, run_ic);
                put_access(v, key, count, run_ic);
            }
            key = NO_KEY;
            put(v, (w & PAGE_MASK) | K_FETCH, 1, x);
        } else if (k == key) {
            count++;
        } else {
            if (key != NO_KEY) {
                put_pc(v, run_pc, run_ic);
                put_access(v, key, count, run_ic);
            }
            key = k;
            count = 1;
            run_ic = x;
            run_pc = pc;
        }
    }
    v->key = key;
    v->count = count;
    v->run_icount = run_ic;
    v->run_pc = run_pc;
}

__attribute__((optimize("no-tree-slp-vectorize")))
static __attribute__((noinline)) void drain(struct vcpu *v)
{
    if (unlikely(pc_mode)) {
        drain_pc(v);
        return;
    }
    const uint64_t *p = v->log, *end = v->lp;
    uint64_t key = v->key, count = v->count, run_ic = v->run_icount;
    const bool utlb = utlb_n != 0;
    v->lp = v->log;
    for (; p < end; p += 2) {
        uint64_t w = p[0], x = p[1];
        uint64_t k = (w & PAGE_MASK) | ((w & L_STORE) >> 1);
        if (unlikely(w & L_FETCH)) {
            if (key != NO_KEY)
                put_access(v, key, count, run_ic);
            key = NO_KEY;
            put(v, (w & PAGE_MASK) | K_FETCH, 1, x);
        } else if (utlb) {
            if (w & L_VICTIM)  /* absorbed hits: counted at the next sync, no lookup */
                acc_add(v, k, x, p[3]);
            else               /* the miss itself, count 1 */
                put_access(v, k, 1, x);
        } else if (k == key) {
            count++;
        } else {
            if (key != NO_KEY)
                put_access(v, key, count, run_ic);
            key = k;
            count = 1;
            run_ic = x;
        }
    }
    v->key = key;
    v->count = count;
    v->run_icount = run_ic;
}

static void sync_point(struct vcpu *v)
{
    drain(v);
    close_run(v);
    if (utlb_n)
        utlb_drain(v);
}

static void start_process_records(struct vcpu *v)
{
    put_value(v, K_PROC_START, g_parent);
    g_started = true;
}

static void log_reset(struct vcpu *v)
{
    v->lp = v->log;
}

static struct vcpu *vcpu_get(unsigned vi)
{
    struct vcpu *v = vcpus[vi];
    if (likely(v))
        return v;
    pthread_mutex_lock(&alloc_lock);
    v = vcpus[vi];
    if (!v) {
        v = calloc(1, sizeof(*v));
        if (!v)
            abort();
        v->index = vi;
        v->key = NO_KEY;
        v->fetch_page = NO_KEY;
        v->lend = v->log + LOG_N - LOG_SLACK;
        log_reset(v);
        for (unsigned i = 0; i < UTLB_MAX; i++)
            v->utlb[i].key = NO_KEY;
        acc_reset(v);
        __atomic_store_n(&vcpus[vi], v, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&alloc_lock);
    return v;
}

static void vcpu_start(struct vcpu *v)
{
    /* A reused index whose previous thread left without an exit hook: its
     * events go out first, under its own icounts. */
    sync_point(v);
    flush_chunk(v);
    out_flush(v);
    v->icount = 0;
    v->key = NO_KEY;
    v->fetch_page = NO_KEY;
    log_reset(v);
    v->active = true;
    if (!g_started)
        start_process_records(v);
    put_value(v, K_VCPU_START, 0);
}

static void vcpu_end(struct vcpu *v)
{
    if (!v->active)
        return;
    sync_point(v);
    put_value(v, K_VCPU_EXIT, 0);
    flush_chunk(v);
    out_flush(v);
    v->active = false;
}

/* ---- callbacks: the guest's hot path appends one log word and returns ---- */
static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vi)
{
    (void)id;
    if (vi >= MAX_VCPUS)
        return;
    vcpu_start(vcpu_get(vi));
}

static void on_vcpu_exit(qemu_plugin_id_t id, unsigned int vi)
{
    (void)id;
    if (vi < MAX_VCPUS && vcpus[vi])
        vcpu_end(vcpus[vi]);
}

/* Append an access and its icount. */
static inline __attribute__((always_inline)) void log_access(struct vcpu *v, uint64_t w)
{
    uint64_t *p = v->lp;
    p[0] = w;
    p[1] = v->icount;
    p += 2;
    v->lp = p;
    if (unlikely(p >= v->lend))
        drain(v);
}

/* Load or store.  QEMU 7.2 does not honour the R/W filter of
 * qemu_plugin_register_vcpu_mem_cb (measured: a load fired the W-only
 * callback), so one callback reads the meminfo.  qemu_plugin_mem_is_store is
 * an out-of-line call; 7.2 keeps the R/W bits at bit 16 of the meminfo, and
 * meminfo_layout_ok() proves that against the API at start-up, so on_mem
 * reads the store bit directly (else on_mem_api asks the API every time). */
#define MEMINFO_RW_SHIFT 16
static bool meminfo_direct = true; /* meminfo_layout_ok() at start-up */
_Static_assert(QEMU_PLUGIN_MEM_W == L_STORE, "store bit lands on L_STORE");

static bool meminfo_layout_ok(void)
{
    for (unsigned b = 0; b < 32; b++) {
        bool want = b == MEMINFO_RW_SHIFT + 1; /* QEMU_PLUGIN_MEM_W == 2 */
        if (qemu_plugin_mem_is_store((qemu_plugin_meminfo_t)1u << b) != want)
            return false;
    }
    return !qemu_plugin_mem_is_store(~((qemu_plugin_meminfo_t)QEMU_PLUGIN_MEM_W
                                       << MEMINFO_RW_SHIFT)) &&
           qemu_plugin_mem_is_store(~(qemu_plugin_meminfo_t)0);
}

/* utlb=N: the micro-TLB runs in the callback, so a hit costs one compare and
 * logs nothing; a miss logs the victim's hits (if any) and the access. */
static inline __attribute__((always_inline)) struct utlb_ent *
utlb_set(struct vcpu *v, uint64_t key)
{
    return &v->utlb[(((key >> 11) ^ key) & utlb_setmask) << utlb_wshift];
}

/* A set is kept in LRU order, most recent first: a hit moves its entry to
 * the front, a miss evicts the last.  A 4-way set of 64 entries missed 5.3 M
 * times on busybox gzip (4 MB input) where a direct-mapped table of 64 missed
 * 29.5 M times (conflicts between stack, heap and window pages). */
static inline __attribute__((always_inline)) uint64_t *
utlb_access(struct vcpu *v, uint64_t *p, uint64_t w)
{
    uint64_t key = (w & PAGE_MASK) | ((w & L_STORE) >> 1);
    struct utlb_ent *e = utlb_set(v, key);
    if (likely(e[0].key == key)) {
        e[0].count++;
        return p;
    }
    unsigned k = 1;
    while (k < utlb_ways && e[k].key != key)
        k++;
    if (k < utlb_ways) {            /* a hit further down the set */
        uint64_t count = e[k].count + 1;
        for (; k > 0; k--)
            e[k] = e[k - 1];
        e[0].key = key;
        e[0].count = count;
        return p;
    }
    struct utlb_ent *last = &e[utlb_ways - 1];
    if (last->key != NO_KEY && last->count) {
        *p++ = (last->key & PAGE_MASK) | (last->key & 1) << 1 | L_VICTIM;
        *p++ = last->count;
    }
    for (k = utlb_ways - 1; k > 0; k--)
        e[k] = e[k - 1];
    *p++ = w;
    *p++ = v->icount;
    e[0].key = key;
    e[0].count = 0;
    return p;
}

/* The miss path of on_mem_utlb, out of line so that the hit path needs no
 * stack frame: log the victim's hits and the access, take the entry. */
static __attribute__((noinline)) void utlb_miss(struct vcpu *v, uint64_t w)
{
    uint64_t *p = utlb_access(v, v->lp, w);
    v->lp = p;
    if (unlikely(p >= v->lend))
        drain(v);
}

/* A hit is the whole cost of most accesses of a program with locality: a
 * load of the vCPU, the key, one compare and the count's increment (perf on
 * busybox gzip put 45% of QEMU's samples in this callback when it also
 * tested meminfo_direct and stored the log pointer on every hit). */
static void on_mem_utlb(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    (void)ud;
    struct vcpu *v = vcpus[vi];
    uint64_t key = (va & PAGE_MASK) | ((info >> (MEMINFO_RW_SHIFT + 1)) & 1); /* as utlb_access */
    struct utlb_ent *e = utlb_set(v, key);
    if (likely(e->key == key)) {
        e->count++;
        return;
    }
    utlb_miss(v, (key & PAGE_MASK) | (key & 1) << 1);
}

/* The same for sets of UTLB_WAYS (utlb >= 4), written out for 4 ways: no
 * call, no loop, no variable shift.  On `random` (every access misses) the
 * generic out-of-line miss path cost 0.7 s per 30 M accesses over the
 * direct-mapped table; on busybox gzip it took 16% of QEMU's samples (and
 * memmove 4%) when only way 0 was checked here. */
_Static_assert(UTLB_WAYS == 4, "on_mem_utlb4 is written for 4 ways");
/* No SLP vectorisation: GCC otherwise loads e[0] (key and count) as one
 * 16-byte movdqu for the miss path's copy, ahead of the hit test, and that
 * load cannot be forwarded from the previous hit's 8-byte store of the
 * count: a store-forwarding stall on every hit (perf, busybox gzip: 61% of
 * QEMU's samples in this callback, a third of them on that load). */
__attribute__((optimize("no-tree-slp-vectorize")))
static void on_mem_utlb4(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    (void)ud;
    struct vcpu *v = vcpus[vi];
    uint64_t key = (va & PAGE_MASK) | ((info >> (MEMINFO_RW_SHIFT + 1)) & 1); /* as utlb_access */
    struct utlb_ent *e = &v->utlb[(((key >> 11) ^ key) & utlb_setmask) * UTLB_WAYS];
    if (likely(e[0].key == key)) {
        e[0].count++;
        return;
    }
    struct utlb_ent e0 = e[0];
    uint64_t count;
    if (e[1].key == key) {
        count = e[1].count;
    } else if (e[2].key == key) {
        count = e[2].count;
        e[2] = e[1];
    } else if (e[3].key == key) {
        count = e[3].count;
        e[3] = e[2];
        e[2] = e[1];
    } else {                       /* a miss: log the LRU entry's hits and the access */
        uint64_t *p = v->lp;
        if (e[3].key != NO_KEY && e[3].count) {
            p[0] = (e[3].key & PAGE_MASK) | (e[3].key & 1) << 1 | L_VICTIM;
            p[1] = e[3].count;
            p += 2;
        }
        p[0] = (key & PAGE_MASK) | (key & 1) << 1;
        p[1] = v->icount;
        p += 2;
        e[3] = e[2];
        e[2] = e[1];
        e[1] = e0;
        e[0].key = key;
        e[0].count = 0;
        v->lp = p;
        if (unlikely(p >= v->lend))
            drain(v);
        return;
    }
    e[1] = e0;
    e[0].key = key;
    e[0].count = count + 1;
}

static void on_mem_utlb_api(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va,
                            void *ud)
{
    (void)ud;
    utlb_miss(vcpus[vi], (va & PAGE_MASK) | (qemu_plugin_mem_is_store(info) ? L_STORE : 0));
}

static void on_mem(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    (void)ud;
    log_access(vcpus[vi], (va & PAGE_MASK) | ((info >> MEMINFO_RW_SHIFT) & L_STORE));
}

/* pc=1: the instruction's address (userdata) goes into the log before the access. */
static void on_mem_pc(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    struct vcpu *v = vcpus[vi];
    uint64_t *p = v->lp;
    p[0] = (uint64_t)(uintptr_t)ud;
    p[1] = L_PC_MARK;
    v->lp = p + 2;
    uint64_t store = meminfo_direct ? (info >> MEMINFO_RW_SHIFT) & L_STORE
                                    : (qemu_plugin_mem_is_store(info) ? L_STORE : 0);
    log_access(v, (va & PAGE_MASK) | store);
}

static void on_mem_api(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    (void)ud;
    log_access(vcpus[vi], (va & PAGE_MASK) | (qemu_plugin_mem_is_store(info) ? L_STORE : 0));
}

/* icount=inline: the fetch page is seen only by instructions that access
 * data, from the page of the instruction (userdata); the icount is the
 * process-wide inline counter (clamped: other threads bump it too). */
static inline __attribute__((always_inline)) void
mem_inline(unsigned int vi, uint64_t va, void *ud, uint64_t store)
{
    struct vcpu *v = vcpus[vi];
    uint64_t page = (uint64_t)(uintptr_t)ud;
    uint64_t g = __atomic_load_n(&g_icount, __ATOMIC_RELAXED);
    uint64_t *p = v->lp;
    if (g > v->icount)
        v->icount = g;
    if (unlikely(page != v->fetch_page)) {
        v->fetch_page = page;
        *p++ = page | L_FETCH;
        *p++ = v->icount;
    }
    uint64_t w = (va & PAGE_MASK) | store;
    if (utlb_n) {
        p = utlb_access(v, p, w);
    } else {
        *p++ = w;
        *p++ = v->icount;
    }
    v->lp = p;
    if (unlikely(p >= v->lend))
        drain(v);
}

static void on_mem_inline(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    mem_inline(vi, va, ud, (info >> MEMINFO_RW_SHIFT) & L_STORE);
}

static void on_mem_inline_api(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va,
                              void *ud)
{
    mem_inline(vi, va, ud, qemu_plugin_mem_is_store(info) ? L_STORE : 0);
}

/* A block starting on another page than the last, or running into the next
 * page: log the fetch-page change(s) at the block's icount. */
static __attribute__((noinline)) void tb_fetch(struct vcpu *v, uint64_t u)
{
    uint64_t page = u & PAGE_MASK;
    uint64_t *p = v->lp;
    if (page != v->fetch_page) {
        *p++ = page | L_FETCH;
        *p++ = v->icount;
    }
    if (u & TB_CROSS) {
        page += 0x1000;
        *p++ = page | L_FETCH;
        *p++ = v->icount;
    }
    v->fetch_page = page;
    v->lp = p;
    if (p >= v->lend)
        drain(v);
}

/* Block start: the icount, and the fetch page when it changes. */
static void on_tb_exec(unsigned int vi, void *ud)
{
    struct vcpu *v = vcpus[vi];
    uint64_t u = (uint64_t)(uintptr_t)ud;
    v->icount += u & TB_NINSN_MASK;
    if (unlikely((u & (PAGE_MASK | TB_CROSS)) != v->fetch_page))
        tb_fetch(v, u);
}

static qemu_plugin_vcpu_mem_cb_t mem_cb = on_mem, mem_inline_cb = on_mem_inline;

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0)
        return;
    uint64_t start = qemu_plugin_tb_vaddr(tb);
    if (icount_inline) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_icount, n);
        for (size_t i = 0; i < n; i++) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
            uintptr_t page = (uintptr_t)(qemu_plugin_insn_vaddr(insn) & PAGE_MASK);
            qemu_plugin_register_vcpu_mem_cb(insn, mem_inline_cb, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, (void *)page);
        }
        return;
    }
    struct qemu_plugin_insn *last = qemu_plugin_tb_get_insn(tb, n - 1);
    uint64_t end = qemu_plugin_insn_vaddr(last) + qemu_plugin_insn_size(last) - 1;
    uint64_t cross = (end & PAGE_MASK) != (start & PAGE_MASK) ? TB_CROSS : 0;
    /* Userdata: page | cross-page | ninsn; a block longer than TB_NINSN_MASK
     * (not in 7.2, whose limit is 512) gets one callback per part. */
    for (size_t left = n; left; ) {
        size_t k = left < TB_NINSN_MASK ? left : TB_NINSN_MASK;
        uint64_t u = (start & PAGE_MASK) | cross | k;
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)u);
        left -= k;
        cross = 0;
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        void *ud = pc_mode ? (void *)(uintptr_t)qemu_plugin_insn_vaddr(insn) : NULL;
        qemu_plugin_register_vcpu_mem_cb(insn, mem_cb, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, ud);
    }
}

static bool is_fork_like(int64_t nr, uint64_t a1)
{
    if (nr == nrs.clone)
        return !(a1 & CLONE_VM);
    return nr == nrs.fork || nr == nrs.vfork || nr == nrs.clone3;
}

static void put_syscall(struct vcpu *v, int64_t nr, const uint64_t *args, int64_t ret)
{
    /* Room for the syscall and the record that points at it. */
    if (chunk_bytes(v->nrec + 1, v->nsys + 1) > CHUNK_MAX)
        flush_chunk(v);
    struct sysrec *s = &v->sys[v->nsys];
    s->nr = nr;
    memcpy(s->args, args, sizeof(s->args));
    s->ret = ret;
    put_value(v, K_SYSCALL, v->nsys);
    v->nsys++;
}

/* The NUL-terminated string at guest address `ga`, up to PATH_CAP - 1 bytes.
 * QEMU user-mode runs 64-bit guests with guest_base 0, so a guest address is
 * one of this process's; process_vm_readv on ourselves reads it without
 * faulting on a bad pointer (a read that fails names nothing). */
static size_t read_guest_string(uint64_t ga, char *buf)
{
    size_t first = 4096 - (ga & 0xfff);
    if (first > PATH_CAP)
        first = PATH_CAP;
    struct iovec local = { buf, PATH_CAP };
    struct iovec remote[2] = { { (void *)(uintptr_t)ga, first },
                               { (void *)(uintptr_t)(ga + first), PATH_CAP - first } };
    ssize_t got = process_vm_readv(getpid(), &local, 1, remote, first < PATH_CAP ? 2 : 1, 0);
    if (got <= 0)
        return 0;
    size_t n = strnlen(buf, (size_t)got);
    return n < (size_t)got ? n : 0; /* no NUL within reach: too long, name nothing */
}

/* Names (docs/trace-format.md): pseudo-syscall records, off the hot path. */
static void put_path(struct vcpu *v)
{
    const char *p = (const char *)v->sc_path;
    for (size_t off = 0; off < v->sc_path_len; off += 56) {
        struct sysrec r = { .nr = EMU_PATH_NR };
        memcpy(r.args, p + off, 56); /* sc_path is zero-padded to PATH_CAP */
        put_syscall(v, r.nr, r.args, r.ret);
    }
}

static void put_exec(struct vcpu *v)
{
    g_exec_sent = true;
    uint64_t a[6] = { qemu_plugin_start_code(), qemu_plugin_end_code(),
                      qemu_plugin_entry_code(), 0, 0, 0 };
    put_syscall(v, EMU_EXEC_NR, a, 0);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vi, int64_t nr,
                       uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                       uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id;
    (void)a7;
    (void)a8;
    struct vcpu *v = vcpu_get(vi);
    sync_point(v);
    v->sc_nr = nr;
    uint64_t args[6] = { a1, a2, a3, a4, a5, a6 };
    memcpy(v->sc_args, args, sizeof(args));
    if (!g_exec_sent)
        put_exec(v);
    v->sc_path_len = 0;
    if (nr == nrs.open || nr == nrs.openat || nr == nrs.openat2) {
        memset(v->sc_path, 0, sizeof(v->sc_path));
        v->sc_path_len = read_guest_string(nr == nrs.open ? a1 : a2, (char *)v->sc_path);
    }
    if (nr == nrs.exit || nr == nrs.exit_group) {
        g_exit_status = (int64_t)(uint32_t)a1 & 0xff;
        g_exit_vcpu = vi;
        put_syscall(v, nr, args, 0);
        if (nr == nrs.exit) {
            vcpu_end(v);
        } else {
            flush_chunk(v);
            out_flush(v);
        }
    } else if (is_fork_like(nr, a1) || nr == nrs.clone || nr == nrs.clone3) {
        /* Everything before the fork reaches the reader before the child's
         * first event, and the child inherits an empty buffer; a new thread
         * or process ends batching (flush_chunk). */
        batch_end(v);
    } else if (nr == nrs.execve || nr == nrs.execveat) {
        /* A successful exec replaces the plugin without an exit hook. */
        flush_chunk(v);
        out_flush(v);
    }
}

/* Once the process has (had) other threads, a syscall's or marker's record is
 * published when the call returns: another thread that runs on after this call
 * (woken by it, or simply later) must not have its events reach the reader
 * first just because this vCPU's chunk was not full yet.  Without this, an idle
 * main thread's madvise() or emu_mark() arrived after every worker's later
 * accesses, and the model saw the call at the end of the run. */
static void publish_in_order(struct vcpu *v)
{
    if (g_batch)
        return;
    flush_chunk(v);
    out_flush(v);
}

static void on_syscall_ret(qemu_plugin_id_t id, unsigned int vi, int64_t nr, int64_t ret)
{
    (void)id;
    struct vcpu *v = vcpu_get(vi);
    if (nr != v->sc_nr)
        return;
    sync_point(v); /* normally empty since the entry: no guest code ran */
    if (nr == EMU_MARK_NR) {
        put_value(v, K_MARK, v->sc_args[0]);
        publish_in_order(v);
        return;
    }
    if (ret == 0 && is_fork_like(nr, v->sc_args[0])) {
        uint32_t pid = (uint32_t)getpid();
        if (pid != g_pid) {
            /* The fork child: the other threads' buffers are the parent's
             * data, which the parent emits itself. */
            for (unsigned i = 0; i < MAX_VCPUS; i++) {
                struct vcpu *o = vcpus[i];
                if (!o)
                    continue;
                o->nrec = o->nsys = 0;
                o->olen = 0;
                o->seq = 0;
                o->key = NO_KEY;
                log_reset(o);
                for (unsigned k = 0; k < UTLB_MAX; k++) {
                    o->utlb[k].key = NO_KEY;
                    o->utlb[k].count = 0;
                }
                acc_reset(o);
                if (o != v)
                    o->active = false;
            }
            g_parent = g_pid;
            g_pid = pid;
            g_exit_status = 0xffffffff;
            start_process_records(v);
            put_value(v, K_VCPU_START, 0);
        }
    }
    if (v->sc_path_len && ret >= 0)
        put_path(v);
    put_syscall(v, nr, v->sc_args, ret);
    publish_in_order(v);
}

static void on_atexit(qemu_plugin_id_t id, void *ud)
{
    (void)id;
    (void)ud;
    /* The other vCPUs no longer run plugin code (QEMU removed the callbacks
     * under start_exclusive), so their buffers are ours to flush. */
    struct vcpu *last = NULL;
    for (unsigned i = 0; i < MAX_VCPUS; i++) {
        struct vcpu *v = vcpus[i];
        if (!v)
            continue;
        if (i == g_exit_vcpu)
            last = v;
        vcpu_end(v);
        flush_chunk(v);
        out_flush(v);
    }
    if (last) {
        put_value(last, K_PROC_EXIT, (uint64_t)g_exit_status);
        flush_chunk(last);
        out_flush(last);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *out = NULL;
    long ringfd = -1;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = argv[i] + 4;
        } else if (strncmp(argv[i], "ringfd=", 7) == 0) {
            char *end;
            ringfd = strtol(argv[i] + 7, &end, 10);
            if (*end || end == argv[i] + 7 || ringfd < 0 || ringfd > INT_MAX) {
                fprintf(stderr, "emu plugin: ringfd must be a file descriptor number\n");
                return -1;
            }
        } else if (strncmp(argv[i], "utlb=", 5) == 0) {
            char *end;
            unsigned long n = strtoul(argv[i] + 5, &end, 10);
            if (*end || n > UTLB_MAX || (n & (n - 1))) {
                fprintf(stderr, "emu plugin: utlb must be 0 or a power of two up to %d\n",
                        UTLB_MAX);
                return -1;
            }
            utlb_n = (unsigned)n;
            utlb_ways = utlb_n < UTLB_WAYS ? (utlb_n ? utlb_n : 1) : UTLB_WAYS;
            utlb_wshift = (unsigned)__builtin_ctz(utlb_ways);
            utlb_setmask = utlb_n ? utlb_n / utlb_ways - 1 : 0;
        } else if (strcmp(argv[i], "icount=inline") == 0) {
            icount_inline = true;
        } else if (strcmp(argv[i], "icount=tb") == 0) {
            icount_inline = false;
        } else if (strcmp(argv[i], "pc=1") == 0) {
            pc_mode = true;
        } else if (strcmp(argv[i], "pc=0") == 0) {
            pc_mode = false;
        } else {
            fprintf(stderr, "emu plugin: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!out) {
        fprintf(stderr, "emu plugin: out=PATH is required\n");
        return -1;
    }
    if (info->system_emulation) {
        fprintf(stderr, "emu plugin: user-mode only\n");
        return -1;
    }
    if (strcmp(info->target_name, "x86_64") == 0) {
        nrs = NRS_X86_64;
    } else if (strcmp(info->target_name, "aarch64") == 0) {
        nrs = NRS_AARCH64;
    } else {
        fprintf(stderr, "emu plugin: unsupported target %s\n", info->target_name);
        return -1;
    }
    out_fd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out_fd < 0) {
        fprintf(stderr, "emu plugin: cannot open %s: %s\n", out, strerror(errno));
        return -1;
    }
    if (ringfd >= 0 && !ring_attach((int)ringfd)) {
        fprintf(stderr, "emu plugin: ringfd=%ld is not an emu ring\n", ringfd);
        return -1;
    }
    struct stat st;
    if (!ring && fstat(out_fd, &st) == 0 && S_ISFIFO(st.st_mode))
        fcntl(out_fd, F_SETPIPE_SZ, 1 << 20); /* fewer wake-ups; best effort */
    crc_init();
    g_pid = (uint32_t)getpid();
    if (!meminfo_layout_ok()) {
        meminfo_direct = false;
        mem_cb = on_mem_api;
        mem_inline_cb = on_mem_inline_api;
    }
    if (utlb_n)
        mem_cb = !meminfo_direct ? on_mem_utlb_api
                 : utlb_ways == UTLB_WAYS ? on_mem_utlb4 : on_mem_utlb;
    if (pc_mode && (utlb_n || icount_inline)) {
        fprintf(stderr, "emu plugin: pc=1 works with icount=tb and without utlb\n");
        return -1;
    }
    if (pc_mode)
        mem_cb = on_mem_pc;

    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_exit_cb(id, on_vcpu_exit);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_vcpu_syscall_ret_cb(id, on_syscall_ret);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
