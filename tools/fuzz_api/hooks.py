"""Schemathesis hooks for `make fuzz-api`: what an image is.

The OpenAPI document says that upload bodies are image files (`image/png`, ...), that
multipart `image` parts carry one, and that base64 image fields have the custom format
`image-base64`. JSON Schema cannot say "decodes to a valid image", so without these hooks a
generator draws arbitrary bytes for them and every such request is (rightly) answered 400 or
415. These strategies draw real image files: PNGs of random size and colour made here, and
the smallest well-formed JPEG, GIF and WebP files that schemathesis ships. Negative
generation still mutates these fields into non-images (which must be rejected).
"""

import base64
import struct
import zlib

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.file_samples import FILE_SAMPLES


def _png(width: int, height: int, rgb: tuple[int, int, int], noise: bytes) -> bytes:
    """An 8-bit RGB PNG: one colour, with `noise` XORed over the first pixels."""
    row = bytes(rgb) * width
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        raw.extend(row)
    start = 1
    for i, b in enumerate(noise[: len(raw) - 1]):
        if (start + i) % (3 * width + 1) != 0:  # keep the filter bytes
            raw[start + i] ^= b

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


PNGS = st.builds(
    _png,
    st.integers(1, 96),
    st.integers(1, 72),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    st.binary(max_size=64),
)
SAMPLES = {kind: FILE_SAMPLES[name] for kind, name in [("jpeg", "jpg"), ("gif", "gif"), ("webp", "webp")]}
IMAGES = st.one_of(PNGS, st.sampled_from(list(SAMPLES.values())))

schemathesis.openapi.media_type("image/png", PNGS)
for kind, sample in SAMPLES.items():
    schemathesis.openapi.media_type(f"image/{kind}", st.just(sample))


def _base64(data: bytes, data_url: bool) -> str:
    text = base64.b64encode(data).decode("ascii")
    return f"data:image/png;base64,{text}" if data_url else text


schemathesis.openapi.format("image-base64", st.builds(_base64, IMAGES, st.booleans()))
