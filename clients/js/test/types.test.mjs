// index.d.ts and the README's options table name exactly the options the code knows.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { NotifyClient } from "@clinic-notify/client";

const here = (name) => readFileSync(new URL(`../${name}`, import.meta.url), "utf8");

test("index.d.ts declares every option of NotifyClient.defaults, and no other", () => {
  const block = /export interface NotifyClientOptions \{([\s\S]*?)\n\}/.exec(here("index.d.ts"))[1];
  const declared = [...block.matchAll(/^\s+(\w+)\?:/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(NotifyClient.defaults).sort());
});

test("the README's options table lists every option with its default", () => {
  const readme = here("README.md");
  const table = /<!-- options -->([\s\S]*?)<!-- \/options -->/.exec(readme)[1];
  const rows = [...table.matchAll(/^\| `(\w+)` \| ((?:[^|\\]|\\.)+) \| ((?:[^|\\]|\\.)+) \|/gm)];
  const names = rows.map((r) => r[1]);
  assert.deepEqual([...names].sort(), Object.keys(NotifyClient.defaults).sort());
  for (const [, name, , shown] of rows) {
    const value = NotifyClient.defaults[name];
    if (value !== undefined) {
      assert.equal(shown.trim(), `\`${JSON.stringify(value)}\``, `the default of ${name}`);
    }
  }
});

test("NotifyClient.version is the package's, and the React package depends on it", () => {
  const pkg = JSON.parse(here("package.json"));
  assert.equal(NotifyClient.version, pkg.version);
  const react = JSON.parse(readFileSync(new URL("../../react/package.json", import.meta.url), "utf8"));
  assert.equal(react.dependencies["@clinic-notify/client"], `^${pkg.version}`);
  assert.equal(Object.keys(pkg.dependencies || {}).length, 0); // no runtime dependencies
});
