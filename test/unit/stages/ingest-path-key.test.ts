/** The same data folder written another way (`./images/`, an absolute path, via `..`) is one cache key. */
import { cpSync } from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { runPipeline } from '../../../src/runtime/run.js';
import { stages } from '../../../src/stages/index.js';
import { testdir } from '../../fixtures/testdir.js';

const dir = testdir();
afterAll(() => dir.cleanup());

it('re-ingests nothing when the same folder is written as another relative or absolute path', async () => {
  const project = dir.path('project');
  cpSync(path.resolve(import.meta.dirname, '../../fixtures/images/fashion'), path.join(project, 'images'), { recursive: true });
  const spellings = ['images', './images/', '../project/images', path.join(project, 'images'), 'images/../images'];
  const statuses: string[] = [];
  for (const [i, spelling] of spellings.entries()) {
    const file = dir.write(`project/p${i}.yaml`, `name: same-data\nstages:\n  data: { uses: ingest, with: { path: ${JSON.stringify(spelling)} } }\n`);
    const summary = await runPipeline({ file, registry: stages, artifacts: path.join(project, 'artifacts') });
    expect(summary.status).toBe('succeeded');
    statuses.push(summary.stages[0].status);
  }
  expect(statuses).toEqual(['ran', 'cached', 'cached', 'cached', 'cached']);
});
