// cuda_emu.h -- runs the project's CUDA C++ kernels on the CPU, for correctness tests (docs/design.md §6).
//
// Model. One fiber (a small x86-64 context switch) per CUDA thread; the blocks of a launch run one after
// another on the calling OS thread. Scheduling points are __syncthreads, __syncwarp and the warp
// collectives (__shfl_*_sync, __ballot/any/all_sync): a fiber posts what it waits for and yields. The
// scheduler runs every runnable fiber once per round in the selected thread order (CUDA_EMU_ORDER), then
// releases what is complete:
//   * a warp collective when every lane named in its mask waits at it with the same mask (shuffles: the
//     same call site; __syncwarp: any site, as on sm_70+), the result computed as PTX shfl.sync does;
//   * a block barrier when every thread of the block waits at the same __syncthreads.
// Everything else is an error: a divergent barrier, a lane outside its own mask, a mask naming a lane that
// has exited / waits at __syncthreads / does not exist, a shuffle reading a lane outside the mask, a
// deadlock. Shared memory is poisoned (0xFF bytes: NaN / -1) before each block; with AddressSanitizer
// (the default build) each __shared__ variable and the dynamic shared memory are surrounded by poisoned
// bytes, and tensor (global) memory is checked by ASan's heap redzones. Launches are checked against the
// limits of an sm_90 GPU. Every error becomes a C++ exception (a Python RuntimeError) naming the kernel,
// with its template arguments, and the block and thread.
//
// What this does not model: speed, the memory model (every store is visible at once), races other than
// those the thread orders expose, bit-exact GPU arithmetic (host libm, no FMA contraction).
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The fiber plumbing is not instrumented: frames that never return (a fiber's entry, its last switch)
// would otherwise leave poisoned stack behind for the next block's fibers.
#define CUDA_EMU_NO_ASAN __attribute__((no_sanitize_address))

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#else
#define CUDA_EMU_ASAN 0
#endif

// ---- language keywords (__shared__ and __launch_bounds__ are rewritten by rewrite.py) -------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __constant__ static

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) double2 { double x, y; };
typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
constexpr int warpSize = 32;

namespace cuda_emu {

// Limits of the emulated GPU (sm_90, H100 / H200).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridYZ = 65535;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr size_t kSmemNoOptin = 48 * 1024;     // static + dynamic shared memory without opt-in
constexpr size_t kSmemOptinMax = 227 * 1024;   // cudaFuncAttributeMaxDynamicSharedMemorySize limit
constexpr size_t kArena = 228 * 1024;          // static __shared__ arena (shared memory of one SM)
constexpr size_t kRedzone = 32;                // poisoned bytes after each __shared__ variable

struct Error : std::runtime_error { using std::runtime_error::runtime_error; };

enum class Wait { kNone, kBlockBarrier, kWarpOp, kDone };
enum class Op { kShflIdx, kShflUp, kShflDown, kShflXor, kSyncWarp, kBallot, kAny, kAll };

// Minimal x86-64 SysV context switch: saves the callee-saved registers and MXCSR / x87 control word on
// the old stack, stores its stack pointer in *from and resumes the context saved at `to`.
extern "C" void cuda_emu_switch(void** from, void* to);
asm(R"(
  .text
  .weak cuda_emu_switch
  .type cuda_emu_switch,@function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
)");

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // ASan bookkeeping across switches
  uint3 tid{0, 0, 0};
  int linear = 0;
  Wait wait = Wait::kNone;
  const void* site = nullptr;  // call site of the barrier / collective it waits at
  unsigned mask = 0;
  Op op = Op::kShflIdx;
  int arg = 0, width = 32;
  uint64_t value = 0, result = 0;
};

