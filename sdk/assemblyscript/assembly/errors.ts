// Errors a filter sees: typed host-call errors, and results that carry them.

import { IMPORT_RET, liftStringAt } from "./abi";

/** The kind of a host error (the WIT `host-error` variant's case). */
export enum HostErrorKind {
  /** The filter's config does not grant this capability (callout target, KV namespace...). */
  Denied = 0,
  /** The call makes no sense now (e.g. the response status during the request phase). */
  Unavailable = 1,
  /** An argument was invalid (bad header name or value, bad metric name...). */
  Invalid = 2,
  /** The operation failed (callout connect error, timeout...). */
  Failed = 3,
}

/**
 * An error returned by a host call: an ordinary value the filter decides what to do with,
 * never a trap. `toString()` is `kind: message`, e.g.
 * `denied: kv namespace "sessions" is not granted`.
 */
export class HostError {
  constructor(
    /** Which case of the WIT `host-error`. */
    public readonly kind: HostErrorKind,
    /** The host's message. */
    public readonly message: string,
  ) {}

  /** The case's WIT name: `denied`, `unavailable`, `invalid` or `failed`. */
  kindName(): string {
    switch (this.kind) {
      case HostErrorKind.Denied:
        return "denied";
      case HostErrorKind.Unavailable:
        return "unavailable";
      case HostErrorKind.Invalid:
        return "invalid";
      default:
        return "failed";
    }
  }

  /** `kind: message`. */
  toString(): string {
    return this.kindName() + ": " + this.message;
  }
}

/**
 * The outcome of a host call that returns a value: either `value` or `error`.
 *
 * ```ts
 * const n = kv.increment("hits", "/login", 1, 1000);
 * if (!n.ok) return LocalResponse.text(500, "hits: " + n.error!.toString()).action();
 * const hits: i64 = n.value;
 * ```
 *
 * Host calls without a value (`setHeader`, `kv.delete`...) return `HostError | null` instead:
 * `null` is success.
 */
export class Result<T> {
  private constructor(
    private readonly _value: T,
    /** The error, or `null` on success. */
    public readonly error: HostError | null,
  ) {}

  /** A success. */
  static success<T>(value: T): Result<T> {
    return new Result<T>(value, null);
  }

  /** A failure. */
  static failure<T>(error: HostError): Result<T> {
    if (isReference<T>()) {
      return new Result<T>(changetype<T>(0), error);
    } else {
      return new Result<T>(<T>0, error);
    }
  }

  /** Whether the call succeeded. */
  get ok(): bool {
    return this.error === null;
  }

  /** The value; traps (with the error in the proxy log) if the call failed: check `ok` first. */
  get value(): T {
    const error = this.error;
    if (error !== null) {
      abort("Result.value read on an error: " + error.toString());
    }
    return this._value;
  }

  /** The value, or `fallback` if the call failed. */
  valueOr(fallback: T): T {
    return this.error === null ? this._value : fallback;
  }
}

/** Reads the `host-error` variant stored at `at` (case u8, then a string at +4). */
export function liftHostError(at: usize): HostError {
  const kind = <i32>load<u8>(at);
  return new HostError(<HostErrorKind>(kind <= 3 ? kind : 3), liftStringAt(at + 4));
}

/** Reads a `result<_, host-error>` from the import return area (error payload at +4). */
export function liftUnitResult(): HostError | null {
  if (load<u8>(IMPORT_RET) == 0) return null;
  return liftHostError(IMPORT_RET + 4);
}
