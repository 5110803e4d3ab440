"""Unpack the shared libraries of an onnxruntime-gpu wheel for docker/Dockerfile.cuda.

Usage: unpack_ort_gpu.py WHEEL_DIR VERSION OUT_DIR

Writes libonnxruntime.so and the provider libraries it loads from its own folder
(libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so, ...). Standard
library only.
"""
import glob
import os
import sys
import zipfile


def main() -> None:
    wheel_dir, version, out_dir = sys.argv[1:4]
    wheels = glob.glob(os.path.join(wheel_dir, f"onnxruntime_gpu-{version}-*.whl"))
    if not wheels:
        sys.exit(f"no onnxruntime-gpu {version} wheel in {wheel_dir}")
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as zf:
        names = [n for n in zf.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in n]
        core = f"onnxruntime/capi/libonnxruntime.so.{version}"
        if core not in names:
            sys.exit(f"{core} is not in {wheels[0]}")
        for name in names:
            base = os.path.basename(name)
            target = "libonnxruntime.so" if name == core else base
            with open(os.path.join(out_dir, target), "wb") as f:
                f.write(zf.read(name))
            print(f"unpacked {name} -> {os.path.join(out_dir, target)}")


if __name__ == "__main__":
    main()