struct Block {
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  std::vector<Fiber> fibers;
  std::vector<int> order;  // the thread order of the current round
  int nthreads = 0;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  void* sched_fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  unsigned char* arena = nullptr;  // static __shared__ variables, each followed by a redzone
  std::map<const void*, size_t> shared_off;
  size_t shared_used = 0;
  size_t shared_static = 0;  // bytes of static shared memory (without redzones), as a GPU counts them
  unsigned char* dyn = nullptr;  // extern __shared__
  size_t dyn_bytes = 0, smem_limit = kSmemNoOptin;
  const char* launch_name = "";
  const char* signature = nullptr;  // __PRETTY_FUNCTION__ of the kernel (set by its first thread)
  std::string error;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::mt19937_64 rng;
};

inline thread_local Block* g_block = nullptr;
inline Block& blk() { return *g_block; }
inline Fiber& me() { return *g_block->cur; }

// ---- AddressSanitizer hooks ------------------------------------------------------------------------
// ASan runs in recover mode (-fsanitize-recover=address, halt_on_error=0): its report is copied here
// by the callback and the scheduler turns it into the block's error at the next switch.
inline char g_asan_report[4096];
inline volatile bool g_asan_reported = false;

inline void asan_report_callback(const char* report) {
  if (g_asan_reported) return;
  std::strncpy(g_asan_report, report, sizeof g_asan_report - 1);
  g_asan_reported = true;
}

#if CUDA_EMU_ASAN
struct AsanSetup {
  AsanSetup() { __asan_set_error_report_callback(asan_report_callback); }
};
inline AsanSetup g_asan_setup;
inline void poison(const void* p, size_t n) { ASAN_POISON_MEMORY_REGION(p, n); }
inline void unpoison(const void* p, size_t n) { ASAN_UNPOISON_MEMORY_REGION(p, n); }
#else
inline void poison(const void*, size_t) {}
inline void unpoison(const void*, size_t) {}
#endif

// The lines of an ASan report that say what happened and where (the error, the access, frame #0).
inline std::string asan_summary(const char* report) {
  std::string out, text(report);
  size_t pos = 0;
  int frames = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    const bool keep = line.find("ERROR: AddressSanitizer") != std::string::npos ||
                      line.find(" of size ") != std::string::npos ||
                      line.find("is located") != std::string::npos ||
                      (line.find("    #") == 0 && frames++ < 2);
    if (keep) out += "\n  " + line;
  }
  return out;
}

// ---- switching ------------------------------------------------------------------------------------
CUDA_EMU_NO_ASAN inline void enter_fiber(Block& b, Fiber& f) {
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(&b.sched_fake_stack, f.stack, f.stack_size);
#endif
  cuda_emu_switch(&b.sched_sp, f.sp);
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(b.sched_fake_stack, nullptr, nullptr);
#endif
}

CUDA_EMU_NO_ASAN inline void leave_fiber(bool exiting) {
  Block& b = blk();
  Fiber& f = me();
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, b.sched_stack_bottom, b.sched_stack_size);
#else
  (void)exiting;
#endif
  cuda_emu_switch(&f.sp, b.sched_sp);
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
}

[[noreturn]] CUDA_EMU_NO_ASAN inline void fail_in_kernel(const std::string& msg) {
  Block& b = blk();
  if (b.error.empty()) b.error = msg;
  me().wait = Wait::kDone;
  leave_fiber(true);
  std::abort();  // never resumed
}

// ---- thread coordinates -----------------------------------------------------------------------------
#define threadIdx (::cuda_emu::me().tid)
#define blockIdx (::cuda_emu::blk().bid)
#define blockDim (::cuda_emu::blk().block)
#define gridDim (::cuda_emu::blk().grid)

inline void kernel_entry(const char* signature) {
  if (!blk().signature) blk().signature = signature;
}

inline void check_launch_bounds(long max_threads, long = 0) {
  const Block& b = blk();
  if (b.nthreads > max_threads) {
    fail_in_kernel("launched with " + std::to_string(b.nthreads) + " threads per block > __launch_bounds__(" +
                   std::to_string(max_threads) + ")");
  }
}

