// Builds the SDK's test filters (tests/assembly/*.ts → tests/build/*.wasm) with the SDK's own
// asconfig.json, exactly as a filter project that extends it would.
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import asc from "assemblyscript/asc";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

// The README's complete filter is compiled and tested too, so it cannot rot.
const readme = readFileSync(join(root, "README.md"), "utf8");
const example = readme.split("## A complete filter")[1].match(/```ts\n([\s\S]*?)```/)[1];
mkdirSync(join(root, "tests/build"), { recursive: true });
writeFileSync(join(root, "tests/build/readme.ts"), example);

const sources = readdirSync(join(root, "tests/assembly"))
  .filter((f) => f.endsWith(".ts"))
  .map((f) => `tests/assembly/${f}`)
  .concat(["tests/build/readme.ts"]);
for (const source of sources) {
  const name = source.replace(/^.*\//, "").replace(/\.ts$/, "");
  const { error, stderr } = await asc.main([source, "--outFile", `tests/build/${name}.wasm`, "--baseDir", root], {});
  if (error) {
    process.stderr.write(stderr.toString());
    console.error(`build of ${source} failed: ${error.message}`);
    process.exit(1);
  }
  console.log(`built tests/build/${name}.wasm`);
}
