# inna_fused_keep_registration(<target> [BUILD_INTERFACE]) — make every program that links
# <target> load libinna_fused.so, even when it calls the op only through the dispatcher.
#
# The op and its kernels register themselves from static initialisers (TORCH_LIBRARY,
# TORCH_LIBRARY_IMPL) when the library is loaded. A linker running with --as-needed (the default
# of several distributions, and switched on by torch's own link flags for everything that follows
# them on the command line) drops a shared library none of whose symbols the program references,
# and the op would then be missing. The library is therefore passed between --no-as-needed guards,
# as torch does for libtorch_cpu; --push-state/--pop-state restore the caller's setting.
# BUILD_INTERFACE: the target is built by this project (the flag is not exported; the installed
# package config adds its own).
function(inna_fused_keep_registration target)
  if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
    return()
  endif()
  set(flag "-Wl,--push-state,--no-as-needed,$<TARGET_FILE:${target}>,--pop-state")
  if(ARGN STREQUAL "BUILD_INTERFACE")
    set(flag "$<BUILD_INTERFACE:${flag}>")
  endif()
  set_property(TARGET ${target} APPEND PROPERTY INTERFACE_LINK_LIBRARIES "${flag}")
endfunction()