// ---- __shared__ -----------------------------------------------------------------------------------
// A static __shared__ variable is placed in the block's arena the first time a thread reaches its
// declaration; the other threads get the same object. `tag` identifies the declaration.
template <typename T>
T& shared_var(const void* tag) {
  Block& b = blk();
  auto it = b.shared_off.find(tag);
  if (it == b.shared_off.end()) {
    const size_t align = std::max<size_t>(alignof(T), 16);
    const size_t off = (b.shared_used + align - 1) / align * align;
    if (off + sizeof(T) + kRedzone > kArena) fail_in_kernel("static __shared__ memory exceeds the emulator's arena");
    b.shared_static += sizeof(T);
    if (b.shared_static + b.dyn_bytes > b.smem_limit)
      fail_in_kernel("static + dynamic shared memory " + std::to_string(b.shared_static + b.dyn_bytes) +
                     " B > the limit of " + std::to_string(b.smem_limit) + " B for this launch" +
                     (b.smem_limit == kSmemNoOptin ? " (48 KiB without cudaFuncSetAttribute opt-in)" : ""));
    unpoison(b.arena + off, sizeof(T));
    b.shared_used = off + sizeof(T) + kRedzone;
    it = b.shared_off.emplace(tag, off).first;
  }
  return *reinterpret_cast<T*>(b.arena + it->second);
}

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(blk().dyn);
}

// ---- __syncthreads and warp collectives ----------------------------------------------------------------
#define CUDA_EMU_SITE ([] { static const char s = 0; return static_cast<const void*>(&s); }())

inline void syncthreads_at(const void* site) {
  Fiber& f = me();
  f.wait = Wait::kBlockBarrier;
  f.site = site;
  leave_fiber(false);
}

inline const char* op_name(Op op) {
  switch (op) {
    case Op::kShflIdx: return "__shfl_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    case Op::kShflDown: return "__shfl_down_sync";
    case Op::kShflXor: return "__shfl_xor_sync";
    case Op::kSyncWarp: return "__syncwarp";
    case Op::kBallot: return "__ballot_sync";
    case Op::kAny: return "__any_sync";
    case Op::kAll: return "__all_sync";
  }
  return "?";
}
inline bool is_shuffle(Op op) { return op <= Op::kShflXor; }

inline std::string hex(unsigned v) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", v);
  return s;
}

inline uint64_t warp_op(Op op, unsigned mask, uint64_t value, int arg, int width, const void* site) {
  Fiber& f = me();
  const int lane = f.linear & 31;
  if (!(mask >> lane & 1u))
    fail_in_kernel(std::string(op_name(op)) + " with mask " + hex(mask) + " called by lane " + std::to_string(lane) +
                   ", which is not in the mask");
  if (is_shuffle(op) && (width <= 0 || width > 32 || (width & (width - 1))))
    fail_in_kernel(std::string(op_name(op)) + ": width " + std::to_string(width) + " is not a power of two <= 32");
  f.wait = Wait::kWarpOp;
  f.site = site;
  f.mask = mask;
  f.op = op;
  f.arg = arg;
  f.width = width;
  f.value = value;
  leave_fiber(false);
  return f.result;
}

template <typename T>
T shfl(Op op, unsigned mask, T v, int arg, int width, const void* site) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_op(op, mask, bits, arg, width, site);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// Source lane of a shuffle, as PTX shfl.sync computes it (c = ((32 - width) << 8) | clamp); a source
// outside the lane's segment gives the lane its own value.
inline int shfl_src(Op op, int lane, int b, int width) {
  const int segmask = (32 - width) & 31;
  const int cval = op == Op::kShflUp ? 0 : 0x1f;
  const int max_lane = (lane & segmask) | (cval & ~segmask);
  const int min_lane = lane & segmask;
  int j = lane;
  bool ok = false;
  switch (op) {
    case Op::kShflUp: j = lane - b; ok = j >= max_lane; break;
    case Op::kShflDown: j = lane + b; ok = j <= max_lane; break;
    case Op::kShflXor: j = lane ^ b; ok = j <= max_lane; break;
    case Op::kShflIdx: j = min_lane | (b & ~segmask & 31); ok = j <= max_lane; break;
    default: break;
  }
  return ok ? j : lane;
}

