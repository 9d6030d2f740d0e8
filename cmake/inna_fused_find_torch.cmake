# inna_fused_find_torch(<with_cuda> [REQUIRED]) — find_package(Torch) for a build with or without
# CUDA code, shared by CMakeLists.txt and the installed inna_fusedConfig.cmake.
#
# A CUDA build of torch (the default pip wheels) makes find_package(Torch) look for a complete CUDA
# toolkit (nvcc, cuBLAS, nvrtc ...) even when the consumer compiles no CUDA code, and fails without
# one. torch's public/cuda.cmake returns at once when a `torch::cudart` target already exists (its
# "poor man's include guard"), so a CPU-only consumer defines an empty one first. libtorch_cuda and
# the CUDA runtime are still linked and are found at run time through torch's own RUNPATH.
# Nothing is done when the project already found Torch.
macro(inna_fused_find_torch with_cuda)
  if(NOT TARGET torch)
    if(NOT ${with_cuda} AND NOT TARGET torch::cudart)
      add_library(torch::cudart INTERFACE IMPORTED)
    endif()
    find_package(Torch ${ARGN})
  endif()
endmacro()
