// The asc transform that turns an AssemblyScript program into a Weir filter core module
// (see sdk/ABI.md):
//
// - afterParse: adds the SDK's export glue (assembly/exports.ts) as an extra entry file, so the
//   filter's own entry file needs no export boilerplate;
// - afterCompile: renames those exports to the WIT names
//   (`weir:filter/filter@0.1.0#on-request-headers`, `cabi_post_...`), removes every other
//   export except `memory`, `_initialize` and `cabi_realloc`, checks imports and signatures
//   against the canonical ABI, and adds the `weir:string-encoding` = `utf16` custom section
//   (AssemblyScript strings are UTF-16; a wrong encoding would be silent garbage).
//
// No imports: asc hands the transform its binaryen instance as `this.binaryen`, so this file
// works wherever the SDK is linked from.

const FILTER = "weir:filter/filter@0.1.0";
const GLUE = "@weir/filter/assembly/exports";
const ENTRY = "__weir_filter_exports.ts";

// Core signatures, as [params, results] with i = i32, I = i64, F = f64.
const EXPORTS = {
  __weir_configure: { names: [`${FILTER}#configure`], sig: ["ii", "i"] },
  __weir_on_request_headers: { names: [`${FILTER}#on-request-headers`], sig: ["i", "i"] },
  __weir_on_request_body: { names: [`${FILTER}#on-request-body`], sig: ["ii", "i"] },
  __weir_on_response_headers: { names: [`${FILTER}#on-response-headers`], sig: ["i", "i"] },
  __weir_on_response_body: { names: [`${FILTER}#on-response-body`], sig: ["ii", "i"] },
  __weir_on_log: { names: [`${FILTER}#on-log`], sig: ["i", ""] },
  __weir_context_done: { names: [`${FILTER}#context-done`], sig: ["i", ""] },
  __weir_post_return: {
    names: ["configure", "on-request-headers", "on-request-body", "on-response-headers", "on-response-body"].map(
      (f) => `cabi_post_${FILTER}#${f}`,
    ),
    sig: ["i", ""],
  },
  cabi_realloc: { names: ["cabi_realloc"], sig: ["iiii", "i"] },
};

const IMPORTS = {
  "weir:filter/http@0.1.0": {
    method: ["i", ""],
    path: ["i", ""],
    "set-path": ["iii", ""],
    authority: ["i", ""],
    scheme: ["i", ""],
    "client-address": ["i", ""],
    "route-name": ["i", ""],
    "cluster-name": ["i", ""],
    "request-id": ["i", ""],
    status: ["", "i"],
    "set-status": ["ii", ""],
    "get-header": ["iiii", ""],
    "get-header-all": ["iiii", ""],
    "set-header": ["iiiiii", ""],
    "append-header": ["iiiiii", ""],
    "remove-header": ["iiii", ""],
    headers: ["ii", ""],
    body: ["ii", ""],
    "set-body": ["iiii", ""],
  },
  "weir:filter/log@0.1.0": { write: ["iii", ""] },
  "weir:filter/clock@0.1.0": { "now-ms": ["", "I"], "monotonic-ns": ["", "I"], "random-bytes": ["ii", ""] },
  "weir:filter/metrics@0.1.0": {
    "counter-add": ["iiiiIi", ""],
    "gauge-set": ["iiiiIi", ""],
    "histogram-observe": ["iiiiFi", ""],
  },
  "weir:filter/kv@0.1.0": {
    get: ["iiiii", ""],
    set: ["iiiiiiIi", ""],
    "compare-and-swap": ["iiiiIiiIi", ""],
    delete: ["iiiii", ""],
    increment: ["iiiiIIi", ""],
    "take-tokens": ["iiiiIIIIi", ""],
  },
  "weir:filter/callout@0.1.0": { send: ["iiiiiiiiiiii", ""] },
  "weir:filter/trace@0.1.0": { sampled: ["", "i"], "set-attribute": ["iiiii", ""], "add-event": ["iiiii", ""] },
  "weir:filter/crypto@0.1.0": {
    digest: ["iiii", ""],
    "constant-time-equal": ["iiii", "i"],
    "[static]hmac-key.create": ["iiii", ""],
    "[method]hmac-key.sign": ["iiii", ""],
    "[method]hmac-key.verify": ["iiiii", "i"],
    "[resource-drop]hmac-key": ["i", ""],
    "[static]verifying-key.from-spki": ["iiii", ""],
    "[static]verifying-key.from-rsa-components": ["iiiiii", ""],
    "[static]verifying-key.from-raw": ["iiii", ""],
    "[method]verifying-key.verify": ["iiiii", "i"],
    "[resource-drop]verifying-key": ["i", ""],
  },
};

