// A small JSON library for filters: parse to a tree that keeps object members in order and
// numbers as their literal text, edit it, and serialize it compactly. AssemblyScript strings are
// UTF-16, so `\uXXXX` escapes (surrogate pairs included) map to code units directly.

/** The kind of a `JsonValue`. */
export enum JsonKind {
  Null = 0,
  Bool = 1,
  Number = 2,
  String = 3,
  Array = 4,
  Object = 5,
}

/** One member of a JSON object. */
export class JsonMember {
  constructor(
    public key: string,
    public value: JsonValue,
  ) {}
}

/**
 * A JSON value. Objects keep their members in order, as written (a repeated key stays repeated;
 * `get` returns its last value, as most parsers do); numbers keep their literal text, so
 * serializing does not change them (`1.50` stays `1.50`, big integers stay exact).
 */
export class JsonValue {
  // Allocated on first use: scalars (most values) carry none.
  private _items: Array<JsonValue> | null = null;
  private _members: Array<JsonMember> | null = null;

  /** The array's items (arrays; empty for other kinds). */
  get items(): Array<JsonValue> {
    let items = this._items;
    if (items === null) this._items = items = new Array<JsonValue>();
    return items;
  }
  set items(items: Array<JsonValue>) {
    this._items = items;
  }

  /** The object's members, in order (objects; empty for other kinds). */
  get members(): Array<JsonMember> {
    let members = this._members;
    if (members === null) this._members = members = new Array<JsonMember>();
    return members;
  }
  set members(members: Array<JsonMember>) {
    this._members = members;
  }

  private constructor(
    /** What this value is. */
    public readonly kind: JsonKind,
    private _bool: bool,
    // A string's value, or a number's literal text.
    private _text: string,
  ) {}

  /** `null`. */
  static newNull(): JsonValue {
    return new JsonValue(JsonKind.Null, false, "");
  }
  /** `true` or `false`. */
  static newBool(value: bool): JsonValue {
    return new JsonValue(JsonKind.Bool, value, "");
  }
  /** A number from its JSON literal text (not checked: see `JSON.parse` for untrusted text). */
  static newNumber(literal: string): JsonValue {
    return new JsonValue(JsonKind.Number, false, literal);
  }
  /** An integer. */
  static newInteger(value: i64): JsonValue {
    return new JsonValue(JsonKind.Number, false, value.toString());
  }
  /** A string. */
  static newString(value: string): JsonValue {
    return new JsonValue(JsonKind.String, false, value);
  }
  /** An empty array. */
  static newArray(): JsonValue {
    return new JsonValue(JsonKind.Array, false, "");
  }
  /** An empty object. */
  static newObject(): JsonValue {
    return new JsonValue(JsonKind.Object, false, "");
  }

  isNull(): bool {
    return this.kind == JsonKind.Null;
  }
  isBool(): bool {
    return this.kind == JsonKind.Bool;
  }
  isNumber(): bool {
    return this.kind == JsonKind.Number;
  }
  isString(): bool {
    return this.kind == JsonKind.String;
  }
  isArray(): bool {
    return this.kind == JsonKind.Array;
  }
  isObject(): bool {
    return this.kind == JsonKind.Object;
  }

  /** The kind's JSON name: `null`, `boolean`, `number`, `string`, `array`, `object`. */
  kindName(): string {
    switch (this.kind) {
      case JsonKind.Null:
        return "null";
      case JsonKind.Bool:
        return "boolean";
      case JsonKind.Number:
        return "number";
      case JsonKind.String:
        return "string";
      case JsonKind.Array:
        return "array";
      default:
        return "object";
    }
  }

  /** A boolean's value (false for other kinds). */
  get bool(): bool {
    return this._bool;
  }

  /** A string's value, or `null` for other kinds. */
  asString(): string | null {
    return this.kind == JsonKind.String ? this._text : null;
  }

  /** A number's literal text, or `null` for other kinds. */
  numberLiteral(): string | null {
    return this.kind == JsonKind.Number ? this._text : null;
  }

  /** A number's value as f64 (NaN for other kinds). */
  asF64(): f64 {
    return this.kind == JsonKind.Number ? parseFloat(this._text) : NaN;
  }

  /** Whether this is a number written as an integer (no fraction, no exponent). */
  isInteger(): bool {
    if (this.kind != JsonKind.Number) return false;
    const t = this._text;
    for (let i = 0; i < t.length; i++) {
      const c = t.charCodeAt(i);
      if (c == 0x2e || c == 0x65 || c == 0x45) return false; // . e E
    }
    return true;
  }