// ---- scheduler --------------------------------------------------------------------------------------
inline std::string where(const Block& b, const Fiber& f) {
  char s[160];
  std::snprintf(s, sizeof s, "block (%u,%u,%u) thread (%u,%u,%u)", b.bid.x, b.bid.y, b.bid.z, f.tid.x, f.tid.y,
                f.tid.z);
  return s;
}

CUDA_EMU_NO_ASAN inline void fiber_entry() {
  Block* b = g_block;
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
  try {
    b->body(b->body_arg);
  } catch (const std::exception& e) {
    if (b->error.empty()) b->error = std::string("exception in the kernel: ") + e.what();
  }
  b->cur->wait = Wait::kDone;
  leave_fiber(true);
  std::abort();
}

// Initial stack of a fiber: cuda_emu_switch "returns" into fiber_entry.
CUDA_EMU_NO_ASAN inline void* initial_sp(char* stack, size_t size) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  uint64_t* p = reinterpret_cast<uint64_t*>(top);
  *--p = 0;                                         // fake return address of fiber_entry
  *--p = reinterpret_cast<uint64_t>(&fiber_entry);  // popped by ret
  for (int i = 0; i < 6; ++i) *--p = 0;             // rbp rbx r12 r13 r14 r15
  *--p = 0x1F80ull | (0x037Full << 32);             // MXCSR, x87 control word
  return p;
}

// Fiber stacks: one mapping per OS thread, reused by every launch (pages are touched lazily), each
// stack below a PROT_NONE guard page so that an overflow faults instead of corrupting a neighbour.
constexpr size_t kGuard = 4096;
inline size_t stack_bytes() {
  static const size_t kb = [] {
    const char* e = std::getenv("CUDA_EMU_STACK_KB");
    return e ? static_cast<size_t>(std::atoi(e)) : size_t{256};
  }();
  return (kb * 1024 + kGuard - 1) / kGuard * kGuard;
}
inline char* stack_pool() {
  thread_local char* base = nullptr;
  if (!base) {
    const size_t stride = stack_bytes() + kGuard;
    void* m = mmap(nullptr, stride * kMaxThreadsPerBlock, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw Error("cuda_emu: cannot map the fiber stacks");
    base = static_cast<char*>(m);
    for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i) mprotect(base + i * stride, kGuard, PROT_NONE);
  }
  return base;
}

// Thread order of one scheduling round. CUDA_EMU_ORDER: "forward" (default), "reverse", or
// "random[:SEED]" (warps in a random order, each warp's lanes forward or reverse, drawn anew each round).
struct Order {
  enum Kind { kForward, kReverse, kRandom } kind = kForward;
  uint64_t seed = 0;
};
inline Order order_from_env() {
  Order o;
  const char* e = std::getenv("CUDA_EMU_ORDER");
  if (!e || !*e || !std::strcmp(e, "forward")) return o;
  if (!std::strcmp(e, "reverse")) {
    o.kind = Order::kReverse;
    return o;
  }
  if (!std::strncmp(e, "random", 6) && (e[6] == 0 || e[6] == ':')) {
    o.kind = Order::kRandom;
    o.seed = e[6] == ':' ? std::strtoull(e + 7, nullptr, 10) : 0;
    return o;
  }
  throw Error(std::string("cuda_emu: CUDA_EMU_ORDER must be forward, reverse or random[:SEED], got '") + e + "'");
}

inline void next_order(Block& b, const Order& o) {
  const int n = b.nthreads;
  b.order.resize(n);
  if (o.kind != Order::kRandom) {
    for (int k = 0; k < n; ++k) b.order[k] = o.kind == Order::kReverse ? n - 1 - k : k;
    return;
  }
  const int warps = (n + 31) / 32;
  std::vector<int> w(warps);
  for (int i = 0; i < warps; ++i) w[i] = i;
  std::shuffle(w.begin(), w.end(), b.rng);
  int k = 0;
  for (int wi : w) {
    const int w0 = wi * 32, wn = std::min(32, n - w0);
    const bool rev = b.rng() & 1;
    for (int l = 0; l < wn; ++l) b.order[k++] = w0 + (rev ? wn - 1 - l : l);
  }
}

