// Build step: the package carries the contract it speaks. Copies ../../protos/stepline/v1/*.proto
// into ./protos, which src/proto.ts loads at run time with @grpc/proto-loader. A stale copy
// cannot ship: every build (and so `make test`) copies them again, and `npm run check-protos`
// fails when the copy differs from the repository's protos.
import { copyFileSync, mkdirSync, readdirSync, readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "..", "..", "..", "protos", "stepline", "v1");
const target = join(here, "..", "protos", "stepline", "v1");
const check = process.argv.includes("--check");

if (!existsSync(source)) {
  // Installed from a tarball: the protos it shipped with are the ones to use.
  process.exit(0);
}
mkdirSync(target, { recursive: true });
let stale = 0;
for (const name of readdirSync(source).filter((n) => n.endsWith(".proto"))) {
  const from = join(source, name);
  const to = join(target, name);
  const same = existsSync(to) && readFileSync(to).equals(readFileSync(from));
  if (check && !same) {
    console.error(`stale proto copy: ${name}; run 'npm run build'`);
    stale += 1;
  } else if (!same) {
    copyFileSync(from, to);
  }
}
process.exit(stale ? 1 : 0);
