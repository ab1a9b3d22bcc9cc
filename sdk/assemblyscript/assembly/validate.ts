// Checks filters commonly need when validating their config.

/** Whether `name` is a valid HTTP field name (an RFC 9110 token). */
export function isHeaderName(name: string): bool {
  if (name.length == 0) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const alnum = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
    // ! # $ % & ' * + - . ^ _ ` | ~
    const special =
      c == 0x21 || c == 0x23 || c == 0x24 || c == 0x25 || c == 0x26 || c == 0x27 || c == 0x2a || c == 0x2b ||
      c == 0x2d || c == 0x2e || c == 0x5e || c == 0x5f || c == 0x60 || c == 0x7c || c == 0x7e;
    if (!alnum && !special) return false;
  }
  return true;
}

// Headers that frame a message or belong to one connection (lowercase): only the proxy sets them.
const FRAMING_HEADERS: StaticArray<string> = [
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
];

/**
 * Whether `name` (any case) is a framing or hop-by-hop header: `content-length`,
 * `transfer-encoding`, `connection`, `keep-alive`, `proxy-connection`, `te`, `trailer` or
 * `upgrade`. Only the proxy sets these, because a wrong `Content-Length` would desynchronize a
 * keep-alive connection: `Headers.set`, `append` and `remove` answer `invalid` for them (on the
 * request and the response, in every phase) and a `LocalResponse` loses them. Use it to refuse a
 * config that names one for writing.
 */
export function isFramingHeader(name: string): bool {
  for (let i = 0; i < FRAMING_HEADERS.length; i++) {
    const f = unchecked(FRAMING_HEADERS[i]);
    if (f.length != name.length) continue;
    let same = true;
    for (let j = 0; j < f.length; j++) {
      let c = name.charCodeAt(j);
      if (c >= 0x41 && c <= 0x5a) c += 0x20; // ASCII only: no other letter folds into these names
      if (c != f.charCodeAt(j)) {
        same = false;
        break;
      }
    }
    if (same) return true;
  }
  return false;
}

/** `s` quoted and escaped as Rust's `{:?}` shows a string (for messages shared with Rust filters). */
export function debugQuote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c == 0x0a) out += "\\n";
    else if (c == 0x0d) out += "\\r";
    else if (c == 0x09) out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += "\\u{" + (<u32>c).toString(16) + "}";
    else out += String.fromCharCode(c);
  }
  return out + '"';
}