// Checks the collective the lanes of warp w0 wait at and releases it if every lane of its mask has
// arrived. Returns whether one was released; sets b.error on a misuse.
inline bool release_warp(Block& b, int w0) {
  const int wn = std::min(32, b.nthreads - w0);
  bool progress = false;
  for (int l = 0; l < wn; ++l) {
    Fiber& lead = b.fibers[w0 + l];
    if (lead.wait != Wait::kWarpOp) continue;
    const unsigned mask = lead.mask;
    bool complete = true;
    for (int j = 0; j < 32; ++j) {
      if (!(mask >> j & 1u)) continue;
      auto what = [&] { return std::string(op_name(lead.op)) + " with mask " + hex(mask) + " at " + where(b, lead); };
      if (j >= wn) {
        b.error = what() + ": lane " + std::to_string(j) + " of the mask does not exist (block of " +
                  std::to_string(b.nthreads) + " threads)";
        return false;
      }
      Fiber& f = b.fibers[w0 + j];
      switch (f.wait) {
        case Wait::kNone: complete = false; break;  // still running towards it
        case Wait::kDone: b.error = what() + ": lane " + std::to_string(j) + " has exited"; return false;
        case Wait::kBlockBarrier:
          b.error = what() + ": lane " + std::to_string(j) + " (" + where(b, f) + ") waits at __syncthreads";
          return false;
        case Wait::kWarpOp:
          if (f.mask != mask || f.op != lead.op || (is_shuffle(lead.op) && f.site != lead.site)) {
            b.error = what() + ": lane " + std::to_string(j) + " (" + where(b, f) + ") waits at " +
                      op_name(f.op) + " with mask " + hex(f.mask) +
                      (f.op == lead.op && f.mask == mask ? " at another call site" : "");
            return false;
          }
          break;
      }
    }
    if (!complete) continue;
    uint64_t ballot = 0;
    for (int j = 0; j < wn; ++j)
      if (mask >> j & 1u) ballot |= uint64_t(b.fibers[w0 + j].value != 0) << j;
    for (int j = 0; j < wn; ++j) {
      if (!(mask >> j & 1u)) continue;
      Fiber& f = b.fibers[w0 + j];
      if (is_shuffle(f.op)) {
        const int src = shfl_src(f.op, j, f.arg, f.width);
        if (!(mask >> src & 1u)) {
          b.error = std::string(op_name(f.op)) + " at " + where(b, f) + " reads lane " + std::to_string(src) +
                    ", which is not in the mask " + hex(mask) + " (undefined value on a GPU)";
          return false;
        }
        f.result = b.fibers[w0 + src].value;
      } else if (f.op == Op::kBallot) {
        f.result = ballot;
      } else if (f.op == Op::kAny) {
        f.result = ballot != 0;
      } else if (f.op == Op::kAll) {
        f.result = ballot == mask;
      }
    }
    for (int j = 0; j < wn; ++j)
      if (mask >> j & 1u) b.fibers[w0 + j].wait = Wait::kNone;
    progress = true;
  }
  return progress;
}

inline std::string kernel_name(const Block& b);

