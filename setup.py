"""Build inna_fused and its native op.

    pip install --no-build-isolation .        (after torch; see README)

Environment switches:
    INNA_FUSED_CUDA=1|0     force the CUDA sources on/off (default: on when a CUDA toolkit is found)
    INNA_FUSED_SIMD=avx512|avx2|baseline   CPU SIMD level (default: the best this machine has)
    TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "8.0;9.0" (needed when building without a GPU)
    INNA_FUSED_NVCC_VERBOSE=1   ptxas register/spill report per kernel (bench/gpu_check.sh)
    INNA_FUSED_BUILD_TESTING=1  also build inna_fused._C_testing, the test-only ops (csrc/testing/:
                                the CUDA launch emulation); tools/env.sh sets it
"""
import glob
import os

import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _set_cuda_home():
    """Point CUDA_HOME at a toolkit root that has lib64/libcudart*. torch guesses it from where
    `nvcc` sits, which is wrong when `nvcc` on PATH is a wrapper script outside the toolkit."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in candidates:
        if glob.glob(os.path.join(root, "lib64", "libcudart*")) and os.path.exists(
                os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            return


_set_cuda_home()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)


SOURCE_PATTERNS = {
    # inna_fused._C. CMakeLists.txt globs the same patterns, minus csrc/module.cpp (the Python
    # module init of inna_fused._C, which libtorch programs do not need).
    "cpp": ["csrc/*.cpp", "csrc/cpu/*.cpp"],
    "cu": ["csrc/cuda/*.cu"],
    # inna_fused._C_testing: the test-only ops, with the op's validation they call (inna_op.cpp
    # registers nothing, so both extensions may hold it). CMake's test-only target
    # inna_fused_testing compiles csrc/testing/*.cpp minus module.cpp and links the library.
    "testing": ["csrc/testing/*.cpp", "csrc/inna_op.cpp"],
}


def source_list(kind):
    """The native sources of one kind (SOURCE_PATTERNS), relative (setuptools wants that)."""
    return sorted(f for pattern in SOURCE_PATTERNS[kind] for f in glob.glob(pattern, root_dir=ROOT))


def want_cuda():
    env = os.environ.get("INNA_FUSED_CUDA")
    if env is not None:
        return env == "1"
    return cpp_extension.CUDA_HOME is not None and bool(source_list("cu"))


AVX512_FEATURES = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"}
SIMD_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "baseline": [],
}


def simd_flags():
    level = os.environ.get("INNA_FUSED_SIMD")
    if level is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpu = set(f.read().split())
            level = ("avx512" if AVX512_FEATURES <= cpu
                     else "avx2" if {"avx2", "fma", "f16c"} <= cpu else "baseline")
        except OSError:
            level = "baseline"
    if level not in SIMD_FLAGS:
        raise ValueError(f"INNA_FUSED_SIMD must be one of {sorted(SIMD_FLAGS)}, got {level!r}")
    return SIMD_FLAGS[level]


def want_testing():
    return os.environ.get("INNA_FUSED_BUILD_TESTING") == "1"


def extensions():
    # -fopenmp: at::parallel_for is header code that runs serially without it. The libgomp it links
    # is the one libtorch already loaded (same soname), so both share one thread pool.
    # -ffp-contract=off (and nvcc's --fmad=false): csrc/inna_math.h writes every fused multiply-add
    # explicitly; contracting anything else would let a lane's result depend on how the loop
    # around it was compiled (full vs partial SIMD blocks, i.e. on the thread split).
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp", *simd_flags()]
    link = ["-fopenmp"]
    sources = source_list("cpp")
    # The emulation runs the CUDA functor on the CPU; the tests compare it bit for bit with the CPU
    # kernel, so it gets the same flags (-ffp-contract=off above all).
    testing = ([cpp_extension.CppExtension("inna_fused._C_testing", source_list("testing"),
                                           extra_compile_args={"cxx": cxx},
                                           extra_link_args=link)]
               if want_testing() else [])
    if want_cuda():
        cxx.append("-DINNA_WITH_CUDA")
        # No --use_fast_math: flush-to-zero and approximate division would break agreement with
        # the reference (IEEE float32/float64 arithmetic, denormals kept).
        nvcc = ["-O3", "-lineinfo", "--fmad=false"]
        if os.environ.get("INNA_FUSED_NVCC_VERBOSE") == "1":
            nvcc += ["-Xptxas", "-v"]  # registers, spills and stack per kernel in the build log
        return [cpp_extension.CUDAExtension(
            "inna_fused._C", sources + source_list("cu"),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link), *testing]
    return [cpp_extension.CppExtension("inna_fused._C", sources, extra_compile_args={"cxx": cxx},
                                       extra_link_args=link), *testing]


setup(
    packages=find_packages(include=["inna_fused", "inna_fused.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
