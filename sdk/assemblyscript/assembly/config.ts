// Reading a filter's JSON config strictly: typed getters with defaults, the first error kept,
// unknown fields rejected.

import { Header } from "./action";
import { JSON, JsonValue } from "./json";

/**
 * Reads a filter's config object field by field.
 *
 * Every getter marks its field as known and returns the default (or an empty value) when the
 * field is absent or wrong; the first problem is kept in `error`. `finish()` then rejects fields
 * no getter asked for (a mistyped key is an error, not a silently ignored setting) and returns
 * the error, if any.
 *
 * ```ts
 * configure(config: string): ConfigResult {
 *   const c = ConfigReader.parse(config);
 *   this.header = c.string("header", "x-api-key");
 *   const keys = c.stringMap("keys");
 *   if (c.ok && keys.length == 0) c.fail("keys: at least one key is required");
 *   const error = c.finish();
 *   if (error !== null) return ConfigResult.reject(error);
 *   return ConfigResult.accept(Phases.REQUEST_HEADERS);
 * }
 * ```
 */
export class ConfigReader {
  /** The first problem found, or `null`. */
  error: string | null = null;
  private known: Array<string> = [];

  private constructor(
    /** The config object (empty if the config was not an object). */
    public readonly root: JsonValue,
  ) {}

  /**
   * Parses the config text. Blank text reads as `{}`, so filters whose fields all have defaults
   * work without a config. Text that is not a JSON object is an error.
   */
  static parse(config: string): ConfigReader {
    if (config.trim().length == 0) return new ConfigReader(JsonValue.newObject());
    const parsed = JSON.parse(config);
    if (!parsed.ok) {
      const r = new ConfigReader(JsonValue.newObject());
      r.fail("config: invalid JSON: " + parsed.error!);
      return r;
    }
    const v = parsed.value!;
    if (!v.isObject()) {
      const r = new ConfigReader(JsonValue.newObject());
      r.fail("config: expected a JSON object, got " + v.kindName());
      return r;
    }
    return new ConfigReader(v);
  }

  /** Whether no problem was found so far. */
  get ok(): bool {
    return this.error === null;
  }

  /** Records a problem (only the first one is kept). */
  fail(message: string): void {
    if (this.error === null) this.error = message;
  }

  private mark(key: string): JsonValue | null {
    if (!this.known.includes(key)) this.known.push(key);
    return this.root.get(key);
  }

  /** Whether the field is present (and not `null`). Marks it known. */
  has(key: string): bool {
    const v = this.mark(key);
    return v !== null && !v.isNull();
  }

  /** The raw value of a field (any JSON), or `null` if absent. Marks it known. */
  value(key: string): JsonValue | null {
    return this.mark(key);
  }

  /** A string field, or `fallback` if absent. */
  string(key: string, fallback: string): string {
    const v = this.mark(key);
    if (v === null) return fallback;
    const s = v.asString();
    if (s === null) {
      this.fail("config: " + key + ": expected a string, got " + v.kindName());
      return fallback;
    }
    return s;
  }

  /** A required string field ("" and an error if absent). */
  requiredString(key: string): string {
    if (this.root.get(key) === null) {
      this.mark(key);
      this.fail("config: missing field `" + key + "`");
      return "";
    }
    return this.string(key, "");
  }

  /** A boolean field, or `fallback` if absent. */
  bool(key: string, fallback: bool): bool {
    const v = this.mark(key);
    if (v === null) return fallback;
    if (!v.isBool()) {
      this.fail("config: " + key + ": expected a boolean, got " + v.kindName());
      return fallback;
    }
    return v.bool;
  }

  /** An unsigned integer field in `min..=max`, or `fallback` if absent. */
  u64(key: string, fallback: u64, min: u64 = 0, max: u64 = u64.MAX_VALUE): u64 {
    const v = this.mark(key);
    if (v === null) return fallback;
    if (!v.isU64()) {
      const what = v.isNumber() ? "number " + v.numberLiteral()! : v.kindName();
      this.fail("config: " + key + ": expected a non-negative integer, got " + what);
      return fallback;
    }
    const n = v.asU64();
    if (n < min || n > max) {
      const range = max == u64.MAX_VALUE ? "at least " + min.toString() : min.toString() + "-" + max.toString();
      this.fail("config: " + key + ": must be " + range + ", got " + n.toString());
      return fallback;
    }
    return n;
  }

  /** A signed integer field, or `fallback` if absent. */
  i64(key: string, fallback: i64): i64 {
    const v = this.mark(key);
    if (v === null) return fallback;
    if (!v.isI64()) {
      const what = v.isNumber() ? "number " + v.numberLiteral()! : v.kindName();
      this.fail("config: " + key + ": expected an integer, got " + what);
      return fallback;
    }
    return v.asI64();
  }

  /** A number field, or `fallback` if absent. */
  f64(key: string, fallback: f64): f64 {
    const v = this.mark(key);
    if (v === null) return fallback;
    if (!v.isNumber()) {
      this.fail("config: " + key + ": expected a number, got " + v.kindName());
      return fallback;
    }
    return v.asF64();
  }

  /** An array of strings (empty if absent). */
  stringArray(key: string): Array<string> {
    const out = new Array<string>();
    const v = this.mark(key);
    if (v === null) return out;
    if (!v.isArray()) {
      this.fail("config: " + key + ": expected an array of strings, got " + v.kindName());
      return out;
    }
    for (let i = 0; i < v.items.length; i++) {
      const s = unchecked(v.items[i]).asString();
      if (s === null) {
        this.fail("config: " + key + "[" + i.toString() + "]: expected a string, got " + unchecked(v.items[i]).kindName());
        return new Array<string>();
      }
      out.push(s);
    }
    return out;
  }

  /** An object of strings, as (key, value) pairs in order (empty if absent). */
  stringMap(key: string): Array<Header> {
    const out = new Array<Header>();
    const v = this.mark(key);
    if (v === null) return out;
    if (!v.isObject()) {
      this.fail("config: " + key + ": expected an object of strings, got " + v.kindName());
      return out;
    }
    for (let i = 0; i < v.members.length; i++) {
      const m = unchecked(v.members[i]);
      const s = m.value.asString();
      if (s === null) {
        this.fail("config: " + key + "." + m.key + ": expected a string, got " + m.value.kindName());
        return new Array<Header>();
      }
      out.push(new Header(m.key, s));
    }
    return out;
  }

  /** An object field (its members in order), or `null` if absent. */
  object(key: string): JsonValue | null {
    const v = this.mark(key);
    if (v === null) return null;
    if (!v.isObject()) {
      this.fail("config: " + key + ": expected an object, got " + v.kindName());
      return null;
    }
    return v;
  }

  /** Rejects fields no getter asked for; returns the first problem, or `null`. */
  finish(): string | null {
    if (this.error === null) {
      const members = this.root.members;
      for (let i = 0; i < members.length; i++) {
        const k = unchecked(members[i]).key;
        if (!this.known.includes(k)) {
          this.fail("config: unknown field `" + k + "`, expected one of: " + this.known.join(", "));
          break;
        }
      }
    }
    return this.error;
  }
}