inline void run_block(Block& b, const Order& order) {
  for (Fiber& f : b.fibers) {
    f.sp = initial_sp(f.stack, f.stack_size);
    f.wait = Wait::kNone;
  }
  for (;;) {
    bool ran = false;
    next_order(b, order);
    for (int k : b.order) {
      Fiber& f = b.fibers[k];
      if (f.wait != Wait::kNone) continue;
      b.cur = &f;
      enter_fiber(b, f);
      ran = true;
      if (g_asan_reported && b.error.empty())
        b.error = "invalid memory access (AddressSanitizer) in " + where(b, f) + ":" + asan_summary(g_asan_report);
      if (!b.error.empty()) return;
    }
    if (ran) continue;
    bool released = false;
    for (int w0 = 0; w0 < b.nthreads; w0 += 32) {
      released |= release_warp(b, w0);
      if (!b.error.empty()) return;
    }
    if (released) continue;
    // Nothing runnable and no collective complete: a block barrier, the end, or a deadlock.
    const Fiber* at = nullptr;
    int done = 0, waiting = 0;
    for (const Fiber& f : b.fibers) {
      if (f.wait == Wait::kDone) {
        ++done;
      } else if (f.wait == Wait::kBlockBarrier) {
        ++waiting;
        if (!at) {
          at = &f;
        } else if (f.site != at->site) {
          b.error = "divergent __syncthreads: " + where(b, *at) + " and " + where(b, f) + " wait at different barriers";
          return;
        }
      } else {
        b.error = "deadlock: " + where(b, f) + " waits at " + op_name(f.op) + " with mask " + hex(f.mask) +
                  ", which can never complete";
        return;
      }
    }
    if (done == b.nthreads) return;
    if (done > 0) {
      b.error = "__syncthreads not reached by every thread of the block (" + std::to_string(done) + " exited, " +
                std::to_string(waiting) + " waiting, e.g. " + where(b, *at) + ")";
      return;
    }
    for (Fiber& f : b.fibers) f.wait = Wait::kNone;
  }
}

// "attend_kernel<scalar_t = float, K = 3, VEC = 4, CL = false>" from the kernel's __PRETTY_FUNCTION__
// (g++: "void ns::attend_kernel(args) [with scalar_t = float; int K = 3; ...]").
inline std::string kernel_name(const Block& b) {
  if (!b.signature) return b.launch_name;
  const std::string sig = b.signature;
  const size_t paren = sig.find('(');
  std::string name = sig.substr(0, paren);
  name = name.substr(name.rfind(' ') == std::string::npos ? 0 : name.rfind(' ') + 1);
  name = name.substr(name.rfind("::") == std::string::npos ? 0 : name.rfind("::") + 2);
  const size_t with = sig.find("[with ");
  if (with == std::string::npos) return name;
  std::string args = sig.substr(with + 6, sig.rfind(']') - with - 6), out;
  size_t pos = 0;
  while (pos < args.size()) {  // "int K = 3; bool CL = false" -> "K = 3, CL = false"
    size_t end = args.find("; ", pos);
    if (end == std::string::npos) end = args.size();
    std::string item = args.substr(pos, end - pos);
    const size_t eq = item.find(" = ");
    const size_t sp = eq == std::string::npos ? std::string::npos : item.rfind(' ', eq - 1);
    if (sp != std::string::npos) item = item.substr(sp + 1);
    out += (out.empty() ? "" : ", ") + item;
    pos = end + 2;
  }
  return name + "<" + out + ">";
}

inline std::map<const void*, size_t>& smem_optin() {
  static std::map<const void*, size_t> m;
  return m;
}

