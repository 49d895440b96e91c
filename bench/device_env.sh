# Sourced on the GPU machine before running carried binaries: finds CUDA's libraries (cuBLAS/cuBLASLt, NCCL)
# wherever that machine keeps them and puts the carried libraries first. usage: source bench/device_env.sh DIR
carried=$1
cuda_libs=""
for name in libcublasLt.so.13 libnccl.so.2 libcudart.so.13; do
  found=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$name*" 2>/dev/null | head -1)
  if [ -z "$found" ]; then
    found=$(python3 -c "import nvidia,glob,os;print((glob.glob(os.path.join(list(nvidia.__path__)[0],'**','$name*'),recursive=True)+[''])[0])" 2>/dev/null)
  fi
  [ -n "$found" ] && cuda_libs="$cuda_libs:$(dirname "$found")"
done
export LD_LIBRARY_PATH="$carried/lib$cuda_libs:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
