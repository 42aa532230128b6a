// llama-tq: the lane scheduler of the CUDA emulation (see cuda_emu.h): coroutines on private stacks,
// switched by a few lines of x86-64 assembly, and the barriers they meet at.
#include "cuda_emu.h"

#include <sys/mman.h>

#include <deque>
#include <vector>

emu_dim3 threadIdx;
emu_dim3 blockIdx;
emu_dim3 blockDim;
emu_dim3 gridDim  = { 1, 1, 1 };

// saves the callee-saved registers on the current stack, stores its pointer in *save_sp, switches to new_sp
// and restores the registers saved there (System V AMD64)
extern "C" void emu_ctx_switch(void ** save_sp, void * new_sp);
asm(R"(
    .pushsection .text
    .globl emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq  %rsp, (%rdi)
    movq  %rsi, %rsp
    popq  %r15
    popq  %r14
    popq  %r13
    popq  %r12
    popq  %rbx
    popq  %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
    .popsection
)");

static constexpr size_t EMU_STACK = 256 * 1024;  // per lane, the lowest page a guard
static constexpr size_t EMU_PAGE  = 4096;
static constexpr int    EMU_WARPS = EMU_MAX_THREADS / WARP_SIZE;

static struct {
    char *                        stacks = nullptr;
    void *                        sched_sp;
    void *                        sp[EMU_MAX_THREADS];
    bool                          done[EMU_MAX_THREADS];
    const int *                   wait_gen[EMU_MAX_THREADS];  // the barrier generation a lane waits on, or null
    int                           wait_val[EMU_MAX_THREADS];  // ... while it still has this value
    int                           n_threads;
    int                           cur;
    int                           warp_count[EMU_WARPS];
    int                           warp_gen[EMU_WARPS];
    int                           block_count;
    int                           block_gen;
    uint64_t                      shfl[2][EMU_MAX_THREADS];   // two buffers, alternating between shuffles
    int                           shfl_parity[EMU_MAX_THREADS];
    const std::function<void()> * body;
    emu_order                     order = EMU_ORDER_FORWARD;
    uint64_t                      rng   = 1;
} g_emu;

void emu_fatal(const char * msg) {
    fprintf(stderr, "cuda_emu: %s (block %u,%u,%u, thread %u)\n", msg, blockIdx.x, blockIdx.y, blockIdx.z,
            threadIdx.x);
    fflush(stdout);
    exit(2);
}

void emu_set_order(const emu_order order, const uint64_t seed) {
    g_emu.order = order;
    g_emu.rng   = seed * 2 + 1;
}

bool emu_order_from_name(const char * name, emu_order * order) {
    static const struct {
        const char * name;
        emu_order    order;
    } names[] = { { "forward", EMU_ORDER_FORWARD },
                  { "backward", EMU_ORDER_BACKWARD },
                  { "shuffled", EMU_ORDER_SHUFFLED },
                  { "warps", EMU_ORDER_WARPS } };
    for (const auto & n : names) {
        if (strcmp(name, n.name) == 0) {
            *order = n.order;
            return true;
        }
    }
    return false;
}

static void emu_yield() {
    emu_ctx_switch(&g_emu.sp[g_emu.cur], g_emu.sched_sp);
}

// arrives at the barrier of (count, gen) that expects n lanes; returns when all of them have arrived. The last
// one to arrive yields too, so that the lanes leave a barrier in the scheduler's order (all of them in the next
// round: forward or backward order is then the order of every phase between two barriers).
static void emu_barrier(int & count, int & gen, const int n) {
    if (++count == n) {
        count = 0;
        ++gen;
        emu_yield();
        return;
    }
    g_emu.wait_gen[g_emu.cur] = &gen;
    g_emu.wait_val[g_emu.cur] = gen;
    emu_yield();  // resumed once gen has moved on
    g_emu.wait_gen[g_emu.cur] = nullptr;
}

void emu_warp_sync() {
    const int w = g_emu.cur / WARP_SIZE;
    emu_barrier(g_emu.warp_count[w], g_emu.warp_gen[w], WARP_SIZE);
}

void emu_block_sync() {
    emu_barrier(g_emu.block_count, g_emu.block_gen, g_emu.n_threads);
}

// one barrier per shuffle: a lane reads buffer b before it arrives at the next barrier, and buffer b is
// written again only after that one
uint64_t emu_shfl(const uint64_t bits, const int src_lane) {
    const int tid = g_emu.cur;
    const int b   = g_emu.shfl_parity[tid];
    g_emu.shfl_parity[tid] ^= 1;
    g_emu.shfl[b][tid] = bits;
    emu_warp_sync();
    return g_emu.shfl[b][tid - tid % WARP_SIZE + src_lane];
}

// a warp vote: as emu_shfl, every lane then reads the whole warp's values
bool emu_any(const bool pred) {
    const int tid = g_emu.cur;
    const int b   = g_emu.shfl_parity[tid];
    g_emu.shfl_parity[tid] ^= 1;
    g_emu.shfl[b][tid] = pred ? 1 : 0;
    emu_warp_sync();
    bool any = false;
    for (int l = 0; l < WARP_SIZE; ++l) {
        any = any || g_emu.shfl[b][tid - tid % WARP_SIZE + l] != 0;
    }
    return any;
}

// cp.async: per lane, the copies not yet committed and the committed groups, oldest first (or, eager, none: every
// copy lands when it is issued)
struct emu_copy {
    void *       dst;
    const void * src;
    int          n;
    bool         ok;
};