// CUDA_EMU_LAUNCH_LOG=FILE: appends "signature<TAB>threads per block<TAB>dynamic shared bytes" once per
// distinct launch configuration (tools/cuda_resources.py computes occupancy at these block sizes).
inline void log_launch(const char* signature, unsigned long long threads, size_t smem) {
  static const char* path = std::getenv("CUDA_EMU_LAUNCH_LOG");
  static std::map<std::string, bool> seen;
  if (!path || !signature) return;
  std::string line = std::string(signature) + "\t" + std::to_string(threads) + "\t" + std::to_string(smem) + "\n";
  if (!seen.emplace(line, true).second) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fputs(line.c_str(), f);
    std::fclose(f);
  }
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  const char* name;

  template <typename... A>
  void operator()(A&&... a) const {
    std::tuple<P...> args(std::forward<A>(a)...);
    run(args);
  }

  void run(std::tuple<P...>& args) const {
    const unsigned long long nt = 1ull * block.x * block.y * block.z;
    auto bad = [&](const std::string& m) { throw Error(std::string("cuda_emu: launch of ") + name + ": " + m); };
    if (nt == 0 || nt > kMaxThreadsPerBlock || block.z > kMaxBlockZ)
      bad("invalid block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
          std::to_string(block.z) + "): " + std::to_string(nt) + " threads (at most 1024, block.z <= 64)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ || grid.x > kMaxGridX)
      bad("invalid grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) +
          ") (each > 0, y and z <= 65535)");
    const auto opt = smem_optin().find(reinterpret_cast<const void*>(kernel));
    const size_t limit = opt == smem_optin().end() ? kSmemNoOptin : std::max(kSmemNoOptin, opt->second);
    if (smem > limit)
      bad("dynamic shared memory " + std::to_string(smem) + " B > " + std::to_string(limit) + " B" +
          (limit == kSmemNoOptin ? " (48 KiB without cudaFuncSetAttribute opt-in)" : ""));
    const Order order = order_from_env();

    Block b;
    b.grid = grid;
    b.block = block;
    b.nthreads = static_cast<int>(nt);
    b.launch_name = name;
    b.smem_limit = limit;
    b.fibers.resize(nt);
    // The same launch (kernel, configuration, seed) gets the same orders: a failure repeats.
    b.rng.seed(order.seed * 0x9E3779B97F4A7C15ull ^ std::hash<std::string>{}(name) ^
               (uint64_t(grid.x) << 40 ^ uint64_t(grid.y) << 20 ^ grid.z ^ nt << 52 ^ smem << 8));
    std::vector<unsigned char> arena(kArena), dyn(smem + kRedzone + 16);
    b.arena = arena.data();
    std::memset(b.arena, 0xFF, kArena);  // the bytes above the high-water mark stay poisoned
    poison(b.arena, kArena);
    size_t hwm = 0;  // bytes of the arena ever handed out in this launch
    b.dyn = dyn.data() + (16 - reinterpret_cast<uintptr_t>(dyn.data()) % 16) % 16;
    b.dyn_bytes = smem;
    char* stacks = stack_pool();
    const size_t stride = stack_bytes() + kGuard;
    for (unsigned i = 0; i < nt; ++i) {
      Fiber& f = b.fibers[i];
      f.stack = stacks + i * stride + kGuard;
      f.stack_size = stack_bytes();
      f.linear = static_cast<int>(i);
      f.tid = {i % block.x, (i / block.x) % block.y, static_cast<unsigned>(i / (1ull * block.x * block.y))};
    }
    struct Ctx {
      void (*k)(P...);
      std::tuple<P...>* args;
    };
    Ctx c{kernel, &args};
    b.body = [](void* p) {
      Ctx* ctx = static_cast<Ctx*>(p);
      std::apply(ctx->k, *ctx->args);
    };
    b.body_arg = &c;
    Block* saved = g_block;
    g_block = &b;
    g_asan_reported = false;
    std::string error;
    for (unsigned z = 0; z < grid.z && error.empty(); ++z)
      for (unsigned y = 0; y < grid.y && error.empty(); ++y)
        for (unsigned x = 0; x < grid.x && error.empty(); ++x) {
          b.bid = {x, y, z};
          // Poison: 0xFF bytes everywhere, and (ASan) every byte not yet given to a __shared__ variable.
          unpoison(b.arena, hwm);
          std::memset(b.arena, 0xFF, hwm);
          poison(b.arena, hwm);
          b.shared_off.clear();
          b.shared_used = b.shared_static = 0;
          unpoison(dyn.data(), dyn.size());
          std::memset(dyn.data(), 0xFF, dyn.size());
          poison(b.dyn + smem, kRedzone);
          run_block(b, order);
          hwm = std::max(hwm, b.shared_used);
          if (!b.error.empty()) error = "cuda_emu: kernel " + kernel_name(b) + " (launched as " + name + "): " + b.error;
        }
    g_block = saved;
    if (error.empty()) log_launch(b.signature, nt, smem);
    unpoison(arena.data(), arena.size());
    unpoison(dyn.data(), dyn.size());
    if (!error.empty()) {
      // Fibers stopped mid-kernel leave stale stack poison behind: clear it for the next launch.
      for (unsigned i = 0; i < nt; ++i) unpoison(b.fibers[i].stack, b.fibers[i].stack_size);
      g_asan_reported = false;
      throw Error(error);
    }
  }
};

