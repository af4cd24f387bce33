/*
 * The floor of a per-access plugin under QEMU 7.2 (benchmarks/run.py, row
 * `floor`): what emu's plugin pays before it does anything of its own.
 *
 * Per executed block one exec callback adds the block's instruction count to
 * a per-vCPU counter, and per memory access one callback increments a per-vCPU
 * counter: the same callbacks, with the same registration, as emu's plugin
 * (plugin/emu.c, icount=tb), with nothing in them.  Built at benchmark time
 * against build/include/qemu-plugin.h; never part of emu.
 *
 * Arguments: mem=0 leaves out the memory callback, tb=0 the block callback.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_VCPUS 1024

struct counts {
    uint64_t insns;
    uint64_t accesses;
} __attribute__((aligned(64)));

static struct counts counts[MAX_VCPUS];
static int want_mem = 1, want_tb = 1;

static void on_mem(unsigned int vi, qemu_plugin_meminfo_t info, uint64_t va, void *ud)
{
    (void)info;
    (void)va;
    (void)ud;
    counts[vi % MAX_VCPUS].accesses++;
}

static void on_tb_exec(unsigned int vi, void *ud)
{
    counts[vi % MAX_VCPUS].insns += (uintptr_t)ud;
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (want_tb)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)n);
    for (size_t i = 0; want_mem && i < n; i++)
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_mem,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "mem=", 4) == 0)
            want_mem = atoi(argv[i] + 4);
        else if (strncmp(argv[i], "tb=", 3) == 0)
            want_tb = atoi(argv[i] + 3);
        else
            return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    return 0;
}
