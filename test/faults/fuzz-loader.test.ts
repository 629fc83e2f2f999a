/**
 * The loader never crashes: random bytes and randomly mutated valid pipeline files (the real
 * registry and the demo pipeline) give exit 0 or 2 from `validate` and `plan`, never a stack or
 * "unexpected". fast-check, bounded runs (a failure prints its seed and the shrunk input).
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { stages } from '../../src/stages/index.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';
import { root } from './helpers.js';

let dir: TestDir;
beforeAll(() => {
  dir = testdir();
});
afterAll(() => dir.cleanup());

const demo = readFileSync(path.join(root, 'pipelines/two-phase-finetune.yaml'), 'utf8');
const RUNS = 250;

/** Runs a command of the CLI in-process on `content` as the pipeline file. */
async function check(content: string | Uint8Array, command: 'validate' | 'plan'): Promise<void> {
  // In the pipelines/ folder's place, so relative paths in a mutated demo resolve like the demo's.
  const file = path.join(root, 'pipelines', `.fuzz-${process.pid}.yaml`);
  writeFileSync(file, content);
  let stderr = '';
  let stdout = '';
  const code = await main([command, file, ...(command === 'plan' ? ['--artifacts', dir.path('artifacts')] : [])], { registry: stages, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env: {}, isTTY: false });
  const shown = typeof content === 'string' ? content.slice(0, 400) : `${content.length} bytes`;
  expect([0, 2], `${command} exited ${code}: ${stderr.slice(0, 400)}\n--- input:\n${shown}`).toContain(code);
  expect(stderr + stdout).not.toMatch(/unexpected: please report|TypeError|RangeError|    at /);
}

afterAll(() => rmSync(path.join(root, 'pipelines', `.fuzz-${process.pid}.yaml`), { force: true }));

it(`random bytes: validate exits 0 or 2 (${RUNS} runs)`, async () => {
  await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 2048 }), (bytes) => check(bytes, 'validate')), { numRuns: RUNS });
});

const yamlish = fc.constantFrom(...': -[]{},#&*!|>\'"%@`\n\t ?0123456789abcxyz.~<<=\u0000\u00e9\ufeff'.split(''), 'null', 'true', '1e999', '-1', '&a', '*a', '<<: *a', 'stages:', 'uses: ', 'needs: [', 'with: {', '  ', '\n  ');
/** One edit of a text: delete a range, insert tokens, duplicate or drop a line, swap two lines. */
const mutation = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: fc.array(yamlish, { minLength: 1, maxLength: 6 }).map((t) => t.join('')) }),
  fc.record({ op: fc.constant('duplicate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('drop' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('swap' as const), at: fc.nat(), other: fc.nat() }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(text: string, edits: Mutation[]): string {
  for (const edit of edits) {
    const lines = text.split('\n');
    const line = edit.at % Math.max(1, lines.length);
    const at = edit.at % Math.max(1, text.length);
    if (edit.op === 'delete') text = text.slice(0, at) + text.slice(at + edit.length);
    else if (edit.op === 'insert') text = text.slice(0, at) + edit.text + text.slice(at);
    else if (edit.op === 'duplicate') text = [...lines.slice(0, line + 1), lines[line], ...lines.slice(line + 1)].join('\n');
    else if (edit.op === 'drop') text = [...lines.slice(0, line), ...lines.slice(line + 1)].join('\n');
    else {
      const other = edit.other % Math.max(1, lines.length);
      [lines[line], lines[other]] = [lines[other], lines[line]];
      text = lines.join('\n');
    }
  }
  return text;
}

it(`the demo pipeline with 1-5 random edits: validate and plan exit 0 or 2 (${RUNS} runs)`, async () => {
  await check(demo, 'validate');
  await fc.assert(
    fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 5 }), fc.boolean(), async (edits, plan) => check(mutate(demo, edits), plan ? 'plan' : 'validate')),
    { numRuns: RUNS },
  );
});

const sweep = readFileSync(path.join(root, 'pipelines/sweep-finetune.yaml'), 'utf8');
const SWEEP_RUNS = 150;

it(`the sweep pipeline (matrix:, select) with 1-5 random edits: validate and plan exit 0 or 2 (${SWEEP_RUNS} runs)`, async () => {
  await check(sweep, 'plan');
  const tokens = fc.constantFrom('matrix: { lr: [1, 1] }', 'matrix: {}', 'matrix: { blocks: [] }', 'matrix: [1]', 'matrix: { from: [a, b], blocks: [1] }', 'uses: select', 'needs: [select]', '[1e-4, 0.0001]');
  const edit = fc.oneof(mutation, fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: tokens.map((t) => `\n    ${t}\n`) }));
  await fc.assert(
    fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 5 }), fc.boolean(), async (edits, plan) => check(mutate(sweep, edits), plan ? 'plan' : 'validate')),
    { numRuns: SWEEP_RUNS },
  );
});
