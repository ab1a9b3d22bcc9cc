// Text ↔ bytes. AssemblyScript strings are UTF-16; HTTP bodies and KV values are bytes, and
// text in them is UTF-8.

/** `text` as UTF-8 bytes. Lone surrogates (which UTF-8 cannot carry) become U+FFFD. */
export function encodeUtf8(text: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(text, false, String.UTF8.ErrorMode.REPLACE));
}

/** Whether `len` bytes at `ptr` are well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
function isUtf8(ptr: usize, len: usize): bool {
  let i: usize = 0;
  while (i < len) {
    const b0 = <u32>load<u8>(ptr + i);
    if (b0 < 0x80) {
      i++;
      continue;
    }
    let need: usize;
    let min: u32;
    let cp: u32;
    if ((b0 & 0xe0) == 0xc0) {
      need = 1;
      min = 0x80;
      cp = b0 & 0x1f;
    } else if ((b0 & 0xf0) == 0xe0) {
      need = 2;
      min = 0x800;
      cp = b0 & 0x0f;
    } else if ((b0 & 0xf8) == 0xf0) {
      need = 3;
      min = 0x10000;
      cp = b0 & 0x07;
    } else {
      return false;
    }
    for (let k: usize = 1; k <= need; k++) {
      if (i + k >= len) return false;
      const b = <u32>load<u8>(ptr + i + k);
      if ((b & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += need + 1;
  }
  return true;
}

/** Whether these bytes are well-formed UTF-8. */
export function isValidUtf8(bytes: Uint8Array): bool {
  return isUtf8(bytes.dataStart, <usize>bytes.byteLength);
}

/** UTF-8 bytes as text, or `null` if they are not well-formed UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | null {
  if (!isUtf8(bytes.dataStart, <usize>bytes.byteLength)) return null;
  return String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.byteLength);
}

/** UTF-8 bytes as text; malformed sequences become U+FFFD. */
export function decodeUtf8Lossy(bytes: Uint8Array): string {
  if (isUtf8(bytes.dataStart, <usize>bytes.byteLength)) {
    return String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.byteLength);
  }
  // Slow path: decode sequence by sequence.
  let out = "";
  let start = 0;
  const n = bytes.byteLength;
  let i = 0;
  while (i < n) {
    const b0 = <u32>bytes[i];
    let need = 0;
    if (b0 < 0x80) {
      i++;
      continue;
    } else if ((b0 & 0xe0) == 0xc0) need = 1;
    else if ((b0 & 0xf0) == 0xe0) need = 2;
    else if ((b0 & 0xf8) == 0xf0) need = 3;
    else need = -1;
    const ok = need > 0 && i + need < n && isUtf8(bytes.dataStart + <usize>i, <usize>(need + 1));
    if (ok) {
      i += need + 1;
      continue;
    }
    if (i > start) out += String.UTF8.decodeUnsafe(bytes.dataStart + <usize>start, <usize>(i - start));
    out += "\uFFFD";
    i++;
    start = i;
  }
  if (n > start) out += String.UTF8.decodeUnsafe(bytes.dataStart + <usize>start, <usize>(n - start));
  return out;
}
