#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ by `npm install` (the `prepare` script).
import { existsSync } from 'node:fs';
const entry = new URL('../dist/src/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('pipeline: not built yet; run `npm install` (or `npm run build`) in the project first\n');
  process.exit(2);
}
await import(entry.href);
