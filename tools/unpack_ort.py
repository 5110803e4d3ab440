"""Unpack libonnxruntime.so from a downloaded onnxruntime wheel.

Usage: unpack_ort.py WHEEL_DIR VERSION OUT_DIR

Only the standard library is used, so this runs before any venv exists.
"""
import glob
import os
import sys
import zipfile


def main() -> None:
    wheel_dir, version, out_dir = sys.argv[1:4]
    wheels = glob.glob(os.path.join(wheel_dir, f"onnxruntime-{version}-*.whl"))
    if not wheels:
        sys.exit(f"no onnxruntime {version} wheel in {wheel_dir}")
    member = f"onnxruntime/capi/libonnxruntime.so.{version}"
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(member)
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "libonnxruntime.so")
    tmp = target + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    print(f"unpacked {member} -> {target}")


if __name__ == "__main__":
    main()
