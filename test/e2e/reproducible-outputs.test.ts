/**
 * The same training writes the same bytes: two empty stores that compute one pipeline get the
 * same key for every stage (what a team's remote cache and BullMQ workers rely on: a key
 * computed on another machine is found here), and a forced re-run of a training stage leaves
 * its dependents cached (its output digest did not move). `history.json` once carried each
 * epoch's wall-clock seconds, which re-keyed everything below train-head, fine-tune and prune.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runPipeline } from '../../src/index.js';
import { testdir, type TestDir } from '../fixtures/testdir.js';

const root = path.resolve(import.meta.dirname, '../..');
const pipeline = `name: reproducible
seed: 7
stages:
  ingest: { uses: ingest, with: { path: ${root}/data/fashion-target } }
  preprocess: { uses: preprocess, needs: [ingest], with: { size: [28, 28], channels: 1, normalize: imagenet } }
  base: { uses: load-base, with: { model: ${root}/models/fashion-base/model.json, cut: block_3_relu2 } }
  freeze: { uses: freeze, needs: [base] }
  head: { uses: train-head, needs: [preprocess, freeze], with: { epochs: 3, batch: 16, lr: 0.01, early_stopping: false } }
  unfreeze: { uses: unfreeze, needs: [head], with: { blocks: 1 } }
  tune: { uses: fine-tune, needs: [preprocess, unfreeze], with: { epochs: 2, batch: 16, early_stopping: false } }
  prune: { uses: prune, needs: [preprocess, tune], with: { method: magnitude, sparsity: 0.25, epochs: 1, batch: 16, max_accuracy_drop: 1 } }
  evaluate: { uses: evaluate, needs: [preprocess, prune] }
`;

let dir: TestDir;
beforeAll(() => {
  dir = testdir({ 'p.yaml': pipeline });
});
afterAll(() => dir.cleanup());

it('two stores key every stage alike, history.json has no timings, and a forced training stage keeps its dependents cached', async () => {
  const a = await runPipeline(dir.path('p.yaml'), { artifacts: dir.path('a') });
  const b = await runPipeline(dir.path('p.yaml'), { artifacts: dir.path('b') });
  expect(a.status).toBe('succeeded');
  expect(b.stages.map((s) => s.status)).toEqual(a.stages.map(() => 'ran'));
  expect(b.stages.map((s) => [s.id, s.key])).toEqual(a.stages.map((s) => [s.id, s.key]));

  const head = a.stages.find((s) => s.id === 'head')!;
  const history = JSON.parse(readFileSync(dir.path('a', 'cache', head.key, 'history.json'), 'utf8')) as Record<string, unknown>[];
  expect(history).toHaveLength(3);
  for (const epoch of history) expect(Object.keys(epoch)).not.toContain('seconds');
  expect(typeof head.metrics.seconds_per_epoch).toBe('number'); // the timing is still reported

  const forced = await runPipeline(dir.path('p.yaml'), { artifacts: dir.path('a'), force: ['head', 'tune'] });
  expect(Object.fromEntries(forced.stages.map((s) => [s.id, s.status]))).toMatchObject({ head: 'ran', tune: 'ran', unfreeze: 'cached', prune: 'cached', evaluate: 'cached' });
}, 240_000);