static std::vector<emu_copy>              g_cp_open[EMU_MAX_THREADS];
static std::deque<std::vector<emu_copy>> g_cp_groups[EMU_MAX_THREADS];

static bool g_cp_eager = false;

void emu_set_cp_eager(const bool eager) {
    g_cp_eager = eager;
}

static void emu_cp_land(const emu_copy & c) {
    if (c.ok) {
        memcpy(c.dst, c.src, c.n);
    } else {
        memset(c.dst, 0, c.n);
    }
}

void emu_cp_async(void * dst, const void * src, const int n, const bool ok) {
    if (g_cp_eager) {
        emu_cp_land({ dst, src, n, ok });
        return;
    }
    g_cp_open[g_emu.cur].push_back({ dst, src, n, ok });
}

void emu_cp_async_commit() {
    g_cp_groups[g_emu.cur].push_back(std::move(g_cp_open[g_emu.cur]));
    g_cp_open[g_emu.cur].clear();
}

void emu_cp_async_wait(const int n_in_flight) {
    auto & groups = g_cp_groups[g_emu.cur];
    while ((int) groups.size() > n_in_flight) {
        for (const emu_copy & c : groups.front()) {
            emu_cp_land(c);
        }
        groups.pop_front();
    }
}

static void emu_lane_entry() {
    (*g_emu.body)();
    g_emu.done[g_emu.cur] = true;
    emu_yield();
    emu_fatal("a finished lane was resumed");
}

static uint64_t emu_rand() {  // xorshift64
    uint64_t x = g_emu.rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return g_emu.rng = x;
}

void emu_run_block(const int n_threads, const std::function<void()> & body) {
    if (n_threads <= 0 || n_threads > EMU_MAX_THREADS || n_threads % WARP_SIZE != 0) {
        emu_fatal("unsupported block size");
    }
    if (!g_emu.stacks) {
        void * mem = mmap(nullptr, EMU_STACK * EMU_MAX_THREADS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        if (mem == MAP_FAILED) {
            emu_fatal("no memory for the lane stacks");
        }
        g_emu.stacks = (char *) mem;
        for (int i = 0; i < EMU_MAX_THREADS; ++i) {
            mprotect(g_emu.stacks + EMU_STACK * i, EMU_PAGE, PROT_NONE);  // a stack overflow faults
        }
    }
    g_emu.body      = &body;
    g_emu.n_threads = n_threads;
    blockDim        = emu_dim3{ (unsigned) n_threads, 1, 1 };
    for (int i = 0; i < n_threads; ++i) {
        // a fresh stack: six zero registers, then the return address of emu_ctx_switch's ret; the entry then
        // sees rsp = 8 mod 16, as after a call
        const uintptr_t top  = (uintptr_t) (g_emu.stacks + EMU_STACK * (i + 1));
        const uintptr_t ret  = top - 16;
        void **         regs = (void **) (ret - 6 * sizeof(void *));
        *(void **) ret = (void *) &emu_lane_entry;
        for (int r = 0; r < 6; ++r) {
            regs[r] = nullptr;
        }
        g_emu.sp[i]          = (void *) regs;
        g_emu.done[i]        = false;
        g_emu.wait_gen[i]    = nullptr;
        g_emu.shfl_parity[i] = 0;
        g_cp_open[i].clear();  // a block's copies never outlive it
        g_cp_groups[i].clear();
    }
    memset(g_emu.warp_count, 0, sizeof(g_emu.warp_count));
    g_emu.block_count = 0;  // (the generations only move on)

    int perm[EMU_MAX_THREADS];
    for (int i = 0; i < n_threads; ++i) {
        perm[i] = g_emu.order == EMU_ORDER_BACKWARD ? n_threads - 1 - i : i;
    }
    for (;;) {
        if (g_emu.order == EMU_ORDER_SHUFFLED) {
            for (int i = n_threads - 1; i > 0; --i) {
                std::swap(perm[i], perm[emu_rand() % (uint64_t) (i + 1)]);
            }
        }
        auto runnable = [](const int i) {
            return !g_emu.done[i] && !(g_emu.wait_gen[i] && *g_emu.wait_gen[i] == g_emu.wait_val[i]);
        };
        int only_warp = -1;  // EMU_ORDER_WARPS: the last warp with a lane that can run
        if (g_emu.order == EMU_ORDER_WARPS) {
            for (int i = n_threads - 1; i >= 0 && only_warp < 0; --i) {
                only_warp = runnable(i) ? i / WARP_SIZE : -1;
            }
        }
        bool live    = false;
        bool resumed = false;
        for (int k = 0; k < n_threads; ++k) {
            const int i = perm[k];
            if (g_emu.done[i]) {
                continue;
            }
            live = true;
            if (!runnable(i) || (only_warp >= 0 && i / WARP_SIZE != only_warp)) {
                continue;  // its barrier is not complete yet (or another warp's turn)
            }
            resumed   = true;
            g_emu.cur = i;
            threadIdx = emu_dim3{ (unsigned) i, 0, 0 };
            emu_ctx_switch(&g_emu.sched_sp, g_emu.sp[i]);
        }
        if (!live) {
            break;
        }
        if (!resumed) {
            emu_fatal("deadlock: every live lane waits at a barrier that cannot complete");
        }
    }
}