  /** Whether the value is an integer literal in 0..=u64::MAX (then read it with `asU64`). */
  isU64(): bool {
    return this.isInteger() && this._text.charCodeAt(0) != 0x2d && fitsU64(this._text);
  }

  /** The value as a u64 (0 unless `isU64()`). */
  asU64(): u64 {
    if (!this.isU64()) return 0;
    let v: u64 = 0;
    const t = this._text;
    for (let i = 0; i < t.length; i++) v = v * 10 + <u64>(t.charCodeAt(i) - 0x30);
    return v;
  }

  /** Whether the value is an integer literal in the i64 range. */
  isI64(): bool {
    if (!this.isInteger()) return false;
    const t = this._text;
    if (t.charCodeAt(0) == 0x2d) {
      const digits = t.substring(1);
      return fitsU64(digits) && (digits.length < 19 || (digits.length == 19 && digits <= "9223372036854775808"));
    }
    return fitsU64(t) && (t.length < 19 || (t.length == 19 && t <= "9223372036854775807"));
  }

  /** The value as an i64 (0 unless `isI64()`). */
  asI64(): i64 {
    if (!this.isI64()) return 0;
    const t = this._text;
    const negative = t.charCodeAt(0) == 0x2d;
    let v: u64 = 0;
    for (let i = negative ? 1 : 0; i < t.length; i++) v = v * 10 + <u64>(t.charCodeAt(i) - 0x30);
    return negative ? -(<i64>v) : <i64>v;
  }

  // --- arrays ---

  /** Appends an item (arrays). Returns `this`. */
  push(item: JsonValue): JsonValue {
    this.items.push(item);
    return this;
  }

  // --- objects ---

  /** The index of the first member `key`, or -1. */
  indexOf(key: string): i32 {
    const members = this.members;
    for (let i = 0; i < members.length; i++) {
      if (unchecked(members[i]).key == key) return i;
    }
    return -1;
  }

  /** Whether the object has a member `key`. */
  has(key: string): bool {
    return this.indexOf(key) >= 0;
  }

  /** The value of member `key` (the last one if the key is repeated), or `null` if absent. */
  get(key: string): JsonValue | null {
    const members = this.members;
    for (let i = members.length - 1; i >= 0; i--) {
      const m = unchecked(members[i]);
      if (m.key == key) return m.value;
    }
    return null;
  }

  /** The members' keys, in order (repeated keys repeated). */
  keys(): Array<string> {
    const out = new Array<string>(this.members.length);
    for (let i = 0; i < this.members.length; i++) unchecked((out[i] = unchecked(this.members[i]).key));
    return out;
  }

  /**
   * Sets member `key`: replaces the value of its first occurrence in place (dropping any later
   * repeats), or appends it. Returns `this`.
   */
  set(key: string, value: JsonValue): JsonValue {
    const i = this.indexOf(key);
    if (i < 0) {
      this.members.push(new JsonMember(key, value));
      return this;
    }
    unchecked(this.members[i]).value = value;
    const members = this.members;
    for (let j = members.length - 1; j > i; j--) {
      if (unchecked(members[j]).key == key) members.splice(j, 1);
    }
    return this;
  }

  /** Removes every member `key`; returns whether there was one. */
  remove(key: string): bool {
    const members = this.members;
    let removed = false;
    for (let j = members.length - 1; j >= 0; j--) {
      if (unchecked(members[j]).key == key) {
        members.splice(j, 1);
        removed = true;
      }
    }
    return removed;
  }

  /**
   * Renames every member `from` to `to`, keeping positions; returns whether there was one. A
   * member already named `to` stays (remove it first if it must go).
   */
  rename(from: string, to: string): bool {
    const members = this.members;
    let renamed = false;
    for (let j = 0; j < members.length; j++) {
      const m = unchecked(members[j]);
      if (m.key == from) {
        m.key = to;
        renamed = true;
      }
    }
    return renamed;
  }

  /** The value as compact JSON text. */
  toString(): string {
    const out = new TextBuffer();
    writeValue(out, this);
    return out.toString();
  }
}

function fitsU64(digits: string): bool {
  if (digits.length == 0) return false;
  return digits.length < 20 || (digits.length == 20 && digits <= "18446744073709551615");
}

/** The outcome of `JSON.parse`: a value, or an error message. */
export class JsonParseResult {
  constructor(
    /** The parsed value, or `null` on error. */
    public readonly value: JsonValue | null,
    /** What is wrong (with the position), or `null` on success. */
    public readonly error: string | null,
  ) {}

  get ok(): bool {
    return this.error === null;
  }
}