template <typename... P>
Launch<P...> launch(const char* name, void (*k)(P...), dim3 grid, dim3 block, size_t smem = 0,
                    cudaStream_t = nullptr) {
  return Launch<P...>{k, grid, block, smem, name};
}

}  // namespace cuda_emu

// ---- runtime API used by kernels' host code -------------------------------------------------------------
template <typename... P>
inline cudaError_t cudaFuncSetAttribute(void (*k)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return 1;
  if (value < 0 || static_cast<size_t>(value) > cuda_emu::kSmemOptinMax)
    throw cuda_emu::Error("cuda_emu: cudaFuncSetAttribute: " + std::to_string(value) + " B of dynamic shared memory > " +
                          std::to_string(cuda_emu::kSmemOptinMax) + " B (sm_90 opt-in limit)");
  cuda_emu::smem_optin()[reinterpret_cast<const void*>(k)] = static_cast<size_t>(value);
  return cudaSuccess;
}

// ---- device intrinsics --------------------------------------------------------------------------------
namespace cuda_emu {
inline int width_or_32() { return 32; }
inline int width_or_32(int w) { return w; }
}  // namespace cuda_emu
#define CUDA_EMU_W(...) (::cuda_emu::width_or_32(__VA_ARGS__))
#define __syncthreads() ::cuda_emu::syncthreads_at(CUDA_EMU_SITE)
#define __shfl_sync(m, v, l, ...) ::cuda_emu::shfl(::cuda_emu::Op::kShflIdx, m, v, l, CUDA_EMU_W(__VA_ARGS__), CUDA_EMU_SITE)
#define __shfl_up_sync(m, v, d, ...) ::cuda_emu::shfl(::cuda_emu::Op::kShflUp, m, v, d, CUDA_EMU_W(__VA_ARGS__), CUDA_EMU_SITE)
#define __shfl_down_sync(m, v, d, ...) ::cuda_emu::shfl(::cuda_emu::Op::kShflDown, m, v, d, CUDA_EMU_W(__VA_ARGS__), CUDA_EMU_SITE)
#define __shfl_xor_sync(m, v, x, ...) ::cuda_emu::shfl(::cuda_emu::Op::kShflXor, m, v, x, CUDA_EMU_W(__VA_ARGS__), CUDA_EMU_SITE)
#define __syncwarp(...) ((void)::cuda_emu::warp_op(::cuda_emu::Op::kSyncWarp, CUDA_EMU_MASK(__VA_ARGS__), 0, 0, 32, CUDA_EMU_SITE))
#define __ballot_sync(m, p) (static_cast<unsigned>(::cuda_emu::warp_op(::cuda_emu::Op::kBallot, m, (p) != 0, 0, 32, CUDA_EMU_SITE)))
#define __any_sync(m, p) (static_cast<int>(::cuda_emu::warp_op(::cuda_emu::Op::kAny, m, (p) != 0, 0, 32, CUDA_EMU_SITE)))
#define __all_sync(m, p) (static_cast<int>(::cuda_emu::warp_op(::cuda_emu::Op::kAll, m, (p) != 0, 0, 32, CUDA_EMU_SITE)))
namespace cuda_emu {
inline unsigned mask_or_full() { return 0xffffffffu; }
inline unsigned mask_or_full(unsigned m) { return m; }
}  // namespace cuda_emu
#define CUDA_EMU_MASK(...) (::cuda_emu::mask_or_full(__VA_ARGS__))
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return std::exp(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline void __threadfence() {}
inline void __threadfence_block() {}
using std::exp;
using std::fmaf;
