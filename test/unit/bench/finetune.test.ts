/** The pure parts of bench/finetune.ts: the linear probe's regression, the table, the options. */
import { describe, expect, it } from 'vitest';
import { fitSoftmaxRegression, parseBenchOptions, renderMarkdown } from '../../../bench/finetune.js';

describe('fitSoftmaxRegression', () => {
  it('separates two Gaussian clusters and scores held-out points', () => {
    const dim = 8;
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) - 0.5;
    const make = (n: number) => {
      const x = new Float32Array(n * dim);
      const y = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        y[i] = i % 2;
        for (let d = 0; d < dim; d++) x[i * dim + d] = random() + (d === 0 ? (y[i] ? 1.5 : -1.5) : 0);
      }
      return { x, y };
    };
    const train = make(100);
    const val = make(50);
    const fit = fitSoftmaxRegression(train.x, train.y, val.x, val.y, dim, 2);
    expect(fit.train_acc).toBe(1);
    expect(fit.val_acc).toBe(1);
    expect(fit.iterations).toBeGreaterThan(10);
  });
});

describe('renderMarkdown', () => {
  it('renders a line whose torch part was skipped', () => {
    const text = renderMarkdown({
      ours: { wall_s: 600, stages: { ingest: 1, 'train-head': 300 }, engines: { pipeline: 'wasm' }, val_acc: { head: 0.9, fine_tune: 0.91, prune_after: 0.9, evaluate: 0.9 }, frozen_forward_img_s: 20, peak_rss_mib: 1500, seconds_per_epoch: { fine_tune: 2 } },
      torch: { skipped: 'torch is not installed' },
      ratio: null,
      probe: { val_acc: 0.88 },
      full_epoch: { estimated_epoch_s: 100, method: 'extrapolated' },
      fine_tune_epoch_vs_full: 0.02,
      targets: { ratio_max: { value: null, max: 0.25, pass: null }, peak_rss_mib_max: { value: 1500, max: 2048, pass: true }, frozen_forward_img_s_min: { value: 20, min: 170, pass: false } },
    });
    expect(text).toContain('not run: torch is not installed');
    expect(text).toContain('| 1 | 300 | 600 |');
    expect(text).toContain('**fail**');
    expect(text).toContain('linear probe 0.880');
  });
});

it('parseBenchOptions refuses unknown flags', () => {
  expect(parseBenchOptions(['--no-torch'])).toEqual({ torch: false, fullEpoch: true, keep: false });
  expect(() => parseBenchOptions(['--fast'])).toThrow(/unknown option --fast/);
});