// ---------------------------------------------------------------------------------------------
// A growable UTF-16 buffer.

/** Builds a string piece by piece without quadratic copying (garbage-collected like any object). */
export class TextBuffer {
  private buf: ArrayBuffer;
  private len: i32 = 0; // code units

  constructor(capacity: i32 = 64) {
    this.buf = new ArrayBuffer((capacity < 16 ? 16 : capacity) << 1);
  }

  private reserve(extra: i32): void {
    const need = this.len + extra;
    const cap = this.buf.byteLength >> 1;
    if (need <= cap) return;
    let next = cap << 1;
    while (next < need) next <<= 1;
    const grown = new ArrayBuffer(next << 1);
    memory.copy(changetype<usize>(grown), changetype<usize>(this.buf), <usize>this.len << 1);
    this.buf = grown;
  }

  /** Appends one UTF-16 code unit. */
  writeCode(c: u32): void {
    this.reserve(1);
    store<u16>(changetype<usize>(this.buf) + (<usize>this.len << 1), <u16>c);
    this.len++;
  }

  /** Appends a string. */
  write(s: string): void {
    this.writeRange(s, 0, s.length);
  }

  /** Appends `s[start..end)`. */
  writeRange(s: string, start: i32, end: i32): void {
    const n = end - start;
    if (n <= 0) return;
    this.reserve(n);
    memory.copy(
      changetype<usize>(this.buf) + (<usize>this.len << 1),
      changetype<usize>(s) + (<usize>start << 1),
      <usize>n << 1,
    );
    this.len += n;
  }

  /** The number of code units written. */
  get length(): i32 {
    return this.len;
  }

  /** The text so far. The buffer can keep growing afterwards. */
  toString(): string {
    return this.len ? String.UTF16.decodeUnsafe(changetype<usize>(this.buf), <usize>this.len << 1) : "";
  }
}

// ---------------------------------------------------------------------------------------------
// Serializing.

const HEX = "0123456789abcdef";

function writeEscaped(out: TextBuffer, s: string): void {
  out.writeCode(0x22);
  const base = changetype<usize>(s);
  const n = s.length;
  let start = 0;
  for (let i = 0; i < n; i++) {
    const c = <u32>load<u16>(base + (<usize>i << 1));
    if (c >= 0x20 && c != 0x22 && c != 0x5c && (c < 0xd800 || c > 0xdfff)) continue;
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
      // A well-formed surrogate pair is copied as is; a lone surrogate is escaped so the text
      // stays valid once encoded as UTF-8.
      const d = <u32>load<u16>(base + (<usize>(i + 1) << 1));
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
    }
    out.writeRange(s, start, i);
    start = i + 1;
    out.writeCode(0x5c);
    if (c == 0x22) out.writeCode(0x22);
    else if (c == 0x5c) out.writeCode(0x5c);
    else if (c == 0x0a) out.writeCode(0x6e); // n
    else if (c == 0x0d) out.writeCode(0x72); // r
    else if (c == 0x09) out.writeCode(0x74); // t
    else if (c == 0x08) out.writeCode(0x62); // b
    else if (c == 0x0c) out.writeCode(0x66); // f
    else {
      out.writeCode(0x75); // u
      out.writeCode(HEX.charCodeAt((c >> 12) & 15));
      out.writeCode(HEX.charCodeAt((c >> 8) & 15));
      out.writeCode(HEX.charCodeAt((c >> 4) & 15));
      out.writeCode(HEX.charCodeAt(c & 15));
    }
  }
  out.writeRange(s, start, n);
  out.writeCode(0x22);
}

