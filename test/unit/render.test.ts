import { describe, expect, it } from 'vitest';
import { stageLine } from '../../src/render.js';
import type { StageSummary } from '../../src/runtime/execute.js';

describe('stageLine', () => {
  it("points at a stage's report file (ingest's skipped list) instead of only counting", () => {
    const summary = { id: 'ingest', uses: 'ingest', status: 'ran', key: 'abc123', seconds: 0.4, metrics: { images: 8, skipped: 2, report: 'report.json' } } as unknown as StageSummary;
    const line = stageLine(summary, (key) => `/store/cache/${key}`);
    expect(line).toContain('skipped=2');
    expect(line).toContain('/store/cache/abc123/report.json');
    expect(line).not.toContain('report=');
  });
});
