"""Mechanical rewrite of a CUDA source (.cu / .cuh) into C++ that cuda_emu.h runs on the CPU.

Line numbers are kept (every replacement stays on its line, and a ``#line`` directive names the original
file), so compiler messages and AddressSanitizer reports point into ``csrc/cuda``.

  K<<<grid, block[, smem[, stream]]>>>(args)  ->  ::cuda_emu::launch("K", K, grid, block[, ...])(args)
  extern __shared__ T name[];                   ->  T* name = ::cuda_emu::dynamic_smem<T>();
  __shared__ T name[dims];                      ->  a reference into the block's shared-memory arena
  __global__ ... kernel(...) {                  ->  ... { ::cuda_emu::kernel_entry(__PRETTY_FUNCTION__);
  __launch_bounds__(n[, m]) <signature> {       ->  <signature> { ... ::cuda_emu::check_launch_bounds(n[, m]);
  X.is_cuda()                                   ->  ::cuda_emu::is_device(X)   (CPU tensors stand in)
  TORCH_LIBRARY_IMPL(ns, CUDA, m) { m.impl(..   ->  TORCH_LIBRARY_FRAGMENT(ns_emu, m) { m.def(..

Constructs the emulator does not implement (atomics, inline PTX, cooperative groups, cub, textures...)
are refused with an error naming the file and line, rather than compiled into something wrong.
"""
from __future__ import annotations

import re

UNSUPPORTED = re.compile(
    r"\b(atomic[A-Z]\w*|asm\s*(volatile\s*)?\(|cooperative_groups|cub::|tex[123]D\w*|__ldg|__shfl\b|__any\b|"
    r"__all\b|__ballot\b|__nanosleep|clock64|__match_\w+|__reduce_\w+_sync|cudaMalloc\w*|cudaMemcpy\w*)")

SHARED = re.compile(r"(?<!extern )__shared__\s+([^;\[\]=]+?)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")
SHARED_SCALAR = re.compile(r"(?<!extern )__shared__\s+([^;\[\]=]+?)\s+(\w+)\s*;")
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([^;\[\]]+?)\s+(\w+)\s*\[\s*\]\s*;")
BOUNDS = re.compile(r"__launch_bounds__\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
GLOBAL = re.compile(r"\b__global__\b")


class RewriteError(Exception):
    pass


def _line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _strip_comments(src: str) -> str:
    """The source with comments and string literals blanked (same length and line breaks)."""
    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', blank, src, flags=re.S)


def check_supported(src: str, path: str) -> None:
    code = _strip_comments(src)
    m = UNSUPPORTED.search(code)
    if m:
        raise RewriteError(f"{path}:{_line_of(code, m.start())}: '{m.group(0).strip()}' is not implemented by "
                           f"tools/cuda_emu (extend cuda_emu.h before using it in a kernel)")
    for m in re.finditer(r"__shared__", code):
        line_start = code.rfind("\n", 0, m.start()) + 1
        line_end = code.find(";", m.start())
        decl = code[line_start:line_end + 1]
        if not (SHARED.search(decl) or SHARED_SCALAR.search(decl) or EXTERN_SHARED.search(decl)):
            raise RewriteError(f"{path}:{_line_of(code, m.start())}: __shared__ declaration not understood by "
                               "rewrite.py (one declaration per statement, no initialiser)")


def _kernel_start(src: str, end: int) -> int:
    """Start of the kernel expression that ends at src[end] (exclusive), e.g. ``name<T, 3>``."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if i > 0 and src[i - 1] == ">":  # template arguments: walk back over balanced <>
        depth = 0
        while i > 0:
            i -= 1
            if src[i] == ">":
                depth += 1
            elif src[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def rewrite_launches(src: str) -> str:
    out, pos = [], 0
    while True:
        lt = src.find("<<<", pos)
        if lt < 0:
            out.append(src[pos:])
            return "".join(out)
        gt = src.find(">>>", lt)
        k0 = _kernel_start(src, lt)
        kernel = src[k0:lt].strip()
        name = " ".join(kernel.split()).replace('"', "'")
        out.append(src[pos:k0])
        cfg = " ".join(src[lt + 3:gt].split())
        # the line breaks of the launch go after it, so the following lines keep their numbers
        out.append(f'::cuda_emu::launch("{name}", {kernel}, {cfg})' + "\n" * src.count("\n", k0, gt))
        pos = gt + 3


def _insert_at_kernel_bodies(src: str) -> str:
    """After the opening brace of every __global__ function: record its signature, check its bounds."""
    out, pos = [], 0
    for m in GLOBAL.finditer(src):
        if m.start() < pos:
            continue
        brace, semi = src.find("{", m.end()), src.find(";", m.end())
        if brace < 0 or 0 <= semi < brace:  # a declaration without a body
            continue
        head = src[m.end():brace]
        bounds = BOUNDS.search(head)
        checks = " ::cuda_emu::kernel_entry(__PRETTY_FUNCTION__);"
        if bounds:
            checks += f" ::cuda_emu::check_launch_bounds({bounds.group(1)});"
            head = head[:bounds.start()] + head[bounds.end():]
        out.append(src[pos:m.start()] + "__global__" + head + "{" + checks)
        pos = brace + 1
    out.append(src[pos:])
    return "".join(out)


def rewrite(src: str, path: str) -> str:
    check_supported(src, path)
    src = rewrite_launches(src)
    src = EXTERN_SHARED.sub(lambda m: f"{m[1]}* {m[2]} = ::cuda_emu::dynamic_smem<{m[1]}>();", src)

    def shared(m: re.Match, dims: str) -> str:
        t, name = m[1], m[2]
        return (f"using {name}_emu_t = {t}{dims}; static const char {name}_emu_tag = 0; "
                f"{name}_emu_t& {name} = ::cuda_emu::shared_var<{name}_emu_t>(&{name}_emu_tag);")

    src = SHARED.sub(lambda m: shared(m, m[3]), src)
    src = SHARED_SCALAR.sub(lambda m: shared(m, ""), src)
    src = _insert_at_kernel_bodies(src)
    if BOUNDS.search(src):
        raise RewriteError(f"{path}:{_line_of(src, BOUNDS.search(src).start())}: __launch_bounds__ outside a "
                           "__global__ definition")
    src = re.sub(r"([\w\]\)]+)\.is_cuda\(\)", r"::cuda_emu::is_device(\1)", src)
    m = re.search(r"TORCH_LIBRARY_IMPL\((\w+),\s*CUDA,\s*(\w+)\)", src)
    if m:
        head, tail = src[:m.start()], src[m.end():]
        tail = re.sub(rf"\b{m[2]}\.impl\(", f"{m[2]}.def(", tail)
        src = head + f"TORCH_LIBRARY_FRAGMENT({m[1]}_emu, {m[2]})" + tail
    return f'#include "cuda_emu_host.h"\n#line 1 "{path}"\n' + src