function writeValue(out: TextBuffer, v: JsonValue): void {
  switch (v.kind) {
    case JsonKind.Null:
      out.write("null");
      break;
    case JsonKind.Bool:
      out.write(v.bool ? "true" : "false");
      break;
    case JsonKind.Number:
      out.write(v.numberLiteral()!);
      break;
    case JsonKind.String:
      writeEscaped(out, v.asString()!);
      break;
    case JsonKind.Array: {
      out.writeCode(0x5b);
      const items = v.items;
      for (let i = 0; i < items.length; i++) {
        if (i) out.writeCode(0x2c);
        writeValue(out, unchecked(items[i]));
      }
      out.writeCode(0x5d);
      break;
    }
    default: {
      out.writeCode(0x7b);
      const members = v.members;
      for (let i = 0; i < members.length; i++) {
        if (i) out.writeCode(0x2c);
        const m = unchecked(members[i]);
        writeEscaped(out, m.key);
        out.writeCode(0x3a);
        writeValue(out, m.value);
      }
      out.writeCode(0x7d);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

const MAX_DEPTH = 256;

class Parser {
  pos: i32 = 0;
  error: string | null = null;
  // The text's UTF-16 code units, read with raw loads: the parser holds `text`, so it stays
  // alive, and the collector never moves objects.
  private base: usize;
  private n: i32;

  constructor(private text: string) {
    this.base = changetype<usize>(text);
    this.n = text.length;
  }

  // @ts-ignore: decorator
  @inline at(p: i32): u32 {
    return <u32>load<u16>(this.base + (<usize>p << 1));
  }

  fail(message: string): JsonValue | null {
    if (this.error === null) this.error = message + " at offset " + this.pos.toString();
    return null;
  }

  skipWs(): void {
    const n = this.n;
    let p = this.pos;
    while (p < n) {
      const c = this.at(p);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      p++;
    }
    this.pos = p;
  }

  parseValue(depth: i32): JsonValue | null {
    if (depth > MAX_DEPTH) return this.fail("nesting too deep");
    this.skipWs();
    if (this.pos >= this.n) return this.fail("unexpected end of input");
    const c = this.at(this.pos);
    if (c == 0x7b) return this.parseObject(depth);
    if (c == 0x5b) return this.parseArray(depth);
    if (c == 0x22) {
      const s = this.parseString();
      return s === null ? null : JsonValue.newString(s);
    }
    if (c == 0x2d || (c >= 0x30 && c <= 0x39)) return this.parseNumber();
    if (this.literal("true")) return JsonValue.newBool(true);
    if (this.literal("false")) return JsonValue.newBool(false);
    if (this.literal("null")) return JsonValue.newNull();
    return this.fail("unexpected character");
  }

  literal(word: string): bool {
    const n = word.length;
    if (this.pos + n > this.n) return false;
    for (let i = 0; i < n; i++) {
      if (this.at(this.pos + i) != <u32>word.charCodeAt(i)) return false;
    }
    this.pos += n;
    return true;
  }

  digits(): i32 {
    const start = this.pos;
    let p = start;
    while (p < this.n) {
      const c = this.at(p);
      if (c < 0x30 || c > 0x39) break;
      p++;
    }
    this.pos = p;
    return p - start;
  }

  parseNumber(): JsonValue | null {
    const start = this.pos;
    if (this.at(this.pos) == 0x2d) this.pos++;
    if (this.pos >= this.n) return this.fail("invalid number");
    if (this.at(this.pos) == 0x30) {
      this.pos++;
    } else if (this.digits() == 0) {
      return this.fail("invalid number");
    }
    if (this.pos < this.n && this.at(this.pos) == 0x2e) {
      this.pos++;
      if (this.digits() == 0) return this.fail("invalid number: digits expected after '.'");
    }
    if (this.pos < this.n && (this.at(this.pos) | 0x20) == 0x65) {
      this.pos++;
      if (this.pos < this.n && (this.at(this.pos) == 0x2b || this.at(this.pos) == 0x2d)) this.pos++;
      if (this.digits() == 0) return this.fail("invalid number: digits expected in the exponent");
    }
    return JsonValue.newNumber(this.text.substring(start, this.pos));
  }

  hex4(): i32 {
    if (this.pos + 4 > this.n) return -1;
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const c = <i32>this.at(this.pos + i);
      let d: i32;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
      else return -1;
      v = (v << 4) | d;
    }
    this.pos += 4;
    return v;
  }

  // At a '"'. Returns the unescaped string, or null on error.
  parseString(): string | null {
    const n = this.n;
    this.pos++; // "
    const start = this.pos;
    // Fast path: no escapes.
    let p = start;
    while (p < n) {
      const c = this.at(p);
      if (c == 0x22 || c == 0x5c || c < 0x20) break;
      p++;
    }
    if (p < n && this.at(p) == 0x22) {
      this.pos = p + 1;
      return this.text.substring(start, p);
    }
    const b = new TextBuffer(p - start + 16);
    b.writeRange(this.text, start, p);
    this.pos = p;
    while (true) {
      if (this.pos >= n) {
        this.fail("unterminated string");
        return null;
      }
      // Copy a run of plain characters at once.
      let q = this.pos;
      while (q < n) {
        const c = this.at(q);
        if (c == 0x22 || c == 0x5c || c < 0x20) break;
        q++;
      }
      if (q > this.pos) {
        b.writeRange(this.text, this.pos, q);
        this.pos = q;
        continue;
      }
      const c = this.at(this.pos);
      if (c == 0x22) {
        this.pos++;
        return b.toString();
      }
      if (c < 0x20) {
        this.fail("control character in string");
        return null;
      }
      // A backslash.
      this.pos++;
      if (this.pos >= n) {
        this.fail("unterminated string");
        return null;
      }
      const e = this.at(this.pos);
      this.pos++;
      if (e == 0x22) b.writeCode(0x22);
      else if (e == 0x5c) b.writeCode(0x5c);
      else if (e == 0x2f) b.writeCode(0x2f);
      else if (e == 0x62) b.writeCode(0x08);
      else if (e == 0x66) b.writeCode(0x0c);
      else if (e == 0x6e) b.writeCode(0x0a);
      else if (e == 0x72) b.writeCode(0x0d);
      else if (e == 0x74) b.writeCode(0x09);
      else if (e == 0x75) {
        const u = this.hex4();
        if (u < 0) {
          this.fail("invalid \\u escape");
          return null;
        }
        if (u >= 0xd800 && u <= 0xdbff) {
          // A high surrogate must be followed by an escaped low one.
          if (this.pos + 1 < n && this.at(this.pos) == 0x5c && this.at(this.pos + 1) == 0x75) {
            this.pos += 2;
            const lo = this.hex4();
            if (lo >= 0xdc00 && lo <= 0xdfff) {
              b.writeCode(<u32>u);
              b.writeCode(<u32>lo);
              continue;
            }
          }
          this.fail("lone surrogate in \\u escape");
          return null;
        }
        if (u >= 0xdc00 && u <= 0xdfff) {
          this.fail("lone surrogate in \\u escape");
          return null;
        }
        b.writeCode(<u32>u);
      } else {
        this.pos--;
        this.fail("invalid escape");
        return null;
      }
    }
    return null;
  }

  parseArray(depth: i32): JsonValue | null {
    this.pos++; // [
    const arr = JsonValue.newArray();
    const items = arr.items;
    this.skipWs();
    if (this.pos < this.n && this.at(this.pos) == 0x5d) {
      this.pos++;
      return arr;
    }
    while (true) {
      const v = this.parseValue(depth + 1);
      if (v === null) return null;
      items.push(v);
      this.skipWs();
      if (this.pos >= this.n) return this.fail("unterminated array");
      const c = this.at(this.pos);
      this.pos++;
      if (c == 0x2c) continue;
      if (c == 0x5d) return arr;
      this.pos--;
      return this.fail("expected ',' or ']'");
    }
    return null;
  }

  parseObject(depth: i32): JsonValue | null {
    this.pos++; // {
    const obj = JsonValue.newObject();
    const members = obj.members;
    this.skipWs();
    if (this.pos < this.n && this.at(this.pos) == 0x7d) {
      this.pos++;
      return obj;
    }
    while (true) {
      this.skipWs();
      if (this.pos >= this.n || this.at(this.pos) != 0x22) return this.fail("expected a member name");
      const key = this.parseString();
      if (key === null) return null;
      this.skipWs();
      if (this.pos >= this.n || this.at(this.pos) != 0x3a) return this.fail("expected ':'");
      this.pos++;
      const v = this.parseValue(depth + 1);
      if (v === null) return null;
      members.push(new JsonMember(key, v));
      this.skipWs();
      if (this.pos >= this.n) return this.fail("unterminated object");
      const c = this.at(this.pos);
      this.pos++;
      if (c == 0x2c) continue;
      if (c == 0x7d) return obj;
      this.pos--;
      return this.fail("expected ',' or '}'");
    }
    return null;
  }
}

/** JSON text ↔ `JsonValue`, and string escaping. */
export class JSON {
  /** Parses JSON text (RFC 8259; one value, surrounding whitespace allowed). */
  static parse(text: string): JsonParseResult {
    const p = new Parser(text);
    const v = p.parseValue(0);
    if (v === null) return new JsonParseResult(null, p.error !== null ? p.error : "invalid JSON");
    p.skipWs();
    if (p.pos != text.length) {
      p.fail("trailing characters after the value");
      return new JsonParseResult(null, p.error);
    }
    return new JsonParseResult(v, null);
  }

  /** `s` as a JSON string literal, quotes included (`"a\"b"`). */
  static quote(s: string): string {
    const out = new TextBuffer(s.length + 2);
    writeEscaped(out, s);
    return out.toString();
  }

  /**
   * The value of a JSON string literal (quotes included), or `null` if it is not one (escapes,
   * surrogate pairs and lone-surrogate errors as `parse`).
   */
  static unquote(literal: string): string | null {
    const r = JSON.parse(literal);
    if (!r.ok) return null;
    return r.value!.asString();
  }
}
