// Compiles src/ to dist/ with the pinned TypeScript (package-lock.json); npm runs it as `prepare`.
// In: src/*.ts, tsconfig.json, node_modules/typescript. Out: dist/*.js and *.d.ts.
// `npm ci` in this directory installs TypeScript before `prepare`; `npm install ./clients/node`
// from another project links this folder and runs `prepare` without installing its
// devDependencies, so when tsc is missing this first installs them from the lockfile (npm ci
// --ignore-scripts, into this folder's node_modules). Stops when tsc exits; its code is ours.

import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, "node_modules", "typescript", "bin", "tsc");

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: here, stdio: "inherit", env });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

if (!fs.existsSync(tsc)) {
  // The npm that runs us describes the installing project in npm_* variables (its prefix, its
  // omit list): the nested install is about this folder only, so it gets none of them but the
  // registry, cache and proxy settings.
  const keep = /^npm_config_(registry|cache|userconfig|globalconfig|offline|prefer_offline|proxy|https_proxy|noproxy|cafile|strict_ssl|@.*:registry)$/i;
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith("npm_") || keep.test(k)),
  );
  const npm = process.env.npm_execpath;
  const args = ["ci", "--ignore-scripts", "--include=dev", "--no-audit", "--no-fund"];
  if (npm && npm.endsWith(".js")) run(process.execPath, [npm, ...args], env);
  else run(process.platform === "win32" ? "npm.cmd" : "npm", args, env);
}
run(process.execPath, [tsc, "-p", here]);
