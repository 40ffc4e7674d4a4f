#!/usr/bin/env bash
# Sourced by the scripts that compile llama.cpp: prints the CMake flags for this CPU. AVX-512 parts only where the CPU
# has them (an AVX2-only EPYC dies on them with SIGILL); AMX always off (llama.cpp's AMX kernel segfaults on our CPUs).
llama_cpp_cmake_flags() {
  local has
  has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}
