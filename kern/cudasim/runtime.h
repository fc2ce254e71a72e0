// cudasim's runtime, appended after the kernels and their trampolines: the block scheduler,
// the fault handler and the one exported entry point, cudasim_launch.
#pragma once

// The linker bounds every section whose name is a C identifier; hidden: this module's own.
extern "C" char __start_cudasim_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cudasim_shared[] __attribute__((weak, visibility("hidden")));

namespace cudasim {

inline void fiber_main() {
    launch->trampoline(launch->args);
    if (current->pending_count)
        fail("the thread returned with %d cp.async copies not waited for (async_wait_all)", current->pending_count);
    current->state = DONE;
    switch_to(&current->context, &launch->scheduler);
    abort();  // never resumed
}

inline void on_fault(int signal, siginfo_t* info, void* context) {
    Launch* l = launch;
    l->fault_signal = signal;
    l->fault_address = (uintptr_t)info->si_addr;
    l->fault_pc = (uintptr_t)((ucontext_t*)context)->uc_mcontext.gregs[REG_RIP];
    l->fault_thread = current ? current->index : -1;
    siglongjmp(l->escape, 1);
}

// Every lane of `mask` waits at a collective with that mask: compute each one's result.
inline bool resolve_warp(Fiber* lanes, int count) {
    bool progressed = false;
    for (int i = 0; i < count; ++i) {
        Fiber& f = lanes[i];
        if (f.state != AT_WARP) continue;
        unsigned mask = f.mask;
        bool complete = true;
        for (int j = 0; j < 32; ++j) {
            if (!(mask & (1u << j))) continue;
            if (j >= count || lanes[j].state == DONE) {
                fail("%s at line %d: lane %d of the mask 0x%08x has returned (or does not exist)",
                     f.what, f.line, j, mask);
                return false;
            }
            Fiber& other = lanes[j];
            if (other.state != AT_WARP) { complete = false; break; }
            if (other.mask != mask || other.op != f.op) {
                fail("warp divergence: lane %d at %s (line %d, mask 0x%08x), lane %d at %s (line %d, mask 0x%08x)",
                     i, f.what, f.line, mask, j, other.what, other.line, other.mask);
                return false;
            }
        }
        if (!complete) continue;
        unsigned votes = 0;
        for (int j = 0; j < 32; ++j)
            if ((mask & (1u << j)) && lanes[j].value) votes |= 1u << j;
        for (int j = 0; j < 32; ++j) {
            if (!(mask & (1u << j))) continue;
            Fiber& lane = lanes[j];
            int width = lane.width, base = j & ~(width - 1), source = j;
            switch (lane.op) {
                case SHFL: source = base + (int)(((lane.operand % width) + width) % width); break;
                case SHFL_UP: source = (j - base) >= lane.operand ? j - (int)lane.operand : j; break;
                case SHFL_DOWN: source = (j - base) + lane.operand < width ? j + (int)lane.operand : j; break;
                case SHFL_XOR: {
                    int other = j ^ (int)lane.operand;
                    source = (other & ~(width - 1)) == base ? other : j;
                    break;
                }
                default: break;
            }
            if (lane.op <= SHFL_XOR) {
                if (!(mask & (1u << source))) {
                    current = &lane;
                    fail("%s at line %d: reads lane %d, which is not in the mask 0x%08x", lane.what,
                         lane.line, source, mask);
                    return false;
                }
                lane.result = lanes[source].value;
            } else if (lane.op == BALLOT) {
                lane.result = votes;
            } else if (lane.op == ANY) {
                lane.result = votes != 0;
            } else if (lane.op == ALL) {
                lane.result = votes == mask;
            }
        }
        for (int j = 0; j < 32; ++j)
            if (mask & (1u << j)) lanes[j].state = READY;
        progressed = true;
    }
    return progressed;
}

// All threads that have not returned wait at a barrier: the same one, and none has returned.
inline bool release_barrier() {
    Launch* l = launch;
    Fiber* waiting = nullptr;
    int done = 0, count = 0;
    bool all_true = true;
    for (int i = 0; i < l->threads; ++i) {
        Fiber& f = l->fibers[i];
        if (f.state == DONE) { ++done; continue; }
        if (f.state != AT_BARRIER) return false;
        if (!waiting) waiting = &f;
        if (f.line != waiting->line || strcmp(f.what, waiting->what)) {
            current = &f;
            fail("barrier divergence: thread %d waits at %s (line %d), thread %d at %s (line %d)",
                 waiting->index, waiting->what, waiting->line, f.index, f.what, f.line);
            return false;
        }
        count += f.predicate;
        all_true = all_true && f.predicate;
    }
    if (!waiting) return false;
    if (done) {
        current = waiting;
        fail("barrier divergence: %d threads wait at %s (line %d) while %d threads of the block have returned",
             l->threads - done, waiting->what, waiting->line, done);
        return false;
    }
    if (!strcmp(waiting->what, "__syncthreads_count")) l->barrier_result = count;
    else if (!strcmp(waiting->what, "__syncthreads_and")) l->barrier_result = all_true;
    else if (!strcmp(waiting->what, "__syncthreads_or")) l->barrier_result = count > 0;
    else l->barrier_result = 0;
    for (int i = 0; i < l->threads; ++i) l->fibers[i].state = READY;
    return true;
}

inline bool run_block() {
    Launch* l = launch;
    size_t shared = (size_t)(__stop_cudasim_shared - __start_cudasim_shared);
    if (shared) memset(__start_cudasim_shared, 0xff, shared);  // NaN in every float
    if (l->dynamic_bytes) memset(l->dynamic_shared, 0xff, l->dynamic_bytes);
    for (int i = 0; i < l->threads; ++i) {
        Fiber& f = l->fibers[i];
        f.index = i;
        f.thread = {i % l->block.x, (i / l->block.x) % l->block.y, i / (l->block.x * l->block.y)};
        f.state = READY;
        f.pending_count = 0;
        // Each stack sits above its guard page.
        start_context(&f.context, l->stacks + (size_t)i * l->stack_size + 4096, l->stack_size - 4096, fiber_main);
    }
    const int warps = (l->threads + 31) / 32;
    for (;;) {
        // One warp at a time, each until every one of its threads waits at a block barrier or
        // has returned, its warp collectives resolved as they complete: a GPU may run a warp
        // that far before another starts, so a __syncwarp where a __syncthreads is needed lets
        // a warp read what another has not written yet (NaN, or a race between the orders).
        for (int k = 0; k < warps; ++k) {
            const int first = (l->reverse ? warps - 1 - k : k) * 32, count = std::min(32, l->threads - first);
            do {
                for (int j = 0; j < count; ++j) {
                    Fiber& f = l->fibers[first + (l->reverse ? count - 1 - j : j)];
                    if (f.state != READY) continue;
                    current = &f;
                    switch_to(&l->scheduler, &f.context);
                    if (l->error[0]) return false;
                }
                current = nullptr;
            } while (resolve_warp(l->fibers + first, count));
            if (l->error[0]) return false;
        }
        if (release_barrier()) continue;
        if (l->error[0]) return false;
        int done = 0;
        for (int i = 0; i < l->threads; ++i) done += l->fibers[i].state == DONE;
        if (done == l->threads) return true;
        for (int i = 0; i < l->threads; ++i) {
            Fiber& f = l->fibers[i];
            if (f.state == AT_WARP) {
                current = &f;
                fail("deadlock: %s (line %d, mask 0x%08x) waits for lanes that are elsewhere", f.what,
                     f.line, f.mask);
                return false;
            }
        }
        fail("deadlock: no thread can run");
        return false;
    }
}

}  // namespace cudasim

