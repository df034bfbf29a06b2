"""Compile every Triton kernel ahead of time for a GPU target, on a machine without a GPU.

The interpreter runs the kernels' maths but not the GPU compiler: this lowers each kernel through Triton's
NVIDIA backend down to a cubin (ptxas included) for the given compute capability, with the tile sizes the
launchers pick, and fails on any compile error. It prints the registers and spill stack of each cubin when the
bundled ``cuobjdump`` is there. Run without ``TRITON_INTERPRET`` (see test_triton.py).

Usage: python tests/triton_compile_check.py [--arch 90]
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fairseq_hgrn2.ops.triton import chunk, scan, states  # noqa: E402

F32, IN = "*fp32", "*bf16"  # state buffers, model tensors
I32 = "i32"


def compile_kernel(kernel, types, constants, arch, num_warps):
    """Compile ``kernel`` (a JITFunction or an Autotuner) for ``sm_<arch>``; returns the compiled kernel."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    signature = {name: "constexpr" if name in constants else types[name] for name in fn.arg_names}
    source = ASTSource(fn, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def resource_usage(compiled) -> str:
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not cuobjdump.exists():
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(compiled.asm["cubin"])
        handle.flush()
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", handle.name], capture_output=True, text=True)
    return " ".join(part for line in out.stdout.splitlines() if "REG:" in line for part in line.split()[:2])


def kernels(e: int):
    """(name, kernel, argument types, constexprs, num_warps) for every kernel a head width ``e`` launches."""
    H = 4
    seg = dict(H=H, K=e, V=e, SEG=states.SEGMENT, BK=max(16, triton.next_power_of_2(e)),
               BV=max(16, min(64, triton.next_power_of_2(e))))
    yield ("segment_states", states._segment_states_kernel,
           dict(k=IN, v=IN, g=IN, h0=F32, states=F32, ht=F32, T=I32, NS=I32), dict(seg, HAS_H0=True), 8)
    yield ("segment_state_grads", states._segment_state_grads_kernel,
           dict(q=IN, g=IN, do=IN, dht=F32, dstates=F32, dh0=F32, T=I32, NS=I32),
           dict(seg, HAS_DHT=True, HAS_H0=True), 8)
    if e >= 16:
        BK, BV = chunk.chunk_tiles(e, e)
        consts = dict(H=H, K=e, V=e, C=chunk.CHUNK, SEG=states.SEGMENT, BK=BK, BV=BV)
        for config in chunk._CONFIGS:
            yield (f"chunk_fwd[w{config.num_warps}]", chunk._chunk_fwd_kernel,
                   dict(q=IN, k=IN, v=IN, g=IN, states=F32, o=IN, T=I32, NS=I32), consts, config.num_warps)
            yield (f"chunk_bwd[w{config.num_warps}]", chunk._chunk_bwd_kernel,
                   dict(q=IN, k=IN, v=IN, g=IN, states=F32, do=IN, dstates=F32, dq=F32, dk=F32, dv=IN,
                        T=I32, BH=I32, NS=I32), consts, config.num_warps)
    NH, BK, BV, num_warps = scan.scan_tiles(e, e, 64)
    consts = dict(H=H, K=e, V=e, NH=NH, BK=BK, BV=BV)
    yield ("scan_fwd", scan._scan_fwd_kernel,
           dict(q=IN, k=IN, v=IN, g=IN, states=F32, o=IN, ht=F32, T=I32, BH=I32, NS=I32, SEG=I32),
           dict(consts, STORE_HT=True), num_warps)
    yield ("scan_bwd", scan._scan_bwd_kernel,
           dict(q=IN, k=IN, v=IN, g=IN, states=F32, do=IN, dstates=F32, dq=F32, dk=F32, dv=IN,
                T=I32, BH=I32, NS=I32, SEG=I32), consts, num_warps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    parser.add_argument("--e", default="1,2,8,16,32,128", help="head widths to compile for")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    for e in (int(x) for x in args.e.split(",")):
        for name, kernel, types, constants, num_warps in kernels(e):
            compiled = compile_kernel(kernel, types, constants, args.arch, num_warps)
            print(f"sm_{args.arch} e={e:<3} {name:<22} {resource_usage(compiled)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
