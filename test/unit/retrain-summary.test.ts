/** The retrain job summary (scripts/retrain-summary.ts) on literal run summaries. */
import { describe, expect, it } from 'vitest';
import { renderJobSummary } from '../../scripts/retrain-summary.js';
import type { RunSummary } from '../../src/runtime/execute.js';

const base: RunSummary = {
  pipeline: 'pets',
  run: '20261201-120000000-abcd',
  status: 'failed',
  backend: 'wasm',
  started: '2026-12-01T12:00:00.000Z',
  seconds: 42.5,
  previous: '20261124-120000000-0001',
  stages: [
    { id: 'fine-tune', uses: 'fine-tune', status: 'ran', key: 'k1', seconds: 30.25, metrics: { val_acc: 0.9, lr: 0.0003 }, changes: { val_acc: { before: 0.93, after: 0.9 } } },
    { id: 'evaluate', uses: 'evaluate', status: 'failed', key: 'k2', seconds: 1, metrics: {}, error: { code: 'gate_failed', message: 'accuracy 0.8 < 0.85 | gate' } },
    { id: 'export', uses: 'export', status: 'skipped', key: 'k3', seconds: 0, metrics: {}, error: { code: 'dependency_failed', message: "'evaluate' failed" } },
  ],
};

describe('renderJobSummary', () => {
  it('says the outcome, a row per stage with its error, and each changed metric with before, after and change', () => {
    const markdown = renderJobSummary(base, 'pipelines/pets.yaml');
    expect(markdown).toContain('## ❌ Retrain pets: failed');
    expect(markdown).toContain('| evaluate | failed | 1.0 | accuracy 0.8 < 0.85 \\| gate [gate_failed] |');
    expect(markdown).toContain('| export | skipped |  | \'evaluate\' failed [dependency_failed] |');
    expect(markdown).toContain('Against run `20261124-120000000-0001`:');
    expect(markdown).toContain('| fine-tune | val_acc | 0.9300 | 0.9000 | -0.0300 |');
  });

  it('names a first run, and a run the file or store refused', () => {
    expect(renderJobSummary({ ...base, previous: undefined, stages: [] }, 'p.yaml')).toContain('First run of this pipeline in this store');
    const refused = renderJobSummary({ status: 'invalid', issues: [{ file: 'p.yaml', line: 7, message: 'unknown stage kind', code: 'unknown_kind' }] }, 'p.yaml');
    expect(refused).toBe('## Retrain p.yaml: invalid\n\nNothing was run:\n- `p.yaml:7` unknown stage kind [unknown_kind]\n');
  });
});
