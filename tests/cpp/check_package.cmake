# Configure and build examples/cpp against the installed package (find_package(inna_fused)), then
# run the example; every step must succeed. Called by CTest (see CMakeLists.txt).
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}): ${ARGN}")
  endif()
endfunction()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()
run("configure" ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -G ${GENERATOR}
    "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}" -DTorch_DIR=${Torch_DIR} -DCMAKE_BUILD_TYPE=${BUILD_TYPE})
run("build" ${CMAKE_COMMAND} --build ${BINARY_DIR} --config ${BUILD_TYPE})
find_program(example train_tiny PATHS ${BINARY_DIR} ${BINARY_DIR}/${BUILD_TYPE} NO_DEFAULT_PATH)
run("train_tiny" ${example})