const HINTS = {
  abort: "extend @weir/filter/asconfig.json: it routes abort to the proxy log (--use abort=...)",
  trace: "extend @weir/filter/asconfig.json: it routes trace to the proxy log (--use trace=...)",
  seed: "extend @weir/filter/asconfig.json: it seeds Math.random from the host (--use seed=...)",
  "Date.now": "use clock.nowMs() from @weir/filter instead of Date",
};

export default class WeirFilterTransform {
  afterParse(parser) {
    // Once per program, even if the transform is listed twice.
    if (parser.sources.some((s) => s.normalizedPath === ENTRY)) return;
    const names = Object.keys(EXPORTS).join(", ");
    parser.parseFile(`export { ${names} } from "${GLUE}";\n`, ENTRY, true);
  }

  afterCompile(module) {
    const b = this.binaryen;
    const code = (type) => {
      return b
        .expandType(type)
        .map((t) => (t === b.i32 ? "i" : t === b.i64 ? "I" : t === b.f64 ? "F" : t === b.f32 ? "f" : "?"))
        .join("");
    };
    const problems = [];

    // Exports.
    const exports = [];
    for (let i = 0, n = module.getNumExports(); i < n; i++) {
      exports.push(b.getExportInfo(module.getExportByIndex(i)));
    }
    let hasStart = false;
    const found = new Set();
    for (const e of exports) {
      if (e.name === "memory" && e.kind === b.ExternalMemory) continue;
      if (e.name === "_initialize" && e.kind === b.ExternalFunction) {
        hasStart = true;
        continue;
      }
      module.removeExport(e.name);
      const spec = EXPORTS[e.name];
      if (!spec || e.kind !== b.ExternalFunction) continue; // not part of the WIT: dropped
      const f = b.getFunctionInfo(module.getFunction(e.value));
      const sig = [code(f.params), code(f.results)];
      if (sig[0] !== spec.sig[0] || sig[1] !== spec.sig[1]) {
        problems.push(`export ${e.name} has signature (${sig[0]}) -> (${sig[1]}), expected (${spec.sig[0]}) -> (${spec.sig[1]})`);
      }
      for (const name of spec.names) module.addFunctionExport(e.value, name);
      found.add(e.name);
    }
    for (const name of Object.keys(EXPORTS)) {
      if (!found.has(name)) problems.push(`missing export ${name} (is @weir/filter imported by the entry file?)`);
    }
    if (!hasStart) {
      problems.push("missing export _initialize: extend @weir/filter/asconfig.json (asc --exportStart _initialize)");
    }

    // Imports: only the WIT's, with the canonical ABI's signatures.
    for (let i = 0, n = module.getNumFunctions(); i < n; i++) {
      const f = b.getFunctionInfo(module.getFunctionByIndex(i));
      if (!f.module) continue;
      const iface = IMPORTS[f.module];
      const want = iface && Object.prototype.hasOwnProperty.call(iface, f.base) ? iface[f.base] : null;
      if (!want) {
        const hint = HINTS[f.base] || "the proxy only provides weir:filter/* imports";
        problems.push(`import ${f.module}.${f.base} is not available to filters: ${hint}`);
        continue;
      }
      const sig = [code(f.params), code(f.results)];
      if (sig[0] !== want[0] || sig[1] !== want[1]) {
        problems.push(`import ${f.module}.${f.base} has signature (${sig[0]}) -> (${sig[1]}), expected (${want[0]}) -> (${want[1]})`);
      }
    }
    for (let i = 0, n = module.getNumGlobals(); i < n; i++) {
      const g = b.getGlobalInfo(module.getGlobalByIndex(i));
      if (g.module) problems.push(`global import ${g.module}.${g.base} is not available to filters`);
    }
    const memory = module.hasMemory() ? module.getMemoryInfo() : null;
    if (memory && memory.module) problems.push("imported memory is not supported: remove --importMemory");

    if (problems.length) {
      throw new Error(`@weir/filter: this program cannot be a Weir filter:\n  - ${problems.join("\n  - ")}`);
    }

    // AssemblyScript strings are UTF-16: tell the componentizer (sdk/ABI.md).
    module.addCustomSection("weir:string-encoding", new TextEncoder().encode("utf16"));
  }
}
