import { describe, expect, it } from 'vitest';
import { renderGrid, stageLine } from '../../src/render.js';
import { describeHalving } from '../../src/runtime/halving.js';
import type { RunSummary, StageSummary } from '../../src/runtime/execute.js';

describe('stageLine', () => {
  it("points at a stage's report file (ingest's skipped list) instead of only counting", () => {
    const summary = { id: 'ingest', uses: 'ingest', status: 'ran', key: 'abc123', seconds: 0.4, metrics: { images: 8, skipped: 2, report: 'report.json' } } as unknown as StageSummary;
    const line = stageLine(summary, (key) => `/store/cache/${key}`);
    expect(line).toContain('skipped=2');
    expect(line).toContain('/store/cache/abc123/report.json');
    expect(line).not.toContain('report=');
  });
});

describe('halving in what users read', () => {
  const pruned = { id: 'tune-lr-0p1', uses: 'fake-train', status: 'pruned', key: 'k1', seconds: 0.5, metrics: { epochs_run: 1, budget: 1, val_acc: 0.7 } } as unknown as StageSummary;

  it('marks a pruned stage with ✂ and its seconds', () => {
    expect(stageLine(pruned)).toMatch(/^✂ tune-lr-0p1 pruned 0\.5s {2}epochs_run=1 budget=1 val_acc=0\.7000$/);
  });

  it('lists pruned branches in the grid with where they stopped, beside the chosen one', () => {
    const summary = {
      matrix: { axes: [{ stage: 'tune', param: 'lr', label: 'lr', values: [0.1, 0.01] }], branches: { tune: ['tune-lr-0p1', 'tune-lr-0p01'] } },
      stages: [
        pruned,
        { id: 'pick', uses: 'select', status: 'ran', key: 'k3', seconds: 0, metrics: { chosen: 'tune-lr-0p01', metric: 'val_acc', mode: 'max', val_acc: 0.9, table: [{ id: 'tune-lr-0p01', coords: { lr: 0.01 }, value: 0.9, passed: true }], pruned: [{ id: 'tune-lr-0p1', coords: { lr: 0.1 }, value: 0.7, budget: 1, of: 5 }] } },
      ],
    } as unknown as RunSummary;
    const grid = renderGrid(summary);
    expect(grid).toContain('chose tune-lr-0p01 by val_acc (max), halving: 1 of 2 branches pruned');
    expect(grid).toMatch(/1e-2 +val_acc=0\.9000 +tune-lr-0p01 +<- chosen/);
    expect(grid).toMatch(/0\.1 +val_acc=0\.7000 +tune-lr-0p1 +\(pruned after 1 of 5 epochs\)/);
  });

  it('describes the schedule plan prints, with the epochs it trains against the full grid', () => {
    expect(describeHalving({ factor: 3, min: 1, metric: 'val_acc' }, 4, 5)).toBe('4 branches train to epoch 1, the best 1 by val_acc goes on; 1 trains to epoch 5 (8 of the 20 epochs of the full grid)');
    expect(describeHalving({ factor: 2, min: 1, metric: 'val_loss' }, 8, 15)).toBe(
      '8 branches train to epoch 1, the best 4 by val_loss go on; 4 branches train to epoch 2, the best 2 by val_loss go on; 2 branches train to epoch 4, the best 1 by val_loss goes on; 1 trains to epoch 15 (27 of the 120 epochs of the full grid)',
    );
  });
});
