// Replacements for the AssemblyScript runtime's `env` imports, which the proxy does not provide.
// The SDK's asconfig.json points `--use abort=`, `trace=` and `seed=` here.

import { clock_random_bytes, IMPORT_RET, log_write, releaseHostMemory } from "./abi";

let aborting = false;

/**
 * `abort` (failed `assert`, `abort(...)`, out-of-bounds access...): writes the message and
 * location to the proxy log at error level, then traps. The proxy discards the instance and
 * applies the filter's failure policy.
 */
export function weirAbort(message: string | null = null, fileName: string | null = null, line: u32 = 0, column: u32 = 0): void {
  if (!aborting) {
    // A second abort while building the message (out of memory...) traps at once.
    aborting = true;
    let text = "abort: " + (message !== null ? message : "(no message)");
    if (fileName !== null) text += " at " + fileName + ":" + line.toString() + ":" + column.toString();
    log_write(4, changetype<usize>(text), <usize>text.length);
  }
  unreachable();
}

/** `trace(...)`: a debug-level log line with up to five numbers. */
export function weirTrace(message: string, n: i32 = 0, a0: f64 = 0, a1: f64 = 0, a2: f64 = 0, a3: f64 = 0, a4: f64 = 0): void {
  let text = "trace: " + message;
  if (n > 0) text += " " + a0.toString();
  if (n > 1) text += ", " + a1.toString();
  if (n > 2) text += ", " + a2.toString();
  if (n > 3) text += ", " + a3.toString();
  if (n > 4) text += ", " + a4.toString();
  log_write(1, changetype<usize>(text), <usize>text.length);
}

/** `seed()` for `Math.random`: 8 bytes from the host's generator. */
export function weirSeed(): f64 {
  clock_random_bytes(8, IMPORT_RET);
  const ptr = <usize>load<u32>(IMPORT_RET);
  const len = load<u32>(IMPORT_RET, 4);
  const bits = len >= 8 ? load<u64>(ptr) : 0x9e3779b97f4a7c15;
  releaseHostMemory();
  // Any finite, non-zero value will do: Math.random reinterprets its bits.
  return <f64>(bits >>> 11) + 1.0;
}
