/** A project moved together with its artifact store still preprocesses from its cached ingest. */
import { cpSync, renameSync } from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { testdir } from '../../fixtures/testdir.js';

const dir = testdir();
afterAll(() => dir.cleanup());

it('finds the images relative to the pipeline file when the absolute root is gone', async () => {
  const before = dir.path('before');
  cpSync(path.resolve(import.meta.dirname, '../../fixtures/images/fashion'), path.join(before, 'images'), { recursive: true });
  dir.write('before/p.yaml', 'name: moved\nstages:\n  data: { uses: ingest, with: { path: images } }\n  shards: { uses: preprocess, needs: [data], with: { size: [8, 8] } }\n');
  const run = (root: string, force: string[] = []) => runPipeline({ file: path.join(root, 'p.yaml'), registry: stages, artifacts: path.join(root, 'artifacts'), selection: { force } });
  expect((await run(before)).status).toBe('succeeded');
  const after = dir.path('after');
  renameSync(before, after);
  const summary = await run(after, ['shards']);
  expect(summary.stages.map((s) => s.status)).toEqual(['cached', 'ran']);
});