// One launch: 0 if it ran to the end; else 1 with a message in `error`, or 2 for a fault
// (signal, address, pc offset in this module, thread) that the caller words.
extern "C" __attribute__((visibility("default"))) int cudasim_launch(
    void (*trampoline)(void**), void** args, const unsigned* grid, const unsigned* block,
    size_t dynamic_bytes, int reverse, char* error, size_t error_len, long long* fault)
{
    using namespace cudasim;
    Launch l{};
    l.trampoline = trampoline;
    l.args = args;
    l.grid = dim3(grid[0], grid[1], grid[2]);
    l.block = dim3(block[0], block[1], block[2]);
    l.threads = (int)(block[0] * block[1] * block[2]);
    l.reverse = reverse != 0;
    l.error = error;
    l.error_len = error_len;
    error[0] = 0;
    l.stack_size = 64 * 1024;
    size_t stack_bytes = l.stack_size * (size_t)l.threads;
    l.stacks = (char*)mmap(nullptr, stack_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (l.stacks == MAP_FAILED) { snprintf(error, error_len, "cannot map fiber stacks"); return 1; }
    for (int i = 0; i < l.threads; ++i) mprotect(l.stacks + (size_t)i * l.stack_size, 4096, PROT_NONE);
    l.fibers = (Fiber*)calloc(l.threads, sizeof(Fiber));
    l.dynamic_bytes = dynamic_bytes;
    l.dynamic_shared = dynamic_bytes ? (char*)malloc(dynamic_bytes) : nullptr;
    Launch* outer = launch;
    launch = &l;
    // Faults in a fiber come back here, on a stack of their own (a fiber's may be exhausted).
    static thread_local char alternate[64 * 1024];
    stack_t signal_stack{}, old_stack{};
    signal_stack.ss_sp = alternate;
    signal_stack.ss_size = sizeof alternate;
    sigaltstack(&signal_stack, &old_stack);
    struct sigaction action{}, old[4];
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    const int signals[4] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (int i = 0; i < 4; ++i) sigaction(signals[i], &action, &old[i]);
    int status = 0;
    if (sigsetjmp(l.escape, 1) == 0) {
        for (unsigned z = 0; z < l.grid.z && !status; ++z)
            for (unsigned y = 0; y < l.grid.y && !status; ++y)
                for (unsigned x = 0; x < l.grid.x && !status; ++x) {
                    // Reverse order: the blocks too, last first.
                    l.block_index = l.reverse
                        ? uint3{l.grid.x - 1 - x, l.grid.y - 1 - y, l.grid.z - 1 - z}
                        : uint3{x, y, z};
                    if (!run_block()) status = 1;
                }
    } else {
        Dl_info where{};
        uintptr_t offset = l.fault_pc;
        if (dladdr((void*)l.fault_pc, &where) && where.dli_fbase) offset -= (uintptr_t)where.dli_fbase;
        Fiber* f = l.fault_thread >= 0 ? &l.fibers[l.fault_thread] : nullptr;
        fault[0] = l.fault_signal;
        fault[1] = (long long)l.fault_address;
        fault[2] = (long long)offset;
        fault[3] = l.block_index.x; fault[4] = l.block_index.y; fault[5] = l.block_index.z;
        fault[6] = f ? f->thread.x : -1; fault[7] = f ? f->thread.y : -1; fault[8] = f ? f->thread.z : -1;
        bool in_stack = l.fault_address >= (uintptr_t)l.stacks && l.fault_address < (uintptr_t)l.stacks + stack_bytes;
        fault[9] = in_stack;
        status = 2;
    }
    for (int i = 0; i < 4; ++i) sigaction(signals[i], &old[i], nullptr);
    sigaltstack(&old_stack, nullptr);
    launch = outer;
    current = nullptr;
    munmap(l.stacks, stack_bytes);
    free(l.fibers);
    free(l.dynamic_shared);
    return status;
}

// Bytes of static __shared__ memory in this module (all kernels together).
extern "C" __attribute__((visibility("default"))) size_t cudasim_shared_bytes() {
    return (size_t)(__stop_cudasim_shared - __start_cudasim_shared);
}
